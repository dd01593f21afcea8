// The fault test: a mixed workload from concurrent writers while processes
// are killed with SIGKILL, both databases restart and the broker fails; then
// the target must equal the source exactly.
//
//   build/tests/chaos_test            short form (part of `make test`)
//   build/tests/chaos_test --long     long form (`make chaos`)
//   DATATUNNEL_CHAOS_SEED=n           replay a run's random choices
//
// Phase 1: two producers (one publishes, one stands by) and three consumers
// in one group, through the dev broker; faults: kill -9 of any of them,
// restarts of db1 and db2, broker down/up, injected Fetch errors.
// Phase 2: the single-process `run` through the broker, killed repeatedly
// (it also snapshots, since the table was never snapshotted).
// Finally every fault stops and `verify` must report no difference.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "core/clock.h"
#include "support/pg_cluster.h"
#include "support/subprocess.h"
#include "support/test_util.h"

namespace datatunnel {
namespace {

using testing::BinaryPath;
using testing::SourceCluster;
using testing::Subprocess;
using testing::TargetCluster;
using testing::WaitUntil;

bool g_long = false;

struct Counters {
  std::atomic<int64_t> changes{0};   // statements that changed a row and committed
  std::atomic<int64_t> failures{0};  // statements lost to a fault (rolled back)
  std::atomic<int64_t> kills{0};
  std::atomic<int64_t> db_restarts{0};
  std::atomic<int64_t> broker_faults{0};
  std::atomic<int64_t> respawns{0};  // processes that found a database down at start-up
};

// Writes a mixed workload (inserts, updates, deletes, key changes, several
// statements per transaction at times) until `target` changes committed, at
// about `rate` changes per second, so faults land throughout.
void Writer(int id, int64_t target, int rate, const std::string& db, Counters* c,
            std::atomic<bool>* stop) {
  std::mt19937 rng(static_cast<unsigned>(id * 7919 + 1));
  std::unique_ptr<pg::Connection> conn;
  const int64_t start = MonotonicMicros();
  int64_t mine = 0;
  while (!*stop && c->changes.load() < target) {
    const int64_t due = start + mine * 1'000'000 / rate;
    if (MonotonicMicros() < due)
      std::this_thread::sleep_for(std::chrono::microseconds(due - MonotonicMicros()));
    if (!conn || conn->IsBroken()) {
      pg::ConnectOptions o;
      o.dsn = SourceCluster().Dsn(db);
      o.role = "source";
      auto r = pg::Connection::Open(o);
      if (!r.ok()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      conn = std::move(*r);
    }
    const int statements = rng() % 4 == 0 ? 3 : 1;
    std::string sql = "BEGIN;";
    for (int s = 0; s < statements; ++s) {
      const int pick = static_cast<int>(rng() % 100);
      const int64_t key =
          1 + static_cast<int64_t>(rng() % std::max<int64_t>(100, c->changes / 2 + 100));
      if (pick < 40) {
        sql += fmt::format(
            "INSERT INTO employees(first_name, last_name, dob, city) VALUES ('w{}', 'l{}''x', "
            "'1990-01-01'::date + {}, {});",
            id, rng() % 1000, rng() % 10000, rng() % 5 == 0 ? "NULL" : "'Zürich'");
      } else if (pick < 75) {
        sql += fmt::format(
            "UPDATE employees SET city = 'c{}', last_name = last_name || 'u' WHERE emp_id = {};",
            rng() % 100, key);
      } else if (pick < 90) {
        sql += fmt::format("DELETE FROM employees WHERE emp_id = {};", key);
      } else {
        sql += fmt::format(
            "UPDATE employees SET emp_id = nextval('employees_emp_id_seq') WHERE emp_id = {};",
            key);
      }
    }
    sql += "COMMIT";
    Status st = conn->Exec(sql);
    if (st.ok()) {
      c->changes += statements;
      mine += statements;
    } else {
      ++c->failures;
      conn->RollbackQuietly();
    }
  }
}

class Chaos {
 public:
  Chaos(std::string dir, std::string config) : dir_(std::move(dir)), config_(std::move(config)) {}

  std::unique_ptr<Subprocess> Start(const std::string& cmd) {
    return std::make_unique<Subprocess>(std::vector<std::string>{
        BinaryPath(), "-c", config_, "--log-level", "warn", cmd, "--status-interval", "0"});
  }

 private:
  std::string dir_, config_;
};

TEST(Chaos, NothingLostSkippedOrDuplicated) {
  const unsigned seed = std::getenv("DATATUNNEL_CHAOS_SEED")
                            ? static_cast<unsigned>(std::atoi(std::getenv("DATATUNNEL_CHAOS_SEED")))
                            : static_cast<unsigned>(NowMicros());
  std::mt19937 rng(seed);
  const int64_t changes_per_phase = g_long ? 200000 : 35000;
  const int writers = g_long ? 6 : 4;
  const int rate_per_writer = (g_long ? 3000 : 1500) / writers;
  fmt::print("chaos: {} form, seed {} (DATATUNNEL_CHAOS_SEED={} replays it)\n",
             g_long ? "long" : "short", seed, seed);
  std::fflush(stdout);  // kept even if the test dies

  const std::string src = SourceCluster().CreateDatabase("chaos_src");
  const std::string tgt = TargetCluster().CreateDatabase("chaos_tgt");
  const char* ddl =
      "CREATE TABLE employees(emp_id SERIAL PRIMARY KEY, first_name VARCHAR(100), "
      "last_name VARCHAR(100), dob DATE, city VARCHAR(100))";
  SourceCluster().Exec(src, ddl);
  TargetCluster().Exec(tgt, ddl);
  const std::string dir =
      std::filesystem::temp_directory_path() / testing::UniqueName("datatunnel-chaos");
  std::filesystem::create_directories(dir);
  const std::string bootstrap_file = dir + "/bootstrap";
  Subprocess broker(
      {BinaryPath(), "dev-broker", "--partitions", "8", "--bootstrap-file", bootstrap_file});
  ASSERT_TRUE(WaitUntil([&] { return std::filesystem::exists(bootstrap_file); }, 20));
  std::string bootstrap;
  std::getline(std::ifstream(bootstrap_file), bootstrap);
  const std::string config = dir + "/datatunnel.toml";
  std::ofstream(config) << fmt::format(R"(
[source]
dsn = "{}"
[target]
dsn = "{}"
[kafka]
brokers = "{}"
[kafka.consumer_properties]
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "300"
[[tables]]
source = "public.employees"
)",
                                       SourceCluster().Dsn(src), TargetCluster().Dsn(tgt),
                                       bootstrap);
  auto init = testing::RunCommand({BinaryPath(), "-c", config, "init"});
  ASSERT_EQ(init.code, 0) << init.err;

  Chaos chaos(dir, config);
  Counters counters;
  std::atomic<bool> stop_writers{false};
  auto run_writers = [&](int64_t until) {
    std::vector<std::thread> ts;
    for (int w = 0; w < writers; ++w) {
      ts.emplace_back(Writer, w, until, rate_per_writer, src, &counters, &stop_writers);
    }
    return ts;
  };
  auto pause = [&](int lo_ms, int hi_ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(
        lo_ms + static_cast<int>(rng() % static_cast<unsigned>(hi_ms - lo_ms))));
  };

