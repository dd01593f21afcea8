// End to end: the snapshot (issue 4), driven through the binary as a user
// would. Writers keep writing while a table is copied in many small chunks;
// afterwards the target equals the source row for row. A snapshot killed with
// SIGKILL resumes after its last completed chunk, and the hand-over is still
// exact. Both chunk orders (key order on a primary key; physical ctid ranges
// on the brief's employees table, which has no index at all) and both
// hand-overs (in memory, through the dev broker).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "support/pg_cluster.h"
#include "support/subprocess.h"
#include "support/test_util.h"
#include "support/tunnel_fixture.h"

namespace datatunnel {
namespace {

using testing::Contains;
using testing::Lines;
using testing::SourceCluster;
using testing::Subprocess;
using testing::TargetCluster;
using testing::WaitUntil;

// The brief's employees table with a primary key (key-ordered chunks);
// testing::kEmployeesDdl is the same table without any index (physical chunks).
constexpr const char* kEmployeesPkDdl =
    "CREATE TABLE employees(emp_id SERIAL PRIMARY KEY, first_name VARCHAR(100), "
    "last_name VARCHAR(100), dob DATE, city VARCHAR(100))";

enum class Order { kKey, kPhysical };
enum class Mode { kMemory, kBroker };

// Threads that each run one statement per transaction, made by `gen`, at
// about `rate` statements per second each, until stopped. The pace leaves the
// two cores to the tunnel; it is load shaping, not synchronisation.
class Writers {
 public:
  using Gen = std::function<std::string(std::mt19937&)>;
  Writers(const std::string& db, int threads, int rate, Gen gen) {
    for (int i = 0; i < threads; ++i) {
      threads_.emplace_back([this, db, i, rate, gen] { Loop(db, i, rate, gen); });
    }
  }
  ~Writers() { Stop(); }
  void Stop() {
    stop_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  int64_t committed() const { return committed_.load(); }
  int64_t failed() const { return failed_.load(); }
  std::string last_error() const {
    std::lock_guard<std::mutex> l(mu_);
    return last_error_;
  }

 private:
  void Loop(const std::string& db, int id, int rate, const Gen& gen) {
    std::mt19937 rng(static_cast<unsigned>(NowMicros()) + static_cast<unsigned>(id) * 7919u);
    pg::ConnectOptions o;
    o.dsn = SourceCluster().Dsn(db);
    o.role = "source";
    auto conn = pg::Connection::Open(o);
    if (!conn.ok()) {
      ++failed_;
      std::lock_guard<std::mutex> l(mu_);
      last_error_ = conn.status().message();
      return;
    }
    const int64_t start = MonotonicMicros();
    for (int64_t n = 0; !stop_; ++n) {
      const int64_t due = start + n * 1'000'000 / rate;
      const int64_t now = MonotonicMicros();
      if (now < due) std::this_thread::sleep_for(std::chrono::microseconds(due - now));
      Status st = (*conn)->Exec(gen(rng));
      if (st.ok()) {
        ++committed_;
      } else {
        ++failed_;
        std::lock_guard<std::mutex> l(mu_);
        last_error_ = st.message();
      }
    }
  }

  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> committed_{0}, failed_{0};
  mutable std::mutex mu_;
  std::string last_error_;
};

// Inserts, updates, deletes and key-changing updates on employees. Rows whose
// key is a multiple of 7 among the first `seeded` are never touched, so a test
// can tell whether the snapshot copied one of them again.
Writers::Gen EmployeeWrites(int64_t seeded) {
  return [seeded](std::mt19937& rng) -> std::string {
    int64_t key = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(seeded + seeded / 5));
    if (key % 7 == 0) ++key;
    const unsigned pick = rng() % 20;
    if (pick < 8) {
      return fmt::format(
          "INSERT INTO employees(first_name, last_name, dob, city) VALUES ('w{}', {}, "
          "'1970-01-01'::date + {}, {})",
          rng() % 100000, rng() % 4 == 0 ? "NULL" : "'O''Neil-Zoë'", rng() % 20000,
          rng() % 5 == 0 ? "''" : "'Zürich'");
    }
    if (pick < 13) {
      return fmt::format(
          "UPDATE employees SET city = 'c{}', last_name = coalesce(last_name, '') || 'u' "
          "WHERE emp_id = {}",
          rng() % 1000, key);
    }
    if (pick < 16) return fmt::format("DELETE FROM employees WHERE emp_id = {}", key);
    return fmt::format(
        "UPDATE employees SET emp_id = nextval('employees_emp_id_seq'), city = 'moved' "
        "WHERE emp_id = {}",
        key);
  };
}

// Snapshot bookkeeping of one table, as recorded on the source.
struct SnapState {
  std::string state;
  int64_t rows = 0, total = 0, chunks = 0;
  std::string cursor_kind, cursor_value;  // snapshot_cursor[1], [2]
};

class SnapshotTest : public testing::TunnelFixture {
 protected:
  static constexpr int kChunkRows = 300;
  static constexpr int64_t kRows = 12000;

