// Interop (issue 21): a sink for Debezium's topics. The real Debezium
// PostgreSQL connector (Kafka Connect standalone, scripts/debezium.sh) reads
// a source server with wal_level = logical and writes to the real Kafka
// cluster; `datatunnel consume` with kafka.format = "debezium" applies its
// topics to the target. Two connectors on one worker cover both JSON forms:
// with schemas (Connect's default; decimals as Connect Decimals, intervals as
// microseconds) and without (decimal.handling.mode = string, intervals as
// ISO-8601), each applied by its own consumer to its own target database.
// Rows that exist before the connector starts arrive as its snapshot
// (op r); then a concurrent workload of inserts, updates, deletes and key
// changes runs while one consumer is killed with kill -9 and restarted, and
// a TRUNCATE (op t, skipped.operations = none) on a one-partition topic cuts
// between rows before and after it. Each target must equal the source.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "support/interop_tables.h"
#include "support/kafka_cluster.h"
#include "support/pg_cluster.h"
#include "support/subprocess.h"
#include "support/test_util.h"

namespace datatunnel {
namespace {

using testing::PgCluster;
using testing::RunCommand;
using testing::Subprocess;
using testing::TargetCluster;

// The source server: logical decoding needs wal_level = logical (scripts/pg.sh
// reads PG_WAL_LEVEL), which our own capture does not, so the binary's shared
// source server is not used.
// Started on first use, stopped after the last test.
class LogicalSourceEnvironment : public ::testing::Environment {
 public:
  static LogicalSourceEnvironment* instance;
  void TearDown() override { cluster.reset(); }
  std::unique_ptr<PgCluster> cluster;
};
LogicalSourceEnvironment* LogicalSourceEnvironment::instance =
    static_cast<LogicalSourceEnvironment*>(
        ::testing::AddGlobalTestEnvironment(new LogicalSourceEnvironment));

PgCluster& LogicalSource() {
  auto& env = *LogicalSourceEnvironment::instance;
  if (!env.cluster) {
    setenv("PG_WAL_LEVEL", "logical", 1);
    env.cluster = std::make_unique<PgCluster>("logical-source");
    unsetenv("PG_WAL_LEVEL");
  }
  return *env.cluster;
}

// Besides the shared tables, `tr` for TRUNCATE.
std::string SourceDdl() {
  return std::string(testing::kInteropDdl) +
         "CREATE TABLE tr (id integer PRIMARY KEY, label text);";
}

class DebeziumTest : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = LogicalSource().CreateDatabase("dbz_src");
    dir_ = std::filesystem::temp_directory_path() / testing::UniqueName("datatunnel-dbz");
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    // The connectors stop first (their replication slots go with the server).
    RunCommand({testing::SourceDir() + "/scripts/debezium.sh", "stop", "--dir", dir_ + "/connect"},
               {}, 60);
    std::filesystem::remove_all(dir_);
  }

  // A Debezium PostgreSQL connector's properties file; `extra` adds lines.
  std::string ConnectorFile(const std::string& name, const std::string& prefix,
                            const std::string& extra) {
    const std::string path = dir_ + "/" + name + ".properties";
    std::ofstream(path) << fmt::format(R"(name={}
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname=127.0.0.1
database.port={}
database.user=postgres
database.password=unused
database.dbname={}
topic.prefix={}
plugin.name=pgoutput
slot.name={}
publication.name={}
publication.autocreate.mode=filtered
table.include.list=public.employees,public.alltypes,public.tr
snapshot.mode=initial
skipped.operations=none
{}
)",
                                       name, LogicalSource().port(), src_, prefix, name, name,
                                       extra);
    return path;
  }

  // A datatunnel configuration applying topics `prefix`.* to target `db`.
  std::string ConsumerConfig(const std::string& name, const std::string& prefix,
                             const std::string& db) {
    const std::string path = dir_ + "/" + name + ".toml";
    std::ofstream(path) << fmt::format(R"(
[tunnel]
name = "{}"
[source]
dsn = "{}"
[target]
dsn = "{}"
[kafka]
brokers = "{}"
format = "debezium"
topic_prefix = "{}"
group_id = "{}"
[kafka.consumer_properties]
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "300"
[[tables]]
source = "public.employees"
[[tables]]
source = "public.alltypes"
[[tables]]
source = "public.tr"
)",
                                       name, LogicalSource().Dsn(src_), TargetCluster().Dsn(db),
                                       testing::SharedKafka().bootstrap(), prefix, prefix + "-g");
    return path;
  }

  std::shared_ptr<Subprocess> Consume(const std::string& config) {
    return std::make_shared<Subprocess>(
        std::vector<std::string>{testing::BinaryPath(), "-c", config, "consume"});
  }

  // The row count, then every row as text in key order.
  static std::string Rows(PgCluster& c, const std::string& db, const std::string& table,
                          const std::string& key) {
    return c
        .Scalar(db, fmt::format("SELECT count(*) || E'\\n' || coalesce(string_agg(t::text, "
                                "E'\\n' ORDER BY t.{}), '') FROM {} t",
                                key, table))
        .value_or("");
  }

  std::string src_, dir_;
};

