// End to end: operating the tunnel (issue 7). The metrics endpoint and
// `status --json`, checked against what the test did; no log line of a full
// run ever shows a password; malformed messages on a topic go to its
// dead-letter topic (or stop the consumer) while good changes keep flowing.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/pg_cluster.h"
#include "support/subprocess.h"
#include "support/test_util.h"
#include "support/tunnel_fixture.h"

namespace datatunnel {
namespace {

using testing::Contains;
using testing::Lines;
using testing::RunCommand;
using testing::SourceCluster;
using testing::Subprocess;
using testing::TargetCluster;
using testing::WaitUntil;

constexpr const char* kEmployeesPkDdl =
    "CREATE TABLE employees(emp_id SERIAL PRIMARY KEY, first_name VARCHAR(100), "
    "last_name VARCHAR(100), dob DATE, city VARCHAR(100))";
constexpr const char* kDocsDdl = "CREATE TABLE docs(id int PRIMARY KEY, body bytea, note text)";
constexpr const char* kDocsTable = "[[tables]]\nsource = \"public.docs\"\n";

// A loopback port nothing listens on right now.
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

struct HttpReply {
  int status = 0;  // 0: no answer
  std::string body;
};

// GET http://127.0.0.1:port/path (HTTP/1.0, the server closes the connection).
HttpReply HttpGet(int port, const std::string& path) {
  HttpReply reply;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return reply;
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return reply;
  }
  std::string raw;
  char buf[8192];
  for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) raw.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t head_end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.", 0) != 0 || raw.size() < 12 || head_end == std::string::npos) {
    return reply;
  }
  reply.status = std::atoi(raw.substr(9, 3).c_str());
  reply.body = raw.substr(head_end + 4);
  return reply;
}

// The value of a sample in Prometheus text format: `name{table="..."} v` or
// `name v`; nullopt when absent.
std::optional<double> Sample(const std::string& body, const std::string& name,
                             const std::string& table = "") {
  const std::string prefix =
      table.empty() ? name + " " : fmt::format("{}{{table=\"{}\"}} ", name, table);
  for (const auto& line : Lines(body)) {
    if (line.rfind(prefix, 0) == 0) return std::strtod(line.c_str() + prefix.size(), nullptr);
  }
  return std::nullopt;
}

// A number field of `status --json` (the first table's when several).
std::optional<double> JsonNumber(const std::string& json, const std::string& field) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + field + "\":(-?[0-9.]+)"))) return std::nullopt;
  return std::strtod(m[1].str().c_str(), nullptr);
}

class OpsTest : public testing::TunnelFixture {
 protected:
  // Scrapes /metrics; `name{table=...}` of the first table, or a scalar.
  std::optional<double> Metric(const std::string& name, const std::string& table = "") {
    return Sample(HttpGet(port_, "/metrics").body, name, table);
  }
  std::string MetricsConfig(const std::string& more = "") {
    port_ = FreePort();
    return fmt::format("[metrics]\nlisten = \"127.0.0.1:{}\"\n{}", port_, more);
  }
  std::string Status() {
    auto r = Dt({"status", "--json"});
    EXPECT_EQ(r.code, 0) << r.out << r.err;
    return r.out;
  }
  // Produces `lines` (one message each) to `topic` with kcat.
  void Publish(const std::string& topic, const std::vector<std::string>& lines,
               int partition = -1) {
    const std::string file = dir_ + "/messages";
    {
      std::ofstream out(file);
      for (const auto& l : lines) out << l << "\n";
    }
    std::vector<std::string> argv = {"/usr/bin/kcat", "-P", "-b", bootstrap_, "-t", topic};
    if (partition >= 0) {
      argv.push_back("-p");
      argv.push_back(std::to_string(partition));
    }
    argv.push_back("-l");
    argv.push_back(file);
    auto r = RunCommand(argv, {}, 30);
    ASSERT_EQ(r.code, 0) << r.out << r.err;
  }

  int port_ = 0;
};

// ---- Metrics endpoint -------------------------------------------------------

