// Interop (issue 21 item 2): our topics, read by the Kafka ecosystem.
// `datatunnel run` with kafka.format = "connect-json" writes its topics as
// Kafka Connect's JsonConverter (with schemas) writes them; a Kafka Connect
// worker (scripts/debezium.sh) runs Debezium's JDBC sink connector on them
// into a third database, dropping our control messages with Connect's stock
// Filter transform (HasHeaderKey "datatunnel.control"), while our own
// consumer applies the same topics to the target. Rows that exist before the
// tunnel starts arrive as its snapshot (op r); then a workload of inserts,
// updates, deletes and key changes on an employees table and an all-types
// table. Both the target and the sink's database must equal the source.
// And a running tunnel switches formats without losing a change.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "support/interop_tables.h"
#include "support/kafka_cluster.h"
#include "support/pg_cluster.h"
#include "support/subprocess.h"
#include "support/test_util.h"
#include "support/tunnel_fixture.h"

namespace datatunnel {
namespace {

using testing::RunCommand;
using testing::SourceCluster;
using testing::TargetCluster;

// The all-types table of tests/e2e/debezium_test.cc: the types Debezium's
// connectors carry (geometric and range types, bit strings and composites
// are left to tests/e2e/types_test.cc, which checks our own format).
class ConnectJsonTest : public testing::TunnelFixture {
 protected:
  void TearDown() override {
    RunCommand({testing::SourceDir() + "/scripts/debezium.sh", "stop", "--dir", dir_ + "/connect"},
               {}, 60);
    TunnelFixture::TearDown();
  }

  // The row count, then every row as text in key order.
  static std::string Rows(testing::PgCluster& c, const std::string& db, const std::string& table,
                          const std::string& key) {
    return c
        .Scalar(db, fmt::format("SELECT count(*) || E'\\n' || coalesce(string_agg(t::text, "
                                "E'\\n' ORDER BY t.{}), '') FROM {} t",
                                key, table))
        .value_or("");
  }
};

TEST_F(ConnectJsonTest, DebeziumJdbcSinkReadsOurTopics) {
  SourceCluster().Exec(src_, testing::kInteropDdl);
  SourceCluster().Exec(src_, testing::AllTypesRows(0));
  SourceCluster().Exec(src_,
                       "INSERT INTO employees SELECT g, 'first ' || g, 'last ' || g, "
                       "date '1980-01-01' + g, 'city ' || (g % 7), g * 1.25 "
                       "FROM generate_series(1, 300) g");
  // The third database, written only by the JDBC sink: the same tables.
  const std::string sink_db = TargetCluster().CreateDatabase("cj_sink");
  TargetCluster().Exec(sink_db, testing::kInteropDdl);

  bootstrap_ = testing::SharedKafka().bootstrap();
  std::ofstream(config_) << fmt::format(R"(
[tunnel]
name = "cj"
[source]
dsn = "{}"
[target]
dsn = "{}"
[kafka]
brokers = "{}"
format = "connect-json"
topic_prefix = "{}"
group_id = "{}"
[kafka.consumer_properties]
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "300"
[[tables]]
source = "public.employees"
[[tables]]
source = "public.alltypes"
)",
                                        SourceCluster().Dsn(src_), TargetCluster().Dsn(tgt_),
                                        bootstrap_, topic_prefix_, topic_prefix_);
  auto init = Dt({"init"});
  ASSERT_EQ(init.code, 0) << init.out << init.err;
  auto run = Start({"run"});
  // The snapshot reached the target: the topics exist with their rows.
  ASSERT_TRUE(testing::WaitUntil(
      [&] { return TargetCluster().Count(tgt_, "SELECT count(*) FROM employees") == 300; }, 60))
      << RunningLogs();

  const std::string sink = dir_ + "/sink.properties";
  std::ofstream(sink) << fmt::format(R"(name=cj_sink{}
connector.class=io.debezium.connector.jdbc.JdbcSinkConnector
tasks.max=1
topics={},{}
connection.url=jdbc:postgresql://127.0.0.1:{}/{}?stringtype=unspecified
connection.username=postgres
connection.password=unused
insert.mode=upsert
delete.enabled=true
primary.key.mode=record_key
schema.evolution=none
collection.name.format=${{source.table}}
transforms=dropControl
transforms.dropControl.type=org.apache.kafka.connect.transforms.Filter
transforms.dropControl.predicate=isControl
predicates=isControl
predicates.isControl.type=org.apache.kafka.connect.transforms.predicates.HasHeaderKey
predicates.isControl.name=datatunnel.control
)",
                                     getpid(), Topic("public.employees"), Topic("public.alltypes"),
                                     TargetCluster().port(), sink_db);
  auto started = RunCommand(
      {testing::SourceDir() + "/scripts/debezium.sh", "start", "--dir", dir_ + "/connect",
       "--bootstrap", bootstrap_, "--owner", std::to_string(getpid()), "--quick-start", sink},
      {}, 240);
  ASSERT_EQ(started.code, 0) << started.out << started.err;

