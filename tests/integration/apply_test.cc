// Apply against a real PostgreSQL: upserts and deletes, positions committed
// with the rows, the guard against a second consumer, both write paths.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "apply/applier.h"
#include "apply/consistency.h"
#include "apply/install.h"
#include "support/pg_cluster.h"
#include "support/pg_fault.h"
#include "support/test_util.h"

namespace datatunnel {
namespace {

using testing::TargetCluster;

class ApplyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_ = TargetCluster().CreateDatabase("apply");
    TargetCluster().Exec(db_, "CREATE TABLE t(id int, name text, n numeric)");
    conn_ = TargetCluster().Connect(db_);
    TableSpec src;
    src.source = src.target = {"public", "t"};
    Column id, name, n;
    id.name = "id";
    id.type_sql = "integer";
    name.name = "name";
    name.type_sql = "text";
    n.name = "n";
    n.type_sql = "numeric";
    src.columns = {id, name, n};
    src.key = {0};
    ASSERT_TRUE(apply::Install(*conn_, {src}).ok());
    TableConfig tc;
    tc.source = tc.target = {"public", "t"};
    tc.topic = "topic";
    auto specs = apply::DescribeTargetTables(*conn_, {tc});
    ASSERT_TRUE(specs.ok()) << specs.status().message();
    specs_ = *specs;
    applier_ = std::make_unique<apply::Applier>(conn_.get(), &specs_);
  }

  Change Row3(Op op, int64_t seq, const char* id, const char* name = nullptr,
              const char* n = nullptr) {
    Change c;
    c.op = op;
    c.pos = {1, 1, seq, 0};
    c.row.Reset(3);
    c.row.Set(0, id);
    if (name) c.row.Set(1, name);
    if (n) c.row.Set(2, n);
    return c;
  }

  Status Apply(const std::vector<Change>& cs, int64_t expected, int64_t offset) {
    std::vector<const Change*> ptrs;
    for (const auto& c : cs) ptrs.push_back(&c);
    apply::Advance a;
    a.stream = "topic";
    a.partition = 0;
    a.expected_offset = expected;
    a.offset = offset;
    a.pos = cs.empty() ? Position{} : cs.back().pos;
    a.applied = static_cast<int64_t>(cs.size());
    return applier_->Apply(ptrs, {&a, 1});
  }

  std::string db_;
  std::unique_ptr<pg::Connection> conn_;
  std::vector<TableSpec> specs_;
  std::unique_ptr<apply::Applier> applier_;
};

TEST_F(ApplyTest, UpsertDeleteAndPositionInOneTransaction) {
  auto st = applier_->Load("topic", 0, 0);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->offset, -1);
  ASSERT_TRUE(Apply({Row3(Op::kInsert, 1, "1", "a", "1.50"), Row3(Op::kInsert, 2, "2", "b"),
                     Row3(Op::kUpdate, 3, "1", "a2", "100000000000000000000.000001"),
                     Row3(Op::kDelete, 4, "2")},
                    -1, 3)
                  .ok());
  EXPECT_EQ(
      TargetCluster().Scalar(db_, "SELECT string_agg(id || ':' || name || ':' || n, ',') FROM t"),
      "1:a2:100000000000000000000.000001");
  auto after = applier_->Load("topic", 0, 0);
  EXPECT_EQ(after->offset, 3);
  EXPECT_EQ(after->pos.seq, 4);
  EXPECT_EQ(TargetCluster().Count(db_, "SELECT applied_count FROM datatunnel.applied"), 4);
}

TEST_F(ApplyTest, GuardFencesAConsumerThatLostItsPartition) {
  ASSERT_TRUE(applier_->Load("topic", 0, 0).ok());
  ASSERT_TRUE(Apply({Row3(Op::kInsert, 1, "1", "a")}, -1, 0).ok());
  // A zombie still believes the stored offset is -1.
  Status st = Apply({Row3(Op::kInsert, 1, "1", "zombie")}, -1, 0);
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(applier_->position_moved());
  EXPECT_EQ(TargetCluster().Scalar(db_, "SELECT name FROM t WHERE id = 1"), "a");
}

// The advances of a batch over several partitions go in one statement: the
// guard still holds for each, and one that moved applies nothing.
TEST_F(ApplyTest, GuardHoldsForEveryPartitionOfABatch) {
  ASSERT_TRUE(applier_->Load("topic", 0, 0).ok());
  ASSERT_TRUE(applier_->Load("topic", 1, 0).ok());
  auto apply = [&](const char* name, int64_t expected1) {
    Change a = Row3(Op::kInsert, 1, "1", name);
    Change b = Row3(Op::kInsert, 2, "2", name);
    std::vector<const Change*> ptrs = {&a, &b};
    std::vector<apply::Advance> adv(2);
    for (int p = 0; p < 2; ++p) {
      adv[p].stream = "topic";
      adv[p].partition = p;
      adv[p].offset = 0;
      adv[p].applied = 1;
    }
    adv[0].expected_offset = -1;
    adv[0].pos = a.pos;
    adv[1].expected_offset = expected1;
    adv[1].pos = b.pos;
    return applier_->Apply(ptrs, adv);
  };
  Status st = apply("a", -1);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(applier_->Load("topic", 1, 0)->offset, 0);
  // Partition 1 moved past what this consumer read: nothing of the batch.
  TargetCluster().Exec(db_, "UPDATE datatunnel.applied SET kafka_offset = -1 WHERE partition = 0");
  st = apply("b", -1);
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(applier_->position_moved());
  EXPECT_EQ(TargetCluster().Scalar(db_, "SELECT string_agg(name, ',' ORDER BY id) FROM t"), "a,a");
}