  // Small chunks, and their progress recorded every 20 ms (the default is
  // 200): the tests hold a snapshot mid-way by the progress it recorded.
  std::string ChunkConfig(int rows = kChunkRows) {
    return fmt::format("[pipeline]\nsnapshot_chunk_rows = {}\nprogress_interval_ms = 20\n", rows);
  }
  // For a test that holds the snapshot still mid-way once it has copied
  // some rows: many chunks, a tick (so a chunk) at most every 20 ms, so the
  // copy takes seconds and is seen running however fast the host copies
  // (12,000 rows in chunks of 100, packed in memory, took 0.13 s on a quiet
  // host, done before the test saw it running).
  std::string HeldChunkConfig(int rows = 100) {
    return ChunkConfig(rows) + "min_tick_interval_ms = 20\n";
  }

  // employees on both sides, `rows` of them on the source.
  void CreateEmployees(Order order, int64_t rows) {
    const char* ddl = order == Order::kKey ? kEmployeesPkDdl : testing::kEmployeesDdl;
    SourceCluster().Exec(src_, ddl);
    TargetCluster().Exec(tgt_, ddl);
    if (rows > 0) {
      SourceCluster().Exec(
          src_, fmt::format("INSERT INTO employees(first_name, last_name, dob, city) SELECT "
                            "'first' || i, CASE WHEN i % 10 = 0 THEN NULL ELSE 'last' || i END, "
                            "'1950-01-01'::date + i % 20000, 'city' || i % 97 "
                            "FROM generate_series(1, {}) i",
                            rows));
    }
  }

  // The config (tables, extra sections), then the broker when asked, then init.
  void Setup(Mode mode, const std::string& tables, const std::string& extra) {
    WriteConfig(tables, extra);
    if (mode == Mode::kBroker) UseKafka();
    auto r = Dt({"init"});
    ASSERT_EQ(r.code, 0) << r.out << r.err;
  }

  // Waits until the snapshot of `table` runs and has delivered `rows` rows.
  bool WaitCopying(int64_t rows, const std::string& table = "employees") {
    return WaitUntil(
        [&] {
          const SnapState s = Snap(table);
          return s.state == "running" && s.rows >= rows;
        },
        60);
  }

  // The state a killed process left, read once its sessions are gone: a
  // statement it sent just before the kill still runs on the server (and an
  // UPDATE recording a chunk's progress commits) after the process died, and
  // a session waiting on a lock ends only once the lock is free. Read too
  // early, the rows done seen here were fewer than the resumed snapshot's.
  SnapState SnapAfterKill(const std::string& table = "employees") {
    EXPECT_TRUE(WaitUntil(
        [&] {
          return SourceCluster().Count(src_,
                                       "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                       "current_database() AND application_name LIKE "
                                       "'datatunnel:%'") == 0;
        },
        30))
        << "the killed process's sessions did not end";
    return Snap(table);
  }

  SnapState Snap(const std::string& table = "employees") {
    if (!poll_ || poll_->IsBroken()) poll_ = SourceCluster().Connect(src_);
    SnapState s;
    if (!poll_) return s;
    auto r = poll_->Query(
        "SELECT snapshot_state, snapshot_rows, snapshot_total, snapshot_chunks, "
        "COALESCE(snapshot_cursor[1], ''), COALESCE(snapshot_cursor[2], '') "
        "FROM datatunnel.tables WHERE table_name = $1",
        {table});
    EXPECT_TRUE(r.ok()) << r.status().message();
    if (!r.ok() || r->rows() != 1) return s;
    s.state = std::string(r->Get(0, 0));
    s.rows = r->GetInt64(0, 1);
    s.total = r->GetInt64(0, 2);
    s.chunks = r->GetInt64(0, 3);
    s.cursor_kind = std::string(r->Get(0, 4));
    s.cursor_value = std::string(r->Get(0, 5));
    return s;
  }

  // Every row of `table` on both sides, compared; lists the first differences.
  void ExpectSameRows(const std::string& table, const std::string& order) {
    const std::string a = TableText(SourceCluster(), src_, table, order);
    const std::string b = TableText(TargetCluster(), tgt_, table, order);
    if (a == b) return;
    const auto la = Lines(a), lb = Lines(b);
    const std::set<std::string> sa(la.begin(), la.end()), sb(lb.begin(), lb.end());
    std::string only_source, only_target;
    int shown = 0;
    for (const auto& l : la) {
      if (!sb.count(l) && shown++ < 10) only_source += "  " + l + "\n";
    }
    shown = 0;
    for (const auto& l : lb) {
      if (!sa.count(l) && shown++ < 10) only_target += "  " + l + "\n";
    }
    ADD_FAILURE() << table << " differs: " << la.size() << " rows on the source, " << lb.size()
                  << " on the target\nonly on the source:\n"
                  << only_source << "only on the target:\n"
                  << only_target;
  }

