// The message format on the topic: a Debezium-compatible JSON envelope.
//
//   key:   {"<key column>": value, ...}            (null for t and m)
//   value: {"before": {...}|null, "after": {...}|null, "op": "c|u|d|r|t|m",
//           "ts_ms": <publish time>,
//           "source": {"version", "connector": "datatunnel", "name" (the tunnel's
//                      name), "install" (the source installation's id), "db",
//                      "schema", "table", "txId", "change_id", "ts_ms"
//                      (capture time), "snapshot": true|false,
//                      "pos": [epoch, tick, seq, sub],
//                      "prev": [epoch, tick, seq, sub]|null}}
//
// Truncates and markers go to every partition and carry "partitions": N.
// "op":"m" with "marker":"schema" carries the source table's columns as
// "columns": [{"name": ..., "type": ...}] (sent when a producer starts, so
// consumers can add new columns to the target before rows use them).
// "pos" is the change's Position (core/change.h); consumers use it to drop
// duplicates. "prev" chains the messages of one partition: the "pos" of the
// message the producer sent to the same partition before this one (null for
// the first ever), so a consumer notices a message missing from the topic
// (apply/chain.h). A delete carries the old row in "before" (only the key when it
// is the delete half of a key change). "op":"m" with "marker":"snapshot_done"
// ends a snapshot on every partition. Value encodings per type are listed in
// README.md ("How values are encoded").
//
// A packed snapshot chunk (Change::packed_rows > 0: rows of one table read
// with COPY ... TO STDOUT, all for the same partition) is not an envelope:
//
//   {"chunk": 1, "op": "r", "rows": N, "columns": ["<name>", ...], "ts_ms",
//    "source": {"version", "connector", "name", "install", "db", "schema",
//               "table", "ts_ms", "snapshot": true, "pos", "prev"}}\n
//   <N lines of PostgreSQL COPY text, columns in "columns" order>
//
// "chunk" comes first and is the format's version (wire::kChunkVersion).
// "pos" is the last row's position; the rows before it take the positions
// just below it, one each. Its Kafka key is null.
//
// Thread-safety: an encoder owns its buffers; one per thread.
#pragma once

#include <rapidjson/stringbuffer.h>

#include <string>
#include <vector>

#include "core/change.h"
#include "core/json.h"
#include "core/message.h"
#include "core/table.h"

namespace datatunnel::publish {

// Where messages come from: "source.db", "source.name" (the tunnel; written
// as "datatunnel" when empty) and "source.install" (the source installation,
// datatunnel.meta.install_id; left out when empty). A consumer refuses
// messages of another tunnel or installation (apply/decoder.h).
struct Origin {
  Origin(std::string db_name, std::string tunnel_name = {}, std::string install_id = {})
      : db(std::move(db_name)), tunnel(std::move(tunnel_name)), install(std::move(install_id)) {}
  Origin(const char* db_name) : db(db_name) {}  // NOLINT: implicit, as a string
  std::string db;
  std::string tunnel;
  std::string install;
};

class EnvelopeEncoder {
 public:
  // `tables`: source-side specs indexed by Change::table.
  EnvelopeEncoder(const std::vector<TableSpec>* tables, Origin origin);

  // The Kafka key of `c`, the JSON object of its key columns; empty (a null
  // key) for truncate and marker messages, which are sent to every
  // partition, and for a table without a key (full-row identity).
  void EncodeKey(const Change& c, std::string* key);
  // The value of `c`. `partitions`: how many partitions a truncate or marker
  // is sent to (0: not written). `prev`: the position of the message sent to
  // the same partition before this one, written as "source.prev" (the zero
  // Position as null: the partition's first message); nullptr leaves the
  // field out. A packed chunk (`c.packed_rows` > 0) is written in the chunk
  // format above.
  void EncodeValue(const Change& c, std::string* value, int partitions, const Position* prev);
  // Both, without "source.prev".
  void Encode(const Change& c, std::string* key, std::string* value, int partitions = 0);

 private:
  void EncodeChunk(const Change& c, std::string* value, const Position* prev);
  // Inside "source": WriteOriginFields() of `spec`, from text kept per
  // table. `w` must write into value_buf_.
  void WriteOrigin(JsonWriter& w, uint32_t table, const TableSpec& spec);

  // A table's origin fields as written: `first_key`, and `raw`, the text
  // that follows its colon up to the last field's end. Remade when the
  // table's source name differs from the one it was made for.
  struct CachedOrigin {
    std::string first_key, raw;
    std::string schema, name;
  };
  std::vector<CachedOrigin> origins_;

  const std::vector<TableSpec>* tables_;
  Origin origin_;
  std::string scratch_;
  // rapidjson's own buffer: its writer reserves once per value and then
  // stores bytes unchecked (appending to a std::string a byte at a time was
  // most of the producer's encoding time).
  rapidjson::StringBuffer key_buf_, value_buf_;
};

// The end-of-tick record `end` (core/message.h; its tunnel and install come
// from `origin`) as the control topic's message value.
void EncodeTickEnd(const Origin& origin, const TickEnd& end, std::string* value);

// Pieces of the envelope that every encoder of this folder writes the same
// way (envelope.cc, connect_envelope.cc).
//
// Whether `c` belongs to a snapshot (a row read by it, or its end marker):
// "source.snapshot", and no txId or change_id.
bool IsSnapshotMessage(const Change& c);
// Inside "source": version, connector, name (the tunnel), install, db,
// schema, table.
void WriteOriginFields(JsonWriter& w, const Origin& origin, const TableSpec& spec);
// Inside "source": "txId" and "change_id" of `c` (null in a snapshot, 0 for
// a marker).
void WriteChangeIds(JsonWriter& w, const Change& c, bool snapshot);
// A position as [epoch, tick, seq, sub].
void WritePosition(JsonWriter& w, const Position& p);
// Inside "source": "pos", and "prev" when `prev` is given (the zero
// Position as null: a partition's first message).
void WritePosAndPrev(JsonWriter& w, const Position& pos, const Position* prev);
// The marker fields of a marker `c` ("marker", and a schema marker's
// "columns"); nothing for other changes.
void WriteMarkerFields(JsonWriter& w, const Change& c, const TableSpec& spec);

// One value as JSON for its kind (exposed for tests).
std::string JsonValue(ValueKind kind, std::string_view text);

}  // namespace datatunnel::publish
