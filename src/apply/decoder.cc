#include "apply/decoder.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "apply/chain.h"
#include "core/codec.h"
#include "core/wire.h"
#include "pg/connection.h"

namespace datatunnel::apply {

namespace od = simdjson::ondemand;

namespace {

Status Bad(std::string_view what) { return Status::BadData(std::string(what)); }

// A position array [epoch, tick, seq, sub] ("source.pos", "source.prev").
Status ParsePosition(od::value v, const char* field, Position* out) {
  od::array arr;
  if (v.get_array().get(arr)) return Bad(fmt::format("\"{}\" must be an array", field));
  int64_t p[4] = {0, 0, 0, 0};
  size_t n = 0;
  for (auto el : arr) {
    int64_t x = 0;
    if (n >= 4 || el.get_int64().get(x)) {
      return Bad(fmt::format("\"{}\" must hold 4 integers", field));
    }
    p[n++] = x;
  }
  if (n != 4) return Bad(fmt::format("\"{}\" must hold 4 integers", field));
  if (p[3] < 0 || p[3] > INT32_MAX) return Bad(fmt::format("\"{}\" has a bad sub-position", field));
  *out = Position{p[0], p[1], p[2], static_cast<int32_t>(p[3])};
  return Status::OK();
}

// "source.prev": null is the zero Position (the partition's first message).
Status ParsePrev(od::value v, std::optional<Position>* out) {
  bool is_null = false;
  if (v.is_null().get(is_null)) return Bad("\"source.prev\" is malformed");
  if (is_null) {
    *out = Position{};
    return Status::OK();
  }
  Position p;
  DT_RETURN_IF_ERROR(ParsePosition(v, "source.prev", &p));
  *out = p;
  return Status::OK();
}

bool IsChunk(std::string_view value) {
  return value.substr(0, wire::kChunkPrefix.size()) == wire::kChunkPrefix;
}

// Checks that `text` is `rows` lines of COPY text with `columns` fields each.
// Escapes are skipped, not decoded: a backslash takes the byte after it
// (never the line's end), so an escaped tab is no separator. PostgreSQL
// checks the values themselves when it reads them.
Status CheckCopyText(std::string_view text, int64_t rows, size_t columns) {
  if (text.empty() || text.back() != '\n') {
    return Bad("a snapshot chunk's rows must end with a newline");
  }
  int64_t line = 0;
  size_t fields = 1, line_start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (ch == '\\') {
      if (text[i + 1] == '\n') {
        return Bad(fmt::format("row {} of a snapshot chunk ends in a lone backslash", line + 1));
      }
      if (i == line_start && text[i + 1] == '.' && text[i + 2] == '\n') {
        return Bad(
            fmt::format("row {} of a snapshot chunk is COPY's end-of-data marker", line + 1));
      }
      ++i;
    } else if (ch == '\t') {
      ++fields;
    } else if (ch == '\n') {
      ++line;
      if (fields != columns) {
        return Bad(
            fmt::format("row {} of a snapshot chunk has {} fields, not {}", line, fields, columns));
      }
      fields = 1;
      line_start = i + 1;
    }
  }
  if (line != rows) {
    return Bad(fmt::format("a snapshot chunk holds {} rows, its header says {}", line, rows));
  }
  return Status::OK();
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\n' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

}  // namespace

EnvelopeDecoder::EnvelopeDecoder(const std::vector<TableSpec>* targets) : targets_(targets) {
  Refresh();
}

void EnvelopeDecoder::Refresh() { columns_.Build(*targets_); }

Status EnvelopeDecoder::DecodeRow(od::object obj, uint32_t table, size_t value_size, Row* out,
                                  bool* any_unknown) {
  const TableSpec& spec = (*targets_)[table];
  // Decoded into a row kept from message to message, whose buffer has room
  // for any message's values (value_size bounds them), then copied out at
  // its exact size: reserving value_size in every row made each row's
  // buffer the whole message's size (about 4x its values), and freeing a
  // streamed tick's million such rows was most of the consumer's malloc
  // time.
  Row* row = &row_scratch_;
  row->ResetAbsent(spec.columns.size());
  row->Reserve(value_size);
  for (auto field : obj) {
    std::string_view name;
    if (field.unescaped_key().get(name)) return Bad("a row has a malformed field name");
    const int found = columns_.Find(table, name);
    od::value v;
    if (field.value().get(v)) return Bad(fmt::format("field \"{}\" is malformed", name));
    if (found < 0) {
      *any_unknown = true;
      scratch_.assign(name);
      continue;
    }
    const size_t col = static_cast<size_t>(found);
    od::json_type type;
    if (v.type().get(type)) return Bad(fmt::format("field \"{}\" is malformed", name));
    if (spec.columns[col].kind == ValueKind::kBytes && type != od::json_type::string &&
        type != od::json_type::null) {
      return Bad(fmt::format("field \"{}\" of a bytea column must be a base64 string", name));
    }
    switch (type) {
      case od::json_type::null:
        row->SetNull(col);
        break;
      case od::json_type::string: {
        std::string_view s;
        if (v.get_string().get(s)) return Bad(fmt::format("field \"{}\": bad string", name));
        if (spec.columns[col].kind == ValueKind::kBytes) {
          std::string hex;
          if (!Base64ToByteaHex(s, &hex)) {
            return Bad(fmt::format("field \"{}\" of bytea column is not base64", name));
          }
          row->Set(col, hex);
        } else {
          row->Set(col, s);
        }
        break;
      }
      case od::json_type::number: {
        std::string_view tok = Trim(v.raw_json_token());
        if (tok.empty()) return Bad(fmt::format("field \"{}\": bad number", name));
        row->Set(col, tok);
        break;
      }
      case od::json_type::boolean: {
        bool b = false;
        if (v.get_bool().get(b)) return Bad(fmt::format("field \"{}\": bad boolean", name));
        row->Set(col, b ? "true" : "false");
        break;
      }
      case od::json_type::object: {
        od::object o;
        std::string_view raw;
        if (v.get_object().get(o) || o.raw_json().get(raw)) {
          return Bad(fmt::format("field \"{}\": bad object", name));
        }
        row->Set(col, raw);
        break;
      }
      case od::json_type::array: {
        od::array a;
        std::string_view raw;
        if (v.get_array().get(a) || a.raw_json().get(raw)) {
          return Bad(fmt::format("field \"{}\": bad array", name));
        }
        row->Set(col, raw);
        break;
      }
    }
  }
  *out = *row;
  return Status::OK();
}

bool EnvelopeDecoder::Iterate(std::string_view text, od::document* doc) {
  padded_.assign(text);
  padded_.append(simdjson::SIMDJSON_PADDING, '\0');
  return parser_.iterate(padded_.data(), text.size(), padded_.size()).get(*doc) !=
         simdjson::SUCCESS;
}

Status EnvelopeDecoder::ReadSourceField(std::string_view key, od::value value, Change* out,
                                        bool* have_pos, bool* known) {
  *known = true;
  if (key == wire::kPos) {
    DT_RETURN_IF_ERROR(ParsePosition(value, "source.pos", &out->pos));
    *have_pos = true;
  } else if (key == wire::kPrev) {
    DT_RETURN_IF_ERROR(ParsePrev(value, &prev_));
  } else if (key == wire::kName || key == wire::kInstall) {
    std::string_view text;
    if (value.get_string().get(text)) {
      return Bad(fmt::format("\"source.{}\" must be a string", key));
    }
    (key == wire::kName ? tunnel_ : install_).assign(text);
  } else if (key == wire::kTsMs) {
    int64_t ms = 0;
    constexpr int64_t kMaxMs = std::numeric_limits<int64_t>::max() / 1000;
    if (value.get_int64().get(ms) || ms > kMaxMs || ms < -kMaxMs) {
      return Bad("\"source.ts_ms\" must be an integer count of milliseconds");
    }
    out->captured_us = ms * 1000;
  } else {
    *known = false;
  }
  return Status::OK();
}

Status EnvelopeDecoder::Decode(std::string_view value, uint32_t table, Change* out) {
  const TableSpec& spec = (*targets_)[table];
  broadcast_partitions_ = 0;
  prev_.reset();
  schema_columns_.clear();
  tunnel_.clear();
  install_.clear();
  out->packed_rows = 0;
  if (IsChunk(value)) return DecodeChunk(value, table, out);
  if (IsConnectJson(value)) {
    DT_RETURN_IF_ERROR(connect_.ToEnvelope(value, spec, true, &unwrapped_));
    value = unwrapped_;
  }
  od::document doc;
  if (Iterate(value, &doc)) return Bad("not JSON");
  od::object root;
  if (doc.get_object().get(root)) {
    // On-demand parsing is lazy: tell invalid JSON from other JSON values
    // with a full parse (bad messages only, so its cost does not matter).
    simdjson::dom::parser full;
    simdjson::dom::element ignored;
    if (full.parse(padded_.data(), value.size(), false).get(ignored)) return Bad("not JSON");
    return Bad("not a JSON object");
  }

  out->table = table;
  out->key_only = false;
  out->marker = Marker::kNone;
  out->txid = 0;
  out->captured_us = 0;
  bool have_op = false, have_pos = false, have_after = false, have_before = false;
  bool unknown = false;
  // A row's error waits until "source" is read: a message of another tunnel
  // is refused as such, whatever its rows hold.
  Status row_error;
  Row before;
  for (auto field : root) {
    std::string_view key;
    if (field.unescaped_key().get(key)) return Bad("malformed field name");
    od::value v;
    if (field.value().get(v)) return Bad(fmt::format("\"{}\" is malformed", key));
    if (key == wire::kOp) {
      std::string_view op;
      if (v.get_string().get(op) || op.size() != 1)
        return Bad("\"op\" must be a one-letter string");
      switch (op[0]) {
        case 'c':
        case 'u':
        case 'd':
        case 'r':
        case 't':
        case 'm':
          out->op = static_cast<Op>(op[0]);
          break;
        default:
          return Bad(fmt::format("unknown op \"{}\"", op));
      }
      have_op = true;
    } else if (key == wire::kAfter || key == wire::kBefore) {
      bool is_null = false;
      if (v.is_null().get(is_null)) return Bad(fmt::format("\"{}\" is malformed", key));
      if (is_null) continue;
      od::object obj;
      if (v.get_object().get(obj)) return Bad(fmt::format("\"{}\" must be an object or null", key));
      Status st =
          DecodeRow(obj, table, value.size(), key == wire::kAfter ? &out->row : &before, &unknown);
      if (!st.ok()) {
        if (row_error.ok()) row_error = std::move(st);
        continue;
      }
      (key == wire::kAfter ? have_after : have_before) = true;
    } else if (key == wire::kMarker) {
      std::string_view m;
      if (v.get_string().get(m)) return Bad("\"marker\" must be a string");
      if (m == wire::kMarkerSnapshotDone) {
        out->marker = Marker::kSnapshotDone;
      } else if (m == wire::kMarkerSchema) {
        out->marker = Marker::kSchema;
      } else {
        return Bad(fmt::format("unknown marker \"{}\"", m));
      }
    } else if (key == wire::kColumns) {
      od::array arr;
      if (v.get_array().get(arr)) return Bad("\"columns\" must be an array");
      for (auto el : arr) {
        od::object o;
        if (el.get_object().get(o)) return Bad("\"columns\" must hold objects");
        Column col;
        for (auto f : o) {
          std::string_view fk, fv;
          if (f.unescaped_key().get(fk) || f.value().get_string().get(fv)) {
            return Bad("a column needs string \"name\" and \"type\"");
          }
          if (fk == wire::kColumnName) col.name = std::string(fv);
          if (fk == wire::kColumnType) col.type_sql = std::string(fv);
        }
        if (col.name.empty() || col.type_sql.empty())
          return Bad("a column needs \"name\" and \"type\"");
        schema_columns_.push_back(std::move(col));
      }
    } else if (key == wire::kPartitions) {
      int64_t n = 0;
      if (v.get_int64().get(n) || n < 1) return Bad("\"partitions\" must be a positive integer");
      broadcast_partitions_ = static_cast<int>(n);
    } else if (key == wire::kSource) {
      od::object src;
      if (v.get_object().get(src)) return Bad("\"source\" must be an object");
      for (auto sf : src) {
        std::string_view sk;
        if (sf.unescaped_key().get(sk)) return Bad("malformed field name in \"source\"");
        od::value sv;
        if (sf.value().get(sv)) return Bad("malformed \"source\"");
        bool known = false;
        DT_RETURN_IF_ERROR(ReadSourceField(sk, sv, out, &have_pos, &known));
        if (!known && sk == wire::kTxId) {
          int64_t tx = 0;
          bool is_null = false;
          if (sv.is_null().get(is_null)) return Bad("\"source.txId\" is malformed");
          if (!is_null) {
            if (sv.get_int64().get(tx)) return Bad("\"source.txId\" must be an integer or null");
            out->txid = tx;
          }
        }
      }
    }
  }
  if (!install_.empty() && !expect_tunnel_.empty() &&
      (tunnel_ != expect_tunnel_ || install_ != expect_install_)) {
    return Status::BadConfig(fmt::format(
        "a message of tunnel \"{}\" (source installation {}) reached the consumer of tunnel "
        "\"{}\" (source installation {})",
        tunnel_, install_, expect_tunnel_, expect_install_));
  }
  if (!row_error.ok()) return row_error;
  if (!have_op) return Bad("no \"op\"");
  if (!have_pos) return Bad("no \"source.pos\"");
  if (prev_ && out->pos <= *prev_) {  // malformed in the chain (apply/chain.h)
    return Bad(fmt::format("\"source.pos\" {} is not after \"source.prev\" {}",
                           PositionText(out->pos), PositionText(*prev_)));
  }
  switch (out->op) {
    case Op::kInsert:
    case Op::kUpdate:
    case Op::kRead:
      if (!have_after) return Bad("a c/u/r change needs \"after\"");
      break;
    case Op::kDelete:
      if (!have_before) return Bad("a delete needs \"before\"");
      out->row = std::move(before);
      out->key_only = true;
      break;
    case Op::kMarker:
      if (out->marker == Marker::kNone) return Bad("a marker needs \"marker\"");
      if (out->marker == Marker::kSchema && schema_columns_.empty()) {
        return Bad("a schema marker needs \"columns\"");
      }
      out->row.ResetAbsent(0);
      return Status::OK();
    case Op::kTruncate:
      out->row.ResetAbsent(0);
      return Status::OK();
  }
  if (unknown) {
    return Status::Fatal(fmt::format(
        "a change for {} carries column \"{}\", which target table {} does not have; add the "
        "column to the target (or set schema_changes = \"evolve\" for this table) and restart",
        spec.source.ToString(), scratch_, spec.target.ToString()));
  }
  for (size_t k : spec.key) {
    if (!out->row.HasValue(k) && !out->row.IsNull(k)) {
      return Bad(fmt::format("the change lacks key column \"{}\"", spec.columns[k].name));
    }
  }
  return Status::OK();
}

Status EnvelopeDecoder::ParseChunkHeader(std::string_view header, Change* out, int64_t* version,
                                         int64_t* rows, std::vector<std::string>* columns) {
  od::document doc;
  od::object root;
  if (Iterate(header, &doc) || doc.get_object().get(root)) {
    return Bad("a snapshot chunk's header is not a JSON object");
  }
  bool have_pos = false;
  for (auto field : root) {
    std::string_view key;
    if (field.unescaped_key().get(key)) return Bad("malformed field name in a chunk's header");
    od::value v;
    if (field.value().get(v)) return Bad(fmt::format("chunk header: \"{}\" is malformed", key));
    if (key == wire::kChunk) {
      if (v.get_int64().get(*version)) return Bad("chunk header: \"chunk\" must be an integer");
      if (*version != wire::kChunkVersion) {
        return Bad(fmt::format(
            "a snapshot chunk in format version {}, which this consumer does not read (it reads "
            "version {}); run a datatunnel as new as the producer's on the consumer",
            *version, wire::kChunkVersion));
      }
    } else if (key == wire::kOp) {
      std::string_view op;
      if (v.get_string().get(op) || op != "r") return Bad("chunk header: \"op\" must be \"r\"");
    } else if (key == wire::kChunkRows) {
      if (v.get_int64().get(*rows) || *rows < 1) {
        return Bad("chunk header: \"rows\" must be a positive integer");
      }
    } else if (key == wire::kColumns) {
      od::array arr;
      if (v.get_array().get(arr)) return Bad("chunk header: \"columns\" must be an array");
      for (auto el : arr) {
        std::string_view name;
        if (el.get_string().get(name)) return Bad("chunk header: \"columns\" must hold strings");
        columns->emplace_back(name);
      }
    } else if (key == wire::kSource) {
      od::object src;
      if (v.get_object().get(src)) return Bad("chunk header: \"source\" must be an object");
      for (auto sf : src) {
        std::string_view sk;
        od::value sv;
        if (sf.unescaped_key().get(sk) || sf.value().get(sv)) {
          return Bad("chunk header: malformed \"source\"");
        }
        bool known = false;
        DT_RETURN_IF_ERROR(ReadSourceField(sk, sv, out, &have_pos, &known));
      }
    }
  }
  if (*version == 0) return Bad("a snapshot chunk's header lacks \"chunk\"");
  if (!have_pos) return Bad("no \"source.pos\"");
  return Status::OK();
}

Status EnvelopeDecoder::DecodeChunk(std::string_view value, uint32_t table, Change* out) {
  const TableSpec& spec = (*targets_)[table];
  chunk_to_target_.clear();
  chunk_passthrough_ = false;
  out->table = table;
  out->op = Op::kRead;
  out->key_only = false;
  out->marker = Marker::kNone;
  out->txid = 0;
  out->captured_us = 0;
  const size_t nl = value.find('\n');
  int64_t version = 0, rows = 0;
  std::vector<std::string> columns;
  DT_RETURN_IF_ERROR(ParseChunkHeader(value.substr(0, nl), out, &version, &rows, &columns));
  if (nl == std::string_view::npos) return Bad("a snapshot chunk without rows");
  if (!install_.empty() && !expect_tunnel_.empty() &&
      (tunnel_ != expect_tunnel_ || install_ != expect_install_)) {
    return Status::BadConfig(fmt::format(
        "a message of tunnel \"{}\" (source installation {}) reached the consumer of tunnel "
        "\"{}\" (source installation {})",
        tunnel_, install_, expect_tunnel_, expect_install_));
  }
  if (rows < 1) return Bad("chunk header: no \"rows\"");
  if (columns.empty()) return Bad("chunk header: no \"columns\"");
  if (prev_ && out->pos <= *prev_) {
    return Bad(fmt::format("\"source.pos\" {} is not after \"source.prev\" {}",
                           PositionText(out->pos), PositionText(*prev_)));
  }
  if (out->pos.seq - (rows - 1) < Position::kSnapshotSeqBase) {
    return Bad("a snapshot chunk's \"source.pos\" is below its rows' positions");
  }
  const std::string_view text = value.substr(nl + 1);
  DT_RETURN_IF_ERROR(CheckCopyText(text, rows, columns.size()));
  std::vector<bool> mapped(spec.columns.size(), false);
  bool identity = columns.size() == spec.columns.size();
  for (size_t i = 0; i < columns.size(); ++i) {
    const int found = columns_.Find(table, columns[i]);
    if (found < 0) {
      return Status::Fatal(fmt::format(
          "a change for {} carries column \"{}\", which target table {} does not have; add the "
          "column to the target (or set schema_changes = \"evolve\" for this table) and restart",
          spec.source.ToString(), columns[i], spec.target.ToString()));
    }
    if (mapped[static_cast<size_t>(found)]) {
      return Bad(fmt::format("a snapshot chunk names column \"{}\" twice", columns[i]));
    }
    mapped[static_cast<size_t>(found)] = true;
    chunk_to_target_.push_back(found);
    identity = identity && found == static_cast<int>(i);
  }
  for (size_t k : spec.key) {
    if (!mapped[k]) {
      return Bad(fmt::format("the snapshot chunk lacks key column \"{}\"", spec.columns[k].name));
    }
  }
  chunk_passthrough_ = identity && std::none_of(spec.columns.begin(), spec.columns.end(),
                                                [](const Column& c) { return c.generated; });
  out->packed_rows = rows;
  out->row.Assign(std::string(text));
  return Status::OK();
}

Status EnvelopeDecoder::UnpackChunk(const Change& packed, std::vector<Change>* out) const {
  const TableSpec& spec = (*targets_)[packed.table];
  const std::string_view text = packed.row.Get(0);
  std::vector<std::optional<std::string>> fields;
  int64_t seq = packed.pos.seq - (packed.packed_rows - 1);
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    if (!pg::SplitCopyLine(text.substr(at, end - at), &fields) ||
        fields.size() != chunk_to_target_.size()) {
      return Bad("a snapshot chunk's row is malformed");
    }
    Change c;
    c.op = Op::kRead;
    c.table = packed.table;
    c.pos = packed.pos;
    c.pos.seq = seq++;
    c.captured_us = packed.captured_us;
    c.row.ResetAbsent(spec.columns.size());
    for (size_t i = 0; i < fields.size(); ++i) {
      const auto t = static_cast<size_t>(chunk_to_target_[i]);
      if (fields[i]) {
        c.row.Set(t, *fields[i]);
      } else {
        c.row.SetNull(t);
      }
    }
    out->push_back(std::move(c));
    at = end + 1;
  }
  return Status::OK();
}

