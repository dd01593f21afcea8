// Faults injected through pg::FaultHook (pg/connection.h) at the two moments
// the exactly-once argument rests on, with real PostgreSQL and Kafka: a
// target COMMIT whose outcome is unknown, and a producer that dies after
// recording a tick but before sending any of it. The worker under test runs
// in this process (the hook is process-wide); the other side runs as the
// datatunnel binary.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>

#include "capture/install.h"
#include "capture/snapshot_state.h"
#include "config/config.h"
#include "metrics/metrics.h"
#include "support/pg_fault.h"
#include "support/test_util.h"
#include "support/tunnel_fixture.h"
#include "tunnel/kafka_sink.h"
#include "tunnel/source_worker.h"
#include "tunnel/target_worker.h"

namespace datatunnel {
namespace {

using testing::Contains;
using testing::ScopedFaultHook;
using testing::SourceCluster;
using testing::StatementFault;
using testing::Subprocess;
using testing::TargetCluster;
using testing::WaitUntil;

class FaultTest : public testing::TunnelFixture {
 protected:
  void SetUp() override {
    TunnelFixture::SetUp();
    SourceCluster().Exec(src_, testing::kEmployeesDdl);
    TargetCluster().Exec(tgt_, testing::kEmployeesDdl);
    UseKafka();
    ASSERT_EQ(Dt({"init"}).code, 0);
    auto config = LoadConfig(config_, {}, {});
    ASSERT_TRUE(config.ok()) << config.status().message();
    config_loaded_ = std::move(*config);
  }

  std::string Rows(testing::PgCluster& c, const std::string& db) {
    return TableText(c, db, "employees", "emp_id");
  }
  // Changes the target recorded as applied (each counted once, when its
  // batch committed), over all partitions.
  int64_t AppliedCount() {
    return TargetCluster().Count(tgt_,
                                 "SELECT COALESCE(sum(applied_count), 0) FROM "
                                 "datatunnel.applied");
  }
  metrics::Metrics NewMetrics() {
    return metrics::Metrics(
        std::vector<std::pair<std::string, std::string>>{{"public.employees", "public.employees"}});
  }

  // The options `consume` and `produce` would run their workers with.
  tunnel::TargetOptions TargetWorkerOptions() const {
    tunnel::TargetOptions o;
    o.connect.dsn = config_loaded_.target.dsn;
    o.connect.role = "target";
    o.tunnel = config_loaded_.tunnel.name;
    o.tables = config_loaded_.tables;
    o.pipeline = config_loaded_.pipeline;
    o.kafka = config_loaded_.kafka;
    return o;
  }
  tunnel::SourceOptions SourceWorkerOptions() const {
    tunnel::SourceOptions o;
    o.connect.dsn = config_loaded_.source.dsn;
    o.connect.role = "source";
    o.tunnel = config_loaded_.tunnel.name;
    o.tables = config_loaded_.tables;
    o.pipeline = config_loaded_.pipeline;
    return o;
  }

  Config config_loaded_;
};

// A source worker and its Kafka sink, run on a thread: the producer process.
// Metrics for the tunnel's tables (`tables`).
std::vector<std::pair<std::string, std::string>> MetricTables(
    const std::vector<TableConfig>& tables) {
  std::vector<std::pair<std::string, std::string>> names;
  for (const auto& t : tables) names.emplace_back(t.source.ToString(), t.target.ToString());
  return names;
}

// `wrap` (optional) puts a sink of the test's own in front of the Kafka sink.
struct Producer {
  using Wrap = std::function<std::unique_ptr<tunnel::ChangeSink>(tunnel::ChangeSink*)>;
  Producer(const Config& config, const std::string& src_db, tunnel::SourceOptions options,
           const Wrap& wrap = nullptr)
      : metrics(MetricTables(options.tables)), worker(std::move(options), &metrics, &stop) {
    auto s = tunnel::KafkaSink::Create(
        config.kafka,
        {src_db, config.tunnel.name,
         SourceCluster().Scalar(src_db, "SELECT install_id FROM datatunnel.meta").value_or("")},
        [this](uint64_t token, const Status& st) { worker.OnDelivery(token, st); });
    EXPECT_TRUE(s.ok()) << s.status().message();
    if (!s.ok()) return;
    sink = std::move(*s);
    if (wrap) wrapper = wrap(sink.get());
    worker.SetSink(wrapper ? wrapper.get() : sink.get());
    thread = std::thread([this] {
      result = worker.Run();
      done = true;
    });
  }
  ~Producer() { Stop(); }
  void Stop() {
    stop.RequestStop();
    if (thread.joinable()) thread.join();
  }

