// datatunnel: keeps tables of one PostgreSQL database in sync with another,
// through Kafka. See README.md; `datatunnel --help` lists the subcommands.
#include <CLI/CLI.hpp>

#include "cli/common.h"
#include "core/version.h"

int main(int argc, char** argv) {
  using namespace datatunnel::cli;
  CLI::App app{
      "datatunnel: change-data-capture from one PostgreSQL database to another through Kafka.\n"
      "Exit codes: 0 ok, 1 verify found differences, 2 bad usage or configuration, 3 failure.",
      "datatunnel"};
  app.set_version_flag(
      "--version", std::string("datatunnel ") + DATATUNNEL_VERSION + " (" + DATATUNNEL_GIT + ")");
  app.require_subcommand(1);
  app.fallthrough();
  Globals globals;
  AddGlobalOptions(app, &globals);
  AddInitCommand(app, &globals);
  AddSnapshotCommand(app, &globals);
  AddProduceCommand(app, &globals);
  AddConsumeCommand(app, &globals);
  AddRunCommand(app, &globals);
  AddStatusCommand(app, &globals);
  AddVerifyCommand(app, &globals);
  AddUninstallCommand(app, &globals);
  AddDevBrokerCommand(app, &globals);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() != static_cast<int>(CLI::ExitCodes::Success)) {
      if (int rc = FailUsageAsJson(argc, argv, e.what()); rc >= 0) return rc;
    }
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitConfig;
  }
  return g_exit_code;
}
