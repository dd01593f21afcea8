// Config: the tunnel's settings, loaded and validated once at start-up.
//
// Precedence, lowest first: built-in defaults (those of `make demo`), the TOML
// file, environment variables DATATUNNEL_<SECTION>_<KEY>, then command-line
// overrides ("section.key=value"). Every problem is reported as one
// kBadConfig Status naming the file, line and key, and how to fix it.
// docs/configuration.md lists every key.
//
// Depends on core only; no I/O beyond reading the file and the environment.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/table.h"

namespace datatunnel {

struct DatabaseConfig {
  std::string dsn;
  // Optional file holding the password (first line), so it need not appear in
  // the DSN, the environment or the command line.
  std::string password_file;
};

struct KafkaConfig {
  // Comma-separated bootstrap servers. Empty (the default) or "none": no
  // broker; `run` hands changes over in memory.
  std::string brokers;
  std::string group_id = "datatunnel";
  // A table without its own `topic` goes to "<topic_prefix>.<schema>.<table>".
  std::string topic_prefix = "datatunnel";
  // Passed to librdkafka as-is (both producer and consumer), after our defaults.
  std::map<std::string, std::string> properties;
  std::map<std::string, std::string> producer_properties;
  std::map<std::string, std::string> consumer_properties;

  bool none() const { return brokers.empty() || brokers == "none"; }
};

enum class SchemaChangePolicy { kStop, kEvolve };
enum class BadMessagePolicy { kDeadLetter, kStop };

struct TableConfig {
  QualifiedName source;
  QualifiedName target;
  std::vector<std::string> key;  // empty: the source's primary key
  std::string topic;             // default "<kafka.topic_prefix>.<schema>.<table>"
  SchemaChangePolicy schema_changes = SchemaChangePolicy::kStop;
  int line = 0;  // where it was defined, for messages
};

struct PipelineConfig {
  int batch_max_changes = 20000;            // most changes applied in one target transaction
  int batch_max_wait_ms = 0;                // longest a consumer waits to fill a batch
  int check_interval_ms = 5;                // how often the producer checks for new changes
  int poll_interval_ms = 500;               // longest the producer goes without a tick
  int min_tick_interval_ms = 0;             // shortest time between two ticks (0: at once)
  int progress_interval_ms = 20;            // how often delivered progress is recorded
  int max_in_flight = 200000;               // changes published but not yet confirmed
  int snapshot_chunk_rows = 50000;          // rows per snapshot chunk (upper bound)
  int64_t snapshot_chunk_bytes = 32 << 20;  // bytes per snapshot chunk (upper bound)
  bool truncate_target = false;             // let `snapshot` empty a non-empty target
  BadMessagePolicy on_bad_message = BadMessagePolicy::kDeadLetter;
  double ready_max_lag_seconds = 10;  // /readyz fails above this lag
};

struct MetricsConfig {
  std::string listen;  // "host:port"; empty: no metrics endpoint
};

struct Config {
  std::string file;  // the file loaded, or "" for defaults only
  // Not errors, but worth a line: e.g. an unknown DATATUNNEL_* variable.
  std::vector<std::string> warnings;
  DatabaseConfig source{"postgresql://postgres@127.0.0.1:5433/db1", ""};
  DatabaseConfig target{"postgresql://postgres@127.0.0.1:5434/db2", ""};
  KafkaConfig kafka;
  std::vector<TableConfig> tables;
  PipelineConfig pipeline;
  MetricsConfig metrics;
};

// Loads `path` ("" means: ./datatunnel.toml if it exists, else defaults only),
// then applies the environment `env` (name -> value) and `overrides`
// ("section.key=value"), then validates.
Result<Config> LoadConfig(const std::string& path, const std::map<std::string, std::string>& env,
                          const std::vector<std::string>& overrides);

// The process environment as a map, for LoadConfig.
std::map<std::string, std::string> ProcessEnvironment();

// The password from db.password_file (its first line), or "" when no file is
// configured; a BadConfig error when the file is missing, unreadable, a
// directory or has an empty first line. For libpq only: never log the result.
Result<std::string> ReadPassword(const DatabaseConfig& db);

}  // namespace datatunnel
