// Apply, input: change events written by Debezium's PostgreSQL connector
// (kafka.format = "debezium"), beside EnvelopeDecoder for our own envelope.
//
// A message value is Kafka Connect's JsonConverter output: with schemas
// ({"schema": ..., "payload": {envelope}}) or without (the envelope alone).
// The envelope's "op" is c (insert), u (update), d (delete), r (snapshot
// row) or t (TRUNCATE); "before"/"after" hold the rows, "source" where they
// came from ("schema" and "table" must be the configured source table:
// another table's events on this topic stop the consumer, kBadConfig).
//
// Rows are laid out by the target table's columns (fields matched by name,
// as EnvelopeDecoder does), and each value becomes PostgreSQL text again,
// undoing Debezium's encodings (its defaults, docs/debezium.md):
//   - date: days since 1970-01-01; time: ms or µs of the day, timestamp: ms
//     or µs since the epoch (io.debezium.time.*, or by the column's precision
//     without schemas, as time.precision.mode = adaptive chooses);
//     timestamptz, timetz: ISO strings, passed through;
//   - numeric: with schemas, Connect's Decimal (base64 two's complement, the
//     scale in the schema) and Debezium's VariableScaleDecimal ({"scale",
//     "value"}); a decimal string (decimal.handling.mode = string) or a
//     number (= double); a base64 decimal without schemas cannot be read
//     (its scale is not in the message) and is refused as a bad message;
//   - bytea: base64; interval: µs (interval.handling.mode = numeric) or an
//     ISO-8601 duration (= string); arrays: JSON arrays, element by element;
//     uuid, json, jsonb, inet, enums, text: strings, passed through;
//   - "__debezium_unavailable_value" (an unchanged TOASTed value Debezium
//     could not read): the column is left as the target has it.
// A delete without "before" (REPLICA IDENTITY NOTHING) takes its key from
// the message key. Positions are not read here: the consumer gives each
// message its Kafka offset (there is no chain to check, tunnel/kafka_source.h).
//
// Thread-safety: one decoder per thread (it owns its parsers and buffers).
#pragma once

#include <simdjson.h>

#include <string>
#include <string_view>
#include <vector>

#include "apply/columns.h"
#include "core/change.h"
#include "core/status.h"
#include "core/table.h"

namespace datatunnel::apply {

class DebeziumDecoder {
 public:
  explicit DebeziumDecoder(const std::vector<TableSpec>* targets);

  // Decodes message (`key`, `value`) for target table `table`. kBadConfig:
  // an event of another source table (source() says which); kBadData: not a
  // Debezium change event, or a value that cannot be read for its column;
  // kFatal: a valid change for a column the target does not have.
  Status Decode(std::string_view key, std::string_view value, uint32_t table, Change* out);
  // After Decode(): "schema.table" of the message's source ("" when absent).
  const std::string& source() const { return source_; }
  // Rebuilds the column lookup after the target specs changed.
  void Refresh();

  // How one field is encoded, from the message's schema (empty without).
  struct FieldSchema {
    std::string_view type;         // Connect type: "int32", "bytes", "string", "array", ...
    std::string_view name;         // logical name: "io.debezium.time.Date", ...
    int scale = 0;                 // for org.apache.kafka.connect.data.Decimal
    simdjson::dom::element items;  // an array's element schema
    bool has_items = false;
    bool present = false;
  };

 private:
  // `schema`: the row's struct schema, or null without schemas.
  Status DecodeRow(simdjson::dom::object obj, const simdjson::dom::element* schema, uint32_t table,
                   Row* row, bool* any_unknown);

  const std::vector<TableSpec>* targets_;
  ColumnLookup columns_;
  simdjson::dom::parser parser_, key_parser_;
  std::string padded_, key_padded_;
  std::string value_, scratch_;
  std::string source_;
  std::vector<FieldSchema> fields_;
};

// One value `v` (not null) as Debezium or Kafka Connect writes it, as
// PostgreSQL text for column `c` (appended to *out), undoing the encodings
// above; `field_schema`: the value's field in the message's schema, or
// nullptr. *absent for Debezium's placeholder of a value it could not read.
// Shared with the reader of kafka.format = "connect-json" (apply/connect.h).
Status DebeziumValueText(simdjson::dom::element v, const Column& c,
                         const simdjson::dom::element* field_schema, std::string* out,
                         bool* absent);

}  // namespace datatunnel::apply
