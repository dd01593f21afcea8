// Capture against a real PostgreSQL: install, the tick order that never skips
// a late-committing transaction, key changes, truncate, pruning.
#include <gtest/gtest.h>

#include <set>

#include "capture/change_log.h"
#include "capture/install.h"
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
  void SetUp() override {
    db_ = SourceCluster().CreateDatabase("capture");
    SourceCluster().Exec(db_, kEmployees);
    conn_ = SourceCluster().Connect(db_);
    TableConfig tc;
    tc.source = {"public", "employees"};
    tc.target = tc.source;
    tc.key = {"emp_id"};
    tc.topic = "t";
    auto specs = capture::DescribeSourceTables(*conn_, {tc}, nullptr);
    ASSERT_TRUE(specs.ok()) << specs.status().message();
    specs_ = *specs;
    auto actions = capture::Install(*conn_, "t", specs_);
    ASSERT_TRUE(actions.ok()) << actions.status().message();
    log_ = std::make_unique<capture::ChangeLog>(conn_.get(), &specs_, "t");
    auto epoch = log_->LoadEpoch();
    ASSERT_TRUE(epoch.ok());
    epoch_ = *epoch;
    auto ticks = log_->LoadTicks(0, 10);
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
    if (++steps_ % 2 == 1) {
      std::string check;
      capture::ChangeLog::TickRead first;
      first.limit = 7;
      auto t = log_->RecordTick(last_, "SELECT 'sig'", &check, epoch_, {&first, 1});
      EXPECT_TRUE(t.ok()) << t.status().message();
      EXPECT_EQ(check, "sig");
      hi = *t;
      out = std::move(first.changes);
      if (out.empty()) {
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
      size_t before = out.size();
      auto last = log_->ReadBatch(0, last_, hi, after, 1000, epoch_, &out);
      EXPECT_TRUE(last.ok()) << last.status().message();
      if (out.size() == before) break;
      after = *last;
    }
    last_ = hi;
    return out;
  }

  int steps_ = 0;
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
  EXPECT_EQ(
      *cols,
      "dt$change_id,dt$txid,dt$action,dt$captured_at,dt$old1,emp_id,first_name,last_name,dob,city");
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
  EXPECT_EQ(b[5].row.Get(1), "Ann");  // a delete carries the old row
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
  auto r = second.RecordTick(before, "SELECT 1", &check, epoch_, {});
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(Contains(r.status().message(), "already exists")) << r.status().message();
  EXPECT_FALSE(other->InTransaction());
  conn_.reset();  // the session ends: its lock is released
  log_.reset();
  EXPECT_TRUE(testing::WaitUntil([&] { return *second.TryLock(); }, 10));
}

TEST(CaptureConfig, TableWithoutKeyIsRefusedWithTheFix) {
  std::string db = SourceCluster().CreateDatabase("nokey");
  SourceCluster().Exec(db, "CREATE TABLE nokey(a int, b text)");
  auto conn = SourceCluster().Connect(db);
  TableConfig tc;
  tc.source = {"public", "nokey"};
  auto r = capture::DescribeSourceTables(*conn, {tc}, nullptr);
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
