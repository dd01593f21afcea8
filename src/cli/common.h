// What every subcommand shares: global options, configuration, logging,
// signals and exit codes (documented in docs/operations.md, "Exit codes").
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/status.h"
#include "core/stop.h"
#include "pg/connection.h"

namespace CLI {
class App;
}

namespace datatunnel::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitDifferences = 1,  // verify found differences
  kExitConfig = 2,       // bad usage, configuration or credentials
  kExitFailure = 3,      // could not do the work (unreachable, permissions, data)
};

struct Globals {
  std::string config_file;
  std::vector<std::string> sets;  // --set section.key=value
  std::string source_dsn;
  std::string target_dsn;
  std::string brokers;
  std::string log_level = "info";
  std::string log_format = "text";
};

// Registers the global options on the app.
void AddGlobalOptions(CLI::App& app, Globals* g);
// Configures spdlog (stderr; text or JSON lines).
void SetupLogging(const Globals& g);
// Loads the configuration with the globals applied.
Result<Config> LoadConfig(const Globals& g);
// The application_name of the tunnel's database sessions: "datatunnel:<name>".
std::string ApplicationName(const Config& c);
pg::ConnectOptions SourceOptions(const Config& c);
pg::ConnectOptions TargetOptions(const Config& c);
// Fills in the passwords from password files; kBadConfig when unreadable.
Status ResolvePasswords(const Config& c, pg::ConnectOptions* source, pg::ConnectOptions* target);

// The start of every command that talks to the databases: logging set up,
// the configuration loaded with the globals applied, and both sides'
// connection options with their passwords resolved. `session_name`, when
// given, names the database sessions of a one-shot command (`datatunnel
// status`); otherwise they carry the tunnel's application_name
// (ApplicationName), by which `uninstall` finds a running tunnel.
struct Setup {
  Config config;
  pg::ConnectOptions source, target;
};
Result<Setup> LoadSetup(const Globals& g, const std::string& session_name = "");

// The databases a command uses, opened in flow order (source, then target).
enum class Sides { kSource, kTarget, kBoth };
struct Databases {
  std::unique_ptr<pg::Connection> source, target;  // null when not asked for
};
Result<Databases> OpenDatabases(const Setup& setup, Sides sides = Sides::kBoth);

// How the tables of [[tables]] pattern entries are found (ResolveTables).
enum class Selection {
  kCatalog,        // `init`: every matching table of the source's catalog
  kCaptured,       // the others: the matching tables init captured
  kCapturedIfAny,  // the same, a pattern matching nothing is no error (`uninstall`)
};
// The one place pattern entries (`source = "public.*"`) become tables:
// replaces them in config->tables by the tables they select (config's
// ExpandPatterns). kCatalog matches the source's catalog; the others match
// the tables init captured for the tunnel, so every command sees the same
// tables until init runs again: on the source (datatunnel.tables) when
// `source` is given, else (a consumer without the source at hand) in the
// list init recorded on the target (apply::LoadTunnelTables). Nothing to do
// without pattern entries.
Status ResolveTables(Config* config, pg::Connection* source, pg::Connection* target, Selection how);

// Refuses a configuration whose source and target resolve to the same table
// in the same database (the tunnel would apply changes to the table it
// captures): kBadConfig naming the table and the fix.
Status CheckDistinctTables(pg::Connection& source, pg::Connection& target, const Config& config);

// Prints the error as one line on stderr and maps it to an exit code.
int Fail(const Status& st);

// A command line CLI11 could not parse, under `--log-format json` (looked up
// in `argv`, since parsing stopped): the error as one JSON line, exit code 2.
// Returns -1 when JSON logs were not asked for (CLI11 prints its own text).
int FailUsageAsJson(int argc, char** argv, const std::string& what);

// Prints a warning as one line on stderr (a JSON line under --log-format json).
void Warn(const std::string& msg);

// SIGINT/SIGTERM request a stop on `stop` (a second one exits at once).
void InstallSignalHandlers(StopSource* stop);

// Subcommands. Each returns the process exit code.
void AddInitCommand(CLI::App& app, Globals* g);
void AddProduceCommand(CLI::App& app, Globals* g);
void AddConsumeCommand(CLI::App& app, Globals* g);
void AddRunCommand(CLI::App& app, Globals* g);
void AddSnapshotCommand(CLI::App& app, Globals* g);
void AddStatusCommand(CLI::App& app, Globals* g);
void AddVerifyCommand(CLI::App& app, Globals* g);
void AddUninstallCommand(CLI::App& app, Globals* g);
void AddDevBrokerCommand(CLI::App& app, Globals* g);

// Set by the subcommand's callback; main() returns it.
extern int g_exit_code;

}  // namespace datatunnel::cli
