// TableSpec: what the pipeline knows about one tunnelled table.
//
// The configuration names the tables; the columns and their types always come
// from the database catalog (pg/catalog.h), never from code. Each side builds
// its own spec: the source's columns for capture and publish, the target's for
// apply, so the two may differ while a schema change is being rolled out.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace datatunnel {

// How a column's text value is carried in the JSON envelope (see README,
// "How values are encoded"). Chosen from the PostgreSQL type.
enum class ValueKind : uint8_t {
  kInteger,    // int2, int4, int8, oid: a JSON number, digits verbatim
  kFloat,      // float4, float8: a JSON number; NaN and +-Infinity as strings
  kNumeric,    // numeric: a JSON string (exact, any precision)
  kBool,       // boolean: true / false
  kBytes,      // bytea: a base64 JSON string
  kTimestamp,  // timestamp, timestamptz: an ISO-8601 string ("T", "Z" for UTC)
  kString,     // everything else: PostgreSQL's text form as a JSON string
};

// Returns the kind for a type, from its name as pg_type.typname gives it.
ValueKind ValueKindForType(std::string_view typname);

// "schema"."name", always quoted when turned into SQL.
struct QualifiedName {
  std::string schema;
  std::string name;

  // Parses "schema.table", "table" (schema defaults to "public") or quoted
  // parts ("My Schema"."My.Table"). Returns nullopt on malformed input.
  static std::optional<QualifiedName> Parse(std::string_view text);
  std::string Quoted() const;    // SQL: "schema"."name"
  std::string ToString() const;  // for people: schema.name
  bool operator==(const QualifiedName&) const = default;
};

// Double-quotes an identifier for SQL ("a""b"), whatever it contains.
std::string QuoteIdent(std::string_view ident);
// Single-quotes a string literal for SQL (standard_conforming_strings on).
std::string QuoteLiteral(std::string_view value);

struct Column {
  std::string name;
  std::string type_sql;  // format_type(): "character varying(100)", "integer[]"
  std::string typname;   // pg_type.typname: "varchar", "_int4"
  uint32_t type_oid = 0;
  ValueKind kind = ValueKind::kString;
  bool not_null = false;
  bool generated = false;  // GENERATED ALWAYS ... STORED: never written
};

struct TableSpec {
  QualifiedName source;
  QualifiedName target;
  QualifiedName change_table;  // on the source: <table>_cdc beside the table
  std::string topic;
  std::vector<Column> columns;  // this side's columns, in table order
  std::vector<size_t> key;      // indexes into columns, in key order

  // REQUIRES: name is a column. Returns -1 when absent.
  int ColumnIndex(std::string_view name) const;
  bool IsKey(size_t column) const;
};

}  // namespace datatunnel
