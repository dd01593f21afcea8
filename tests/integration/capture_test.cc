// Capture against a real PostgreSQL: install, the tick order that never skips
// a late-committing transaction, key changes, truncate, pruning.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include "capture/change_log.h"
#include "capture/install.h"
#include "support/hostile.h"
#include "support/pg_cluster.h"
#include "support/test_util.h"

namespace datatunnel {
namespace {

using testing::Contains;
using testing::SourceCluster;

constexpr const char* kEmployees =
    "CREATE TABLE employees(emp_id SERIAL, first_name VARCHAR(100), last_name VARCHAR(100), "
    "dob DATE, city VARCHAR(100))";

class CaptureTest : public ::testing::Test {
 protected:
  void SetUp() override { InstallTable(kEmployees, "employees", {"emp_id"}); }

  // Creates the table with `ddl` in a fresh database and captures it with
  // key `key` (empty: the table's own, else full-row identity).
  void InstallTable(const char* ddl, const std::string& table, std::vector<std::string> key) {
    db_ = SourceCluster().CreateDatabase("capture");
    SourceCluster().Exec(db_, ddl);
    conn_ = SourceCluster().Connect(db_);
    TableConfig tc;
    tc.source = {"public", table};
    tc.target = tc.source;
    tc.key = std::move(key);
    tc.topic = "t";
    auto specs = capture::DescribeSourceTables(*conn_, {tc}, &warnings_);
    ASSERT_TRUE(specs.ok()) << specs.status().message();
    specs_ = *specs;
    auto actions = capture::Install(*conn_, "t", specs_);
    ASSERT_TRUE(actions.ok()) << actions.status().message();
    OpenLog(0);
  }

  // The producer's ChangeLog of specs_ on conn_, going on from the newest of
  // the ticks numbered `from` and after.
  void OpenLog(int64_t from) {
    log_ = std::make_unique<capture::ChangeLog>(conn_.get(), &specs_, "t");
    auto epoch = log_->LoadEpoch();
    ASSERT_TRUE(epoch.ok());
    epoch_ = *epoch;
    auto ticks = log_->LoadTicks(from, 10);
    ASSERT_TRUE(ticks.ok());
    last_ = ticks->back();
  }

  // One producer step: record a tick and read its whole batch. Alternates
  // between the producer's two ways: a tick with the first read of its batch
  // in one pipeline (RecordTick; a small first read, so the rest is read
  // after it), and BeginTick/CommitTick then reads.
  std::vector<Change> NextBatch() {
    std::vector<Change> out;
    int64_t after = 0;
    capture::Tick hi;
    capture::BulkRow bulk;
    if (++steps_ % 2 == 1) {
      std::string check;
      capture::ChangeLog::TickRead first;
      first.limit = 7;
      auto t = log_->RecordTick(last_, {"SELECT 'sig'", {}}, &check, epoch_, {&first, 1});
      EXPECT_TRUE(t.ok()) << t.status().message();
      EXPECT_EQ(check, "sig");
      hi = *t;
      out = std::move(first.changes);
      bulk = first.bulk;
      if (out.empty() && !bulk.active()) {
        last_ = hi;
        return out;
      }
      after = first.last;
    } else {
      auto t = log_->BeginTick(last_.number + 1);
      EXPECT_TRUE(t.ok()) << t.status().message();
      EXPECT_TRUE(log_->CommitTick().ok());
      hi = *t;
    }
    for (;;) {
      if (bulk.active()) {
        // A change row in the bulk form, in pieces of piece_ elements.
        auto finished = log_->ReadBulk(0, hi.number, epoch_, piece_, &bulk, &out);
        EXPECT_TRUE(finished.ok()) << finished.status().message();
        if (!finished.ok()) break;
        ++pieces_;
        if (*finished) {
          after = bulk.change_id;
          bulk = capture::BulkRow{};
        }
        continue;
      }
      size_t before = out.size();
      auto last = log_->ReadBatch(0, last_, hi, after, 1000, epoch_, &out, &bulk);
      EXPECT_TRUE(last.ok()) << last.status().message();
      if (!last.ok()) break;
      after = *last;
      if (out.size() == before && !bulk.active()) break;
    }
    last_ = hi;
    return out;
  }

  // Reads batches until `want` changes arrived (or 20 batches); the count
  // of each operation among them, and in *total how many arrived.
  std::map<Op, int> CountNext(size_t want, size_t* total) {
    std::map<Op, int> ops;
    *total = 0;
    for (int i = 0; i < 20 && *total < want; ++i) {
      auto b = NextBatch();
      for (const Change& c : b) ++ops[c.op];
      *total += b.size();
    }
    return ops;
  }

  int steps_ = 0;
  int piece_ = 1000;  // elements per read of a change row in the bulk form
  int pieces_ = 0;    // such reads so far
  std::vector<std::string> warnings_;
  std::string db_;
  std::unique_ptr<pg::Connection> conn_;
  std::vector<TableSpec> specs_;
  std::unique_ptr<capture::ChangeLog> log_;
  int64_t epoch_ = 0;
  capture::Tick last_;
};

TEST_F(CaptureTest, InstallIsIdempotentAndNamesTheBriefsColumns) {
  auto again = capture::Install(*conn_, "t", specs_);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->actions.empty()) << again->actions[0];
  auto cols =
      SourceCluster().Scalar(db_,
                             "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM "
                             "information_schema.columns WHERE table_name = 'employees_cdc'");
  EXPECT_EQ(*cols,
            "dt$change_id,dt$txid,dt$action,dt$captured_at,dt$cols,dt$rows,dt$keys1,dt$old1,emp_id,"
            "first_name,last_name,dob,city");
}

TEST_F(CaptureTest, EveryOperationInCommitOrder) {
  SourceCluster().Exec(
      db_,
      "INSERT INTO employees(first_name, city) VALUES ('Ann', 'Oslo'), ('Bob', NULL);"
      "UPDATE employees SET city = 'Rome' WHERE first_name = 'Ann';"
      "UPDATE employees SET emp_id = 100 WHERE first_name = 'Bob';"
      "DELETE FROM employees WHERE first_name = 'Ann';"
      "TRUNCATE employees;");
  auto b = NextBatch();
  ASSERT_EQ(b.size(), 7u);
  EXPECT_EQ(b[0].op, Op::kInsert);
  EXPECT_EQ(b[0].row.Get(1), "Ann");
  EXPECT_TRUE(b[1].row.IsNull(4));  // Bob's city is NULL
  EXPECT_EQ(b[2].op, Op::kUpdate);
  EXPECT_EQ(b[2].row.Get(4), "Rome");
  // The key change: delete of the old key, then insert of the new row.
  EXPECT_EQ(b[3].op, Op::kDelete);
  EXPECT_TRUE(b[3].key_only);
  EXPECT_EQ(b[3].row.Get(0), "2");
  EXPECT_EQ(b[4].op, Op::kInsert);
  EXPECT_EQ(b[4].row.Get(0), "100");
  EXPECT_EQ(b[3].pos.seq, b[4].pos.seq);
  EXPECT_LT(b[3].pos, b[4].pos);
  EXPECT_EQ(b[5].op, Op::kDelete);
  EXPECT_TRUE(b[5].key_only);  // a delete of a table with a key carries the key
  EXPECT_EQ(b[5].row.Get(0), "1");
  EXPECT_TRUE(b[5].row.IsAbsent(1));
  EXPECT_EQ(b[6].op, Op::kTruncate);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1].pos, b[i].pos);
}

// Issue 3, rule 1: a transaction that takes small change_ids and commits
// after hundreds of later transactions were published is not skipped.
TEST_F(CaptureTest, LateCommitIsNeverSkipped) {
  auto late = SourceCluster().Connect(db_);
  ASSERT_TRUE(late->Exec("BEGIN").ok());
  ASSERT_TRUE(late->Exec("INSERT INTO employees(emp_id, first_name) VALUES (-1, 'late');"
                         "UPDATE employees SET city = 'x' WHERE emp_id = -1;"
                         "INSERT INTO employees(emp_id, first_name) VALUES (-2, 'late2');"
                         "DELETE FROM employees WHERE emp_id = -2;")
                  .ok());
  std::set<int64_t> seen;
  int64_t late_min_id = INT64_MAX;
  auto ids = SourceCluster().Connect(db_);
  for (int i = 0; i < 300; ++i) {
    SourceCluster().Exec(db_,
                         "INSERT INTO employees(first_name) VALUES ('w" + std::to_string(i) + "')");
    if (i % 50 == 49) {
      for (const auto& c : NextBatch()) {
        EXPECT_NE(c.row.Get(1).substr(0, 4), "late") << "an uncommitted change was published";
        seen.insert(c.pos.seq);
      }
    }
  }
  for (const auto& c : NextBatch()) seen.insert(c.pos.seq);
  EXPECT_EQ(seen.size(), 300u);
  ASSERT_TRUE(late->Exec("COMMIT").ok());
  auto b = NextBatch();
  ASSERT_EQ(b.size(), 4u);
  for (const auto& c : b) {
    late_min_id = std::min(late_min_id, c.pos.seq);
    EXPECT_EQ(c.pos.tick, last_.number);
  }
  // Its change_ids are older than everything published before it.
  EXPECT_LT(late_min_id, *seen.begin());
  EXPECT_EQ(b[0].op, Op::kInsert);
  EXPECT_EQ(b[1].op, Op::kUpdate);
  EXPECT_EQ(b[3].op, Op::kDelete);
}