TEST_F(DebeziumTest, ConsumeAppliesDebeziumTopicsExactlyOnce) {
  LogicalSource().Exec(src_, SourceDdl());
  // Before the connector starts: its snapshot (op r).
  LogicalSource().Exec(src_, testing::AllTypesRows(0));
  LogicalSource().Exec(src_,
                       "INSERT INTO employees SELECT g, 'first ' || g, 'last ' || g, "
                       "date '1980-01-01' + g, 'city ' || (g % 7), g * 1.25 "
                       "FROM generate_series(1, 300) g");
  LogicalSource().Exec(src_,
                       "INSERT INTO tr SELECT g, 'before ' || g FROM generate_series(1, 5) g");

  const std::string prefix = testing::TestTopicPrefix();
  const std::string with = prefix + "-s", without = prefix + "-n";
  // TRUNCATE is ordered with the table's other changes only on one partition
  // (Debezium sends it to one partition, with no key).
  testing::SharedKafka().CreateTopic(with + ".public.tr", 1);
  testing::SharedKafka().CreateTopic(without + ".public.tr", 1);

  const std::string tgt_with = TargetCluster().CreateDatabase("dbz_tgt_s");
  const std::string tgt_without = TargetCluster().CreateDatabase("dbz_tgt_n");
  const std::string cfg_with = ConsumerConfig("dbzs", with, tgt_with);
  const std::string cfg_without = ConsumerConfig("dbzn", without, tgt_without);
  for (const auto& cfg : {cfg_with, cfg_without}) {
    auto r = RunCommand({testing::BinaryPath(), "-c", cfg, "init"});
    ASSERT_EQ(r.code, 0) << r.out << r.err;
  }

  const std::string a = ConnectorFile("dbz_s" + std::to_string(getpid()), with, "");
  const std::string b =
      ConnectorFile("dbz_n" + std::to_string(getpid()), without,
                    "key.converter=org.apache.kafka.connect.json.JsonConverter\n"
                    "key.converter.schemas.enable=false\n"
                    "value.converter=org.apache.kafka.connect.json.JsonConverter\n"
                    "value.converter.schemas.enable=false\n"
                    "decimal.handling.mode=string\ninterval.handling.mode=string");
  auto started = RunCommand({testing::SourceDir() + "/scripts/debezium.sh", "start", "--dir",
                             dir_ + "/connect", "--bootstrap", testing::SharedKafka().bootstrap(),
                             "--owner", std::to_string(getpid()), "--quick-start", a, b},
                            {}, 240);
  ASSERT_EQ(started.code, 0) << started.out << started.err;

  auto consumer_with = Consume(cfg_with);
  auto consumer_without = Consume(cfg_without);

  // The workload: inserts, updates, deletes and key changes, committed in
  // small transactions from another connection while the consumers apply.
  testing::EmployeesWriter writer(LogicalSource(), src_, 42);

  // kill -9 of a consumer midway: what it applied is committed with its
  // offsets, so the restarted one neither skips nor repeats a message.
  ASSERT_TRUE(testing::WaitUntil([&] { return writer.transactions() >= 150; }, 60));
  ASSERT_TRUE(testing::WaitUntil(
      [&] { return TargetCluster().Count(tgt_with, "SELECT count(*) FROM employees") > 0; }, 60))
      << consumer_with->Stderr();
  consumer_with->Signal(SIGKILL);
  consumer_with->Wait(10);
  LogicalSource().Exec(src_, testing::AllTypesRows(100));
  ASSERT_TRUE(testing::WaitUntil([&] { return writer.transactions() >= 300; }, 60));
  consumer_with = Consume(cfg_with);
  ASSERT_TRUE(testing::WaitUntil([&] { return writer.transactions() >= 450; }, 60));
  writer.Stop();
  LogicalSource().Exec(src_, "UPDATE alltypes SET tx = tx || ' updated', ai = ai || 7");
  LogicalSource().Exec(src_, "DELETE FROM alltypes WHERE id = 3");
  LogicalSource().Exec(src_,
                       "INSERT INTO tr VALUES (6, 'before 6'); TRUNCATE tr; "
                       "INSERT INTO tr VALUES (1, 'after 1'), (7, 'after 7')");

  for (const auto& [table, key] : std::vector<std::pair<std::string, std::string>>{
           {"employees", "emp_id"}, {"alltypes", "id"}, {"tr", "id"}}) {
    const std::string want = Rows(LogicalSource(), src_, table, key);
    for (const auto* db : {&tgt_with, &tgt_without}) {
      std::string got;
      EXPECT_TRUE(testing::WaitUntil(
          [&] {
            got = Rows(TargetCluster(), *db, table, key);
            return got == want;
          },
          60))
          << table << " in " << *db << " differs from the source:\nsource:\n"
          << want.substr(0, 3000) << "\ntarget:\n"
          << got.substr(0, 3000) << "\nconsumer logs:\n"
          << consumer_with->Stderr() << consumer_without->Stderr();
    }
  }
  EXPECT_EQ(TargetCluster().Count(tgt_with, "SELECT count(*) FROM tr"), 2);
  // Nothing went to a dead-letter topic (every event was read).
  for (const auto& c : {consumer_with, consumer_without}) {
    EXPECT_FALSE(testing::Contains(c->Stderr(), "bad message")) << c->Stderr();
  }
  consumer_with->Stop();
  consumer_without->Stop();
}

}  // namespace
}  // namespace datatunnel