  std::unique_ptr<pg::Connection> poll_;
};

// ---- Writers during the whole snapshot -------------------------------------

struct Variant {
  Order order;
  Mode mode;
  bool use_run;  // `run` (snapshot, then stream) instead of `snapshot`, then `run`
};

std::string Describe(const Variant& v) {
  return fmt::format("{}Order{}{}", v.order == Order::kKey ? "Key" : "Physical",
                     v.mode == Mode::kMemory ? "InMemory" : "ThroughBroker",
                     v.use_run ? "WithRun" : "WithSnapshot");
}
void PrintTo(const Variant& v, std::ostream* os) { *os << Describe(v); }
std::string VariantName(const ::testing::TestParamInfo<Variant>& info) {
  return Describe(info.param);
}

class ConcurrentSnapshotTest : public SnapshotTest,
                               public ::testing::WithParamInterface<Variant> {};

TEST_P(ConcurrentSnapshotTest, WritersDuringTheSnapshotThenTargetEqualsSource) {
  const Variant v = GetParam();
  CreateEmployees(v.order, kRows);
  // Ticks at least 10 ms apart: the 40 chunks take 0.4 s or more, so the
  // writers (300 a second) commit during the snapshot however fast the
  // machine copies (a fast host finished it in 60 ms, with 18 writes).
  Setup(v.mode, testing::kEmployeesTable, ChunkConfig() + "min_tick_interval_ms = 10\n");
  Writers writers(src_, 2, 150, EmployeeWrites(kRows));
  ASSERT_TRUE(WaitUntil([&] { return writers.committed() >= 20; }, 20)) << writers.last_error();

  auto proc = Start({v.use_run ? "run" : "snapshot"});
  // Writes committed while chunks were being read.
  int64_t at_start = -1, at_done = -1;
  ASSERT_TRUE(WaitUntil(
      [&] {
        const SnapState s = Snap();
        if (s.state != "none" && at_start < 0) at_start = writers.committed();
        return s.state == "done";
      },
      90))
      << proc->Stderr();
  at_done = writers.committed();
  const SnapState done = Snap();
  EXPECT_GE(done.chunks, 10) << "the snapshot should take many chunks";
  EXPECT_GE(at_done - at_start, 20) << "writers should keep writing during the snapshot";
  if (!v.use_run) {
    auto rc = proc->Wait(60);
    ASSERT_TRUE(rc.has_value()) << "snapshot did not exit\n" << proc->Stderr();
    EXPECT_EQ(*rc, 0) << proc->Stderr();
    EXPECT_TRUE(Contains(proc->Stderr(), "snapshot complete: 1 table(s) copied")) << proc->Stderr();
  } else {
    EXPECT_TRUE(Contains(proc->Stderr(), "snapshot of public.employees: requested"))
        << "run on a never-snapshotted target snapshots first\n"
        << proc->Stderr();
  }
  // Changes after the snapshot's point stream afterwards.
  ASSERT_TRUE(WaitUntil([&] { return writers.committed() >= at_done + 30; }, 20));
  writers.Stop();
  EXPECT_EQ(writers.failed(), 0) << writers.last_error();
  if (!v.use_run) {
    // The target is in sync with the snapshot: `run` goes straight to streaming.
    proc = Start({"run"});
  }
  ExpectInSync();
  ExpectSameRows("employees", "emp_id, first_name");
  EXPECT_EQ(proc->Stop(), 0) << proc->Stderr();
  if (!v.use_run) {
    EXPECT_FALSE(Contains(proc->Stderr(), "snapshot of public.employees: requested"))
        << proc->Stderr();
  }
}

INSTANTIATE_TEST_SUITE_P(Snapshot, ConcurrentSnapshotTest,
                         ::testing::Values(Variant{Order::kKey, Mode::kMemory, false},
                                           Variant{Order::kKey, Mode::kBroker, true},
                                           Variant{Order::kPhysical, Mode::kMemory, true},
                                           Variant{Order::kPhysical, Mode::kBroker, false}),
                         VariantName);

// ---- kill -9 mid-snapshot ---------------------------------------------------

// Holds a snapshot still: its next chunk waits for an ACCESS EXCLUSIVE lock.
// Connected up front, so Hold() is one round trip after the wait that calls
// it (a connection opened there gave a fast snapshot time to finish).
class SourceTableLock {
 public:
  SourceTableLock(const std::string& db, std::string table)
      : conn_(SourceCluster().Connect(db)), table_(std::move(table)) {}
  void Hold() {
    Status st = conn_->Exec("BEGIN; LOCK TABLE " + table_ + " IN ACCESS EXCLUSIVE MODE");
    EXPECT_TRUE(st.ok()) << st.message();
  }
  // Runs `sql` in the transaction that holds the lock.
  void Run(const std::string& sql) {
    Status st = conn_->Exec(sql);
    EXPECT_TRUE(st.ok()) << st.message();
  }
  ~SourceTableLock() { Release(); }
  void Release() {
    if (conn_) {
      EXPECT_TRUE(conn_->Exec("COMMIT").ok());
    }
    conn_.reset();
  }