TEST_F(OpsTest, MetricsEndpointCountsWhatTheTestDid) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  WriteConfig(testing::kEmployeesTable, MetricsConfig("[pipeline]\nready_max_lag_seconds = 1\n"));
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  ASSERT_TRUE(WaitUntil([&] { return HttpGet(port_, "/healthz").status == 200; }, 20))
      << run->Stderr();
  EXPECT_EQ(HttpGet(port_, "/healthz").body, "ok\n");
  EXPECT_TRUE(WaitUntil([&] { return HttpGet(port_, "/readyz").status == 200; }, 20));
  EXPECT_EQ(HttpGet(port_, "/readyz").body, "ready\n");
  EXPECT_EQ(HttpGet(port_, "/nothing-here").status, 404);
  EXPECT_TRUE(Contains(run->Stderr(), fmt::format("on port {}", port_))) << run->Stderr();
  // The snapshot of the empty table ends before the writes (on a fast host
  // they once came first and the snapshot copied 40 of their rows).
  ASSERT_TRUE(WaitUntil(
      [&] {
        return SourceCluster().Scalar(src_,
                                      "SELECT snapshot_state FROM datatunnel.tables WHERE "
                                      "table_name = 'employees'") ==
               std::optional<std::string>("done");
      },
      20))
      << run->Stderr();

  // 40 inserts, 15 updates, 5 deletes, 4 key changes: 64 changes.
  const std::string t = "public.employees";
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                       "generate_series(1, 40) i");
  SourceCluster().Exec(src_, "UPDATE employees SET city = 'Oslo' WHERE emp_id <= 15");
  SourceCluster().Exec(src_, "DELETE FROM employees WHERE emp_id BETWEEN 16 AND 20");
  SourceCluster().Exec(
      src_, "UPDATE employees SET emp_id = emp_id + 1000 WHERE emp_id BETWEEN 21 AND 24");
  ExpectInSync();
  EXPECT_TRUE(WaitUntil(
      [&] {
        const std::string m = HttpGet(port_, "/metrics").body;
        return Sample(m, "datatunnel_changes_applied_total", t) == 64.0 &&
               Sample(m, "datatunnel_changes_published_total", t) == 64.0;
      },
      20))
      << HttpGet(port_, "/metrics").body;
  const std::string m = HttpGet(port_, "/metrics").body;
  EXPECT_EQ(Sample(m, "datatunnel_changes_captured_total", t), 64.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_changes_published_total", t), 64.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_changes_applied_total", t), 64.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_duplicates_skipped_total", t), 0.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_dead_letters_total", t), 0.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_snapshot_rows_total", t), 0.0) << m;  // the table was empty
  EXPECT_EQ(Sample(m, "datatunnel_snapshot_running", t), 0.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_lag_changes", t), 0.0) << m;
  const double batches = Sample(m, "datatunnel_batches_total", t).value_or(-1);
  EXPECT_GE(batches, 1) << m;
  EXPECT_LE(batches, 64) << m;
  // Every applied change was timed (a key change is two messages).
  EXPECT_GE(Sample(m, "datatunnel_end_to_end_latency_seconds_count", t).value_or(0), 64) << m;
  EXPECT_EQ(Sample(m, "datatunnel_end_to_end_latency_seconds_count", t),
            Sample(m,
                   "datatunnel_end_to_end_latency_seconds_bucket{table=\"public.employees\","
                   "le=\"+Inf\"}"))
      << m;
  EXPECT_EQ(Sample(m, "datatunnel_source_connected"), 1.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_target_connected"), 1.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_leader"), 1.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_errors_total"), 0.0) << m;
  EXPECT_GT(Sample(m, "process_resident_memory_bytes").value_or(0), 0) << m;

  // The target stops applying (a lock): changes wait, the lag shows them and,
  // past ready_max_lag_seconds, /readyz says not ready.
  auto lock = TargetCluster().Connect(tgt_);
  ASSERT_TRUE(lock->Exec("BEGIN; LOCK TABLE employees IN ACCESS EXCLUSIVE MODE").ok());
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'late' || i FROM "
                       "generate_series(1, 7) i");
  EXPECT_TRUE(WaitUntil(
      [&] {
        return Metric("datatunnel_changes_captured_total", t) == 71.0 &&
               Metric("datatunnel_lag_changes", t) == 7.0;
      },
      20))
      << HttpGet(port_, "/metrics").body;
  // The lag is the age of the oldest change held back: it grows while the
  // target is locked.
  EXPECT_TRUE(WaitUntil([&] { return Metric("datatunnel_lag_seconds", t).value_or(0) > 1.5; }, 20))
      << HttpGet(port_, "/metrics").body;
  HttpReply ready;
  EXPECT_TRUE(WaitUntil(
      [&] {
        ready = HttpGet(port_, "/readyz");
        return ready.status == 503;
      },
      20))
      << ready.status << " " << ready.body;
  EXPECT_TRUE(Contains(ready.body, "public.employees is")) << ready.body;
  EXPECT_TRUE(Contains(ready.body, "behind")) << ready.body;
  EXPECT_EQ(HttpGet(port_, "/healthz").status, 200);  // alive, only not ready
  ASSERT_TRUE(lock->Exec("COMMIT").ok());
  ExpectInSync();
  EXPECT_TRUE(WaitUntil([&] { return HttpGet(port_, "/readyz").status == 200; }, 20));
  EXPECT_EQ(Metric("datatunnel_changes_applied_total", t), 71.0);
  EXPECT_EQ(Metric("datatunnel_lag_changes", t), 0.0);
  EXPECT_TRUE(WaitUntil([&] { return Metric("datatunnel_lag_seconds", t) == 0.0; }, 20))
      << "caught up and idle: not behind\n"
      << HttpGet(port_, "/metrics").body;
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
  // Stopped: nothing listens any more.
  EXPECT_EQ(HttpGet(port_, "/healthz").status, 0);
}

// While the broker is down, the producer holds the changes it cannot
// deliver: the lag is their age, and grows until the broker is back.
// A tick streamed in pieces (apply_consistency = "transaction") counts
// every change it applied, a bulk statement's rows included (their
// positions' sub carries the element: once only those with sub 0 counted).
TEST_F(OpsTest, AStreamedTickCountsEveryChangeApplied) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  WriteConfig(testing::kEmployeesTable,
              MetricsConfig("[pipeline]\napply_consistency = \"transaction\"\n"
                            "tick_stream_changes = 300\n"));
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run", "--broker", "none"});
  ASSERT_TRUE(WaitUntil(
      [&] {
        return SourceCluster().Scalar(src_,
                                      "SELECT snapshot_state FROM datatunnel.tables WHERE "
                                      "table_name = 'employees'") ==
               std::optional<std::string>("done");
      },
      20))
      << run->Stderr();
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                       "generate_series(1, 2000) i");  // the bulk form: > 1,000 rows
  ExpectInSync();
  const std::string t = "public.employees";
  EXPECT_TRUE(
      WaitUntil([&] { return Metric("datatunnel_changes_applied_total", t) == 2000.0; }, 20))
      << HttpGet(port_, "/metrics").body;
  EXPECT_TRUE(Contains(run->Stderr(), "is streamed to the target in pieces")) << run->Stderr();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