TEST_F(CaptureTest, RolledBackChangesNeverAppear) {
  auto tx = SourceCluster().Connect(db_);
  ASSERT_TRUE(tx->Exec("BEGIN; INSERT INTO employees(first_name) VALUES ('ghost'); ROLLBACK").ok());
  ASSERT_TRUE(tx->Exec("BEGIN; INSERT INTO employees(first_name) VALUES ('kept');"
                       "SAVEPOINT s; INSERT INTO employees(first_name) VALUES ('undone');"
                       "ROLLBACK TO s; COMMIT")
                  .ok());
  auto b = NextBatch();
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].row.Get(1), "kept");
}

TEST_F(CaptureTest, PruneRemovesOnlyDeliveredChanges) {
  SourceCluster().Exec(db_,
                       "INSERT INTO employees(first_name) SELECT 'a' FROM generate_series(1, 10)");
  auto b1 = NextBatch();
  ASSERT_EQ(b1.size(), 10u);
  const capture::Tick t1 = last_;
  SourceCluster().Exec(db_,
                       "INSERT INTO employees(first_name) SELECT 'b' FROM generate_series(1, 5)");
  auto b2 = NextBatch();
  ASSERT_EQ(b2.size(), 5u);
  // Only batch 1 is delivered: prune with its snapshot and the largest id seen.
  capture::ProgressUpdate u;
  u.table = 0;
  u.tick = t1.number;
  u.seq = Position::kEndOfTick;
  u.delivered = 10;
  u.prune_upto = b2.back().pos.seq;  // an index bound only; visibility decides
  u.prune_snapshot = t1.snapshot;
  ASSERT_TRUE(log_->RecordProgress({&u, 1}).ok());
  EXPECT_EQ(*log_->CountPending(0), 5);
  auto progress = log_->LoadProgress();
  ASSERT_TRUE(progress.ok());
  EXPECT_EQ((*progress)[0].tick, t1.number);
  EXPECT_EQ((*progress)[0].published, 10);
  // Progress never moves backwards.
  u.tick = t1.number - 1;
  ASSERT_TRUE(log_->RecordProgress({&u, 1}).ok());
  EXPECT_EQ((*log_->LoadProgress())[0].tick, t1.number);
}

// Chain heads are recorded with progress, per partition of the table's
// topic, and only move forward; NewestRecordedPosition covers every tick.
TEST_F(CaptureTest, ChainHeadsRecordedWithProgress) {
  auto none = log_->LoadHeads(0);
  ASSERT_TRUE(none.ok()) << none.status().message();
  EXPECT_TRUE(none->empty());
  capture::ProgressUpdate u;
  u.table = 0;
  u.tick = last_.number;
  u.seq = Position::kEndOfTick;
  u.heads = {{0, {epoch_, last_.number, 4, 0}}, {2, {epoch_, last_.number, 9, 1}}};
  ASSERT_TRUE(log_->RecordProgress({&u, 1}).ok());
  auto heads = log_->LoadHeads(0);
  ASSERT_TRUE(heads.ok());
  ASSERT_EQ(heads->size(), 3u);
  EXPECT_EQ((*heads)[0], (Position{epoch_, last_.number, 4, 0}));
  EXPECT_EQ((*heads)[1], Position{});
  EXPECT_EQ((*heads)[2], (Position{epoch_, last_.number, 9, 1}));
  // Forward only, per partition; progress that does not move still writes heads.
  u.heads = {{0, {epoch_, last_.number, 3, 0}}, {2, {epoch_, last_.number, 9, 2}}};
  ASSERT_TRUE(log_->RecordProgress({&u, 1}).ok());
  heads = log_->LoadHeads(0);
  EXPECT_EQ((*heads)[0], (Position{epoch_, last_.number, 4, 0}));
  EXPECT_EQ((*heads)[2], (Position{epoch_, last_.number, 9, 2}));
  auto newest = capture::NewestRecordedPosition(*conn_, "t");
  ASSERT_TRUE(newest.ok());
  EXPECT_EQ(*newest, (Position{epoch_, last_.number, Position::kEndOfTick, INT32_MAX}));
  // Uninstall takes the table's heads with it.
  ASSERT_TRUE(capture::Uninstall(*conn_, specs_).ok());
}

TEST_F(CaptureTest, SecondProducerCannotTakeTheLockOrATick) {
  auto other = SourceCluster().Connect(db_);
  capture::ChangeLog second(other.get(), &specs_, "t");
  ASSERT_TRUE(*log_->TryLock());
  EXPECT_FALSE(*second.TryLock());
  // A tick number already recorded cannot be recorded again (a fence against
  // a producer that lost the lock without noticing).
  auto t = second.BeginTick(last_.number);
  EXPECT_FALSE(t.ok());
  EXPECT_TRUE(Contains(t.status().message(), "already exists")) << t.status().message();
  std::string check;
  capture::Tick before{last_.number - 1, last_.snapshot};
  auto r = second.RecordTick(before, {"SELECT 1", {}}, &check, epoch_, {});
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(Contains(r.status().message(), "already exists")) << r.status().message();
  EXPECT_FALSE(other->InTransaction());
  conn_.reset();  // the session ends: its lock is released
  log_.reset();
  EXPECT_TRUE(testing::WaitUntil([&] { return *second.TryLock(); }, 10));
}

// Issue 20 item 4: a statement's rows are captured by one trigger call,
// whatever their number.
TEST_F(CaptureTest, OneTriggerCallPerStatement) {
  auto conn = SourceCluster().Connect(db_);
  // The calls of the capture function the statement made (the counter is
  // the session's, so the difference across the statement).
  auto calls = [&](const std::string& statement) -> int64_t {
    const char* count =
        "SELECT COALESCE(pg_catalog.pg_stat_get_xact_function_calls(('datatunnel.' || "
        "capture_function)::regproc), 0) FROM datatunnel.tables";
    EXPECT_TRUE(conn->Exec("BEGIN; SET LOCAL track_functions = 'pl'").ok());
    auto before = conn->Query(count);
    EXPECT_TRUE(conn->Exec(statement).ok());
    auto after = conn->Query(count);
    EXPECT_TRUE(conn->Exec("COMMIT").ok());
    return before.ok() && after.ok() ? after->GetInt64(0, 0) - before->GetInt64(0, 0) : -1;
  };
  EXPECT_EQ(calls("INSERT INTO employees(first_name) SELECT 'n' FROM generate_series(1, 200)"), 1);
  EXPECT_EQ(calls("UPDATE employees SET city = 'Oslo'"), 1);
  EXPECT_EQ(calls("UPDATE employees SET emp_id = emp_id + 1000 WHERE emp_id % 2 = 0"), 1);
  EXPECT_EQ(calls("DELETE FROM employees WHERE emp_id < 100"), 1);
  auto b = NextBatch();
  EXPECT_EQ(b.size(), 200u + 200u + 2 * 100u + 50u);  // a key change: two messages
  for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1].pos, b[i].pos);
}

