#include "config/config.h"

#include <fmt/format.h>
#include <libpq-fe.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <tuple>

#include "core/suggest.h"

extern char** environ;

namespace datatunnel {
namespace {

// No two entries share a source, a target or a topic (pattern entries aside).
Status CheckDistinct(const Config& config);

// One settable scalar: its section, key and how to assign a string to it.
struct Setting {
  std::string section;
  std::string key;
  std::function<Status(Config&, const std::string&)> set;
};

Status ParseInt(const std::string& where, const std::string& text, int64_t lo, int64_t hi,
                int64_t* out) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size() || v < lo || v > hi) {
    return Status::BadConfig(
        fmt::format("{}: expected a whole number from {} to {}, got \"{}\"", where, lo, hi, text));
  }
  *out = v;
  return Status::OK();
}

template <typename T>
std::function<Status(Config&, const std::string&)> IntSetter(T PipelineConfig::*field, int64_t lo,
                                                             int64_t hi, std::string where) {
  return [=](Config& c, const std::string& v) {
    int64_t n = 0;
    DT_RETURN_IF_ERROR(ParseInt(where, v, lo, hi, &n));
    c.pipeline.*field = static_cast<T>(n);
    return Status::OK();
  };
}

Status ParseBool(const std::string& where, const std::string& v, bool* out) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") {
    *out = true;
  } else if (v == "false" || v == "0" || v == "no" || v == "off") {
    *out = false;
  } else {
    return Status::BadConfig(fmt::format("{}: expected true or false, got \"{}\"", where, v));
  }
  return Status::OK();
}

// Kafka accepts [a-zA-Z0-9._-] in a topic name (1 to 249 of them).
bool ValidTopicName(const std::string& name) {
  return name.find_first_not_of(
             "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"
             "OPQRSTUVWXYZ0123456789._-") == std::string::npos;
}

// "<prefix>.<schema>.<table>"; characters Kafka does not accept in a topic
// name (spaces, quotes, ...) become '_': "My Schema"."Order Items" ->
// datatunnel.My_Schema.Order_Items.
std::string DefaultTopic(const std::string& prefix, const QualifiedName& source) {
  std::string topic = prefix + "." + source.schema + "." + source.name;
  for (size_t i = prefix.size(); i < topic.size(); ++i) {
    char& ch = topic[i];
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '_' && ch != '-') {
      ch = '_';
    }
  }
  if (topic.size() > 249) topic.resize(249);
  return topic;
}

// The database a libpq DSN (a URI or key=value pairs) names, as libpq
// itself parses it: "" when it names none, or when libpq cannot parse it
// (then *error says why).
std::string DsnDatabase(const std::string& dsn, std::string* error) {
  char* err = nullptr;
  PQconninfoOption* options = PQconninfoParse(dsn.c_str(), &err);
  if (options == nullptr) {
    *error = err != nullptr ? err : "out of memory";
    while (!error->empty() && error->back() == '\n') error->pop_back();
    PQfreemem(err);
    return "";
  }
  std::string db;
  for (const PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (std::strcmp(o->keyword, "dbname") == 0 && o->val != nullptr) db = o->val;
  }
  PQconninfoFree(options);
  return db;
}

std::string SanitizeName(std::string s) {
  for (char& ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_' && ch != '-') ch = '_';
  }
  return s;
}

// DATATUNNEL_* variables that are not settings but are read elsewhere.
const std::set<std::string> kOtherVariables = {"DATATUNNEL_BIN",
                                               "DATATUNNEL_TIMEOUT_MULTIPLIER",
                                               "DATATUNNEL_CHAOS_SEED",
                                               "DATATUNNEL_CACHE",
                                               "DATATUNNEL_TEST_BROKERS",
                                               "DATATUNNEL_FAULT_LOSE_MESSAGE",
                                               "DATATUNNEL_TEST_NO_ENDS_WARN_MS"};

