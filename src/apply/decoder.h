// Apply, input: the envelope (publish/envelope.h) back into a Change.
//
// The row is laid out by the *target* table's columns: fields are matched by
// name; a target column the message does not carry stays absent (its value is
// left alone); a field the target has no column for is an error (silently
// dropping it would lose data). Values become PostgreSQL text again: JSON
// numbers keep their exact digits, base64 strings become hex bytea for bytea
// columns, true/false stay booleans, nested JSON stays JSON text.
// A message of kafka.format = "connect-json" ({"schema", "payload"}) is
// unwrapped first (apply/connect.h); each message is read in its own form.
//
// A packed snapshot chunk (publish/envelope.h: a JSON header line, then the
// rows as COPY text) decodes into one Change with `packed_rows` set and the
// COPY text in row slot 0, as the source wrote it; its header's "columns"
// are matched to the target's by name like a row's fields. When they line
// up with the target's columns exactly (same names, same order, no
// generated column: chunk_passthrough()), the text goes into the target as
// it is; otherwise UnpackChunk() makes one change per row, laid out by the
// target's columns. The text is checked line by line (row count, fields per
// line) without unescaping it: a malformed chunk is kBadData.
//
// Thread-safety: one decoder per thread (it owns its parser and buffers).
#pragma once

#include <simdjson.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apply/columns.h"
#include "apply/connect.h"
#include "core/change.h"
#include "core/status.h"
#include "core/table.h"

namespace datatunnel::apply {

class EnvelopeDecoder {
 public:
  explicit EnvelopeDecoder(const std::vector<TableSpec>* targets);

  // Messages must come from tunnel `tunnel` and source installation
  // `install` (their "source.name" and "source.install"): Decode() refuses
  // others with kBadConfig before anything else. A message without
  // "source.install" (written by an earlier version) is not checked.
  void ExpectOrigin(std::string tunnel, std::string install) {
    expect_tunnel_ = std::move(tunnel);
    expect_install_ = std::move(install);
  }

  // Decodes a message value for target table `table`. kBadConfig: a message
  // of another tunnel or source installation (ExpectOrigin; origin() says
  // whose); kBadData: not an envelope (malformed JSON, missing or ill-typed
  // fields, a "source.pos" not after its "source.prev"); kFatal: a valid
  // change for a column the target does not have.
  Status Decode(std::string_view value, uint32_t table, Change* out);
  // After Decode(): the message's "source.name" and "source.install" ("" when
  // absent).
  const std::string& origin_tunnel() const { return tunnel_; }
  const std::string& origin_install() const { return install_; }
  // After Decode() succeeded: the message's "source.prev" (apply/chain.h),
  // the zero Position for null, nullopt when the message has none.
  const std::optional<Position>& prev() const { return prev_; }

  // After Decode() of a packed chunk: whether its COPY text is laid out like
  // the target table (it can go into the target as it is).
  bool chunk_passthrough() const { return chunk_passthrough_; }
  // After Decode() of a packed chunk `packed`: appends its rows as one
  // change each, laid out by the target's columns (a target column the chunk
  // lacks is absent), positions counted up to the chunk's.
  Status UnpackChunk(const Change& packed, std::vector<Change>* out) const;

  // Reads only "source.pos" and "source.prev" of a message Decode() refused
  // (so a dead letter still takes its place in the partition's chain).
  // Returns false when they are missing, malformed or out of order.
  bool ReadChain(std::string_view value, Position* pos, std::optional<Position>* prev);

  // The "partitions" count carried by a broadcast (t, m) message, or 0.
  int broadcast_partitions() const { return broadcast_partitions_; }
  // The columns a schema marker carries (name and type_sql).
  const std::vector<Column>& schema_columns() const { return schema_columns_; }
  // Rebuilds the column lookup after the target specs changed.
  void Refresh();

 private:
  // `value_size`: the message's size, a bound for the row's values.
  // Starts on-demand parsing of `text` (copied into padded_, which must
  // outlive *doc's use); true when it is not JSON.
  bool Iterate(std::string_view text, simdjson::ondemand::document* doc);
  // One field of "source" that rows and chunks both carry (pos, prev, name,
  // install, ts_ms), into *out and this decoder; *known false for others.
  Status ReadSourceField(std::string_view key, simdjson::ondemand::value value, Change* out,
                         bool* have_pos, bool* known);
  Status DecodeRow(simdjson::ondemand::object obj, uint32_t table, size_t value_size, Row* row,
                   bool* any_unknown);

  Status DecodeChunk(std::string_view value, uint32_t table, Change* out);
  // Parses a chunk's header line (`header`, without its newline).
  Status ParseChunkHeader(std::string_view header, Change* out, int64_t* version, int64_t* rows,
                          std::vector<std::string>* columns);

  const std::vector<TableSpec>* targets_;
  ColumnLookup columns_;
  // The last packed chunk decoded: per chunk column its target column.
  std::vector<int> chunk_to_target_;
  bool chunk_passthrough_ = false;
  simdjson::ondemand::parser parser_;
  std::string padded_;
  std::string scratch_;
  Row row_scratch_;  // DecodeRow's
  ConnectUnwrapper connect_;
  std::string unwrapped_;
  int broadcast_partitions_ = 0;
  std::optional<Position> prev_;
  std::string expect_tunnel_, expect_install_;
  std::string tunnel_, install_;
  std::vector<Column> schema_columns_;
};

}  // namespace datatunnel::apply