// Issue 20 item 4: an UPDATE statement pairs its old and new rows by key.
TEST_F(CaptureTest, BulkUpdatePairsOldAndNewRowsByKey) {
  SourceCluster().Exec(db_,
                       "INSERT INTO employees(first_name, city) "
                       "SELECT 'e' || g, 'Oslo' FROM generate_series(1, 6) g");
  ASSERT_EQ(NextBatch().size(), 6u);
  // Old keys 1, 2, 3, 4; new keys 101, 102, 4, 5 (emp_id has no unique
  // index, so 3 -> 4 and 4 -> 5 in one statement is allowed).
  SourceCluster().Exec(db_,
                       "UPDATE employees SET emp_id = CASE WHEN emp_id <= 2 THEN emp_id + 100 "
                       "ELSE emp_id + 1 END, city = 'Rome' WHERE emp_id <= 4");
  auto b = NextBatch();
  ASSERT_EQ(b.size(), 7u);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_LT(b[i - 1].pos, b[i].pos);
  // Key 4 is in both: an update, to the row that was 3's. Keys 1, 2 and 3
  // only among the old rows, 101, 102 and 5 only among the new: three key
  // changes, each published as the row trigger's (the delete of the old key,
  // then the insert of the new row at sub 1 of the same change).
  std::set<std::string> updated, deleted, inserted;
  for (size_t i = 0; i < b.size(); ++i) {
    const Change& c = b[i];
    if (c.op == Op::kDelete) {
      EXPECT_TRUE(c.key_only);
      EXPECT_EQ(c.pos.sub, 0);
      EXPECT_LT(i + 1, b.size());
      if (i + 1 < b.size()) {
        EXPECT_EQ(b[i + 1].op, Op::kInsert);
        EXPECT_EQ(b[i + 1].pos.seq, c.pos.seq);
        EXPECT_EQ(b[i + 1].pos.sub, 1);
      }
      deleted.insert(std::string(c.row.Get(0)));
      continue;
    }
    EXPECT_EQ(c.row.Get(4), "Rome");
    const std::string row = std::string(c.row.Get(0)) + ":" + std::string(c.row.Get(1));
    EXPECT_TRUE(c.op == Op::kUpdate || c.op == Op::kInsert);
    (c.op == Op::kUpdate ? updated : inserted).insert(row);
  }
  EXPECT_EQ(updated, (std::set<std::string>{"4:e3"}));
  EXPECT_EQ(deleted, (std::set<std::string>{"1", "2", "3"}));
  EXPECT_EQ(inserted, (std::set<std::string>{"101:e1", "102:e2", "5:e4"}));
  // No key changed: every row an update, no pairing needed.
  SourceCluster().Exec(db_, "UPDATE employees SET city = 'Paris'");
  b = NextBatch();
  ASSERT_EQ(b.size(), 6u);
  for (const auto& c : b) {
    EXPECT_EQ(c.op, Op::kUpdate);
    EXPECT_EQ(c.row.Get(4), "Paris");
  }
  // A statement that changes no row adds nothing.
  SourceCluster().Exec(db_, "UPDATE employees SET city = 'x' WHERE false");
  EXPECT_TRUE(NextBatch().empty());
}

// The UPDATE's check that no key changed compares the old and the new keys
// as two arrays (install.sql): a NULL key equals a NULL key there, as in the
// row trigger's IS DISTINCT FROM, so updating a row whose key is NULL is an
// update, not a key change; with a key of two columns, one of them NULL,
// too; and a change of one of the two is a key change.
TEST_F(CaptureTest, UpdateKeepingANullKeyIsAnUpdate) {
  for (const bool two : {false, true}) {
    SCOPED_TRACE(two ? "key (emp_id, last_name)" : "key (emp_id)");
    InstallTable(
        kEmployees, "employees",
        two ? std::vector<std::string>{"emp_id", "last_name"} : std::vector<std::string>{"emp_id"});
    SourceCluster().Exec(db_,
                         "ALTER TABLE employees ALTER COLUMN emp_id DROP NOT NULL;"
                         "INSERT INTO employees(emp_id, first_name, last_name) VALUES "
                         "(NULL, 'no key', NULL), (7, 'seven', NULL)");
    ASSERT_EQ(NextBatch().size(), 2u);
    SourceCluster().Exec(db_,
                         "UPDATE employees SET city = 'Oslo' WHERE emp_id IS NULL;"
                         "UPDATE employees SET city = 'Rome' WHERE emp_id = 7");
    auto b = NextBatch();
    ASSERT_EQ(b.size(), 2u);
    EXPECT_EQ(b[0].op, Op::kUpdate);
    EXPECT_TRUE(b[0].row.IsNull(0));
    EXPECT_EQ(b[0].row.Get(4), "Oslo");
    EXPECT_EQ(b[1].op, Op::kUpdate);
    EXPECT_EQ(b[1].row.Get(0), "7");
    EXPECT_EQ(b[1].row.Get(4), "Rome");
    if (two) {
      SourceCluster().Exec(db_, "UPDATE employees SET last_name = 'x' WHERE emp_id = 7");
      b = NextBatch();
      ASSERT_EQ(b.size(), 2u);  // a key change: the delete of the old key, the insert
      EXPECT_EQ(b[0].op, Op::kDelete);
      EXPECT_EQ(b[1].op, Op::kInsert);
      EXPECT_EQ(b[1].row.Get(2), "x");
    }
  }
}

// Issue 20 item 4: a statement of more than 1,000 rows is one change row per
// 10,000 rows (its rows as an array), read back in pieces as the changes it
// holds, in order, each at its own sub-position; an UPDATE that changes a
// key keeps one change row per row (paired by key); small statements too.
TEST_F(CaptureTest, BulkStatementsAreArraysReadInPieces) {
  piece_ = 700;
  auto cdc_rows = [&] {
    return SourceCluster().Scalar(db_, "SELECT count(*) FROM employees_cdc").value_or("?");
  };
  auto expect_ordered = [](const std::vector<Change>& b) {
    for (size_t i = 1; i < b.size(); ++i) ASSERT_LT(b[i - 1].pos, b[i].pos) << i;
  };
  SourceCluster().Exec(db_,
                       "INSERT INTO employees(emp_id, first_name, last_name, city) SELECT g, "
                       "'e' || g, CASE WHEN g % 3 = 0 THEN NULL WHEN g % 3 = 1 THEN '' ELSE "
                       "'a \"q\", b\\c (x)' END, 'Oslo' FROM generate_series(1, 5000) g");
  EXPECT_EQ(cdc_rows(), "1");
  auto b = NextBatch();
  ASSERT_EQ(b.size(), 5000u);
  EXPECT_GE(pieces_, 7);
  expect_ordered(b);
  std::set<int> ids;
  for (size_t i = 0; i < b.size(); ++i) {
    const Change& c = b[i];
    EXPECT_EQ(c.op, Op::kInsert);
    EXPECT_EQ(c.pos.part(), 0);
    EXPECT_EQ(c.pos.element(), static_cast<int32_t>(i + 1));
    const int id = std::stoi(std::string(c.row.Get(0)));
    ids.insert(id);
    EXPECT_EQ(c.row.Get(1), "e" + std::to_string(id));
    if (id % 3 == 0) {
      EXPECT_TRUE(c.row.IsNull(2));
    } else {
      EXPECT_EQ(c.row.Get(2), id % 3 == 1 ? "" : "a \"q\", b\\c (x)");
    }
    EXPECT_TRUE(c.row.IsNull(3));
    EXPECT_EQ(c.row.Get(4), "Oslo");
  }
  EXPECT_EQ(ids.size(), 5000u);

  // No key changed: one change row of updates. Then a key change of 2,000
  // rows: one change row per row, each a delete of the old key and an
  // insert. Then a small statement, one change row.
  SourceCluster().Exec(db_,
                       "UPDATE employees SET city = 'Rome';"
                       "UPDATE employees SET emp_id = emp_id + 100000 WHERE emp_id <= 2000;"
                       "UPDATE employees SET city = 'Bern' WHERE emp_id = 4000");
  EXPECT_EQ(cdc_rows(), std::to_string(1 + 1 + 2000 + 1));  // nothing pruned here
  b = NextBatch();
  ASSERT_EQ(b.size(), 5000u + 4000u + 1u);
  expect_ordered(b);
  for (size_t i = 0; i < 5000; ++i) {
    EXPECT_EQ(b[i].op, Op::kUpdate);
    EXPECT_EQ(b[i].row.Get(4), "Rome");
  }
  for (size_t i = 5000; i < 9000; i += 2) {
    EXPECT_EQ(b[i].op, Op::kDelete);
    EXPECT_TRUE(b[i].key_only);
    EXPECT_EQ(b[i + 1].op, Op::kInsert);
    EXPECT_EQ(b[i + 1].pos.part(), 1);
    EXPECT_EQ(std::stoi(std::string(b[i + 1].row.Get(0))),
              std::stoi(std::string(b[i].row.Get(0))) + 100000);
  }
  EXPECT_EQ(b[9000].op, Op::kUpdate);
  EXPECT_EQ(b[9000].pos.sub, 0);

  // A bulk DELETE stores and carries only the key: an integer key as an
  // array of integers ("dt$keys1", "dt$rows" then '{NULL}'), read as record
  // literals (a NULL key as "()").
  SourceCluster().Exec(db_,
                       "ALTER TABLE employees ALTER COLUMN emp_id DROP NOT NULL;"
                       "INSERT INTO employees(emp_id, first_name) VALUES (NULL, 'no key')");
  ASSERT_EQ(NextBatch().size(), 1u);
  SourceCluster().Exec(
      db_, "DELETE FROM employees WHERE emp_id BETWEEN 2001 AND 5000 OR emp_id IS NULL");
  EXPECT_EQ(cdc_rows(), std::to_string(1 + 1 + 2000 + 1 + 1 + 1));
  EXPECT_EQ(
      *SourceCluster().Scalar(db_,
                              "SELECT \"dt$cols\"::text || ' ' || \"dt$rows\"::text || ' ' || "
                              "cardinality(\"dt$keys1\") FROM employees_cdc WHERE \"dt$action\" "
                              "= 'DELETE'"),
      "{emp_id} {NULL} 3001");
  b = NextBatch();
  ASSERT_EQ(b.size(), 3001u);
  expect_ordered(b);
  ids.clear();
  int null_keys = 0;
  for (const Change& c : b) {
    EXPECT_EQ(c.op, Op::kDelete);
    EXPECT_TRUE(c.key_only);
    if (c.row.IsNull(0)) {
      ++null_keys;
    } else {
      ids.insert(std::stoi(std::string(c.row.Get(0))));
    }
    for (size_t col = 1; col < c.row.size(); ++col) EXPECT_TRUE(c.row.IsAbsent(col)) << col;
  }
  EXPECT_EQ(null_keys, 1);
  EXPECT_EQ(ids.size(), 3000u);
  EXPECT_EQ(*ids.begin(), 2001);
  EXPECT_EQ(*ids.rbegin(), 5000);
  EXPECT_TRUE(NextBatch().empty());
}

