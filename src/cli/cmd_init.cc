// datatunnel init: install capture on the source and prepare the target.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <set>

#include "apply/install.h"
#include "apply/tunnel_tables.h"
#include "capture/install.h"
#include "capture/snapshot_state.h"
#include "cli/common.h"
#include "pg/catalog.h"

namespace datatunnel::cli {
namespace {

struct InitOptions {
  std::string runtime_role;
  bool print_sql = false;
};

// The DDL init runs, for review: init itself also records the tables and
// the tunnel in the state tables, and skips what exists already.
void PrintSql(const pg::Connection& source, const pg::Connection& target,
              const std::vector<TableSpec>& specs) {
  fmt::print("-- source ({})\n{}\n", source.description(), capture::StateSchemaDdl());
  for (const auto& s : specs) {
    std::string key;
    for (size_t k : s.key) key += (key.empty() ? "" : ",") + s.columns[k].name;
    fmt::print("SELECT datatunnel.install_capture('{}', '{{{}}}');\n", s.source.Quoted(), key);
  }
  fmt::print("-- event triggers (need a superuser; init goes on without them)\n{};\n{};\n",
             capture::kDropGuardDdl, capture::kDdlTriggerDdl);
  fmt::print("-- with auto_add = true (needs a superuser)\n{};\n", capture::kAddTriggerDdl);
  fmt::print("-- target ({})\n{}\n", target.description(), apply::TargetStateDdl());
  for (const auto& s : specs) {
    fmt::print("-- target table {} (each statement only where it is missing)\n",
               s.target.ToString());
    fmt::print("CREATE SCHEMA IF NOT EXISTS {};\n{};\n{};\n{};\n", QuoteIdent(s.target.schema),
               apply::TargetTableDdl(s), apply::KeyIndexDdl(s), apply::TruncateTriggerDdl(s));
  }
}

// Everything that can be checked before changing anything, so a refused
// init leaves both databases as they were. Earlier errors of the target's
// check are printed; the last one is returned.
Status CheckBeforeChanging(pg::Connection& source, pg::Connection& target, const Config& config,
                           const std::vector<TableSpec>& specs,
                           const std::vector<TableConfig>& auto_add) {
  if (!auto_add.empty()) {
    DT_ASSIGN_OR_RETURN(auto has, source.Query("SELECT 1 FROM pg_catalog.pg_event_trigger WHERE "
                                               "evtname = 'datatunnel_add'"));
    DT_ASSIGN_OR_RETURN(bool may, capture::MayCreateEventTriggers(source));
    if (has.rows() == 0 && !may) {
      return Status::BadConfig(fmt::format(
          "[[tables]] source = \"{}\" (line {}) has auto_add = true, which needs an event "
          "trigger on the source, and {} is not a superuser: run `datatunnel init` once as a "
          "superuser (it creates the trigger; later runs need none), or remove auto_add and run "
          "`datatunnel init` after creating tables (init changed nothing)",
          auto_add.front().pattern_text, auto_add.front().line, source.description()));
    }
  }
  DT_ASSIGN_OR_RETURN(auto captured, capture::CapturedTables(source, ""));  // every tunnel's
  DT_RETURN_IF_ERROR(capture::CheckKeysUnchanged(captured, specs));
  DT_RETURN_IF_ERROR(
      capture::CheckOwnership(captured, config.tunnel.name, specs, source.description()));
  for (const auto& t :
       capture::NotConfigured(capture::OfTunnel(captured, config.tunnel.name), config.tables)) {
    Warn(fmt::format(
        "table {} is captured but no longer in the configuration: its change table keeps "
        "growing; remove its capture with `datatunnel uninstall --yes --table {}` (or add it "
        "back to [[tables]])",
        t.ToString(), t.ToString()));
  }
  auto check = apply::CheckTarget(target, specs);
  if (!check.ok()) return check.status().WithContext("checking the target");
  for (const auto& w : check->warnings) Warn(w);
  if (check->errors.empty()) return Status::OK();
  for (size_t i = 0; i + 1 < check->errors.size(); ++i) Fail(Status::BadConfig(check->errors[i]));
  return Status::BadConfig(check->errors.back() +
                           " (init changed nothing on the source or the target)");
}

// Sets up the target, then the source, then binds the target to this
// source installation; prints what it did. `*changed`: anything at all.
Status Install(pg::Connection& source, pg::Connection& target, const Config& config,
               const std::vector<TableSpec>& specs, const std::vector<TableConfig>& auto_add,
               bool* source_changed, bool* changed) {
  auto types_read = capture::UserTypes(source, specs);
  if (!types_read.ok()) return types_read.status().WithContext("reading the source's types");
  const auto& types = *types_read;
  std::vector<apply::TypeToCreate> create;
  for (const auto& t : types) create.push_back({t.name, t.schema, t.ddl});
  // The target first: until the source's triggers exist nothing is captured,
  // so a failure on the source leaves only harmless objects on the target.
  auto tgt_actions = apply::Install(target, specs, create);
  if (!tgt_actions.ok()) {
    return tgt_actions.status().WithContext(
        "init on the target (nothing was changed on the source; fix this and run init again)");
  }
  for (const auto& a : *tgt_actions) fmt::print("target: {}\n", a);
  const std::string after_target =
      tgt_actions->empty()
          ? std::string("nothing was changed on either side")
          : std::string(
                "after the target was set up (the \"target:\" lines above; they "
                "capture nothing and are kept): nothing was changed on the source; fix "
                "this and run `datatunnel init` again to finish, or `datatunnel "
                "uninstall --yes` to remove the target's state");
  auto src_report = capture::Install(source, config.tunnel.name, specs, &auto_add);
  if (!src_report.ok()) {
    return src_report.status().WithContext("init on the source, " + after_target);
  }
  for (const auto& a : src_report->actions) fmt::print("source: {}\n", a);
  // The target accepts messages of this tunnel from this source installation only.
  DT_ASSIGN_OR_RETURN(auto install, capture::LoadInstallId(source));
  auto bound = apply::BindTunnel(target, config.tunnel.name, install);
  if (!bound.ok()) return bound.status().WithContext("init on the target");
  if (!bound->empty()) fmt::print("target: {}\n", *bound);
  fmt::print("tunnel \"{}\": topics {}.<schema>.<table>, consumer group {}\n", config.tunnel.name,
             config.kafka.topic_prefix, config.kafka.group_id);
  for (const auto& w : src_report->warnings) Warn(w);
  // Columns captured only now: rows changed since they were added lack
  // their values, so copy those tables again (consistently with the stream).
  for (size_t t : src_report->needs_snapshot) {
    DT_RETURN_IF_ERROR(capture::RequestSnapshot(source, specs[t], /*restart=*/true));
    fmt::print("source: requested a snapshot of {} to fill its new columns on the target\n",
               specs[t].source.ToString());
  }
  *source_changed = !src_report->actions.empty();
  *changed = *source_changed || !tgt_actions->empty() || !bound->empty();
  return Status::OK();
}

// kafka.format = "debezium": Debezium's connector is the source side, so
// nothing is installed on the source. The target is set up from the source
// tables' definitions (only read) and the tunnel is bound to Debezium's
// topics rather than to a source installation.
Status InstallForDebezium(pg::Connection& source, pg::Connection& target, const Config& config,
                          const std::vector<TableSpec>& specs, bool* changed) {
  auto types_read = capture::UserTypes(source, specs);
  if (!types_read.ok()) return types_read.status().WithContext("reading the source's types");
  std::vector<apply::TypeToCreate> create;
  for (const auto& t : *types_read) create.push_back({t.name, t.schema, t.ddl});
  auto check = apply::CheckTarget(target, specs);
  if (!check.ok()) return check.status().WithContext("checking the target");
  for (const auto& w : check->warnings) Warn(w);
  if (!check->errors.empty()) {
    for (size_t i = 0; i + 1 < check->errors.size(); ++i) Fail(Status::BadConfig(check->errors[i]));
    return Status::BadConfig(check->errors.back() + " (init changed nothing)");
  }
  auto actions = apply::Install(target, specs, create);
  if (!actions.ok()) return actions.status().WithContext("init on the target");
  for (const auto& a : *actions) fmt::print("target: {}\n", a);
  auto bound = apply::BindTunnel(target, config.tunnel.name, "debezium");
  if (!bound.ok()) return bound.status().WithContext("init on the target");
  if (!bound->empty()) fmt::print("target: {}\n", *bound);
  fmt::print(
      "tunnel \"{}\": `datatunnel consume` applies Debezium's topics {}.<schema>.<table> as "
      "consumer group {}; nothing was installed on the source (Debezium's connector captures "
      "it)\n",
      config.tunnel.name, config.kafka.topic_prefix, config.kafka.group_id);
  *changed = !actions->empty() || !bound->empty();
  return Status::OK();
}

void PrintGrants(const std::vector<TableSpec>& specs, const std::string& role,
                 const pg::Connection& target) {
  fmt::print("\n-- On the source, for runtime role {} (produce):\n", role);
  for (const auto& line : capture::RuntimeGrants(specs, role)) fmt::print("{}\n", line);
  fmt::print("\n-- On the target, for runtime role {} (consume):\n", role);
  for (const auto& line : apply::RuntimeGrants(specs, role, target.database())) {
    fmt::print("{}\n", line);
  }
}

int RunInit(const Globals& g, const InitOptions& o) {
  auto setup = LoadSetup(g);
  if (!setup.ok()) return Fail(setup.status());
  auto db = OpenDatabases(*setup);
  if (!db.ok()) return Fail(db.status());
  Config& config = setup->config;
  pg::Connection &source = *db->source, &target = *db->target;
  // Pattern entries select from the catalog; the tables captured before
  // this init tell which of them are new.
  std::set<std::string> before;
  std::vector<TableConfig> auto_add;  // the pattern entries with auto_add = true
  for (const auto& t : config.tables) {
    if (t.is_pattern && t.auto_add) auto_add.push_back(t);
  }
  if (HasPatterns(config)) {
    auto captured = capture::CapturedTables(source, config.tunnel.name);
    if (!captured.ok()) return Fail(captured.status());
    for (const auto& c : *captured) before.insert(c.source.ToString());
  }
  if (Status st = ResolveTables(&config, &source, &target, Selection::kCatalog); !st.ok()) {
    return Fail(st);
  }
  if (Status st = CheckDistinctTables(source, target, config); !st.ok()) return Fail(st);
  std::vector<std::string> warnings;
  auto specs = capture::DescribeSourceTables(source, config.tables, &warnings);
  if (!specs.ok()) return Fail(specs.status());
  for (const auto& w : warnings) Warn(w);
  if (config.kafka.debezium()) {
    bool changed = false;
    if (Status st = InstallForDebezium(source, target, config, *specs, &changed); !st.ok()) {
      return Fail(st);
    }
    if (!changed)
      fmt::print("nothing to do: the target is up to date for {} table(s)\n", specs->size());
    return kExitOk;
  }
  if (o.print_sql) {
    PrintSql(source, target, *specs);
    return kExitOk;
  }
  if (Status st = CheckBeforeChanging(source, target, config, *specs, auto_add); !st.ok()) {
    return Fail(st);
  }
  bool source_changed = false, changed = false;
  if (Status st = Install(source, target, config, *specs, auto_add, &source_changed, &changed);
      !st.ok()) {
    return Fail(st);
  }
  // A running tunnel with auto_add carries tables this init captured at
  // once (cli/table_watch.h); others at their next start.
  if (source_changed && !auto_add.empty()) {
    if (Status st = source.Exec("NOTIFY datatunnel, 'tables'"); !st.ok()) return Fail(st);
  }
  for (const auto& t : config.tables) {
    if (t.from_pattern && before.count(t.source.ToString()) == 0) {
      fmt::print("new table {}: matches source = \"{}\" (line {}); captured from now on\n",
                 t.source.ToString(), t.pattern_text, t.line);
    }
  }
  // For consumers without access to the source (apply/tunnel_tables.h).
  std::vector<QualifiedName> sources;
  for (const auto& t : config.tables) sources.push_back(t.source);
  auto recorded = apply::RecordTunnelTables(target, config.tunnel.name, sources);
  if (!recorded.ok()) return Fail(recorded.status().WithContext("init on the target"));
  if (*recorded) {
    fmt::print("target: recorded the {} table(s) of tunnel \"{}\"\n", sources.size(),
               config.tunnel.name);
    changed = true;
  }
  if (!changed) {
    fmt::print("nothing to do: capture and target are up to date for {} table(s)\n", specs->size());
  }
  if (!o.runtime_role.empty()) {
    PrintGrants(*specs, o.runtime_role, target);
  } else if (source_changed) {
    fmt::print(
        "(run `datatunnel init --runtime-role NAME` to print the GRANTs for a "
        "low-privilege role to run the tunnel)\n");
  }
  return kExitOk;
}

}  // namespace

void AddInitCommand(CLI::App& app, Globals* g) {
  auto* cmd = app.add_subcommand(
      "init",
      "Create the change tables and triggers on the source, the target tables and state; "
      "idempotent");
  auto o = std::make_shared<InitOptions>();
  cmd->add_option("--runtime-role", o->runtime_role,
                  "Print the GRANT statements for this low-privilege role to run the tunnel");
  cmd->add_flag("--print-sql", o->print_sql, "Print the SQL init would run, and change nothing");
  cmd->callback([g, o] { g_exit_code = RunInit(*g, *o); });
}

}  // namespace datatunnel::cli
