// Operator mistakes (issue "safe under operator mistakes"): each is refused
// with one clear line and an exit code that says "fix your setup" (2), and
// nothing is changed or lost.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "support/tunnel_fixture.h"

namespace datatunnel {
namespace {

using testing::Contains;
using testing::SourceCluster;
using testing::TargetCluster;

constexpr const char* kEmployeesPkDdl =
    "CREATE TABLE employees(emp_id SERIAL PRIMARY KEY, first_name VARCHAR(100), "
    "last_name VARCHAR(100), dob DATE, city VARCHAR(100))";

void ExpectOneLineError(const testing::RunResult& r, int code, const std::string& fragment) {
  EXPECT_EQ(r.code, code) << r.out << r.err;
  EXPECT_TRUE(Contains(r.err, fragment)) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("datatunnel: error: ", 0), 0u) << r.err;
}

class SafetyTest : public testing::TunnelFixture {
 protected:
  void SetUp() override {
    TunnelFixture::SetUp();
    SourceCluster().Exec(src_, kEmployeesPkDdl);
    TargetCluster().Exec(tgt_, kEmployeesPkDdl);
    SourceCluster().Exec(src_,
                         "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                         "generate_series(1, 50) i");
    WriteConfig();
  }
};

// Source and target the same table: refused by init (nothing installed) and
// by every command that would write the target; following the advice of
// the old error (--truncate-target) must not empty the source.
TEST_F(SafetyTest, SourceAndTargetTheSameTableIsRefused) {
  std::ofstream(config_) << fmt::format(
      "[source]\ndsn = \"{0}\"\n[target]\ndsn = \"{0}\"\n[kafka]\nbrokers = \"none\"\n{1}",
      SourceCluster().Dsn(src_), testing::kEmployeesTable);
  const std::string same = "source and target are the same table public.employees";
  ExpectOneLineError(Dt({"init"}), 2, same);
  EXPECT_EQ(SourceCluster().Count(src_,
                                  "SELECT count(*) FROM pg_namespace WHERE nspname = "
                                  "'datatunnel'"),
            0)
      << "init installed something before refusing";
  // A target spelled differently but resolving to the same relation.
  std::ofstream(config_) << fmt::format(
      "[source]\ndsn = \"{0}\"\n[target]\ndsn = \"{0}\"\n[kafka]\nbrokers = \"none\"\n"
      "[[tables]]\nsource = \"public.employees\"\ntarget = \"\\\"public\\\".\\\"employees\\\"\"\n",
      SourceCluster().Dsn(src_));
  ExpectOneLineError(Dt({"init"}), 2, same);
  ExpectOneLineError(Dt({"snapshot", "--truncate-target"}), 2, "datatunnel init");
  EXPECT_EQ(SourceCluster().Count(src_, "SELECT count(*) FROM employees"), 50);
}

// A snapshot never empties a table that is itself captured (here: the
// target table is the source of another tunnel in the target database).
TEST_F(SafetyTest, TruncateTargetRefusesACapturedTable) {
  TargetCluster().Exec(tgt_, "INSERT INTO employees(first_name) VALUES ('keep me')");
  const std::string other_db = TargetCluster().CreateDatabase("safety_other");
  TargetCluster().Exec(other_db, kEmployeesPkDdl);
  const std::string other_config = dir_ + "/other.toml";
  std::ofstream(other_config) << fmt::format(
      "[source]\ndsn = \"{}\"\n[target]\ndsn = \"{}\"\n[kafka]\nbrokers = \"none\"\n{}",
      TargetCluster().Dsn(tgt_), TargetCluster().Dsn(other_db), testing::kEmployeesTable);
  auto init_other = testing::RunCommand({testing::BinaryPath(), "-c", other_config, "init"});
  ASSERT_EQ(init_other.code, 0) << init_other.err;

  ASSERT_EQ(Dt({"init"}).code, 0);
  ExpectOneLineError(Dt({"snapshot", "--truncate-target"}), 2,
                     "target table public.employees is itself captured by datatunnel");
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), 1);
}

// `snapshot --table` with a name the config does not have: an error with
// the likely meant name, not "nothing to snapshot" and exit 0.
TEST_F(SafetyTest, SnapshotOfAnUnknownTableIsAnError) {
  ASSERT_EQ(Dt({"init"}).code, 0);
  ExpectOneLineError(Dt({"snapshot", "--table", "employees"}), 2,
                     "--table employees: not a source table of this configuration (did you mean "
                     "public.employees?)");
  ExpectOneLineError(Dt({"snapshot", "--table", "public.employes"}), 2,
                     "give schema.table as in [[tables]] source: public.employees");
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), 0);
}