TEST_F(OpsTest, LagGrowsWhileTheBrokerIsDown) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  WriteConfig(testing::kEmployeesTable, MetricsConfig());
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run", "--no-snapshot"});
  const std::string t = "public.employees";
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('before')");
  ExpectInSync();
  testing::SharedKafka().Kill(1);
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('during')");
  EXPECT_TRUE(WaitUntil([&] { return Metric("datatunnel_lag_seconds", t).value_or(0) > 1.5; }, 30))
      << HttpGet(port_, "/metrics").body << run->Stderr();
  testing::SharedKafka().Restart(1);
  ExpectInSync();
  EXPECT_TRUE(WaitUntil([&] { return Metric("datatunnel_lag_seconds", t) == 0.0; }, 20))
      << HttpGet(port_, "/metrics").body;
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// A graceful stop ends in bounded time even when the broker does not answer:
// the producer gives up waiting for confirmations after 5 s (they are
// published again on restart), the consumer gives up leaving its group after
// 5 s (librdkafka's own close would wait for the coordinator forever: this
// test hung without the limit). Nothing is lost.
TEST_F(OpsTest, GracefulStopEndsWhileTheBrokerDoesNotAnswer) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run", "--no-snapshot"});
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('before')");
  ExpectInSync();
  testing::SharedKafka().Pause(1);
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('during')");
  run->Signal(SIGTERM);
  auto rc = run->Wait(30);
  testing::SharedKafka().Resume(1);
  ASSERT_TRUE(rc.has_value()) << "a graceful stop did not end within 30 s\n" << run->Stderr();
  EXPECT_EQ(*rc, 0) << run->Stderr();
  // The change nobody confirmed (if any) is published again.
  run = Start({"run", "--no-snapshot"});
  ExpectInSync();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// The producer counts its change tables when it starts (then every 10 s):
// rows wait there until the target has them, here behind a lock.
TEST_F(OpsTest, ChangeTableRowsGaugeCountsTheBacklog) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  WriteConfig(testing::kEmployeesTable, MetricsConfig());
  ASSERT_EQ(Dt({"init"}).code, 0);
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                       "generate_series(1, 25) i");
  auto lock = TargetCluster().Connect(tgt_);
  ASSERT_TRUE(lock->Exec("BEGIN; LOCK TABLE employees IN ACCESS EXCLUSIVE MODE").ok());
  auto run = Start({"run", "--no-snapshot"});
  const std::string t = "public.employees";
  EXPECT_TRUE(WaitUntil([&] { return Metric("datatunnel_change_table_rows", t) == 25.0; }, 20))
      << HttpGet(port_, "/metrics").body << run->Stderr();
  ASSERT_TRUE(lock->Exec("COMMIT").ok());
  ExpectInSync();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

TEST_F(OpsTest, MetricsOfASnapshot) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                       "generate_series(1, 5000) i");
  // Analyzed: the snapshot request estimates from the statistics instead of
  // a count(*) that would wait for the lock below.
  SourceCluster().Exec(src_, "ANALYZE employees");
  WriteConfig(testing::kEmployeesTable, MetricsConfig("[pipeline]\nsnapshot_chunk_rows = 100\n"));
  ASSERT_EQ(Dt({"init"}).code, 0);
  // Held still before its first chunk (the read waits for this lock): the
  // gauges show a running snapshot with nothing delivered yet. (Taking the
  // lock mid-way raced a snapshot that finished before the lock was held.)
  auto lock = SourceCluster().Connect(src_);
  ASSERT_TRUE(lock->Exec("BEGIN; LOCK TABLE employees IN ACCESS EXCLUSIVE MODE").ok());
  auto run = Start({"run"});
  const std::string t = "public.employees";
  ASSERT_TRUE(WaitUntil([&] { return Metric("datatunnel_snapshot_running", t) == 1.0; }, 30))
      << run->Stderr()
      << SourceCluster()
             .Scalar(src_,
                     "SELECT string_agg(query, ' | ') FROM pg_stat_activity "
                     "WHERE wait_event_type = 'Lock'")
             .value_or("");
  std::string m = HttpGet(port_, "/metrics").body;
  EXPECT_EQ(Sample(m, "datatunnel_snapshot_running", t), 1.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_snapshot_rows_estimated", t), 5000.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_snapshot_rows_total", t), 0.0) << m;
  ASSERT_TRUE(lock->Exec("COMMIT").ok());
  EXPECT_TRUE(WaitUntil([&] { return Metric("datatunnel_snapshot_running", t) == 0.0; }, 60))
      << run->Stderr();
  m = HttpGet(port_, "/metrics").body;
  EXPECT_EQ(Sample(m, "datatunnel_snapshot_rows_total", t), 5000.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_changes_captured_total", t), 0.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_dead_letters_total", t), 0.0) << m;
  ExpectInSync();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// Transaction consistency: while the initial copy runs, the target shows no