// Every kind of statement of a writer whose search_path starts with
// kHostileSchema (support/hostile.h) is captured (single-row and bulk, key changes, TRUNCATE),
// and so are its ALTER TABLE and DROP TABLE (the event triggers): nothing of
// the hostile schema runs. Before, a bulk INSERT ran hostile./ and every
// statement hostile.= (TG_OP = 'INSERT').
TEST_F(CaptureTest, AWritersSearchPathCannotRunItsOperatorsInTheCapture) {
  SourceCluster().Exec(db_, testing::kHostileSchema);
  auto writer = SourceCluster().Connect(db_);
  auto run = [&](const std::string& sql) {
    Status st = writer->Exec(sql);
    EXPECT_TRUE(st.ok()) << sql << ": " << st.message();
  };
  run("SET search_path = hostile, pg_catalog, public");
  const std::string eq = " OPERATOR(pg_catalog.=) ";
  run("INSERT INTO public.employees (first_name) VALUES ('one')");
  run("UPDATE public.employees SET city = 'Oslo' WHERE emp_id" + eq + "1");
  run("UPDATE public.employees SET emp_id = 5000000 WHERE emp_id" + eq + "1");
  run("DELETE FROM public.employees WHERE emp_id" + eq + "5000000");
  run("INSERT INTO public.employees (first_name) SELECT 'bulk' FROM "
      "pg_catalog.generate_series(1, 2000)");
  run("UPDATE public.employees SET city = 'Rome'");
  run("UPDATE public.employees SET emp_id = emp_id OPERATOR(pg_catalog.+) 1000000");
  run("DELETE FROM public.employees");
  size_t total = 0;
  auto ops = CountNext(10005, &total);
  EXPECT_EQ(total, 10005u);
  EXPECT_EQ(ops[Op::kInsert], 1 + 1 + 2000 + 2000);
  EXPECT_EQ(ops[Op::kUpdate], 1 + 2000);
  EXPECT_EQ(ops[Op::kDelete], 1 + 1 + 2000 + 2000);
  run("ALTER TABLE public.employees ADD COLUMN extra integer");
  run("INSERT INTO public.employees (first_name, extra) VALUES ('after', 7)");
  run("TRUNCATE public.employees");
  run("DROP TABLE public.other");
  EXPECT_EQ(*SourceCluster().Scalar(db_,
                                    "SELECT count(*) FROM employees_cdc WHERE \"dt$action\" "
                                    "IN ('INSERT', 'TRUNCATE') AND \"dt$change_id\" > "
                                    "(SELECT max(\"dt$change_id\") - 2 FROM employees_cdc)"),
            "2");
}

// A key of an extension's type (citext) under the same hostile search_path:
// the capture compares keys with citext's own = (OPERATOR(public.=)), so a
// change of case only is no key change, in the statement trigger's bulk
// form and pairing and in a partitioned table's row trigger alike.
TEST_F(CaptureTest, AKeyOfAnExtensionTypeIsComparedWithItsOwnEquality) {
  for (const bool partitioned : {false, true}) {
    SCOPED_TRACE(partitioned ? "row trigger (partitioned)" : "statement triggers");
    InstallTable(
        partitioned ? "CREATE EXTENSION citext; CREATE TABLE ci (k citext, v int, PRIMARY KEY "
                      "(k, v)) PARTITION BY LIST (v); CREATE TABLE ci1 PARTITION OF ci DEFAULT"
                    : "CREATE EXTENSION citext; CREATE TABLE ci (k citext PRIMARY KEY, v int)",
        "ci", partitioned ? std::vector<std::string>{"k", "v"} : std::vector<std::string>{"k"});
    SourceCluster().Exec(db_, testing::kHostileSchema);
    auto writer = SourceCluster().Connect(db_);
    for (const char* sql :
         {"SET search_path = hostile, pg_catalog, public",
          "INSERT INTO public.ci SELECT 'Key' OPERATOR(pg_catalog.||) g::pg_catalog.text, g "
          "FROM pg_catalog.generate_series(1, 1500) g",
          "UPDATE public.ci SET k = pg_catalog.lower(k)",
          "UPDATE public.ci SET k = k OPERATOR(pg_catalog.||) 'x' WHERE v OPERATOR(pg_catalog.<=) "
          "2"}) {
      Status st = writer->Exec(sql);
      ASSERT_TRUE(st.ok()) << sql << ": " << st.message();
    }
    size_t total = 0;
    auto ops = CountNext(3004, &total);
    EXPECT_EQ(total, 3004u);
    EXPECT_EQ(ops[Op::kInsert], 1500 + 2);
    EXPECT_EQ(ops[Op::kUpdate], 1500);  // lower(k): the same citext key
    EXPECT_EQ(ops[Op::kDelete], 2);
  }
}

// A bulk DELETE written by an earlier version holds whole rows: read after
// an upgrade, it carries only the key, as the new form does.
TEST_F(CaptureTest, EarlierBulkDeleteOfWholeRowsCarriesTheKey) {
  SourceCluster().Exec(db_,
                       "INSERT INTO employees_cdc (\"dt$txid\", \"dt$action\", \"dt$cols\", "
                       "\"dt$rows\") VALUES (txid_current(), 'DELETE', "
                       "'{emp_id,first_name,last_name,dob,city}', "
                       "ARRAY['(7,Ann,,2000-01-01,Oslo)', '(8,\"B, (c)\",x,,)'])");
  auto b = NextBatch();
  ASSERT_EQ(b.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(b[i].op, Op::kDelete);
    EXPECT_TRUE(b[i].key_only);
    EXPECT_EQ(b[i].row.Get(0), i == 0 ? "7" : "8");
    for (size_t col = 1; col < b[i].row.size(); ++col) EXPECT_TRUE(b[i].row.IsAbsent(col));
  }
}

// Issue 20 item 4: `init` on a table captured by the row-level trigger of an
// earlier version switches it to the statement triggers in place; the
// pending changes are kept and read.
TEST_F(CaptureTest, InitReplacesTheRowTriggerKeepingPendingChanges) {
  SourceCluster().Exec(
      db_,
      "DROP TRIGGER datatunnel_capture_insert ON employees;"
      "DROP TRIGGER datatunnel_capture_update ON employees;"
      "DROP TRIGGER datatunnel_capture_delete ON employees;"
      "CREATE FUNCTION datatunnel.old_capture() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
      "INSERT INTO public.employees_cdc (\"dt$txid\", \"dt$action\", emp_id, first_name) "
      "VALUES (txid_current(), TG_OP, NEW.emp_id, NEW.first_name); RETURN NULL; END $$;"
      "CREATE TRIGGER datatunnel_capture AFTER INSERT OR UPDATE OR DELETE ON employees "
      "FOR EACH ROW EXECUTE FUNCTION datatunnel.old_capture();"
      "INSERT INTO employees(first_name) VALUES ('pending')");
  auto again = capture::Install(*conn_, "t", specs_);
  ASSERT_TRUE(again.ok()) << again.status().message();
  std::string actions;
  for (const auto& a : again->actions) actions += a + "\n";
  EXPECT_TRUE(Contains(actions, "replaced row trigger datatunnel_capture on public.employees"))
      << actions;
  EXPECT_EQ(*SourceCluster().Scalar(db_,
                                    "SELECT string_agg(tgname || ':' || (tgtype & 1)::text, ',' "
                                    "ORDER BY tgname) FROM pg_trigger WHERE tgrelid = "
                                    "'employees'::regclass"),
            "datatunnel_capture_delete:0,datatunnel_capture_insert:0,datatunnel_capture_update:0,"
            "datatunnel_truncate:0");
  SourceCluster().Exec(db_, "INSERT INTO employees(first_name) VALUES ('new')");
  auto b = NextBatch();
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].row.Get(1), "pending");
  EXPECT_EQ(b[1].row.Get(1), "new");
}

