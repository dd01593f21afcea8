// The fault test: a mixed workload from concurrent writers while the tunnel's
// processes are killed with SIGKILL, both databases restart and the nodes of
// a real 3-node Apache Kafka cluster fail; then the target must equal the
// source exactly: nothing lost, nothing extra.
//
//   build/tests/chaos_test            short form (part of `make test`): about
//                                     52,000 changes, 4-6 minutes on 2 cores
//   build/tests/chaos_test --long     long form (`make chaos`): over 200,000
//   DATATUNNEL_CHAOS_SEED=n           replay a run's random choices
//
// Kafka: three combined broker+controller nodes started by scripts/kafka.sh
// (tests/support/kafka_cluster.h); the tunnel's topic is created with 8
// partitions, replication factor 3 and min.insync.replicas=2, and the
// producer is idempotent with acks=all. Fault kinds, each drawn from the seed:
//   - tunnel process kill: kill -9 of a producer, a consumer or `run`, which
//     is started again;
//   - database restart: db1 or db2;
//   - leader kill: kill -9 of the node leading a partition in use, started
//     again after a moment;
//   - two-node outage: kill -9 of two nodes. acks=all with
//     min.insync.replicas=2 cannot be met (and the controller quorum is
//     gone), so nothing may be published: the test checks that the source's
//     recorded progress stays put while writers go on, then restarts both
//     nodes and waits until publishing resumes;
//   - pause: SIGSTOP of a node for longer than the consumer session (3 s)
//     and the broker session (6 s) timeouts, then SIGCONT;
//   - cluster restart: every node killed at once, then all started again.
// Before each Kafka fault the test waits until the cluster is whole again
// (every node up and every partition fully in sync), so the kinds do not
// blur into each other. A tunnel process that exits on its own is started
// again, as a supervisor would, when it exited for a reason a supervisor is
// meant to handle (a database or the brokers unreachable at start-up);
// any other exit fails the test.
//
// Phase 1: two producers (one publishes, one stands by) and three consumers
// in one group. Phase 2: the single-process `run`, killed again and again (it
// also snapshots, since the table was never snapshotted). Each phase injects
// a planned set of faults in an order drawn from the seed, then more process
// kills (phase 1: also leader kills and database restarts) until its changes
// are written. Short form, phase 1: the cluster restart, a two-node outage,
// a pause, 3 leader kills, 6 process kills, 2 database restarts; phase 2: a
// two-node outage, a pause, 2 leader kills, 6 kills of `run`. The long form
// injects three times as many, and restarts the cluster in both phases.
// Writers write 400 changes/s (long: 600) until the phase's changes are
// written (35,000 and 15,000; long: 140,000 and 60,000), then 20/s until its
// planned faults are done. Phase 1 must converge before phase 2 starts.
// Finally every fault stops, `verify` must report no difference, and the
// test compares both tables row by row itself (lost, extra and differing
// rows) and prints a summary line with the counts per fault kind.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "core/clock.h"
#include "support/kafka_cluster.h"
#include "support/pg_cluster.h"
#include "support/subprocess.h"
#include "support/test_util.h"

