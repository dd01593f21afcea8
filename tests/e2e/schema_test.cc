// Schema changes on a source table while the tunnel runs: an added column
// evolves the target (schema_changes = "evolve") or stops with the fix
// ("stop"); a dropped column never breaks writes and stops with an explanation;
// a table created while split produce/consume run is added (auto_add).
#include <gtest/gtest.h>
#include <signal.h>

#include "support/auto_add.h"
#include "support/tunnel_fixture.h"

namespace datatunnel {
namespace {

using testing::SourceCluster;
using testing::TargetCluster;

class SchemaTest : public testing::TunnelFixture {
 protected:
  void SetUp() override {
    TunnelFixture::SetUp();
    SourceCluster().Exec(src_, testing::kEmployeesDdl);
    SourceCluster().Exec(src_,
                         "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                         "generate_series(1, 100) i");
  }
  void UseTables(const char* policy) {
    WriteConfig(
        fmt::format("[[tables]]\nsource = \"public.employees\"\nkey = [\"emp_id\"]\n"
                    "schema_changes = \"{}\"\n",
                    policy));
  }
  std::string Rows(testing::PgCluster& c, const std::string& db) {
    return TableText(c, db, "employees", "emp_id");
  }
  void EvolveWhileRunning() {
    SourceCluster().Exec(src_,
                         "ALTER TABLE employees ADD COLUMN salary numeric(12,2), "
                         "ADD COLUMN tags text[] DEFAULT '{a,b}'");
    // Written right after the ALTER: the new values must arrive too.
    SourceCluster().Exec(src_,
                         "INSERT INTO employees(first_name, salary, tags) VALUES "
                         "('new', 1234.50, '{x,\"y z\"}');"
                         "UPDATE employees SET salary = emp_id * 10 WHERE emp_id <= 20;"
                         "DELETE FROM employees WHERE emp_id BETWEEN 21 AND 25;");
    ExpectInSync();
    EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  }
};

TEST_F(SchemaTest, AddedColumnEvolvesInMemory) {
  UseTables("evolve");
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  ExpectInSync();
  EvolveWhileRunning();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

TEST_F(SchemaTest, AddedColumnEvolvesThroughTheBroker) {
  UseTables("evolve");
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto consume = Start({"consume"});
  auto produce = Start({"produce"});
  ASSERT_EQ(Dt({"snapshot"}, 120).code, 0);
  EvolveWhileRunning();
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
}

// A standby described the tables when it started; a column added while it
// waited for the producer lock must not be published with the old columns
// once it takes over.
TEST_F(SchemaTest, AddedColumnWhileStandingByEvolvesOnTakeOver) {
  UseTables("evolve");
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto consume = Start({"consume"});
  auto leader = Start({"produce"});
  ASSERT_EQ(Dt({"snapshot"}, 120).code, 0);
  auto standby = Start({"produce"});
  ASSERT_TRUE(
      testing::WaitUntil([&] { return testing::Contains(standby->Stderr(), "standing by"); }, 30))
      << standby->Stderr();
  SourceCluster().Exec(src_, "ALTER TABLE employees ADD COLUMN salary numeric(12,2)");
  EXPECT_EQ(leader->Stop(), 0) << leader->Stderr();
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name, salary) VALUES ('new', 12.5)");
  ExpectInSync();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  EXPECT_EQ(standby->Stop(), 0) << standby->Stderr();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
}

TEST_F(SchemaTest, AddedColumnStopsWithTheFixThenInitResumes) {
  UseTables("stop");
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  ExpectInSync();
  SourceCluster().Exec(src_, "ALTER TABLE employees ADD COLUMN salary integer");
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name, salary) VALUES ('paid', 42)");
  auto rc = run->Wait(30);
  ASSERT_TRUE(rc.has_value()) << "the tunnel did not stop";
  EXPECT_EQ(*rc, 3);
  EXPECT_NE(run->Stderr().find("column salary (integer) was added"), std::string::npos)
      << run->Stderr();
  EXPECT_NE(run->Stderr().find("datatunnel init"), std::string::npos);
  // The fix the message names: init (adds the column to the target), restart.
  auto init = Dt({"init"});
  ASSERT_EQ(init.code, 0) << init.err;
  EXPECT_NE(init.out.find("added column salary to target table"), std::string::npos) << init.out;
  run = Start({"run"});
  ExpectInSync();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// The same fix with producer and consumer apart: only the stopped producer
// is restarted; the consumer that kept running reads the column `init`
// added to the target instead of asking for init once more (on the schema
// marker the restarted producer sends first, and again before refusing a
// message with a column it does not know; without both, this test fails).
TEST_F(SchemaTest, AddedColumnThenInitReachesARunningConsumer) {
  UseTables("stop");
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto consume = Start({"consume"});
  auto produce = Start({"produce"});
  ASSERT_EQ(Dt({"snapshot"}, 120).code, 0);
  SourceCluster().Exec(src_, "ALTER TABLE employees ADD COLUMN salary integer");
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name, salary) VALUES ('paid', 42)");
  auto rc = produce->Wait(30);
  ASSERT_TRUE(rc.has_value()) << "the producer did not stop";
  EXPECT_EQ(*rc, 3) << produce->Stderr();
  auto init = Dt({"init"});
  ASSERT_EQ(init.code, 0) << init.err;
  produce = Start({"produce"});
  SourceCluster().Exec(src_, "UPDATE employees SET salary = emp_id WHERE emp_id <= 10");
  ExpectInSync();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  EXPECT_TRUE(consume->Running()) << consume->Stderr();
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
}

TEST_F(SchemaTest, DroppedColumnNeverBreaksWritesAndStops) {
  UseTables("evolve");
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  ExpectInSync();
  SourceCluster().Exec(src_, "ALTER TABLE employees DROP COLUMN city");
  // The capture trigger was updated within the ALTER: writes go on.
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) VALUES ('after the drop');"
                       "UPDATE employees SET last_name = 'x' WHERE emp_id = 1");
  auto rc = run->Wait(30);
  ASSERT_TRUE(rc.has_value()) << "the tunnel did not stop";
  EXPECT_EQ(*rc, 3);
  EXPECT_NE(run->Stderr().find("column city was dropped"), std::string::npos) << run->Stderr();
  // Accepting the change (and dropping the column on the target) resumes.
  TargetCluster().Exec(tgt_, "ALTER TABLE employees DROP COLUMN city");
  ASSERT_EQ(Dt({"init"}).code, 0);
  run = Start({"run"});
  ExpectInSync();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// auto_add with split produce/consume through Kafka: tables created while
// both run reach the target without a restart; consume creates the target
// tables (it reaches the source for that).
TEST_F(SchemaTest, AutoAddWithSplitProduceAndConsume) {
  UseKafka();
  SourceCluster().Exec(src_,
                       "CREATE TABLE auto_base (id int PRIMARY KEY, v text);"
                       "INSERT INTO auto_base VALUES (1, 'a');");
  WriteConfig(testing::kAutoTables);
  ASSERT_EQ(Dt({"init"}).code, 0);
  ASSERT_EQ(Dt({"snapshot"}).code, 0);
  auto produce = Start({"produce"});
  auto consume = Start({"consume"});
  testing::CreateTablesWhileRunning(src_, tgt_, produce.get(), consume.get());
  ExpectInSync();
  EXPECT_TRUE(produce->Running());
  EXPECT_TRUE(consume->Running());
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
}

}  // namespace
}  // namespace datatunnel