// The advances of a batch over several partitions are one set-based UPDATE:
// datatunnel.advance() (a PL/pgSQL call per partition, 12 ms of a batch over
// 500 tables) runs only for a partition that moved, to fail the batch.
TEST_F(ApplyTest, AdvancesOfABatchAreOneUpdate) {
  for (int p = 0; p < 3; ++p) ASSERT_TRUE(applier_->Load("topic", p, 0).ok());
  TargetCluster().Exec(db_,
                       "ALTER FUNCTION datatunnel.advance(text, integer, bigint, bigint, bigint, "
                       "bigint, bigint, integer, bigint, bigint, bigint, bigint, bigint, bigint, "
                       "bigint, integer) RENAME TO advance_real");
  TargetCluster().Exec(db_,
                       "CREATE FUNCTION datatunnel.advance(text, integer, bigint, bigint, bigint, "
                       "bigint, bigint, integer, bigint, bigint, bigint, bigint, bigint, bigint, "
                       "bigint, integer) RETURNS void LANGUAGE plpgsql AS "
                       "$$BEGIN RAISE EXCEPTION 'advance() called for partition %', $2; END$$");
  Change a = Row3(Op::kInsert, 1, "1", "a");
  Change b = Row3(Op::kInsert, 2, "2", "b");
  Change c = Row3(Op::kDelete, 3, "3");
  std::vector<const Change*> ptrs = {&a, &b, &c};
  std::vector<apply::Advance> adv(3);
  for (int p = 0; p < 3; ++p) {
    adv[p].stream = "topic";
    adv[p].partition = p;
    adv[p].expected_offset = -1;
    adv[p].offset = 10 + p;
    adv[p].pos = ptrs[p]->pos;
    adv[p].tail = {1, 1, 7, 0};
    adv[p].applied = 1;
    adv[p].skipped = p;
    adv[p].captured_us = p == 1 ? 0 : 1'700'000'000'000'000;
  }
  Status st = applier_->Apply(ptrs, adv);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(TargetCluster().Scalar(db_, "SELECT string_agg(name, ',' ORDER BY id) FROM t"), "a,b");
  EXPECT_EQ(TargetCluster().Scalar(
                db_,
                "SELECT string_agg(concat_ws(':', partition, kafka_offset, seq, tail_seq, "
                "applied_count, skipped_count, extract(epoch FROM last_captured_at)::bigint), ',' "
                "ORDER BY partition) FROM datatunnel.applied"),
            "0:10:1:7:1:0:1700000000,1:11:2:7:1:1,2:12:3:7:1:2:1700000000");
  // A partition that moved: advance() is called for it (here the stand-in,
  // whose error names it) and the batch applies nothing.
  for (auto& x : adv) x.expected_offset = x.offset;
  adv[1].expected_offset = 5;
  st = applier_->Apply(ptrs, adv);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("advance() called for partition 1"), std::string::npos)
      << st.message();
  EXPECT_EQ(TargetCluster().Scalar(db_,
                                   "SELECT string_agg(kafka_offset::text, ',' ORDER BY "
                                   "partition) FROM datatunnel.applied"),
            "10,11,12");
}

TEST_F(ApplyTest, LargeBatchesAreStagedWithCopy) {
  ASSERT_TRUE(applier_->Load("topic", 0, 0).ok());
  std::vector<Change> cs;
  std::vector<std::string> names;
  for (int i = 0; i < 1000; ++i) names.push_back("name\t" + std::to_string(i) + "\\\n");
  for (int i = 0; i < 1000; ++i) {
    cs.push_back(Row3(Op::kInsert, i + 1, std::to_string(i).c_str(), names[i].c_str()));
  }
  for (int i = 0; i < 500; ++i)
    cs.push_back(Row3(Op::kDelete, 2000 + i, std::to_string(i).c_str()));
  ASSERT_GT(cs.size(), apply::kPipelinedMaxRows);
  ASSERT_TRUE(Apply(cs, -1, 1499).ok());
  EXPECT_EQ(TargetCluster().Count(db_, "SELECT count(*) FROM t"), 500);
  EXPECT_EQ(TargetCluster().Scalar(db_, "SELECT name FROM t WHERE id = 999"), names[999]);
}

