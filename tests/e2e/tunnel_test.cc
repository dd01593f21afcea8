// End to end: the datatunnel binary, driven as a user would, against real
// PostgreSQL servers and the dev broker.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "config/config.h"
#include "metrics/metrics.h"
#include "support/pg_cluster.h"
#include "support/subprocess.h"
#include "support/test_util.h"
#include "support/tunnel_fixture.h"
#include "tunnel/kafka_sink.h"
#include "tunnel/source_worker.h"

namespace datatunnel {
namespace {

using testing::BinaryPath;
using testing::RunCommand;
using testing::SourceCluster;
using testing::Subprocess;
using testing::TargetCluster;
using testing::WaitUntil;

constexpr const char* kEmployees =
    "CREATE TABLE employees(emp_id SERIAL, first_name VARCHAR(100), last_name VARCHAR(100), "
    "dob DATE, city VARCHAR(100))";

// Values that must survive exactly: NULL vs empty, quotes, backslashes,
// unicode, the longest VARCHAR(100).
const char* kEdgeRows =
    "INSERT INTO employees(first_name, last_name, dob, city) VALUES "
    "('', NULL, NULL, ''),"
    "('O''Brien', 'back\\slash \"quoted\"', '1900-01-01', E'tab\\there\\nnewline'),"
    "('Zoë', '日本語 テキスト', '2024-02-29', 'Reykjavík 🚀'),"
    "(repeat('x', 100), repeat('é', 100), '0001-01-01', repeat('\\', 100))";

class TunnelTest : public testing::TunnelFixture {
 protected:
  void SetUp() override {
    TunnelFixture::SetUp();
    SourceCluster().Exec(src_, kEmployees);
    TargetCluster().Exec(tgt_, kEmployees);
    WriteConfig();
  }
  // The rows of both sides, as text, in key order.
  std::string Rows(testing::PgCluster& c, const std::string& db) {
    return TableText(c, db, "employees", "emp_id");
  }
  // The old helper: brokers "none", or an extra [[tables]] entry.
  void WriteConfig(const std::string& brokers = "", const std::string& extra = "") {
    if (!brokers.empty() && brokers != "none") bootstrap_ = brokers;
    if (brokers == "none") bootstrap_.clear();
    TunnelFixture::WriteConfig(testing::kEmployeesTable, extra);
  }
};

TEST_F(TunnelTest, InitIsIdempotent) {
  auto r = Dt({"init"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("created change table public.employees_cdc"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("created unique index"), std::string::npos) << r.out;
  r = Dt({"init"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("nothing to do"), std::string::npos) << r.out;
}

TEST_F(TunnelTest, InMemorySnapshotThenEveryOperation) {
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name, city) SELECT 'n' || i, 'c' FROM "
                       "generate_series(1, 500) i");
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run", "--broker", "none"});
  SourceCluster().Exec(src_, kEdgeRows);
  SourceCluster().Exec(
      src_,
      "UPDATE employees SET city = 'Paris' WHERE emp_id <= 10;"
      "DELETE FROM employees WHERE emp_id BETWEEN 11 AND 20;"
      "UPDATE employees SET emp_id = emp_id + 10000 WHERE emp_id BETWEEN 21 AND 30;");
  ExpectInSync();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  // A graceful stop: exit 0 within seconds.
  run->Signal(SIGTERM);
  auto rc = run->Wait(10);
  ASSERT_TRUE(rc.has_value()) << "did not stop within 10 s";
  EXPECT_EQ(*rc, 0) << run->Stderr();
  // A restart resumes where it stopped and does not snapshot again.
  SourceCluster().Exec(src_, "DELETE FROM employees WHERE emp_id = 1");
  run = Start({"run", "--broker", "none"});
  ExpectInSync();
  run->Stop();
  EXPECT_EQ(run->Stderr().find("snapshot of public.employees: requested"), std::string::npos)
      << run->Stderr();
}

// Under load the producer ticks again as soon as a tick is read, one write
// transaction on the source each; pipeline.min_tick_interval_ms spaces them.
TEST_F(TunnelTest, MinTickIntervalSpacesTicksUnderLoad) {
  TunnelFixture::WriteConfig(testing::kEmployeesTable, "[pipeline]\nmin_tick_interval_ms = 100\n");
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run", "--broker", "none"});
  ExpectInSync();
  auto newest_tick = [&] {
    return std::stoll(
        SourceCluster().Scalar(src_, "SELECT max(tick) FROM datatunnel.ticks").value());
  };
  const int64_t first = newest_tick();
  const auto t0 = std::chrono::steady_clock::now();
  // A change every few milliseconds: without the setting, nearly a tick each.
  for (int i = 0; i < 300; ++i) {
    SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('load')");
  }
  ExpectInSync();
  const int64_t ticks = newest_tick() - first;
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LE(ticks, ms / 100 + 3) << ticks << " ticks in " << ms << " ms";
  EXPECT_GT(ticks, 0);
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  run->Stop();
}

TEST_F(TunnelTest, ThroughTheBrokerWithSeparateProducerAndConsumer) {
  UseKafka();
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'pre' || i FROM "
                       "generate_series(1, 200) i");
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto consume = Start({"consume"});
  auto produce = Start({"produce"});
  auto snap = Dt({"snapshot"}, 120);
  ASSERT_EQ(snap.code, 0) << snap.err;
  SourceCluster().Exec(src_, kEdgeRows);
  SourceCluster().Exec(src_,
                       "UPDATE employees SET last_name = 'u' WHERE emp_id % 3 = 0;"
                       "DELETE FROM employees WHERE emp_id % 7 = 0;"
                       "UPDATE employees SET emp_id = emp_id + 1000 WHERE emp_id % 11 = 0;");
  ExpectInSync();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  // The topic holds Debezium-style envelopes keyed by the row key.
  auto kcat = RunCommand({"/usr/bin/kcat", "-b", bootstrap_, "-C", "-t", Topic("public.employees"),
                          "-c", "50", "-e", "-q", "-f", "%k %s\n"},
                         {}, 30);
  EXPECT_NE(kcat.out.find("{\"emp_id\":"), std::string::npos) << kcat.out << kcat.err;
  EXPECT_NE(kcat.out.find("\"source\":{\"version\""), std::string::npos) << kcat.out;
  // The producer records what the broker confirmed every
  // pipeline.progress_interval_ms: status may lag the target until then.
  testing::RunResult status;
  EXPECT_TRUE(WaitUntil(
      [&] {
        status = Dt({"status", "--json"});
        return status.code == 0 && status.out.find("\"lag_changes\":0") != std::string::npos;
      },
      30))
      << status.code << status.out << status.err;
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
}

TEST_F(TunnelTest, RunThroughTheBrokerSnapshotsFirst) {
  UseKafka();
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'pre' || i FROM "
                       "generate_series(1, 1000) i");
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  SourceCluster().Exec(src_, "UPDATE employees SET city = 'Rome' WHERE emp_id % 2 = 0");
  ExpectInSync();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// Through Kafka the consumer commits without waiting for the target's WAL
// flush (target.synchronous_commit = "off", as PostgreSQL's subscriptions
// do): a crash of the target loses the last commits and their positions
// together, and the consumer reads those changes from Kafka again. Not in
// memory, where the source drops what the target committed: there the
// session keeps the server's setting. A trigger on the target table sees
// the setting of the transaction that applies each row.
TEST_F(TunnelTest, TargetCommitsWithoutWaitingForTheFlushOnlyThroughKafka) {
  TargetCluster().Exec(tgt_,
                       "CREATE TABLE seen(setting text);"
                       "CREATE FUNCTION note_setting() RETURNS trigger LANGUAGE plpgsql AS $$ "
                       "BEGIN INSERT INTO seen VALUES (current_setting('synchronous_commit')); "
                       "RETURN NULL; END $$;"
                       "CREATE TRIGGER note AFTER INSERT ON employees FOR EACH ROW "
                       "EXECUTE FUNCTION note_setting()");
  auto seen = [&] {
    return TargetCluster()
        .Scalar(tgt_, "SELECT string_agg(DISTINCT setting, ',') FROM seen")
        .value_or("(none)");
  };
  auto applied = [&](const std::vector<std::string>& global) {
    TargetCluster().Exec(tgt_, "TRUNCATE seen");
    std::vector<std::string> args = global;
    args.push_back("run");
    auto run = Start(args);
    SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('x')");
    ExpectInSync();
    EXPECT_EQ(run->Stop(), 0) << run->Stderr();
    return seen();
  };
  ASSERT_EQ(Dt({"init"}).code, 0);
  EXPECT_EQ(applied({}), "on");  // in memory: the server's setting
  UseKafka();
  EXPECT_EQ(applied({}), "off");
  EXPECT_EQ(applied({"--set", "target.synchronous_commit=remote_write"}), "remote_write");
  auto bad = Dt({"--set", "target.synchronous_commit=sometimes", "run"});
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("target.synchronous_commit: expected"), std::string::npos) << bad.err;
}

// librdkafka's idempotent producer can hit a fatal error when brokers come
// back from an outage (2.0.2 raised OUT_OF_ORDER_SEQUENCE_NUMBER after two of
// three nodes were down; the chaos test found it, and `run` exited). That
// producer sends nothing more, but a new one can: the source worker replaces
// it and publishes again from recorded progress, losing nothing. A fatal
// error a new producer cannot fix (authorization) still stops the worker.
TEST_F(TunnelTest, TheProducerReplacesAKafkaProducerThatHitAFatalError) {
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto consume = Start({"consume"});
  auto config = LoadConfig(config_, {}, {});
  ASSERT_TRUE(config.ok()) << config.status().message();
  tunnel::SourceOptions options;
  options.connect.dsn = config->source.dsn;
  options.connect.role = "source";
  options.tunnel = config->tunnel.name;
  options.tables = config->tables;
  options.pipeline = config->pipeline;
  metrics::Metrics metrics(
      std::vector<std::pair<std::string, std::string>>{{"public.employees", "public.employees"}});
  StopSource stop;
  tunnel::SourceWorker worker(options, &metrics, &stop);
  auto sink = tunnel::KafkaSink::Create(
      config->kafka,
      {src_, config->tunnel.name,
       SourceCluster().Scalar(src_, "SELECT install_id FROM datatunnel.meta").value_or("")},
      [&](uint64_t token, const Status& st) { worker.OnDelivery(token, st); });
  ASSERT_TRUE(sink.ok()) << sink.status().message();
  worker.SetSink(sink->get());
  Status result;
  std::atomic<bool> done{false};
  std::thread thread([&] {
    result = worker.Run();
    done = true;
  });
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'a' || i FROM "
                       "generate_series(1, 100) i");
  ExpectInSync();

