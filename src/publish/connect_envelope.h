// The message format of kafka.format = "connect-json": our changes as Kafka
// Connect's JsonConverter with schemas.enable = true writes them, so that a
// stock Connect sink (Debezium's JDBC sink, say) reads our topics.
//
//   key:   {"schema": {"type": "struct", "name": "<topic>.Key", ...},
//           "payload": {"<key column>": value, ...}}   (null for t and m)
//   value: {"schema": {"type": "struct", "name": "<topic>.Envelope", ...},
//           "payload": {"before", "after", "source", "op", "ts_ms",
//                       and for control messages "marker", "columns",
//                       "partitions"}}
//
// The payload is our envelope (publish/envelope.h): the same fields and
// "source" block ("pos", "prev", "name", "install": what our consumer
// checks), with "source.snapshot" as the string Debezium writes. Row values
// take Debezium's PostgreSQL connector's types (its defaults:
// time.precision.mode = adaptive, decimal.handling.mode = precise,
// binary.handling.mode = bytes):
//   bool -> boolean; int2/int4/int8 -> int16/int32/int64; float4/float8 ->
//   float/double; numeric(p,s) -> Connect Decimal (bytes, "scale"),
//   numeric -> io.debezium.data.VariableScaleDecimal {scale, value};
//   date -> io.debezium.time.Date (days); time(p) -> Time (ms, p <= 3) or
//   MicroTime (µs); timestamp(p) -> Timestamp (ms, p <= 3) or
//   MicroTimestamp (µs); timestamptz -> ZonedTimestamp (ISO-8601, UTC);
//   bytea -> bytes (base64); uuid -> io.debezium.data.Uuid; json, jsonb ->
//   io.debezium.data.Json; xml -> io.debezium.data.Xml; one-dimensional
//   arrays -> Connect arrays of their element's type; everything else
//   (text types, timetz, interval, inet, enums, ranges, ...) -> string,
//   PostgreSQL's text form.
// A value such a type cannot hold (numeric and float NaN/±Infinity,
// ±infinity dates and timestamps, multi-dimensional arrays) is null in the
// row and its exact text is in "source.raw" ({"<column>": text}): other
// consumers see null, ours reads the exact value (apply/decoder.h).
//
// Control messages (schema markers, end-of-snapshot markers, and the copies
// of a TRUNCATE sent to partitions other than 0) carry the Kafka header
// kControlHeader; a Connect sink drops them with the stock Filter transform
// and HasHeaderKey predicate (docs/debezium.md). The copy of a TRUNCATE on
// partition 0 is a plain Debezium truncate event (op "t"), as Debezium sends
// one. KafkaSink adds the headers; this encoder writes the bytes.
//
// Thread-safety: an encoder owns its buffers; one per thread.
#pragma once

#include <rapidjson/stringbuffer.h>

#include <string>
#include <string_view>
#include <vector>

#include "core/change.h"
#include "core/table.h"
#include "publish/envelope.h"

namespace datatunnel::publish {

// The header on control messages, its value what they are: "schema",
// "snapshot_done" or "truncate".
inline constexpr const char* kControlHeader = "datatunnel.control";

class ConnectEncoder {
 public:
  // `tables`: source-side specs indexed by Change::table.
  ConnectEncoder(const std::vector<TableSpec>* tables, Origin origin);

  // As EnvelopeEncoder's: the key (empty, a null key, for t, m and tables
  // without a key) and the value.
  void EncodeKey(const Change& c, std::string* key);
  void EncodeValue(const Change& c, std::string* value, int partitions, const Position* prev);

 private:
  const std::string& KeySchema(uint32_t table);
  const std::string& ValueSchema(uint32_t table);

  const std::vector<TableSpec>* tables_;
  Origin origin_;
  // Per table, the schema JSON (built on first use).
  std::vector<std::string> key_schemas_, value_schemas_;
  std::string scratch_;
  std::vector<std::pair<size_t, std::string_view>> raw_;  // (column, text) of this row
  rapidjson::StringBuffer buf_;
};

// For tests: the Connect schema of column `col` and the payload value of
// `text` in it ("null" when the type cannot hold it, then *raw is true).
std::string ConnectFieldSchema(const Column& col);
std::string ConnectValue(const Column& col, std::string_view text, bool* raw);

}  // namespace datatunnel::publish