// A large batch first goes straight into the table with COPY; one row that
// is already there undoes that, and the staged upsert applies the batch.
TEST_F(ApplyTest, LargeBatchWithARowAlreadyThereIsUpserted) {
  ASSERT_TRUE(applier_->Load("topic", 0, 0).ok());
  TargetCluster().Exec(db_, "INSERT INTO t VALUES (7, 'old', 1)");
  std::vector<Change> cs;
  for (int i = 0; i < 1000; ++i) {
    cs.push_back(Row3(Op::kRead, i + 1, std::to_string(i).c_str(), "new", "2"));
  }
  ASSERT_GT(cs.size(), apply::kPipelinedMaxRows);
  Status st = Apply(cs, -1, 999);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(TargetCluster().Count(db_, "SELECT count(*) FROM t"), 1000);
  EXPECT_EQ(TargetCluster().Scalar(db_, "SELECT name || n FROM t WHERE id = 7"), "new2");
  // The next large batch of new rows: still applied (staged while backing off).
  cs.clear();
  for (int i = 1000; i < 1300; ++i) {
    cs.push_back(Row3(Op::kInsert, i + 1, std::to_string(i).c_str(), "later"));
  }
  st = Apply(cs, 999, 1299);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(TargetCluster().Count(db_, "SELECT count(*) FROM t"), 1300);
}

TEST_F(ApplyTest, ColumnsAMessageDoesNotCarryAreLeftAlone) {
  ASSERT_TRUE(applier_->Load("topic", 0, 0).ok());
  ASSERT_TRUE(Apply({Row3(Op::kInsert, 1, "1", "a", "7")}, -1, 0).ok());
  Change partial;
  partial.op = Op::kUpdate;
  partial.pos = {1, 1, 2, 0};
  partial.row.ResetAbsent(3);
  partial.row.Set(0, "1");
  partial.row.Set(1, "b");
  ASSERT_TRUE(Apply({partial}, 0, 1).ok());
  EXPECT_EQ(TargetCluster().Scalar(db_, "SELECT name || n FROM t WHERE id = 1"), "b7");
}

// The chain's state (apply/chain.h): the tail commits with the offset, a gap
// is recorded with the batch that stops before it, and a snapshot into the
// emptied table supersedes everything up to a tick and clears the gap.
TEST_F(ApplyTest, ChainTailGapAndResync) {
  ASSERT_TRUE(applier_->Load("topic", 0, 0).ok());
  std::vector<Change> cs = {Row3(Op::kInsert, 1, "1", "a")};
  std::vector<const Change*> ptrs = {&cs[0]};
  apply::Advance a;
  a.stream = "topic";
  a.partition = 0;
  a.expected_offset = -1;
  a.offset = 4;
  a.pos = cs[0].pos;
  a.tail = {1, 1, 9, 2};  // a schema marker read after the change
  a.applied = 1;
  a.gap = true;
  a.gap_offset = 5;
  a.gap_expected = a.tail;
  a.gap_found = {1, 1, 10, 0};
  ASSERT_TRUE(applier_->Apply(ptrs, {&a, 1}).ok());
  auto st = applier_->Load("topic", 0, 0);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->offset, 4);
  EXPECT_EQ(st->tail, (Position{1, 1, 9, 2}));
  EXPECT_EQ(st->resync, Position{});
  auto gaps = apply::LoadGaps(*conn_, {"public", "t"});
  ASSERT_TRUE(gaps.ok()) << gaps.status().message();
  ASSERT_EQ(gaps->size(), 1u);
  EXPECT_EQ((*gaps)[0].stream, "topic");
  EXPECT_EQ((*gaps)[0].offset, 5);
  EXPECT_EQ((*gaps)[0].expected, "[1,1,9,2]");
  EXPECT_EQ((*gaps)[0].found, "[1,1,10,0]");
  EXPECT_FALSE((*gaps)[0].detected_at.empty());
  const std::string line = (*gaps)[0].Describe("public.t", "public.t");
  EXPECT_NE(line.find("topic [0] offset 5: a message is missing from the topic"), std::string::npos)
      << line;

  // A TRUNCATE barrier partition 1 waits at, below the resync.
  ASSERT_TRUE(conn_->Exec("BEGIN").ok());
  auto arrived = conn_->Query(
      "SELECT datatunnel.truncate_arrive('topic', 1, 1, 3, 0, 1, 2, "
      "'public', 't')");
  ASSERT_TRUE(arrived.ok()) << arrived.status().message();
  EXPECT_FALSE(arrived->GetBool(0, 0));
  ASSERT_TRUE(conn_->Commit().ok());
  EXPECT_TRUE(applier_->OpenBarrier("topic", 1)->has_value());

  ASSERT_TRUE(apply::ResyncForSnapshot(*conn_, {"public", "t"}, apply::ResyncPosition(1, 7)).ok());
  EXPECT_EQ(TargetCluster().Count(db_, "SELECT count(*) FROM t"), 0);
  EXPECT_TRUE(apply::LoadGaps(*conn_, {"public", "t"})->empty());
  st = applier_->Load("topic", 0, 0);
  EXPECT_EQ(st->resync, (Position{1, 7, Position::kEndOfTick, INT32_MAX}));
  EXPECT_EQ(st->tail, st->resync);  // what it supersedes can be no gap
  EXPECT_EQ(st->offset, 4);         // read on from where it stopped
  // A partition never read gets it too, and the waiting barrier is done.
  EXPECT_EQ(applier_->Load("other", 3, 0)->resync, st->resync);
  EXPECT_FALSE(applier_->OpenBarrier("topic", 1)->has_value());
  EXPECT_TRUE(*applier_->BarrierDone("topic", {1, 1, 3, 0}));
  // A stale TRUNCATE arriving later is done without running.
  TargetCluster().Exec(db_, "INSERT INTO t VALUES (1, 'new', 1)");
  ASSERT_TRUE(conn_->Exec("BEGIN").ok());
  arrived = conn_->Query(
      "SELECT datatunnel.truncate_arrive('topic', 1, 2, 3, 0, 0, 2, "
      "'public', 't')");
  ASSERT_TRUE(arrived.ok());
  EXPECT_TRUE(arrived->GetBool(0, 0));
  ASSERT_TRUE(conn_->Commit().ok());
  EXPECT_EQ(TargetCluster().Count(db_, "SELECT count(*) FROM t"), 1);
  // The resync only moves forward.
  ASSERT_TRUE(apply::ResyncForSnapshot(*conn_, {"public", "t"}, apply::ResyncPosition(1, 3)).ok());
  EXPECT_EQ(applier_->Load("topic", 0, 0)->resync.tick, 7);
}