  metrics::Metrics metrics;
  StopSource stop;
  tunnel::SourceWorker worker;
  std::unique_ptr<tunnel::KafkaSink> sink;
  std::unique_ptr<tunnel::ChangeSink> wrapper;
  std::thread thread;
  Status result;
  std::atomic<bool> done{false};
};

}  // namespace

namespace pg {
// For gtest's messages: the parameter by name.
void PrintTo(Fault fault, std::ostream* os) {
  *os << (fault == Fault::kLoseAfter    ? "kLoseAfter"
          : fault == Fault::kLoseBefore ? "kLoseBefore"
                                        : "other");
}
}  // namespace pg

namespace {

// (a) The COMMIT of a batch on the target is lost in flight, once after it
// committed (kLoseAfter) and once before the server saw it (kLoseBefore):
// the consumer gets kInDoubt either way. It must find out from the target's
// stored positions whether the batch landed and then apply it exactly once:
// nothing lost (the rows match), nothing applied twice (each change counted
// once in datatunnel.applied).
class InDoubtCommitTest : public FaultTest, public ::testing::WithParamInterface<pg::Fault> {};

TEST_P(InDoubtCommitTest, TheConsumerLearnsTheOutcomeFromTheTarget) {
  auto produce = Start({"produce"});
  const tunnel::TargetOptions options = TargetWorkerOptions();
  metrics::Metrics metrics = NewMetrics();
  StopSource stop;
  tunnel::KafkaTargetWorker worker(options, &metrics, &stop);
  Status result;
  std::thread thread([&] { result = worker.Run(); });

  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'a' || i FROM "
                       "generate_series(1, 100) i");
  ExpectInSync();
  ASSERT_EQ(AppliedCount(), 100);

  // The next COMMIT of the consumer's target connection: a batch.
  StatementFault fault(
      "target", [](std::string_view sql) { return sql == "COMMIT"; }, GetParam());
  {
    SourceCluster().Exec(src_,
                         "INSERT INTO employees(first_name) SELECT 'b' || i FROM "
                         "generate_series(1, 50) i;"
                         "UPDATE employees SET city = 'after' WHERE emp_id <= 20");
    ScopedFaultHook installed(&fault);
    SourceCluster().Exec(src_, "NOTIFY datatunnel");
    EXPECT_TRUE(WaitUntil([&] { return fault.fired() == 1; }, 60)) << RunningLogs();
    ExpectInSync();
  }
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  // Each change counted once: with duplicate dropping off, the landed case
  // counts 179. (Whether the retry also records skipped changes depends on
  // how the retried batch is cut, so skipped_count is not asserted.)
  EXPECT_EQ(AppliedCount(), 170) << "a change was applied twice, or lost";
  EXPECT_GE(metrics.retries.load(), 1);