namespace datatunnel {
namespace {

using testing::BinaryPath;
using testing::KafkaCluster;
using testing::SourceCluster;
using testing::Subprocess;
using testing::TargetCluster;
using testing::WaitUntil;

bool g_long = false;

enum class Fault { kProcessKill, kDbRestart, kLeaderKill, kTwoNodeOutage, kPause, kClusterRestart };
constexpr int kFaultKinds = 6;
constexpr const char* kFaultNames[kFaultKinds] = {
    "tunnel process kills", "database restarts", "leader kills", "two-node outages", "pauses",
    "cluster restarts"};

constexpr int kPartitions = 8;

struct Counters {
  std::atomic<int64_t> changes{0};   // statements that changed a row and committed
  std::atomic<int64_t> failures{0};  // statements lost to a fault (rolled back)
  int64_t faults[kFaultKinds] = {};
  int64_t stalls_seen = 0;               // two-node outages during which nothing was published
  int64_t respawns = 0;                  // processes started again after exiting on their own
  std::map<std::string, int64_t> exits;  // why they exited
};

// Writes a mixed workload (inserts, updates, deletes, key changes, several
// statements per transaction at times) until `stop`, so faults land
// throughout: about `rate` changes per second until `changes` reaches `until`,
// then `trickle` a second.
void Writer(int id, int rate, int trickle, const std::atomic<int64_t>* until, const std::string& db,
            Counters* c, const std::atomic<bool>* stop) {
  std::mt19937 rng(static_cast<unsigned>(id * 7919 + 1));
  std::unique_ptr<pg::Connection> conn;
  int64_t due = MonotonicMicros();
  while (!*stop) {
    // Behind schedule (a fault held the writes): catch up at most a second.
    due = std::max(due, MonotonicMicros() - 1'000'000);
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
      due += statements * int64_t{1'000'000} / (c->changes < *until ? rate : trickle);
    } else {
      ++c->failures;
      conn->RollbackQuietly();
    }
  }
}

// Every row of employees as (emp_id, md5 of the row's text), by emp_id.
std::vector<std::pair<int64_t, std::string>> Rows(testing::PgCluster& cluster,
                                                  const std::string& db) {
  std::vector<std::pair<int64_t, std::string>> rows;
  auto conn = cluster.Connect(db);
  if (!conn) return rows;
  auto r = conn->Query("SELECT emp_id, md5(t::text) FROM employees t ORDER BY emp_id");
  EXPECT_TRUE(r.ok()) << r.status().message();
  if (!r.ok()) return rows;
  for (int i = 0; i < r->rows(); ++i)
    rows.emplace_back(r->GetInt64(i, 0), std::string(r->Get(i, 1)));
  return rows;
}

struct Differences {
  int64_t lost = 0, extra = 0, differing = 0;
  int64_t total() const { return lost + extra + differing; }
};

Differences Compare(const std::vector<std::pair<int64_t, std::string>>& src,
                    const std::vector<std::pair<int64_t, std::string>>& tgt) {
  Differences d;
  size_t i = 0, j = 0;
  while (i < src.size() || j < tgt.size()) {
    if (j == tgt.size() || (i < src.size() && src[i].first < tgt[j].first)) {
      ++d.lost;
      ++i;
    } else if (i == src.size() || tgt[j].first < src[i].first) {
      ++d.extra;
      ++j;
    } else {
      d.differing += src[i].second != tgt[j].second;
      ++i;
      ++j;
    }
  }
  return d;
}

class Chaos {
 public:
  Chaos(unsigned seed, std::string dir, std::string config, std::string src, KafkaCluster* kafka,
        std::string topic, Counters* counters)
      : rng_(seed),
        dir_(std::move(dir)),
        config_(std::move(config)),
        src_(std::move(src)),
        kafka_(kafka),
        topic_(std::move(topic)),
        c_(counters) {}

  std::mt19937& rng() { return rng_; }
  // A random whole number in [lo, hi).
  int Between(int lo, int hi) {
    return lo + static_cast<int>(rng_() % static_cast<unsigned>(hi - lo));
  }
  void SleepMs(int lo, int hi) {
    std::this_thread::sleep_for(std::chrono::milliseconds(Between(lo, hi)));
  }

  std::unique_ptr<Subprocess> Start(const std::string& cmd) {
    return std::make_unique<Subprocess>(std::vector<std::string>{
        BinaryPath(), "-c", config_, "--log-level", "info", cmd, "--status-interval", "0"});
  }

  // Keeps what a process logged (kept with the test's folder when it fails).
  void Keep(const std::string& cmd, const Subprocess& p) {
    std::ofstream(fmt::format("{}/{}-{:03d}.log", dir_, cmd, ++logs_)) << p.Stderr();
  }

  // Kills `p` with SIGKILL and starts `cmd` again after a moment.
  void KillAndRestart(std::unique_ptr<Subprocess>& p, const std::string& cmd) {
    p->Signal(SIGKILL);
    p->Wait(10);
    Keep(cmd, *p);
    ++c_->faults[static_cast<int>(Fault::kProcessKill)];
    SleepMs(100, 800);
    p = Start(cmd);
  }