bool EnvelopeDecoder::ReadChain(std::string_view value, Position* pos,
                                std::optional<Position>* prev) {
  prev->reset();
  // A packed chunk's position is in its header line.
  if (IsChunk(value))
    value = value.substr(0, value.find('\n'));
  else if (IsConnectJson(value)) {
    if (targets_->empty() || !connect_.ToEnvelope(value, (*targets_)[0], false, &unwrapped_).ok()) {
      return false;
    }
    value = unwrapped_;
  }
  od::document doc;
  od::object root;
  if (Iterate(value, &doc) || doc.get_object().get(root)) {
    return false;
  }
  bool have_pos = false;
  for (auto field : root) {
    std::string_view key;
    od::value v;
    if (field.unescaped_key().get(key) || field.value().get(v)) return false;
    if (key != wire::kSource) continue;
    od::object src;
    if (v.get_object().get(src)) return false;
    for (auto sf : src) {
      std::string_view sk;
      od::value sv;
      if (sf.unescaped_key().get(sk) || sf.value().get(sv)) return false;
      if (sk == wire::kPos) {
        if (!ParsePosition(sv, "source.pos", pos).ok()) return false;
        have_pos = true;
      } else if (sk == wire::kPrev) {
        if (!ParsePrev(sv, prev).ok()) return false;
      }
    }
  }
  return have_pos && !(*prev && *pos <= **prev);
}

}  // namespace datatunnel::apply