// state the source had, and /metrics says so as `status` does; once it
// ends, both say consistent, at the same tick.
TEST_F(OpsTest, TargetConsistentOnlyOnceTheSnapshotEnded) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                       "generate_series(1, 2000) i");
  // A chunk of 100 rows every 100 ms: about 2 s of copying.
  WriteConfig(testing::kEmployeesTable,
              MetricsConfig("[pipeline]\napply_consistency = \"transaction\"\n"
                            "snapshot_chunk_rows = 100\nmin_tick_interval_ms = 100\n"));
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run", "--broker", "none"});
  const std::string t = "public.employees";
  // Scrapes taken while rows of the copy are on the target and its last
  // chunks are not: each must say not consistent.
  int copying = 0;
  std::string wrong;
  const bool done = WaitUntil(
      [&] {
        const std::string m = HttpGet(port_, "/metrics").body;
        const auto rows = Sample(m, "datatunnel_snapshot_rows_total", t);
        const auto running = Sample(m, "datatunnel_snapshot_running", t);
        if (rows && *rows > 0 && *rows <= 1800) {
          ++copying;
          if (Sample(m, "datatunnel_target_consistent") != 0.0 && wrong.empty()) wrong = m;
        }
        return running == 0.0 && rows == 2000.0;
      },
      60);
  ASSERT_TRUE(done) << run->Stderr();
  EXPECT_GT(copying, 0);
  EXPECT_EQ(wrong, "") << "consistent while the copy ran";
  ExpectInSync();
  // The end marker is applied with the last chunk's tick: consistent.
  ASSERT_TRUE(WaitUntil([&] { return Contains(Status(), "\"consistent\":true"); }, 30)) << Status();
  const std::string st = Status();
  const std::string m = HttpGet(port_, "/metrics").body;
  EXPECT_EQ(Sample(m, "datatunnel_target_consistent"), 1.0) << m;
  EXPECT_EQ(Sample(m, "datatunnel_target_consistent_tick"), JsonNumber(st, "tick")) << m << st;
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// Snapshot rows are not changes: after a snapshot, lag and readiness still
// see changes that wait for a stalled target.
TEST_F(OpsTest, LagAndReadinessAfterASnapshot) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                       "generate_series(1, 500) i");
  WriteConfig(testing::kEmployeesTable, MetricsConfig("[pipeline]\nready_max_lag_seconds = 1\n"));
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  const std::string t = "public.employees";
  ExpectInSync();
  ASSERT_TRUE(WaitUntil([&] { return Metric("datatunnel_snapshot_running", t) == 0.0; }, 20));
  SourceCluster().Exec(src_, "UPDATE employees SET city = 'x' WHERE emp_id <= 3");
  ExpectInSync();
  EXPECT_TRUE(WaitUntil([&] { return HttpGet(port_, "/readyz").status == 200; }, 20));
  EXPECT_EQ(Metric("datatunnel_changes_applied_total", t), 3.0)
      << "snapshot rows are not changes (they count in datatunnel_snapshot_rows_total)";
  auto lock = TargetCluster().Connect(tgt_);
  ASSERT_TRUE(lock->Exec("BEGIN; LOCK TABLE employees IN ACCESS EXCLUSIVE MODE").ok());
  SourceCluster().Exec(src_, "UPDATE employees SET city = 'y' WHERE emp_id <= 7");
  ASSERT_TRUE(
      WaitUntil([&] { return Metric("datatunnel_changes_captured_total", t) == 10.0; }, 20));
  EXPECT_TRUE(WaitUntil([&] { return Metric("datatunnel_lag_changes", t) == 7.0; }, 10))
      << HttpGet(port_, "/metrics").body;
  EXPECT_TRUE(WaitUntil([&] { return HttpGet(port_, "/readyz").status == 503; }, 10))
      << HttpGet(port_, "/readyz").body;
  ASSERT_TRUE(lock->Exec("COMMIT").ok());
  ExpectInSync();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// ---- Ready means ready (issue 16, item 5) ------------------------------------

