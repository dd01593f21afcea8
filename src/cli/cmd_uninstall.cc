// datatunnel uninstall: remove capture from the source and state from both sides.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "apply/install.h"
#include "capture/install.h"
#include "cli/common.h"

namespace datatunnel::cli {
namespace {

int RunUninstall(const Globals& g, bool yes) {
  SetupLogging(g);
  auto config = LoadConfig(g);
  if (!config.ok()) return Fail(config.status());
  if (!yes) {
    return Fail(Status::BadConfig(
        "uninstall drops the change tables (and any changes not yet published) and the tunnel's "
        "state on both databases; user tables are kept. Run again with --yes to proceed"));
  }
  pg::ConnectOptions so = SourceOptions(*config), to = TargetOptions(*config);
  if (Status st = ResolvePasswords(*config, &so, &to); !st.ok()) return Fail(st);
  auto source = pg::Connection::Open(so);
  if (!source.ok()) return Fail(source.status());
  std::vector<TableSpec> specs;
  for (const auto& t : config->tables) {
    TableSpec s;
    s.source = t.source;
    s.target = t.target;
    s.change_table = {t.source.schema, t.source.name + "_cdc"};
    specs.push_back(s);
  }
  auto src = capture::Uninstall(**source, specs);
  if (!src.ok()) return Fail(src.status().WithContext("uninstall on the source"));
  for (const auto& a : *src) fmt::print("source: {}\n", a);
  auto target = pg::Connection::Open(to);
  if (!target.ok()) return Fail(target.status());
  auto tgt = apply::Uninstall(**target, specs);
  if (!tgt.ok()) return Fail(tgt.status().WithContext("uninstall on the target"));
  for (const auto& a : *tgt) fmt::print("target: {}\n", a);
  if (src->empty() && tgt->empty())
    fmt::print("nothing to do: nothing of datatunnel is installed\n");
  return kExitOk;
}

}  // namespace

void AddUninstallCommand(CLI::App& app, Globals* g) {
  auto* cmd = app.add_subcommand(
      "uninstall",
      "Remove triggers, change tables and state from both databases (keeps user data)");
  auto yes = std::make_shared<bool>(false);
  cmd->add_flag("--yes", *yes, "Confirm");
  cmd->callback([g, yes] { g_exit_code = RunUninstall(*g, *yes); });
}

}  // namespace datatunnel::cli