  (*sink)->producer().InjectFatalError(RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                       "injected by the test");
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'b' || i FROM "
                       "generate_series(1, 100) i;"
                       "UPDATE employees SET city = 'after' WHERE emp_id % 3 = 0");
  ExpectInSync();
  EXPECT_FALSE(done) << result.message();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));

  // The end-of-tick records' own producer (transaction mode) is replaced
  // the same way: without its records the target would commit nothing more.
  ASSERT_NE((*sink)->ticks_producer(), nullptr);
  (*sink)->ticks_producer()->InjectFatalError(RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                              "injected by the test");
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'c' || i FROM "
                       "generate_series(1, 100) i;"
                       "UPDATE employees SET city = 'later' WHERE emp_id % 5 = 0");
  ExpectInSync();
  EXPECT_FALSE(done) << result.message();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));

  (*sink)->producer().InjectFatalError(RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED,
                                       "injected by the test");
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('c')");
  EXPECT_TRUE(WaitUntil([&] { return done.load(); }, 30));
  stop.RequestStop();
  thread.join();
  EXPECT_EQ(result.code(), StatusCode::kFatal) << result.message();
  EXPECT_TRUE(testing::Contains(result.message(), "CLUSTER_AUTHORIZATION_FAILED"))
      << result.message();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
}

