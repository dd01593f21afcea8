// bench/loadgen: the benchmark's load generator and measuring probes.
//
// Plain libpq, no datatunnel code: it measures the tunnel and PostgreSQL's
// logical replication the same way, from outside.
//
//   loadgen steady  --dsn DB1 --rate N --seconds S [--writers W] --preload P
//                   [--id-from A --id-to B] --out CHANGES
//       Open-loop mixed load (50% INSERT, 40% UPDATE, 10% DELETE), one change
//       per transaction, at N changes/s spread over W writer connections. Each
//       written row carries a unique version in last_name ('v<seq>'); the
//       client clock (CLOCK_REALTIME) is read right after each COMMIT returns.
//       Writes one line per change: emp_id,version,op,commit_us.
//       With --tables N, the changes are spread over tables emp_1 .. emp_N
//       (bench/run.sh's "many" scenario; emp_id unique across them): row i
//       of the preload lives in emp_<1 + i % N>, a new row in a random one.
//       With --warm 1, each writer runs its statements once on every table
//       in a transaction it rolls back, before the clock starts.
//   loadgen burst   --dsn DB1 --changes N [--writers W] [--txn K] --preload P --out COMMITS
//       N changes as fast as the source takes them, K per transaction, on
//       distinct rows (updates and deletes each take a preloaded row never
//       touched before), so the target's applied-row counter reaches exactly N.
//       Writes one line per transaction: commit_us,changes.
//   loadgen sample  --dsn DB --query SQL --until N [--interval-ms I] [--timeout S] --out SERIES
//       Polls SQL (one bigint) until it reaches N; writes t_us,value per
//       sample; prints the time of the first sample at or above N.
//   loadgen wrap --report FILE -- COMMAND [ARGS...]
//       Runs COMMAND, forwarding SIGTERM/SIGINT; when it exits, writes its
//       peak RSS (ru_maxrss), CPU seconds and wall time to FILE.
//   loadgen harvest --dsn DB2 --changes CHANGES [--timeout S] --out LATENCIES
//       Reads the target's apply log (bench_log: emp_id, version, op, at),
//       works out when each change became visible (the first logged write of
//       its row at the same or a newer version, or its deletion) and writes
//       the latencies in ms, sorted; prints count, p50, p90, p99, max.
//
// Every mode prints one summary line "key=value ..." on stdout.
#include <libpq-fe.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "loadgen: %s\n", msg.c_str());
  std::exit(2);
}

int64_t NowUs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000 + ts.tv_nsec / 1000;
}

void SleepUntilUs(int64_t t) {
  for (;;) {
    int64_t d = t - NowUs();
    if (d <= 0) return;
    timespec ts{static_cast<time_t>(d / 1'000'000), static_cast<long>((d % 1'000'000) * 1000)};
    nanosleep(&ts, nullptr);
  }
}

struct Args {
  std::map<std::string, std::string> kv;
  std::string Get(const std::string& k, const std::string& def = "\x01") const {
    auto it = kv.find(k);
    if (it != kv.end()) return it->second;
    if (def == "\x01") Die("missing --" + k);
    return def;
  }
  int64_t Int(const std::string& k, int64_t def = INT64_MIN) const {
    std::string v = Get(k, def == INT64_MIN ? "\x01" : std::to_string(def));
    char* end = nullptr;
    long long n = std::strtoll(v.c_str(), &end, 10);
    if (!end || *end) Die("--" + k + ": not a whole number: " + v);
    return n;
  }
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) Die("bad argument: " + k);
    a.kv[k.substr(2)] = argv[++i];
  }
  return a;
}

PGconn* Connect(const std::string& dsn) {
  PGconn* c = PQconnectdb(dsn.c_str());
  if (PQstatus(c) != CONNECTION_OK) Die("cannot connect to " + dsn + ": " + PQerrorMessage(c));
  PGresult* r = PQexec(c, "SET application_name = 'bench-loadgen'");
  PQclear(r);
  return c;
}

// Runs a command; on error, returns the message (empty when fine).
std::string Exec(PGconn* c, const std::string& sql, PGresult** out = nullptr) {
  PGresult* r = PQexec(c, sql.c_str());
  const auto st = PQresultStatus(r);
  std::string err;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) err = PQresultErrorMessage(r);
  if (out && err.empty()) {
    *out = r;
  } else {
    PQclear(r);
  }
  return err;
}