// Issue 20: a tick spread over hundreds of tables writes a row or two to
// each, and parsing and planning every table's statement in every batch was
// a third of the target's time. Such statements and the advances run as
// statements prepared once per session; a statement whose Parse the server
// skipped (after an error earlier in the pipeline) is prepared again later,
// and one prepared before the error stays usable after the rollback.
TEST_F(ApplyTest, FewRowsRunAsStatementsPreparedOncePerSession) {
  auto prepared = [&] {
    auto r = conn_->Query(
        "SELECT count(*) FILTER (WHERE statement LIKE 'INSERT INTO \"public\".\"t\"%'), "
        "count(*) FILTER (WHERE statement LIKE 'DELETE FROM \"public\".\"t\"%'), count(*) "
        "FROM pg_prepared_statements WHERE NOT from_sql");
    return r.ok() ? fmt::format("{}/{}/{}", r->Get(0, 0), r->Get(0, 1), r->Get(0, 2))
                  : "error: " + r.status().message();
  };
  ASSERT_TRUE(applier_->Load("topic", 0, 0).ok());
  // A wrong guard: the advance (prepared, first) fails, the upsert after it
  // is skipped, its Parse with it.
  Status st = Apply({Row3(Op::kInsert, 1, "1", "a")}, 5, 0);
  EXPECT_TRUE(applier_->position_moved()) << st.message();
  EXPECT_EQ(prepared(), "0/0/1");
  EXPECT_EQ(conn_->prepared_count(), 1u);
  st = Apply({Row3(Op::kInsert, 1, "1", "a")}, -1, 0);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(prepared(), "1/0/2");
  for (int i = 0; i < 3; ++i) {
    st = Apply({Row3(Op::kUpdate, 2 * i + 2, "1", std::to_string(i).c_str()),
                Row3(Op::kDelete, 2 * i + 3, "2")},
               2 * i, 2 * i + 2);
    ASSERT_TRUE(st.ok()) << st.message();
  }
  // The same three statements, however many batches ran them.
  EXPECT_EQ(prepared(), "1/1/3");
  EXPECT_EQ(TargetCluster().Scalar(db_, "SELECT string_agg(id || ':' || name, ',') FROM t"), "1:2");
  // More rows than kPreparedMaxRows: unnamed, nothing more kept.
  std::vector<Change> many;
  for (int i = 0; i < 10; ++i) {
    many.push_back(Row3(Op::kInsert, 100 + i, std::to_string(10 + i).c_str(), "m"));
  }
  st = Apply(many, 6, 7);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(prepared(), "1/1/3");
  EXPECT_EQ(TargetCluster().Count(db_, "SELECT count(*) FROM t WHERE name = 'm'"), 10);
}

TEST_F(ApplyTest, ConstraintViolationIsNotRetryable) {
  TargetCluster().Exec(db_, "ALTER TABLE t ALTER COLUMN name SET NOT NULL");
  ASSERT_TRUE(applier_->Load("topic", 0, 0).ok());
  Status st = Apply({Row3(Op::kInsert, 1, "1")}, -1, 0);
  EXPECT_FALSE(st.ok());
  EXPECT_FALSE(st.IsRetryable());
  EXPECT_NE(st.message().find("null value"), std::string::npos) << st.message();
  // Nothing was applied, the position did not move.
  EXPECT_EQ(applier_->Load("topic", 0, 0)->offset, -1);
}