std::vector<Setting> Settings() {
  std::vector<Setting> s;
  s.push_back({"tunnel", "name", [](Config& c, const std::string& v) {
                 if (!ValidTunnelName(v)) {
                   return Status::BadConfig(fmt::format(
                       "tunnel.name \"{}\" is not a valid tunnel name: use 1 to 63 of the "
                       "characters a-z A-Z 0-9 _ -, starting with a letter or digit (it becomes "
                       "part of topic and consumer group names)",
                       v));
                 }
                 c.tunnel.name = v;
                 return Status::OK();
               }});
  s.push_back({"source", "dsn", [](Config& c, const std::string& v) {
                 c.source.dsn = v;
                 return Status::OK();
               }});
  s.push_back({"source", "password_file", [](Config& c, const std::string& v) {
                 c.source.password_file = v;
                 return Status::OK();
               }});
  s.push_back({"target", "dsn", [](Config& c, const std::string& v) {
                 c.target.dsn = v;
                 return Status::OK();
               }});
  s.push_back({"target", "password_file", [](Config& c, const std::string& v) {
                 c.target.password_file = v;
                 return Status::OK();
               }});
  s.push_back({"target", "synchronous_commit", [](Config& c, const std::string& v) {
                 for (const char* ok : {"off", "local", "remote_write", "on", "remote_apply"}) {
                   if (v == ok) {
                     c.target.synchronous_commit = v;
                     return Status::OK();
                   }
                 }
                 return Status::BadConfig(
                     fmt::format("target.synchronous_commit: expected \"off\", \"local\", "
                                 "\"remote_write\", \"on\" or \"remote_apply\", got \"{}\"",
                                 v));
               }});
  s.push_back({"kafka", "brokers", [](Config& c, const std::string& v) {
                 c.kafka.brokers = v;
                 return Status::OK();
               }});
  s.push_back({"kafka", "group_id", [](Config& c, const std::string& v) {
                 c.kafka.group_id = v;
                 return Status::OK();
               }});
  s.push_back({"kafka", "topic_prefix", [](Config& c, const std::string& v) {
                 if (v.empty() || v.size() > 200 || !ValidTopicName(v)) {
                   return Status::BadConfig(fmt::format(
                       "kafka.topic_prefix \"{}\" cannot start a Kafka topic name: use 1 to 200 "
                       "of the characters a-z A-Z 0-9 . _ -",
                       v));
                 }
                 c.kafka.topic_prefix = v;
                 return Status::OK();
               }});
  s.push_back({"kafka", "format", [](Config& c, const std::string& v) {
                 if (v == "datatunnel") {
                   c.kafka.format = KafkaConfig::Format::kDatatunnel;
                 } else if (v == "debezium") {
                   c.kafka.format = KafkaConfig::Format::kDebezium;
                 } else if (v == "connect-json") {
                   c.kafka.format = KafkaConfig::Format::kConnectJson;
                 } else {
                   return Status::BadConfig(fmt::format(
                       "kafka.format: expected \"datatunnel\", \"connect-json\" or \"debezium\", "
                       "got \"{}\"",
                       v));
                 }
                 return Status::OK();
               }});
  s.push_back({"metrics", "listen", [](Config& c, const std::string& v) {
                 c.metrics.listen = v;
                 return Status::OK();
               }});
  s.push_back({"kafka", "snapshot_chunks", [](Config& c, const std::string& v) {
                 if (v != "copy" && v != "rows") {
                   return Status::BadConfig(fmt::format(
                       "kafka.snapshot_chunks: expected \"copy\" or \"rows\", got \"{}\"", v));
                 }
                 c.kafka.copy_chunks = v == "copy";
                 return Status::OK();
               }});
  using P = PipelineConfig;
  s.push_back({"pipeline", "batch_max_changes",
               IntSetter(&P::batch_max_changes, 1, 1000000, "pipeline.batch_max_changes")});
  s.push_back({"pipeline", "batch_max_wait_ms",
               IntSetter(&P::batch_max_wait_ms, 0, 60000, "pipeline.batch_max_wait_ms")});
  s.push_back({"pipeline", "check_interval_ms",
               IntSetter(&P::check_interval_ms, 1, 60000, "pipeline.check_interval_ms")});
  s.push_back({"pipeline", "poll_interval_ms",
               IntSetter(&P::poll_interval_ms, 1, 600000, "pipeline.poll_interval_ms")});
  s.push_back({"pipeline", "min_tick_interval_ms",
               IntSetter(&P::min_tick_interval_ms, 0, 10000, "pipeline.min_tick_interval_ms")});
  s.push_back({"pipeline", "progress_interval_ms",
               IntSetter(&P::progress_interval_ms, 1, 60000, "pipeline.progress_interval_ms")});
  s.push_back({"pipeline", "max_in_flight",
               IntSetter(&P::max_in_flight, 1, 10000000, "pipeline.max_in_flight")});
  s.push_back({"pipeline", "snapshot_chunk_rows",
               IntSetter(&P::snapshot_chunk_rows, 1, 10000000, "pipeline.snapshot_chunk_rows")});
  s.push_back({"pipeline", "snapshot_chunk_bytes",
               IntSetter(&P::snapshot_chunk_bytes, 1 << 16, int64_t{1} << 34,
                         "pipeline.snapshot_chunk_bytes")});
  s.push_back({"pipeline", "tick_stream_changes",
               IntSetter(&P::tick_stream_changes, 1, 10000000, "pipeline.tick_stream_changes")});
  s.push_back({"pipeline", "truncate_target", [](Config& c, const std::string& v) {
                 return ParseBool("pipeline.truncate_target", v, &c.pipeline.truncate_target);
               }});
  s.push_back({"pipeline", "on_bad_message", [](Config& c, const std::string& v) {
                 if (v == "dlq" || v == "dead_letter") {
                   c.pipeline.on_bad_message = BadMessagePolicy::kDeadLetter;
                 } else if (v == "stop") {
                   c.pipeline.on_bad_message = BadMessagePolicy::kStop;
                 } else {
                   return Status::BadConfig(fmt::format(
                       "pipeline.on_bad_message: expected \"dlq\" or \"stop\", got \"{}\"", v));
                 }
                 return Status::OK();
               }});
  s.push_back(
      {"pipeline", "apply_consistency", [](Config& c, const std::string& v) {
         c.pipeline.apply_consistency_set = true;
         if (v == "key") {
           c.pipeline.apply_consistency = ApplyConsistency::kKey;
         } else if (v == "transaction") {
           c.pipeline.apply_consistency = ApplyConsistency::kTransaction;
         } else {
           return Status::BadConfig(fmt::format(
               "pipeline.apply_consistency: expected \"key\" or \"transaction\", got \"{}\"", v));
         }
         return Status::OK();
       }});
  s.push_back(
      {"pipeline", "ready_max_lag_seconds", [](Config& c, const std::string& v) {
         char* end = nullptr;
         double d = std::strtod(v.c_str(), &end);
         if (v.empty() || *end != '\0' || d <= 0) {
           return Status::BadConfig(fmt::format(
               "pipeline.ready_max_lag_seconds: expected a positive number, got \"{}\"", v));
         }
         c.pipeline.ready_max_lag_seconds = d;
         return Status::OK();
       }});
  return s;
}