  stop.RequestStop();
  thread.join();
  EXPECT_TRUE(result.ok() || result.IsCancelled()) << result.message();
  EXPECT_EQ(produce->Stop(), 0) << produce->Stderr();
}

INSTANTIATE_TEST_SUITE_P(Fault, InDoubtCommitTest,
                         ::testing::Values(pg::Fault::kLoseAfter, pg::Fault::kLoseBefore),
                         [](const ::testing::TestParamInfo<pg::Fault>& info) {
                           return info.param == pg::Fault::kLoseAfter ? "CommitLanded"
                                                                      : "CommitNeverArrived";
                         });

// (b) The producer records a tick (its COMMIT lands on the source) and dies
// before sending anything of it: the connection is cut as the tick commits
// and the worker is stopped there. A restarted producer must publish that
// tick's changes (recomputed from the recorded snapshot): nothing lost, and
// each change applied once.
TEST_F(FaultTest, AProducerThatDiesAfterRecordingATickLosesNothing) {
  auto consume = Start({"consume"});
  tunnel::SourceOptions options = SourceWorkerOptions();
  // Once idle, ticks only when woken by a NOTIFY: the changes below are
  // committed before the fault is armed, and the tick the NOTIFY wakes holds
  // exactly them. (The idle check cannot be the trigger: it may see the
  // shared change_id sequence move while the writer is still running, and
  // take an empty tick before its commit.)
  options.pipeline.poll_interval_ms = 600'000;
  options.pipeline.check_interval_ms = 600'000;

  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'a' || i FROM "
                       "generate_series(1, 100) i");
  {
    Producer first(config_loaded_, src_, options);
    ExpectInSync();
    ASSERT_EQ(AppliedCount(), 100);

    // The tick's pipeline (BEGIN, INSERT INTO datatunnel.ticks, the first
    // reads, COMMIT) runs and commits; then the connection is cut and the
    // process "dies": the worker is stopped before it can send a thing.
    int64_t bytes_at_fault = -1;
    StatementFault fault(
        "source",
        [](std::string_view sql) { return sql.starts_with("INSERT INTO datatunnel.ticks"); },
        pg::Fault::kLoseAfter, 1,
        [&] {
          bytes_at_fault = first.sink->bytes_sent();
          first.stop.RequestStop();
        });
    SourceCluster().Exec(src_,
                         "INSERT INTO employees(first_name) SELECT 'b' || i FROM "
                         "generate_series(1, 50) i;"
                         "UPDATE employees SET city = 'after' WHERE emp_id <= 20");
    ScopedFaultHook installed(&fault);
    SourceCluster().Exec(src_, "NOTIFY datatunnel");
    ASSERT_TRUE(WaitUntil([&] { return first.done.load(); }, 60)) << RunningLogs();
    first.Stop();
    EXPECT_EQ(fault.fired(), 1);
    EXPECT_EQ(first.sink->bytes_sent(), bytes_at_fault) << "the dead producer sent something";
  }
  // The tick is recorded with the new changes in its snapshot, and none of
  // them is published.
  const auto cdc = SourceCluster()
                       .Scalar(src_,
                               "SELECT format('%I.%I', schema_name, change_table) FROM "
                               "datatunnel.tables")
                       .value_or("");
  EXPECT_EQ(SourceCluster().Count(
                src_, fmt::format(
                          "SELECT count(*) FROM {} c WHERE txid_visible_in_snapshot(c.\"dt$txid\", "
                          "(SELECT snapshot FROM datatunnel.ticks ORDER BY tick DESC "
                          "LIMIT 1)) AND NOT txid_visible_in_snapshot(c.\"dt$txid\", "
                          "(SELECT snapshot FROM datatunnel.ticks ORDER BY tick DESC "
                          "OFFSET 1 LIMIT 1))",
                          cdc)),
            70)
      << "the tick recorded before the fault does not hold exactly the new changes";
  EXPECT_LT(SourceCluster().Count(src_, "SELECT max(published_tick) FROM datatunnel.tables"),
            SourceCluster().Count(src_, "SELECT max(tick) FROM datatunnel.ticks"));
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM employees"), 100);

  // The restarted producer.
  Producer second(config_loaded_, src_, options);
  ExpectInSync();
  EXPECT_EQ(Rows(SourceCluster(), src_), Rows(TargetCluster(), tgt_));
  EXPECT_EQ(AppliedCount(), 170) << "a change was applied twice, or lost";
  second.Stop();
  EXPECT_TRUE(second.result.ok()) << second.result.message();
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
}