// Issue 20: a table with few changes in a large batch is written with
// parameters, not staged (staging tables cost a catalog entry each, and
// PostgreSQL empties every ON COMMIT DELETE ROWS table of a session at each
// commit that touched one: with 500 tables that was 1,000 truncations per
// batch). The staging tables a batch filled are empty after its commit.
TEST_F(ApplyTest, OnlyTablesWithManyChangesAreStaged) {
  TargetCluster().Exec(db_, "CREATE TABLE u(id int PRIMARY KEY, name text, n numeric)");
  TableConfig tc, uc;
  tc.source = tc.target = {"public", "t"};
  tc.topic = "topic";
  uc.source = uc.target = {"public", "u"};
  uc.topic = "topic_u";
  auto specs = apply::DescribeTargetTables(*conn_, {tc, uc});
  ASSERT_TRUE(specs.ok()) << specs.status().message();
  std::vector<TableSpec> two = *specs;
  apply::Applier applier(conn_.get(), &two);
  ASSERT_TRUE(applier.Load("topic", 0, 0).ok());
  ASSERT_TRUE(applier.Load("topic_u", 0, 1).ok());
  TargetCluster().Exec(db_, "INSERT INTO t VALUES (7, 'old', 1)");  // no COPY straight in
  auto temp_tables = [&] {
    auto r = conn_->Query(
        "SELECT coalesce(string_agg(relname, ',' ORDER BY relname), '') FROM pg_class "
        "WHERE relpersistence = 't' AND relname LIKE 'dt\\_%'");
    return r.ok() ? std::string(r->Get(0, 0)) : "error: " + r.status().message();
  };
  for (int round = 0; round < 2; ++round) {
    std::vector<Change> cs;
    for (int i = 0; i < 300; ++i) {
      cs.push_back(Row3(Op::kInsert, round * 1000 + i + 1, std::to_string(i).c_str(), "r",
                        std::to_string(round).c_str()));
    }
    for (int i = 0; i < 5; ++i) {
      Change c = Row3(Op::kInsert, round * 1000 + 500 + i, std::to_string(i).c_str(), "u",
                      std::to_string(round).c_str());
      c.table = 1;
      cs.push_back(c);
    }
    std::vector<const Change*> ptrs;
    for (const auto& c : cs) ptrs.push_back(&c);
    apply::Advance a, b;
    a.stream = "topic";
    a.expected_offset = round == 0 ? -1 : 299;
    a.offset = 299;
    a.pos = cs[299].pos;
    b.stream = "topic_u";
    b.expected_offset = round == 0 ? -1 : 4;
    b.offset = 4;
    b.pos = cs.back().pos;
    std::vector<apply::Advance> adv = {a, b};
    Status st = applier.Apply(ptrs, adv);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(temp_tables(), "dt_keys_0,dt_stage_0");
    EXPECT_EQ(
        TargetCluster().Count(db_, "SELECT count(*) FROM t WHERE n = " + std::to_string(round)),
        300);
    EXPECT_EQ(
        TargetCluster().Count(db_, "SELECT count(*) FROM u WHERE n = " + std::to_string(round)), 5);
    auto left = conn_->Query("SELECT count(*) FROM dt_stage_0");
    ASSERT_TRUE(left.ok());
    EXPECT_EQ(left->Get(0, 0), "0");
  }
}

// More deletes than go as parameter statements, by a one-column key: one
// DELETE of an array of the keys, no staging table; keys that need quoting
// in an array literal included. A two-column key still stages its keys.
TEST_F(ApplyTest, LargeDeletesByOneKeyColumnGoAsAnArray) {
  TargetCluster().Exec(db_,
                       "CREATE TABLE k(id text PRIMARY KEY, n int); "
                       "CREATE TABLE k2(a int, b int, n int, PRIMARY KEY (a, b))");
  TableConfig kc, k2c;
  kc.source = kc.target = {"public", "k"};
  kc.topic = "topic_k";
  k2c.source = k2c.target = {"public", "k2"};
  k2c.topic = "topic_k2";
  auto specs = apply::DescribeTargetTables(*conn_, {kc, k2c});
  ASSERT_TRUE(specs.ok()) << specs.status().message();
  std::vector<TableSpec> two = *specs;
  apply::Applier applier(conn_.get(), &two);
  ASSERT_TRUE(applier.Load("topic_k", 0, 0).ok());
  ASSERT_TRUE(applier.Load("topic_k2", 0, 1).ok());
  std::vector<std::string> keys = {"NULL", "a\"b", "c\\d", "{e,f}", " g ", "", "h,i", "é"};
  for (int i = 0; i < 400; ++i) keys.push_back("key " + std::to_string(i));
  std::string values;
  for (const auto& k : keys) {
    values += fmt::format("{}('{}', 1)", values.empty() ? "" : ", ", k);
  }
  TargetCluster().Exec(db_, "INSERT INTO k VALUES " + values + ", ('kept', 1)");
  TargetCluster().Exec(db_, "INSERT INTO k2 SELECT i, i, 1 FROM generate_series(0, 400) i");
  std::vector<Change> cs;
  for (size_t i = 0; i < keys.size(); ++i) {
    Change c;
    c.op = Op::kDelete;
    c.pos = {1, 1, static_cast<int64_t>(i + 1), 0};
    c.row.Reset(2);
    c.row.Set(0, keys[i]);
    cs.push_back(c);
  }
  for (int i = 0; i < 400; ++i) {
    Change c;
    c.op = Op::kDelete;
    c.table = 1;
    c.pos = {1, 1, 1000 + i, 0};
    c.row.Reset(3);
    c.row.Set(0, std::to_string(i));
    c.row.Set(1, std::to_string(i));
    cs.push_back(c);
  }
  std::vector<const Change*> ptrs;
  for (const auto& c : cs) ptrs.push_back(&c);
  apply::Advance a, b;
  a.stream = "topic_k";
  a.offset = static_cast<int64_t>(keys.size()) - 1;
  a.pos = cs[keys.size() - 1].pos;
  b.stream = "topic_k2";
  b.offset = 399;
  b.pos = cs.back().pos;
  std::vector<apply::Advance> adv = {a, b};
  Status st = applier.Apply(ptrs, adv);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(TargetCluster().Scalar(db_, "SELECT string_agg(id, ',') FROM k"), "kept");
  EXPECT_EQ(TargetCluster().Count(db_, "SELECT count(*) FROM k2"), 1);
  auto r = conn_->Query(
      "SELECT coalesce(string_agg(relname, ',' ORDER BY relname), '') FROM pg_class "
      "WHERE relpersistence = 't' AND relname LIKE 'dt\\_%'");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Get(0, 0), "dt_keys_1,dt_stage_1");
}