// Forgetting `init`: every command says so in one line, with exit code 2
// (a setup the user must change), whatever the command.
TEST_F(SafetyTest, ForgettingInitSaysRunInit) {
  for (const std::vector<std::string>& cmd :
       {std::vector<std::string>{"run"}, {"snapshot"}, {"status"}, {"run", "--no-snapshot"}}) {
    SCOPED_TRACE(cmd[0]);
    ExpectOneLineError(Dt(cmd), 2, "run `datatunnel init`");
  }
  // Set up on the source only: the target side is named.
  ASSERT_EQ(Dt({"init"}).code, 0);
  TargetCluster().Exec(tgt_, "DROP SCHEMA datatunnel CASCADE");
  ExpectOneLineError(Dt({"run"}), 2, "datatunnel is not set up on the target database");
  // A table added to the config but not yet set up.
  SourceCluster().Exec(src_, "CREATE TABLE extra(id int PRIMARY KEY)");
  TargetCluster().Exec(tgt_, "CREATE TABLE extra(id int PRIMARY KEY)");
  ASSERT_EQ(Dt({"init"}).code, 0);
  WriteConfig(std::string(testing::kEmployeesTable) + "[[tables]]\nsource = \"public.extra\"\n");
  ExpectOneLineError(Dt({"run"}), 2, "table public.extra is not captured on the source database");
  ExpectOneLineError(Dt({"status"}), 2, "table public.extra is not captured");
}

// Dropping a change table by hand would make every write to its table fail:
// the drop itself is refused, naming the table and the way out; uninstall
// still removes everything.
TEST_F(SafetyTest, DroppingAChangeTableByHandIsRefused) {
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto st = SourceCluster().Connect(src_)->Exec("DROP TABLE employees_cdc");
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(Contains(st.message(),
                       "public.employees_cdc is the change table of captured table "
                       "public.employees"))
      << st.message();
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('still works')");
  EXPECT_EQ(SourceCluster().Count(src_, "SELECT count(*) FROM employees_cdc"), 1);
  auto r = Dt({"uninstall", "--yes"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(SourceCluster().Count(src_,
                                  "SELECT count(*) FROM pg_class WHERE relname = "
                                  "'employees_cdc'"),
            0);
  EXPECT_EQ(SourceCluster().Count(src_,
                                  "SELECT count(*) FROM pg_event_trigger WHERE evtname "
                                  "LIKE 'datatunnel%'"),
            0);
}

// uninstall while the tunnel runs is refused (it used to pull the state from
// under the running process, which died with a raw SQL error); once stopped,
// it goes ahead.
TEST_F(SafetyTest, UninstallWhileTheTunnelRunsIsRefused) {
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  ExpectInSync();
  ExpectOneLineError(Dt({"uninstall", "--yes"}), 2, "is running: its producer holds the lock");
  // Nothing was removed and the tunnel goes on.
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('after')");
  ExpectInSync();
  EXPECT_TRUE(run->Running()) << run->Stderr();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
  auto r = Dt({"uninstall", "--yes"});
  EXPECT_EQ(r.code, 0) << r.err;
}

// init --print-sql shows every piece of DDL init runs (it used to omit the
// event triggers and everything on the target but the state schema), and
// changes nothing.
TEST_F(SafetyTest, PrintSqlShowsAllTheDdlAndChangesNothing) {
  TargetCluster().Exec(tgt_, "DROP TABLE employees");
  auto r = Dt({"init", "--print-sql"});
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* want : {
           "CREATE SCHEMA IF NOT EXISTS datatunnel",
           "datatunnel.install_capture('\"public\".\"employees\"', '{emp_id}')",
           "CREATE EVENT TRIGGER datatunnel_drop",
           "CREATE EVENT TRIGGER datatunnel_ddl",
           "CREATE TABLE \"public\".\"employees\" (",
           "CREATE UNIQUE INDEX \"employees_datatunnel_key\" ON \"public\".\"employees\" "
           "(\"emp_id\")",
           "CREATE TRIGGER datatunnel_target_truncate AFTER TRUNCATE ON "
           "\"public\".\"employees\"",
       }) {
    EXPECT_TRUE(Contains(r.out, want)) << want << "\n" << r.out;
  }
  EXPECT_EQ(
      SourceCluster().Count(src_, "SELECT count(*) FROM pg_namespace WHERE nspname = 'datatunnel'"),
      0);
  EXPECT_EQ(TargetCluster().Count(tgt_,
                                  "SELECT count(*) FROM pg_class WHERE relname = "
                                  "'employees'"),
            0);
}

}  // namespace
}  // namespace datatunnel
