// `init` under operator mistakes (issue 17, items 5 and 6): any column name
// can be captured; a check that fails on the target changes nothing on
// either side; a changed key is refused with the procedure; a table removed
// from the configuration is listed and can be uninstalled; a target column of
// another type is reported.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "support/tunnel_fixture.h"

namespace datatunnel {
namespace {

using testing::Contains;
using testing::SourceCluster;
using testing::TargetCluster;

// Every name the change table once used for itself, and old_<key>.
constexpr const char* kReservedDdl =
    "CREATE TABLE odd(id int PRIMARY KEY, action text, txid bigint, change_id int, "
    "captured_at timestamptz, old_id int)";
constexpr const char* kReservedTable = "[[tables]]\nsource = \"public.odd\"\n";

class InitTest : public testing::TunnelFixture {
 protected:
  int64_t Src(const std::string& sql) { return SourceCluster().Count(src_, sql); }
  int64_t Tgt(const std::string& sql) { return TargetCluster().Count(tgt_, sql); }
  // Nothing of datatunnel on the source: no schema, no trigger, no change table.
  void ExpectSourceUntouched() {
    EXPECT_EQ(Src("SELECT count(*) FROM pg_namespace WHERE nspname = 'datatunnel'"), 0);
    EXPECT_EQ(Src("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'datatunnel%'"), 0);
    EXPECT_EQ(Src("SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_cdc'"), 0);
    EXPECT_EQ(Src("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'datatunnel%'"), 0);
  }
  void ExpectTargetUntouched() {
    EXPECT_EQ(Tgt("SELECT count(*) FROM pg_namespace WHERE nspname = 'datatunnel'"), 0);
  }

