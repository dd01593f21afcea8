#include "publish/envelope.h"

#include <cstring>

#include "core/clock.h"
#include "core/codec.h"
#include "core/json.h"
#include "core/version.h"
#include "core/wire.h"

namespace datatunnel::publish {
namespace {

using Writer = JsonWriter;

void WriteValue(Writer& w, ValueKind kind, std::string_view text, std::string* scratch) {
  switch (kind) {
    case ValueKind::kInteger:
      // PostgreSQL prints integers as valid JSON numbers; pass the digits through.
      w.RawValue(text.data(), text.size(), rapidjson::kNumberType);
      return;
    case ValueKind::kFloat:
      if (text == "NaN" || text == "Infinity" || text == "-Infinity") {
        JsonString(w, text);
      } else {
        w.RawValue(text.data(), text.size(), rapidjson::kNumberType);  // shortest exact form
      }
      return;
    case ValueKind::kBool:
      w.Bool(text == "t");
      return;
    case ValueKind::kBytes:
      scratch->clear();
      if (ByteaHexToBase64(text, scratch)) {
        JsonString(w, *scratch);
      } else {
        JsonString(w, text);
      }
      return;
    case ValueKind::kTimestamp:
      scratch->clear();
      AppendIsoTimestamp(text, scratch);
      JsonString(w, *scratch);
      return;
    case ValueKind::kNumeric:
    case ValueKind::kString:
      JsonString(w, text);
      return;
  }
}

void WriteRow(Writer& w, const TableSpec& spec, const Row& row, bool key_only,
              std::string* scratch) {
  w.StartObject();
  for (size_t i = 0; i < spec.columns.size(); ++i) {
    if (key_only && !spec.IsKey(i)) continue;
    const std::string& name = spec.columns[i].name;
    w.Key(name.data(), static_cast<rapidjson::SizeType>(name.size()));
    if (i >= row.size() || row.IsNull(i)) {
      w.Null();
    } else {
      WriteValue(w, spec.columns[i].kind, row.Get(i), scratch);
    }
  }
  w.EndObject();
}

}  // namespace

std::string JsonValue(ValueKind kind, std::string_view text) {
  std::string scratch;
  rapidjson::StringBuffer out;
  Writer w(out);
  WriteValue(w, kind, text, &scratch);
  return std::string(out.GetString(), out.GetSize());
}

EnvelopeEncoder::EnvelopeEncoder(const std::vector<TableSpec>* tables, Origin origin)
    : tables_(tables), origin_(std::move(origin)) {}

void EnvelopeEncoder::Encode(const Change& c, std::string* key, std::string* value,
                             int partitions) {
  EncodeKey(c, key);
  EncodeValue(c, value, partitions, nullptr);
}

void EnvelopeEncoder::EncodeKey(const Change& c, std::string* key) {
  const TableSpec& spec = (*tables_)[c.table];
  key->clear();
  // A table without a key (full-row identity) has a null key, as broadcasts
  // and packed snapshot chunks (their rows have many keys).
  if (c.op != Op::kTruncate && c.op != Op::kMarker && !spec.key.empty() && c.packed_rows == 0) {
    key_buf_.Clear();
    Writer kw(key_buf_);
    kw.StartObject();
    for (size_t i : spec.key) {
      const std::string& name = spec.columns[i].name;
      kw.Key(name.data(), static_cast<rapidjson::SizeType>(name.size()));
      if (c.row.IsNull(i)) {
        kw.Null();
      } else {
        WriteValue(kw, spec.columns[i].kind, c.row.Get(i), &scratch_);
      }
    }
    kw.EndObject();
    key->assign(key_buf_.GetString(), key_buf_.GetSize());
  }
}

void EnvelopeEncoder::EncodeValue(const Change& c, std::string* value, int partitions,
                                  const Position* prev) {
  if (c.packed_rows > 0) {
    EncodeChunk(c, value, prev);
    return;
  }
  const TableSpec& spec = (*tables_)[c.table];
  value->clear();
  value_buf_.Clear();
  Writer w(value_buf_);
  w.StartObject();
  JsonKey(w, wire::kBefore);
  if (c.op == Op::kDelete) {
    WriteRow(w, spec, c.row, c.key_only, &scratch_);
  } else {
    w.Null();
  }
  JsonKey(w, wire::kAfter);
  if (c.op == Op::kInsert || c.op == Op::kUpdate || c.op == Op::kRead) {
    WriteRow(w, spec, c.row, false, &scratch_);
  } else {
    w.Null();
  }
  const char op = static_cast<char>(c.op);
  JsonKey(w, wire::kOp);
  w.String(&op, 1);
  WriteMarkerFields(w, c, spec);
  if (partitions > 0) {
    JsonKey(w, wire::kPartitions);
    w.Int(partitions);
  }
  JsonKey(w, wire::kTsMs);
  w.Int64(NowMicros() / 1000);
  JsonKey(w, wire::kSource);
  w.StartObject();
  WriteOrigin(w, c.table, spec);
  const bool snapshot = IsSnapshotMessage(c);
  WriteChangeIds(w, c, snapshot);
  JsonKey(w, wire::kTsMs);
  w.Int64(c.captured_us / 1000);
  JsonKey(w, wire::kSnapshot);
  w.Bool(snapshot);
  WritePosAndPrev(w, c.pos, prev);
  w.EndObject();
  w.EndObject();
  value->assign(value_buf_.GetString(), value_buf_.GetSize());
}

void EnvelopeEncoder::WriteOrigin(Writer& w, uint32_t table, const TableSpec& spec) {
  // REQUIRES: `w` writes into value_buf_.
  if (origins_.size() <= table) origins_.resize(table + 1);
  CachedOrigin& o = origins_[table];
  if (o.raw.empty() || o.schema != spec.source.schema || o.name != spec.source.name) {
    // Written once per table: the fields are the same in every message, and
    // escaping them again for each one was a tenth of the producer's CPU
    // in a 1,000,000-row transaction.
    rapidjson::StringBuffer buf;
    Writer ow(buf);
    ow.StartObject();
    WriteOriginFields(ow, origin_, spec);
    ow.EndObject();
    const std::string_view text(buf.GetString(), buf.GetSize());
    // {"<first key>":<its value>,"<key>":<value>,...}: the first key's name
    // (a wire:: constant, no quote in it) and all that follows it.
    const size_t colon = text.find("\":");
    o.first_key.assign(text.substr(2, colon - 2));
    o.raw.assign(text.substr(colon + 2, text.size() - colon - 3));
    o.schema = spec.source.schema;
    o.name = spec.source.name;
  }
  // The writer sees one key and an empty raw value (it writes the colon and
  // counts them, to put the comma before the next key); the value's text,
  // the fields as written, is copied in after it at once (the writer's own
  // RawValue stores a byte at a time: no faster than writing the fields).
  JsonKey(w, o.first_key);
  w.RawValue("", 0, rapidjson::kStringType);
  std::memcpy(value_buf_.Push(o.raw.size()), o.raw.data(), o.raw.size());
}

void EnvelopeEncoder::EncodeChunk(const Change& c, std::string* value, const Position* prev) {
  const TableSpec& spec = (*tables_)[c.table];
  value_buf_.Clear();
  Writer w(value_buf_);
  w.StartObject();
  JsonKey(w, wire::kChunk);  // first: a consumer tells a chunk by it
  w.Int(wire::kChunkVersion);
  JsonKey(w, wire::kOp);
  w.String("r", 1);
  JsonKey(w, wire::kChunkRows);
  w.Int64(c.packed_rows);
  JsonKey(w, wire::kColumns);
  w.StartArray();
  for (const auto& col : spec.columns) JsonString(w, col.name);
  w.EndArray();
  JsonKey(w, wire::kTsMs);
  w.Int64(NowMicros() / 1000);
  JsonKey(w, wire::kSource);
  w.StartObject();
  WriteOriginFields(w, origin_, spec);
  JsonKey(w, wire::kTsMs);
  w.Int64(c.captured_us / 1000);
  JsonKey(w, wire::kSnapshot);
  w.Bool(true);
  WritePosAndPrev(w, c.pos, prev);
  w.EndObject();
  w.EndObject();
  // The rows as the source server wrote them: no value is encoded here.
  const std::string_view rows = c.row.Get(0);
  value->clear();
  value->reserve(value_buf_.GetSize() + 1 + rows.size());
  value->append(value_buf_.GetString(), value_buf_.GetSize());
  value->push_back('\n');
  value->append(rows);
}

bool IsSnapshotMessage(const Change& c) {
  return c.op == Op::kRead || (c.op == Op::kMarker && c.marker == Marker::kSnapshotDone);
}

void WriteOriginFields(JsonWriter& w, const Origin& origin, const TableSpec& spec) {
  JsonKey(w, wire::kVersion);
  w.String(DATATUNNEL_VERSION);
  JsonKey(w, wire::kConnector);
  JsonString(w, wire::kConnectorName);
  JsonKey(w, wire::kName);
  JsonString(w, origin.tunnel.empty() ? wire::kConnectorName : std::string_view(origin.tunnel));
  if (!origin.install.empty()) {
    JsonKey(w, wire::kInstall);
    JsonString(w, origin.install);
  }
  JsonKey(w, wire::kDb);
  JsonString(w, origin.db);
  JsonKey(w, wire::kSchema);
  JsonString(w, spec.source.schema);
  JsonKey(w, wire::kTable);
  JsonString(w, spec.source.name);
}

void WriteChangeIds(JsonWriter& w, const Change& c, bool snapshot) {
  JsonKey(w, wire::kTxId);
  if (snapshot) {
    w.Null();
  } else {
    w.Int64(c.txid);
  }
  JsonKey(w, wire::kChangeId);
  if (snapshot) {
    w.Null();
  } else if (c.op == Op::kMarker) {
    w.Int64(0);  // a schema marker is no change (its seq is where it sits in the stream)
  } else {
    w.Int64(c.pos.seq);
  }
}

void WritePosition(JsonWriter& w, const Position& p) {
  w.StartArray();
  w.Int64(p.epoch);
  w.Int64(p.tick);
  w.Int64(p.seq);
  w.Int(p.sub);
  w.EndArray();
}

void WritePosAndPrev(JsonWriter& w, const Position& pos, const Position* prev) {
  JsonKey(w, wire::kPos);
  WritePosition(w, pos);
  if (prev) {
    JsonKey(w, wire::kPrev);
    if (*prev == Position{}) {
      w.Null();
    } else {
      WritePosition(w, *prev);
    }
  }
}

void WriteMarkerFields(JsonWriter& w, const Change& c, const TableSpec& spec) {
  if (c.op != Op::kMarker) return;
  JsonKey(w, wire::kMarker);
  JsonString(w, c.marker == Marker::kSchema ? wire::kMarkerSchema : wire::kMarkerSnapshotDone);
  if (c.marker != Marker::kSchema) return;
  JsonKey(w, wire::kColumns);
  w.StartArray();
  for (const auto& col : spec.columns) {
    w.StartObject();
    JsonKey(w, wire::kColumnName);
    JsonString(w, col.name);
    JsonKey(w, wire::kColumnType);
    JsonString(w, col.type_sql);
    w.EndObject();
  }
  w.EndArray();
}

void EncodeTickEnd(const Origin& origin, const TickEnd& end, std::string* value) {
  rapidjson::StringBuffer buf;
  Writer w(buf);
  w.StartObject();
  JsonKey(w, wire::kTickEnd);
  WritePosition(w, end.end);
  JsonKey(w, wire::kParts);
  w.StartArray();
  for (const auto& p : end.parts) {
    w.StartArray();
    JsonString(w, p.topic);
    w.Int(p.partition);
    WritePosition(w, p.pos);
    w.EndArray();
  }
  w.EndArray();
  JsonKey(w, wire::kTsMs);
  w.Int64(NowMicros() / 1000);
  JsonKey(w, wire::kSource);
  w.StartObject();
  JsonKey(w, wire::kName);
  JsonString(w, origin.tunnel.empty() ? wire::kConnectorName : std::string_view(origin.tunnel));
  if (!origin.install.empty()) {
    JsonKey(w, wire::kInstall);
    JsonString(w, origin.install);
  }
  w.EndObject();
  w.EndObject();
  value->assign(buf.GetString(), buf.GetSize());
}

}  // namespace datatunnel::publish