// Issue 20 item 2: the idle check ignores the producer's own progress
// records. A writer that took change ids after the tick and is still open
// gives no new change; before, the progress record's commit (a transaction
// after the tick) with the moved sequence called for an empty tick.
TEST_F(CaptureTest, IdleCheckIgnoresOwnProgressRecords) {
  ASSERT_TRUE(NextBatch().empty());
  auto writer = SourceCluster().Connect(db_);
  ASSERT_TRUE(writer->Exec("BEGIN; INSERT INTO employees(first_name) VALUES ('open')").ok());
  EXPECT_FALSE(*log_->ChangedSince(last_));
  capture::ProgressUpdate u;
  u.table = 0;
  u.tick = last_.number;
  u.seq = Position::kEndOfTick;
  ASSERT_TRUE(log_->RecordProgress({&u, 1}).ok());
  ASSERT_TRUE(log_->RecordProgress({&u, 1}).ok());
  EXPECT_FALSE(*log_->ChangedSince(last_)) << "the producer's own commit counted as a change";
  ASSERT_TRUE(writer->Exec("COMMIT").ok());
  EXPECT_TRUE(*log_->ChangedSince(last_));
  auto b = NextBatch();
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].row.Get(1), "open");
}

// Tables m0 .. m<n-1> (id serial key, v text) created in `db` and captured
// for tunnel "t" (one topic): their specs.
Result<std::vector<TableSpec>> CaptureTables(pg::Connection& conn, const std::string& db, int n) {
  std::vector<TableConfig> configs;
  for (int k = 0; k < n; ++k) {
    const std::string name = "m" + std::to_string(k);
    SourceCluster().Exec(db, "CREATE TABLE " + name + " (id serial PRIMARY KEY, v text)");
    TableConfig tc;
    tc.source = {"public", name};
    tc.target = tc.source;
    tc.topic = "t";
    configs.push_back(tc);
  }
  std::vector<std::string> warnings;
  DT_ASSIGN_OR_RETURN(auto specs, capture::DescribeSourceTables(conn, configs, &warnings));
  DT_RETURN_IF_ERROR(capture::Install(conn, "t", specs).status());
  return specs;
}

// Records the tick after *last with the first read (at most 100 rows) of
// each of the first `tables` tables, moving *last; returns the reads.
std::vector<capture::ChangeLog::TickRead> NextTick(capture::ChangeLog& log, capture::Tick* last,
                                                   int tables, int64_t epoch) {
  std::vector<capture::ChangeLog::TickRead> reads(tables);
  for (int k = 0; k < tables; ++k) {
    reads[k].table = static_cast<size_t>(k);
    reads[k].limit = 100;
  }
  std::string check;
  auto t = log.RecordTick(*last, {"SELECT 'sig'", {}}, &check, epoch, reads);
  EXPECT_TRUE(t.ok()) << t.status().message();
  if (t.ok()) *last = *t;
  return reads;
}

// Issue 20 item 2: with more tables than kProbeAbove, an idle tick neither
// probes nor evaluates the schema check, and one whose batch has changes
// (also a late commit) still finds them all and evaluates the check.
TEST(CaptureManyTables, IdleTickSkipsProbeAndCheckButNeverAChange) {
  constexpr int kTables = 6;
  const std::string db = SourceCluster().CreateDatabase("capture_many");
  auto conn = SourceCluster().Connect(db);
  auto specs = CaptureTables(*conn, db, kTables);
  ASSERT_TRUE(specs.ok()) << specs.status().message();
  capture::ChangeLog log(conn.get(), &*specs, "t");
  ASSERT_GT(specs->size(), capture::ChangeLog::kProbeAbove);
  const int64_t epoch = *log.LoadEpoch();
  capture::Tick last = log.LoadTicks(0, 10)->back();
  // Records the next tick with every table's first read: the rows by table.
  auto next = [&](std::string* check) {
    std::vector<capture::ChangeLog::TickRead> reads(kTables);
    for (int k = 0; k < kTables; ++k) {
      reads[k].table = static_cast<size_t>(k);
      reads[k].limit = 100;
    }
    auto t = log.RecordTick(last, {"SELECT 'sig'", {}}, check, epoch, reads);
    EXPECT_TRUE(t.ok()) << t.status().message();
    if (t.ok()) last = *t;
    std::map<int, std::vector<std::string>> got;
    for (const auto& r : reads) {
      for (const auto& c : r.changes) got[static_cast<int>(r.table)].emplace_back(c.row.Get(1));
      if (r.empty) {
        EXPECT_TRUE(r.changes.empty());
      }
    }
    return got;
  };
  std::string check;
  EXPECT_TRUE(next(&check).empty());
  EXPECT_FALSE(*log.ChangedSince(last));
  EXPECT_TRUE(next(&check).empty());
  EXPECT_EQ(check, "") << "an idle tick evaluated the schema check";
  SourceCluster().Exec(db, "INSERT INTO m4 (v) VALUES ('a')");
  auto got = next(&check);
  EXPECT_EQ(check, "sig");
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[4], std::vector<std::string>{"a"});
  // A writer open across ticks lands in the batch of its commit.
  auto writer = SourceCluster().Connect(db);
  ASSERT_TRUE(writer->Exec("BEGIN; INSERT INTO m2 (v) VALUES ('late')").ok());
  EXPECT_FALSE(*log.ChangedSince(last));
  EXPECT_TRUE(next(&check).empty());
  EXPECT_TRUE(next(&check).empty());
  ASSERT_TRUE(writer->Exec("COMMIT").ok());
  EXPECT_TRUE(*log.ChangedSince(last));
  got = next(&check);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[2], std::vector<std::string>{"late"});
  // Nothing since: idle again. The change tables' counts, in one statement.
  EXPECT_FALSE(*log.ChangedSince(last));
  EXPECT_TRUE(next(&check).empty());
  auto counts = log.CountAllPending();
  ASSERT_TRUE(counts.ok()) << counts.status().message();
  ASSERT_TRUE(counts->has_value());
  EXPECT_EQ((**counts)[2], 1);
  EXPECT_EQ((**counts)[4], 1);
  EXPECT_EQ((**counts)[0], 0);
}

// Issue 20 item 2, latency: with many tables, a tick reads only the change
// tables with changes, each table's read is planned once per connection (a
// prepared statement run with its generic plan), not at every batch:
// planning them cost more than running them; prunes are prepared statements
// too, of the pruned tables only.
TEST(CaptureManyTables, ReadsOnlyChangedTablesPlannedOnceAndPreparesPrunes) {
  constexpr int kTables = 6;
  const std::string db = SourceCluster().CreateDatabase("capture_many_plans");
  auto conn = SourceCluster().Connect(db);
  auto specs = CaptureTables(*conn, db, kTables);
  ASSERT_TRUE(specs.ok()) << specs.status().message();
  capture::ChangeLog log(conn.get(), &*specs, "t");
  ASSERT_GT(specs->size(), capture::ChangeLog::kProbeAbove);
  const int64_t epoch = *log.LoadEpoch();
  capture::Tick last = log.LoadTicks(0, 10)->back();
  auto next = [&] {
    std::map<int, size_t> got;
    for (const auto& r : NextTick(log, &last, kTables, epoch)) {
      if (!r.changes.empty()) got[static_cast<int>(r.table)] = r.changes.size();
    }
    return got;
  };
  // The producer's own prepared statements: name -> "generic/custom" plans.
  auto prepared = [&] {
    auto r = conn->Query(
        "SELECT name, generic_plans || '/' || custom_plans FROM pg_catalog.pg_prepared_statements "
        "WHERE name LIKE 'datatunnel\\_read\\_%' OR name LIKE 'datatunnel\\_prune\\_%' "
        "ORDER BY name");
    EXPECT_TRUE(r.ok()) << r.status().message();
    std::map<std::string, std::string> out;
    for (int i = 0; r.ok() && i < r->rows(); ++i) out[std::string(r->Get(i, 0))] = r->Get(i, 1);
    return out;
  };
  EXPECT_TRUE(next().empty());
  SourceCluster().Exec(db, "INSERT INTO m1 (v) VALUES ('a')");
  SourceCluster().Exec(db, "INSERT INTO m1 (v) VALUES ('b')");
  SourceCluster().Exec(db, "INSERT INTO m3 (v) VALUES ('c')");
  EXPECT_EQ(next(), (std::map<int, size_t>{{1, 2}, {3, 1}}));
  SourceCluster().Exec(db, "INSERT INTO m1 (v) VALUES ('d')");
  EXPECT_EQ(next(), (std::map<int, size_t>{{1, 1}}));
  // Reads only of the tables with changes, each planned once (m3's read may
  // run twice: touched in the batch before, it is read again, and found
  // empty, when the tick's bound is older than that batch).
  const auto reads = prepared();
  EXPECT_EQ(reads.size(), 2u);
  EXPECT_EQ(reads.count("datatunnel_read_1"), 1u);
  EXPECT_EQ(reads.count("datatunnel_read_3"), 1u);
  for (const auto& [name, plans] : reads)
    EXPECT_TRUE(plans.ends_with("/0")) << name << " " << plans;
  // Pruning m1's delivered changes: its prune statement only.
  capture::ProgressUpdate u;
  u.table = 1;
  u.tick = last.number;
  u.seq = Position::kEndOfTick;
  u.delivered = 3;
  u.prune_upto = std::numeric_limits<int64_t>::max();
  u.prune_snapshot = last.snapshot;
  u.prune_tick = last.number;
  ASSERT_TRUE(log.RecordProgress({&u, 1}).ok());
  u.delivered = 0;
  ASSERT_TRUE(log.RecordProgress({&u, 1}).ok());
  EXPECT_EQ(SourceCluster().Count(db, "SELECT count(*) FROM " + (*specs)[1].change_table.Quoted()),
            0);
  EXPECT_EQ(SourceCluster().Count(db, "SELECT count(*) FROM " + (*specs)[3].change_table.Quoted()),
            1);
  EXPECT_EQ(SourceCluster().Count(db,
                                  "SELECT published_count FROM datatunnel.tables WHERE "
                                  "table_name = 'm1'"),
            3);
  const auto after = prepared();
  ASSERT_TRUE(after.contains("datatunnel_prune_1"));
  EXPECT_FALSE(after.contains("datatunnel_prune_3"));
}