  // Starts `p` again if it exited on its own. A process that finds a
  // database or the brokers unreachable at start-up exits with one line, as
  // for a wrong address, and its supervisor (systemd, Kubernetes) starts it
  // again; so does this test. So does a database restarted in the instant a
  // starting process opened its first connection (lost during the session's
  // set-up, before its start line): once a database answered, a process waits
  // out a lost connection, while starting too (fault_test). Any other exit is
  // a failure.
  void Respawn(std::unique_ptr<Subprocess>& p, const std::string& cmd) {
    if (p->Running()) return;
    const int code = p->Wait(1).value_or(-1);
    const std::string err = p->Stderr();
    Keep(cmd, *p);
    std::string why;
    const bool started = err.find("producer: publishing") != std::string::npos ||
                         err.find("consumer: applying") != std::string::npos;
    if (err.find("cannot connect to the") != std::string::npos) {
      why = "a database unreachable at start-up";
    } else if (!started && err.find("lost the connection to the") != std::string::npos) {
      why = "a database restarted during start-up";
    } else if (err.find("cannot reach the Kafka brokers") != std::string::npos) {
      why = "the brokers unreachable at start-up";
    } else {
      why = "unexpected";
      ADD_FAILURE() << cmd << " exited with status " << code << " (log " << dir_ << "/" << cmd
                    << "-" << fmt::format("{:03d}", logs_) << ".log):\n"
                    << Tail(err);
    }
    ++c_->exits[cmd + ": " + why];
    ++c_->respawns;
    p = Start(cmd);
  }

  // The source's count of changes the broker acknowledged.
  int64_t Published() {
    return SourceCluster().Count(src_, "SELECT sum(published_count) FROM datatunnel.tables");
  }

  // Waits until the cluster is whole again; false (and a failure) if not.
  bool Whole(const std::function<void()>& meanwhile) {
    const int64_t t0 = MonotonicMicros();
    const bool ok = kafka_->WaitReady();
    if (meanwhile) meanwhile();
    if (!ok) {
      ADD_FAILURE() << "the Kafka cluster did not become whole again (see its server.log files)";
      return false;
    }
    Log("cluster whole again ({:.1f} s)", (MonotonicMicros() - t0) / 1e6);
    return true;
  }

  // Injects a Kafka fault (the cluster is whole when it starts). `meanwhile`
  // is called during long waits (it restarts processes that exited).
  bool KafkaFault(Fault f, const std::function<void()>& meanwhile) {
    if (!Whole(meanwhile)) return false;
    switch (f) {
      case Fault::kLeaderKill: {
        const int p = Between(0, kPartitions);
        const int leader = kafka_->Leader(topic_, p);
        if (leader < 1) {
          Log("no leader known for partition {}; no leader kill this round", p);
          return true;
        }
        kafka_->Kill(leader);
        const int down_ms = Between(300, 3000);
        Log("leader kill: node {} (leader of partition {}) for {} ms", leader, p, down_ms);
        std::this_thread::sleep_for(std::chrono::milliseconds(down_ms));
        kafka_->Restart(leader);
        break;
      }
      case Fault::kTwoNodeOutage: {
        const int survivor = Between(1, 4);  // the other two go down
        TwoNodeOutage(survivor % 3 + 1, (survivor + 1) % 3 + 1, meanwhile);
        break;
      }
      case Fault::kPause: {
        const int p = Between(0, kPartitions);
        int node = kafka_->Leader(topic_, p);
        if (node < 1) node = Between(1, 4);
        const int paused_ms = Between(7000, 10000);
        Log("pause: node {} (leader of partition {}) stopped for {} ms", node, p, paused_ms);
        kafka_->Pause(node);
        std::this_thread::sleep_for(std::chrono::milliseconds(paused_ms));
        kafka_->Resume(node);
        break;
      }
      case Fault::kClusterRestart: {
        const int down_ms = Between(1000, 4000);
        Log("cluster restart: every node killed, down for {} ms", down_ms);
        kafka_->KillAll();
        std::this_thread::sleep_for(std::chrono::milliseconds(down_ms));
        kafka_->RestartAll();
        if (!Whole(meanwhile)) return false;
        break;
      }
      default:
        return true;
    }
    ++c_->faults[static_cast<int>(f)];
    return true;
  }

  template <typename... Args>
  void Log(fmt::format_string<Args...> format, Args&&... args) {
    fmt::print("chaos [{:6.1f} s] {}\n", (MonotonicMicros() - t0_) / 1e6,
               fmt::format(format, std::forward<Args>(args)...));
    std::fflush(stdout);
  }