 private:
  std::unique_ptr<pg::Connection> conn_;
  std::string table_;
};

class KilledSnapshotTest : public SnapshotTest, public ::testing::WithParamInterface<Variant> {};

TEST_P(KilledSnapshotTest, ResumesAfterTheLastCompletedChunk) {
  const Variant v = GetParam();
  CreateEmployees(v.order, kRows);
  Setup(v.mode, testing::kEmployeesTable, HeldChunkConfig());  // held mid-way
  Writers writers(src_, 2, 150, EmployeeWrites(kRows));
  ASSERT_TRUE(WaitUntil([&] { return writers.committed() >= 20; }, 20)) << writers.last_error();

  SourceTableLock lock(src_, "employees");
  auto first = Start({"snapshot"});
  ASSERT_TRUE(WaitCopying(kChunkRows)) << first->Stderr();
  // Hold it still mid-way (its next chunk waits for the lock), kill it there.
  lock.Hold();
  ASSERT_EQ(Snap().state, "running") << "the snapshot ended before it was held";
  first->Signal(SIGKILL);
  ASSERT_EQ(first->Wait(10), 128 + SIGKILL);
  lock.Release();
  const SnapState killed = SnapAfterKill();
  ASSERT_EQ(killed.state, "running");
  ASSERT_GT(killed.rows, 0);

  // A row of a completed chunk that no writer touches, changed on the target
  // behind the tunnel's back: a snapshot that resumes leaves it so, one that
  // started over would copy it again.
  std::string copied;
  if (killed.cursor_kind == "key") {
    copied = fmt::format("emp_id <= {}", killed.cursor_value);
  } else {
    ASSERT_EQ(killed.cursor_kind, "page");
    copied = fmt::format("(ctid::text::point)[0] < {}", killed.cursor_value);
  }
  const std::string candidates =
      SourceCluster()
          .Scalar(src_, fmt::format("SELECT string_agg(emp_id::text, ',' ORDER BY emp_id) FROM "
                                    "employees WHERE emp_id % 7 = 0 AND emp_id <= {} AND {}",
                                    kRows, copied))
          .value_or("");
  ASSERT_FALSE(candidates.empty()) << "no copied row to mark (cursor " << killed.cursor_kind << " "
                                   << killed.cursor_value << ")";
  const std::string find_marked =
      fmt::format("SELECT min(emp_id) FROM employees WHERE emp_id IN ({})", candidates);
  std::optional<std::string> marked = TargetCluster().Scalar(tgt_, find_marked);
  if (v.mode == Mode::kBroker) {
    // Completed chunks are in the topic; a consumer alone applies them.
    auto drain = Start({"consume"});
    // The killed snapshot's own consumer may have applied it already; stop
    // this one only once it runs (a SIGTERM before its start-up is a death
    // by signal, not a stop).
    EXPECT_TRUE(WaitUntil([&] { return Contains(drain->Stderr(), "consumer: applying"); }, 60))
        << drain->Stderr();
    EXPECT_TRUE(WaitUntil(
        [&] { return (marked = TargetCluster().Scalar(tgt_, find_marked)).has_value(); }, 60))
        << drain->Stderr();
    EXPECT_EQ(drain->Stop(), 0) << drain->Stderr();
  }
  ASSERT_TRUE(marked.has_value()) << "no row of a completed chunk reached the target";
  TargetCluster().Exec(
      tgt_, fmt::format("UPDATE employees SET city = 'left alone' WHERE emp_id = {}", *marked));

  auto second = Start({v.use_run ? "run" : "snapshot"});
  ASSERT_TRUE(WaitUntil([&] { return Snap().state == "done"; }, 90)) << second->Stderr();
  if (!v.use_run) {
    auto rc = second->Wait(60);
    ASSERT_TRUE(rc.has_value()) << second->Stderr();
    EXPECT_EQ(*rc, 0) << second->Stderr();
  }
  EXPECT_TRUE(Contains(second->Stderr(),
                       fmt::format("snapshot of public.employees: resuming ({} of about {} rows "
                                   "done)",
                                   killed.rows, killed.total)))
      << second->Stderr();
  EXPECT_FALSE(Contains(second->Stderr(), "snapshot of public.employees: requested"))
      << second->Stderr();
  // In memory, rows are applied before their chunk counts as done; through
  // the broker, `snapshot` returns once the target applied the end marker.
  EXPECT_EQ(TargetCluster().Scalar(tgt_, "SELECT city FROM employees WHERE emp_id = " + *marked),
            "left alone")
      << "a row copied before the kill was copied again: the snapshot started over";
  // Put the marked row back as the source has it, then the hand-over must be exact.
  const auto city =
      SourceCluster().Scalar(src_, "SELECT city FROM employees WHERE emp_id = " + *marked);
  TargetCluster().Exec(tgt_, fmt::format("UPDATE employees SET city = {} WHERE emp_id = {}",
                                         city ? "'" + *city + "'" : "NULL", *marked));
  ASSERT_TRUE(WaitUntil([&] { return writers.committed() >= 30; }, 20));
  writers.Stop();
  EXPECT_EQ(writers.failed(), 0) << writers.last_error();
  if (!v.use_run) second = Start({"run"});
  ExpectInSync();
  ExpectSameRows("employees", "emp_id, first_name");
  EXPECT_EQ(second->Stop(), 0) << second->Stderr();
}

INSTANTIATE_TEST_SUITE_P(Snapshot, KilledSnapshotTest,
                         ::testing::Values(Variant{Order::kKey, Mode::kMemory, true},
                                           Variant{Order::kPhysical, Mode::kBroker, false},
                                           // Chunks as COPY text per partition (issue 16).
                                           Variant{Order::kKey, Mode::kBroker, false}),
                         VariantName);

// ---- Edge tables ------------------------------------------------------------

// One table with a primary key, one without any index.
constexpr const char* kTwoTables =
    "[[tables]]\nsource = \"public.with_key\"\n"
    "[[tables]]\nsource = \"public.no_index\"\nkey = [\"id\"]\n";

class SmallTableTest : public SnapshotTest, public ::testing::WithParamInterface<Mode> {
 protected:
  void CreateTables() {
    OnBothSides(
        "CREATE TABLE with_key(id int PRIMARY KEY, v text);CREATE TABLE no_index(id int, v text)");
  }
  void SnapshotAndCompare(int64_t expected_rows) {
    auto r = Dt({"snapshot"}, 90);
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_TRUE(Contains(r.err, "snapshot complete: 2 table(s) copied")) << r.err;
    for (const char* t : {"with_key", "no_index"}) {
      const SnapState s = Snap(t);
      EXPECT_EQ(s.state, "done") << t;
      EXPECT_EQ(s.rows, expected_rows) << t;
      ExpectSameRows(t, "id, v");
    }
    auto status = Dt({"status", "--json"});
    EXPECT_EQ(status.code, 0) << status.err;
    EXPECT_TRUE(Contains(
        status.out, fmt::format("\"snapshot\":{{\"state\":\"done\",\"rows\":{},", expected_rows)))
        << status.out;
    // Afterwards `run` streams (no second snapshot).
    SourceCluster().Exec(src_,
                         "INSERT INTO with_key VALUES (2, 'after'), (3, NULL);"
                         "INSERT INTO no_index VALUES (2, 'after'), (3, '');"
                         "UPDATE with_key SET v = 'changed' WHERE id = 1;"
                         "DELETE FROM no_index WHERE id = 1");
    auto run = Start({"run"});
    ExpectInSync();
    ExpectSameRows("with_key", "id, v");
    ExpectSameRows("no_index", "id, v");
    EXPECT_EQ(run->Stop(), 0) << run->Stderr();
    EXPECT_FALSE(Contains(run->Stderr(), "requested")) << run->Stderr();
  }
};

TEST_P(SmallTableTest, EmptyTables) {
  CreateTables();
  Setup(GetParam(), kTwoTables, ChunkConfig(2));
  SnapshotAndCompare(0);
}

TEST_P(SmallTableTest, OneRowTables) {
  CreateTables();
  SourceCluster().Exec(src_,
                       "INSERT INTO with_key VALUES (1, 'only');"
                       "INSERT INTO no_index VALUES (1, 'only')");
  Setup(GetParam(), kTwoTables, ChunkConfig(1));
  SnapshotAndCompare(1);
}

INSTANTIATE_TEST_SUITE_P(Snapshot, SmallTableTest, ::testing::Values(Mode::kMemory, Mode::kBroker),
                         [](const ::testing::TestParamInfo<Mode>& info) {
                           return info.param == Mode::kMemory ? "InMemory" : "ThroughBroker";
                         });

// Keys that are awkward as text and as a text[] cursor: empty, blanks,
// quotes, commas, braces, backslashes, the word NULL, unicode, control
// characters. Chunks of 7 rows put the cursor on many of them; the kill makes
// the resumed snapshot read its cursor back from the database.
const std::vector<std::string> kAwkwardKeys = {
    "",    " ",   "  x",    "a",    "A",         "a b",       "a,b",         "{a}",   "{",
    "}",   "\"",  "\"q\"",  "NULL", "null",      "\\",        "back\\slash", "it's",  "Zoë",
    "zoe", "ÄÖÜ", "日本語", "🚀",    "tab\there", "new\nline", "k,\"{x}\"",   "(1,2)", "'"};

std::string Dollar(const std::string& s) { return "$q$" + s + "$q$"; }

TEST_F(SnapshotTest, TextKeyKilledAndResumed) {
  OnBothSides("CREATE TABLE tags(code text PRIMARY KEY, n int, note text)");
  std::string values;
  const int seeded = 1500;
  for (int i = 0; i < seeded; ++i) {
    const std::string& k = kAwkwardKeys[i % kAwkwardKeys.size()];
    const std::string code =
        i < static_cast<int>(kAwkwardKeys.size()) ? k : fmt::format("{}{}", k, i);
    values += fmt::format("{}({}, {}, 'n{}')", values.empty() ? "" : ",", Dollar(code), i, i);
  }
  SourceCluster().Exec(src_, "INSERT INTO tags VALUES " + values);
  Setup(Mode::kMemory, "[[tables]]\nsource = \"public.tags\"\n", HeldChunkConfig(7));
  const auto n = kAwkwardKeys.size();
  Writers writers(src_, 2, 100, [n, seeded](std::mt19937& rng) -> std::string {
    const size_t i = rng() % seeded;
    const std::string code =
        Dollar(i < n ? kAwkwardKeys[i] : kAwkwardKeys[i % n] + std::to_string(i));
    switch (rng() % 4) {
      case 0:
        return fmt::format("INSERT INTO tags VALUES ({}, 0, 'new') ON CONFLICT DO NOTHING",
                           Dollar(kAwkwardKeys[rng() % n] + "w" + std::to_string(rng())));
      case 1:
        return fmt::format("UPDATE tags SET n = n + 1, note = note || ',' WHERE code = {}", code);
      case 2:
        return fmt::format("DELETE FROM tags WHERE code = {}", code);
      default:
        return fmt::format("UPDATE tags SET code = code || '~' || {} WHERE code = {}", rng(), code);
    }
  });
  SourceTableLock lock(src_, "tags");
  auto first = Start({"snapshot"});
  ASSERT_TRUE(WaitCopying(100, "tags")) << first->Stderr();
  lock.Hold();
  ASSERT_EQ(Snap("tags").state, "running") << "the snapshot ended before it was held";
  first->Signal(SIGKILL);
  ASSERT_EQ(first->Wait(10), 128 + SIGKILL);
  lock.Release();
  const SnapState killed = SnapAfterKill("tags");
  ASSERT_EQ(killed.state, "running");
  auto second = Start({"run"});
  ASSERT_TRUE(WaitUntil([&] { return Snap("tags").state == "done"; }, 90)) << second->Stderr();
  EXPECT_TRUE(Contains(second->Stderr(),
                       fmt::format("snapshot of public.tags: resuming ({} of", killed.rows)))
      << second->Stderr();
  writers.Stop();
  ExpectInSync();
  ExpectSameRows("tags", "code COLLATE \"C\"");
  EXPECT_EQ(second->Stop(), 0) << second->Stderr();
}

// A table rewritten mid-snapshot (CLUSTER here; VACUUM FULL and rewriting
// ALTER TABLEs alike) has its rows on other pages: a page cursor would skip
// rows that moved below it. The physical-order snapshot notices the new
// relation file and copies the table again from its first page.
TEST_F(SnapshotTest, PhysicalOrderSurvivesATableRewrite) {
  // Rows stored in descending key order; CLUSTER on the (non-unique) key
  // index turns the table around, so the rows from its last pages, not
  // copied yet, land on the first pages, below the cursor.
  SourceCluster().Exec(
      src_,
      fmt::format("{}; INSERT INTO employees(emp_id, first_name, city) SELECT i, 'first' || "
                  "i, 'city' || i % 97 FROM generate_series({}, 1, -1) i; "
                  "CREATE INDEX employees_emp_id_idx ON employees (emp_id); ANALYZE employees",
                  testing::kEmployeesDdl, kRows));
  TargetCluster().Exec(tgt_, testing::kEmployeesDdl);
  Setup(Mode::kMemory, testing::kEmployeesTable, HeldChunkConfig());  // held mid-way

  SourceTableLock lock(src_, "employees");
  auto proc = Start({"snapshot"});
  ASSERT_TRUE(WaitCopying(100)) << proc->Stderr();
  lock.Hold();
  const SnapState held = Snap();
  ASSERT_EQ(held.state, "running") << "the snapshot ended before it was held";
  ASSERT_EQ(held.cursor_kind, "page");
  lock.Run("CLUSTER employees USING employees_emp_id_idx");
  lock.Release();

  ASSERT_TRUE(WaitUntil([&] { return Snap().state == "done"; }, 90)) << proc->Stderr();
  auto rc = proc->Wait(60);
  ASSERT_TRUE(rc.has_value()) << proc->Stderr();
  EXPECT_EQ(*rc, 0) << proc->Stderr();
  EXPECT_TRUE(Contains(proc->Stderr(), "was rewritten")) << proc->Stderr();
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), kRows);
  ExpectSameRows("employees", "emp_id");
}