std::string Where(const std::string& file, const toml::source_region& src) {
  if (file.empty()) return "config";
  return fmt::format("{}:{}", file, src.begin.line);
}

// A TOML scalar as the string our setters take.
std::optional<std::string> ScalarText(const toml::node& n) {
  if (auto v = n.value<std::string>()) return *v;
  if (n.is_boolean()) return *n.value<bool>() ? "true" : "false";
  if (n.is_integer()) return std::to_string(*n.value<int64_t>());
  if (n.is_floating_point()) return fmt::format("{}", *n.value<double>());
  return std::nullopt;
}

Status ReadStringMap(const std::string& file, const std::string& name, const toml::node& node,
                     std::map<std::string, std::string>* out) {
  const toml::table* t = node.as_table();
  if (!t) {
    return Status::BadConfig(
        fmt::format("{}: [{}] must be a table of \"librdkafka.property\" = \"value\"",
                    Where(file, node.source()), name));
  }
  for (auto&& [k, v] : *t) {
    auto text = ScalarText(v);
    if (!text) {
      return Status::BadConfig(fmt::format("{}: {}.\"{}\" must be a string, number or boolean",
                                           Where(file, v.source()), name, k.str()));
    }
    (*out)[std::string(k.str())] = *text;
  }
  return Status::OK();
}

std::string Suggest(const std::string& key, const std::vector<std::string>& known) {
  return DidYouMean(key, known);
}

// Whether `text` has a '*' or '?' outside double quotes: a pattern.
bool IsPatternText(std::string_view text) {
  bool quoted = false;
  for (char c : text) {
    if (c == '"') quoted = !quoted;
    if (!quoted && (c == '*' || c == '?')) return true;
  }
  return false;
}