  static std::string Tail(const std::string& s) {
    return s.size() > 6000 ? "..." + s.substr(s.size() - 6000) : s;
  }

 private:
  // Two nodes down: no produce request can be acknowledged (two in-sync
  // replicas needed, and no controller quorum to shrink the ISR), so the
  // source's recorded progress must stay put while writers go on. Checked
  // from 3 s after the kills (acknowledgements already on their way when
  // the nodes died are recorded within 20 ms) until the nodes come back.
  void TwoNodeOutage(int a, int b, const std::function<void()>& meanwhile) {
    kafka_->Kill(a);
    kafka_->Kill(b);
    const int64_t down = MonotonicMicros();
    const int outage_ms = Between(6000, 10000);
    std::this_thread::sleep_for(std::chrono::milliseconds(3000));
    const int64_t published0 = Published(), written0 = c_->changes.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(std::max(1000, outage_ms - 3000)));
    const int64_t published1 = Published(), written1 = c_->changes.load();
    kafka_->Restart(a);
    kafka_->Restart(b);
    const double seconds = (MonotonicMicros() - down) / 1e6;
    EXPECT_EQ(published1, published0)
        << "changes were acknowledged while two of three nodes were down (nodes " << a << " and "
        << b << ")";
    if (published1 == published0 && written1 > written0) ++c_->stalls_seen;
    Log("two-node outage: nodes {} and {} down for {:.1f} s; published stayed at {} while {} "
        "changes were written",
        a, b, seconds, published1, written1 - written0);
    // Publishing resumes once they are back, if anything waits to be published
    // (delivered changes leave the change table).
    const int64_t waiting = SourceCluster().Count(src_, "SELECT count(*) FROM employees_cdc");
    if (waiting <= 0) {
      Log("two-node outage: nothing waited to be published");
      return;
    }
    const int64_t back = MonotonicMicros();
    bool resumed = false;
    const int64_t deadline = back + static_cast<int64_t>(180e6 * testing::TimeoutMultiplier());
    while (!resumed && MonotonicMicros() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      if (meanwhile) meanwhile();
      resumed = Published() > published1;
    }
    EXPECT_TRUE(resumed) << "publishing did not resume within 180 s after nodes " << a << " and "
                         << b << " came back";
    Log("two-node outage: publishing {} {:.1f} s after the nodes were started again",
        resumed ? "resumed" : "had not resumed", (MonotonicMicros() - back) / 1e6);
  }

  std::mt19937 rng_;
  std::string dir_, config_, src_;
  KafkaCluster* kafka_;
  std::string topic_;
  Counters* c_;
  int logs_ = 0;
  const int64_t t0_ = MonotonicMicros();
};

