// datatunnel status: positions read from both databases (no tunnel process needed).
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <thread>

#include "apply/install.h"
#include "capture/change_log.h"
#include "capture/install.h"
#include "cli/common.h"
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

std::string Render(const std::vector<Row>& rows, bool json) {
  std::string out;
  if (json) {
    out = "{\"tables\":[";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      out += fmt::format(
          "{}{{\"source\":\"{}\",\"target\":\"{}\",\"captured\":{},\"published\":{},"
          "\"applied\":{},\"pending\":{},\"lag_changes\":{},\"lag_seconds\":{:.3f},"
          "\"caught_up\":{},\"dead_letters\":{},\"last_applied_at\":\"{}\","
          "\"snapshot\":{{\"state\":\"{}\",\"rows\":{},\"total\":{}}},\"snapshot_detail\":{},"
          "\"gaps\":[",
          i ? "," : "", r.source, r.target, r.published + r.pending, r.published, r.applied,
          r.pending, r.lag, r.lag_seconds, r.caught_up, r.dead, r.last_applied_at, r.snapshot_state,
          r.snapshot_rows, r.snapshot_total, JsonString(r.snapshot_detail));
      for (size_t k = 0; k < r.gaps.size(); ++k) {
        const apply::RecordedGap& g = r.gaps[k];
        out += fmt::format(
            "{}{{\"topic\":{},\"partition\":{},\"offset\":{},\"expected\":\"{}\","
            "\"found\":\"{}\",\"detected_at\":\"{}\",\"message\":{}}}",
            k ? "," : "", JsonString(g.stream), g.partition, g.offset, g.expected, g.found,
            g.detected_at, JsonString(g.Describe(r.source, r.target)));
      }
      out += "]}";
    }
    return out + "]}\n";
  }
  out = fmt::format("{:<28} {:>10} {:>10} {:>10} {:>8} {:>8} {:>9}  {}\n", "TABLE", "CAPTURED",
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
  return out;
}

// Tables captured on the source that the configuration no longer names:
// their change tables grow until `uninstall --table` removes them.
Result<std::string> RenderNotConfigured(pg::Connection& src, const Config& c, bool json) {
  DT_ASSIGN_OR_RETURN(auto captured, capture::CapturedTables(src, c.tunnel.name));
  std::string out;
  for (const auto& t : captured) {
    if (!capture::NotConfigured({t}, c.tables).empty()) {
      DT_ASSIGN_OR_RETURN(int64_t n, capture::CountChanges(src, t.change_table));
      const std::string name = t.source.ToString();
      if (json) {
        out += fmt::format("{}{{\"source\":{},\"pending\":{}}}", out.empty() ? "" : ",",
                           JsonString(name), n);
      } else {
        out += fmt::format(
            "NOT CONFIGURED: {} is captured but not in the configuration ({} changes waiting in "
            "its change table, which keeps growing); `datatunnel uninstall --yes --table {}` "
            "removes its capture\n",
            name, n, name);
      }
    }
  }
  if (json) return "\"not_configured\":[" + out + "]";
  return out;
}

int RunStatus(const Globals& g, const StatusOptions& o) {
  SetupLogging(g);
  auto config = LoadConfig(g);
  if (!config.ok()) return Fail(config.status());
  pg::ConnectOptions so = SourceOptions(*config), to = TargetOptions(*config);
  so.application_name = to.application_name = "datatunnel status";
  if (Status st = ResolvePasswords(*config, &so, &to); !st.ok()) return Fail(st);
  auto src = pg::Connection::Open(so);
  if (!src.ok()) return Fail(src.status());
  auto tgt = pg::Connection::Open(to);
  if (!tgt.ok()) return Fail(tgt.status());
  StopSource stop;
  if (o.watch) InstallSignalHandlers(&stop);
  const bool tty = isatty(STDOUT_FILENO);
  do {
    auto rows = Collect(**src, **tgt, *config);
    if (!rows.ok()) return Fail(rows.status());
    std::string text = Render(*rows, o.json);
    auto removed = RenderNotConfigured(**src, *config, o.json);
    if (!removed.ok()) return Fail(removed.status());
    if (o.json) {
      text.insert(text.rfind('}'), "," + *removed);
    } else {
      text += *removed;
    }
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