// A change written once every process of the tunnel answers /readyz with 200
// reaches the target at once: the producer then knows its topics, and the
// consumer has its partitions. (Readiness used to answer while the consumer
// was still joining its group, which waited for topic metadata a join at a
// time, at most one a second: the first change took 1.6 to 4 s.)
//
// The bound is a correctness bound the issue asks a test to pin, not a
// performance goal: 100 ms for the median of 5 fresh starts (new topics and
// group each time, as on a first deployment) holds on a loaded 2-core
// machine (about 10 to 40 ms each) and fails by far with the old behaviour.
class FirstChangeTest : public OpsTest {
 protected:
  // Milliseconds until the target has the row named `name`, inserted now;
  // -1 if not within 10 s.
  double Arrival(const std::string& name) {
    const auto start = std::chrono::steady_clock::now();
    EXPECT_TRUE(
        source_->Exec(fmt::format("INSERT INTO employees(first_name) VALUES ('{}')", name)).ok());
    const auto deadline = start + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = target_->Query(
          fmt::format("SELECT count(*) FROM employees WHERE first_name = '{}'", name));
      if (!r.ok()) {
        ADD_FAILURE() << r.status().message();
        return -1;
      }
      if (r->GetInt64(0, 0) == 1) {
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return -1;
  }

  // Starts the tunnel (`produce` and `consume`, or `run`) on topics and a
  // group of its own, waits for every process to be ready, inserts one row
  // and returns how many milliseconds the target took to have it, and then
  // the same for a second row (the tunnel running: the yardstick).
  std::pair<double, double> FirstChangeMillis(bool split, int attempt) {
    topic_prefix_ = testing::TestTopicPrefix();
    WriteConfig(testing::kEmployeesTable, MetricsConfig());
    std::vector<std::shared_ptr<Subprocess>> procs;
    std::vector<int> ports = {port_};
    if (split) {
      ports.push_back(FreePort());
      procs.push_back(Start({"produce"}));
      procs.push_back(
          Start({"--set", fmt::format("metrics.listen=127.0.0.1:{}", ports[1]), "consume"}));
    } else {
      procs.push_back(Start({"run"}));
    }
    for (int port : ports) {
      EXPECT_TRUE(WaitUntil([&] { return HttpGet(port, "/readyz").status == 200; }, 60))
          << "port " << port << ": " << HttpGet(port, "/readyz").body << RunningLogs();
    }
    const double first = Arrival(fmt::format("first{}", attempt));
    const double next = first < 0 ? -1 : Arrival(fmt::format("next{}", attempt));
    for (auto& p : procs) EXPECT_EQ(p->Stop(), 0) << p->Stderr();
    return {first, next};
  }

  void ExpectFirstChangeFast(bool split) {
    SourceCluster().Exec(src_, kEmployeesPkDdl);
    TargetCluster().Exec(tgt_, kEmployeesPkDdl);
    WriteConfig(testing::kEmployeesTable, MetricsConfig());
    UseKafka();
    ASSERT_EQ(Dt({"init"}).code, 0);
    source_ = SourceCluster().Connect(src_);
    target_ = TargetCluster().Connect(tgt_);
    std::vector<double> ms, next;
    for (int attempt = 0; attempt < 5; ++attempt) {
      auto [first, second] = FirstChangeMillis(split, attempt);
      ms.push_back(first);
      next.push_back(second);
      ASSERT_GE(first, 0) << "the change did not arrive within 10 s";
      ASSERT_GE(second, 0) << "the second change did not arrive within 10 s";
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    std::string all;
    for (size_t i = 0; i < ms.size(); ++i) all += fmt::format(" {:.0f} ({:.0f})", ms[i], next[i]);
    // The first change must not wait for anything a running tunnel does not
    // (metadata, a group join, a fetch wait: about a second, every time,
    // before issue 16). 100 ms on a quiet machine; on a loaded one every
    // change is slower, so the bound is also three times the second change's
    // median; and the fastest of the five is taken, since such a wait is in
    // every attempt while the load's spikes are not.
    const double bound = std::max(100 * testing::TimeoutMultiplier(), 3 * median(next));
    EXPECT_LT(*std::min_element(ms.begin(), ms.end()), bound)
        << "5 first changes after /readyz, in ms (the second change's):" << all;
    std::cerr << "first change after /readyz, ms (the second change's):" << all << "\n";
  }

  std::unique_ptr<pg::Connection> source_, target_;
};

TEST_F(FirstChangeTest, RunCarriesTheFirstChangeAfterReadyWithin100ms) {
  ExpectFirstChangeFast(/*split=*/false);
}

TEST_F(FirstChangeTest, ProduceAndConsumeCarryTheFirstChangeAfterReadyWithin100ms) {
  ExpectFirstChangeFast(/*split=*/true);
}

// ---- status --json ---------------------------------------------------------

TEST_F(OpsTest, StatusJsonCountsWhatTheTestDid) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                       "generate_series(1, 100) i");
  WriteConfig();
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto expect = [&](const std::string& json, std::map<std::string, double> want) {
    for (const auto& [field, value] : want) {
      EXPECT_EQ(JsonNumber(json, field), value) << field << " in " << json;
    }
  };
  std::string s = Status();
  EXPECT_TRUE(Contains(s, "\"source\":\"public.employees\",\"target\":\"public.employees\"")) << s;
  expect(s, {{"captured", 0},
             {"published", 0},
             {"applied", 0},
             {"pending", 0},
             {"lag_changes", 0},
             {"lag_seconds", 0},
             {"dead_letters", 0}});
  EXPECT_TRUE(Contains(s, "\"snapshot\":{\"state\":\"none\",\"rows\":0,")) << s;