// Issue 20 item 2, latency: a tick finds the tables with changes from the
// touch sequences (one read of their last values), so a change table no
// write touched is not read at all (its scan counts stay flat, where the
// probe scanned every change table's index at every tick), and a change is
// never missed: a transaction open across several busy ticks, writing a
// table no later write touches, lands in the batch of its commit.
TEST(CaptureManyTables, ReadsOnlyTouchedTablesAndMissesNoLateCommit) {
  constexpr int kTables = 6;
  const std::string db = SourceCluster().CreateDatabase("capture_many_touch");
  auto conn = SourceCluster().Connect(db);
  auto specs = CaptureTables(*conn, db, kTables);
  ASSERT_TRUE(specs.ok()) << specs.status().message();
  capture::ChangeLog log(conn.get(), &*specs, "t");
  const int64_t epoch = *log.LoadEpoch();
  capture::Tick last = log.LoadTicks(0, 10)->back();
  auto next = [&](std::string* check) {
    std::vector<capture::ChangeLog::TickRead> reads(kTables);
    for (int k = 0; k < kTables; ++k) {
      reads[k].table = static_cast<size_t>(k);
      reads[k].limit = 100;
    }
    auto t = log.RecordTick(last, {"SELECT 'sig'", {}}, check, epoch, reads);
    EXPECT_TRUE(t.ok()) << t.status().message();
    if (t.ok()) last = *t;
    std::map<int, std::vector<std::string>> got;
    for (const auto& r : reads) {
      for (const auto& c : r.changes) got[static_cast<int>(r.table)].emplace_back(c.row.Get(1));
    }
    return got;
  };
  // Index and sequential scans of table k's change table so far, as the
  // producer's session counted them (flushed by it first).
  auto scans = [&](int k) {
    EXPECT_TRUE(conn->Exec("SELECT pg_catalog.pg_stat_force_next_flush()").ok());
    EXPECT_TRUE(conn->Exec("SELECT 1").ok());
    return SourceCluster().Count(
        db,
        "SELECT COALESCE(idx_scan, 0) + seq_scan FROM pg_catalog.pg_stat_user_tables WHERE "
        "relid = '" +
            (*specs)[k].change_table.Quoted() + "'::regclass");
  };
  std::string check;
  // Ticks until the producer knows its own ticks' touch values.
  for (int i = 0; i < 3; ++i) {
    SourceCluster().Exec(db, "INSERT INTO m0 (v) VALUES ('w" + std::to_string(i) + "')");
    EXPECT_EQ(next(&check)[0].size(), 1u);
  }
  auto writer = SourceCluster().Connect(db);
  ASSERT_TRUE(writer->Exec("BEGIN; INSERT INTO m2 (v) VALUES ('late')").ok());
  const int64_t untouched = scans(5), touched = scans(1);
  for (int i = 0; i < 4; ++i) {
    SourceCluster().Exec(db, "INSERT INTO m1 (v) VALUES ('b" + std::to_string(i) + "')");
    auto got = next(&check);
    EXPECT_EQ(check, "sig");
    ASSERT_EQ(got.size(), 1u) << "tick " << i;
    EXPECT_EQ(got[1], std::vector<std::string>{"b" + std::to_string(i)});
  }
  EXPECT_EQ(scans(5), untouched) << "an untouched change table was read";
  EXPECT_GT(scans(1), touched) << "the scan counts did not move (statistics not flushed?)";
  ASSERT_TRUE(writer->Exec("COMMIT").ok());
  SourceCluster().Exec(db, "INSERT INTO m1 (v) VALUES ('after')");
  auto got = next(&check);
  EXPECT_EQ(got, (std::map<int, std::vector<std::string>>{{1, {"after"}}, {2, {"late"}}}));
  // Idle: nothing more (the next tick may read again the tables touched in
  // the batch before, its bound tick being older, and find them empty), then
  // nothing read and no check.
  EXPECT_TRUE(next(&check).empty());
  EXPECT_TRUE(next(&check).empty());
  EXPECT_EQ(check, "");
  EXPECT_EQ(scans(5), untouched);
}

// Issue 20 item 2, latency: a busy tick reads the tables touched since its
// own lower tick's read, not since an older tick's (which read every table
// of the batch before again, and found it empty: about twice the tables
// that changed), unless a writer in flight at the lower tick committed
// since; its tables are then read too, so its late commit is not missed.
TEST(CaptureManyTables, ReadsTheBatchBeforesTablesOnlyForAWriterInFlight) {
  constexpr int kTables = 6;
  const std::string db = SourceCluster().CreateDatabase("capture_many_bound");
  auto conn = SourceCluster().Connect(db);
  auto specs = CaptureTables(*conn, db, kTables);
  ASSERT_TRUE(specs.ok()) << specs.status().message();
  capture::ChangeLog log(conn.get(), &*specs, "t");
  const int64_t epoch = *log.LoadEpoch();
  capture::Tick last = log.LoadTicks(0, 10)->back();
  // Records the next tick: the rows by table, and the tables read.
  std::set<int> read;
  auto next = [&] {
    std::map<int, std::vector<std::string>> got;
    read.clear();
    for (const auto& r : NextTick(log, &last, kTables, epoch)) {
      if (!r.empty) read.insert(static_cast<int>(r.table));
      for (const auto& c : r.changes) got[static_cast<int>(r.table)].emplace_back(c.row.Get(1));
    }
    return got;
  };
  // Ticks until the producer knows its own ticks' touch values.
  for (int i = 0; i < 3; ++i) {
    SourceCluster().Exec(db, "INSERT INTO m0 (v) VALUES ('w" + std::to_string(i) + "')");
    EXPECT_EQ(next()[0].size(), 1u);
  }
  SourceCluster().Exec(db, "INSERT INTO m1 (v) VALUES ('a')");
  EXPECT_EQ(next(), (std::map<int, std::vector<std::string>>{{1, {"a"}}}));
  SourceCluster().Exec(db, "INSERT INTO m3 (v) VALUES ('b')");
  EXPECT_EQ(next(), (std::map<int, std::vector<std::string>>{{3, {"b"}}}));
  EXPECT_EQ(read, std::set<int>{3}) << "a table of the batch before was read again";
  // A writer in flight at the lower tick, its table touched before that
  // tick's read: read once it committed.
  auto writer = SourceCluster().Connect(db);
  ASSERT_TRUE(writer->Exec("BEGIN; INSERT INTO m2 (v) VALUES ('late')").ok());
  SourceCluster().Exec(db, "INSERT INTO m4 (v) VALUES ('c')");
  EXPECT_EQ(next(), (std::map<int, std::vector<std::string>>{{4, {"c"}}}));
  ASSERT_TRUE(writer->Exec("COMMIT").ok());
  SourceCluster().Exec(db, "INSERT INTO m5 (v) VALUES ('d')");
  EXPECT_EQ(next(), (std::map<int, std::vector<std::string>>{{2, {"late"}}, {5, {"d"}}}));
  SourceCluster().Exec(db, "INSERT INTO m1 (v) VALUES ('e')");
  EXPECT_EQ(next(), (std::map<int, std::vector<std::string>>{{1, {"e"}}}));
  EXPECT_EQ(read, std::set<int>{1});
}

