// Apply, input: messages of kafka.format = "connect-json" (publish/
// connect_envelope.h), Kafka Connect's JsonConverter form of our envelope:
// {"schema": ..., "payload": {envelope}}. ConnectUnwrapper rewrites one as
// our own envelope, each row value back in the form EnvelopeDecoder reads
// (PostgreSQL text; bytea base64), so that one decoder checks origins,
// chains, markers and barriers for both formats, message by message: a topic
// may hold both (a tunnel whose producer switched formats).
//
// Row values are read with the message's schema (Connect Decimal,
// VariableScaleDecimal, io.debezium.time.*; apply/debezium_decoder.h) for
// the *target* column's type; a value in "source.raw" (one the Connect type
// could not hold) is taken from there, exactly.
//
// Thread-safety: one per thread (it owns its parser and buffers).
#pragma once

#include <simdjson.h>

#include <string>
#include <string_view>

#include "core/status.h"
#include "core/table.h"

namespace datatunnel::apply {

// Whether `value` is a Connect JSON document with schema (its first key is
// "schema", as JsonConverter and publish/ write it).
bool IsConnectJson(std::string_view value);

class ConnectUnwrapper {
 public:
  // Writes `value` as our envelope into *out. `rows` false: "before" and
  // "after" are left null (enough to read the chain). kBadData: not a
  // Connect document of our envelope, or a value its column cannot read.
  Status ToEnvelope(std::string_view value, const TableSpec& target, bool rows, std::string* out);

 private:
  simdjson::dom::parser parser_;
  std::string padded_, text_;
};

}  // namespace datatunnel::apply
