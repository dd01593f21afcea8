#include "publish/envelope.h"

#include <rapidjson/writer.h>

#include "core/clock.h"
#include "core/codec.h"
#include "core/version.h"

namespace datatunnel::publish {
namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void WriteString(Writer& w, std::string_view s) {
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

void WriteValue(Writer& w, ValueKind kind, std::string_view text, std::string* scratch) {
  switch (kind) {
    case ValueKind::kInteger:
      // PostgreSQL prints integers as valid JSON numbers; pass the digits through.
      w.RawValue(text.data(), text.size(), rapidjson::kNumberType);
      return;
    case ValueKind::kFloat:
      if (text == "NaN" || text == "Infinity" || text == "-Infinity") {
        WriteString(w, text);
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
        WriteString(w, *scratch);
      } else {
        WriteString(w, text);
      }
      return;
    case ValueKind::kTimestamp:
      scratch->clear();
      AppendIsoTimestamp(text, scratch);
      WriteString(w, *scratch);
      return;
    case ValueKind::kNumeric:
    case ValueKind::kString:
      WriteString(w, text);
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
  if (c.op != Op::kTruncate && c.op != Op::kMarker) {
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
  const TableSpec& spec = (*tables_)[c.table];
  value->clear();
  value_buf_.Clear();
  Writer w(value_buf_);
  w.StartObject();
  w.Key("before");
  if (c.op == Op::kDelete) {
    WriteRow(w, spec, c.row, c.key_only, &scratch_);
  } else {
    w.Null();
  }
  w.Key("after");
  if (c.op == Op::kInsert || c.op == Op::kUpdate || c.op == Op::kRead) {
    WriteRow(w, spec, c.row, false, &scratch_);
  } else {
    w.Null();
  }
  const char op = static_cast<char>(c.op);
  w.Key("op");
  w.String(&op, 1);
  if (c.op == Op::kMarker) {
    w.Key("marker");
    w.String(c.marker == Marker::kSchema ? "schema" : "snapshot_done");
    if (c.marker == Marker::kSchema) {
      w.Key("columns");
      w.StartArray();
      for (const auto& col : spec.columns) {
        w.StartObject();
        w.Key("name");
        WriteString(w, col.name);
        w.Key("type");
        WriteString(w, col.type_sql);
        w.EndObject();
      }
      w.EndArray();
    }
  }
  if (partitions > 0) {
    w.Key("partitions");
    w.Int(partitions);
  }
  w.Key("ts_ms");
  w.Int64(NowMicros() / 1000);
  w.Key("source");
  w.StartObject();
  w.Key("version");
  w.String(DATATUNNEL_VERSION);
  w.Key("connector");
  w.String("datatunnel");
  w.Key("name");
  if (origin_.tunnel.empty()) {
    w.String("datatunnel");
  } else {
    WriteString(w, origin_.tunnel);
  }
  if (!origin_.install.empty()) {
    w.Key("install");
    WriteString(w, origin_.install);
  }
  w.Key("db");
  WriteString(w, origin_.db);
  w.Key("schema");
  WriteString(w, spec.source.schema);
  w.Key("table");
  WriteString(w, spec.source.name);
  const bool snapshot =
      c.op == Op::kRead || (c.op == Op::kMarker && c.marker == Marker::kSnapshotDone);
  w.Key("txId");
  if (snapshot) {
    w.Null();
  } else {
    w.Int64(c.txid);
  }
  w.Key("change_id");
  if (snapshot) {
    w.Null();
  } else if (c.op == Op::kMarker) {
    w.Int64(0);  // a schema marker is no change (its seq is where it sits in the stream)
  } else {
    w.Int64(c.pos.seq);
  }
  w.Key("ts_ms");
  w.Int64(c.captured_us / 1000);
  w.Key("snapshot");
  w.Bool(snapshot);
  w.Key("pos");
  w.StartArray();
  w.Int64(c.pos.epoch);
  w.Int64(c.pos.tick);
  w.Int64(c.pos.seq);
  w.Int(c.pos.sub);
  w.EndArray();
  if (prev) {
    w.Key("prev");
    if (*prev == Position{}) {
      w.Null();
    } else {
      w.StartArray();
      w.Int64(prev->epoch);
      w.Int64(prev->tick);
      w.Int64(prev->seq);
      w.Int(prev->sub);
      w.EndArray();
    }
  }
  w.EndObject();
  w.EndObject();
  value->assign(value_buf_.GetString(), value_buf_.GetSize());
}

}  // namespace datatunnel::publish
