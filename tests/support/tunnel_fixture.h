// TunnelFixture: what end-to-end tests share. A fresh source and target
// database per test, a config file, the binary run as a subprocess, the test
// binary's real Kafka cluster on demand (topics and group of the test's own),
// and waits that end as soon as the tunnel caught up.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "support/kafka_cluster.h"
#include "support/pg_cluster.h"
#include "support/subprocess.h"
#include "support/test_util.h"

namespace datatunnel::testing {

inline constexpr const char* kEmployeesDdl =
    "CREATE TABLE employees(emp_id SERIAL, first_name VARCHAR(100), last_name VARCHAR(100), "
    "dob DATE, city VARCHAR(100))";
inline constexpr const char* kEmployeesTable =
    "[[tables]]\nsource = \"public.employees\"\nkey = [\"emp_id\"]\n";
// A config section for tests of key mode's own mechanisms (partitions
// shared among consumers, TRUNCATE barriers, per-partition progress): the
// default is pipeline.apply_consistency = "transaction".
inline constexpr const char* kKeyMode = "[pipeline]\napply_consistency = \"key\"\n";

class TunnelFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = SourceCluster().CreateDatabase("e2e_src");
    tgt_ = TargetCluster().CreateDatabase("e2e_tgt");
    dir_ = std::filesystem::temp_directory_path() / UniqueName("datatunnel-e2e");
    std::filesystem::create_directories(dir_);
    config_ = dir_ + "/datatunnel.toml";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes the config: both databases, the broker (or "none") with this
  // test's topic prefix and group, short consumer-group timeouts for tests,
  // then `tables` ([[tables]] entries) and `extra` (more sections).
  void WriteConfig(const std::string& tables = kEmployeesTable, const std::string& extra = "") {
    tables_ = tables;
    extra_ = extra;
    std::ofstream(config_) << fmt::format(R"(
[source]
dsn = "{}"
[target]
dsn = "{}"
[kafka]
brokers = "{}"
topic_prefix = "{}"
group_id = "{}"
[kafka.consumer_properties]
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "300"
{}
{}
)",
                                          SourceCluster().Dsn(src_), TargetCluster().Dsn(tgt_),
                                          bootstrap_.empty() ? "none" : bootstrap_, topic_prefix_,
                                          topic_prefix_, tables, extra);
  }

  std::vector<std::string> Args(std::vector<std::string> rest) {
    std::vector<std::string> a = {BinaryPath(), "-c", config_};
    a.insert(a.end(), rest.begin(), rest.end());
    return a;
  }
  RunResult Dt(std::vector<std::string> rest, double seconds = 60) {
    return RunCommand(Args(std::move(rest)), {}, seconds);
  }
  std::shared_ptr<Subprocess> Start(std::vector<std::string> rest) {
    auto p = std::make_shared<Subprocess>(Args(std::move(rest)));
    started_.push_back(p);
    return p;
  }
  // Waits until `verify` reports no difference (the tunnel caught up). On
  // failure, shows what the tunnel processes still running have logged.
  void ExpectInSync(double seconds = 60) {
    auto r = Dt({"verify", "--wait", std::to_string(seconds * TimeoutMultiplier())},
                seconds * TimeoutMultiplier() * 2 + 30);
    EXPECT_EQ(r.code, 0) << r.out << r.err << RunningLogs();
  }
  std::string RunningLogs() {
    std::string logs;
    for (const auto& w : started_) {
      if (auto p = w.lock()) {
        std::string err = p->Stderr();
        if (err.size() > 4000) err = "..." + err.substr(err.size() - 4000);
        logs += "\n--- a tunnel process logged:\n" + err;
      }
    }
    return logs;
  }
  // Every row of `table` as text, in `order` (compare source and target).
  static std::string TableText(PgCluster& c, const std::string& db, const std::string& table,
                               const std::string& order) {
    return c
        .Scalar(db, fmt::format("SELECT string_agg(t::text, E'\\n' ORDER BY {}) FROM {} t", order,
                                table))
        .value_or("");
  }
  // Runs `sql` in the source's and the target's database: the same tables
  // on both sides.
  void OnBothSides(const std::string& sql) {
    SourceCluster().Exec(src_, sql);
    TargetCluster().Exec(tgt_, sql);
  }
  // parent and child (a foreign key to parent), for OnBothSides().
  static constexpr const char* kFamilyDdl =
      "CREATE TABLE parent(id integer PRIMARY KEY, name text);"
      "CREATE TABLE child(id integer PRIMARY KEY, parent_id integer NOT NULL "
      "REFERENCES parent(id), note text)";
  // Points the config at this test binary's Kafka cluster (started on first
  // use), with a topic prefix and consumer group no other test uses.
  void UseKafka() {
    bootstrap_ = SharedKafka().bootstrap();
    WriteConfig(tables_, extra_);
  }
  // The topic of source table `schema_table` ("public.employees").
  std::string Topic(const std::string& schema_table) const {
    return topic_prefix_ + "." + schema_table;
  }

  std::string src_, tgt_, dir_, config_, bootstrap_;
  std::string topic_prefix_ = TestTopicPrefix();
  std::string tables_ = kEmployeesTable, extra_;
  std::vector<std::weak_ptr<Subprocess>> started_;
};

}  // namespace datatunnel::testing