// One part of a dotted name as a LIKE pattern: quoted, literal; bare,
// folded to lower case with '*' and '?' as wildcards. Reads up to the next
// bare '.'; false on malformed input.
bool ReadPatternPart(std::string_view text, size_t& pos, std::string* like) {
  auto literal = [&](char c) {
    if (c == '%' || c == '_' || c == '\\') like->push_back('\\');
    like->push_back(c);
  };
  if (pos < text.size() && text[pos] == '"') {
    ++pos;
    for (;;) {
      if (pos >= text.size()) return false;
      char c = text[pos++];
      if (c == '"') {
        if (pos < text.size() && text[pos] == '"') {
          literal('"');
          ++pos;
        } else {
          break;
        }
      } else {
        literal(c);
      }
    }
  } else {
    while (pos < text.size() && text[pos] != '.') {
      char c = text[pos++];
      if (c == '"') return false;
      if (c == '*') {
        like->push_back('%');
      } else if (c == '?') {
        like->push_back('_');
      } else {
        literal(static_cast<char>((c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c));
      }
    }
  }
  return !like->empty();
}

// "schema.table" (either part may be a pattern) or "table", whose schema is
// `default_schema` (a LIKE pattern).
std::optional<NamePattern> ParsePattern(std::string_view text, const std::string& default_schema) {
  NamePattern p;
  size_t pos = 0;
  std::string first;
  if (!ReadPatternPart(text, pos, &first)) return std::nullopt;
  if (pos == text.size()) {
    p.schema = default_schema;
    p.name = first;
    return p;
  }
  if (text[pos] != '.') return std::nullopt;
  ++pos;
  if (!ReadPatternPart(text, pos, &p.name) || pos != text.size()) return std::nullopt;
  p.schema = first;
  return p;
}

Status ReadTable(const std::string& file, const toml::table& t, int index, TableConfig* out) {
  static const std::vector<std::string> kKeys = {
      "source", "target", "key", "topic", "exclude", "target_schema", "schema_changes", "auto_add"};
  std::string where = Where(file, t.source());
  out->line = static_cast<int>(t.source().begin.line);
  for (auto&& [k, v] : t) {
    std::string key(k.str());
    if (std::find(kKeys.begin(), kKeys.end(), key) == kKeys.end()) {
      return Status::BadConfig(
          fmt::format("{}: unknown key \"{}\" in [[tables]] #{}{}; known keys: "
                      "source, target, target_schema, key, topic, exclude, schema_changes, "
                      "auto_add",
                      Where(file, v.source()), key, index + 1, Suggest(key, kKeys)));
    }
  }
  auto source = t["source"].value<std::string>();
  if (!source) {
    return Status::BadConfig(fmt::format(
        "{}: [[tables]] #{} needs source = \"schema.table\" (a string)", where, index + 1));
  }
  if (IsPatternText(*source)) {
    auto pattern = ParsePattern(*source, "public");
    if (!pattern) {
      return Status::BadConfig(
          fmt::format("{}: [[tables]] #{}: source \"{}\" is not a table name or pattern; write "
                      "schema.table or a pattern such as \"public.*\" or \"sales.order_*\"",
                      where, index + 1, *source));
    }
    out->is_pattern = true;
    out->pattern_text = *source;
    out->pattern = *pattern;
  } else {
    auto parsed = QualifiedName::Parse(*source);
    if (!parsed) {
      return Status::BadConfig(fmt::format(
          "{}: [[tables]] #{}: source \"{}\" is not a table name; write schema.table, quoting "
          "parts with double quotes if needed",
          where, index + 1, *source));
    }
    out->source = *parsed;
    out->target = out->source;
  }
  if (out->is_pattern) {
    for (const char* refused : {"target", "key"}) {
      if (auto node = t.get(refused)) {
        return Status::BadConfig(fmt::format(
            "{}: [[tables]] #{}: {} cannot be set with a pattern (source = \"{}\"): {}",
            Where(file, node->source()), index + 1, refused, *source,
            std::string_view(refused) == "key"
                ? "each table it selects uses its primary key; give a table that needs another "
                  "key an entry of its own (an entry naming a table takes precedence over a "
                  "pattern)"
                : "the target tables take the source tables' names; set target_schema = "
                  "\"...\" to place them in another schema"));
      }
    }
  }
  if (auto node = t.get("exclude")) {
    const toml::array* arr = node->as_array();
    if (!out->is_pattern) {
      return Status::BadConfig(fmt::format(
          "{}: [[tables]] #{}: exclude only goes with a pattern (source = \"public.*\")",
          Where(file, node->source()), index + 1));
    }
    if (!arr) {
      return Status::BadConfig(
          fmt::format("{}: [[tables]] #{}: exclude must be a list of table names or patterns, e.g. "
                      "exclude = [\"audit_*\", \"public.tmp\"]",
                      Where(file, node->source()), index + 1));
    }
    for (auto&& el : *arr) {
      auto text = el.value<std::string>();
      // A name without a schema excludes that table from every schema.
      auto p = text ? ParsePattern(*text, "%") : std::nullopt;
      if (!p) {
        return Status::BadConfig(fmt::format(
            "{}: [[tables]] #{}: every exclude entry must be a table name or pattern such as "
            "\"audit_*\" or \"sales.tmp_?\"",
            Where(file, el.source()), index + 1));
      }
      out->exclude.push_back(*p);
    }
  }
  if (auto node = t.get("auto_add")) {
    auto on = node->value<bool>();
    if (!on || !out->is_pattern) {
      return Status::BadConfig(fmt::format(
          "{}: [[tables]] #{}: auto_add must be true or false, and only goes with a pattern "
          "(source = \"public.*\")",
          Where(file, node->source()), index + 1));
    }
    out->auto_add = *on;
  }
  if (auto node = t.get("target_schema")) {
    auto schema = node->value<std::string>();
    if (!schema || schema->empty() || t.get("target")) {
      return Status::BadConfig(fmt::format(
          "{}: [[tables]] #{}: target_schema must be a schema name (a non-empty string), and "
          "not given together with target",
          Where(file, node->source()), index + 1));
    }
    out->target_schema = *schema;
    if (!out->is_pattern) out->target = {*schema, out->source.name};
  }
  if (auto node = t.get("target")) {
    auto target = node->value<std::string>();
    auto tp = target ? QualifiedName::Parse(*target) : std::nullopt;
    if (!tp) {
      return Status::BadConfig(fmt::format(
          "{}: [[tables]] #{}: target must be a table name such as \"public.employees\"",
          Where(file, node->source()), index + 1));
    }
    out->target = *tp;
  }
  if (auto node = t.get("key")) {
    const toml::array* arr = node->as_array();
    if (!arr || arr->empty()) {
      return Status::BadConfig(fmt::format(
          "{}: [[tables]] #{}: key must be a non-empty list of column names, e.g. key = [\"id\"]",
          Where(file, node->source()), index + 1));
    }
    for (auto&& el : *arr) {
      auto col = el.value<std::string>();
      if (!col || col->empty()) {
        return Status::BadConfig(fmt::format(
            "{}: [[tables]] #{}: every key entry must be a column name (a non-empty string)",
            Where(file, el.source()), index + 1));
      }
      out->key.push_back(*col);
    }
  }
  if (auto node = t.get("topic")) {
    auto topic = node->value<std::string>();
    if (!topic || topic->empty()) {
      return Status::BadConfig(fmt::format("{}: [[tables]] #{}: topic must be a non-empty string",
                                           Where(file, node->source()), index + 1));
    }
    if (out->is_pattern && (topic->size() > 200 || !ValidTopicName(*topic))) {
      return Status::BadConfig(fmt::format(
          "{}: [[tables]] #{}: topic \"{}\" cannot start a Kafka topic name: with a pattern it "
          "is the prefix of each table's topic (<topic>.<schema>.<table>); use 1 to 200 of the "
          "characters a-z A-Z 0-9 . _ -",
          Where(file, node->source()), index + 1, *topic));
    }
    if (topic->size() > 249 || !ValidTopicName(*topic)) {
      return Status::BadConfig(fmt::format(
          "{}: [[tables]] #{}: topic \"{}\" is not a valid Kafka topic name: use at most 249 of "
          "the characters a-z A-Z 0-9 . _ -",
          Where(file, node->source()), index + 1, *topic));
    }
    out->topic = *topic;
  }
  if (auto node = t.get("schema_changes")) {
    auto policy = node->value<std::string>();
    if (policy && *policy == "stop") {
      out->schema_changes = SchemaChangePolicy::kStop;
    } else if (policy && *policy == "evolve") {
      out->schema_changes = SchemaChangePolicy::kEvolve;
    } else {
      return Status::BadConfig(
          fmt::format("{}: [[tables]] #{}: schema_changes must be \"stop\" or \"evolve\"",
                      Where(file, node->source()), index + 1));
    }
  }
  return Status::OK();
}

Status ApplyFile(const std::string& file, const std::vector<Setting>& settings, Config* config) {
  toml::table root;
  try {
    root = toml::parse_file(file);
  } catch (const toml::parse_error& e) {
    return Status::BadConfig(fmt::format("{}:{}:{}: malformed TOML: {}", file,
                                         e.source().begin.line, e.source().begin.column,
                                         e.description()));
  }
  static const std::vector<std::string> kSections = {"tunnel", "source",   "target", "kafka",
                                                     "tables", "pipeline", "metrics"};
  for (auto&& [k, v] : root) {
    std::string section(k.str());
    if (std::find(kSections.begin(), kSections.end(), section) == kSections.end()) {
      return Status::BadConfig(fmt::format(
          "{}: unknown section \"{}\"{}; sections are [tunnel], [source], [target], [kafka], "
          "[[tables]], [pipeline], [metrics]",
          Where(file, v.source()), section, Suggest(section, kSections)));
    }
    if (section == "tables") {
      const toml::array* arr = v.as_array();
      if (!arr) {
        return Status::BadConfig(fmt::format("{}: tables must be written as [[tables]] entries",
                                             Where(file, v.source())));
      }
      int i = 0;
      for (auto&& el : *arr) {
        const toml::table* t = el.as_table();
        if (!t) {
          return Status::BadConfig(
              fmt::format("{}: each [[tables]] entry must be a table", Where(file, el.source())));
        }
        TableConfig tc;
        DT_RETURN_IF_ERROR(ReadTable(file, *t, i++, &tc));
        config->tables.push_back(std::move(tc));
      }
      continue;
    }
    const toml::table* t = v.as_table();
    if (!t) {
      return Status::BadConfig(fmt::format("{}: \"{}\" must be a section ([{}])",
                                           Where(file, v.source()), section, section));
    }
    std::vector<std::string> known;
    for (const auto& s : settings) {
      if (s.section == section) known.push_back(s.key);
    }
    for (auto&& [kk, vv] : *t) {
      std::string key(kk.str());
      if (section == "kafka" && key == "properties") {
        DT_RETURN_IF_ERROR(ReadStringMap(file, "kafka.properties", vv, &config->kafka.properties));
        continue;
      }
      if (section == "kafka" && key == "producer_properties") {
        DT_RETURN_IF_ERROR(ReadStringMap(file, "kafka.producer_properties", vv,
                                         &config->kafka.producer_properties));
        continue;
      }
      if (section == "kafka" && key == "consumer_properties") {
        DT_RETURN_IF_ERROR(ReadStringMap(file, "kafka.consumer_properties", vv,
                                         &config->kafka.consumer_properties));
        continue;
      }
      auto it = std::find_if(settings.begin(), settings.end(), [&](const Setting& s) {
        return s.section == section && s.key == key;
      });
      if (it == settings.end()) {
        std::string list;
        for (const auto& k2 : known) list += (list.empty() ? "" : ", ") + k2;
        if (section == "kafka") list += ", properties, producer_properties, consumer_properties";
        return Status::BadConfig(fmt::format("{}: unknown key \"{}\" in [{}]{}; known keys: {}",
                                             Where(file, vv.source()), key, section,
                                             Suggest(key, known), list));
      }
      auto text = ScalarText(vv);
      if (!text) {
        return Status::BadConfig(fmt::format("{}: {}.{} must be a string, number or boolean",
                                             Where(file, vv.source()), section, key));
      }
      DT_RETURN_IF_ERROR(it->set(*config, *text).WithContext(Where(file, vv.source())));
    }
  }
  return Status::OK();
}

std::string EnvName(const std::string& section, const std::string& key) {
  std::string name = "DATATUNNEL_" + section + "_" + key;
  for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

Status Validate(Config* c) {
  if (c->source.dsn.empty()) {
    return Status::BadConfig(
        "source.dsn is empty: set it to the source database, e.g. "
        "postgresql://user@host:5432/db1");
  }
  if (c->target.dsn.empty()) {
    return Status::BadConfig(
        "target.dsn is empty: set it to the target database, e.g. "
        "postgresql://user@host:5432/db2");
  }
  if (c->tables.empty() && !c->file.empty()) {
    return Status::BadConfig(
        fmt::format("{}: no [[tables]] entry: add one per table to sync ([[tables]] with source = "
                    "\"schema.table\")",
                    c->file));
  }
  if (c->tables.empty()) {
    // The brief's table is the default when there is no config file at all.
    TableConfig t;
    t.source = {"public", "employees"};
    t.target = t.source;
    t.key = {"emp_id"};
    c->tables.push_back(t);
  }
  if (c->tunnel.name.empty()) {
    c->tunnel.name = DefaultTunnelName(c->source.dsn, c->file);
    c->tunnel.name_is_default = true;
    if (!ValidTunnelName(c->tunnel.name)) {
      std::string error;
      DsnDatabase(c->source.dsn, &error);
      if (!error.empty()) {
        return Status::BadConfig(
            fmt::format("source.dsn cannot be parsed: {}; fix [source] dsn", error));
      }
      return Status::BadConfig(
          "cannot derive a tunnel name: source.dsn names no database; set [tunnel] name = "
          "\"...\" (1 to 63 of a-z A-Z 0-9 _ -)");
    }
  }
  if (c->kafka.debezium() && c->kafka.topic_prefix.empty()) {
    for (const auto& t : c->tables) {
      if (t.topic.empty()) {
        return Status::BadConfig(fmt::format(
            "kafka.format = \"debezium\" needs kafka.topic_prefix: set it to the Debezium "
            "connector's topic.prefix (its topics are <topic.prefix>.<schema>.<table>), or give "
            "table {} its topic (line {})",
            t.source.ToString(), t.line));
      }
    }
  }
  if (c->kafka.debezium() && !c->pipeline.apply_consistency_set) {
    c->pipeline.apply_consistency = ApplyConsistency::kKey;
  } else if (c->kafka.debezium() && c->pipeline.transactional()) {
    return Status::BadConfig(
        "pipeline.apply_consistency = \"transaction\" cannot apply kafka.format = \"debezium\" "
        "topics: Debezium's connector writes no end-of-tick records saying where a source "
        "transaction ends; set apply_consistency = \"key\" (the default with that format)");
  }
  // A tunnel's topics and group are its own unless set explicitly, so several
  // tunnels share one Kafka cluster without seeing each other.
  if (c->kafka.topic_prefix.empty()) c->kafka.topic_prefix = "datatunnel." + c->tunnel.name;
  if (c->kafka.group_id.empty()) c->kafka.group_id = "datatunnel." + c->tunnel.name;
  for (auto& t : c->tables) {
    if (t.topic.empty() && !t.is_pattern) t.topic = DefaultTopic(c->kafka.topic_prefix, t.source);
  }
  return CheckDistinct(*c);
}

}  // namespace

bool NamePattern::Matches(const QualifiedName& table) const {
  return LikeMatch(schema, table.schema) && LikeMatch(name, table.name);
}

bool LikeMatch(std::string_view like, std::string_view text) {
  // Iterative wildcard matching with backtracking to the last '%'.
  size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < like.size() && like[p] == '%') {
      star = p++;
      mark = t;
      continue;
    }
    if (p < like.size()) {
      char want = like[p];
      size_t step = 1;
      bool any = want == '_';
      if (want == '\\' && p + 1 < like.size()) {
        want = like[p + 1];
        step = 2;
        any = false;
      }
      if (any || want == text[t]) {
        p += step;
        ++t;
        continue;
      }
    }
    if (star == std::string_view::npos) return false;
    p = star + 1;
    t = ++mark;
  }
  while (p < like.size() && like[p] == '%') ++p;
  return p == like.size();
}