// (c) The database restarts just as a process starts: the connection opens
// and is lost before the tables are described (the chaos test met this on a
// target restart). A server that answered once is one to wait for, so both
// workers, started with fail_fast_connect (as `produce` and `consume` are),
// carry on instead of ending with exit code 3.
TEST_F(FaultTest, AConnectionLostWhileStartingIsWaitedOut) {
  const auto describing = [](std::string_view sql) {
    return sql.find("FROM pg_catalog.pg_class c") != std::string_view::npos;
  };
  StatementFault source_fault("source", describing, pg::Fault::kLoseBefore);
  StatementFault target_fault("target", describing, pg::Fault::kLoseBefore);
  struct Both : pg::FaultHook {
    pg::FaultHook* a;
    pg::FaultHook* b;
    pg::Fault OnStatement(const pg::StatementInfo& s) override {
      pg::Fault f = a->OnStatement(s);
      return f != pg::Fault::kNone ? f : b->OnStatement(s);
    }
  } both;
  both.a = &source_fault;
  both.b = &target_fault;
  ScopedFaultHook installed(&both);

  metrics::Metrics metrics = NewMetrics();
  StopSource stop;
  tunnel::KafkaTargetWorker consumer(TargetWorkerOptions(), &metrics, &stop);
  Status consumed;
  std::thread thread([&] { consumed = consumer.Run(); });

  Producer producer(config_loaded_, src_, SourceWorkerOptions());

  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name) SELECT 'a' || i FROM "
                       "generate_series(1, 100) i");
  ExpectInSync();
  EXPECT_EQ(source_fault.fired(), 1);
  EXPECT_EQ(target_fault.fired(), 1);
  EXPECT_FALSE(producer.done.load()) << producer.result.message();
  EXPECT_EQ(AppliedCount(), 100);

  producer.Stop();
  EXPECT_TRUE(producer.result.ok()) << producer.result.message();
  stop.RequestStop();
  thread.join();
  EXPECT_TRUE(consumed.ok()) << consumed.message();
}

// (d) Transaction consistency, a self-referencing table being copied: a tick
// sends, after its changes, the rows not copied yet that they reference.
// The producer records such a tick and dies before sending any of it. The
// restarted producer replays the tick's changes; the target's deferred
// foreign key must still hold when it commits: no foreign-key error, and
// the copy ends equal to the source.
// What the copy fault tests below share: two or more in-process producers
// on a config with transaction consistency, and their ending: a new
// producer ends every copy, and the consumer applies them with no
// foreign-key error.
class CopyFaultTest : public testing::TunnelFixture {
 protected:
  // Writes the config for `tables` ([[tables]] entries), runs init and loads it.
  void Configure(const std::string& tables, const std::string& pipeline = "") {
    WriteConfig(
        tables,
        "[pipeline]\napply_consistency = \"transaction\"\nsnapshot_chunk_rows = 100\n" + pipeline);
    UseKafka();
    ASSERT_EQ(Dt({"init"}).code, 0);
    auto config = LoadConfig(config_, {}, {});
    ASSERT_TRUE(config.ok()) << config.status().message();
    config_loaded_ = std::move(*config);
  }

  // A tick at most every `tick_ms`: a chunk per tick.
  tunnel::SourceOptions SourceWorkerOptions(int tick_ms) const {
    tunnel::SourceOptions o;
    o.connect.dsn = config_loaded_.source.dsn;
    o.connect.role = "source";
    o.tunnel = config_loaded_.tunnel.name;
    o.tables = config_loaded_.tables;
    o.pipeline = config_loaded_.pipeline;
    o.pipeline.min_tick_interval_ms = tick_ms;
    return o;
  }

