#include "apply/debezium_decoder.h"

#include <fmt/format.h>

#include <cctype>
#include <cstdint>
#include <iterator>
#include <vector>

#include "core/codec.h"

namespace datatunnel::apply {

namespace dom = simdjson::dom;

namespace {

// Debezium's unavailable.value.placeholder (its default), as text and as the
// base64 of its bytes (binary columns).
constexpr std::string_view kUnavailable = "__debezium_unavailable_value";
constexpr std::string_view kUnavailableBase64 = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";

constexpr int64_t kMicrosPerDay = int64_t{86'400'000'000};

Status Bad(std::string_view what) { return Status::BadData(std::string(what)); }

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if (a % b != 0 && ((a < 0) != (b < 0))) --q;
  return q;
}

// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
// civil_from_days); year 0 is 1 BC.
void CivilFromDays(int64_t z, int64_t* y, unsigned* m, unsigned* d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = static_cast<int64_t>(yoe) + era * 400 + (*m <= 2 ? 1 : 0);
}

// "YYYY-MM-DD"; sets *bc for years before 1 AD (PostgreSQL writes " BC" last).
void AppendDate(int64_t days, std::string* out, bool* bc) {
  int64_t y = 0;
  unsigned m = 0, d = 0;
  CivilFromDays(days, &y, &m, &d);
  *bc = y <= 0;
  fmt::format_to(std::back_inserter(*out), "{:04}-{:02}-{:02}", *bc ? 1 - y : y, m, d);
}

// "HH:MM:SS.ffffff" for `us` microseconds (0 to 24:00:00).
void AppendTimeOfDay(int64_t us, std::string* out) {
  fmt::format_to(std::back_inserter(*out), "{:02}:{:02}:{:02}.{:06}", us / 3'600'000'000,
                 us / 60'000'000 % 60, us / 1'000'000 % 60, us % 1'000'000);
}

// The precision in a type's SQL ("time(3) without time zone" -> 3), 6 when
// it has none (PostgreSQL's default for time and timestamp).
int Precision(std::string_view type_sql) {
  const size_t open = type_sql.find('(');
  if (open == std::string_view::npos) return 6;
  int p = 0;
  for (size_t i = open + 1; i < type_sql.size() && std::isdigit(type_sql[i]); ++i) {
    p = p * 10 + (type_sql[i] - '0');
  }
  return p;
}

// How many microseconds a time or timestamp number counts: from its logical
// type when the schema names it, else as time.precision.mode = adaptive
// chooses by the column's precision (milliseconds up to 3 digits).
int64_t ToMicros(int64_t v, const DebeziumDecoder::FieldSchema* fs, std::string_view type_sql) {
  if (fs != nullptr && fs->present && !fs->name.empty()) {
    if (EndsWith(fs->name, "NanoTime") || EndsWith(fs->name, "NanoTimestamp")) {
      return FloorDiv(v, 1000);
    }
    if (EndsWith(fs->name, "MicroTime") || EndsWith(fs->name, "MicroTimestamp")) return v;
    return v * 1000;  // io.debezium.time.Time/Timestamp, Connect's Time/Timestamp
  }
  return Precision(type_sql) <= 3 ? v * 1000 : v;
}

bool Base64Bytes(std::string_view b64, std::string* bytes) {
  std::string hex;
  if (!Base64ToByteaHex(b64, &hex)) return false;
  bytes->clear();
  auto val = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 2; i + 1 < hex.size(); i += 2) {
    bytes->push_back(static_cast<char>(val(hex[i]) << 4 | val(hex[i + 1])));
  }
  return true;
}

// A big-endian two's complement integer (Connect's Decimal) times 10^-scale,
// as decimal text.
void AppendDecimal(std::string bytes, int scale, std::string* out) {
  const bool negative = !bytes.empty() && (static_cast<unsigned char>(bytes[0]) & 0x80) != 0;
  if (negative) {
    for (auto& c : bytes) c = static_cast<char>(~static_cast<unsigned char>(c));
    for (size_t i = bytes.size(); i-- > 0;) {
      auto& b = reinterpret_cast<unsigned char&>(bytes[i]);
      if (++b != 0) break;
    }
  }
  // Base 256 to base 10^9, most significant chunk last.
  std::vector<uint32_t> chunks;
  std::vector<unsigned char> num(bytes.begin(), bytes.end());
  size_t first = 0;
  while (first < num.size()) {
    uint64_t rem = 0;
    for (size_t i = first; i < num.size(); ++i) {
      const uint64_t cur = rem << 8 | num[i];
      num[i] = static_cast<unsigned char>(cur / 1'000'000'000);
      rem = cur % 1'000'000'000;
    }
    chunks.push_back(static_cast<uint32_t>(rem));
    while (first < num.size() && num[first] == 0) ++first;
  }
  std::string digits;
  for (size_t i = chunks.size(); i-- > 0;) {
    digits +=
        i + 1 == chunks.size() ? fmt::format("{}", chunks[i]) : fmt::format("{:09}", chunks[i]);
  }
  if (digits.empty()) digits = "0";
  if (negative && digits != "0") out->push_back('-');
  if (scale <= 0) {
    out->append(digits);
    if (digits != "0") out->append(static_cast<size_t>(-scale), '0');
    return;
  }
  const auto s = static_cast<size_t>(scale);
  if (digits.size() <= s) digits.insert(0, s + 1 - digits.size(), '0');
  out->append(digits, 0, digits.size() - s);
  out->push_back('.');
  out->append(digits, digits.size() - s, s);
}

// Decimal text as decimal.handling.mode = string writes it (and NaN, ±Infinity).
bool IsDecimalText(std::string_view s) {
  if (s == "NaN" || s == "Infinity" || s == "-Infinity") return true;
  size_t i = 0;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
  size_t digits = 0;
  while (i < s.size() && std::isdigit(s[i])) ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && std::isdigit(s[i])) ++i, ++digits;
  }
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    size_t exp = 0;
    while (i < s.size() && std::isdigit(s[i])) ++i, ++exp;
    if (exp == 0) return false;
  }
  return i == s.size();
}

