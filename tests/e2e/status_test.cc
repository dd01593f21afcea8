// `datatunnel status` is honest (issue 17, findings 3, 4, 5, 7): the target's
// identity is watched (a table recreated or truncated outside the tunnel is
// "incomplete", and `run` copies it again or refuses with the command), lag
// comes from positions (right after a re-snapshot and an evolve re-copy),
// "done" means the target holds the copy, and LAG(s) is the age of the
// oldest change not yet applied. Every check reads `status --json`.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <chrono>
#include <thread>

#include "support/tunnel_fixture.h"

namespace datatunnel {
namespace {

using testing::Contains;
using testing::SourceCluster;
using testing::TargetCluster;
using testing::WaitUntil;

constexpr const char* kEmployeesPkDdl =
    "CREATE TABLE employees(emp_id SERIAL PRIMARY KEY, first_name VARCHAR(100), "
    "last_name VARCHAR(100), dob DATE, city VARCHAR(100))";

// The first table of `status --json`.
struct TableStatus {
  int64_t pending = 0, lag_changes = 0;
  double lag_seconds = 0;
  bool caught_up = false;
  std::string snapshot_state, snapshot_detail, json;
};

class StatusTest : public testing::TunnelFixture {
 protected:
  void SetUp() override {
    TunnelFixture::SetUp();
    SourceCluster().Exec(src_, kEmployeesPkDdl);
    SourceCluster().Exec(src_,
                         "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                         "generate_series(1, 50) i");
  }

  TableStatus Status() {
    auto r = Dt({"status", "--json"});
    EXPECT_EQ(r.code, 0) << r.out << r.err;
    TableStatus s;
    s.json = r.out;
    rapidjson::Document d;
    d.Parse(r.out.c_str());
    if (d.HasParseError() || !d.IsObject() || !d.HasMember("tables") || d["tables"].Empty()) {
      ADD_FAILURE() << "not the status JSON: " << r.out;
      return s;
    }
    const auto& t = d["tables"][0];
    s.pending = t["pending"].GetInt64();
    s.lag_changes = t["lag_changes"].GetInt64();
    s.lag_seconds = t["lag_seconds"].GetDouble();
    s.caught_up = t.HasMember("caught_up") && t["caught_up"].GetBool();
    s.snapshot_state = t["snapshot"]["state"].GetString();
    if (t.HasMember("snapshot_detail")) s.snapshot_detail = t["snapshot_detail"].GetString();
    return s;
  }

  // Waits until status says the tunnel applied everything and the copy is
  // done (the producer records a snapshot's end with its progress, every
  // progress_interval_ms: it can trail the rows by that much).
  void ExpectCaughtUp() {
    TableStatus s;
    EXPECT_TRUE(WaitUntil(
        [&] {
          s = Status();
          return s.lag_changes == 0 && s.pending == 0 && s.snapshot_state == "done";
        },
        30))
        << s.json << RunningLogs();
    EXPECT_EQ(s.lag_seconds, 0) << s.json;
    EXPECT_TRUE(s.caught_up) << s.json;
    EXPECT_EQ(s.snapshot_state, "done") << s.json;
  }

  // init, one `run` that copies the table and streams, stopped once in sync.
  void CopyOnceInMemory() {
    ASSERT_EQ(Dt({"init"}).code, 0);
    auto run = Start({"run"});
    ExpectInSync();
    ExpectCaughtUp();
    ASSERT_EQ(run->Stop(), 0) << run->Stderr();
  }

  // Writes `n` changes and waits until none is left in the change table.
  void WriteAndAwaitPublished(int n) {
    SourceCluster().Exec(src_, fmt::format("INSERT INTO employees(first_name) SELECT 'w' || i "
                                           "FROM generate_series(1, {}) i",
                                           n));
    TableStatus s;
    EXPECT_TRUE(WaitUntil(
        [&] {
          s = Status();
          return s.pending == 0;
        },
        30))
        << s.json << RunningLogs();
  }
};

// Finding 3: the target table dropped and recreated (by `init`) no longer
// holds the copy: status says so, `run` copies it again while it is empty
// and refuses with the exact command once it holds rows.
TEST_F(StatusTest, TargetRecreatedByInitIsIncompleteAndRunCopiesItAgain) {
  WriteConfig();
  CopyOnceInMemory();
  TargetCluster().Exec(tgt_, "DROP TABLE employees");
  ASSERT_EQ(Dt({"init"}).code, 0);  // creates it again, empty
  TableStatus s = Status();
  EXPECT_EQ(s.snapshot_state, "incomplete") << s.json;
  EXPECT_TRUE(Contains(s.snapshot_detail, "dropped and created again")) << s.json;
  EXPECT_TRUE(Contains(s.snapshot_detail,
                       "datatunnel snapshot --table public.employees --restart --truncate-target"))
      << s.json;
  auto text = Dt({"status"});
  EXPECT_TRUE(Contains(text.out, "INCOMPLETE: target table public.employees")) << text.out;

  // Rows written into the recreated table: `run` refuses, naming the command.
  TargetCluster().Exec(tgt_, "INSERT INTO employees(emp_id, first_name) VALUES (1000, 'stray')");
  auto refused = Dt({"run"});
  EXPECT_EQ(refused.code, 2) << refused.err;
  EXPECT_TRUE(Contains(refused.err,
                       "datatunnel snapshot --table public.employees --restart "
                       "--truncate-target"))
      << refused.err;

  // Empty again (a TRUNCATE by hand, itself noticed): `run` copies it again.
  TargetCluster().Exec(tgt_, "TRUNCATE employees");
  auto run = Start({"run"});
  ExpectInSync();
  ExpectCaughtUp();
  EXPECT_TRUE(Contains(run->Stderr(), "copying it again")) << run->Stderr();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// A TRUNCATE of the target outside the tunnel is seen (the statement-level
// trigger `init` puts on the target table); the tunnel's own TRUNCATE, a
// replicated one, is not.
TEST_F(StatusTest, TargetTruncatedByHandIsIncompleteButAReplicatedTruncateIsNot) {
  WriteConfig();
  CopyOnceInMemory();
  auto run = Start({"run"});
  SourceCluster().Exec(src_, "TRUNCATE employees");
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('after')");
  ExpectInSync();
  ExpectCaughtUp();  // "done": the tunnel emptied it itself
  ASSERT_EQ(run->Stop(), 0) << run->Stderr();

  TargetCluster().Exec(tgt_, "TRUNCATE employees");
  TableStatus s = Status();
  EXPECT_EQ(s.snapshot_state, "incomplete") << s.json;
  EXPECT_TRUE(Contains(s.snapshot_detail, "TRUNCATE")) << s.json;
  run = Start({"run"});
  ExpectInSync();
  ExpectCaughtUp();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// The same through the broker. In key mode a replicated TRUNCATE runs once
// every partition reached it (datatunnel.truncate_arrive), in transaction
// mode inside its tick's target transaction: neither is "by hand".
class StatusBrokerTest : public StatusTest, public ::testing::WithParamInterface<bool> {};

TEST_P(StatusBrokerTest, TargetTruncatedByHandIsIncomplete) {
  const bool key_mode = GetParam();
  WriteConfig(testing::kEmployeesTable, key_mode ? testing::kKeyMode : "");
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  ExpectInSync();
  SourceCluster().Exec(src_, "TRUNCATE employees");
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('after')");
  ExpectInSync();
  ExpectCaughtUp();
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM datatunnel.barriers WHERE done") >= 1,
            key_mode);
  ASSERT_EQ(run->Stop(), 0) << run->Stderr();

  TargetCluster().Exec(tgt_, "TRUNCATE employees");
  TableStatus s = Status();
  EXPECT_EQ(s.snapshot_state, "incomplete") << s.json;
  run = Start({"run"});
  ExpectInSync();
  ExpectCaughtUp();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

INSTANTIATE_TEST_SUITE_P(ThroughTheBroker, StatusBrokerTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "KeyMode" : "TransactionMode";
                         });

// Finding 4: after a re-snapshot the counters no longer add up; status goes
// by positions: changes waiting with nothing running are lag, and once
// applied the lag is 0.
TEST_F(StatusTest, LagAfterAReSnapshotComesFromPositions) {
  WriteConfig();
  CopyOnceInMemory();
  auto again = Dt({"snapshot", "--restart", "--truncate-target"}, 120);
  ASSERT_EQ(again.code, 0) << again.err;
  ExpectCaughtUp();
  // Nothing runs: ten changes wait in the change table.
  SourceCluster().Exec(src_, "UPDATE employees SET city = 'x' WHERE emp_id <= 10");
  TableStatus s = Status();
  EXPECT_EQ(s.pending, 10) << s.json;
  EXPECT_EQ(s.lag_changes, 10) << s.json;
  EXPECT_FALSE(s.caught_up) << s.json;
  EXPECT_GT(s.lag_seconds, 0) << s.json;
  auto run = Start({"run"});
  ExpectInSync();
  ExpectCaughtUp();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// Finding 4, through the broker: changes published while no consumer ran and
// then superseded by a snapshot into the emptied table are never applied;
// the lag is still 0 once the consumer is done.
TEST_F(StatusTest, LagAfterASupersedingSnapshotThroughTheBrokerIsZero) {
  WriteConfig();
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto produce = Start({"produce"});
  ASSERT_EQ(Dt({"snapshot"}, 120).code, 0);
  for (int i = 0; i < 4; ++i) {
    SourceCluster().Exec(src_, "UPDATE employees SET city = 'c' || emp_id || random()");
  }
  WriteAndAwaitPublished(0);
  auto again = Dt({"snapshot", "--restart", "--truncate-target"}, 120);
  ASSERT_EQ(again.code, 0) << again.err;
  auto consume = Start({"consume"});
  ExpectInSync();
  ExpectCaughtUp();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
}

// Finding 4: the automatic re-copy of schema_changes = "evolve" (a column
// added with a default) leaves status right.
TEST_F(StatusTest, LagAfterAnEvolveReCopyComesFromPositions) {
  WriteConfig(
      "[[tables]]\nsource = \"public.employees\"\nkey = [\"emp_id\"]\n"
      "schema_changes = \"evolve\"\n");
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  ExpectInSync();
  SourceCluster().Exec(src_, "ALTER TABLE employees ADD COLUMN grade integer DEFAULT 7");
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('graded')");
  ExpectInSync();
  EXPECT_TRUE(WaitUntil([&] { return Contains(run->Stderr(), "copying the table again"); }, 30))
      << run->Stderr();
  ExpectCaughtUp();
  ASSERT_EQ(run->Stop(), 0) << run->Stderr();
  SourceCluster().Exec(src_, "UPDATE employees SET grade = 8 WHERE emp_id <= 10");
  TableStatus s = Status();
  EXPECT_EQ(s.lag_changes, 10) << s.json;
  EXPECT_FALSE(s.caught_up) << s.json;
  run = Start({"run"});
  ExpectInSync();
  ExpectCaughtUp();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// Finding 5: through the broker the snapshot is published but no consumer
// applies it (the `snapshot` command that requested it died): not "done".
TEST_F(StatusTest, SnapshotPublishedButNotAppliedIsNotDone) {
  WriteConfig();
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto produce = Start({"produce"});
  // What `datatunnel snapshot` does before its consumer starts: the request.
  SourceCluster().Exec(src_,
                       "UPDATE datatunnel.tables SET snapshot_state = 'requested', "
                       "snapshot_run = snapshot_run + 1, snapshot_started_at = now(); "
                       "NOTIFY datatunnel");
  TableStatus s;
  ASSERT_TRUE(WaitUntil(
      [&] {
        return SourceCluster().Scalar(src_, "SELECT snapshot_state FROM datatunnel.tables") ==
               "done";
      },
      60))
      << produce->Stderr();
  s = Status();
  EXPECT_NE(s.snapshot_state, "done") << s.json;
  EXPECT_EQ(s.snapshot_state, "published") << s.json;
  EXPECT_FALSE(s.caught_up) << s.json;
  EXPECT_GT(s.lag_changes, 0) << s.json;
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), 0);
  auto consume = Start({"consume"});
  ExpectInSync();
  ExpectCaughtUp();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
}

// Finding 7: LAG(s) is the age of the oldest change not yet applied, not the
// age of the newest one applied: the first write after an idle spell, not
// yet applied (the consumer is down), is seconds old, not the idle spell.
TEST_F(StatusTest, FirstWriteAfterAnIdleSpellHasASmallLag) {
  WriteConfig();
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto produce = Start({"produce"});
  auto consume = Start({"consume"});
  ASSERT_EQ(Dt({"snapshot"}, 120).code, 0);
  SourceCluster().Exec(src_, "UPDATE employees SET city = 'before' WHERE emp_id = 1");
  ExpectInSync();
  ExpectCaughtUp();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
  // The idle spell: the last applied change grows old.
  constexpr double kIdle = 8;
  std::this_thread::sleep_for(std::chrono::duration<double>(kIdle));
  const auto written = std::chrono::steady_clock::now();
  SourceCluster().Exec(src_, "UPDATE employees SET city = 'after' WHERE emp_id = 1");
  WriteAndAwaitPublished(0);
  TableStatus s = Status();
  const double age =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - written).count();
  EXPECT_FALSE(s.caught_up) << s.json;
  EXPECT_GE(s.lag_changes, 1) << s.json;
  EXPECT_GT(s.lag_seconds, 0) << s.json;
  EXPECT_LE(s.lag_seconds, age + 1) << s.json;
  EXPECT_LT(s.lag_seconds, kIdle) << s.json;
  consume = Start({"consume"});
  ExpectInSync();
  ExpectCaughtUp();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
}

// Every JSON output is valid JSON whatever the names and values hold (issue
// 18): a schema with a backslash, a table with double quotes, a column with
// both, a key value with a quote, a backslash and a newline. `status --json`
// (also its "not_configured") and `verify --json` parse, and give the names
// back unchanged.
TEST_F(StatusTest, JsonOutputsHoldAnyName) {
  // TOML literal strings ('...') keep the SQL names' quotes and backslashes.
  constexpr const char* kWeirdTable = R"toml(
[[tables]]
source = '"we\ird"."Tab ""q"""'
)toml";
  const std::string weird = R"(we\ird.Tab "q")";  // QualifiedName::ToString()
  const std::string target_only = R"(extra "q"\z)";
  SourceCluster().Exec(src_, R"sql(CREATE SCHEMA "we\ird";
CREATE TABLE "we\ird"."Tab ""q"""(k text PRIMARY KEY, "v ""x""\y" text);
INSERT INTO "we\ird"."Tab ""q""" VALUES (E'a"b\\c\nd', 'one'), ('plain', 'two');)sql");
  WriteConfig(std::string(testing::kEmployeesTable) + kWeirdTable);
  CopyOnceInMemory();