  // Requests a snapshot of every table of the tunnel.
  void RequestSnapshots() {
    auto c = SourceCluster().Connect(src_);
    std::vector<std::string> warnings;
    auto specs = capture::DescribeSourceTables(*c, config_loaded_.tables, &warnings);
    ASSERT_TRUE(specs.ok()) << specs.status().message();
    for (const auto& spec : *specs) {
      ASSERT_TRUE(capture::RequestSnapshot(*c, spec, /*restart=*/true).ok());
    }
  }

  int64_t SnapshotsDone() {
    return SourceCluster().Count(
        src_, "SELECT count(*) FROM datatunnel.tables WHERE snapshot_state = 'done'");
  }

  // A new producer (a chunk every `tick_ms`) ends every copy; the consumer
  // `consume` applies them, in sync, with no foreign-key error.
  void ExpectANewProducerEndsTheCopies(Subprocess& consume, int tick_ms) {
    ASSERT_EQ(SnapshotsDone(), 0);
    Producer next(config_loaded_, src_, SourceWorkerOptions(tick_ms));
    const auto tables = static_cast<int64_t>(config_loaded_.tables.size());
    const bool ended =
        WaitUntil([&] { return !consume.Running() || SnapshotsDone() == tables; }, 90);
    ASSERT_TRUE(ended) << RunningLogs();
    ExpectInSync();
    EXPECT_TRUE(consume.Running()) << consume.Stderr();
    EXPECT_FALSE(Contains(consume.Stderr(), "violates foreign key")) << consume.Stderr();
    next.Stop();
    EXPECT_TRUE(next.result.ok()) << next.result.message();
  }

  Config config_loaded_;
};

class SelfReferenceCopyFaultTest : public CopyFaultTest {
 protected:
  // One chunk every 200 ms: the consumer applies the replayed tick on its
  // own, long before the copy reaches the row it references.
  static constexpr int kTickMs = 200;

  void SetUp() override {
    TunnelFixture::SetUp();
    OnBothSides(
        "CREATE TABLE staff(id integer PRIMARY KEY, boss integer REFERENCES staff(id) DEFERRABLE, "
        "name text)");
    SourceCluster().Exec(
        src_, "INSERT INTO staff SELECT i, NULL, 's' || i FROM generate_series(1, 1000) i");
    Configure("[[tables]]\nsource = \"public.staff\"\n");
  }
};

// Once the copy has begun (a tick ran its query of referenced rows), holds
// each next tick before it takes its snapshot until the test lets it go on
// (Pass) or wrote a row that references one not copied yet (Written); then
// cuts the connection as that tick commits, and stops the producer there.
class ReferencingTickFault : public pg::FaultHook {
 public:
  explicit ReferencingTickFault(std::function<void()> on_fire) : on_fire_(std::move(on_fire)) {}

  pg::Fault OnStatement(const pg::StatementInfo& s) override {
    if (s.role != "source") return pg::Fault::kNone;
    std::unique_lock<std::mutex> lock(mu_);
    if (s.sql.starts_with("WITH RECURSIVE dt_w")) copying_ = true;
    if (copying_ && !written_ && s.sql.starts_with("INSERT INTO datatunnel.ticks")) {
      held_ = true;
      cv_.notify_all();
      cv_.wait_for(lock, std::chrono::seconds(30), [&] { return !held_ || written_; });
      held_ = false;
      armed_ = written_;
      return pg::Fault::kNone;
    }
    if (armed_ && !fired_ && s.sql == "COMMIT") {
      fired_ = true;
      on_fire_();
      return pg::Fault::kLoseAfter;
    }
    return pg::Fault::kNone;
  }
  // Waits until a tick is held; false after `seconds`.
  bool WaitHeld(double seconds) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)),
                        [&] { return held_; });
  }
  // The held tick goes on; the next one is held.
  void Pass() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    cv_.notify_all();
  }
  // The held tick goes on, holding the row written: it is the one to fail.
  void Written() {
    std::lock_guard<std::mutex> lock(mu_);
    written_ = true;
    cv_.notify_all();
  }
  bool fired() {
    std::lock_guard<std::mutex> lock(mu_);
    return fired_;
  }

 private:
  std::function<void()> on_fire_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool copying_ = false, held_ = false, written_ = false, armed_ = false, fired_ = false;
};