  // 10 inserts, 5 updates, 3 deletes, 2 key changes, with no tunnel running.
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'm' || i FROM "
                       "generate_series(1, 10) i;"
                       "UPDATE employees SET city = 'Lyon' WHERE emp_id <= 5;"
                       "DELETE FROM employees WHERE emp_id BETWEEN 6 AND 8;"
                       "UPDATE employees SET emp_id = emp_id + 1000 WHERE emp_id IN (9, 10)");
  s = Status();
  expect(
      s,
      {{"captured", 20}, {"published", 0}, {"applied", 0}, {"pending", 20}, {"lag_changes", 20}});
  EXPECT_GT(JsonNumber(s, "lag_seconds").value_or(0), 0) << s;

  // Published, not yet applied.
  auto produce = Start({"produce"});
  EXPECT_TRUE(WaitUntil(
      [&] {
        s = Status();
        return JsonNumber(s, "published") == 20.0 && JsonNumber(s, "pending") == 0.0;
      },
      30))
      << s << produce->Stderr();
  expect(s, {{"captured", 20}, {"applied", 0}, {"lag_changes", 20}});

  // Applied.
  auto consume = Start({"consume"});
  EXPECT_TRUE(WaitUntil(
      [&] {
        s = Status();
        return JsonNumber(s, "lag_changes") == 0.0;
      },
      30))
      << s << consume->Stderr();
  expect(s, {{"captured", 20},
             {"published", 20},
             {"applied", 20},
             {"pending", 0},
             {"lag_seconds", 0},
             {"dead_letters", 0}});
  EXPECT_TRUE(std::regex_search(
      s, std::regex("\"last_applied_at\":\"20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z\"")))
      << s;

  // The snapshot, while producer and consumer run: the rows the source has
  // (the target holds rows, so only once told it may empty it).
  SourceCluster().Exec(src_, "ANALYZE employees");
  auto r = Dt({"snapshot", "--truncate-target"}, 120);
  ASSERT_EQ(r.code, 0) << r.err;
  ExpectInSync();
  s = Status();
  EXPECT_TRUE(Contains(s, "\"snapshot\":{\"state\":\"done\",\"rows\":107,\"total\":107}")) << s;
  // `applied` counts rows written to the target: the changes and the snapshot's rows.
  expect(s, {{"captured", 20}, {"published", 20}, {"applied", 127}, {"lag_changes", 0}});
  auto text = Dt({"status"});
  EXPECT_EQ(text.code, 0);
  EXPECT_TRUE(Contains(text.out, "done (107 rows)")) << text.out;
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
}

// ---- Passwords never logged -------------------------------------------------

TEST_F(OpsTest, NoLogLineShowsThePassword) {
  UseKafka();
  const std::string role = testing::UniqueName("dt_ops");
  const std::string password = "Pw4-" + testing::UniqueName("never-shown");
  SourceCluster().CreatePasswordRole(role, password);
  TargetCluster().CreatePasswordRole(role, password);
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'n' || i FROM "
                       "generate_series(1, 300) i");
  const std::string password_file = dir_ + "/target.password";
  std::ofstream(password_file) << password << "\n";
  port_ = FreePort();
  // The source password in the DSN, the target's in password_file.
  std::ofstream(config_) << fmt::format(
      R"([source]
dsn = "postgresql://{0}:{1}@127.0.0.1:{2}/{3}"
[target]
dsn = "postgresql://{0}@127.0.0.1:{4}/{5}"
password_file = "{6}"
[kafka]
brokers = "{7}"
topic_prefix = "{10}"
group_id = "{10}"
[kafka.consumer_properties]
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "300"
[metrics]
listen = "127.0.0.1:{8}"
{9})",
      role, password, SourceCluster().port(), src_, TargetCluster().port(), tgt_, password_file,
      bootstrap_, port_, testing::kEmployeesTable, topic_prefix_);

  std::string all;  // everything every command printed
  auto keep = [&](const std::string& what, const testing::RunResult& r, int code) {
    EXPECT_EQ(r.code, code) << what << "\n" << r.out << r.err;
    all += r.out + r.err;
  };
  int round = 0;
  for (const std::string format : {"text", "json"}) {
    const std::vector<std::string> log = {"--log-format", format, "--log-level", "trace"};
    auto cmd = [&](std::vector<std::string> rest) {
      std::vector<std::string> a = log;
      a.insert(a.end(), rest.begin(), rest.end());
      return a;
    };
    keep("init", Dt(cmd({"init"})), 0);
    auto run = Start(cmd({"run"}));
    SourceCluster().Exec(
        src_, fmt::format("INSERT INTO employees(first_name) VALUES ('r{}');"
                          "UPDATE employees SET city = 'c{}' WHERE emp_id % 10 = {};"
                          "DELETE FROM employees WHERE emp_id = {};"
                          "UPDATE employees SET emp_id = emp_id + 5000 WHERE emp_id = {}",
                          round, round, round, 50 + round, 60 + round));
    keep("verify --wait", Dt(cmd({"verify", "--wait", "60"}), 120), 0);
    const HttpReply metrics = HttpGet(port_, "/metrics");
    EXPECT_EQ(metrics.status, 200);
    all += metrics.body;
    EXPECT_EQ(run->Stop(), 0) << run->Stderr();
    all += run->Stdout() + run->Stderr();
    keep("status", Dt(cmd({"status"})), 0);
    keep("status --json", Dt(cmd({"status", "--json"})), 0);
    keep("verify", Dt(cmd({"verify"})), 0);
    keep("snapshot --restart", Dt(cmd({"snapshot", "--restart", "--truncate-target"}), 120), 0);
    // Failures name the database, never the password.
    keep(
        "unreachable target",
        Dt(cmd({"--target-dsn",
                fmt::format("postgresql://{}:{}@127.0.0.1:1/{}", role, password, tgt_), "status"})),
        3);
    const std::string wrong = dir_ + "/wrong.password";
    std::ofstream(wrong) << "Wrong-" << password << "\n";
    auto bad = Dt(cmd({"--set", "target.password_file=" + wrong, "status"}));
    keep("wrong password", bad, 2);
    EXPECT_TRUE(Contains(bad.err, "password authentication failed")) << bad.err;
    ++round;
  }
  EXPECT_GT(all.size(), 2000u) << "the commands printed almost nothing";
  EXPECT_TRUE(Contains(all, role)) << "messages name the user";
  EXPECT_FALSE(Contains(all, password)) << "the password was printed:\n" << all;
  EXPECT_FALSE(Contains(all, password.substr(4))) << all;
}