  auto parse = [](const std::string& text, rapidjson::Document* d) {
    d->Parse(text.c_str(), text.size());
    return !d->HasParseError() && d->IsObject();
  };
  auto status = Dt({"status", "--json"});
  ASSERT_EQ(status.code, 0) << status.err;
  rapidjson::Document d;
  ASSERT_TRUE(parse(status.out, &d)) << status.out;
  ASSERT_TRUE(d["tables"].IsArray()) << status.out;
  ASSERT_EQ(d["tables"].Size(), 2u) << status.out;
  const auto& t = d["tables"][1];
  EXPECT_EQ(std::string(t["source"].GetString()), weird) << status.out;
  EXPECT_EQ(std::string(t["target"].GetString()), weird) << status.out;
  EXPECT_EQ(std::string(t["snapshot"]["state"].GetString()), "done") << status.out;
  EXPECT_TRUE(t["caught_up"].GetBool()) << status.out;
  ASSERT_TRUE(d["not_configured"].IsArray()) << status.out;
  EXPECT_EQ(d["not_configured"].Size(), 0u) << status.out;

  // Differences whose text holds the odd characters: a key missing on the
  // target and a column only the target has.
  TargetCluster().Exec(tgt_, R"sql(DELETE FROM "we\ird"."Tab ""q""" WHERE k <> 'plain';
ALTER TABLE "we\ird"."Tab ""q""" ADD COLUMN "extra ""q""\z" int;)sql");
  auto verify = Dt({"verify", "--json"});
  EXPECT_EQ(verify.code, 1) << verify.out << verify.err;
  ASSERT_TRUE(parse(verify.out, &d)) << verify.out;
  EXPECT_FALSE(d["equal"].GetBool()) << verify.out;
  ASSERT_EQ(d["tables"].Size(), 2u) << verify.out;
  const auto& v = d["tables"][1];
  EXPECT_EQ(std::string(v["source"].GetString()), weird) << verify.out;
  ASSERT_EQ(v["keys"].Size(), 1u) << verify.out;
  const std::string key = v["keys"][0]["key"].GetString();
  EXPECT_TRUE(Contains(key, "\n") && Contains(key, "\"") && Contains(key, "\\")) << key;
  EXPECT_EQ(std::string(v["keys"][0]["difference"].GetString()), "missing on target");
  ASSERT_EQ(v["schema_problems"].Size(), 1u) << verify.out;
  EXPECT_TRUE(Contains(v["schema_problems"][0].GetString(), target_only)) << verify.out;

  // No longer configured: listed under "not_configured".
  WriteConfig();
  status = Dt({"status", "--json"});
  ASSERT_EQ(status.code, 0) << status.err;
  ASSERT_TRUE(parse(status.out, &d)) << status.out;
  EXPECT_EQ(d["tables"].Size(), 1u) << status.out;
  ASSERT_EQ(d["not_configured"].Size(), 1u) << status.out;
  EXPECT_EQ(std::string(d["not_configured"][0]["source"].GetString()), weird) << status.out;
  EXPECT_EQ(d["not_configured"][0]["pending"].GetInt64(), 0) << status.out;
}

}  // namespace
}  // namespace datatunnel
