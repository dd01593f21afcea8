// datatunnel status: positions read from both databases (no tunnel process needed).
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <thread>

#include "apply/install.h"
#include "capture/install.h"
#include "cli/common.h"
#include "core/stop.h"

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
  std::string last_applied_at;
  std::string snapshot_state = "none";
  int64_t snapshot_rows = 0, snapshot_total = 0;
  bool target_snapshot_complete = false;
  std::vector<apply::RecordedGap> gaps;  // the consumer stops at each
};

Result<std::vector<Row>> Collect(pg::Connection& src, pg::Connection& tgt, const Config& c) {
  DT_RETURN_IF_ERROR(capture::CheckInstalled(src, c.tunnel.name, c.tables));
  DT_RETURN_IF_ERROR(apply::CheckInstalled(tgt));
  std::vector<Row> rows;
  for (const auto& t : c.tables) {
    Row r;
    r.source = t.source.ToString();
    r.target = t.target.ToString();
    auto q = src.Query(
        "SELECT published_count, snapshot_state, snapshot_rows, snapshot_total, "
        "change_table FROM datatunnel.tables WHERE schema_name = $1 AND table_name = $2",
        {t.source.schema, t.source.name});
    if (!q.ok()) return q.status();
    if (q->rows() == 0) {
      return Status::BadConfig(
          fmt::format("table {} is not set up for capture: run `datatunnel init`", r.source));
    }
    r.published = q->GetInt64(0, 0);
    r.snapshot_state = std::string(q->Get(0, 1));
    r.snapshot_rows = q->GetInt64(0, 2);
    r.snapshot_total = q->GetInt64(0, 3);
    QualifiedName cdc{t.source.schema, std::string(q->Get(0, 4))};
    DT_ASSIGN_OR_RETURN(auto pend,
                        src.Query(fmt::format("SELECT count(*), COALESCE(extract(epoch "
                                              "FROM now() - min({})), 0)::float8 FROM {}",
                                              capture::kCapturedAtColumn, cdc.Quoted())));
    r.pending = pend.GetInt64(0, 0);
    const double oldest_pending = std::strtod(std::string(pend.Get(0, 1)).c_str(), nullptr);
    auto a = tgt.Query(
        "SELECT COALESCE(sum(applied_count), 0), COALESCE(sum(dead_letter_count), 0), "
        "  COALESCE(extract(epoch FROM now() - max(last_captured_at)), 0)::float8, "
        "  COALESCE(to_char(max(updated_at) AT TIME ZONE 'UTC', "
        "    'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), ''), "
        "  COALESCE(bool_or(snapshot_tick IS NOT NULL), false) "
        "FROM datatunnel.applied WHERE target_schema = $1 AND target_table = $2",
        {t.target.schema, t.target.name});
    if (!a.ok()) return a.status();
    r.applied = a->GetInt64(0, 0);
    r.dead = a->GetInt64(0, 1);
    r.last_applied_at = std::string(a->Get(0, 3));
    r.target_snapshot_complete = a->GetBool(0, 4);
    // Snapshot rows are applied too but are not changes: count changes only.
    const int64_t captured = r.published + r.pending;
    const int64_t applied_changes = std::max<int64_t>(0, r.applied - r.snapshot_rows);
    r.lag = std::max<int64_t>(0, captured - applied_changes);
    // How far behind the target is: the age of the newest change it has, or
    // of the oldest waiting one when it has none yet.
    const double since_applied = std::strtod(std::string(a->Get(0, 2)).c_str(), nullptr);
    const bool applied_any = since_applied > 0;
    r.lag_seconds = r.lag == 0 ? 0 : (applied_any ? since_applied : oldest_pending);
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
          "\"dead_letters\":{},\"last_applied_at\":\"{}\",\"snapshot\":{{\"state\":\"{}\","
          "\"rows\":{},\"total\":{}}},\"gaps\":[",
          i ? "," : "", r.source, r.target, r.published + r.pending, r.published, r.applied,
          r.pending, r.lag, r.lag_seconds, r.dead, r.last_applied_at, r.snapshot_state,
          r.snapshot_rows, r.snapshot_total);
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
    } else if (r.snapshot_state == "done") {
      snap += fmt::format(" ({} rows)", r.snapshot_rows);
    }
    out += fmt::format("{:<28} {:>10} {:>10} {:>10} {:>8} {:>8.1f} {:>9}  {}\n", r.source,
                       r.published + r.pending, r.published, r.applied, r.lag, r.lag_seconds,
                       r.pending, snap);
  }
  for (const Row& r : rows) {
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