  // The workload: inserts, updates, deletes and key changes in small
  // transactions, while both sides apply.
  testing::EmployeesWriter writer(SourceCluster(), src_, 7);
  ASSERT_TRUE(testing::WaitUntil([&] { return writer.transactions() >= 100; }, 60));
  SourceCluster().Exec(src_, testing::AllTypesRows(100));
  ASSERT_TRUE(testing::WaitUntil([&] { return writer.transactions() >= 200; }, 60));
  writer.Stop();
  SourceCluster().Exec(src_, "UPDATE alltypes SET tx = tx || ' updated', ai = ai || 7");
  SourceCluster().Exec(src_, "DELETE FROM alltypes WHERE id IN (3, 102)");
  SourceCluster().Exec(src_, "UPDATE alltypes SET id = id + 1000 WHERE id = 101");

  for (const auto& [table, key] : std::vector<std::pair<std::string, std::string>>{
           {"employees", "emp_id"}, {"alltypes", "id"}}) {
    const std::string want = Rows(SourceCluster(), src_, table, key);
    for (const std::string* db : std::vector<const std::string*>{&tgt_, &sink_db}) {
      std::string got;
      EXPECT_TRUE(testing::WaitUntil(
          [&] {
            got = Rows(TargetCluster(), *db, table, key);
            return got == want;
          },
          60))
          << table << " in " << *db << " differs from the source:\nsource:\n"
          << want.substr(0, 3000) << "\ntarget:\n"
          << got.substr(0, 3000) << RunningLogs();
    }
  }
  EXPECT_FALSE(testing::Contains(run->Stderr(), "bad message")) << run->Stderr();
  run->Stop();
}

// A running tunnel whose producer switches from our format to connect-json
// while the consumer keeps applying: each message is read in its
// own format and every row stays on its partition, so nothing is lost.
TEST_F(ConnectJsonTest, SwitchingFormatsLosesNothing) {
  SourceCluster().Exec(src_, testing::kEmployeesDdl);
  UseKafka();
  auto init = Dt({"init"});
  ASSERT_EQ(init.code, 0) << init.out << init.err;
  // Captured as changes (`produce` copies no existing rows).
  SourceCluster().Exec(src_,
                       "INSERT INTO employees (first_name, city) SELECT 'e' || g, 'c' FROM "
                       "generate_series(1, 50) g");
  auto consumer = Start({"consume"});
  auto producer = Start({"produce"});
  int round = 0;
  auto change = [&] {
    ++round;
    SourceCluster().Exec(
        src_, fmt::format("UPDATE employees SET city = 'r{0}' WHERE emp_id % 3 = {1}; "
                          "DELETE FROM employees WHERE emp_id = (SELECT min(emp_id) FROM "
                          "employees); INSERT INTO employees (first_name, city) VALUES ('n{0}', "
                          "'r{0}'); UPDATE employees SET emp_id = emp_id + 1000 WHERE emp_id = "
                          "(SELECT max(emp_id) FROM employees WHERE emp_id < 1000)",
                          round, round % 3));
  };
  for (const char* format : {"connect-json"}) {  // add "datatunnel" for the way back
    change();
    ASSERT_TRUE(testing::WaitUntil(
        [&] {
          return TableText(SourceCluster(), src_, "employees", "emp_id") ==
                 TableText(TargetCluster(), tgt_, "employees", "emp_id");
        },
        60))
        << RunningLogs();
    producer->Stop();
    change();  // waits in the change table for the producer in the other format
    producer = Start({"--set", std::string("kafka.format=") + format, "produce"});
    change();
  }
  ExpectInSync();
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), 50);
  EXPECT_FALSE(testing::Contains(consumer->Stderr(), "bad message")) << consumer->Stderr();
}

}  // namespace
}  // namespace datatunnel