// TRUNCATE lands between the changes before and after it, for every key,
// even when the topic has several partitions that consumers read at
// different speeds.
void TruncateWorkload(testing::PgCluster& c, const std::string& db) {
  for (int round = 0; round < 5; ++round) {
    c.Exec(db,
           "INSERT INTO employees(first_name) SELECT 'r' || i FROM generate_series(1, 300) i;"
           "UPDATE employees SET city = 'before' WHERE emp_id % 2 = 0;");
    c.Exec(db,
           "BEGIN; INSERT INTO employees(first_name) VALUES ('in the same transaction');"
           "TRUNCATE employees; INSERT INTO employees(first_name) VALUES ('after, same tx');"
           "COMMIT");
    c.Exec(db,
           "INSERT INTO employees(first_name) SELECT 'a' || i FROM generate_series(1, 50) i;"
           "UPDATE employees SET city = 'after' WHERE emp_id % 3 = 0");
  }
}

TEST_F(TunnelTest, TruncateInOrderInMemory) {
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run", "--broker", "none"});
  TruncateWorkload(SourceCluster(), src_);
  ExpectInSync();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// Key mode: the partitions are shared by two consumers, and a TRUNCATE waits
// at a barrier until every partition reached it.
TEST_F(TunnelTest, TruncateInOrderAcrossPartitions) {
  WriteConfig("", testing::kKeyMode);
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto produce = Start({"produce"});
  auto consumers = std::vector<std::shared_ptr<Subprocess>>();
  consumers.push_back(Start({"consume"}));
  consumers.push_back(Start({"consume"}));  // partitions split between two processes
  TruncateWorkload(SourceCluster(), src_);
  ExpectInSync();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM datatunnel.barriers WHERE done"), 5);
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
  for (auto& c : consumers) EXPECT_EQ(c->Stop(), 0) << c->Stderr();
}

// One clear line on stderr, the right exit code, nothing changed.
void ExpectOneLineError(const testing::RunResult& r, int code, const std::string& fragment) {
  EXPECT_EQ(r.code, code) << r.out << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("datatunnel: error: ", 0), 0u) << r.err;
}

