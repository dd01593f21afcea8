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

int RunUninstall(const Globals& g, const UninstallOptions& o) {
  auto setup = LoadSetup(g);
  if (!setup.ok()) return Fail(setup.status());
  const Config& config = setup->config;
  if (!o.yes) {
    return Fail(Status::BadConfig(
        "uninstall drops the change tables (and any changes not yet published) and the tunnel's "
        "state on both databases; user tables are kept. Run again with --yes to proceed"));
  }
  if (o.all && !o.tables.empty()) {
    return Fail(Status::BadConfig("--all and --table exclude each other; give one of them"));
  }
  auto db = OpenDatabases(*setup);
  if (!db.ok()) return Fail(db.status());
  pg::Connection &source = *db->source, &target = *db->target;
  auto captured = capture::CapturedTables(source, config.tunnel.name);
  if (!captured.ok()) return Fail(captured.status());

  // The tables to remove: source specs (for the capture) and the target
  // specs of those in the configuration (for the apply positions).
  std::vector<TableSpec> sources, targets;
  auto add_configured = [&](const TableConfig& t) {
    TableSpec s;
    s.source = t.source;
    s.target = t.target;
    s.change_table = {t.source.schema, t.source.name + "_cdc"};
    for (const auto& c : *captured) {
      if (c.source == t.source) s.change_table = c.change_table;
    }
    sources.push_back(s);
    targets.push_back(s);
  };
  auto add_captured = [&](const capture::CapturedTable& c) {
    TableSpec s;
    s.source = c.source;
    s.change_table = c.change_table;
    sources.push_back(s);
  };
  const auto not_configured = capture::NotConfigured(*captured, config.tables);
  auto is_not_configured = [&](const QualifiedName& n) {
    return std::find(not_configured.begin(), not_configured.end(), n) != not_configured.end();
  };
  if (!o.tables.empty()) {
    for (const auto& text : o.tables) {
      auto name = QualifiedName::Parse(text);
      if (!name) {
        return Fail(Status::BadConfig(
            fmt::format("--table {}: not a table name; give schema.table", text)));
      }
      auto conf = std::find_if(config.tables.begin(), config.tables.end(),
                               [&](const TableConfig& t) { return t.source == *name; });
      auto cap = std::find_if(captured->begin(), captured->end(),
                              [&](const capture::CapturedTable& c) { return c.source == *name; });
      if (conf != config.tables.end()) {
        add_configured(*conf);
      } else if (cap != captured->end()) {
        add_captured(*cap);
      } else {
        return Fail(Status::BadConfig(fmt::format(
            "--table {}: no such table is configured or captured on the {}; `datatunnel status` "
            "lists the captured tables",
            name->ToString(), source.description())));
      }
    }
  } else {
    for (const auto& t : config.tables) add_configured(t);
    if (o.all) {
      for (const auto& c : *captured) {
        if (is_not_configured(c.source)) add_captured(c);
      }
    }
  }

  // Never pull the state from under a running tunnel: its processes would
  // stop with raw SQL errors, or recreate what was just removed.
  auto producer = capture::ProducerBackend(source, config.tunnel.name);
  if (!producer.ok()) return Fail(producer.status());
  auto consumers = pg::OtherSessions(target, ApplicationName(config));
  if (!consumers.ok()) return Fail(consumers.status());
  if (*producer != 0 || !consumers->empty()) {
    std::string who;
    if (*producer != 0)
      who = fmt::format("its producer holds the lock (source backend {})", *producer);
    if (!consumers->empty()) {
      who += fmt::format("{}sessions of it are connected to the target (backends {})",
                         who.empty() ? "" : "; ", fmt::join(*consumers, ", "));
    }
    return Fail(Status::BadConfig(fmt::format(
        "tunnel \"{}\" is running: {}; stop its run/produce/consume processes first, then "
        "uninstall (nothing was changed)",
        config.tunnel.name, who)));
  }
  auto src = capture::Uninstall(source, sources);
  if (!src.ok()) return Fail(src.status().WithContext("uninstall on the source"));
  for (const auto& a : *src) fmt::print("source: {}\n", a);
  for (const auto& s : sources) {
    if (is_not_configured(s.source)) {
      fmt::print(
          "target: kept the apply positions of {}'s target table, which the configuration no "
          "longer names (they go with the target's datatunnel schema)\n",
          s.source.ToString());
    }
  }
  auto tgt = apply::Uninstall(target, targets);
  if (!tgt.ok()) return Fail(tgt.status().WithContext("uninstall on the target"));
  for (const auto& a : *tgt) fmt::print("target: {}\n", a);

  // Never claim "nothing installed" while something is.
  auto left_captured = capture::CapturedTables(source, config.tunnel.name);
  if (!left_captured.ok()) return Fail(left_captured.status());
  auto leftovers = capture::Leftovers(source);
  if (!leftovers.ok()) return Fail(leftovers.status());
  std::vector<std::string> still;
  for (const auto& c : *left_captured) still.push_back(c.source.ToString());
  if (!still.empty()) {
    fmt::print(
        "source: still captured: {} (not removed: {}); `datatunnel uninstall --yes --table "
        "NAME` removes one, `--all` every one\n",
        fmt::join(still, ", "), o.tables.empty() ? "not in the configuration" : "not named");
  } else if (!leftovers->empty()) {
    fmt::print("source: still installed: {}\n", fmt::join(*leftovers, ", "));
  } else if (src->empty() && tgt->empty()) {
    fmt::print("nothing to do: nothing of datatunnel is installed\n");
  }
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