void ParseFieldSchema(dom::element el, DebeziumDecoder::FieldSchema* fs) {
  *fs = DebeziumDecoder::FieldSchema{};
  fs->present = true;
  std::string_view s;
  if (!el["type"].get_string().get(s)) fs->type = s;
  if (!el["name"].get_string().get(s)) fs->name = s;
  if (!el["parameters"]["scale"].get_string().get(s)) {
    int scale = 0;
    bool neg = !s.empty() && s[0] == '-';
    for (char c : s.substr(neg ? 1 : 0)) {
      if (std::isdigit(c)) scale = scale * 10 + (c - '0');
    }
    fs->scale = neg ? -scale : scale;
  }
  dom::element items;
  if (!el["items"].get(items)) {
    fs->items = items;
    fs->has_items = true;
  }
}

Status Convert(dom::element v, std::string_view typname, std::string_view type_sql,
               const DebeziumDecoder::FieldSchema* fs, std::string* out, bool* absent);

// A JSON array as a PostgreSQL array literal, element by element.
Status ConvertArray(dom::array arr, std::string_view elem_typname, std::string_view elem_sql,
                    const DebeziumDecoder::FieldSchema* item_fs, std::string* out) {
  out->push_back('{');
  bool first = true;
  std::string value;
  for (dom::element e : arr) {
    if (!first) out->push_back(',');
    first = false;
    if (e.is_null()) {
      out->append("NULL");
      continue;
    }
    if (e.type() == dom::element_type::ARRAY) {
      dom::array inner;
      if (e.get_array().get(inner)) return Bad("a malformed array");
      DT_RETURN_IF_ERROR(ConvertArray(inner, elem_typname, elem_sql, item_fs, out));
      continue;
    }
    value.clear();
    bool gone = false;
    DT_RETURN_IF_ERROR(Convert(e, elem_typname, elem_sql, item_fs, &value, &gone));
    out->push_back('"');
    for (char c : value) {
      if (c == '"' || c == '\\') out->push_back('\\');
      out->push_back(c);
    }
    out->push_back('"');
  }
  out->push_back('}');
  return Status::OK();
}