const char* kFirst[] = {"Ada",    "Grace",   "Alan",    "Edsger", "Barbara",  "Donald", "Ken",
                        "Leslie", "Niklaus", "Frances", "John",   "Margaret", "Dennis", "Radia"};
const char* kCity[] = {"Amsterdam", "Berlin", "Lisbon",  "Oslo",   "Paris",  "Prague",
                       "Reykjavik", "Rome",   "Tallinn", "Vienna", "Warsaw", "Zurich"};

// ---- steady ------------------------------------------------------------------

struct ChangeRecord {
  int64_t emp_id;
  int64_t version;
  char op;
  int64_t commit_us;
  int64_t late_us;  // how late against its schedule it started
};

int Steady(const Args& a) {
  const std::string dsn = a.Get("dsn");
  const double rate = static_cast<double>(a.Int("rate"));
  const double seconds = static_cast<double>(a.Int("seconds"));
  const int64_t preload = a.Int("preload");
  // Updates and deletes of preloaded rows stay within [id-from, id-to], so
  // consecutive runs on the same tables can use disjoint ranges.
  const int64_t id_from = a.Int("id-from", 1);
  const int64_t id_to = std::min(preload, a.Int("id-to", preload));
  const int writers = static_cast<int>(
      a.Int("writers", std::clamp<int64_t>(static_cast<int64_t>(std::ceil(rate / 150)), 1, 48)));
  const std::string out = a.Get("out");
  const uint64_t seed = static_cast<uint64_t>(a.Int("seed", 42));
  const int64_t total = static_cast<int64_t>(rate * seconds);
  const int tables = static_cast<int>(a.Int("tables", 0));  // 0: table employees
  const bool warm = a.Int("warm", 0) != 0;
  auto table_name = [&](int k) {
    return tables == 0 ? std::string("employees") : "emp_" + std::to_string(k + 1);
  };
  auto stmt = [](const char* op, int k) { return std::string(op) + std::to_string(k); };

  std::vector<PGconn*> conns;
  for (int w = 0; w < writers; ++w) {
    PGconn* c = Connect(dsn);
    for (int k = 0; k < std::max(tables, 1); ++k) {
      const std::string t = table_name(k);
      const std::string prep[][2] = {
          {stmt("ins", k), "INSERT INTO " + t +
                               " (first_name, last_name, dob, city) VALUES ($1, $2, $3, $4) "
                               "RETURNING emp_id"},
          {stmt("upd", k), "UPDATE " + t + " SET last_name = $1, city = $2 WHERE emp_id = $3"},
          {stmt("del", k), "DELETE FROM " + t + " WHERE emp_id = $1"},
      };
      for (auto& p : prep) {
        PGresult* r = PQprepare(c, p[0].c_str(), p[1].c_str(), 0, nullptr);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
          Die(std::string("prepare: ") + PQerrorMessage(c));
        PQclear(r);
      }
    }
    if (warm) {
      // Each statement once per table, rolled back: the connection's caches
      // (the tables' and the capture trigger functions' plans) are built
      // before the clock starts, as in an application's pooled connections.
      // Cold, 7 writers over 500 tables used 3-4 s of the source's CPU in
      // the first 5 s, against 0.6 s over one table.
      Exec(c, "BEGIN");
      for (int k = 0; k < std::max(tables, 1); ++k) {
        const char* ins[4] = {"warm", "warm", "1970-01-01", "warm"};
        const char* none[3] = {"warm", "warm", "-1"};
        PQclear(PQexecPrepared(c, stmt("ins", k).c_str(), 4, ins, nullptr, nullptr, 0));
        PQclear(PQexecPrepared(c, stmt("upd", k).c_str(), 3, none, nullptr, nullptr, 0));
        PQclear(PQexecPrepared(c, stmt("del", k).c_str(), 1, none + 2, nullptr, nullptr, 0));
      }
      Exec(c, "ROLLBACK");
    }
    conns.push_back(c);
  }
  std::atomic<int64_t> next_slot{0};
  std::atomic<int64_t> next_version{1};
  std::atomic<bool> failed{false};
  std::vector<std::vector<ChangeRecord>> recs(writers);
  std::string first_error;
  std::mutex err_mu;
  const int64_t t0 = NowUs() + 200'000;
  const int64_t deadline = t0 + static_cast<int64_t>(seconds * 1e6);
  const double us_per_slot = 1e6 / rate;

  auto writer = [&](int w) {
    PGconn* c = conns[w];
    std::mt19937_64 rng(seed * 7919 + w);
    // Rows this writer owns: only it updates or deletes them, so each row's
    // versions rise in commit order. Deletes take preloaded rows only (they
    // exist on the target whatever a batch collapses).
    std::vector<int64_t> deletable, alive;
    for (int64_t id = id_from + w; id <= id_to; id += writers) deletable.push_back(id);
    std::shuffle(deletable.begin(), deletable.end(), rng);
    alive = deletable;
    std::unordered_set<int64_t> deleted;
    // The table of each row this writer inserted (the preload's: id % tables).
    std::unordered_map<int64_t, int> table_of;
    auto table_index = [&](int64_t id) {
      if (tables <= 1) return 0;
      auto it = table_of.find(id);
      return it != table_of.end() ? it->second : static_cast<int>(id % tables);
    };
    auto& out = recs[w];
    out.reserve(static_cast<size_t>(total / writers + 16));
    char v1[32], v2[64], v3[32];
    while (!failed.load(std::memory_order_relaxed)) {
      const int64_t k = next_slot.fetch_add(1);
      if (k >= total) break;
      const int64_t due = t0 + static_cast<int64_t>(k * us_per_slot);
      // Open loop, bounded in time: when the source cannot take the rate,
      // changes due after the end are not sent (achieved_rate says so).
      if (NowUs() > deadline) break;
      SleepUntilUs(due);
      const int64_t start = NowUs();
      int roll = static_cast<int>(rng() % 100);
      char op = roll < 50 ? 'I' : roll < 90 ? 'U' : 'D';
      if (op == 'D' && deletable.empty()) op = 'I';
      int64_t id = 0;
      if (op == 'U') {
        while (!alive.empty()) {
          size_t i = rng() % alive.size();
          if (!deleted.count(alive[i])) {
            id = alive[i];
            break;
          }
          alive[i] = alive.back();
          alive.pop_back();
        }
        if (id == 0) op = 'I';
      }
      const int64_t ver = next_version.fetch_add(1);
      std::snprintf(v1, sizeof v1, "v%lld", static_cast<long long>(ver));
      PGresult* r = nullptr;
      if (op == 'I') {
        std::snprintf(v3, sizeof v3, "19%02d-%02d-%02d", static_cast<int>(rng() % 100),
                      static_cast<int>(rng() % 12 + 1), static_cast<int>(rng() % 28 + 1));
        const char* p[4] = {kFirst[rng() % std::size(kFirst)], v1, v3,
                            kCity[rng() % std::size(kCity)]};
        const int k = tables <= 1 ? 0 : static_cast<int>(rng() % tables);
        r = PQexecPrepared(c, stmt("ins", k).c_str(), 4, p, nullptr, nullptr, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
          id = std::strtoll(PQgetvalue(r, 0, 0), nullptr, 10);
          alive.push_back(id);
          if (tables > 1) table_of[id] = k;
        }
      } else if (op == 'U') {
        std::snprintf(v2, sizeof v2, "%s", kCity[rng() % std::size(kCity)]);
        std::snprintf(v3, sizeof v3, "%lld", static_cast<long long>(id));
        const char* p[3] = {v1, v2, v3};
        r = PQexecPrepared(c, stmt("upd", table_index(id)).c_str(), 3, p, nullptr, nullptr, 0);
      } else {
        id = deletable.back();
        deletable.pop_back();
        deleted.insert(id);
        std::snprintf(v3, sizeof v3, "%lld", static_cast<long long>(id));
        const char* p[1] = {v3};
        r = PQexecPrepared(c, stmt("del", table_index(id)).c_str(), 1, p, nullptr, nullptr, 0);
      }
      const int64_t committed = NowUs();
      const auto st = PQresultStatus(r);
      if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        std::lock_guard<std::mutex> l(err_mu);
        if (first_error.empty()) first_error = PQresultErrorMessage(r);
        failed = true;
      } else if (op != 'I' && std::strcmp(PQcmdTuples(r), "1") != 0) {
        std::lock_guard<std::mutex> l(err_mu);
        if (first_error.empty())
          first_error = "a change touched no row: emp_id " + std::to_string(id);
        failed = true;
      }
      PQclear(r);
      out.push_back({id, ver, op, committed, start - due});
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) threads.emplace_back(writer, w);
  for (auto& t : threads) t.join();
  const int64_t t1 = NowUs();
  for (PGconn* c : conns) PQfinish(c);
  if (failed) Die("write failed: " + first_error);

  std::ofstream f(out);
  std::vector<int64_t> late;
  int64_t n = 0, first = INT64_MAX, last = 0;
  for (const auto& v : recs) {
    for (const auto& r : v) {
      f << r.emp_id << ',' << r.version << ',' << r.op << ',' << r.commit_us << '\n';
      late.push_back(r.late_us);
      first = std::min(first, r.commit_us);
      last = std::max(last, r.commit_us);
      ++n;
    }
  }
  std::sort(late.begin(), late.end());
  const double elapsed = (std::min(t1, deadline) - t0) / 1e6;
  std::printf(
      "changes=%lld writers=%d seconds=%.2f achieved_rate=%.1f late_p99_ms=%.2f "
      "late_max_ms=%.2f first_commit_us=%lld last_commit_us=%lld\n",
      static_cast<long long>(n), writers, elapsed, n / elapsed,
      late.empty() ? 0 : late[late.size() * 99 / 100] / 1000.0,
      late.empty() ? 0 : late.back() / 1000.0, static_cast<long long>(first),
      static_cast<long long>(last));
  return 0;
}

