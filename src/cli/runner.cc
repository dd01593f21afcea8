#include "cli/runner.h"

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <thread>

#include "apply/install.h"
#include "broker/kafka.h"
#include "capture/change_log.h"
#include "capture/install.h"
#include "core/clock.h"
#include "metrics/http_server.h"
#include "metrics/metrics.h"
#include "snapshot/chunker.h"
#include "tunnel/kafka_sink.h"
#include "tunnel/memory_channel.h"
#include "tunnel/source_worker.h"
#include "tunnel/target_worker.h"

namespace datatunnel::cli {
namespace {

// A worker's outcome, handed from its thread to the main thread.
struct Outcome {
  std::atomic<bool> done{false};
  Status status;
};

bool Wanted(const RunPlan& plan, const TableConfig& t) {
  if (plan.only_tables.empty()) return true;
  return std::find(plan.only_tables.begin(), plan.only_tables.end(), t.source.ToString()) !=
         plan.only_tables.end();
}

// Every `--table` must name a source table of the config: a typo must not
// turn into "nothing to snapshot".
Status CheckOnlyTables(const Config& config, const RunPlan& plan) {
  for (const auto& name : plan.only_tables) {
    bool found = false;
    std::string hint, all;
    for (const auto& t : config.tables) {
      const std::string source = t.source.ToString();
      found = found || source == name;
      if (name == t.source.name || name == t.target.ToString() || name == t.target.name) {
        hint = fmt::format(" (did you mean {}?)", source);
      }
      all += (all.empty() ? "" : ", ") + source;
    }
    if (!found) {
      return Status::BadConfig(fmt::format(
          "--table {}: not a source table of this configuration{}; give schema.table as in "
          "[[tables]] source: {}",
          name, hint, all));
    }
  }
  return Status::OK();
}

// What every tunnel process checks before it starts: `init` has set up the
// sides it uses, and (when it uses both) source and target are not the same
// table.
// `install` gets the source installation's id (when the plan uses the source).
Status CheckSetup(const Config& config, const RunPlan& plan, const pg::ConnectOptions& so,
                  const pg::ConnectOptions& to, std::string* install) {
  std::unique_ptr<pg::Connection> src, tgt;
  if (plan.source) {
    DT_ASSIGN_OR_RETURN(src, pg::Connection::Open(so));
    DT_RETURN_IF_ERROR(capture::CheckInstalled(*src, config.tunnel.name, config.tables));
    DT_ASSIGN_OR_RETURN(*install, capture::LoadInstallId(*src));
  }
  if (plan.target) {
    DT_ASSIGN_OR_RETURN(tgt, pg::Connection::Open(to));
    DT_RETURN_IF_ERROR(apply::CheckInstalled(*tgt));
    DT_RETURN_IF_ERROR(apply::BoundSource(*tgt, config.tunnel.name).status());
  }
  if (src && tgt) DT_RETURN_IF_ERROR(CheckDistinctTables(*src, *tgt, config));
  return Status::OK();
}

// Highest end-of-snapshot marker tick per target table, and whether every
// partition of the newest marker has applied it.
struct MarkerState {
  int64_t tick = 0;
  bool complete = false;
};

Result<MarkerState> TargetMarker(pg::Connection& tgt, const TableConfig& t) {
  DT_ASSIGN_OR_RETURN(auto r,
                      tgt.Query("SELECT snapshot_tick, count(*), max(snapshot_partitions) "
                                "FROM datatunnel.applied WHERE target_schema = $1 AND "
                                "target_table = $2 AND snapshot_tick IS NOT NULL "
                                "GROUP BY snapshot_tick ORDER BY snapshot_tick DESC LIMIT 1",
                                {t.target.schema, t.target.name}));
  MarkerState m;
  if (r.rows() == 1) {
    m.tick = r.GetInt64(0, 0);
    m.complete = r.GetInt64(0, 1) >= r.GetInt64(0, 2);
  }
  return m;
}

// Decides, per table, whether to start (or resume) a snapshot; requests it on
// the source. Returns the tables whose snapshot this run waits for; `baseline`
// gets each one's newest end marker on the target before the request, so the
// new marker is told apart however fast it arrives.
Result<std::vector<size_t>> PrepareSnapshots(const Config& config, const RunPlan& plan,
                                             const pg::ConnectOptions& so,
                                             const pg::ConnectOptions& to,
                                             std::vector<MarkerState>* baseline) {
  DT_ASSIGN_OR_RETURN(auto src, pg::Connection::Open(so));
  DT_ASSIGN_OR_RETURN(auto tgt, pg::Connection::Open(to));
  std::vector<std::string> warnings;
  DT_ASSIGN_OR_RETURN(auto specs, capture::DescribeSourceTables(*src, config.tables, &warnings));
  std::vector<size_t> waiting;
  for (size_t t = 0; t < specs.size(); ++t) {
    if (!Wanted(plan, config.tables[t])) continue;
    const TableSpec& spec = specs[t];
    DT_ASSIGN_OR_RETURN(auto prog, snapshot::LoadProgress(*src, spec));
    const bool in_progress =
        prog.state == snapshot::State::kRequested || prog.state == snapshot::State::kRunning;
    DT_ASSIGN_OR_RETURN(auto marker, TargetMarker(*tgt, config.tables[t]));
    if (in_progress && !plan.restart_snapshot) {
      spdlog::info("snapshot of {}: resuming ({} of about {} rows done)", spec.source.ToString(),
                   prog.rows, prog.total);
      waiting.push_back(t);
      baseline->push_back(marker);
      continue;
    }
    bool lost = false;  // the target lost the copy: recreated or truncated since
    if (!plan.snapshot_only && prog.state == snapshot::State::kDone && !plan.restart_snapshot) {
      DT_ASSIGN_OR_RETURN(auto state, apply::LoadTargetState(*tgt, spec.target));
      DT_ASSIGN_OR_RETURN(auto epoch, capture::NewestRecordedPosition(*src, config.tunnel.name));
      const apply::CopyJudgement j = apply::JudgeCopy(state, epoch.epoch, prog.marker_tick);
      if (j.state != apply::CopyState::kLost) continue;  // already copied: stream only
      lost = true;
      if (state.has_rows && !plan.truncate_target && !config.pipeline.truncate_target) {
        return Status::BadConfig(fmt::format(
            "target table {} no longer holds the snapshot of {} ({}) and already holds rows "
            "again; copy it again with `datatunnel snapshot --table {} --restart "
            "--truncate-target` (or set pipeline.truncate_target = true)",
            spec.target.ToString(), spec.source.ToString(), j.why, spec.source.ToString()));
      }
      spdlog::warn("snapshot of {}: {}; copying it again", spec.source.ToString(), j.why);
    }
    DT_ASSIGN_OR_RETURN(auto rows,
                        tgt->Query("SELECT EXISTS (SELECT 1 FROM " + spec.target.Quoted() + ")"));
    if (plan.truncate_target || config.pipeline.truncate_target || lost) {
      DT_ASSIGN_OR_RETURN(const bool captured, apply::IsCapturedSource(*tgt, spec.target));
      if (captured) {
        return Status::BadConfig(fmt::format(
            "target table {} is itself captured by datatunnel (it has the capture trigger): "
            "refusing to empty it for a snapshot; check target.dsn and the table's target, or "
            "empty it yourself if it really is to be overwritten",
            spec.target.ToString()));
      }
      // Everything published so far is superseded by the copy: consumers drop
      // it (and pass a gap in it, which is how a gap is repaired).
      DT_ASSIGN_OR_RETURN(auto upto, capture::NewestRecordedPosition(*src, config.tunnel.name));
      DT_RETURN_IF_ERROR(apply::ResyncForSnapshot(*tgt, spec.target, upto));
      if (rows.GetBool(0, 0)) {
        spdlog::info("snapshot of {}: emptied target table {} (--truncate-target)",
                     spec.source.ToString(), spec.target.ToString());
      }
    } else if (rows.GetBool(0, 0)) {
      DT_ASSIGN_OR_RETURN(auto applied,
                          tgt->Query("SELECT COALESCE(sum(applied_count), 0) FROM "
                                     "datatunnel.applied WHERE target_schema = $1 AND "
                                     "target_table = $2",
                                     {spec.target.schema, spec.target.name}));
      const bool from_stream = applied.GetInt64(0, 0) > 0 && !plan.snapshot_only;
      if (!from_stream) {
        return Status::BadConfig(fmt::format(
            "target table {} already holds rows; a snapshot would mix them with the source's. "
            "Empty it first, or pass --truncate-target (or set pipeline.truncate_target = true) "
            "to let datatunnel empty it",
            spec.target.ToString()));
      }
    }
    DT_RETURN_IF_ERROR(snapshot::Request(*src, spec, /*restart=*/true));
    DT_RETURN_IF_ERROR(src->Exec("NOTIFY datatunnel"));
    spdlog::info("snapshot of {}: requested", spec.source.ToString());
    waiting.push_back(t);
    baseline->push_back(marker);
  }
  return waiting;
}

std::string Human(double v) {
  if (v >= 1e6) return fmt::format("{:.1f}M", v / 1e6);
  if (v >= 1e4) return fmt::format("{:.0f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

// One line of counters per table, of the sides this process runs: a
// producer has nothing applied, a consumer nothing captured.
std::string StatusLine(const metrics::Metrics& m, const RunPlan& plan,
                       std::vector<int64_t>* last_rows, double dt) {
  std::string line;
  for (size_t i = 0; i < m.size(); ++i) {
    const auto& t = m.table(i);
    std::string part = t.source + ":";
    if (plan.source) {
      part += fmt::format(" captured {} published {}", t.captured.load(), t.published.load());
    }
    if (plan.target) part += fmt::format(" applied {}", t.applied.load());
    if (plan.source && plan.target) {
      int64_t lag = t.captured.load() - t.applied.load() - t.skipped.load();
      if (lag < 0) lag = 0;
      part += fmt::format(" lag {}", lag);
    }
    const int64_t cap = t.last_captured_us.load(), app = t.last_applied_us.load();
    if (plan.target && cap > 0 && app >= cap) {
      part += fmt::format(" ({:.0f} ms)", (app - cap) / 1000.0);
    }
    if (t.snapshot_running.load()) {
      const int64_t rows = t.snapshot_rows.load(),
                    total = std::max<int64_t>(1, t.snapshot_total.load());
      const double rate = dt > 0 ? (rows - (*last_rows)[i]) / dt : 0;
      part +=
          fmt::format(" | snapshot {:3.0f}% {}/{} rows {}/s", std::min(100.0, 100.0 * rows / total),
                      Human(rows), Human(total), Human(rate));
      if (rate > 0 && total > rows) part += fmt::format(" ETA {:.0f}s", (total - rows) / rate);
      (*last_rows)[i] = rows;
    }
    line += (line.empty() ? "" : "  ") + part;
  }
  return line;
}

}  // namespace

int RunTunnel(const Globals& g, const RunPlan& plan) {
  SetupLogging(g);
  // First of all: a SIGTERM during the start-up checks (a supervisor's stop,
  // which can come at any moment) is a clean stop, never a death by signal.
  StopSource main_stop, source_stop, target_stop;
  InstallSignalHandlers(&main_stop);
  auto config = LoadConfig(g);
  if (!config.ok()) return Fail(config.status());
  const bool memory = config->kafka.none();
  if (memory && plan.source != plan.target) {
    return Fail(Status::BadConfig(
        "produce and consume need a Kafka broker: set kafka.brokers (or --brokers); without a "
        "broker, use `datatunnel run`, which then hands changes over in memory"));
  }
  pg::ConnectOptions so = SourceOptions(*config), to = TargetOptions(*config);
  if (Status st = ResolvePasswords(*config, &so, &to); !st.ok()) return Fail(st);
  if (Status st = CheckOnlyTables(*config, plan); !st.ok()) return Fail(st);
  if (!memory) {
    if (Status st = broker::CheckReachable(config->kafka, 10000); !st.ok()) return Fail(st);
  }
  std::string install;
  if (Status st = CheckSetup(*config, plan, so, to, &install); !st.ok()) return Fail(st);
  if (main_stop.stop_requested()) return kExitOk;

  std::vector<size_t> snapshot_tables;
  std::vector<MarkerState> baseline;
  if (plan.snapshot_first || plan.snapshot_only) {
    auto waiting = PrepareSnapshots(*config, plan, so, to, &baseline);
    if (!waiting.ok()) return Fail(waiting.status());
    snapshot_tables = *waiting;
    if (plan.snapshot_only && snapshot_tables.empty()) {
      spdlog::info("nothing to snapshot");
      return kExitOk;
    }
  }

  std::vector<std::pair<std::string, std::string>> names;
  for (const auto& t : config->tables) names.emplace_back(t.source.ToString(), t.target.ToString());
  metrics::Metrics metrics(names);
  // /metrics, /healthz, /readyz (declared after `metrics`: destroyed first).
  std::unique_ptr<metrics::HttpServer> http;
  if (!config->metrics.listen.empty()) {
    const double max_lag = config->pipeline.ready_max_lag_seconds;
    auto server = metrics::HttpServer::Start(
        config->metrics.listen, &metrics,
        [&metrics, plan, max_lag, memory]() -> metrics::Readiness {
          if (plan.source && !metrics.source_connected)
            return {false, "not connected to the source"};
          if (plan.target && !metrics.target_connected)
            return {false, "not connected to the target"};
          // Ready means a change written now is carried at once: the
          // producer knows its topics and the consumer has its partitions.
          if (plan.source && !metrics.producer_ready)
            return {false,
                    "the producer is starting (its first messages are not acknowledged yet)"};
          if (plan.target && !memory && !metrics.consumer_ready)
            return {false,
                    "the consumer is waiting for its partitions (joining its group, or "
                    "waiting for the topics to exist)"};
          const int64_t now = NowMicros();
          for (size_t i = 0; i < metrics.size(); ++i) {
            const auto& t = metrics.table(i);
            // The age of the oldest change held back: an idle tunnel is not behind.
            if (plan.source && plan.target) {
              const double lag = t.LagSeconds(now);
              if (lag > max_lag) {
                return {false, fmt::format("{} is {:.1f} s behind (more than {} s)", t.source, lag,
                                           max_lag)};
              }
            }
          }
          return {true, ""};
        });
    if (!server.ok()) return Fail(server.status());
    http = std::move(*server);
    spdlog::info("metrics: serving /metrics, /healthz and /readyz on port {} ({})", http->port(),
                 config->metrics.listen);
  }
  if (main_stop.stop_requested()) return kExitOk;

  std::optional<tunnel::MemoryChannel> channel;
  if (memory) {
    channel.emplace(static_cast<size_t>(config->pipeline.max_in_flight), size_t{64} << 20);
  }

  std::unique_ptr<tunnel::SourceWorker> source;
  std::unique_ptr<tunnel::ChangeSink> sink;
  if (plan.source) {
    tunnel::SourceOptions opts;
    opts.connect = so;
    opts.tunnel = config->tunnel.name;
    opts.tables = config->tables;
    opts.pipeline = config->pipeline;
    opts.exit_after_snapshot = plan.snapshot_only && memory;
    source = std::make_unique<tunnel::SourceWorker>(opts, &metrics, &source_stop);
    auto deliver = [w = source.get()](uint64_t token, const Status& st) {
      w->OnDelivery(token, st);
    };
    if (memory) {
      sink = std::make_unique<tunnel::MemorySink>(&*channel, deliver);
    } else {
      // The envelope names the source database.
      std::string db = pg::DescribeDsn(so.dsn);
      auto slash = db.find('/');
      auto space = db.find(' ', slash == std::string::npos ? 0 : slash);
      db = slash == std::string::npos ? db : db.substr(slash + 1, space - slash - 1);
      auto ks =
          tunnel::KafkaSink::Create(config->kafka, {db, config->tunnel.name, install}, deliver);
      if (!ks.ok()) return Fail(ks.status());
      sink = std::move(*ks);
    }
    source->SetSink(sink.get());
  }
  tunnel::TargetOptions topts;
  topts.connect = to;
  topts.tunnel = config->tunnel.name;
  topts.tables = config->tables;
  topts.pipeline = config->pipeline;
  topts.kafka = config->kafka;
  std::unique_ptr<tunnel::KafkaTargetWorker> kafka_target;
  std::unique_ptr<tunnel::MemoryTargetWorker> memory_target;
  if (plan.target) {
    if (memory) {
      memory_target =
          std::make_unique<tunnel::MemoryTargetWorker>(topts, &*channel, &metrics, &target_stop);
    } else {
      kafka_target = std::make_unique<tunnel::KafkaTargetWorker>(topts, &metrics, &target_stop);
    }
  }

  Outcome source_out, target_out;
  std::thread source_thread, target_thread;
  if (source) {
    source_thread = std::thread([&] {
      source_out.status = source->Run();
      source_out.done = true;
      main_stop.RequestStop();  // wake the main loop
    });
  }
  if (plan.target) {
    target_thread = std::thread([&] {
      target_out.status = memory_target ? memory_target->Run() : kafka_target->Run();
      target_out.done = true;
      main_stop.RequestStop();
    });
  }

  // On a terminal, a status line redrawn every second; otherwise (a service, a
  // pipe, JSON logs) a log line every few seconds while something moves, and
  // once a minute while idle.
  const bool tty = isatty(STDERR_FILENO) && g.log_format != "json";
  const int interval = plan.status_interval_s >= 0 ? plan.status_interval_s : (tty ? 1 : 5);
  constexpr int64_t kIdleLogMicros = 60'000'000;
  std::vector<int64_t> last_rows(metrics.size(), 0);
  int64_t last_print = MonotonicMicros(), last_logged = 0;
  std::string last_line;
  std::unique_ptr<pg::Connection> watch;          // target, for snapshot completion
  std::unique_ptr<pg::Connection> standby_watch;  // source, while another tunnel copies
  int64_t last_standby_check = 0;
  bool snapshot_complete = false;
  bool signalled = false;
  while (true) {
    pollfd p{main_stop.wake_fd(), POLLIN, 0};
    poll(&p, 1, 250);
    if (source_out.done || target_out.done) break;
    if (main_stop.stop_requested()) {
      signalled = true;
      break;
    }
    const int64_t now = MonotonicMicros();
    if (interval > 0 && now - last_print >= int64_t{interval} * 1'000'000) {
      std::string line = StatusLine(metrics, plan, &last_rows, (now - last_print) / 1e6);
      if (tty) {
        fmt::print(stderr, "\r\033[K{}", line);
      } else if (line != last_line || now - last_logged >= kIdleLogMicros) {
        spdlog::info("{}", line);
        last_logged = now;
        last_line = std::move(line);
      }
      last_print = now;
    }
    if (plan.snapshot_only && memory && metrics.leader.load() == 0 &&
        now - last_standby_check >= 1'000'000) {
      // Another tunnel holds the producer lock and copies the tables for us
      // (in memory, a chunk is recorded done once applied): wait for it.
      last_standby_check = now;
      if (!standby_watch || standby_watch->IsBroken()) {
        auto c = pg::Connection::Open(so);
        if (c.ok()) standby_watch = std::move(*c);
      }
      if (standby_watch) {
        bool all = true;
        for (size_t t : snapshot_tables) {
          auto r = standby_watch->Query(
              "SELECT snapshot_state FROM datatunnel.tables WHERE schema_name = $1 AND "
              "table_name = $2",
              {config->tables[t].source.schema, config->tables[t].source.name});
          all = all && r.ok() && r->rows() == 1 && r->Get(0, 0) == "done";
        }
        if (all) {
          spdlog::info("the tunnel already running copied the table(s)");
          snapshot_complete = true;
          break;
        }
      }
    }
    if (plan.snapshot_only && !memory) {
      // Done once every partition of every requested table applied the marker.
      if (!watch || watch->IsBroken()) {
        auto c = pg::Connection::Open(to);
        if (c.ok()) watch = std::move(*c);
      }
      if (watch) {
        bool all = true;
        for (size_t i = 0; i < snapshot_tables.size() && all; ++i) {
          auto m = TargetMarker(*watch, config->tables[snapshot_tables[i]]);
          all = m.ok() && m->tick > baseline[i].tick && m->complete;
        }
        if (all) {
          snapshot_complete = true;
          break;
        }
      }
    }
  }
  if (tty && interval > 0) fmt::print(stderr, "\n");
  // Stop in flow order: the source flushes what it sent, then the target
  // applies what reached it.
  source_stop.RequestStop();
  if (source_thread.joinable()) source_thread.join();
  if (memory && plan.target && !target_out.done) {
    // Let the target apply what the source handed over before it stopped.
    const int64_t deadline = MonotonicMicros() + 5'000'000;
    while (channel->queued() > 0 && !target_out.done && MonotonicMicros() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  target_stop.RequestStop();
  if (channel) channel->Close();
  if (target_thread.joinable()) target_thread.join();

  for (Outcome* o : {&source_out, &target_out}) {
    if (o->done && !o->status.ok() && !o->status.IsCancelled()) return Fail(o->status);
  }
  if (plan.snapshot_only) {
    if (memory && source_out.done && source_out.status.ok() && !signalled) snapshot_complete = true;
    if (snapshot_complete) {
      spdlog::info("snapshot complete: {} table(s) copied to the target", snapshot_tables.size());
      return kExitOk;
    }
    spdlog::warn("snapshot interrupted; run `datatunnel snapshot` again to resume it");
    return signalled ? kExitOk : kExitFailure;
  }
  return kExitOk;
}

}  // namespace datatunnel::cli