// The PostgreSQL text of Debezium value `v` (not null) for a column of type
// `typname` (pg_type.typname) / `type_sql`; *absent for the placeholder of a
// value Debezium could not read.
Status Convert(dom::element v, std::string_view typname, std::string_view type_sql,
               const DebeziumDecoder::FieldSchema* fs, std::string* out, bool* absent) {
  const bool decimal_schema =
      fs != nullptr && fs->present && fs->name == "org.apache.kafka.connect.data.Decimal";
  switch (v.type()) {
    case dom::element_type::STRING: {
      std::string_view s;
      if (v.get_string().get(s)) return Bad("a malformed string");
      if (s == kUnavailable || (typname == "bytea" && s == kUnavailableBase64)) {
        *absent = true;
        return Status::OK();
      }
      if (typname == "bytea") {
        if (!Base64ToByteaHex(s, out)) return Bad("a bytea value that is not base64");
        return Status::OK();
      }
      if (typname == "numeric" || typname == "money") {
        if (decimal_schema) {
          std::string bytes;
          if (!Base64Bytes(s, &bytes)) return Bad("a Decimal that is not base64");
          AppendDecimal(std::move(bytes), fs->scale, out);
          return Status::OK();
        }
        if (!IsDecimalText(s)) {
          return Bad(fmt::format(
              "numeric value \"{}\" is neither decimal text nor, without a schema, readable as "
              "Debezium's base64 Decimal: set decimal.handling.mode = string on the connector, "
              "or value.converter.schemas.enable = true",
              s.substr(0, 40)));
        }
      }
      out->append(s);
      return Status::OK();
    }
    case dom::element_type::INT64:
    case dom::element_type::UINT64: {
      int64_t n = 0;
      if (v.get_int64().get(n)) {  // beyond int64: digits as they are
        uint64_t u = 0;
        if (v.get_uint64().get(u)) return Bad("a malformed number");
        fmt::format_to(std::back_inserter(*out), "{}", u);
        return Status::OK();
      }
      if (typname == "date") {
        bool bc = false;
        AppendDate(n, out, &bc);
        if (bc) out->append(" BC");
        return Status::OK();
      }
      if (typname == "time") {
        AppendTimeOfDay(ToMicros(n, fs, type_sql), out);
        return Status::OK();
      }
      if (typname == "timestamp" || typname == "timestamptz") {
        const int64_t us = ToMicros(n, fs, type_sql);
        const int64_t days = FloorDiv(us, kMicrosPerDay);
        bool bc = false;
        AppendDate(days, out, &bc);
        out->push_back(' ');
        AppendTimeOfDay(us - days * kMicrosPerDay, out);
        if (typname == "timestamptz") out->append("+00");
        if (bc) out->append(" BC");
        return Status::OK();
      }
      if (typname == "interval") {
        fmt::format_to(std::back_inserter(*out), "{} microseconds", n);
        return Status::OK();
      }
      if (typname == "bit" || typname == "varbit") {
        out->append(n != 0 ? "1" : "0");
        return Status::OK();
      }
      fmt::format_to(std::back_inserter(*out), "{}", n);
      return Status::OK();
    }
    case dom::element_type::DOUBLE: {
      double d = 0;
      if (v.get_double().get(d)) return Bad("a malformed number");
      fmt::format_to(std::back_inserter(*out), "{}", d);
      return Status::OK();
    }
    case dom::element_type::BOOL: {
      bool b = false;
      if (v.get_bool().get(b)) return Bad("a malformed boolean");
      if (typname == "bit" || typname == "varbit") {
        out->append(b ? "1" : "0");
      } else {
        out->append(b ? "true" : "false");
      }
      return Status::OK();
    }
    case dom::element_type::OBJECT: {
      // io.debezium.data.VariableScaleDecimal: {"scale": n, "value": base64}.
      int64_t scale = 0;
      std::string_view b64;
      if (!v["scale"].get_int64().get(scale) && !v["value"].get_string().get(b64)) {
        std::string bytes;
        if (!Base64Bytes(b64, &bytes)) return Bad("a VariableScaleDecimal that is not base64");
        AppendDecimal(std::move(bytes), static_cast<int>(scale), out);
        return Status::OK();
      }
      if (typname == "json" || typname == "jsonb") {
        out->append(simdjson::to_string(v));
        return Status::OK();
      }
      return Bad(
          fmt::format("a structured value for a column of type {} is not supported", type_sql));
    }
    case dom::element_type::ARRAY: {
      if (typname.empty() || typname[0] != '_') {
        if (typname == "json" || typname == "jsonb") {
          out->append(simdjson::to_string(v));
          return Status::OK();
        }
        return Bad(fmt::format("an array for a column of type {}", type_sql));
      }
      std::string_view elem_sql = type_sql;
      while (EndsWith(elem_sql, "[]")) elem_sql.remove_suffix(2);
      DebeziumDecoder::FieldSchema item;
      if (fs != nullptr && fs->has_items) ParseFieldSchema(fs->items, &item);
      dom::array arr;
      if (v.get_array().get(arr)) return Bad("a malformed array");
      return ConvertArray(arr, typname.substr(1), elem_sql, item.present ? &item : nullptr, out);
    }
    case dom::element_type::NULL_VALUE:
      break;
  }
  return Bad(fmt::format("a value of an unexpected JSON type for a column of type {}", type_sql));
}

}  // namespace

