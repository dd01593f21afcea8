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
  // [target] only: the synchronous_commit of the consumer's sessions when
  // it reads from Kafka. "off" (the default, as PostgreSQL's own
  // subscriptions do): a commit does not wait for its WAL to reach disk.
  // A crash of the target server can then lose its last commits, and with
  // them the positions stored in the same transactions, so the consumer
  // reads those changes from Kafka again: nothing is lost. Not with
  // --broker none, where the source drops what the target committed (the
  // session keeps the server's setting there). "on", "local",
  // "remote_write", "remote_apply": wait as PostgreSQL says.
  std::string synchronous_commit = "off";
};

struct KafkaConfig {
  // Comma-separated bootstrap servers. Empty (the default) or "none": no
  // broker; `run` hands changes over in memory.
  std::string brokers;
  // Default (when not set): "datatunnel.<tunnel name>".
  std::string group_id;
  // A table without its own `topic` goes to "<topic_prefix>.<schema>.<table>".
  // Default (when not set): "datatunnel.<tunnel name>".
  std::string topic_prefix;
  // How snapshot rows of a table with a unique key go on the topic (when
  // pipeline.apply_consistency is "key"): "copy" (true), a chunk's rows as
  // COPY text per partition in one message (publish/envelope.h); "rows"
  // (false), one envelope per row, for consumers other than datatunnel.
  bool copy_chunks = true;
  // Passed to librdkafka as-is (both producer and consumer), after our defaults.
  std::map<std::string, std::string> properties;
  std::map<std::string, std::string> producer_properties;
  std::map<std::string, std::string> consumer_properties;
  // What the topics hold. kDatatunnel: our envelope, written by `produce`.
  // kDebezium: change events of Debezium's PostgreSQL connector (JSON, with
  // or without schemas); only `consume` runs, topic_prefix is the
  // connector's topic.prefix (docs/debezium.md). kConnectJson: our changes
  // as Kafka Connect's JsonConverter with schemas writes them, the value a
  // Debezium envelope with Connect/Debezium logical types, so a stock Connect
  // sink reads them; written by `produce`, read by `consume` like kDatatunnel
  // (publish/connect_envelope.h).
  enum class Format { kDatatunnel, kDebezium, kConnectJson } format = Format::kDatatunnel;

  bool debezium() const { return format == Format::kDebezium; }
  bool connect_json() const { return format == Format::kConnectJson; }
  bool none() const { return brokers.empty() || brokers == "none"; }
  // The tunnel's control topic (one partition is used): an end-of-tick
  // record per tick with changes when pipeline.apply_consistency is
  // "transaction". "<topic_prefix>.dt_ticks".
  std::string ticks_topic() const { return topic_prefix + ".dt_ticks"; }
};

enum class SchemaChangePolicy { kStop, kEvolve };
enum class BadMessagePolicy { kDeadLetter, kStop };
// What a target commit holds (pipeline.apply_consistency): "key", changes of
// any keys in batches (per key in commit order); "transaction", only whole
// ticks, so every target commit is a state the source had
// (docs/architecture.md, "Transaction-consistent apply").
enum class ApplyConsistency { kKey, kTransaction };

// A pattern over table names: `source = "public.*"`, `"sales.order_*"`.
// Each part is an SQL LIKE pattern ('%', '_', '\' escapes): a bare part's
// '*' and '?' became '%' and '_' (and it was folded to lower case, as SQL
// folds bare names); a double-quoted part is literal.
struct NamePattern {
  std::string schema;  // "%": any schema
  std::string name;
  bool Matches(const QualifiedName& table) const;
};

// Whether `text` matches the SQL LIKE pattern `like` (backslash escapes).
bool LikeMatch(std::string_view like, std::string_view text);

struct TableConfig {
  QualifiedName source;
  QualifiedName target;
  std::vector<std::string> key;  // empty: the source's primary key
  // Default "<kafka.topic_prefix>.<schema>.<table>". On a pattern entry: the
  // prefix of its tables' topics ("<topic>.<schema>.<table>"), or empty.
  std::string topic;
  SchemaChangePolicy schema_changes = SchemaChangePolicy::kStop;
  int line = 0;  // where it was defined, for messages

  // A pattern entry: selects every table `pattern` matches and no
  // `exclude` matches. ExpandPatterns() replaces it by one entry per table
  // (with `from_pattern` set); `source` and `target` are unused until then.
  bool is_pattern = false;
  std::string pattern_text;  // `source` as written
  NamePattern pattern;
  std::vector<NamePattern> exclude;
  // The target's schema for the selected tables ("": the source's). Also
  // allowed on a single table's entry instead of `target`.
  std::string target_schema;
  // `auto_add = true` (pattern entries only): with a superuser at `init`, an
  // event trigger on the source captures a new matching table in the
  // transaction that creates it, and a running tunnel starts carrying it
  // (capture/install.sql, datatunnel.on_create()).
  bool auto_add = false;
  bool from_pattern = false;
};