// A page cursor recorded without the table's file (by an older datatunnel)
// cannot tell whether the table was rewritten since: the snapshot resumes
// from the first page instead, and every row arrives.
TEST_F(SnapshotTest, PageCursorWithoutAFileStartsOver) {
  CreateEmployees(Order::kPhysical, kRows);
  Setup(Mode::kMemory, testing::kEmployeesTable, HeldChunkConfig());  // held mid-way
  SourceTableLock lock(src_, "employees");
  auto first = Start({"snapshot"});
  ASSERT_TRUE(WaitCopying(100)) << first->Stderr();
  lock.Hold();
  first->Signal(SIGKILL);
  ASSERT_EQ(first->Wait(10), 128 + SIGKILL);
  lock.Release();
  ASSERT_EQ(Snap().state, "running");
  SourceCluster().Exec(src_,
                       "UPDATE datatunnel.tables SET snapshot_cursor = snapshot_cursor[1:2] "
                       "WHERE table_name = 'employees'");
  TargetCluster().Exec(tgt_, "TRUNCATE employees");  // rows copied before: only a restart has them
  auto r = Dt({"snapshot"}, 90);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(Contains(r.err, "does not name the table's file")) << r.err;
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), kRows);
  ExpectSameRows("employees", "emp_id");
}