// --log-format json: every line on stderr is one JSON object, for log pipelines.
TEST_F(OpsTest, JsonLogFormatPrintsOnlyJsonLines) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('a'), ('b')");
  WriteConfig();
  const std::vector<std::string> json = {"--log-format", "json"};
  std::string err;
  for (const char* c : {"init", "snapshot", "status", "verify"}) {
    std::vector<std::string> a = json;
    a.push_back(c);
    auto r = Dt(a);
    EXPECT_EQ(r.code, 0) << c << ": " << r.err;
    err += r.err;
  }
  auto run = Start({"--log-format", "json", "run"});
  SourceCluster().Exec(src_, "INSERT INTO employees(first_name) VALUES ('c')");
  ExpectInSync();
  EXPECT_EQ(run->Stop(), 0);
  err += run->Stderr();
  // Usage errors too, in both spellings of the option.
  const std::vector<std::pair<std::vector<std::string>, std::string>> usage = {
      {{"--log-format", "json", "status", "--no-such-flag"}, "--no-such-flag"},
      {{"--log-format=json", "no-such-command"}, "unknown subcommand"}};
  for (const auto& [a, says] : usage) {
    auto r = Dt(a);
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_TRUE(Contains(r.err, "\"level\":\"error\"")) << r.err;
    EXPECT_TRUE(Contains(r.err, says)) << r.err;
    EXPECT_EQ(Lines(r.err).size(), 1u) << r.err;
    err += r.err;
  }
  for (const auto& line : Lines(err)) {
    EXPECT_TRUE(line.size() > 1 && line.front() == '{' && line.back() == '}') << line;
  }
}

// ---- Dead letters -------------------------------------------------------------

// Malformed messages a test can put on the topic, and what the error says.
const std::vector<std::pair<std::string, std::string>> kBadMessages = {
    {"this is not JSON", "not JSON"},
    {"[1,2,3]", "not a JSON object"},
    {R"({"hello":"world"})", "no \"op\""},
    {R"({"op":"c","after":{"id":1000,"body":"%%% not base64 %%%","note":"x"},)"
     R"("source":{"pos":[1,1,1,0]}})",
     "is not base64"},
    {R"({"op":"c","after":{"id":1001,"body":12345,"note":"x"},"source":{"pos":[1,1,1,0]}})",
     "must be a base64 string"},
    {R"({"op":"x","after":{"id":1002},"source":{"pos":[1,1,1,0]}})", "unknown op \"x\""},
    {R"({"op":"c","after":{"note":"no key"},"source":{"pos":[1,1,1,0]}})",
     "lacks key column \"id\""},
    // Snapshot chunks (issue 16 item 8): a newer format, a header without rows.
    {R"({"chunk":9,"op":"r","rows":1,"columns":["id"],"source":{"pos":[1,1,4611686018427387904,0]}})",
     "format version 9"},
    {R"({"chunk":1,"op":"r","rows":1,"columns":["id","body","note"],)"
     R"("source":{"pos":[1,1,4611686018427387904,0]}})",
     "without rows"},
};