  // ---- Phase 1: separate producers and consumers -------------------------
  std::vector<std::unique_ptr<Subprocess>> producers, consumers;
  for (int i = 0; i < 2; ++i) producers.push_back(chaos.Start("produce"));
  for (int i = 0; i < 3; ++i) consumers.push_back(chaos.Start("consume"));
  auto threads = run_writers(changes_per_phase);
  auto writing = [&](int64_t until) { return counters.changes.load() < until; };
  // A process started just before a database restart can find it down on its
  // first connection: it exits with one line, as for a wrong DSN, and a
  // supervisor (systemd, Kubernetes) starts it again. So does this test.
  auto respawn = [&] {
    for (auto* group : {&producers, &consumers}) {
      for (auto& p : *group) {
        if (p->Running() || p->Stderr().find("cannot connect to the") == std::string::npos)
          continue;
        ++counters.respawns;
        p = chaos.Start(group == &producers ? "produce" : "consume");
      }
    }
  };
  int guard = 0;
  bool broker_gone = false;
  // The dev broker is infrastructure here, not under test: if it exits,
  // say so with its stderr at once instead of waiting minutes for a target
  // that cannot converge (CI saw it exit mid-run once, unexplained).
  auto broker_alive = [&] {
    if (broker_gone) return false;
    if (broker.Running()) return true;
    broker_gone = true;
    ADD_FAILURE() << "the dev broker exited (status " << broker.Wait(1).value_or(-1) << "), seed "
                  << seed << "; its stderr:\n"
                  << broker.Stderr();
    return false;
  };
  while (writing(changes_per_phase) && ++guard < 2000 && broker_alive()) {
    pause(200, 900);
    respawn();
    switch (rng() % 7) {
      case 0:
      case 1: {  // kill -9 a producer (the active one half the time), restart it
        auto& p = producers[rng() % producers.size()];
        p->Signal(SIGKILL);
        p->Wait(10);
        ++counters.kills;
        pause(100, 800);
        p = chaos.Start("produce");
        break;
      }
      case 2:
      case 3: {  // kill -9 a consumer, restart it
        auto& c = consumers[rng() % consumers.size()];
        c->Signal(SIGKILL);
        c->Wait(10);
        ++counters.kills;
        pause(100, 800);
        c = chaos.Start("consume");
        break;
      }
      case 4:  // restart the target
        TargetCluster().Restart();
        ++counters.db_restarts;
        break;
      case 5:  // restart the source (writers and producers reconnect)
        SourceCluster().Restart();
        ++counters.db_restarts;
        break;
      case 6: {  // the broker fails: down for a while, or requests erroring
        bool sent = true;
        if (rng() % 2) {
          sent = broker.Write("down 1\n");
          pause(500, 2500);
          sent = broker.Write("up 1\n") && sent;
        } else {
          // Fetch (API 1) answering 6 NOT_LEADER_FOR_PARTITION or 7
          // REQUEST_TIMED_OUT. Not Produce: with librdkafka 2.0.2 (Debian 12)
          // and its mock broker, injected Produce errors make messages go
          // missing from the topic that the producer was told were delivered
          // (only Produce errors injected: 12 of 10,823 rows differed, the
          // changes absent from the topic; Fetch errors alone, or broker
          // down/up alone: no difference). Neither our producer nor this test
          // can see it; see README "Kafka notes".
          sent = broker.Write(fmt::format("errors 1 {} {}\n", 3 + rng() % 10, 6 + rng() % 2));
        }
        if (!sent) broker_alive();
        ++counters.broker_faults;
        break;
      }
    }
  }
  for (auto& t : threads) t.join();
  threads.clear();
  if (!broker_alive()) return;
  respawn();
  fmt::print(
      "chaos: phase 1 wrote {} changes ({} kills, {} db restarts, {} broker faults so far; {} "
      "process(es) restarted after finding a database down at start-up)\n",
      counters.changes.load(), counters.kills.load(), counters.db_restarts.load(),
      counters.broker_faults.load(), counters.respawns.load());
  // Phase 1 must converge on its own before phase 2 changes the topology.
  auto verify1 = testing::RunCommand({BinaryPath(), "-c", config, "verify", "--wait",
                                      std::to_string(180 * testing::TimeoutMultiplier())},
                                     {}, 400 * testing::TimeoutMultiplier());
  if (verify1.code != 0) {
    std::string logs;
    for (auto& p : producers) logs += "\n--- a producer logged:\n" + p->Stderr();
    for (auto& c : consumers) logs += "\n--- a consumer logged:\n" + c->Stderr();
    ADD_FAILURE() << verify1.out << verify1.err << logs;
  }
  for (auto& p : producers) EXPECT_EQ(p->Stop(), 0) << p->Stderr();
  for (auto& c : consumers) EXPECT_EQ(c->Stop(), 0) << c->Stderr();

