// datatunnel uninstall: remove capture from the source and state from both sides.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <algorithm>

#include "apply/install.h"
#include "capture/change_log.h"
#include "capture/install.h"
#include "cli/common.h"
#include "pg/catalog.h"

namespace datatunnel::cli {
namespace {

struct UninstallOptions {
  bool yes = false;
  bool all = false;                 // also tables captured but no longer configured
  std::vector<std::string> tables;  // only these (configured or captured)
};

// The tables to remove: source specs (for the capture) and the target
// specs of those in the configuration (for the apply positions).
struct Removal {
  std::vector<TableSpec> sources, targets;
  std::vector<QualifiedName> not_configured;  // captured, not in the configuration
  bool IsNotConfigured(const QualifiedName& n) const {
    return std::find(not_configured.begin(), not_configured.end(), n) != not_configured.end();
  }
};

Result<Removal> ChooseTables(const Config& config, const UninstallOptions& o,
                             const std::vector<capture::CapturedTable>& captured,
                             const pg::Connection& source) {
  Removal r;
  r.not_configured = capture::NotConfigured(captured, config.tables);
  auto add_configured = [&](const TableConfig& t) {
    TableSpec s;
    s.source = t.source;
    s.target = t.target;
    s.change_table = {t.source.schema, t.source.name + "_cdc"};
    for (const auto& c : captured) {
      if (c.source == t.source) s.change_table = c.change_table;
    }
    r.sources.push_back(s);
    r.targets.push_back(s);
  };
  auto add_captured = [&](const capture::CapturedTable& c) {
    TableSpec s;
    s.source = c.source;
    s.change_table = c.change_table;
    r.sources.push_back(s);
  };
  if (o.tables.empty()) {
    for (const auto& t : config.tables) add_configured(t);
    for (const auto& c : captured) {
      if (o.all && r.IsNotConfigured(c.source)) add_captured(c);
    }
    return r;
  }
  for (const auto& text : o.tables) {
    auto name = QualifiedName::Parse(text);
    if (!name) {
      return Status::BadConfig(
          fmt::format("--table {}: not a table name; give schema.table", text));
    }
    auto conf = std::find_if(config.tables.begin(), config.tables.end(),
                             [&](const TableConfig& t) { return t.source == *name; });
    auto cap = std::find_if(captured.begin(), captured.end(),
                            [&](const capture::CapturedTable& c) { return c.source == *name; });
    if (conf != config.tables.end()) {
      add_configured(*conf);
    } else if (cap != captured.end()) {
      add_captured(*cap);
    } else {
      return Status::BadConfig(fmt::format(
          "--table {}: no such table is configured or captured on the {}; `datatunnel status` "
          "lists the captured tables",
          name->ToString(), source.description()));
    }
  }
  return r;
}

// Never pull the state from under a running tunnel: its processes would
// stop with raw SQL errors, or recreate what was just removed.
Status RefuseWhileRunning(pg::Connection& source, pg::Connection& target, const Config& config) {
  DT_ASSIGN_OR_RETURN(const int producer, capture::ProducerBackend(source, config.tunnel.name));
  DT_ASSIGN_OR_RETURN(auto consumers, pg::OtherSessions(target, ApplicationName(config)));
  if (producer == 0 && consumers.empty()) return Status::OK();
  std::string who;
  if (producer != 0) who = fmt::format("its producer holds the lock (source backend {})", producer);
  if (!consumers.empty()) {
    who += fmt::format("{}sessions of it are connected to the target (backends {})",
                       who.empty() ? "" : "; ", fmt::join(consumers, ", "));
  }
  return Status::BadConfig(fmt::format(
      "tunnel \"{}\" is running: {}; stop its run/produce/consume processes first, then "
      "uninstall (nothing was changed)",
      config.tunnel.name, who));
}

// Never claim "nothing installed" while something is.
Status ReportLeft(pg::Connection& source, const Config& config, const UninstallOptions& o,
                  bool removed_any) {
  DT_ASSIGN_OR_RETURN(auto left_captured, capture::CapturedTables(source, config.tunnel.name));
  DT_ASSIGN_OR_RETURN(auto leftovers, capture::Leftovers(source));
  std::vector<std::string> still;
  for (const auto& c : left_captured) still.push_back(c.source.ToString());
  if (!still.empty()) {
    fmt::print(
        "source: still captured: {} (not removed: {}); `datatunnel uninstall --yes --table "
        "NAME` removes one, `--all` every one\n",
        fmt::join(still, ", "), o.tables.empty() ? "not in the configuration" : "not named");
  } else if (!leftovers.empty()) {
    fmt::print("source: still installed: {}\n", fmt::join(leftovers, ", "));
  } else if (!removed_any) {
    fmt::print("nothing to do: nothing of datatunnel is installed\n");
  }
  return Status::OK();
}

Status Uninstall(const Setup& setup, const UninstallOptions& o) {
  DT_ASSIGN_OR_RETURN(Databases db, OpenDatabases(setup));
  pg::Connection &source = *db.source, &target = *db.target;
  Config resolved = setup.config;
  DT_RETURN_IF_ERROR(ResolveTables(&resolved, &source, &target, Selection::kCapturedIfAny));
  const Config& config = resolved;
  DT_ASSIGN_OR_RETURN(auto captured, capture::CapturedTables(source, config.tunnel.name));
  DT_ASSIGN_OR_RETURN(Removal removal, ChooseTables(config, o, captured, source));
  DT_RETURN_IF_ERROR(RefuseWhileRunning(source, target, config));
  auto src = capture::Uninstall(source, removal.sources);
  if (!src.ok()) return src.status().WithContext("uninstall on the source");
  for (const auto& a : *src) fmt::print("source: {}\n", a);
  for (const auto& s : removal.sources) {
    if (removal.IsNotConfigured(s.source)) {
      fmt::print(
          "target: kept the apply positions of {}'s target table, which the configuration no "
          "longer names (they go with the target's datatunnel schema)\n",
          s.source.ToString());
    }
  }
  auto tgt = apply::Uninstall(target, removal.targets);
  if (!tgt.ok()) return tgt.status().WithContext("uninstall on the target");
  for (const auto& a : *tgt) fmt::print("target: {}\n", a);
  return ReportLeft(source, config, o, !src->empty() || !tgt->empty());
}

int RunUninstall(const Globals& g, const UninstallOptions& o) {
  auto setup = LoadSetup(g);
  if (!setup.ok()) return Fail(setup.status());
  if (!o.yes) {
    return Fail(Status::BadConfig(
        "uninstall drops the change tables (and any changes not yet published) and the tunnel's "
        "state on both databases; user tables are kept. Run again with --yes to proceed"));
  }
  if (o.all && !o.tables.empty()) {
    return Fail(Status::BadConfig("--all and --table exclude each other; give one of them"));
  }
  if (Status st = Uninstall(*setup, o); !st.ok()) return Fail(st);
  return kExitOk;
}

}  // namespace

void AddUninstallCommand(CLI::App& app, Globals* g) {
  auto* cmd = app.add_subcommand(
      "uninstall",
      "Remove triggers, change tables and state from both databases (keeps user data)");
  auto o = std::make_shared<UninstallOptions>();
  cmd->add_flag("--yes", o->yes, "Confirm");
  cmd->add_option("--table", o->tables,
                  "Remove only this table's capture (schema.table; repeatable), also one no "
                  "longer in the configuration");
  cmd->add_flag("--all", o->all,
                "Also remove the tables captured on the source but no longer configured");
  cmd->callback([g, o] { g_exit_code = RunUninstall(*g, *o); });
}

}  // namespace datatunnel::cli