bool HasPatterns(const Config& config) {
  return std::any_of(config.tables.begin(), config.tables.end(),
                     [](const TableConfig& t) { return t.is_pattern; });
}

bool HasAutoAdd(const Config& config) {
  return std::any_of(config.tables.begin(), config.tables.end(),
                     [](const TableConfig& t) { return t.is_pattern && t.auto_add; });
}

Status ExpandPatterns(Config* config, const std::vector<QualifiedName>& candidates,
                      const std::string& from, bool require_match) {
  if (!HasPatterns(*config)) return Status::OK();
  std::vector<QualifiedName> sorted = candidates;
  std::sort(sorted.begin(), sorted.end(), [](const QualifiedName& a, const QualifiedName& b) {
    return std::tie(a.schema, a.name) < std::tie(b.schema, b.name);
  });
  std::vector<TableConfig> out;
  std::set<std::string> taken;
  for (const auto& t : config->tables) {
    if (t.is_pattern) continue;
    taken.insert(t.source.ToString());
    out.push_back(t);
  }
  for (const auto& p : config->tables) {
    if (!p.is_pattern) continue;
    int matched = 0, excluded = 0;
    for (const auto& c : sorted) {
      if (!p.pattern.Matches(c)) continue;
      if (std::any_of(p.exclude.begin(), p.exclude.end(),
                      [&](const NamePattern& x) { return x.Matches(c); })) {
        ++excluded;
        continue;
      }
      ++matched;
      if (!taken.insert(c.ToString()).second) continue;
      TableConfig t;
      t.source = c;
      t.target = {p.target_schema.empty() ? c.schema : p.target_schema, c.name};
      t.topic = DefaultTopic(p.topic.empty() ? config->kafka.topic_prefix : p.topic, c);
      t.schema_changes = p.schema_changes;
      t.line = p.line;
      t.from_pattern = true;
      t.pattern_text = p.pattern_text;
      out.push_back(std::move(t));
    }
    if (matched == 0 && require_match) {
      return Status::BadConfig(fmt::format(
          "{}{}[[tables]] source = \"{}\" (line {}) matches no table {}{}; fix the pattern, or "
          "create the tables first",
          config->file, config->file.empty() ? "" : ": ", p.pattern_text, p.line, from,
          excluded > 0 ? fmt::format(" once exclude is applied ({} excluded)", excluded) : ""));
    }
  }
  config->tables = std::move(out);
  return CheckDistinct(*config);
}