Status DebeziumValueText(dom::element v, const Column& c, const dom::element* field_schema,
                         std::string* out, bool* absent) {
  DebeziumDecoder::FieldSchema fs;
  if (field_schema != nullptr) ParseFieldSchema(*field_schema, &fs);
  return Convert(v, c.typname, c.type_sql, fs.present ? &fs : nullptr, out, absent);
}

DebeziumDecoder::DebeziumDecoder(const std::vector<TableSpec>* targets) : targets_(targets) {
  Refresh();
}

void DebeziumDecoder::Refresh() { columns_.Build(*targets_); }

Status DebeziumDecoder::DecodeRow(dom::object obj, const dom::element* schema, uint32_t table,
                                  Row* row, bool* any_unknown) {
  const TableSpec& spec = (*targets_)[table];
  row->ResetAbsent(spec.columns.size());
  fields_.assign(spec.columns.size(), FieldSchema{});
  dom::array fields;
  if (schema != nullptr && schema->type() == dom::element_type::OBJECT &&
      !(*schema)["fields"].get_array().get(fields)) {
    for (dom::element f : fields) {
      std::string_view name;
      if (f["field"].get_string().get(name)) continue;
      const int col = columns_.Find(table, name);
      if (col >= 0) ParseFieldSchema(f, &fields_[static_cast<size_t>(col)]);
    }
  }
  for (dom::key_value_pair kv : obj) {
    const int found = columns_.Find(table, kv.key);
    if (found < 0) {
      *any_unknown = true;
      scratch_.assign(kv.key);
      continue;
    }
    const auto col = static_cast<size_t>(found);
    if (kv.value.is_null()) {
      row->SetNull(col);
      continue;
    }
    const Column& c = spec.columns[col];
    value_.clear();
    bool absent = false;
    Status st = Convert(kv.value, c.typname, c.type_sql,
                        fields_[col].present ? &fields_[col] : nullptr, &value_, &absent);
    if (!st.ok()) return Bad(fmt::format("field \"{}\": {}", kv.key, st.message()));
    if (!absent) row->Set(col, value_);
  }
  return Status::OK();
}