TEST_F(SelfReferenceCopyFaultTest, AReplayedTickBringsTheRowsItReferences) {
  auto consume = Start({"consume"});
  RequestSnapshots();
  {
    std::unique_ptr<Producer> first;
    ReferencingTickFault fault([&] { first->stop.RequestStop(); });
    ScopedFaultHook installed(&fault);
    first = std::make_unique<Producer>(config_loaded_, src_, SourceWorkerOptions(kTickMs));
    // Until a chunk is recorded as delivered: a restart resumes after it.
    for (;;) {
      ASSERT_TRUE(fault.WaitHeld(60)) << RunningLogs();
      if (SourceCluster().Count(src_, "SELECT snapshot_rows FROM datatunnel.tables") > 0) break;
      fault.Pass();
    }
    // Row 1 is copied (the first chunk); row 950 is not, for seconds yet.
    SourceCluster().Exec(src_, "UPDATE staff SET boss = 950 WHERE id = 1");
    fault.Written();
    ASSERT_TRUE(WaitUntil([&] { return first->done.load(); }, 60)) << RunningLogs();
    first->Stop();
    EXPECT_TRUE(fault.fired());
  }
  ExpectANewProducerEndsTheCopies(*consume, kTickMs);
  EXPECT_EQ(TableText(SourceCluster(), src_, "staff", "id"),
            TableText(TargetCluster(), tgt_, "staff", "id"));
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
}

// (e) Transaction consistency, a parent and a child table (a foreign key)
// copied together: the child's chunks start only once the parent's copy
// has recorded its end. The producer's sink stops passing on the parent's
// messages mid-copy (they stay in flight, never delivered: a broker that
// does not answer for that topic), and the producer then stops, like a
// kill -9: what was sent and not delivered is lost. Had a chunk of the
// child been read, delivered and recorded meanwhile, its rows would
// reference parent rows that the next producer copies again only at a
// later tick, and the target's foreign key would stop the consumer there.
class ForeignKeyCopyFaultTest : public CopyFaultTest {
 protected:
  // A chunk every 100 ms: the parent's copy takes seconds.
  static constexpr int kTickMs = 100;

  void SetUp() override {
    TunnelFixture::SetUp();
    OnBothSides(kFamilyDdl);
    SourceCluster().Exec(src_,
                         "INSERT INTO parent SELECT i, 'p' || i FROM generate_series(1, 3000) i");
    SourceCluster().Exec(
        src_, "INSERT INTO child SELECT i, 3001 - i, 'c' || i FROM generate_series(1, 1000) i");
    Configure("[[tables]]\nsource = \"public.parent\"\n[[tables]]\nsource = \"public.child\"\n",
              "progress_interval_ms = 20\n");
    RequestSnapshots();
  }

  int64_t Recorded(const std::string& table, const std::string& column) {
    return SourceCluster().Count(
        src_,
        fmt::format("SELECT {} FROM datatunnel.tables WHERE table_name = '{}'", column, table));
  }
};

// Passes everything on to `inner`, except, once stalled, the messages of
// table `table`: those are taken and never sent nor delivered.
class StallingSink : public tunnel::ChangeSink {
 public:
  StallingSink(tunnel::ChangeSink* inner, uint32_t table) : inner_(inner), table_(table) {}
  void Stall() { stalled_ = true; }
  // The tick of the table's end-of-snapshot marker taken, 0 before.
  int64_t marker_tick() const { return marker_tick_; }