  void ReservedNamesRoundTrip(bool broker) {
    SourceCluster().Exec(src_, kReservedDdl);
    SourceCluster().Exec(src_,
                         "INSERT INTO odd SELECT i, 'a' || i, i * 10, i * 100, "
                         "'2026-01-01 00:00:00+00'::timestamptz + i * interval '1 hour', -i "
                         "FROM generate_series(1, 200) i");
    WriteConfig(kReservedTable);
    if (broker) UseKafka();
    auto init = Dt({"init"});
    ASSERT_EQ(init.code, 0) << init.out << init.err;
    auto run = Start({"run"});
    ExpectInSync();
    // Every operation, including an UPDATE that changes the key (the old
    // key travels in the change table's own columns).
    SourceCluster().Exec(
        src_,
        "UPDATE odd SET action = 'updated', txid = txid + 1, old_id = 7 WHERE id <= 20;"
        "DELETE FROM odd WHERE id BETWEEN 21 AND 30;"
        "UPDATE odd SET id = id + 1000, change_id = NULL WHERE id BETWEEN 31 AND 40;"
        "INSERT INTO odd VALUES (5000, 'action', 1, 2, now(), 3);");
    ExpectInSync();
    const std::string order = "id";
    EXPECT_EQ(TableText(SourceCluster(), src_, "odd", order),
              TableText(TargetCluster(), tgt_, "odd", order));
    EXPECT_EQ(Tgt("SELECT count(*) FROM odd"), 191);
    EXPECT_EQ(Tgt("SELECT count(*) FROM odd WHERE id BETWEEN 1031 AND 1040"), 10);
    EXPECT_EQ(run->Stop(), 0) << run->Stderr();
  }
};

TEST_F(InitTest, ReservedColumnNamesAreCapturedInMemory) { ReservedNamesRoundTrip(false); }

TEST_F(InitTest, ReservedColumnNamesAreCapturedThroughTheBroker) { ReservedNamesRoundTrip(true); }

// A change table of an earlier version (own columns change_id, txid, action,
// captured_at, old_<key>) is renamed in place by init, pending changes kept.
TEST_F(InitTest, InitUpgradesAnOldChangeTableAndKeepsItsChanges) {
  SourceCluster().Exec(src_, testing::kEmployeesDdl);
  SourceCluster().Exec(src_, "ALTER TABLE employees ADD PRIMARY KEY (emp_id)");
  WriteConfig();
  ASSERT_EQ(Dt({"init"}).code, 0);
  ASSERT_EQ(Dt({"snapshot"}).code, 0);
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                       "generate_series(1, 30) i; UPDATE employees SET emp_id = 100 "
                       "WHERE emp_id = 1");
  // The old layout, with its changes waiting.
  SourceCluster().Exec(src_,
                       "ALTER TABLE employees_cdc RENAME \"dt$change_id\" TO change_id;"
                       "ALTER TABLE employees_cdc RENAME \"dt$txid\" TO txid;"
                       "ALTER TABLE employees_cdc RENAME \"dt$action\" TO action;"
                       "ALTER TABLE employees_cdc RENAME \"dt$captured_at\" TO captured_at;"
                       "ALTER TABLE employees_cdc RENAME \"dt$old1\" TO old_emp_id;");
  // Until init, every command says to run it.
  auto early = Dt({"run", "--broker", "none"}, 30);
  EXPECT_EQ(early.code, 2) << early.err;
  EXPECT_TRUE(Contains(early.err, "has the column names of an earlier version")) << early.err;
  auto init = Dt({"init"});
  ASSERT_EQ(init.code, 0) << init.err;
  EXPECT_TRUE(Contains(init.out, "renamed the columns of change table public.employees_cdc"))
      << init.out;
  EXPECT_EQ(Src("SELECT count(*) FROM employees_cdc"), 31);
  auto run = Start({"run", "--broker", "none"});
  ExpectInSync();
  EXPECT_EQ(Tgt("SELECT count(*) FROM employees"), 30);
  EXPECT_EQ(Tgt("SELECT count(*) FROM employees WHERE emp_id = 100"), 1);
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// Duplicate keys in an existing target table: init refuses before changing
// anything, on the source or the target (it used to commit the source's
// capture first, then fail on the target).
TEST_F(InitTest, InitFailingOnTheTargetChangesNothing) {
  SourceCluster().Exec(src_, testing::kEmployeesDdl);
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('a'), ('b')");
  TargetCluster().Exec(tgt_, testing::kEmployeesDdl);
  TargetCluster().Exec(tgt_,
                       "INSERT INTO employees(emp_id, first_name) VALUES (1, 'a'), (1, 'again')");
  WriteConfig();
  auto r = Dt({"init"});
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_TRUE(Contains(r.err,
                       "target table public.employees holds duplicate keys (e.g. (emp_id) "
                       "= (1))"))
      << r.err;
  EXPECT_TRUE(Contains(r.err, "init changed nothing on the source or the target")) << r.err;
  ExpectSourceUntouched();
  ExpectTargetUntouched();
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('not captured')");
  // Fixed, init goes through.
  TargetCluster().Exec(tgt_, "DELETE FROM employees WHERE first_name = 'again'");
  r = Dt({"init"});
  EXPECT_EQ(r.code, 0) << r.err;
}

// A target column of another type: an error when values can be lost (the
// table, the column, both types and the fix), a warning when every value fits.
TEST_F(InitTest, TypeMismatchOnTheTargetIsReported) {
  SourceCluster().Exec(src_,
                       "CREATE TABLE orders(id int PRIMARY KEY, amount numeric(10,2), qty int)");
  TargetCluster().Exec(tgt_, "CREATE TABLE orders(id int PRIMARY KEY, amount integer, qty int)");
  WriteConfig("[[tables]]\nsource = \"public.orders\"\n");
  auto r = Dt({"init"});
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_TRUE(Contains(r.err,
                       "target column public.orders.amount is integer but the source's is "
                       "numeric(10,2)"))
      << r.err;
  EXPECT_TRUE(Contains(r.err,
                       "ALTER TABLE \"public\".\"orders\" ALTER COLUMN \"amount\" TYPE "
                       "numeric(10,2)"))
      << r.err;
  ExpectSourceUntouched();
  ExpectTargetUntouched();
  // A safe difference (int into bigint) is a warning; init goes on.
  TargetCluster().Exec(tgt_,
                       "ALTER TABLE orders ALTER COLUMN amount TYPE numeric(10,2), ALTER COLUMN "
                       "qty TYPE bigint");
  r = Dt({"init"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(Contains(r.err,
                       "datatunnel: warning: target column public.orders.qty is bigint and "
                       "the source's is integer: every value fits"))
      << r.err;
  // verify names type differences: a safe one as a note, a lossy one as a
  // difference.
  r = Dt({"verify"});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_TRUE(Contains(r.out, "note: column qty is bigint on the target but integer on the source"))
      << r.out;
  TargetCluster().Exec(tgt_, "ALTER TABLE orders ALTER COLUMN amount TYPE integer");
  r = Dt({"verify"});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_TRUE(Contains(r.out,
                       "schema: column amount is integer on the target but numeric(10,2) on "
                       "the source (values can be refused or changed)"))
      << r.out;
}

// A target column retyped after init: through the broker, the apply error
// names the table and the column, not the batch's first table.
TEST_F(InitTest, ApplyErrorThroughTheBrokerNamesTheTableAndColumn) {
  SourceCluster().Exec(src_, testing::kEmployeesDdl);
  SourceCluster().Exec(src_, "CREATE TABLE orders(id int PRIMARY KEY, amount numeric(10,2))");
  WriteConfig(std::string(testing::kEmployeesTable) + "[[tables]]\nsource = \"public.orders\"\n");
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  TargetCluster().Exec(tgt_, "ALTER TABLE orders ALTER COLUMN amount TYPE integer");
  auto run = Start({"run"});
  SourceCluster().Exec(src_,
                       "BEGIN; INSERT INTO employees(emp_id, first_name) VALUES (1, 'a');"
                       "INSERT INTO orders VALUES (1, 1.5); COMMIT;");
  ASSERT_TRUE(
      testing::WaitUntil([&] { return Contains(run->Stderr(), "invalid input syntax"); }, 60))
      << run->Stderr();
  EXPECT_TRUE(Contains(run->Stderr(), "target table public.orders column amount (integer"))
      << run->Stderr();
  run->Stop();
}

// A changed key: refused with the procedure (not a raw SQL error), nothing
// changed; following the procedure works.
TEST_F(InitTest, ChangedKeyIsRefusedWithTheProcedure) {
  SourceCluster().Exec(src_,
                       "CREATE TABLE people(id int PRIMARY KEY, email text NOT NULL UNIQUE, "
                       "name text); INSERT INTO people SELECT i, 'p' || i || '@x', 'n' FROM "
                       "generate_series(1, 20) i");
  WriteConfig("[[tables]]\nsource = \"public.people\"\n");
  ASSERT_EQ(Dt({"init"}).code, 0);
  const int64_t triggers = Src("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'datatunnel%'");
  WriteConfig("[[tables]]\nsource = \"public.people\"\nkey = [\"email\"]\n");
  auto r = Dt({"init"});
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_TRUE(Contains(r.err,
                       "the key of public.people is (email) in the configuration but the "
                       "table is captured with key (id)"))
      << r.err;
  EXPECT_TRUE(Contains(r.err, "datatunnel uninstall --yes --table public.people")) << r.err;
  EXPECT_FALSE(Contains(r.err, "does not exist")) << r.err;
  EXPECT_EQ(Src("SELECT count(*) FROM datatunnel.tables WHERE key_columns = '{id}'"), 1);
  EXPECT_EQ(Src("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'datatunnel%'"), triggers);
  // The procedure.
  r = Dt({"uninstall", "--yes", "--table", "public.people"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = Dt({"init"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(Src("SELECT count(*) FROM datatunnel.tables WHERE key_columns = '{email}'"), 1);
  r = Dt({"snapshot", "--restart", "--truncate-target"});
  ASSERT_EQ(r.code, 0) << r.err;
  SourceCluster().Exec(src_, "UPDATE people SET email = 'new@x' WHERE id = 3");
  auto run = Start({"run", "--broker", "none"});
  ExpectInSync();
  EXPECT_EQ(Tgt("SELECT count(*) FROM people WHERE email = 'new@x'"), 1);
  EXPECT_EQ(Tgt("SELECT count(*) FROM people"), 20);
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// A table removed from the configuration stays captured: init, status and
// uninstall list it; uninstall --table removes it; uninstall never says
// "nothing installed" while something is.
TEST_F(InitTest, RemovedTableIsListedAndUninstalled) {
  SourceCluster().Exec(src_, testing::kEmployeesDdl);
  SourceCluster().Exec(src_, "CREATE TABLE extra(id int PRIMARY KEY)");
  WriteConfig(std::string(testing::kEmployeesTable) + "[[tables]]\nsource = \"public.extra\"\n");
  ASSERT_EQ(Dt({"init"}).code, 0);
  SourceCluster().Exec(src_, "INSERT INTO extra VALUES (1), (2)");
  WriteConfig();
  const std::string listed = "table public.extra is captured but no longer in the configuration";
  auto r = Dt({"init"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(Contains(r.err, listed)) << r.err;
  EXPECT_TRUE(Contains(r.err, "datatunnel uninstall --yes --table public.extra")) << r.err;
  r = Dt({"status"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out,
                       "NOT CONFIGURED: public.extra is captured but not in the "
                       "configuration (2 changes waiting"))
      << r.out;
  r = Dt({"status", "--json"});
  EXPECT_TRUE(Contains(r.out, "\"not_configured\":[{\"source\":\"public.extra\",\"pending\":2}]"))
      << r.out;
  // Uninstalling the configured tables keeps the other, and says so.
  r = Dt({"uninstall", "--yes"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "source: still captured: public.extra")) << r.out;
  EXPECT_FALSE(Contains(r.out, "nothing of datatunnel is installed")) << r.out;
  r = Dt({"uninstall", "--yes"});
  EXPECT_TRUE(Contains(r.out, "source: still captured: public.extra")) << r.out;
  EXPECT_FALSE(Contains(r.out, "nothing of datatunnel is installed")) << r.out;
  EXPECT_EQ(Src("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'extra'::regclass"), 4);
  r = Dt({"uninstall", "--yes", "--table", "public.extra"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "dropped change table public.extra_cdc")) << r.out;
  ExpectSourceUntouched();
  r = Dt({"uninstall", "--yes", "--all"});
  EXPECT_TRUE(Contains(r.out, "nothing of datatunnel is installed")) << r.out;
  EXPECT_EQ(Src("SELECT count(*) FROM extra"), 2);
}

TEST_F(InitTest, UninstallAllRemovesTablesNoLongerConfigured) {
  SourceCluster().Exec(src_, testing::kEmployeesDdl);
  SourceCluster().Exec(src_, "CREATE TABLE extra(id int PRIMARY KEY)");
  WriteConfig(std::string(testing::kEmployeesTable) + "[[tables]]\nsource = \"public.extra\"\n");
  ASSERT_EQ(Dt({"init"}).code, 0);
  WriteConfig();
  auto r = Dt({"uninstall", "--yes", "--all"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(Contains(r.out, "dropped change table public.extra_cdc")) << r.out;
  ExpectSourceUntouched();
  ExpectTargetUntouched();
}

}  // namespace
}  // namespace datatunnel
