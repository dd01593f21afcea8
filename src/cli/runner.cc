#include "cli/runner.h"

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <optional>
#include <set>
#include <thread>

#include "apply/install.h"
#include "broker/kafka.h"
#include "capture/install.h"
#include "cli/run_status.h"
#include "cli/snapshot_watch.h"
#include "cli/table_watch.h"
#include "core/clock.h"
#include "metrics/http_server.h"
#include "metrics/metrics.h"
#include "tunnel/kafka_sink.h"
#include "tunnel/memory_channel.h"
#include "tunnel/source_worker.h"
#include "tunnel/target_worker.h"

namespace datatunnel::cli {
namespace {

// Who the source is, as the envelope names it.
struct SourceIdentity {
  std::string database;  // the source database's name (libpq's PQdb)
  std::string install;   // the source installation's id
};

// What every tunnel process checks before it starts: `init` has set up the
// sides it uses, and (when it uses both) source and target are not the same
// table.
Status CheckSetup(const Setup& setup, const RunPlan& plan, SourceIdentity* id) {
  const Config& config = setup.config;
  DT_ASSIGN_OR_RETURN(Databases db, OpenDatabases(setup, plan.source && plan.target ? Sides::kBoth
                                                         : plan.source              ? Sides::kSource
                                                                       : Sides::kTarget));
  if (db.source) {
    DT_RETURN_IF_ERROR(capture::CheckInstalled(*db.source, config.tunnel.name, config.tables));
    DT_ASSIGN_OR_RETURN(id->install, capture::LoadInstallId(*db.source));
    id->database = db.source->database();
  }
  if (db.target) {
    DT_RETURN_IF_ERROR(apply::CheckInstalled(*db.target));
    DT_RETURN_IF_ERROR(apply::BoundSource(*db.target, config.tunnel.name).status());
  }
  if (db.source && db.target)
    DT_RETURN_IF_ERROR(CheckDistinctTables(*db.source, *db.target, config));
  return Status::OK();
}

// The stages wired for one plan: the source worker sending through its sink
// (Kafka or the in-memory channel), the target worker reading from Kafka or
// that channel.
struct Pipeline {
  StopSource source_stop, target_stop;  // each worker's
  std::optional<tunnel::MemoryChannel> channel;
  std::unique_ptr<tunnel::SourceWorker> source;
  std::unique_ptr<tunnel::ChangeSink> sink;
  std::unique_ptr<tunnel::TargetWorker> target;
};

Status Wire(const Setup& setup, const RunPlan& plan, const SourceIdentity& id,
            metrics::Metrics* metrics, Pipeline* p) {
  const Config& config = setup.config;
  const bool memory = config.kafka.none();
  if (memory) {
    p->channel.emplace(static_cast<size_t>(config.pipeline.max_in_flight), size_t{64} << 20);
  }
  if (plan.source) {
    tunnel::SourceOptions opts;
    opts.connect = setup.source;
    opts.tunnel = config.tunnel.name;
    opts.tables = config.tables;
    opts.pipeline = config.pipeline;
    opts.exit_after_snapshot = plan.snapshot_only && memory;
    p->source = std::make_unique<tunnel::SourceWorker>(opts, metrics, &p->source_stop);
    auto deliver = [w = p->source.get()](uint64_t token, const Status& st) {
      w->OnDelivery(token, st);
    };
    if (memory) {
      p->sink = std::make_unique<tunnel::MemorySink>(&*p->channel, deliver);
    } else {
      DT_ASSIGN_OR_RETURN(p->sink, tunnel::KafkaSink::Create(
                                       config.kafka, {id.database, config.tunnel.name, id.install},
                                       deliver, config.kafka.copy_chunks));
    }
    p->source->SetSink(p->sink.get());
  }
  if (plan.target) {
    tunnel::TargetOptions topts;
    topts.connect = setup.target;
    topts.tunnel = config.tunnel.name;
    topts.tables = config.tables;
    topts.pipeline = config.pipeline;
    topts.kafka = config.kafka;
    if (memory) {
      p->target = std::make_unique<tunnel::MemoryTargetWorker>(topts, &*p->channel, metrics,
                                                               &p->target_stop);
    } else {
      // What a crash of the target loses is read from Kafka again (config.h).
      topts.connect.synchronous_commit = config.target.synchronous_commit;
      p->target = std::make_unique<tunnel::KafkaTargetWorker>(topts, metrics, &p->target_stop);
    }
  }
  return Status::OK();
}

// The workers of a pipeline, each on its thread; the one that ends first
// wakes the main loop through `wake`.
class Workers {
 public:
  Workers(Pipeline* p, StopSource* wake) : p_(p) {
    if (p->source) {
      source_thread_ = std::thread([this, wake] {
        source_.status = p_->source->Run();
        source_.done = true;
        wake->RequestStop();
      });
    }
    if (p->target) {
      target_thread_ = std::thread([this, wake] {
        target_.status = p_->target->Run();
        target_.done = true;
        wake->RequestStop();
      });
    }
  }
  ~Workers() { Stop(); }