  void SetTables(const std::vector<TableSpec>* tables) override { inner_->SetTables(tables); }
  Status Send(const Change& c, int32_t partition, uint64_t token, int32_t* sent_to) override {
    if (Take(c, partition, sent_to)) return Status::OK();
    return inner_->Send(c, partition, token, sent_to);
  }
  Status SendOwned(Change&& c, int32_t partition, uint64_t token, int32_t* sent_to) override {
    if (Take(c, partition, sent_to)) return Status::OK();
    return inner_->SendOwned(std::move(c), partition, token, sent_to);
  }
  bool Chained() const override { return inner_->Chained(); }
  void SetChainHeads(uint32_t table, std::vector<Position> heads) override {
    inner_->SetChainHeads(table, std::move(heads));
  }
  Status SendTickEnd(const Position& end, uint64_t token) override {
    return inner_->SendTickEnd(end, token);
  }
  Status PrepareTickEnds() override { return inner_->PrepareTickEnds(); }
  void Poll(int timeout_ms) override { inner_->Poll(timeout_ms); }
  int Flush(int timeout_ms) override { return inner_->Flush(timeout_ms) + (taken_ ? 1 : 0); }
  Result<int> PartitionCount(uint32_t table) override { return inner_->PartitionCount(table); }
  Status Health() const override { return inner_->Health(); }
  Status Recover() override { return inner_->Recover(); }
  int64_t bytes_sent() const override { return inner_->bytes_sent(); }
  bool TakesPackedChunks() const override { return inner_->TakesPackedChunks(); }
  Status SplitChunk(Change&& packed, std::vector<std::pair<int32_t, Change>>* parts) override {
    return inner_->SplitChunk(std::move(packed), parts);
  }
  const char* receiver() const override { return inner_->receiver(); }

 private:
  bool Take(const Change& c, int32_t partition, int32_t* sent_to) {
    if (!stalled_ || c.table != table_) return false;
    taken_ = true;
    if (c.op == Op::kMarker && c.marker == Marker::kSnapshotDone) marker_tick_ = c.pos.tick;
    *sent_to = partition < 0 ? 0 : partition;
    return true;
  }

  tunnel::ChangeSink* inner_;
  uint32_t table_;
  std::atomic<bool> stalled_{false}, taken_{false};
  std::atomic<int64_t> marker_tick_{0};
};

TEST_F(ForeignKeyCopyFaultTest, AChildCopyWaitsForItsParentsRecordedEnd) {
  auto consume = Start({"consume"});
  {
    StallingSink* stalling = nullptr;
    Producer first(config_loaded_, src_, SourceWorkerOptions(kTickMs),
                   [&](tunnel::ChangeSink* inner) {
                     auto s = std::make_unique<StallingSink>(inner, /*table=*/0);
                     stalling = s.get();
                     return s;
                   });
    ASSERT_NE(stalling, nullptr);
    ASSERT_TRUE(WaitUntil([&] { return Recorded("parent", "snapshot_rows") > 0; }, 60))
        << first.result.message();
    stalling->Stall();
    // The parent's end marker is sent (and taken), after its last chunk.
    ASSERT_TRUE(WaitUntil([&] { return stalling->marker_tick() > 0; }, 60))
        << first.result.message();
    // Ten more ticks: time enough for a chunk of the child to be read,
    // delivered and recorded, were its copy not waiting for the parent's end.
    ASSERT_TRUE(WaitUntil(
        [&] {
          return SourceCluster().Count(src_, "SELECT max(tick) FROM datatunnel.ticks") >=
                 stalling->marker_tick() + 10;
        },
        60))
        << first.result.message();
    EXPECT_EQ(Recorded("child", "snapshot_rows"), 0);
    EXPECT_LT(Recorded("parent", "snapshot_rows"), 3000);
    first.Stop();
  }
  ExpectANewProducerEndsTheCopies(*consume, kTickMs);
  EXPECT_EQ(TargetCluster().Count(tgt_, "SELECT count(*) FROM child"), 1000);
  EXPECT_EQ(consume->Stop(), 0) << consume->Stderr();
}

}  // namespace
}  // namespace datatunnel