// ---- burst -------------------------------------------------------------------

int Burst(const Args& a) {
  const std::string dsn = a.Get("dsn");
  const int64_t total = a.Int("changes");
  const int writers = static_cast<int>(a.Int("writers", 8));
  const int per_txn = static_cast<int>(a.Int("txn", 10));
  const int64_t preload = a.Int("preload");
  const std::string out = a.Get("out");
  // Every 10 changes: 5 inserts, 4 updates, 1 delete; updates and deletes
  // take distinct preloaded rows.
  const int64_t touched = total / 10 * 5 + std::max<int64_t>(0, total % 10 - 5);
  if (touched > preload) {
    Die("burst of " + std::to_string(total) + " changes needs " + std::to_string(touched) +
        " preloaded rows, only " + std::to_string(preload));
  }
  std::vector<PGconn*> conns;
  for (int w = 0; w < writers; ++w) conns.push_back(Connect(dsn));
  std::atomic<int64_t> next_change{0}, next_row{1}, next_version{1};
  std::atomic<bool> failed{false};
  std::string first_error;
  std::mutex mu;
  std::vector<std::vector<std::pair<int64_t, int>>> commits(writers);
  const int64_t t0 = NowUs();
  auto writer = [&](int w) {
    PGconn* c = conns[w];
    std::mt19937_64 rng(1000 + w);
    std::string sql;
    while (!failed.load(std::memory_order_relaxed)) {
      const int64_t first = next_change.fetch_add(per_txn);
      if (first >= total) break;
      const int64_t last = std::min(total, first + per_txn);
      sql = "BEGIN;";
      for (int64_t i = first; i < last; ++i) {
        const int kind = static_cast<int>(i % 10);
        const long long ver = next_version.fetch_add(1);
        char buf[256];
        if (kind < 5) {
          std::snprintf(buf, sizeof buf,
                        "INSERT INTO employees (first_name, last_name, dob, city) VALUES "
                        "('%s', 'v%lld', '19%02d-%02d-%02d', '%s');",
                        kFirst[rng() % std::size(kFirst)], ver, static_cast<int>(rng() % 100),
                        static_cast<int>(rng() % 12 + 1), static_cast<int>(rng() % 28 + 1),
                        kCity[rng() % std::size(kCity)]);
        } else if (kind < 9) {
          std::snprintf(
              buf, sizeof buf,
              "UPDATE employees SET last_name = 'v%lld', city = '%s' WHERE emp_id = %lld;", ver,
              kCity[rng() % std::size(kCity)], static_cast<long long>(next_row.fetch_add(1)));
        } else {
          std::snprintf(buf, sizeof buf, "DELETE FROM employees WHERE emp_id = %lld;",
                        static_cast<long long>(next_row.fetch_add(1)));
        }
        sql += buf;
      }
      sql += "COMMIT;";
      std::string err = Exec(c, sql);
      const int64_t t = NowUs();
      if (!err.empty()) {
        std::lock_guard<std::mutex> l(mu);
        if (first_error.empty()) first_error = err;
        failed = true;
        break;
      }
      commits[w].emplace_back(t, static_cast<int>(last - first));
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) threads.emplace_back(writer, w);
  for (auto& t : threads) t.join();
  const int64_t t1 = NowUs();
  for (PGconn* c : conns) PQfinish(c);
  if (failed) Die("write failed: " + first_error);
  std::vector<std::pair<int64_t, int>> all;
  for (auto& v : commits) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  std::ofstream f(out);
  for (auto& [t, n] : all) f << t << ',' << n << '\n';
  std::printf(
      "changes=%lld writers=%d txn=%d start_us=%lld end_us=%lld seconds=%.3f "
      "commit_rate=%.1f\n",
      static_cast<long long>(total), writers, per_txn, static_cast<long long>(t0),
      static_cast<long long>(t1), (t1 - t0) / 1e6, total / ((t1 - t0) / 1e6));
  return 0;
}

// ---- sample ------------------------------------------------------------------

int Sample(const Args& a) {
  const std::string dsn = a.Get("dsn");
  const std::string query = a.Get("query");
  const int64_t until = a.Int("until");
  const int interval_ms = static_cast<int>(a.Int("interval-ms", 50));
  const double timeout = static_cast<double>(a.Int("timeout", 600));
  const std::string out = a.Get("out");
  PGconn* c = Connect(dsn);
  std::ofstream f(out);
  const int64_t t0 = NowUs();
  int64_t reached = 0, value = 0;
  for (;;) {
    const int64_t t = NowUs();
    PGresult* r = nullptr;
    std::string err = Exec(c, query, &r);
    if (!err.empty()) Die("sample query failed: " + err);
    value = PQgetisnull(r, 0, 0) ? 0 : std::strtoll(PQgetvalue(r, 0, 0), nullptr, 10);
    PQclear(r);
    f << t << ',' << value << '\n';
    if (value >= until) {
      reached = t;
      break;
    }
    if (t - t0 > timeout * 1e6) break;
    SleepUntilUs(t + interval_ms * 1000);
  }
  PQfinish(c);
  std::printf("reached_us=%lld value=%lld until=%lld timed_out=%d\n",
              static_cast<long long>(reached), static_cast<long long>(value),
              static_cast<long long>(until), reached == 0 ? 1 : 0);
  return reached == 0 ? 1 : 0;
}

// ---- harvest -----------------------------------------------------------------

struct LogEntry {
  bool deleted;
  int64_t version;  // -1: no version (a row the load generator did not write)
  int64_t at_us;
};

int Harvest(const Args& a) {
  const std::string dsn = a.Get("dsn");
  const std::string changes_file = a.Get("changes");
  const double timeout = static_cast<double>(a.Int("timeout", 60));
  const std::string out = a.Get("out");
  std::vector<ChangeRecord> changes;
  {
    std::ifstream in(changes_file);
    std::string line;
    while (std::getline(in, line)) {
      ChangeRecord r{};
      long long id, ver, t;
      char op;
      if (std::sscanf(line.c_str(), "%lld,%lld,%c,%lld", &id, &ver, &op, &t) != 4) continue;
      r.emp_id = id;
      r.version = ver;
      r.op = op;
      r.commit_us = t;
      changes.push_back(r);
    }
  }
  PGconn* c = Connect(dsn);
  const int64_t t0 = NowUs();
  std::vector<double> lat;
  size_t missing = 0;
  for (;;) {
    std::unordered_map<int64_t, std::vector<LogEntry>> log;
    PGresult* r = nullptr;
    std::string err = Exec(c,
                           "SELECT emp_id, op, version, "
                           "(extract(epoch FROM at) * 1000000)::bigint FROM bench_log",
                           &r);
    if (!err.empty()) Die("reading bench_log: " + err);
    for (int i = 0; i < PQntuples(r); ++i) {
      const int64_t id = std::strtoll(PQgetvalue(r, i, 0), nullptr, 10);
      const bool del = PQgetvalue(r, i, 1)[0] == 'D';
      const int64_t ver =
          PQgetisnull(r, i, 2) ? -1 : std::strtoll(PQgetvalue(r, i, 2), nullptr, 10);
      log[id].push_back({del, ver, std::strtoll(PQgetvalue(r, i, 3), nullptr, 10)});
    }
    PQclear(r);
    lat.clear();
    missing = 0;
    for (const auto& ch : changes) {
      int64_t seen = INT64_MAX;
      auto it = log.find(ch.emp_id);
      if (it != log.end()) {
        for (const auto& e : it->second) {
          const bool covers = e.deleted || (ch.op != 'D' && e.version >= ch.version);
          if (covers) seen = std::min(seen, e.at_us);
        }
      }
      if (seen == INT64_MAX) {
        ++missing;
      } else {
        lat.push_back((seen - ch.commit_us) / 1000.0);
      }
    }
    if (missing == 0 || NowUs() - t0 > timeout * 1e6) break;
    usleep(500'000);
  }
  PQfinish(c);
  std::sort(lat.begin(), lat.end());
  std::ofstream f(out);
  char buf[32];
  for (double v : lat) {
    std::snprintf(buf, sizeof buf, "%.3f\n", v);
    f << buf;
  }
  auto pct = [&](double p) {
    if (lat.empty()) return static_cast<double>(NAN);
    size_t i = static_cast<size_t>(std::ceil(p * lat.size())) - 1;
    return lat[std::min(i, lat.size() - 1)];
  };
  size_t negative = std::count_if(lat.begin(), lat.end(), [](double v) { return v < 0; });
  std::printf(
      "count=%zu missing=%zu negative=%zu p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f "
      "max_ms=%.3f\n",
      lat.size(), missing, negative, pct(0.5), pct(0.9), pct(0.99), lat.empty() ? NAN : lat.back());
  return missing == 0 ? 0 : 1;
}

// ---- wrap ------------------------------------------------------------------

pid_t g_child = 0;

void Forward(int sig) {
  if (g_child > 0) kill(g_child, sig);
}

// Runs a command as a child, forwards SIGTERM/SIGINT to it, and once it exits
// writes its peak RSS (ru_maxrss, the kernel's VmHWM at exit) and CPU time.
int Wrap(int argc, char** argv) {
  std::string report;
  int i = 2;
  for (; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--") {
      ++i;
      break;
    }
    if (k == "--report" && i + 1 < argc) {
      report = argv[++i];
    } else {
      Die("wrap: usage: loadgen wrap --report FILE -- COMMAND [ARGS...]");
    }
  }
  if (i >= argc || report.empty()) Die("wrap: usage: loadgen wrap --report FILE -- COMMAND ...");
  struct sigaction sa {};
  sa.sa_handler = Forward;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  const int64_t t0 = NowUs();
  g_child = fork();
  if (g_child < 0) Die("fork failed");
  if (g_child == 0) {
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    execvp(argv[i], argv + i);
    std::fprintf(stderr, "loadgen wrap: cannot run %s: %s\n", argv[i], std::strerror(errno));
    _exit(127);
  }
  int status = 0;
  rusage ru{};
  while (wait4(g_child, &status, 0, &ru) < 0) {
    if (errno != EINTR) Die("wait4 failed");
  }
  const int64_t t1 = NowUs();
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ofstream f(report);
  f << "maxrss_kb=" << ru.ru_maxrss << " user_s=" << ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6
    << " sys_s=" << ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6 << " wall_s=" << (t1 - t0) / 1e6
    << " start_us=" << t0 << " end_us=" << t1 << " exit=" << code << "\n";
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: loadgen steady|burst|sample|harvest|wrap --key value ...\n");
    return 2;
  }
  const std::string mode = argv[1];
  if (mode == "wrap") return Wrap(argc, argv);
  Args a = Parse(argc, argv);
  if (mode == "steady") return Steady(a);
  if (mode == "burst") return Burst(a);
  if (mode == "sample") return Sample(a);
  if (mode == "harvest") return Harvest(a);
  Die("unknown mode " + mode);
}