  bool any_done() const { return source_.done || target_.done; }
  bool source_finished_ok() const { return source_.done && source_.status.ok(); }

  // Stops in flow order: the source flushes what it sent, then the target
  // applies what reached it (in memory: what the source handed over, for at
  // most 5 s).
  void Stop() {
    p_->source_stop.RequestStop();
    if (source_thread_.joinable()) source_thread_.join();
    if (p_->channel && p_->target && !target_.done) {
      const int64_t deadline = MonotonicMicros() + 5'000'000;
      while (p_->channel->queued() > 0 && !target_.done && MonotonicMicros() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    p_->target_stop.RequestStop();
    if (p_->channel) p_->channel->Close();
    if (target_thread_.joinable()) target_thread_.join();
  }

  // The first failure of a worker that ended (a stop is not one).
  Status Failure() const {
    for (const Outcome* o : {&source_, &target_}) {
      if (o->done && !o->status.ok() && !o->status.IsCancelled()) return o->status;
    }
    return Status::OK();
  }

 private:
  // A worker's outcome, handed from its thread to the main thread.
  struct Outcome {
    std::atomic<bool> done{false};
    Status status;
  };
  Pipeline* p_;
  Outcome source_, target_;
  std::thread source_thread_, target_thread_;
};

// /metrics, /healthz and /readyz, when metrics.listen is set.
// `listen` is metrics.listen, or the address the first round was served on.
Result<std::unique_ptr<metrics::HttpServer>> ServeMetrics(const Config& config,
                                                          const std::string& listen,
                                                          const RunPlan& plan,
                                                          const metrics::Metrics* metrics) {
  if (listen.empty()) return std::unique_ptr<metrics::HttpServer>();
  const double max_lag = config.pipeline.ready_max_lag_seconds;
  const bool memory = config.kafka.none();
  DT_ASSIGN_OR_RETURN(auto http,
                      metrics::HttpServer::Start(listen, metrics, [metrics, plan, memory, max_lag] {
                        return Readiness(*metrics, plan, memory, max_lag);
                      }));
  spdlog::info("metrics: serving /metrics, /healthz and /readyz on port {} ({})", http->port(),
               listen);
  return http;
}

// The main thread while the workers run: the status line, and for
// `snapshot` whether the copy is complete (how often: check_us). Returns
// that, once a worker ends, a signal comes (`*signalled`) or the copy is done.
bool Watch(const RunPlan& plan, bool memory, const metrics::Metrics& metrics,
           const Workers& workers, StopSource* main_stop, StatusReporter* reporter,
           SnapshotWatch* snapshot, TableWatch* tables, const std::vector<TableConfig>& current,
           const StopSource& worker_ended, bool* signalled, bool* tables_changed) {
  int64_t last_snapshot_check = 0;
  // `snapshot` returns once the copy is applied: checked often for a few
  // tables (at most 100 ms late for one; it checked once a second, a third
  // of the wall time of a 1,000,000-row copy), less often for many (a
  // query per table on the target each time). When this process applies,
  // also as soon as it committed an end marker (a counter looked at every
  // 10 ms): the check alone left the command 50 ms late on average.
  const int64_t check_us =
      plan.snapshot_only
          ? std::min<int64_t>(1'000'000,
                              100'000 + 5'000 * static_cast<int64_t>(snapshot->tables().size()))
          : 1'000'000;
  const int wait_ms = plan.snapshot_only && !memory
                          ? 10
                          : static_cast<int>(std::min<int64_t>(250, check_us / 1000));
  int64_t ends_seen = metrics.snapshot_ends_applied.load();
  while (true) {
    pollfd p[2] = {{main_stop->wake_fd(), POLLIN, 0}, {worker_ended.wake_fd(), POLLIN, 0}};
    poll(p, 2, wait_ms);
    if (workers.any_done()) return false;
    if (main_stop->stop_requested()) {
      *signalled = true;
      return false;
    }
    if (tables && tables->Changed(current)) {
      *tables_changed = true;
      return false;
    }
    const int64_t now = MonotonicMicros();
    reporter->Tick(now);
    if (!plan.snapshot_only) continue;
    const int64_t ends = metrics.snapshot_ends_applied.load();
    if (now - last_snapshot_check < check_us && ends == ends_seen) continue;
    ends_seen = ends;
    last_snapshot_check = now;
    // Through a broker: done once every partition of every requested table
    // applied the marker.
    if (!memory && snapshot->AppliedOnTarget()) return true;
    // In memory the copy is done when the source worker ends, unless another
    // tunnel holds the producer lock and copies the tables for us (a chunk
    // is recorded done once applied).
    if (memory && metrics.leader.load() == 0 && snapshot->RecordedDoneOnSource()) {
      spdlog::info("the tunnel already running copied the table(s)");
      return true;
    }
  }
}

// auto_add: a watch on the source for tables added while the tunnel runs
// (opened before the tables are resolved, so none slips in between). A
// `consume` that cannot reach the source carries the tables it has.
Status OpenTableWatch(const Setup& setup, const RunPlan& plan, std::unique_ptr<TableWatch>* watch) {
  if (!HasAutoAdd(setup.config) || plan.snapshot_only || setup.config.kafka.debezium()) {
    return Status::OK();
  }
  auto w = TableWatch::Open(setup);
  if (w.ok()) {
    *watch = std::move(*w);
    return Status::OK();
  }
  if (plan.source) return w.status();
  Warn(fmt::format(
      "auto_add: consume cannot reach the source ({}), which it needs to create the target "
      "tables of new tables; it carries the tables captured now, and new ones once it is "
      "restarted after `datatunnel init`",
      w.status().message()));
  return Status::OK();
}

// The tunnel's tables after auto_add added some: resolved again, their
// target tables made ready as `init` does, each new one logged.
Status AdoptAddedTables(const Setup& setup, const RunPlan& plan, TableWatch* watch,
                        std::vector<TableConfig>* tables) {
  std::vector<TableConfig> now;
  Status st = watch->Resolve(&now);
  if (st.ok() && plan.target) {
    auto target = pg::Connection::Open(setup.target);
    st = target.ok() ? watch->PrepareTarget(**target, *tables, now) : target.status();
  }
  if (!st.ok()) return st.WithContext("auto_add: adding new tables");
  std::set<std::string> had;
  for (const auto& t : *tables) had.insert(t.source.ToString());
  for (const auto& t : now) {
    if (had.count(t.source.ToString()) == 0) {
      spdlog::info(
          "auto_add: new table {} (matches source = \"{}\", line {}): carrying it from now on, "
          "after a copy of its rows",
          t.source.ToString(), t.pattern_text, t.line);
    }
  }
  *tables = std::move(now);
  return Status::OK();
}

// Everything a tunnel process checks before its first round: the tables
// of pattern entries resolved, the plan fits the configuration, the broker
// answers, `init` set up the sides it uses.
Status PrepareRun(const RunPlan& plan, Setup* setup, SourceIdentity* id) {
  if (HasPatterns(setup->config)) {
    // Pattern entries: the tables init captured (from the source when this
    // process uses it, else as init recorded them on the target).
    DT_ASSIGN_OR_RETURN(auto db,
                        OpenDatabases(*setup, plan.source ? Sides::kSource : Sides::kTarget));
    DT_RETURN_IF_ERROR(
        ResolveTables(&setup->config, db.source.get(), db.target.get(), Selection::kCaptured));
  }
  const Config& config = setup->config;
  const bool memory = config.kafka.none();
  if (memory && plan.source != plan.target) {
    return Status::BadConfig(
        "produce and consume need a Kafka broker: set kafka.brokers (or --brokers); without a "
        "broker, use `datatunnel run`, which then hands changes over in memory");
  }
  if (config.kafka.debezium() && (plan.source || memory)) {
    return Status::BadConfig(
        "kafka.format = \"debezium\": Debezium's connector is the source side, so only "
        "`datatunnel consume` runs, with kafka.brokers set (`datatunnel init` sets up the "
        "target)");
  }
  DT_RETURN_IF_ERROR(CheckOnlyTables(config, plan));
  if (!memory) DT_RETURN_IF_ERROR(broker::CheckReachable(config.kafka, 10000));
  return CheckSetup(*setup, plan, id);
}

// How a round ended.
enum class RoundEnd {
  kDone,           // stopped, or the snapshot is complete: exit 0
  kTablesChanged,  // auto_add added tables: adopt them, start the next round
  kInterrupted,    // `snapshot` stopped before the copy was complete
};

// One round: the workers for the current set of tables, running until a
// worker ends, a signal comes, the snapshot is complete or the tables
// change. `*listen` is the metrics address, the port the first round got
// kept for the later ones.
Result<RoundEnd> RunRound(const Globals& g, const RunPlan& plan, const Setup& setup,
                          const SourceIdentity& id, TableWatch* table_watch, StopSource* main_stop,
                          std::string* listen, int round) {
  const Config& config = setup.config;
  const bool memory = config.kafka.none();
  std::optional<SnapshotWatch> snapshot_watch;
  SnapshotWatch* snapshot = nullptr;
  if (plan.snapshot_first || plan.snapshot_only) {
    DT_ASSIGN_OR_RETURN(auto w, SnapshotWatch::Prepare(config, plan, setup.source, setup.target));
    snapshot = &snapshot_watch.emplace(std::move(w));
    if (plan.snapshot_only && snapshot->empty()) {
      spdlog::info("nothing to snapshot");
      return RoundEnd::kDone;
    }
  }

  std::vector<std::pair<std::string, std::string>> names;
  for (const auto& t : config.tables) names.emplace_back(t.source.ToString(), t.target.ToString());
  metrics::Metrics metrics(names);
  DT_ASSIGN_OR_RETURN(auto http, ServeMetrics(config, *listen, plan, &metrics));  // destroyed first
  if (http && round == 0) {
    // Later rounds serve on the same port (the one picked for port 0).
    *listen = listen->substr(0, listen->rfind(':') + 1) + std::to_string(http->port());
  }
  if (main_stop->stop_requested()) return RoundEnd::kDone;
  Pipeline pipeline;
  DT_RETURN_IF_ERROR(Wire(setup, plan, id, &metrics, &pipeline));

  // A worker that ends wakes this round's watch (main_stop is the
  // signals', which must stay unset across rounds).
  StopSource worker_ended;
  Workers workers(&pipeline, &worker_ended);
  StatusReporter reporter(&metrics, plan, isatty(STDERR_FILENO) && g.log_format != "json");
  bool signalled = false, tables_changed = false;
  bool snapshot_complete =
      Watch(plan, memory, metrics, workers, main_stop, &reporter, snapshot, table_watch,
            config.tables, worker_ended, &signalled, &tables_changed);
  reporter.Finish();
  workers.Stop();

  DT_RETURN_IF_ERROR(workers.Failure());
  if (tables_changed) return RoundEnd::kTablesChanged;
  if (!plan.snapshot_only) return RoundEnd::kDone;
  if (memory && workers.source_finished_ok() && !signalled) snapshot_complete = true;
  if (snapshot_complete) {
    spdlog::info("snapshot complete: {} table(s) copied to the target", snapshot->tables().size());
    return RoundEnd::kDone;
  }
  spdlog::warn("snapshot interrupted; run `datatunnel snapshot` again to resume it");
  return signalled ? RoundEnd::kDone : RoundEnd::kInterrupted;
}

}  // namespace

int RunTunnel(const Globals& g, const RunPlan& plan) {
  // First of all: a SIGTERM during the start-up checks (a supervisor's stop,
  // which can come at any moment) is a clean stop, never a death by signal.
  StopSource main_stop;
  InstallSignalHandlers(&main_stop);
  auto setup = LoadSetup(g);
  if (!setup.ok()) return Fail(setup.status());
  // auto_add: watch the source for tables added while the tunnel runs
  // (before the tables are resolved, so none slips in between).
  std::unique_ptr<TableWatch> table_watch;
  if (Status st = OpenTableWatch(*setup, plan, &table_watch); !st.ok()) return Fail(st);
  SourceIdentity id;
  if (Status st = PrepareRun(plan, &*setup, &id); !st.ok()) return Fail(st);
  if (main_stop.stop_requested()) return kExitOk;

  // One round per set of tables: a table added by auto_add ends the round
  // (the workers stop in flow order, as for a restart), the target is made
  // ready for it, and the next round carries it too.
  std::string listen = setup->config.metrics.listen;
  for (int round = 0;; ++round) {
    auto end = RunRound(g, plan, *setup, id, table_watch.get(), &main_stop, &listen, round);
    if (!end.ok()) return Fail(end.status());
    if (*end == RoundEnd::kDone) return kExitOk;
    if (*end == RoundEnd::kInterrupted) return kExitFailure;
    if (Status st = AdoptAddedTables(*setup, plan, table_watch.get(), &setup->config.tables);
        !st.ok()) {
      return Fail(st);
    }
  }
}

}  // namespace datatunnel::cli