// Whole ticks (apply_consistency = "transaction") keep a snapshot chunk
// packed: the applier writes its COPY text among the other changes of its
// batch, in position order, whether the batch is applied at once or its
// tick streamed in pieces. parent and child are linked by a foreign key
// that stays on; solo is linked to nothing (a streamed piece writes its
// chunk straight in).
class WholeTickChunkTest : public ApplyTest, public ::testing::WithParamInterface<bool> {
 protected:
  static Change Of(uint32_t table, Op op, int64_t tick, int64_t seq,
                   std::vector<const char*> values) {
    Change c;
    c.op = op;
    c.table = table;
    c.pos = {1, tick, seq, 0};
    c.row.Reset(3);
    for (size_t i = 0; i < values.size(); ++i) {
      if (values[i]) c.row.Set(i, values[i]);
    }
    return c;
  }
  // A packed chunk of `rows` lines read at tick `tick`.
  static Change Chunk(uint32_t table, int64_t tick, int64_t rows, std::string text) {
    Change c;
    c.op = Op::kRead;
    c.table = table;
    c.pos = {1, tick, Position::kSnapshotSeqBase + rows - 1, 0};
    c.packed_rows = rows;
    c.row.Assign(std::move(text));
    return c;
  }
  // The target tables public.<names> (each its own topic) in *specs, and a
  // transactional applier over them that loaded partition 0 of each.
  // REQUIRES: *specs outlives *applier.
  void TransactionalApplier(const std::vector<std::string>& names, std::vector<TableSpec>* specs,
                            std::unique_ptr<apply::Applier>* applier) {
    std::vector<TableConfig> tcs(names.size());
    for (size_t i = 0; i < names.size(); ++i) {
      tcs[i].source = tcs[i].target = {"public", names[i]};
      tcs[i].topic = names[i];
    }
    auto described = apply::DescribeTargetTables(*conn_, tcs);
    ASSERT_TRUE(described.ok()) << described.status().message();
    *specs = *described;
    auto order = apply::LoadTableOrder(*conn_, *specs);
    ASSERT_TRUE(order.ok()) << order.status().message();
    *applier = std::make_unique<apply::Applier>(conn_.get(), specs);
    (*applier)->SetTransactional("t", *order);
    for (uint32_t t = 0; t < names.size(); ++t) {
      ASSERT_TRUE((*applier)->Load(names[t], 0, t).ok());
    }
  }
};