TEST_F(OpsTest, MalformedMessagesGoToTheDeadLetterTopic) {
  SourceCluster().Exec(src_, kDocsDdl);
  TargetCluster().Exec(tgt_, kDocsDdl);
  WriteConfig(kDocsTable, MetricsConfig());
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  SourceCluster().Exec(src_,
                       "INSERT INTO docs SELECT i, decode(md5(i::text), 'hex'), 'before' FROM "
                       "generate_series(1, 20) i");
  ExpectInSync();

  std::vector<std::string> bad;
  for (const auto& [message, error] : kBadMessages) bad.push_back(message);
  Publish(Topic("public.docs"), bad);
  // Good changes keep flowing around them.
  SourceCluster().Exec(src_,
                       "INSERT INTO docs SELECT i, '\\x00ff'::bytea, 'after' FROM "
                       "generate_series(21, 40) i;"
                       "UPDATE docs SET note = 'changed' WHERE id <= 5;"
                       "DELETE FROM docs WHERE id BETWEEN 6 AND 8");
  const double n = static_cast<double>(kBadMessages.size());
  EXPECT_TRUE(
      WaitUntil([&] { return Metric("datatunnel_dead_letters_total", "public.docs") == n; }, 30))
      << HttpGet(port_, "/metrics").body << run->Stderr();
  ExpectInSync();
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM docs WHERE id >= 1000"), 0);
  EXPECT_EQ(JsonNumber(Status(), "dead_letters"), n);

  // Each one is on <topic>.dlq, as it was, with a header saying why.
  auto dlq = RunCommand(
      {"/usr/bin/kcat", "-C", "-b", bootstrap_, "-t", Topic("public.docs") + ".dlq", "-o",
       "beginning", "-e", "-q", "-c", std::to_string(kBadMessages.size()), "-f", "%h %s\n"},
      {}, 30);
  ASSERT_EQ(dlq.code, 0) << dlq.err;
  const auto lines = Lines(dlq.out);
  EXPECT_EQ(lines.size(), kBadMessages.size()) << dlq.out;
  for (const auto& [message, error] : kBadMessages) {
    bool found = false;
    for (const auto& line : lines) {
      if (line.size() < message.size() ||
          line.compare(line.size() - message.size(), message.size(), message) != 0) {
        continue;
      }
      found = true;
      EXPECT_TRUE(Contains(line, "datatunnel.error=")) << line;
      EXPECT_TRUE(Contains(line, error)) << line;
      EXPECT_TRUE(Contains(line, "datatunnel.topic=" + Topic("public.docs"))) << line;
      EXPECT_TRUE(Contains(line, "datatunnel.offset=")) << line;
    }
    EXPECT_TRUE(found) << message << " is not on the dead-letter topic:\n" << dlq.out;
  }
  EXPECT_TRUE(Contains(run->Stderr(), "sent to " + Topic("public.docs") + ".dlq")) << run->Stderr();
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// A consumer that never applied anything starts at offset 0: if retention
// already removed it, it stops and says so instead of silently starting at
// the oldest message left.
TEST_F(OpsTest, ConsumerStopsWhenRetentionRemovedChangesItNeverApplied) {
  SourceCluster().Exec(src_, kDocsDdl);
  TargetCluster().Exec(tgt_, kDocsDdl);
  WriteConfig(kDocsTable);
  UseKafka();
  // Segments of 1 MiB (the least Kafka allows), of which retention keeps
  // about one: the broker deletes the oldest segments within a second or
  // so of rolling them (kafka.sh checks retention every second).
  testing::SharedKafka().CreateTopic(Topic("public.docs"), 1,
                                     {{"segment.bytes", "1048576"},
                                      {"retention.bytes", "1048576"},
                                      {"file.delete.delay.ms", "0"}});
  ASSERT_EQ(Dt({"init"}).code, 0);
  const std::string big(32 * 1024, 'x');
  Publish(Topic("public.docs"), std::vector<std::string>(128, big), 0);  // 4 MB
  ASSERT_TRUE(WaitUntil(
      [&] { return testing::SharedKafka().LowWatermark(Topic("public.docs"), 0) > 0; }, 60))
      << "retention removed nothing from the topic";
  auto consume = Start({"consume"});
  auto rc = consume->Wait(60);
  ASSERT_TRUE(rc.has_value()) << "the consumer did not stop\n" << consume->Stderr();
  EXPECT_EQ(*rc, 3) << consume->Stderr();
  EXPECT_TRUE(Contains(consume->Stderr(), "offset 0 is no longer on the broker"))
      << consume->Stderr();
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM docs"), 0);
}

// A stored position past the end of the partition is not retention: the
// topic was deleted and created again (or the broker lost its data), and the
// consumer says that.
TEST_F(OpsTest, ConsumerStopsWhenTheTopicWasCreatedAgain) {
  SourceCluster().Exec(src_, kDocsDdl);
  TargetCluster().Exec(tgt_, kDocsDdl);
  WriteConfig(kDocsTable);
  UseKafka();
  testing::SharedKafka().CreateTopic(Topic("public.docs"), 1);
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto produce = Start({"produce"});
  auto consume = Start({"consume"});
  SourceCluster().Exec(src_, "INSERT INTO docs SELECT i, NULL, 'n' FROM generate_series(1, 10) i");
  ExpectInSync();
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
  ASSERT_TRUE(testing::SharedKafka().DeleteTopic(Topic("public.docs")));
  // Created again, empty, once the brokers have forgotten the old one.
  ASSERT_TRUE(WaitUntil(
      [&] { return testing::SharedKafka().TryCreateTopic(Topic("public.docs"), 1).empty(); }, 60));
  consume = Start({"consume"});
  auto rc = consume->Wait(60);
  ASSERT_TRUE(rc.has_value()) << "the consumer did not stop\n" << consume->Stderr();
  EXPECT_EQ(*rc, 3) << consume->Stderr();
  EXPECT_TRUE(Contains(consume->Stderr(), "is past the end of the partition")) << consume->Stderr();
  EXPECT_FALSE(Contains(consume->Stderr(), "removed by retention")) << consume->Stderr();
}

TEST_F(OpsTest, StopOnBadMessageExitsWithOneClearLine) {
  SourceCluster().Exec(src_, kDocsDdl);
  TargetCluster().Exec(tgt_, kDocsDdl);
  WriteConfig(kDocsTable, "[pipeline]\non_bad_message = \"stop\"\n");
  UseKafka();
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto produce = Start({"produce"});
  auto consume = Start({"consume"});
  SourceCluster().Exec(src_, "INSERT INTO docs SELECT i, NULL, 'n' FROM generate_series(1, 10) i");
  ExpectInSync();
  Publish(Topic("public.docs"), {"this is not JSON"}, 0);
  // The consumer stops at it, and again after a restart: it never skips it.
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto rc = consume->Wait(30);
    ASSERT_TRUE(rc.has_value()) << "the consumer did not stop\n" << consume->Stderr();
    EXPECT_EQ(*rc, 3) << consume->Stderr();
    const std::string err = consume->Stderr();
    std::vector<std::string> errors;
    for (const auto& line : Lines(err)) {
      if (Contains(line, "error") || Contains(line, "bad message")) errors.push_back(line);
    }
    ASSERT_EQ(errors.size(), 1u) << err;
    EXPECT_EQ(errors[0].rfind(
                  "datatunnel: error: bad message at " + Topic("public.docs") + " [0] offset ", 0),
              0u)
        << errors[0];
    EXPECT_TRUE(Contains(errors[0], ": not JSON")) << errors[0];
    EXPECT_TRUE(Contains(errors[0], "on_bad_message")) << errors[0];
    if (attempt == 0) consume = Start({"consume"});
  }
  EXPECT_EQ(JsonNumber(Status(), "dead_letters"), 0.0);
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
}

}  // namespace
}  // namespace datatunnel