TEST(Chaos, NothingLostSkippedOrDuplicated) {
  const int64_t started = MonotonicMicros();
  const unsigned seed = std::getenv("DATATUNNEL_CHAOS_SEED")
                            ? static_cast<unsigned>(std::atoi(std::getenv("DATATUNNEL_CHAOS_SEED")))
                            : static_cast<unsigned>(NowMicros());
  const int64_t phase1_changes = g_long ? 140000 : 35000;
  const int64_t phase2_changes = g_long ? 60000 : 15000;
  const int writers = g_long ? 6 : 4;
  // While a phase writes its changes; then a trickle until its faults are done.
  const int rate_per_writer = (g_long ? 600 : 400) / writers;
  const int trickle_per_writer = 5;
  fmt::print("chaos: {} form, seed {} (DATATUNNEL_CHAOS_SEED={} replays it)\n",
             g_long ? "long" : "short", seed, seed);
  std::fflush(stdout);  // kept even if the test dies

  KafkaCluster kafka(KafkaCluster::Options{.nodes = 3, .partitions = kPartitions});
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
  const std::string prefix = testing::TestTopicPrefix();
  const std::string topic = prefix + ".public.employees";
  kafka.CreateTopic(topic, kPartitions);
  const std::string config = dir + "/datatunnel.toml";
  std::ofstream(config) << fmt::format(R"(
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
[[tables]]
source = "public.employees"
)",
                                       SourceCluster().Dsn(src), TargetCluster().Dsn(tgt),
                                       kafka.bootstrap(), prefix, prefix);
  auto init = testing::RunCommand({BinaryPath(), "-c", config, "init"});
  ASSERT_EQ(init.code, 0) << init.err;

  Counters counters;
  Chaos chaos(seed, dir, config, src, &kafka, topic, &counters);
  chaos.Log("cluster {} up, topic {} ({} partitions); {} writers at {} changes/s",
            kafka.bootstrap(), topic, kPartitions, writers, writers * rate_per_writer);
  std::atomic<bool> stop_writers{false};
  std::atomic<int64_t> until{0};
  // A phase: writers at full rate until `changes` more are written, then a
  // trickle; the faults of `plan` (drawn in an order from the seed) and,
  // once they are done, `filler` ones until the changes are written.
  // `inject` injects one and returns false if the test cannot go on.
  bool healthy = true;
  auto phase = [&](int64_t changes, std::vector<std::pair<Fault, int>> counts,
                   const std::vector<Fault>& filler, int lo_ms, int hi_ms,
                   const std::function<void()>& respawn, const std::function<bool(Fault)>& inject) {
    until = counters.changes.load() + changes;
    std::vector<Fault> plan;
    for (auto [f, n] : counts) plan.insert(plan.end(), static_cast<size_t>(n), f);
    std::shuffle(plan.begin(), plan.end(), chaos.rng());
    stop_writers = false;
    std::vector<std::thread> threads;
    for (int w = 0; w < writers; ++w) {
      threads.emplace_back(Writer, w, rate_per_writer, trickle_per_writer, &until, src, &counters,
                           &stop_writers);
    }
    for (size_t round = 0; healthy && round < 2000; ++round) {
      if (round >= plan.size() && counters.changes >= until) break;
      chaos.SleepMs(lo_ms, hi_ms);
      respawn();
      healthy =
          inject(round < plan.size() ? plan[round]
                                     : filler[chaos.Between(0, static_cast<int>(filler.size()))]);
    }
    stop_writers = true;
    for (auto& t : threads) t.join();
    respawn();
  };
  const int scale = g_long ? 3 : 1;

  // ---- Phase 1: separate producers and consumers -------------------------
  std::vector<std::unique_ptr<Subprocess>> producers, consumers;
  for (int i = 0; i < 2; ++i) producers.push_back(chaos.Start("produce"));
  for (int i = 0; i < 3; ++i) consumers.push_back(chaos.Start("consume"));
  auto respawn1 = [&] {
    for (auto& p : producers) chaos.Respawn(p, "produce");
    for (auto& c : consumers) chaos.Respawn(c, "consume");
  };
  phase(phase1_changes,
        {{Fault::kClusterRestart, 1},
         {Fault::kTwoNodeOutage, scale},
         {Fault::kPause, scale},
         {Fault::kLeaderKill, 3 * scale},
         {Fault::kProcessKill, 6 * scale},
         {Fault::kDbRestart, 2 * scale}},
        {Fault::kProcessKill, Fault::kProcessKill, Fault::kDbRestart, Fault::kLeaderKill}, 200, 900,
        respawn1, [&](Fault f) {
          switch (f) {
            case Fault::kProcessKill:
              if (chaos.Between(0, 2) == 0) {  // a producer (the active one half the time)
                chaos.KillAndRestart(producers[chaos.Between(0, 2)], "produce");
              } else {
                chaos.KillAndRestart(consumers[chaos.Between(0, 3)], "consume");
              }
              return true;
            case Fault::kDbRestart:
              if (chaos.Between(0, 2) == 0) {
                TargetCluster().Restart();
              } else {
                SourceCluster().Restart();  // writers and producers reconnect
              }
              ++counters.faults[static_cast<int>(Fault::kDbRestart)];
              return true;
            default:
              return chaos.KafkaFault(f, respawn1);
          }
        });
  chaos.Log("phase 1 wrote {} changes; waiting for the target to catch up",
            counters.changes.load());
  // Phase 1 must converge on its own before phase 2 changes the topology.
  healthy = healthy && chaos.Whole(respawn1);
  auto verify1 = testing::RunCommand({BinaryPath(), "-c", config, "verify", "--wait",
                                      std::to_string(180 * testing::TimeoutMultiplier())},
                                     {}, 400 * testing::TimeoutMultiplier());
  if (verify1.code != 0) {
    std::string logs;
    for (auto& p : producers) logs += "\n--- a producer logged:\n" + Chaos::Tail(p->Stderr());
    for (auto& c : consumers) logs += "\n--- a consumer logged:\n" + Chaos::Tail(c->Stderr());
    ADD_FAILURE() << "phase 1 did not converge (seed " << seed << "; logs in " << dir << ")\n"
                  << verify1.out << verify1.err << logs;
  }
  chaos.Log("phase 1 converged: {}", verify1.out.empty() ? "" : testing::Lines(verify1.out).back());
  for (auto& p : producers) {
    EXPECT_EQ(p->Stop(), 0) << p->Stderr();
    chaos.Keep("produce", *p);
  }
  for (auto& c : consumers) {
    EXPECT_EQ(c->Stop(), 0) << c->Stderr();
    chaos.Keep("consume", *c);
  }

  // ---- Phase 2: the single-process `run`, killed again and again ---------
  auto run = chaos.Start("run");
  auto respawn2 = [&] { chaos.Respawn(run, "run"); };
  phase(phase2_changes,
        {{Fault::kClusterRestart, g_long ? 1 : 0},
         {Fault::kTwoNodeOutage, scale},
         {Fault::kPause, scale},
         {Fault::kLeaderKill, 2 * scale},
         {Fault::kProcessKill, 6 * scale}},
        {Fault::kProcessKill}, 300, 2000, respawn2, [&](Fault f) {
          if (f != Fault::kProcessKill) return chaos.KafkaFault(f, respawn2);
          chaos.KillAndRestart(run, "run");
          return true;
        });
  healthy = healthy && chaos.Whole(respawn2);
  chaos.Log("phase 2 done, {} changes written in all; waiting for the target to catch up",
            counters.changes.load());

  // ---- Everything healthy again: the target must equal the source --------
  auto verify = testing::RunCommand({BinaryPath(), "-c", config, "verify", "--wait",
                                     std::to_string(240 * testing::TimeoutMultiplier())},
                                    {}, 500 * testing::TimeoutMultiplier());
  EXPECT_EQ(verify.code, 0) << verify.out << verify.err << "\n--- run logged:\n"
                            << Chaos::Tail(run->Stderr());
  // The change table drains once everything is delivered.
  EXPECT_TRUE(WaitUntil(
      [&] { return SourceCluster().Count(src, "SELECT count(*) FROM employees_cdc") == 0; }, 30))
      << SourceCluster().Count(src, "SELECT count(*) FROM employees_cdc") << " changes left";
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
  chaos.Keep("run", *run);
  const auto source_rows = Rows(SourceCluster(), src);
  const Differences diff = Compare(source_rows, Rows(TargetCluster(), tgt));
  EXPECT_EQ(diff.total(), 0) << "lost " << diff.lost << ", extra " << diff.extra << ", differing "
                             << diff.differing;

  int64_t total = 0;
  std::string kinds;
  for (int k = 0; k < kFaultKinds; ++k) {
    total += counters.faults[k];
    kinds += fmt::format("{}{} {}", k ? ", " : "", kFaultNames[k], counters.faults[k]);
    if (static_cast<Fault>(k) == Fault::kTwoNodeOutage)
      kinds += fmt::format(" (stall seen in {})", counters.stalls_seen);
  }
  std::string exits;
  for (const auto& [why, n] : counters.exits) exits += fmt::format("; {} x {}", n, why);
  fmt::print(
      "chaos summary: {} form, seed {}, {:.0f} s: faults {} ({}); processes started again after "
      "exiting {}{}; changes written {} ({} transactions lost to faults, not committed); rows "
      "verified {}; differences {} (lost {}, extra {}, differing {})\n",
      g_long ? "long" : "short", seed, (MonotonicMicros() - started) / 1e6, total, kinds,
      counters.respawns, exits, counters.changes.load(), counters.failures.load(),
      source_rows.size(), diff.total(), diff.lost, diff.extra, diff.differing);
  if (::testing::Test::HasFailure()) {
    fmt::print("chaos: the processes' logs and config are kept in {}\n", dir);
  } else {
    std::filesystem::remove_all(dir);
  }
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