TEST_P(WholeTickChunkTest, AChunkGoesBetweenItsTicksChangesAndTheNext) {
  const bool streamed = GetParam();
  TargetCluster().Exec(db_,
                       "CREATE TABLE parent(id int PRIMARY KEY, name text, n int); "
                       "CREATE TABLE child(id int PRIMARY KEY, parent_id int NOT NULL "
                       "REFERENCES parent(id), note text); "
                       "CREATE TABLE solo(id int PRIMARY KEY, v text, n int); "
                       "INSERT INTO parent VALUES (1, 'p1', 0), (2, 'p2', 0)");
  const std::vector<std::string> names = {"parent", "child", "solo"};
  std::vector<TableSpec> three;
  std::unique_ptr<apply::Applier> applier;
  ASSERT_NO_FATAL_FAILURE(TransactionalApplier(names, &three, &applier));
  // Tick 5: parent 3 arrives, and the copy of child (whose row 2 references
  // it) and of solo. Tick 6: a child row copied in tick 5 changes, another
  // goes, and so does the parent it referenced; solo row 2 changes.
  std::vector<Change> tick5 = {
      Of(0, Op::kInsert, 5, 1, {"3", "p3", "0"}),
      Of(1, Op::kDelete, 5, 2, {"7"}),  // a child change before its copy: a delete
      // child's chunk lacks `note`, as if the target got that column after
      // the chunk was decoded (a schema marker read while it waited in the
      // tick gate): left alone, NULL in the rows it inserts.
      Chunk(1, 5, 3, "1\t1\n2\t3\n3\t2\n"),
      Chunk(2, 5, 2, "1\tone\t\\N\n2\ttwo\t2\n"),
  };
  std::vector<Change> tick6 = {
      Of(1, Op::kUpdate, 6, 1, {"1", "1", "c1 new"}),
      Of(1, Op::kDelete, 6, 2, {"3"}),
      Of(0, Op::kDelete, 6, 3, {"2"}),
      Of(1, Op::kInsert, 6, 4, {"4", "3", "c4"}),
      Of(2, Op::kUpdate, 6, 5, {"2", "two new", "22"}),
  };
  const auto advances = [&](const std::vector<Change>& cs, int64_t expected) {
    std::vector<apply::Advance> adv;
    for (uint32_t t = 0; t < 3; ++t) {
      apply::Advance a;
      a.stream = names[t];
      a.expected_offset = expected;
      a.offset = expected + 1;
      for (const Change& c : cs) {
        if (c.table == t) a.pos = std::max(a.pos, c.pos);
      }
      if (a.pos != Position{}) adv.push_back(a);
    }
    return adv;
  };
  const auto ptrs = [](std::vector<Change>& cs, bool reversed) {
    std::vector<const Change*> out;
    for (const Change& c : cs) out.push_back(&c);
    // Partitions interleave their items in any order: the applier orders them.
    if (reversed) std::reverse(out.begin(), out.end());
    return out;
  };
  if (streamed) {
    Status st = applier->StagePiece(ptrs(tick5, true), advances(tick5, -1));
    ASSERT_TRUE(st.ok()) << st.message();
    // Nothing is visible before the tick's end.
    EXPECT_EQ(TargetCluster().Count(db_, "SELECT count(*) FROM child"), 0);
    st = applier->FinishStream(ptrs(tick6, true), advances(tick6, 0), nullptr);
    ASSERT_TRUE(st.ok()) << st.message();
    // solo's chunk (2 rows) and its update went straight in.
    EXPECT_EQ(applier->stream_direct(), 3);
  } else {
    std::vector<Change> both = tick5;
    both.insert(both.end(), tick6.begin(), tick6.end());
    std::vector<apply::Advance> adv = advances(both, -1);
    for (auto& a : adv) a.offset = 0;
    Status st = applier->Apply(ptrs(both, true), adv);
    ASSERT_TRUE(st.ok()) << st.message();
  }
  EXPECT_EQ(TargetCluster().Scalar(db_,
                                   "SELECT string_agg(id || ':' || name, ',' ORDER BY id) "
                                   "FROM parent"),
            "1:p1,3:p3");
  EXPECT_EQ(TargetCluster().Scalar(db_,
                                   "SELECT string_agg(id || ':' || parent_id || ':' || "
                                   "coalesce(note, 'null'), ',' ORDER BY id) FROM child"),
            "1:1:c1 new,2:3:null,4:3:c4");
  EXPECT_EQ(TargetCluster().Scalar(db_,
                                   "SELECT string_agg(id || ':' || v || ':' || coalesce(n::text, "
                                   "'null'), ',' ORDER BY id) FROM solo"),
            "1:one:null,2:two new:22");
}

// A streamed piece's UPDATE (and DELETE of an array of keys) written
// straight in is sent ahead: StagePiece() returns while the target runs it,
// so the consumer decodes the next piece meanwhile; the next piece waits for
// it first, and inserts the keys the UPDATE did not find. Here the UPDATE
// waits for a row lock another session holds: StagePiece() returns all the
// same (waiting for the UPDATE, it would fail on the session's
// lock_timeout), and the tick still commits every change, in order.
TEST_F(WholeTickChunkTest, AStreamedPiecesWriteIsSentAhead) {
  TargetCluster().Exec(db_,
                       "CREATE TABLE solo(id int PRIMARY KEY, v text, n int); "
                       "INSERT INTO solo VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3)");
  std::vector<TableSpec> one;
  std::unique_ptr<apply::Applier> applier;
  ASSERT_NO_FATAL_FAILURE(TransactionalApplier({"solo"}, &one, &applier));
  ASSERT_TRUE(conn_->Exec("SET lock_timeout = '5s'").ok());
  auto locker = TargetCluster().Connect(db_);
  ASSERT_TRUE(locker->Exec("BEGIN; SELECT 1 FROM solo WHERE id = 1 FOR UPDATE").ok());
  // Piece 1: updates (key 9 is not in the target: inserted). Piece 2, the
  // tick's end: key 9 updated again, key 3 deleted. Piece 3 of another
  // tick: deletes only, sent ahead, waited for at its tick's end.
  std::vector<Change> piece1 = {Of(0, Op::kUpdate, 5, 1, {"1", "one new", "10"}),
                                Of(0, Op::kUpdate, 5, 2, {"9", "nine", "90"}),
                                Of(0, Op::kUpdate, 5, 3, {"2", "two new", "20"})};
  std::vector<Change> piece2 = {Of(0, Op::kUpdate, 5, 4, {"9", "nine new", "99"}),
                                Of(0, Op::kDelete, 5, 5, {"3"})};
  std::vector<Change> piece3 = {Of(0, Op::kDelete, 6, 1, {"2"})};
  const auto ptrs = [](const std::vector<Change>& cs) {
    std::vector<const Change*> out;
    for (const Change& c : cs) out.push_back(&c);
    return out;
  };
  const auto advance = [](const std::vector<Change>& cs, int64_t expected) {
    apply::Advance a;
    a.stream = "solo";
    a.expected_offset = expected;
    a.offset = expected + 1;
    a.pos = cs.back().pos;
    return std::vector<apply::Advance>{a};
  };
  Status st = applier->StagePiece(ptrs(piece1), advance(piece1, -1));
  ASSERT_TRUE(st.ok()) << st.message();
  // The UPDATE runs on the target, waiting for the lock.
  const std::string waiting = fmt::format(
      "SELECT count(*) FROM pg_stat_activity WHERE pid = {} AND wait_event_type = 'Lock' "
      "AND query LIKE 'UPDATE%'",
      conn_->backend_pid());
  EXPECT_TRUE(testing::WaitUntil([&] { return TargetCluster().Count(db_, waiting) == 1; }, 10))
      << "the piece's UPDATE was not left running on the target";
  ASSERT_TRUE(locker->Exec("COMMIT").ok());
  // Another statement on the session first waits for the UPDATE and keeps
  // its result: the next piece still inserts the key it did not find.
  auto other = conn_->Query("SELECT 1");
  ASSERT_TRUE(other.ok()) << other.status().message();
  st = applier->FinishStream(ptrs(piece2), advance(piece2, 0), nullptr);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(applier->stream_direct(), 5);
  EXPECT_EQ(TargetCluster().Scalar(db_,
                                   "SELECT string_agg(id || ':' || v || ':' || n, ',' ORDER BY id) "
                                   "FROM solo"),
            "1:one new:10,2:two new:20,9:nine new:99");
  st = applier->StagePiece(ptrs(piece3), advance(piece3, 1));
  ASSERT_TRUE(st.ok()) << st.message();
  st = applier->FinishStream({}, {}, nullptr);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(TargetCluster().Scalar(db_, "SELECT string_agg(id::text, ',' ORDER BY id) FROM solo"),
            "1,9");
}