// The touch log's tests: a producer's ChangeLog over six tables m0..m5 in a
// database of the test's own, and the ticks it records.
class TouchLogTest : public CaptureTest {
 protected:
  static constexpr int kTables = 6;

  // The rows of every change table a tick read, by table, and the tables
  // it read.
  struct TickRows {
    std::map<int, std::vector<std::string>> rows;
    std::set<int> read;
  };
  using TableRows = std::map<int, std::vector<std::string>>;

  void SetUp() override {
    db_ = SourceCluster().CreateDatabase("capture_touch");
    conn_ = SourceCluster().Connect(db_);
    auto specs = CaptureTables(*conn_, db_, kTables);
    ASSERT_TRUE(specs.ok()) << specs.status().message();
    specs_ = *specs;
    OpenLog(0);
  }

  // A new session, as a restarted producer's: its connection and ChangeLog,
  // going on from the newest tick.
  void Reconnect() {
    log_.reset();
    conn_ = SourceCluster().Connect(db_);
    OpenLog(last_.number);
  }

  // Records the next tick with every table's first read.
  TickRows Next() {
    TickRows out;
    for (const auto& r : NextTick(*log_, &last_, kTables, epoch_)) {
      if (!r.empty) out.read.insert(static_cast<int>(r.table));
      for (const auto& c : r.changes) {
        out.rows[static_cast<int>(r.table)].emplace_back(c.row.Get(1));
      }
    }
    return out;
  }

  // `ticks` ticks with a write to m0 each: the first probes (and writes the
  // guard), the log is in use after.
  void Warm(int ticks) {
    for (int i = 0; i < ticks; ++i) {
      Exec("INSERT INTO m0 (v) VALUES ('w" + std::to_string(i) + "')");
      EXPECT_EQ(Next().rows.size(), 1u);
    }
  }

  void Exec(const std::string& sql) { SourceCluster().Exec(db_, sql); }
  int64_t Count(const std::string& sql) { return SourceCluster().Count(db_, sql); }

  // Rewrites m5's capture function as an earlier version wrote it: no rows
  // to the touch log (a WITH before its first INSERT, a statement of its
  // own for TRUNCATE). `first` SQL runs before, in the same DO block.
  void WithoutTouchesOnM5(const std::string& first = "") {
    Exec("DO $$ DECLARE f text; b text; BEGIN " + first +
         "SELECT capture_function INTO f FROM datatunnel.tables WHERE table_name = 'm5'; "
         "SELECT pg_catalog.regexp_replace(pg_catalog.regexp_replace(prosrc, 'WITH \"dt\\$t\" AS "
         "\\(INSERT INTO datatunnel\\.touches VALUES \\([^)]*\\)\\)\\)', '', 'g'), "
         "'INSERT INTO datatunnel\\.touches VALUES[^;]*;', '', 'g') "
         "INTO b FROM pg_catalog.pg_proc WHERE proname = f; "
         "EXECUTE pg_catalog.format('CREATE OR REPLACE FUNCTION datatunnel.%I() RETURNS trigger "
         "LANGUAGE plpgsql SECURITY DEFINER AS %L', f, b); END $$");
  }
};

// Issue 20 item 2: the touch log is unlogged, so a crash of the source
// empties it, with the rows of transactions that committed before and no
// tick has taken. The tunnel's guard row goes with them: the first tick
// after the crash probes every change table (and finds those changes), then
// writes the guard again, and the ticks after it read what the log names.
TEST_F(TouchLogTest, EmptiedByACrashIsNoticed) {
  auto guards = [&] {
    return Count("SELECT count(*) FROM datatunnel.touch_guards WHERE tunnel = 't'");
  };
  Warm(1);
  EXPECT_EQ(guards(), 1);
  Exec("INSERT INTO m1 (v) VALUES ('a')");
  auto tick = Next();
  EXPECT_EQ(tick.rows, (TableRows{{1, {"a"}}}));
  EXPECT_EQ(tick.read, std::set<int>{1});
  // Committed, not taken by a tick; then the source crashes.
  Exec("INSERT INTO m2 (v) VALUES ('before')");
  EXPECT_EQ(Count("SELECT count(*) FROM datatunnel.touches"), 1);
  log_.reset();
  conn_.reset();
  SourceCluster().CrashAndStart();
  EXPECT_EQ(Count("SELECT count(*) FROM datatunnel.touches"), 0)
      << "the crash did not empty the touch log";
  EXPECT_EQ(guards(), 0);
  Reconnect();
  Exec("INSERT INTO m3 (v) VALUES ('after')");
  EXPECT_EQ(Next().rows, (TableRows{{2, {"before"}}, {3, {"after"}}}));
  EXPECT_EQ(guards(), 1);
  Exec("INSERT INTO m4 (v) VALUES ('b')");
  tick = Next();
  EXPECT_EQ(tick.rows, (TableRows{{4, {"b"}}}));
  EXPECT_EQ(tick.read, std::set<int>{4}) << "the log is not used again after the crash";
}

// A table whose capture function does not write the touch log (set up by
// an earlier version, `init` not run since): the producer does not use the
// log at all, it probes every change table at every tick.
TEST_F(TouchLogTest, ATableWhoseTriggerWritesNoTouchesMeansProbing) {
  WithoutTouchesOnM5();
  Reconnect();  // the producer looks when it connects
  Warm(3);
  Exec("INSERT INTO m5 (v) VALUES ('old'); INSERT INTO m1 (v) VALUES ('new')");
  EXPECT_EQ(Count("SELECT count(*) FROM datatunnel.touches WHERE rel = 'm5_cdc'::regclass"), 0);
  EXPECT_EQ(Next().rows, (TableRows{{1, {"new"}}, {5, {"old"}}}));
  // `init` again (the upgrade) rewrites m5's function, and drops a touch
  // sequence the version before the log gave each change table (a producer
  // of that version still running then fails on it and probes, instead of
  // reading values that no longer move).
  Exec("CREATE SEQUENCE m5_cdc_touch OWNED BY m5_cdc.\"dt$txid\"");
  auto report = capture::Install(*conn_, "t", specs_);
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_TRUE(std::any_of(report->actions.begin(), report->actions.end(), [](const auto& a) {
    return Contains(a, "dropped sequence public.m5_cdc_touch");
  })) << fmt::format("{}", fmt::join(report->actions, "; "));
  EXPECT_EQ(Count("SELECT count(*) FROM pg_class WHERE relname = 'm5_cdc_touch'"), 0);
  Reconnect();
  for (int i = 0; i < 2; ++i) {
    Exec("INSERT INTO m5 (v) VALUES ('u" + std::to_string(i) + "')");
    auto tick = Next();
    EXPECT_EQ(tick.rows, (TableRows{{5, {"u" + std::to_string(i)}}}));
    // The first tick probes (and writes the guard), the next reads the log.
    if (i == 1) {
      EXPECT_EQ(tick.read, std::set<int>{5});
    }
  }
}

// An `init` while the producer runs, of an older version (which rewrites
// the capture functions to write no touches): the producer's next tick
// notices that install_capture() was replaced, probes, and checks the
// functions again (then probes at every tick), so no change is missed.
TEST_F(TouchLogTest, AnInitWhileRunningIsCheckedAgain) {
  Warm(2);
  Exec("INSERT INTO m1 (v) VALUES ('a')");
  EXPECT_EQ(Next().read, std::set<int>{1}) << "log not in use";
  // The older init: install_capture() replaced, m5's function without touches.
  WithoutTouchesOnM5(
      "SELECT pg_catalog.pg_get_functiondef('datatunnel.install_capture(regclass,text[])'::"
      "regprocedure) INTO b; EXECUTE b; ");
  for (int i = 0; i < 3; ++i) {
    const std::string v = "old" + std::to_string(i);
    Exec("INSERT INTO m5 (v) VALUES ('" + v + "'); INSERT INTO m2 (v) VALUES ('" + v + "')");
    EXPECT_EQ(Next().rows, (TableRows{{2, {v}}, {5, {v}}})) << "tick " << i;
  }
}