namespace {

Status CheckDistinct(const Config& config) {
  const Config* c = &config;
  std::set<std::string> sources, targets, topics;
  for (const auto& t : c->tables) {
    if (t.is_pattern) continue;
    if (!sources.insert(t.source.ToString()).second) {
      return Status::BadConfig(fmt::format("table {} is listed twice in [[tables]] (line {})",
                                           t.source.ToString(), t.line));
    }
    if (!targets.insert(t.target.ToString()).second) {
      return Status::BadConfig(fmt::format(
          "two [[tables]] entries write to the same target {} (line {}); give each its own target",
          t.target.ToString(), t.line));
    }
    if (!topics.insert(t.topic).second) {
      return Status::BadConfig(fmt::format(
          "two [[tables]] entries use topic \"{}\" (line {}); give each table its own topic",
          t.topic, t.line));
    }
  }
  return Status::OK();
}

}  // namespace

Result<Config> LoadConfig(const std::string& path, const std::map<std::string, std::string>& env,
                          const std::vector<std::string>& overrides) {
  Config config;
  const auto settings = Settings();
  std::string file = path;
  if (file.empty() && std::filesystem::exists("datatunnel.toml")) file = "datatunnel.toml";
  if (!file.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file, ec)) {
      return Status::BadConfig(fmt::format(
          "config file {} not found (or not a file): pass an existing file with -c, or omit -c "
          "to use the defaults",
          file));
    }
    if (access(file.c_str(), R_OK) != 0) {
      return Status::BadConfig(
          fmt::format("config file {} cannot be read: {}", file, std::strerror(errno)));
    }
    config.file = file;
    DT_RETURN_IF_ERROR(ApplyFile(file, settings, &config));
  }
  std::vector<std::string> env_names;
  for (const auto& s : settings) {
    env_names.push_back(EnvName(s.section, s.key));
    auto it = env.find(env_names.back());
    if (it != env.end()) DT_RETURN_IF_ERROR(s.set(config, it->second).WithContext(it->first));
  }
  // A misspelt variable would otherwise be ignored without a word.
  for (const auto& [name, value] : env) {
    if (name.rfind("DATATUNNEL_", 0) != 0 || kOtherVariables.count(name) ||
        std::find(env_names.begin(), env_names.end(), name) != env_names.end()) {
      continue;
    }
    config.warnings.push_back(
        fmt::format("environment variable {} is not a setting and is ignored{}", name,
                    Suggest(name, env_names)));
  }
  for (const auto& o : overrides) {
    auto eq = o.find('=');
    auto dot = o.find('.');
    if (eq == std::string::npos || dot == std::string::npos || dot > eq) {
      return Status::BadConfig(
          fmt::format("--set \"{}\": expected section.key=value, e.g. kafka.brokers=host:9092", o));
    }
    std::string section = o.substr(0, dot), key = o.substr(dot + 1, eq - dot - 1);
    std::string value = o.substr(eq + 1);
    if (section == "kafka") {
      bool done = false;
      for (auto [prefix, map] : {std::pair<std::string, std::map<std::string, std::string>*>{
                                     "properties.", &config.kafka.properties},
                                 {"producer_properties.", &config.kafka.producer_properties},
                                 {"consumer_properties.", &config.kafka.consumer_properties}}) {
        if (key.rfind(prefix, 0) == 0) {
          (*map)[key.substr(prefix.size())] = value;
          done = true;
        }
      }
      if (done) continue;
    }
    auto it = std::find_if(settings.begin(), settings.end(),
                           [&](const Setting& s) { return s.section == section && s.key == key; });
    if (it == settings.end()) {
      std::vector<std::string> known;
      for (const auto& st : settings) known.push_back(st.section + "." + st.key);
      return Status::BadConfig(fmt::format("--set \"{}\": unknown key {}.{}{}", o, section, key,
                                           Suggest(section + "." + key, known)));
    }
    DT_RETURN_IF_ERROR(it->set(config, value).WithContext("--set " + section + "." + key));
  }
  DT_RETURN_IF_ERROR(Validate(&config));
  return config;
}