// A chunk is handed over as the COPY text the source sent (in memory whole,
// through the broker one message per partition, issue 16 item 8). A target
// laid out differently (its own column order, a generated column) takes it
// row by row instead; the rows arrive all the same.
class LayoutTest : public SnapshotTest, public ::testing::WithParamInterface<Mode> {};

TEST_P(LayoutTest, IntoATargetLaidOutDifferently) {
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name, last_name, dob, city) SELECT 'f' || i, "
                       "CASE WHEN i % 10 = 0 THEN NULL ELSE E'tab\\there\\\\' END, "
                       "'1950-01-01'::date + i, 'c' || i % 7 FROM generate_series(1, 3000) i");
  TargetCluster().Exec(tgt_,
                       "CREATE TABLE employees(city VARCHAR(100), emp_id integer PRIMARY KEY, "
                       "dob DATE, last_name VARCHAR(100), first_name VARCHAR(100), initial text "
                       "GENERATED ALWAYS AS (left(first_name, 1)) STORED)");
  Setup(GetParam(), testing::kEmployeesTable, ChunkConfig());
  auto r = Dt({"snapshot"}, 90);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), 3000);
  ExpectSameRows("(SELECT emp_id, first_name, last_name, dob, city FROM employees)", "emp_id");
  EXPECT_EQ(TargetCluster().Scalar(tgt_, "SELECT initial FROM employees WHERE emp_id = 7"), "f");
  if (GetParam() == Mode::kBroker) {
    // The rows went as chunks, not one message each.
    auto topic = testing::RunCommand(
        {"/usr/bin/kcat", "-C", "-b", bootstrap_, "-t", Topic("public.employees"), "-o",
         "beginning", "-e", "-q", "-f", "%s\n"},
        {}, 30);
    ASSERT_EQ(topic.code, 0) << topic.err;
    EXPECT_TRUE(Contains(topic.out, "{\"chunk\":1,\"op\":\"r\",\"rows\":"))
        << topic.out.substr(0, 500);
    EXPECT_FALSE(Contains(topic.out, "\"op\":\"r\",\"ts_ms\"")) << "a snapshot row as an envelope";
  }
}

