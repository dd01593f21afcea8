#include "cli/common.h"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <csignal>
#include <tuple>

#include "apply/tunnel_tables.h"
#include "capture/install.h"
#include "cli/json_log.h"
#include "pg/catalog.h"

namespace datatunnel::cli {

int g_exit_code = kExitOk;

void AddGlobalOptions(CLI::App& app, Globals* g) {
  app.add_option("-c,--config", g->config_file,
                 "TOML configuration file (default: ./datatunnel.toml if present)")
      ->option_text("FILE");
  app.add_option("--set", g->sets, "Override a setting: section.key=value (repeatable)")
      ->option_text("KEY=VALUE");
  app.add_option("--source-dsn", g->source_dsn, "Source database (overrides source.dsn)")
      ->option_text("DSN");
  app.add_option("--target-dsn", g->target_dsn, "Target database (overrides target.dsn)")
      ->option_text("DSN");
  app.add_option("--brokers", g->brokers,
                 "Kafka bootstrap servers, or \"none\" (overrides kafka.brokers)")
      ->option_text("HOST:PORT,...");
  app.add_option("--log-level", g->log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  app.add_option("--log-format", g->log_format, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
}

namespace {

bool g_json_logs = false;  // --log-format json: errors and warnings as JSON lines too

}  // namespace

void Warn(const std::string& msg) {
  if (g_json_logs) {
    spdlog::warn("{}", msg);
  } else {
    fmt::print(stderr, "datatunnel: warning: {}\n", msg);
  }
}

void SetupLogging(const Globals& g) {
  g_json_logs = g.log_format == "json";
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("datatunnel", sink);
  if (g.log_format == "json") {
    logger->set_formatter(NewJsonLogFormatter());  // one JSON object per line
  } else {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-5l%$ %v");
  }
  logger->set_level(spdlog::level::from_str(g.log_level));
  spdlog::set_default_logger(logger);
}

Result<Config> LoadConfig(const Globals& g) {
  std::vector<std::string> sets = g.sets;
  if (!g.source_dsn.empty()) sets.push_back("source.dsn=" + g.source_dsn);
  if (!g.target_dsn.empty()) sets.push_back("target.dsn=" + g.target_dsn);
  if (!g.brokers.empty()) sets.push_back("kafka.brokers=" + g.brokers);
  auto config = datatunnel::LoadConfig(g.config_file, ProcessEnvironment(), sets);
  if (config.ok()) {
    for (const auto& w : config->warnings) Warn(w);
  }
  return config;
}

std::string ApplicationName(const Config& c) { return "datatunnel:" + c.tunnel.name; }

pg::ConnectOptions SourceOptions(const Config& c) {
  pg::ConnectOptions o;
  o.dsn = c.source.dsn;
  o.role = "source";
  o.application_name = ApplicationName(c);
  return o;
}

pg::ConnectOptions TargetOptions(const Config& c) {
  pg::ConnectOptions o;
  o.dsn = c.target.dsn;
  o.role = "target";
  o.application_name = ApplicationName(c);
  return o;
}

Status ResolvePasswords(const Config& c, pg::ConnectOptions* source, pg::ConnectOptions* target) {
  if (source) {
    DT_ASSIGN_OR_RETURN(source->password, ReadPassword(c.source));
  }
  if (target) {
    DT_ASSIGN_OR_RETURN(target->password, ReadPassword(c.target));
  }
  return Status::OK();
}

Result<Setup> LoadSetup(const Globals& g, const std::string& session_name) {
  SetupLogging(g);
  DT_ASSIGN_OR_RETURN(Config config, LoadConfig(g));
  Setup s{std::move(config), {}, {}};
  s.source = SourceOptions(s.config);
  s.target = TargetOptions(s.config);
  if (!session_name.empty()) s.source.application_name = s.target.application_name = session_name;
  DT_RETURN_IF_ERROR(ResolvePasswords(s.config, &s.source, &s.target));
  return s;
}

Result<Databases> OpenDatabases(const Setup& setup, Sides sides) {
  Databases db;
  if (sides != Sides::kTarget) {
    DT_ASSIGN_OR_RETURN(db.source, pg::Connection::Open(setup.source));
  }
  if (sides != Sides::kSource) {
    DT_ASSIGN_OR_RETURN(db.target, pg::Connection::Open(setup.target));
  }
  return db;
}

Status ResolveTables(Config* config, pg::Connection* source, pg::Connection* target,
                     Selection how) {
  if (!HasPatterns(*config)) return Status::OK();
  std::vector<QualifiedName> candidates;
  std::string from;
  if (how == Selection::kCatalog) {
    for (const auto& t : config->tables) {
      if (!t.is_pattern) continue;
      DT_ASSIGN_OR_RETURN(auto found, capture::CatalogTables(*source, t.pattern));
      candidates.insert(candidates.end(), found.begin(), found.end());
    }
    from = fmt::format(
        "in the {} (ordinary and partitioned tables; change tables, schema datatunnel and the "
        "system schemas are skipped)",
        source->description());
  } else if (source != nullptr) {
    DT_ASSIGN_OR_RETURN(auto captured, capture::CapturedTables(*source, config->tunnel.name));
    for (const auto& c : captured) candidates.push_back(c.source);
    from = fmt::format(
        "captured by tunnel \"{}\" on the {}: run `datatunnel init` to capture "
        "the tables it matches",
        config->tunnel.name, source->description());
  } else {
    DT_ASSIGN_OR_RETURN(candidates, apply::LoadTunnelTables(*target, config->tunnel.name));
    from = fmt::format(
        "of tunnel \"{}\" as init recorded them on the {}: run `datatunnel "
        "init` to capture the tables it matches",
        config->tunnel.name, target->description());
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const QualifiedName& a, const QualifiedName& b) {
              return std::tie(a.schema, a.name) < std::tie(b.schema, b.name);
            });
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
  return ExpandPatterns(config, candidates, from, how != Selection::kCapturedIfAny);
}

Status CheckDistinctTables(pg::Connection& source, pg::Connection& target, const Config& config) {
  DT_ASSIGN_OR_RETURN(const std::string source_db, pg::DatabaseIdentity(source));
  DT_ASSIGN_OR_RETURN(const std::string target_db, pg::DatabaseIdentity(target));
  if (source_db != target_db) return Status::OK();
  for (const auto& t : config.tables) {
    DT_ASSIGN_OR_RETURN(auto r, source.Query("SELECT to_regclass($1) = to_regclass($2)",
                                             {t.source.Quoted(), t.target.Quoted()}));
    if (t.source == t.target || (!r.IsNull(0, 0) && r.GetBool(0, 0))) {
      return Status::BadConfig(fmt::format(
          "source and target are the same table {} in the same database ({}): the tunnel would "
          "write its changes into the table it captures. Point target.dsn at another database, "
          "or give the [[tables]] entry (line {}) a target = \"schema.table\" of its own",
          t.source.ToString(), source.description(), t.line));
    }
  }
  return Status::OK();
}

int Fail(const Status& st) {
  std::string msg = st.message();
  for (char& ch : msg) {
    if (ch == '\n') ch = ' ';
  }
  if (g_json_logs) {
    spdlog::error("{}", msg);
  } else {
    fmt::print(stderr, "datatunnel: error: {}\n", msg);
  }
  return st.code() == StatusCode::kBadConfig ? kExitConfig : kExitFailure;
}

int FailUsageAsJson(int argc, char** argv, const std::string& what) {
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--log-format=json" ||
        (a == "--log-format" && i + 1 < argc && std::string_view(argv[i + 1]) == "json")) {
      json = true;
    }
  }
  if (!json) return -1;
  Globals g;
  g.log_format = "json";
  SetupLogging(g);
  return Fail(Status::BadConfig(what + "; run with --help for usage"));
}

namespace {

StopSource* g_stop = nullptr;
std::atomic<int> g_signals{0};

void OnSignal(int sig) {
  if (g_signals.fetch_add(1) >= 1) {
    // A second Ctrl-C: the user wants out now. Nothing is lost: progress is
    // only ever recorded for what was delivered.
    _exit(128 + sig);
  }
  if (g_stop) g_stop->RequestStop();
}

}  // namespace

void InstallSignalHandlers(StopSource* stop) {
  g_stop = stop;
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

}  // namespace datatunnel::cli