// A tick reads the shared change_id sequence before its transaction takes
// an xid, and takes the touch log (a DELETE, which takes one) only after:
// every bound on change_ids (ChangeLog::ProbeBound, from which a batch's
// reads start) relies on a writer whose xid follows a tick's drawing after
// that tick's read. Here the tick is held inside its touch statement while
// a writer begins, writes and stays open: taken the other way round, the
// writer's change lies below the bound of the batch it commits in, and is
// never read.
TEST_F(TouchLogTest, ATickReadsTheSequenceBeforeItTakesAnXid) {
  Warm(2);
  // The touch statement waits on advisory lock 4242 while the test holds it.
  Exec(
      "CREATE FUNCTION public.hold() RETURNS trigger LANGUAGE plpgsql AS $$ "
      "BEGIN PERFORM pg_advisory_lock(4242); PERFORM pg_advisory_unlock(4242); "
      "RETURN NULL; END $$; CREATE TRIGGER hold AFTER DELETE ON "
      "datatunnel.touches FOR EACH STATEMENT EXECUTE FUNCTION public.hold()");
  auto holder = SourceCluster().Connect(db_);
  ASSERT_TRUE(holder->Exec("SELECT pg_advisory_lock(4242)").ok());
  Exec("INSERT INTO m1 (v) VALUES ('a')");
  TickRows held;
  std::thread tick([&] { held = Next(); });
  const bool waiting = testing::WaitUntil(
      [&] {
        return Count(
                   "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT "
                   "granted") == 1;
      },
      10);
  auto writer = SourceCluster().Connect(db_);
  if (waiting) {
    EXPECT_TRUE(writer->Exec("BEGIN; INSERT INTO m2 (v) VALUES ('late')").ok());
  }
  ASSERT_TRUE(holder->Exec("SELECT pg_advisory_unlock(4242)").ok());
  tick.join();
  ASSERT_TRUE(waiting) << "the tick never waited in its touch statement";
  EXPECT_EQ(held.rows, (TableRows{{1, {"a"}}}));
  // The next tick at once (its snapshot's xmax is then the writer's xid),
  // then the writer's commit: its batch must read it.
  EXPECT_TRUE(Next().rows.empty());
  ASSERT_TRUE(writer->Exec("COMMIT").ok());
  EXPECT_EQ(Next().rows, (TableRows{{2, {"late"}}}));
}

class PartitionedCaptureTest : public CaptureTest {
 protected:
  void SetUp() override {
    InstallTable(
        "CREATE TABLE pt(id int, v text) PARTITION BY RANGE (id);"
        "CREATE TABLE pt_a PARTITION OF pt FOR VALUES FROM (0) TO (100)",
        "pt", {"id"});
  }
};

// A partitioned table keeps the row trigger: a write straight into a
// partition (no statement trigger of the parent fires for it) is captured,
// and so is one into a partition created after init.
TEST_F(PartitionedCaptureTest, KeepsTheRowTrigger) {
  EXPECT_EQ(*SourceCluster().Scalar(db_,
                                    "SELECT string_agg(tgname, ',' ORDER BY tgname) FROM "
                                    "pg_trigger WHERE tgrelid = 'pt'::regclass"),
            "datatunnel_capture,datatunnel_truncate");
  SourceCluster().Exec(db_,
                       "CREATE TABLE pt_b PARTITION OF pt FOR VALUES FROM (100) TO (200);"
                       "INSERT INTO pt VALUES (1, 'a');"
                       "INSERT INTO pt_a VALUES (2, 'b');"
                       "INSERT INTO pt_b VALUES (150, 'c');"
                       "UPDATE pt SET id = id + 10 WHERE id = 1;"
                       "DELETE FROM pt WHERE id = 2");
  auto b = NextBatch();
  ASSERT_EQ(b.size(), 6u);
  EXPECT_EQ(b[2].row.Get(0), "150");
  EXPECT_EQ(b[3].op, Op::kDelete);
  EXPECT_EQ(b[4].op, Op::kInsert);
  EXPECT_EQ(b[4].row.Get(0), "11");
  // The row trigger's delete carries the key, as the statement trigger's.
  EXPECT_EQ(b[5].op, Op::kDelete);
  EXPECT_TRUE(b[5].key_only);
  EXPECT_EQ(b[5].row.Get(0), "2");
  EXPECT_TRUE(b[5].row.IsAbsent(1));
}

constexpr const char* kHistory =
    "CREATE TABLE history(tid int, bid int, aid int, delta int, mtime timestamp, filler "
    "char(22))";

class KeylessCaptureTest : public CaptureTest {
 protected:
  void SetUp() override { InstallTable(kHistory, "history", {}); }
};

// Issue 20 item 3: a table with no key is captured with full-row identity:
// an UPDATE is the delete of the old row and the insert of the new one.
TEST_F(KeylessCaptureTest, FullRowIdentity) {
  EXPECT_TRUE(specs_[0].key.empty());
  ASSERT_EQ(warnings_.size(), 1u);
  EXPECT_TRUE(Contains(warnings_[0], "source table public.history has no primary key"))
      << warnings_[0];
  SourceCluster().Exec(db_,
                       "INSERT INTO history VALUES (1, 1, 1, 5, NULL, 'x'), (1, 1, 1, 5, NULL, "
                       "'x'), (2, 2, 2, -1, '2024-01-01', NULL)");
  ASSERT_EQ(NextBatch().size(), 3u);
  SourceCluster().Exec(db_,
                       "UPDATE history SET delta = 6 WHERE ctid = (SELECT ctid FROM history "
                       "WHERE aid = 1 LIMIT 1)");
  auto b = NextBatch();
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].op, Op::kDelete);
  EXPECT_EQ(b[0].row.Get(3), "5");
  EXPECT_TRUE(b[0].row.IsNull(4));
  EXPECT_EQ(b[0].row.Get(5), "x                     ");
  EXPECT_EQ(b[1].op, Op::kInsert);
  EXPECT_EQ(b[1].row.Get(3), "6");
  SourceCluster().Exec(db_, "DELETE FROM history WHERE aid = 1");
  b = NextBatch();
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].op, Op::kDelete);
  EXPECT_EQ(b[1].op, Op::kDelete);
  EXPECT_FALSE(b[0].key_only);
  // A bulk DELETE without a key stores and carries the whole rows.
  SourceCluster().Exec(db_,
                       "INSERT INTO history SELECT g, 0, g, 1, NULL, 'b' FROM "
                       "generate_series(1, 1500) g");
  ASSERT_EQ(NextBatch().size(), 1500u);
  SourceCluster().Exec(db_, "DELETE FROM history WHERE filler = 'b'");
  EXPECT_EQ(*SourceCluster().Scalar(db_,
                                    "SELECT \"dt$cols\"::text FROM history_cdc WHERE \"dt$action\" "
                                    "= 'DELETE' AND \"dt$rows\" IS NOT NULL"),
            "{tid,bid,aid,delta,mtime,filler}");
  b = NextBatch();
  ASSERT_EQ(b.size(), 1500u);
  for (const Change& c : b) {
    EXPECT_EQ(c.op, Op::kDelete);
    EXPECT_FALSE(c.key_only);
    EXPECT_EQ(c.row.Get(0), c.row.Get(2));
    EXPECT_EQ(c.row.Get(3), "1");
    EXPECT_TRUE(c.row.IsNull(4));
    EXPECT_EQ(c.row.Get(5), "b                     ");
  }
}

TEST(CaptureConfig, TableWithoutKeyIsCarriedAndPartitionedOneRefused) {
  std::string db = SourceCluster().CreateDatabase("nokey");
  SourceCluster().Exec(db,
                       "CREATE TABLE nokey(a int, b text);"
                       "CREATE TABLE uniq(a int NOT NULL, b text, UNIQUE (a));"
                       "CREATE TABLE parts(a int, b text) PARTITION BY RANGE (a)");
  auto conn = SourceCluster().Connect(db);
  TableConfig tc;
  tc.source = {"public", "nokey"};
  std::vector<std::string> warnings;
  auto r = capture::DescribeSourceTables(*conn, {tc}, &warnings);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE((*r)[0].key.empty());
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_TRUE(Contains(warnings[0],
                       "public.nokey has no primary key, no unique index and no "
                       "configured key"))
      << warnings[0];
  // A unique index is a key.
  tc.source = {"public", "uniq"};
  r = capture::DescribeSourceTables(*conn, {tc}, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ((*r)[0].key.size(), 1u);
  tc.source = {"public", "parts"};
  r = capture::DescribeSourceTables(*conn, {tc}, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kBadConfig);
  EXPECT_NE(r.status().message().find("key = ["), std::string::npos) << r.status().message();
  tc.source = {"public", "missing"};
  r = capture::DescribeSourceTables(*conn, {tc}, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("does not exist"), std::string::npos);
}

}  // namespace
}  // namespace datatunnel