TEST_F(TunnelTest, BadInputGetsOneClearLine) {
  // Unreachable database.
  auto r = RunCommand({BinaryPath(), "-c", config_, "--source-dsn",
                       "postgresql://postgres@127.0.0.1:1/db1", "init"});
  ExpectOneLineError(r, 3, "cannot connect to the source database (127.0.0.1:1/db1 as postgres)");
  // Wrong password: never echoed.
  SourceCluster().CreatePasswordRole(testing::UniqueName("pw"), "right");
  auto role = SourceCluster().Scalar("postgres",
                                     "SELECT max(rolname) FROM pg_roles WHERE rolname LIKE 'pw_%'");
  r = RunCommand({BinaryPath(), "-c", config_, "--source-dsn",
                  fmt::format("postgresql://{}:wrongsecret@127.0.0.1:{}/{}", *role,
                              SourceCluster().port(), src_),
                  "init"});
  ExpectOneLineError(r, 2, "password authentication failed");
  EXPECT_EQ(r.err.find("wrongsecret"), std::string::npos);
  // Missing table.
  SourceCluster().Exec(src_, "CREATE TABLE nokey(a int)");
  WriteConfig("none", "[[tables]]\nsource = \"public.missing\"\n");
  ExpectOneLineError(Dt({"init"}), 2, "source table public.missing does not exist");
  EXPECT_EQ(
      SourceCluster().Count(src_, "SELECT count(*) FROM pg_namespace WHERE nspname = 'datatunnel'"),
      0)
      << "a failed init left state behind";
  // Unreachable broker.
  WriteConfig("127.0.0.1:1");
  ASSERT_EQ(Dt({"init"}).code, 0);
  ExpectOneLineError(Dt({"produce"}, 60), 3, "cannot reach the Kafka brokers at 127.0.0.1:1");
  // Malformed configuration.
  std::ofstream(config_) << "[source\ndsn=";
  ExpectOneLineError(Dt({"init"}), 2, "malformed TOML");
}

}  // namespace
}  // namespace datatunnel