INSTANTIATE_TEST_SUITE_P(Snapshot, LayoutTest, ::testing::Values(Mode::kMemory, Mode::kBroker),
                         [](const ::testing::TestParamInfo<Mode>& info) {
                           return info.param == Mode::kMemory ? "InMemory" : "ThroughBroker";
                         });

// A partitioned table has no pages of its own: without a unique index on the
// key it is still read whole (in key order), across its partitions.
TEST_F(SnapshotTest, PartitionedTableWithoutAUniqueIndex) {
  SourceCluster().Exec(src_,
                       "CREATE TABLE pt(id int, v text) PARTITION BY RANGE (id);"
                       "CREATE TABLE pt_low PARTITION OF pt FOR VALUES FROM (0) TO (5000);"
                       "CREATE TABLE pt_high PARTITION OF pt FOR VALUES FROM (5000) TO (100000);"
                       "INSERT INTO pt SELECT i, 'v' || i FROM generate_series(1, 12000) i;"
                       "ANALYZE pt");
  Setup(Mode::kMemory, "[[tables]]\nsource = \"public.pt\"\nkey = [\"id\"]\n", ChunkConfig());
  auto r = Dt({"snapshot"}, 90);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(Contains(r.err, "partitioned table without a unique index")) << r.err;
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM pt"), 12000);
  ExpectSameRows("pt", "id");
}

// A table never analyzed (reltuples -1, as after a bulk load) larger than
// the sample: its size for progress is sampled, not counted, and close.
TEST_F(SnapshotTest, SizeOfANeverAnalyzedTableIsSampled) {
  constexpr int64_t kBig = 300000;  // about 2,500 pages: above the 1,000 sampled
  SourceCluster().Exec(src_, kEmployeesPkDdl);
  TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  SourceCluster().Exec(src_, "ALTER TABLE employees SET (autovacuum_enabled = false)");
  SourceCluster().Exec(
      src_,
      fmt::format("INSERT INTO employees(first_name, last_name, dob, city) SELECT "
                  "'first' || i, 'last' || i, '1950-01-01'::date + i % 20000, 'city' || i % 97 "
                  "FROM generate_series(1, {}) i",
                  kBig));
  ASSERT_EQ(SourceCluster().Count(src_,
                                  "SELECT c.reltuples::bigint FROM pg_class c "
                                  "WHERE c.oid = 'employees'::regclass"),
            -1)
      << "the table should never have been analyzed";
  ASSERT_GT(SourceCluster().Count(src_, "SELECT pg_relation_size('employees') / 8192"), 1000);
  Setup(Mode::kMemory, testing::kEmployeesTable, "");
  auto r = Dt({"snapshot"}, 120);
  ASSERT_EQ(r.code, 0) << r.err;
  const SnapState s = Snap();
  EXPECT_EQ(s.state, "done");
  EXPECT_EQ(s.rows, kBig);
  EXPECT_GT(s.total, kBig * 9 / 10) << "sampled estimate too far off";
  EXPECT_LT(s.total, kBig * 11 / 10) << "sampled estimate too far off";
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), kBig);
}

// `snapshot` beside a running in-memory tunnel: the tunnel holding the
// producer lock copies the table; `snapshot` waits for it and exits.
TEST_F(SnapshotTest, SnapshotBesideARunningTunnelWaitsForIt) {
  CreateEmployees(Order::kKey, 3000);
  Setup(Mode::kMemory, testing::kEmployeesTable, ChunkConfig());
  auto run = Start({"run"});
  ExpectInSync();
  TargetCluster().Exec(tgt_, "UPDATE employees SET city = 'drifted' WHERE emp_id <= 10");
  auto r = Dt({"snapshot", "--restart", "--truncate-target"}, 60);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(Contains(r.err, "the tunnel already running copied")) << r.err;
  ExpectSameRows("employees", "emp_id");
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
}

// ---- A target that already holds rows --------------------------------------

// One clear line on stderr, starting "datatunnel: error: ".
void ExpectOneErrorLine(const testing::RunResult& r, int code, const std::string& fragment) {
  EXPECT_EQ(r.code, code) << r.out << r.err;
  EXPECT_TRUE(Contains(r.err, fragment)) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("datatunnel: error: ", 0), 0u) << r.err;
}

