// datatunnel status: positions read from both databases (no tunnel process needed).
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <thread>

#include "apply/consistency.h"
#include "apply/install.h"
#include "capture/change_log.h"
#include "capture/install.h"
#include "cli/common.h"
#include "core/json.h"
#include "core/stop.h"
#include "snapshot/chunker.h"

namespace datatunnel::cli {
namespace {

struct StatusOptions {
  bool json = false;
  bool watch = false;
};

struct Row {
  std::string source, target;
  int64_t published = 0, pending = 0, applied = 0, dead = 0;
  int64_t lag = 0;
  double lag_seconds = 0;
  bool caught_up = true;
  std::string last_applied_at;
  std::string snapshot_state = "none";
  std::string snapshot_detail;  // published, incomplete: why, and the fix
  int64_t snapshot_rows = 0, snapshot_total = 0;
  std::vector<apply::RecordedGap> gaps;  // the consumer stops at each
};

// Lag from positions: a partition of the table's topic is caught up when the
// target is done with (applied, skipped or superseded by a snapshot) the
// source's chain head there, the last message the producer published to it.
// Changes still in the change table are not published yet, so not applied.
// The age is that of the oldest change not applied: the oldest pending one,
// and in a partition behind, the start of the current burst of publishing
// when the target had applied everything before it (else the age of the
// newest change the target applied there, an upper bound).
void ComputeLag(const capture::SourceBacklog& src, const apply::TargetTableState& tgt,
                const std::string& topic, Row* r) {
  int behind = 0;
  double age = src.pending > 0 ? src.oldest_pending_age : 0;
  for (const auto& head : src.heads) {
    const apply::TargetTableState::Partition* part = nullptr;
    for (const auto& p : tgt.partitions) {
      if (p.stream == topic && p.partition == head.partition) part = &p;
    }
    Position done = std::max(part ? part->done : Position{}, tgt.resync);
    if (done >= head.pos) continue;
    ++behind;
    if (done >= head.since || !part || part->since_applied < 0) {
      age = std::max(age, head.since_age);
    } else {
      age = std::max(age, part->since_applied);
    }
  }
  r->caught_up = behind == 0 && src.pending == 0;
  // How many messages a partition lacks is not recorded anywhere; estimate it
  // from the counters, at least one per partition behind.
  int64_t in_flight = 0;
  if (behind > 0) {
    const int64_t applied_changes = std::max<int64_t>(0, r->applied - r->snapshot_rows);
    in_flight = std::max<int64_t>(behind, src.published_count - applied_changes);
  }
  r->lag = src.pending + in_flight;
  r->lag_seconds = r->caught_up ? 0 : age;
}

Result<std::vector<Row>> Collect(pg::Connection& src, pg::Connection& tgt, const Config& c) {
  DT_RETURN_IF_ERROR(capture::CheckInstalled(src, c.tunnel.name, c.tables));
  DT_RETURN_IF_ERROR(apply::CheckInstalled(tgt));
  std::vector<Row> rows;
  for (const auto& t : c.tables) {
    Row r;
    r.source = t.source.ToString();
    r.target = t.target.ToString();
    DT_ASSIGN_OR_RETURN(auto backlog, capture::LoadBacklog(src, t.source, t.topic));
    TableSpec spec;
    spec.source = t.source;
    spec.target = t.target;
    DT_ASSIGN_OR_RETURN(auto snap, snapshot::LoadProgress(src, spec));
    DT_ASSIGN_OR_RETURN(auto target, apply::LoadTargetState(tgt, t.target));
    r.published = backlog.published_count;
    r.pending = backlog.pending;
    r.snapshot_state = std::string(snapshot::StateName(snap.state));
    r.snapshot_rows = snap.rows;
    r.snapshot_total = snap.total;
    for (const auto& p : target.partitions) {
      r.applied += p.applied_count;
      r.dead += p.dead_letters;
      r.last_applied_at = std::max(r.last_applied_at, p.updated_at);
    }
    ComputeLag(backlog, target, t.topic, &r);
    const std::string fix = fmt::format(
        "`datatunnel run` copies it again when the target table is empty, else run `datatunnel "
        "snapshot --table {} --restart --truncate-target`",
        r.source);
    if (snap.state == snapshot::State::kDone) {
      // Done means the target holds the copy, not that it was published.
      const apply::CopyJudgement j = apply::JudgeCopy(target, backlog.epoch, snap.marker_tick);
      if (j.state == apply::CopyState::kNotApplied) {
        r.snapshot_state = "published";
        r.snapshot_detail = j.why + "; a running consumer applies it";
      } else if (j.state == apply::CopyState::kLost) {
        r.snapshot_state = "incomplete";
        r.snapshot_detail = j.why + ": " + fix;
      }
    } else if (!target.exists) {
      r.snapshot_state = "incomplete";
      r.snapshot_detail = "the target table does not exist: run `datatunnel init`";
    }
    DT_ASSIGN_OR_RETURN(r.gaps, apply::LoadGaps(tgt, t.target));
    rows.push_back(std::move(r));
  }
  return rows;
}

// Whether the target shows a state the source had (apply_consistency =
// "transaction"): it committed whole ticks, up to `tick`, and no table is
// being copied (a snapshot in progress is not a state of the source yet).
struct Consistency {
  bool transactional = false;
  bool consistent = false;
  apply::ConsistencyState state;
  std::string why;  // when not consistent
};

Result<Consistency> CollectConsistency(pg::Connection& tgt, const Config& c,
                                       const std::vector<Row>& rows) {
  Consistency out;
  out.transactional = c.pipeline.transactional();
  DT_ASSIGN_OR_RETURN(out.state, apply::LoadConsistency(tgt, c.tunnel.name));
  if (!out.transactional) {
    out.why = "apply_consistency is \"key\"";
    return out;
  }
  if (!out.state.found) {
    out.why = "no whole tick applied yet";
    return out;
  }
  for (const Row& r : rows) {
    if (r.snapshot_state == "requested" || r.snapshot_state == "running" ||
        r.snapshot_state == "published" || r.snapshot_state == "incomplete") {
      out.why = fmt::format("the copy of {} is {}", r.source, r.snapshot_state);
      return out;
    }
  }
  out.consistent = true;
  return out;
}

// A table captured on the source that the configuration no longer names:
// its change table grows until `uninstall --table` removes it.
struct NotConfigured {
  std::string source;
  int64_t pending = 0;  // rows in its change table
};

Result<std::vector<NotConfigured>> CollectNotConfigured(pg::Connection& src, const Config& c) {
  DT_ASSIGN_OR_RETURN(auto captured, capture::CapturedTables(src, c.tunnel.name));
  std::vector<NotConfigured> out;
  for (const auto& t : captured) {
    if (!capture::NotConfigured({t}, c.tables).empty()) {
      DT_ASSIGN_OR_RETURN(int64_t n, capture::CountChanges(src, t.change_table));
      out.push_back({t.source.ToString(), n});
    }
  }
  return out;
}

// One entry of "tables" in `status --json`.
void WriteRowJson(JsonWriter& w, const Row& r) {
  w.StartObject();
  w.Key("source");
  w.String(r.source);
  w.Key("target");
  w.String(r.target);
  w.Key("captured");
  w.Int64(r.published + r.pending);
  w.Key("published");
  w.Int64(r.published);
  w.Key("applied");
  w.Int64(r.applied);
  w.Key("pending");
  w.Int64(r.pending);
  w.Key("lag_changes");
  w.Int64(r.lag);
  w.Key("lag_seconds");
  w.Double(std::isfinite(r.lag_seconds) ? std::round(r.lag_seconds * 1000) / 1000 : 0);
  w.Key("caught_up");
  w.Bool(r.caught_up);
  w.Key("dead_letters");
  w.Int64(r.dead);
  w.Key("last_applied_at");
  w.String(r.last_applied_at);
  w.Key("snapshot");
  w.StartObject();
  w.Key("state");
  w.String(r.snapshot_state);
  w.Key("rows");
  w.Int64(r.snapshot_rows);
  w.Key("total");
  w.Int64(r.snapshot_total);
  w.EndObject();
  w.Key("snapshot_detail");
  w.String(r.snapshot_detail);
  w.Key("gaps");
  w.StartArray();
  for (const apply::RecordedGap& g : r.gaps) {
    w.StartObject();
    w.Key("topic");
    w.String(g.stream);
    w.Key("partition");
    w.Int(g.partition);
    w.Key("offset");
    w.Int64(g.offset);
    w.Key("expected");
    w.String(g.expected);
    w.Key("found");
    w.String(g.found);
    w.Key("detected_at");
    w.String(g.detected_at);
    w.Key("message");
    w.String(g.Describe(r.source, r.target));
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
}

// The document docs/operations.md describes ("status --json").
std::string RenderJson(const std::vector<Row>& rows, const std::vector<NotConfigured>& removed,
                       const Consistency& cons) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.SetMaxDecimalPlaces(3);
  w.StartObject();
  w.Key("consistency");
  w.StartObject();
  w.Key("mode");
  w.String(cons.transactional ? "transaction" : "key");
  w.Key("consistent");
  w.Bool(cons.consistent);
  w.Key("tick");
  if (cons.state.found) {
    w.Int64(cons.state.end.tick);
  } else {
    w.Null();
  }
  w.Key("applied_at");
  if (cons.state.found) {
    w.String(cons.state.applied_at);
  } else {
    w.Null();
  }
  w.Key("age_seconds");
  if (cons.state.found) {
    w.Double(cons.state.age_seconds);
  } else {
    w.Null();
  }
  w.Key("why_not");
  if (cons.consistent) {
    w.Null();
  } else {
    w.String(cons.why);
  }
  w.EndObject();
  w.Key("tables");
  w.StartArray();
  for (const Row& r : rows) WriteRowJson(w, r);
  w.EndArray();
  w.Key("not_configured");
  w.StartArray();
  for (const NotConfigured& t : removed) {
    w.StartObject();
    w.Key("source");
    w.String(t.source);
    w.Key("pending");
    w.Int64(t.pending);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return JsonText(buf) + "\n";
}

std::string RenderText(const std::vector<Row>& rows, const std::vector<NotConfigured>& removed,
                       const Consistency& cons) {
  std::string out =
      fmt::format("{:<28} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9}  {}\n", "TABLE", "CAPTURED",
                  "PUBLISHED", "APPLIED", "LAG", "LAG(s)", "PENDING", "SNAPSHOT");
  for (const Row& r : rows) {
    std::string snap = r.snapshot_state;
    if (r.snapshot_state == "running" || r.snapshot_state == "requested") {
      snap += fmt::format(" {}/{} rows", r.snapshot_rows, r.snapshot_total);
    } else if (r.snapshot_state == "done" || r.snapshot_state == "published") {
      snap += fmt::format(" ({} rows)", r.snapshot_rows);
    }
    out += fmt::format("{:<28} {:>10} {:>10} {:>10} {:>8} {:>8.1f} {:>9}  {}\n", r.source,
                       r.published + r.pending, r.published, r.applied, r.lag, r.lag_seconds,
                       r.pending, snap);
  }
  for (const Row& r : rows) {
    if (r.snapshot_state == "incomplete") {
      out += fmt::format("INCOMPLETE: target table {}: {}\n", r.target, r.snapshot_detail);
    } else if (!r.snapshot_detail.empty()) {
      out += fmt::format("SNAPSHOT: {}: {}\n", r.source, r.snapshot_detail);
    }
    for (const auto& g : r.gaps) out += "GAP: " + g.Describe(r.source, r.target) + "\n";
  }
  if (cons.transactional && cons.consistent) {
    out += fmt::format(
        "CONSISTENT: the target shows the source's state at tick {} (committed {:.1f} s ago)\n",
        cons.state.end.tick, cons.state.age_seconds);
  } else if (cons.transactional) {
    out += fmt::format("NOT CONSISTENT: {}{}\n", cons.why,
                       cons.state.found ? fmt::format(" (last whole tick {})", cons.state.end.tick)
                                        : std::string());
  }
  for (const NotConfigured& t : removed) {
    out += fmt::format(
        "NOT CONFIGURED: {} is captured but not in the configuration ({} changes waiting in "
        "its change table, which keeps growing); `datatunnel uninstall --yes --table {}` "
        "removes its capture\n",
        t.source, t.pending, t.source);
  }
  return out;
}

int RunStatus(const Globals& g, const StatusOptions& o) {
  auto setup = LoadSetup(g, "datatunnel status");
  if (!setup.ok()) return Fail(setup.status());
  auto db = OpenDatabases(*setup);
  if (!db.ok()) return Fail(db.status());
  if (Status st =
          ResolveTables(&setup->config, db->source.get(), db->target.get(), Selection::kCaptured);
      !st.ok()) {
    return Fail(st);
  }
  const Config& config = setup->config;
  StopSource stop;
  if (o.watch) InstallSignalHandlers(&stop);
  const bool tty = isatty(STDOUT_FILENO);
  do {
    auto rows = Collect(*db->source, *db->target, config);
    if (!rows.ok()) return Fail(rows.status());
    auto removed = CollectNotConfigured(*db->source, config);
    if (!removed.ok()) return Fail(removed.status());
    auto cons = CollectConsistency(*db->target, config, *rows);
    if (!cons.ok()) return Fail(cons.status());
    const std::string text =
        o.json ? RenderJson(*rows, *removed, *cons) : RenderText(*rows, *removed, *cons);
    if (o.watch && tty && !o.json) fmt::print("\033[H\033[2J");
    fmt::print("{}", text);
    std::fflush(stdout);
  } while (o.watch && !stop.SleepFor(1000));
  return kExitOk;
}

}  // namespace

void AddStatusCommand(CLI::App& app, Globals* g) {
  auto* cmd = app.add_subcommand(
      "status",
      "Per table: changes captured, published, applied, lag, change-table size and snapshot "
      "state, read from the databases (no tunnel process needed)");
  auto o = std::make_shared<StatusOptions>();
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->add_flag("--watch", o->watch, "Redraw every second until Ctrl-C");
  cmd->callback([g, o] { g_exit_code = RunStatus(*g, *o); });
}

}  // namespace datatunnel::cli