bool ValidTunnelName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) return false;
  return std::all_of(name.begin(), name.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-';
  });
}

std::string DefaultTunnelName(const std::string& dsn, const std::string& file) {
  std::string error;
  std::string db = DsnDatabase(dsn, &error);
  if (db.empty()) return "";
  std::string name = SanitizeName(db);
  const std::string stem = file.empty() ? "" : std::filesystem::path(file).stem().string();
  if (!stem.empty() && stem != "datatunnel") name += "-" + SanitizeName(stem);
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) name = "t" + name;
  if (name.size() > 63) name.resize(63);
  return name;
}

std::map<std::string, std::string> ProcessEnvironment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  return env;
}

Result<std::string> ReadPassword(const DatabaseConfig& db) {
  if (db.password_file.empty()) return std::string();
  std::error_code ec;
  if (std::filesystem::is_directory(db.password_file, ec)) {
    return Status::BadConfig(
        fmt::format("password_file {} is a directory; point it at a file whose first line is "
                    "the password",
                    db.password_file));
  }
  std::ifstream in(db.password_file);
  if (!in) {
    return Status::BadConfig(
        fmt::format("password_file {} cannot be read: {}", db.password_file, std::strerror(errno)));
  }
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
  if (line.empty()) {
    return Status::BadConfig(fmt::format(
        "password_file {} is empty; its first line must be the password", db.password_file));
  }
  return line;
}

}  // namespace datatunnel