TEST_F(SnapshotTest, RefusesATargetWithRowsUnlessAllowedToEmptyIt) {
  CreateEmployees(Order::kKey, 100);
  TargetCluster().Exec(tgt_, "INSERT INTO employees VALUES (5000, 'only on the target')");
  Setup(Mode::kMemory, testing::kEmployeesTable, "");
  const char* refusal = "target table public.employees already holds rows";
  ExpectOneErrorLine(Dt({"snapshot"}), 2, refusal);
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), 1);
  EXPECT_EQ(Snap().state, "none");
  // `run` on a never-snapshotted target that holds rows refuses the same way.
  auto run = Start({"run"});
  auto rc = run->Wait(30);
  ASSERT_TRUE(rc.has_value()) << "run did not refuse\n" << run->Stderr();
  EXPECT_EQ(*rc, 2) << run->Stderr();
  EXPECT_TRUE(Contains(run->Stderr(), refusal)) << run->Stderr();
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), 1);

  auto r = Dt({"snapshot", "--truncate-target"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(Contains(r.err, "emptied target table public.employees")) << r.err;
  ExpectSameRows("employees", "emp_id");

  // Once copied, the target holds rows: a new snapshot refuses again, unless
  // the configuration allows emptying it.
  TargetCluster().Exec(tgt_, "UPDATE employees SET city = 'stale'");
  ExpectOneErrorLine(Dt({"snapshot"}), 2, refusal);
  WriteConfig(testing::kEmployeesTable, "[pipeline]\ntruncate_target = true\n");
  r = Dt({"snapshot"});
  ASSERT_EQ(r.code, 0) << r.err;
  ExpectSameRows("employees", "emp_id");
}

// ---- Progress -----------------------------------------------------------------

class ProgressTest : public SnapshotTest {
 protected:
  // Starts `snapshot` (argv through `wrap`) and returns once it copied some
  // chunks and is held still by `lock_`.
  std::unique_ptr<Subprocess> StartHeld(std::vector<std::string> argv) {
    CreateEmployees(Order::kKey, 20000);
    Setup(Mode::kMemory, testing::kEmployeesTable, HeldChunkConfig());
    lock_ = std::make_unique<SourceTableLock>(src_, "employees");
    auto p = std::make_unique<Subprocess>(std::move(argv));
    EXPECT_TRUE(WaitUntil(
        [&] {
          const SnapState s = Snap();
          return s.state == "running" && s.rows > 0;
        },
        60))
        << p->Stderr() << p->Stdout();
    lock_->Hold();
    EXPECT_EQ(Snap().state, "running") << "the snapshot ended before it was held";
    return p;
  }
  void ReleaseAndFinish(Subprocess& p) {
    lock_->Release();
    auto rc = p.Wait(60);
    ASSERT_TRUE(rc.has_value()) << p.Stderr();
    EXPECT_EQ(*rc, 0) << p.Stderr() << p.Stdout();
    ExpectSameRows("employees", "emp_id");
  }
  std::unique_ptr<SourceTableLock> lock_;
};

TEST_F(ProgressTest, StatusShowsSnapshotProgress) {
  auto p = StartHeld(Args({"snapshot", "--status-interval", "1"}));
  // The rows recorded so far, as `status` and `status --json` show them.
  SnapState s;
  std::string text, json;
  EXPECT_TRUE(WaitUntil(
      [&] {
        s = Snap();
        text = Dt({"status"}).out;
        json = Dt({"status", "--json"}).out;
        return Contains(text, fmt::format("running {}/{} rows", s.rows, s.total)) &&
               Contains(json, fmt::format("\"snapshot\":{{\"state\":\"running\",\"rows\":{},"
                                          "\"total\":{}}}",
                                          s.rows, s.total));
      },
      20))
      << text << json;
  EXPECT_EQ(s.total, 20000);
  EXPECT_GT(s.rows, 0);
  EXPECT_LT(s.rows, 20000);
  // Not on a terminal, with --status-interval: plain log lines with progress.
  EXPECT_TRUE(WaitUntil([&] { return Contains(p->Stderr(), "| snapshot "); }, 10)) << p->Stderr();
  for (const auto& line : Lines(p->Stderr())) {
    if (!Contains(line, "| snapshot ")) continue;
    EXPECT_TRUE(Contains(line, " info ")) << line;
    EXPECT_TRUE(Contains(line, "% ")) << line;
    EXPECT_FALSE(Contains(line, "\r")) << line;
    EXPECT_FALSE(Contains(line, "\033")) << line;
  }
  ReleaseAndFinish(*p);
}

// Not on a terminal: a plain log line every few seconds, no redraws.
TEST_F(ProgressTest, PlainProgressLineByDefaultWhenNotOnATerminal) {
  auto p = StartHeld(Args({"snapshot"}));
  EXPECT_TRUE(WaitUntil([&] { return Contains(p->Stderr(), "| snapshot "); }, 20)) << p->Stderr();
  bool progress = false;
  for (const auto& line : Lines(p->Stderr())) {
    progress = progress || (Contains(line, "%") && Contains(line, "rows"));
    EXPECT_FALSE(Contains(line, "\r")) << line;
  }
  EXPECT_TRUE(progress) << p->Stderr();
  ReleaseAndFinish(*p);
}

TEST_F(ProgressTest, ProgressBarOnATerminal) {
  // script(1) gives the command a terminal; its output arrives on script's stdout.
  std::string cmd;
  for (const auto& a : Args({"snapshot"})) cmd += "'" + a + "' ";
  auto p = StartHeld({"/usr/bin/script", "-qefc", cmd, "/dev/null"});
  EXPECT_TRUE(WaitUntil([&] { return Contains(p->Stdout(), "\r\033[K"); }, 15)) << p->Stdout();
  const std::string out = p->Stdout();
  const size_t bar = out.find("\r\033[K");
  ASSERT_NE(bar, std::string::npos) << out;
  const std::string drawn = out.substr(bar, out.find('\r', bar + 1) - bar);
  EXPECT_TRUE(Contains(drawn, "| snapshot ")) << drawn;
  EXPECT_TRUE(Contains(drawn, "/20k rows")) << drawn;
  EXPECT_TRUE(Contains(drawn, "%")) << drawn;
  ReleaseAndFinish(*p);
}

}  // namespace
}  // namespace datatunnel