// A tick's chunk comes as one message per partition: the chunks of one
// table in a row go into it with one COPY, not one per message. A chunk
// read again (after a producer restart) holds keys an earlier one of the
// same run brought: that COPY fails, is undone, and each chunk goes on its
// own, in order, the newer copy of a key winning.
TEST_F(WholeTickChunkTest, ChunksOfATableInARowGoWithOneCopy) {
  for (const bool again : {false, true}) {
    SCOPED_TRACE(again ? "a chunk read again" : "keys apart");
    const std::string name = again ? "solo_again" : "solo";
    TargetCluster().Exec(db_, "CREATE TABLE " + name + "(id int PRIMARY KEY, v text, n int)");
    std::vector<TableSpec> one;
    std::unique_ptr<apply::Applier> applier;
    ASSERT_NO_FATAL_FAILURE(TransactionalApplier({name}, &one, &applier));
    // Tick 5's chunk over three partitions (keys apart), then tick 6's.
    std::vector<Change> cs = {
        Chunk(0, 5, 2, "1\ta\t1\n4\td\t4\n"),
        Chunk(0, 5, 1, "2\tb\t2\n"),
        Chunk(0, 5, 2, "3\tc\t3\n5\te\t5\n"),
        again ? Chunk(0, 6, 2, "4\td again\t44\n6\tf\t6\n") : Chunk(0, 6, 1, "6\tf\t6\n"),
    };
    // Each partition's part of a chunk has a position of its own.
    for (size_t i = 0; i < cs.size(); ++i) cs[i].pos.seq += static_cast<int64_t>(i) * 10;
    std::vector<const Change*> ptrs;
    for (const Change& c : cs) ptrs.push_back(&c);
    apply::Advance a;
    a.stream = name;
    a.offset = 3;
    a.pos = cs.back().pos;
    std::atomic<int> copies{0};
    testing::StatementFault count(
        "test",
        [&](std::string_view sql) {
          if (sql.rfind("COPY ", 0) == 0 && sql.find(name + "\" (") != std::string_view::npos) {
            ++copies;
          }
          return false;
        },
        pg::Fault::kNone, 0);
    testing::ScopedFaultHook hook(&count);
    Status st = applier->Apply(ptrs, std::vector<apply::Advance>{a});
    ASSERT_TRUE(st.ok()) << st.message();
    // Read again: the COPY that failed, then one per chunk, the last of
    // which met key 4 and went through the staging table instead.
    EXPECT_EQ(copies.load(), again ? 1 + 4 : 1);
    EXPECT_EQ(
        TargetCluster().Scalar(
            db_, "SELECT string_agg(id || ':' || v || ':' || n, ',' ORDER BY id) FROM " + name),
        again ? "1:a:1,2:b:2,3:c:3,4:d again:44,5:e:5,6:f:6"
              : "1:a:1,2:b:2,3:c:3,4:d:4,5:e:5,6:f:6");
  }
}

INSTANTIATE_TEST_SUITE_P(Apply, WholeTickChunkTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Streamed" : "AtOnce"; });

}  // namespace
}  // namespace datatunnel