struct PipelineConfig {
  int batch_max_changes = 20000;  // most changes applied in one target transaction
  int batch_max_wait_ms = 0;      // longest a consumer waits to fill a batch
  int check_interval_ms = 5;      // how often the producer checks for new changes
  int poll_interval_ms = 500;     // longest the producer goes without a tick
  int min_tick_interval_ms = 0;   // shortest time between two ticks (0: at once)
  // How often delivered progress is recorded (and the change tables pruned):
  // each record is a write transaction on the producer's one connection,
  // between ticks, so under load every record delays the next tick (at 20 ms,
  // a fifth of the changes at 1,000/s waited for one; bench/README.md).
  int progress_interval_ms = 200;
  int max_in_flight = 200000;               // changes published but not yet confirmed
  int snapshot_chunk_rows = 50000;          // rows per snapshot chunk (upper bound)
  int64_t snapshot_chunk_bytes = 32 << 20;  // bytes per snapshot chunk (upper bound)
  bool truncate_target = false;             // let `snapshot` empty a non-empty target
  BadMessagePolicy on_bad_message = BadMessagePolicy::kDeadLetter;
  double ready_max_lag_seconds = 10;  // /readyz fails above this lag
  // The default, except with kafka.format = "debezium" (whose topics carry
  // no end-of-tick records): "key" there.
  ApplyConsistency apply_consistency = ApplyConsistency::kTransaction;
  bool apply_consistency_set = false;  // named in the configuration
  // apply_consistency = "transaction": a tick of more changes than this is
  // not held in memory whole but streamed into staging tables of one open
  // target transaction, in pieces of about this many changes.
  int tick_stream_changes = 50000;
  bool transactional() const { return apply_consistency == ApplyConsistency::kTransaction; }
};

struct MetricsConfig {
  std::string listen;  // "host:port"; empty: no metrics endpoint
};

// The tunnel's identity. Everything a tunnel owns is keyed by its name: its
// state rows on both databases, its producer lock, its default topics and
// consumer group, and the "source.name" of its messages.
struct TunnelConfig {
  // [A-Za-z0-9_-], 1 to 63 characters, starting with a letter or digit.
  // Default: the source database's name, then "-<config file stem>" unless
  // the file is datatunnel.toml (or there is none); other characters become
  // '_'. See DefaultTunnelName().
  std::string name;
  bool name_is_default = false;  // derived, not set by the user (for messages)
};

struct Config {
  std::string file;  // the file loaded, or "" for defaults only
  TunnelConfig tunnel;
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

// Whether the configuration has pattern entries (tables chosen from a
// catalog: ExpandPatterns).
bool HasPatterns(const Config& config);
// Whether a pattern entry has auto_add = true.
bool HasAutoAdd(const Config& config);

// Replaces every pattern entry of config->tables by one entry per table of
// `candidates` it matches (and no `exclude` of it matches), in name order,
// after the entries that name their table: a table an entry names, or an
// earlier pattern matched, keeps that entry. `candidates`: the tables the
// patterns choose from (ResolveTables in cli/common.cc: the source's
// catalog for `init`, the tables init captured for the other commands);
// `from` says what they are, for messages. A pattern matching none of them
// is kBadConfig naming its line (unless !require_match: `uninstall`). Then
// checks again that no two entries share a target or a topic.
Status ExpandPatterns(Config* config, const std::vector<QualifiedName>& candidates,
                      const std::string& from, bool require_match = true);

// Whether `name` is a valid tunnel name ([A-Za-z0-9_-], 1 to 63 characters,
// starting with a letter or digit).
bool ValidTunnelName(const std::string& name);

// The default tunnel name for source DSN `dsn` and config file `file` ("" if
// none): the database named in the DSN (URI path or dbname=), then
// "-<stem of file>" unless the stem is "datatunnel"; characters outside
// [A-Za-z0-9_-] become '_', cut at 63. "" when the DSN names no database.
std::string DefaultTunnelName(const std::string& dsn, const std::string& file);

// The process environment as a map, for LoadConfig.
std::map<std::string, std::string> ProcessEnvironment();

// The password from db.password_file (its first line), or "" when no file is
// configured; a BadConfig error when the file is missing, unreadable, a
// directory or has an empty first line. For libpq only: never log the result.
Result<std::string> ReadPassword(const DatabaseConfig& db);

}  // namespace datatunnel