Status DebeziumDecoder::Decode(std::string_view key, std::string_view value, uint32_t table,
                               Change* out) {
  const TableSpec& spec = (*targets_)[table];
  source_.clear();
  padded_.assign(value);
  padded_.append(simdjson::SIMDJSON_PADDING, '\0');
  dom::element root;
  if (parser_.parse(padded_.data(), value.size(), false).get(root)) return Bad("not JSON");
  if (root.type() != dom::element_type::OBJECT) return Bad("not a JSON object");
  // With schemas: {"schema": {...}, "payload": {envelope}}.
  dom::element payload = root, schema, row_schema;
  bool has_schema = false, has_row_schema = false;
  dom::element p, s;
  if (!root["payload"].get(p) && !root["schema"].get(s)) {
    payload = p;
    schema = s;
    has_schema = s.type() == dom::element_type::OBJECT;
  }
  dom::object env;
  if (payload.get_object().get(env)) return Bad("the payload is not a JSON object");
  std::string_view op;
  if (env["op"].get_string().get(op) || op.size() != 1) {
    return Bad("no one-letter \"op\": not a Debezium change event");
  }
  out->table = table;
  out->key_only = false;
  out->marker = Marker::kNone;
  out->txid = 0;
  out->captured_us = 0;
  out->packed_rows = 0;
  out->pos = Position{};
  dom::object src;
  if (!env["source"].get_object().get(src)) {
    std::string_view sch, tbl;
    if (!src["schema"].get_string().get(sch) && !src["table"].get_string().get(tbl)) {
      source_ = fmt::format("{}.{}", sch, tbl);
      if (sch != spec.source.schema || tbl != spec.source.name) {
        return Status::BadConfig(
            fmt::format("a change of source table {} reached the consumer of source table {}",
                        source_, spec.source.ToString()));
      }
    }
    int64_t t = 0;
    if (!src["ts_us"].get_int64().get(t)) {
      out->captured_us = t;
    } else if (!src["ts_ms"].get_int64().get(t)) {
      out->captured_us = t * 1000;
    }
    if (!src["txId"].get_int64().get(t)) out->txid = t;
  }
  if (has_schema) {
    dom::array fields;
    if (!schema["fields"].get_array().get(fields)) {
      for (dom::element f : fields) {
        std::string_view name;
        if (!f["field"].get_string().get(name) && (name == "after" || name == "before")) {
          row_schema = f;
          has_row_schema = true;
          break;
        }
      }
    }
  }
  bool unknown = false;
  switch (op[0]) {
    case 'c':
    case 'u':
    case 'r': {
      out->op = static_cast<Op>(op[0]);
      dom::object after;
      if (env["after"].get_object().get(after)) return Bad("a c/u/r event needs \"after\"");
      DT_RETURN_IF_ERROR(
          DecodeRow(after, has_row_schema ? &row_schema : nullptr, table, &out->row, &unknown));
      break;
    }
    case 'd': {
      out->op = Op::kDelete;
      out->key_only = true;
      dom::object before;
      if (!env["before"].get_object().get(before)) {
        DT_RETURN_IF_ERROR(
            DecodeRow(before, has_row_schema ? &row_schema : nullptr, table, &out->row, &unknown));
        break;
      }
      // REPLICA IDENTITY NOTHING: no "before"; the message key has the key.
      key_padded_.assign(key);
      key_padded_.append(simdjson::SIMDJSON_PADDING, '\0');
      dom::element kroot, kpayload, kschema;
      bool has_kschema = false;
      dom::object kobj;
      if (key.empty() || key_parser_.parse(key_padded_.data(), key.size(), false).get(kroot)) {
        return Bad("a delete without \"before\" needs a JSON message key");
      }
      kpayload = kroot;
      dom::element kp, ks;
      if (!kroot["payload"].get(kp) && !kroot["schema"].get(ks)) {
        kpayload = kp;
        kschema = ks;
        has_kschema = true;
      }
      if (kpayload.get_object().get(kobj)) {
        return Bad("a delete without \"before\" needs a JSON object as message key");
      }
      DT_RETURN_IF_ERROR(
          DecodeRow(kobj, has_kschema ? &kschema : nullptr, table, &out->row, &unknown));
      break;
    }
    case 't':
      out->op = Op::kTruncate;
      out->row.ResetAbsent(0);
      return Status::OK();
    default:
      return Bad(
          fmt::format("op \"{}\" is not a row change of Debezium's PostgreSQL connector", op));
  }
  if (unknown) {
    return Status::Fatal(fmt::format(
        "a change for {} carries column \"{}\", which target table {} does not have; add the "
        "column to the target and restart",
        spec.source.ToString(), scratch_, spec.target.ToString()));
  }
  for (size_t k : spec.key) {
    if (!out->row.HasValue(k) && !out->row.IsNull(k)) {
      return Bad(fmt::format("the change lacks key column \"{}\"", spec.columns[k].name));
    }
  }
  return Status::OK();
}

}  // namespace datatunnel::apply
