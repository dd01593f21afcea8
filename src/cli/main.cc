// datatunnel: keeps tables of one PostgreSQL database in sync with another,
// through Kafka. See README.md; `datatunnel --help` lists the subcommands.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>

#include "cli/common.h"
#include "core/suggest.h"
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
  // A subcommand's --help lists the global options too: they are accepted
  // before or after the subcommand's name.
  std::string globals_help = "Global options (before or after the subcommand):\n";
  for (const CLI::Option* opt : app.get_options()) {
    if (opt->get_name() == "--help" || opt->get_name() == "--version") continue;
    globals_help += CLI::Formatter().make_option(opt, false);
  }
  for (CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    sub->footer(globals_help);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
      return app.exit(e) == 0 ? kExitOk : kExitConfig;  // --help, --version
    }
    std::string what = e.what();
    // A misspelt subcommand ("stauts") is the first word that is neither an
    // option nor an option's value.
    std::vector<std::string> commands;
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      commands.push_back(sub->get_name());
    }
    static const std::vector<std::string> kTakesValue = {
        "-c",           "--config",  "--set",       "--source-dsn",
        "--target-dsn", "--brokers", "--log-level", "--log-format"};
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (std::find(kTakesValue.begin(), kTakesValue.end(), arg) != kTakesValue.end()) {
        ++i;
        continue;
      }
      if (arg.empty() || arg[0] == '-') continue;
      if (std::find(commands.begin(), commands.end(), arg) == commands.end()) {
        std::string list;
        for (const auto& c : commands) list += (list.empty() ? "" : ", ") + c;
        what = "unknown subcommand \"" + arg + "\"" + datatunnel::DidYouMean(arg, commands) +
               "; subcommands are " + list;
      }
      break;
    }
    if (int rc = FailUsageAsJson(argc, argv, what); rc >= 0) return rc;
    std::fprintf(stderr, "datatunnel: error: %s; see datatunnel --help\n", what.c_str());
    return kExitConfig;
  }
  return g_exit_code;
}