  // ---- Phase 2: the single-process `run`, killed again and again ---------
  const int64_t phase2_end = counters.changes.load() + changes_per_phase / 2;
  auto run = chaos.Start("run");
  threads = run_writers(phase2_end);
  guard = 0;
  while (writing(phase2_end) && ++guard < 2000 && broker_alive()) {
    pause(300, 2000);
    run->Signal(SIGKILL);
    run->Wait(10);
    ++counters.kills;
    pause(100, 600);
    run = chaos.Start("run");
  }
  for (auto& t : threads) t.join();
  if (!broker_alive()) return;

  // ---- Everything healthy again: the target must equal the source --------
  auto verify = testing::RunCommand({BinaryPath(), "-c", config, "verify", "--json", "--wait",
                                     std::to_string(240 * testing::TimeoutMultiplier())},
                                    {}, 500 * testing::TimeoutMultiplier());
  EXPECT_EQ(verify.code, 0) << verify.out << verify.err;
  // The change table drains once everything is delivered.
  EXPECT_TRUE(WaitUntil(
      [&] { return SourceCluster().Count(src, "SELECT count(*) FROM employees_cdc") == 0; }, 30))
      << SourceCluster().Count(src, "SELECT count(*) FROM employees_cdc") << " changes left";
  const int64_t rows = SourceCluster().Count(src, "SELECT count(*) FROM employees");
  const int64_t differences = verify.code == 0 ? 0 : -1;
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
  fmt::print(
      "chaos summary: faults injected {} (kill -9: {}, database restarts: {}, broker faults: {}); "
      "changes written {} ({} statements lost to faults and not committed); rows verified {}; "
      "differences found {}\n",
      counters.kills + counters.db_restarts + counters.broker_faults, counters.kills.load(),
      counters.db_restarts.load(), counters.broker_faults.load(), counters.changes.load(),
      counters.failures.load(), rows,
      differences < 0 ? std::string("see verify output") : std::to_string(differences));
  broker.Stop();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace datatunnel

int main(int argc, char** argv) {
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::string(argv[i]) == "--long") {
      datatunnel::g_long = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(args.size());
  ::testing::InitGoogleTest(&n, args.data());
  return RUN_ALL_TESTS();
}
