#include "publish/connect_envelope.h"

#include <cstdint>
#include <optional>

#include "core/clock.h"
#include "core/codec.h"
#include "core/json.h"
#include "core/version.h"
#include "core/wire.h"

namespace datatunnel::publish {
namespace {

using Writer = JsonWriter;

// The precision of "time(3) without time zone", "numeric(12,2)"'s first
// number; `none` when the type has none.
int Precision(std::string_view type_sql, int none) {
  const size_t open = type_sql.find('(');
  if (open == std::string_view::npos) return none;
  int p = 0;
  for (size_t i = open + 1; i < type_sql.size() && type_sql[i] >= '0' && type_sql[i] <= '9'; ++i) {
    p = p * 10 + (type_sql[i] - '0');
  }
  return p;
}

// The scale of "numeric(12,2)"; nullopt for an unconstrained numeric.
std::optional<int> Scale(std::string_view type_sql) {
  if (type_sql.substr(0, 8) != "numeric(") return std::nullopt;
  const size_t comma = type_sql.find(',');
  if (comma == std::string_view::npos) return 0;  // numeric(p): scale 0
  int s = 0;
  bool neg = false;
  size_t i = comma + 1;
  if (i < type_sql.size() && type_sql[i] == '-') neg = true, ++i;
  for (; i < type_sql.size() && type_sql[i] >= '0' && type_sql[i] <= '9'; ++i) {
    s = s * 10 + (type_sql[i] - '0');
  }
  return neg ? -s : s;
}

// A column's or an array element's type: pg_type.typname and format_type().
struct Type {
  std::string_view typname;
  std::string_view type_sql;
};

Type ElementType(Type t) {
  Type e{t.typname.substr(1), t.type_sql};
  while (e.type_sql.size() >= 2 && e.type_sql.substr(e.type_sql.size() - 2) == "[]") {
    e.type_sql.remove_suffix(2);
  }
  return e;
}

bool IsArray(Type t) { return !t.typname.empty() && t.typname[0] == '_'; }

void Field(Writer& w, std::string_view type, std::string_view name) {
  JsonKey(w, "type");
  JsonString(w, type);
  if (!name.empty()) {
    JsonKey(w, "name");
    JsonString(w, name);
    JsonKey(w, "version");
    w.Int(1);
  }
}

// The members of one field's schema object (type, name, parameters, items),
// without "optional" and "field".
void WriteTypeSchema(Writer& w, Type t) {
  const std::string_view n = t.typname;
  if (IsArray(t)) {
    JsonKey(w, "type");
    JsonString(w, "array");
    JsonKey(w, "items");
    w.StartObject();
    WriteTypeSchema(w, ElementType(t));
    JsonKey(w, "optional");
    w.Bool(true);
    w.EndObject();
  } else if (n == "bool") {
    Field(w, "boolean", {});
  } else if (n == "int2") {
    Field(w, "int16", {});
  } else if (n == "int4") {
    Field(w, "int32", {});
  } else if (n == "int8" || n == "oid") {
    Field(w, "int64", {});
  } else if (n == "float4") {
    Field(w, "float", {});
  } else if (n == "float8") {
    Field(w, "double", {});
  } else if (n == "numeric") {
    if (auto scale = Scale(t.type_sql)) {
      Field(w, "bytes", "org.apache.kafka.connect.data.Decimal");
      JsonKey(w, "parameters");
      w.StartObject();
      JsonKey(w, "scale");
      JsonString(w, std::to_string(*scale));
      JsonKey(w, "connect.decimal.precision");
      JsonString(w, std::to_string(Precision(t.type_sql, 0)));
      w.EndObject();
    } else {
      Field(w, "struct", "io.debezium.data.VariableScaleDecimal");
      JsonKey(w, "fields");
      w.StartArray();
      w.StartObject();
      Field(w, "int32", {});
      JsonKey(w, "optional");
      w.Bool(false);
      JsonKey(w, "field");
      JsonString(w, "scale");
      w.EndObject();
      w.StartObject();
      Field(w, "bytes", {});
      JsonKey(w, "optional");
      w.Bool(false);
      JsonKey(w, "field");
      JsonString(w, "value");
      w.EndObject();
      w.EndArray();
    }
  } else if (n == "date") {
    Field(w, "int32", "io.debezium.time.Date");
  } else if (n == "time") {
    if (Precision(t.type_sql, 6) <= 3) {
      Field(w, "int32", "io.debezium.time.Time");
    } else {
      Field(w, "int64", "io.debezium.time.MicroTime");
    }
  } else if (n == "timestamp") {
    if (Precision(t.type_sql, 6) <= 3) {
      Field(w, "int64", "io.debezium.time.Timestamp");
    } else {
      Field(w, "int64", "io.debezium.time.MicroTimestamp");
    }
  } else if (n == "timestamptz") {
    Field(w, "string", "io.debezium.time.ZonedTimestamp");
  } else if (n == "bytea") {
    Field(w, "bytes", {});
  } else if (n == "uuid") {
    Field(w, "string", "io.debezium.data.Uuid");
  } else if (n == "json" || n == "jsonb") {
    Field(w, "string", "io.debezium.data.Json");
  } else if (n == "xml") {
    Field(w, "string", "io.debezium.data.Xml");
  } else {
    Field(w, "string", {});
  }
}

// Days from 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
// days_from_civil); year 0 is 1 BC.
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2 ? 1 : 0;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// Reads an unsigned decimal number at `*i` (at least one digit).
bool Digits(std::string_view s, size_t* i, int64_t* out, size_t max_digits = 12) {
  const size_t start = *i;
  int64_t v = 0;
  while (*i < s.size() && s[*i] >= '0' && s[*i] <= '9' && *i - start < max_digits) {
    v = v * 10 + (s[*i] - '0');
    ++*i;
  }
  *out = v;
  return *i > start;
}

bool Expect(std::string_view s, size_t* i, char c) {
  if (*i >= s.size() || s[*i] != c) return false;
  ++*i;
  return true;
}

// "YYYY-MM-DD" at *i (ISO DateStyle).
bool ParseDate(std::string_view s, size_t* i, int64_t* y, int64_t* m, int64_t* d) {
  return Digits(s, i, y) && Expect(s, i, '-') && Digits(s, i, m, 2) && Expect(s, i, '-') &&
         Digits(s, i, d, 2) && *m >= 1 && *m <= 12 && *d >= 1 && *d <= 31;
}

// "HH:MM:SS[.ffffff]" at *i as microseconds of the day.
bool ParseTime(std::string_view s, size_t* i, int64_t* us) {
  int64_t h = 0, m = 0, sec = 0;
  if (!Digits(s, i, &h, 2) || !Expect(s, i, ':') || !Digits(s, i, &m, 2) || !Expect(s, i, ':') ||
      !Digits(s, i, &sec, 2)) {
    return false;
  }
  int64_t frac = 0;
  if (*i < s.size() && s[*i] == '.') {
    ++*i;
    int n = 0;
    while (*i < s.size() && s[*i] >= '0' && s[*i] <= '9') {
      if (n < 6) frac = frac * 10 + (s[*i] - '0');
      ++n;
      ++*i;
    }
    if (n == 0 || n > 6) return false;
    for (; n < 6; ++n) frac *= 10;
  }
  *us = ((h * 60 + m) * 60 + sec) * 1'000'000 + frac;
  return true;
}

// "YYYY-MM-DD[ HH:MM:SS[.ffffff]][ BC]" as microseconds since the epoch;
// false for what does not have that shape (infinity).
bool DateTimeMicros(std::string_view text, bool with_time, int64_t* us) {
  size_t i = 0;
  int64_t y = 0, m = 0, d = 0, tod = 0;
  if (!ParseDate(text, &i, &y, &m, &d)) return false;
  if (with_time && (!Expect(text, &i, ' ') || !ParseTime(text, &i, &tod))) return false;
  if (text.substr(i) == " BC") {
    y = 1 - y;  // 1 BC is year 0
  } else if (i != text.size()) {
    return false;
  }
  *us = DaysFromCivil(y, static_cast<unsigned>(m), static_cast<unsigned>(d)) * 86'400'000'000 + tod;
  return true;
}

// Decimal text ("-123.45") times 10^scale as a big-endian two's complement
// integer, base64 (Connect's Decimal); false for NaN and ±Infinity or more
// fractional digits than `scale`. scale < 0: the digits of text's scale.
bool DecimalBase64(std::string_view text, int* scale, std::string* out) {
  size_t i = 0;
  const bool negative = !text.empty() && text[0] == '-';
  if (negative || (!text.empty() && text[0] == '+')) ++i;
  std::string digits;
  int frac = -1;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c >= '0' && c <= '9') {
      digits.push_back(c);
      if (frac >= 0) ++frac;
    } else if (c == '.' && frac < 0) {
      frac = 0;
    } else {
      return false;
    }
  }
  if (digits.empty()) return false;
  if (frac < 0) frac = 0;
  if (*scale < 0) *scale = frac;
  if (frac > *scale) return false;
  digits.append(static_cast<size_t>(*scale - frac), '0');
  // Decimal digits to base 256, least significant byte first.
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> num;
  num.reserve(digits.size());
  for (char c : digits) num.push_back(static_cast<uint8_t>(c - '0'));
  size_t first = 0;
  while (first < num.size() && num[first] == 0) ++first;
  while (first < num.size()) {
    unsigned rem = 0;
    for (size_t k = first; k < num.size(); ++k) {
      const unsigned cur = rem * 10 + num[k];
      num[k] = static_cast<uint8_t>(cur / 256);
      rem = cur % 256;
    }
    bytes.push_back(static_cast<uint8_t>(rem));
    while (first < num.size() && num[first] == 0) ++first;
  }
  // Room for the sign bit.
  if (bytes.empty() || (bytes.back() & 0x80) != 0) bytes.push_back(0);
  if (negative) {
    bool carry = true;
    for (auto& b : bytes) {
      b = static_cast<uint8_t>(~b);
      if (carry) {
        b = static_cast<uint8_t>(b + 1);
        carry = b == 0;
      }
    }
    // A negative number whose top byte is 0xff with the next one's sign bit
    // set needs no 0xff in front (minimal two's complement, as BigInteger).
    while (bytes.size() > 1 && bytes.back() == 0xff && (bytes[bytes.size() - 2] & 0x80) != 0) {
      bytes.pop_back();
    }
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex = "\\x";
  for (size_t k = bytes.size(); k-- > 0;) {
    hex.push_back(kHex[bytes[k] >> 4]);
    hex.push_back(kHex[bytes[k] & 15]);
  }
  out->clear();
  return ByteaHexToBase64(hex, out);
}

// The elements of a one-dimensional array's text ("{a,"b c",NULL}"), each
// its text or nullopt for NULL; false for other shapes (nested, bounds).
bool ArrayElements(std::string_view s, std::vector<std::optional<std::string>>* out) {
  out->clear();
  if (s.size() < 2 || s.front() != '{' || s.back() != '}') return false;
  size_t i = 1;
  if (s.size() == 2) return true;
  for (;;) {
    if (i >= s.size() - 1) return false;
    std::string el;
    bool quoted = false;
    if (s[i] == '{') return false;  // multi-dimensional
    if (s[i] == '"') {
      quoted = true;
      ++i;
      for (;; ++i) {
        if (i >= s.size()) return false;
        if (s[i] == '\\') {
          if (++i >= s.size()) return false;
          el.push_back(s[i]);
        } else if (s[i] == '"') {
          ++i;
          break;
        } else {
          el.push_back(s[i]);
        }
      }
    } else {
      while (i < s.size() - 1 && s[i] != ',') el.push_back(s[i++]);
    }
    if (!quoted && el == "NULL") {
      out->emplace_back(std::nullopt);
    } else {
      out->emplace_back(std::move(el));
    }
    if (i == s.size() - 1) return true;
    if (s[i] != ',') return false;
    ++i;
  }
}

// Writes `text` as a value of type `t`; false (nothing written) when the
// type cannot hold it.
bool WriteValue(Writer& w, Type t, std::string_view text, std::string* scratch) {
  const std::string_view n = t.typname;
  if (IsArray(t)) {
    std::vector<std::optional<std::string>> elements;
    if (!ArrayElements(text, &elements)) return false;
    const Type e = ElementType(t);
    // Check every element before writing any.
    rapidjson::StringBuffer part;
    Writer pw(part);
    pw.StartArray();
    for (const auto& el : elements) {
      if (!el) {
        pw.Null();
      } else if (!WriteValue(pw, e, *el, scratch)) {
        return false;
      }
    }
    pw.EndArray();
    w.RawValue(part.GetString(), part.GetSize(), rapidjson::kArrayType);
    return true;
  }
  if (n == "bool") {
    w.Bool(text == "t" || text == "true");
    return true;
  }
  if (n == "int2" || n == "int4" || n == "int8" || n == "oid") {
    w.RawValue(text.data(), text.size(), rapidjson::kNumberType);
    return true;
  }
  if (n == "float4" || n == "float8") {
    if (text == "NaN" || text == "Infinity" || text == "-Infinity") return false;
    w.RawValue(text.data(), text.size(), rapidjson::kNumberType);
    return true;
  }
  if (n == "numeric") {
    const std::optional<int> fixed = Scale(t.type_sql);
    int scale = fixed ? *fixed : -1;
    if (fixed && scale < 0) return false;  // negative scales: digits Connect cannot place
    if (!DecimalBase64(text, &scale, scratch)) return false;
    if (fixed) {
      JsonString(w, *scratch);
    } else {
      w.StartObject();
      JsonKey(w, "scale");
      w.Int(scale);
      JsonKey(w, "value");
      JsonString(w, *scratch);
      w.EndObject();
    }
    return true;
  }
  if (n == "date") {
    int64_t us = 0;
    if (!DateTimeMicros(text, false, &us)) return false;
    w.Int64(us / 86'400'000'000);
    return true;
  }
  if (n == "time") {
    size_t i = 0;
    int64_t us = 0;
    if (!ParseTime(text, &i, &us) || i != text.size()) return false;
    if (Precision(t.type_sql, 6) <= 3) {
      w.Int64(us / 1000);
    } else {
      w.Int64(us);
    }
    return true;
  }
  if (n == "timestamp") {
    int64_t us = 0;
    if (!DateTimeMicros(text, true, &us)) return false;
    w.Int64(Precision(t.type_sql, 6) <= 3 ? us / 1000 : us);
    return true;
  }
  if (n == "timestamptz") {
    scratch->clear();
    AppendIsoTimestamp(text, scratch);
    JsonString(w, *scratch);
    return true;
  }
  if (n == "bytea") {
    scratch->clear();
    if (!ByteaHexToBase64(text, scratch)) return false;
    JsonString(w, *scratch);
    return true;
  }
  JsonString(w, text);
  return true;
}

Type TypeOf(const Column& c) { return Type{c.typname, c.type_sql}; }

void WriteStructFields(Writer& w, const TableSpec& spec, bool key_only) {
  JsonKey(w, "fields");
  w.StartArray();
  for (size_t i = 0; i < spec.columns.size(); ++i) {
    if (key_only && !spec.IsKey(i)) continue;
    w.StartObject();
    WriteTypeSchema(w, TypeOf(spec.columns[i]));
    JsonKey(w, "optional");
    // Every value field may be null: a delete's "before" may hold only the
    // key, and a value a type cannot hold is null (its text in source.raw).
    w.Bool(true);
    JsonKey(w, "field");
    JsonString(w, spec.columns[i].name);
    w.EndObject();
  }
  w.EndArray();
}

// Opens a named struct's schema: {"type": "struct", "name": name, ...
void StartStruct(Writer& w, std::string_view name) {
  w.StartObject();
  JsonKey(w, "type");
  JsonString(w, "struct");
  JsonKey(w, "name");
  JsonString(w, name);
}

void SimpleField(Writer& w, std::string_view type, std::string_view field, bool optional) {
  w.StartObject();
  JsonKey(w, "type");
  JsonString(w, type);
  JsonKey(w, "optional");
  w.Bool(optional);
  JsonKey(w, "field");
  JsonString(w, field);
  w.EndObject();
}

void PositionField(Writer& w, std::string_view field, bool optional) {
  w.StartObject();
  JsonKey(w, "type");
  JsonString(w, "array");
  JsonKey(w, "items");
  w.StartObject();
  JsonKey(w, "type");
  JsonString(w, "int64");
  JsonKey(w, "optional");
  w.Bool(false);
  w.EndObject();
  JsonKey(w, "optional");
  w.Bool(optional);
  JsonKey(w, "field");
  JsonString(w, field);
  w.EndObject();
}

}  // namespace

std::string ConnectFieldSchema(const Column& col) {
  rapidjson::StringBuffer out;
  Writer w(out);
  w.StartObject();
  WriteTypeSchema(w, TypeOf(col));
  w.EndObject();
  return JsonText(out);
}

std::string ConnectValue(const Column& col, std::string_view text, bool* raw) {
  rapidjson::StringBuffer out;
  Writer w(out);
  std::string scratch;
  *raw = !WriteValue(w, TypeOf(col), text, &scratch);
  if (*raw) return "null";
  return JsonText(out);
}

ConnectEncoder::ConnectEncoder(const std::vector<TableSpec>* tables, Origin origin)
    : tables_(tables),
      origin_(std::move(origin)),
      key_schemas_(tables->size()),
      value_schemas_(tables->size()) {}

const std::string& ConnectEncoder::KeySchema(uint32_t table) {
  std::string& s = key_schemas_[table];
  if (s.empty()) {
    const TableSpec& spec = (*tables_)[table];
    rapidjson::StringBuffer out;
    Writer w(out);
    StartStruct(w, spec.topic + ".Key");
    JsonKey(w, "optional");
    w.Bool(false);
    WriteStructFields(w, spec, true);
    w.EndObject();
    s = JsonText(out);
  }
  return s;
}

const std::string& ConnectEncoder::ValueSchema(uint32_t table) {
  std::string& s = value_schemas_[table];
  if (!s.empty()) return s;
  const TableSpec& spec = (*tables_)[table];
  rapidjson::StringBuffer out;
  Writer w(out);
  StartStruct(w, spec.topic + ".Envelope");
  JsonKey(w, "version");
  w.Int(1);
  JsonKey(w, "optional");
  w.Bool(false);
  JsonKey(w, "fields");
  w.StartArray();
  for (std::string_view row : {wire::kBefore, wire::kAfter}) {
    StartStruct(w, spec.topic + ".Value");
    JsonKey(w, "optional");
    w.Bool(true);
    JsonKey(w, "field");
    JsonString(w, row);
    WriteStructFields(w, spec, false);
    w.EndObject();
  }
  // "source": Debezium's fields, then ours.
  StartStruct(w, "io.datatunnel.connector.postgresql.Source");
  JsonKey(w, "optional");
  w.Bool(false);
  JsonKey(w, "field");
  JsonString(w, wire::kSource);
  JsonKey(w, "fields");
  w.StartArray();
  SimpleField(w, "string", wire::kVersion, false);
  SimpleField(w, "string", wire::kConnector, false);
  SimpleField(w, "string", wire::kName, false);
  SimpleField(w, "string", wire::kInstall, true);
  SimpleField(w, "string", wire::kDb, false);
  SimpleField(w, "string", wire::kSchema, false);
  SimpleField(w, "string", wire::kTable, false);
  SimpleField(w, "int64", wire::kTxId, true);
  SimpleField(w, "int64", wire::kChangeId, true);
  SimpleField(w, "int64", wire::kTsMs, false);
  SimpleField(w, "string", wire::kSnapshot, true);
  PositionField(w, wire::kPos, false);
  PositionField(w, wire::kPrev, true);
  w.StartObject();
  JsonKey(w, "type");
  JsonString(w, "map");
  JsonKey(w, "keys");
  w.StartObject();
  JsonKey(w, "type");
  JsonString(w, "string");
  JsonKey(w, "optional");
  w.Bool(false);
  w.EndObject();
  JsonKey(w, "values");
  w.StartObject();
  JsonKey(w, "type");
  JsonString(w, "string");
  JsonKey(w, "optional");
  w.Bool(false);
  w.EndObject();
  JsonKey(w, "optional");
  w.Bool(true);
  JsonKey(w, "field");
  JsonString(w, wire::kRaw);
  w.EndObject();
  w.EndArray();
  w.EndObject();
  SimpleField(w, "string", wire::kOp, false);
  SimpleField(w, "int64", wire::kTsMs, true);
  SimpleField(w, "string", wire::kMarker, true);
  // "columns" of a schema marker: [{"name", "type"}].
  w.StartObject();
  JsonKey(w, "type");
  JsonString(w, "array");
  JsonKey(w, "items");
  w.StartObject();
  JsonKey(w, "type");
  JsonString(w, "struct");
  JsonKey(w, "optional");
  w.Bool(false);
  JsonKey(w, "fields");
  w.StartArray();
  SimpleField(w, "string", wire::kColumnName, false);
  SimpleField(w, "string", wire::kColumnType, false);
  w.EndArray();
  w.EndObject();
  JsonKey(w, "optional");
  w.Bool(true);
  JsonKey(w, "field");
  JsonString(w, wire::kColumns);
  w.EndObject();
  SimpleField(w, "int32", wire::kPartitions, true);
  w.EndArray();
  w.EndObject();
  s = JsonText(out);
  return s;
}

void ConnectEncoder::EncodeKey(const Change& c, std::string* key) {
  const TableSpec& spec = (*tables_)[c.table];
  key->clear();
  if (c.op == Op::kTruncate || c.op == Op::kMarker || spec.key.empty()) return;
  const std::string& schema = KeySchema(c.table);
  buf_.Clear();
  Writer w(buf_);
  w.StartObject();
  JsonKey(w, "schema");
  w.RawValue(schema.data(), schema.size(), rapidjson::kObjectType);
  JsonKey(w, "payload");
  w.StartObject();
  for (size_t i : spec.key) {
    JsonKey(w, spec.columns[i].name);
    if (c.row.IsNull(i) || !WriteValue(w, TypeOf(spec.columns[i]), c.row.Get(i), &scratch_)) {
      w.Null();
    }
  }
  w.EndObject();
  w.EndObject();
  key->assign(buf_.GetString(), buf_.GetSize());
}

void ConnectEncoder::EncodeValue(const Change& c, std::string* value, int partitions,
                                 const Position* prev) {
  const TableSpec& spec = (*tables_)[c.table];
  const std::string& schema = ValueSchema(c.table);
  raw_.clear();
  buf_.Clear();
  Writer w(buf_);
  w.StartObject();
  JsonKey(w, "schema");
  w.RawValue(schema.data(), schema.size(), rapidjson::kObjectType);
  JsonKey(w, "payload");
  w.StartObject();
  auto row = [&](bool key_only) {
    w.StartObject();
    for (size_t i = 0; i < spec.columns.size(); ++i) {
      if (key_only && !spec.IsKey(i)) continue;
      JsonKey(w, spec.columns[i].name);
      if (i >= c.row.size() || c.row.IsNull(i)) {
        w.Null();
      } else if (!WriteValue(w, TypeOf(spec.columns[i]), c.row.Get(i), &scratch_)) {
        w.Null();
        raw_.emplace_back(i, c.row.Get(i));
      }
    }
    w.EndObject();
  };
  JsonKey(w, wire::kBefore);
  if (c.op == Op::kDelete) {
    row(c.key_only);
  } else {
    w.Null();
  }
  JsonKey(w, wire::kAfter);
  if (c.op == Op::kInsert || c.op == Op::kUpdate || c.op == Op::kRead) {
    row(false);
  } else {
    w.Null();
  }
  JsonKey(w, wire::kSource);
  w.StartObject();
  WriteOriginFields(w, origin_, spec);
  const bool snapshot = IsSnapshotMessage(c);
  WriteChangeIds(w, c, snapshot);
  JsonKey(w, wire::kTsMs);
  w.Int64(c.captured_us / 1000);
  JsonKey(w, wire::kSnapshot);
  JsonString(w, snapshot ? "true" : "false");
  WritePosAndPrev(w, c.pos, prev);
  if (!raw_.empty()) {
    JsonKey(w, wire::kRaw);
    w.StartObject();
    for (const auto& [i, text] : raw_) {
      JsonKey(w, spec.columns[i].name);
      JsonString(w, text);
    }
    w.EndObject();
  }
  w.EndObject();
  const char op = static_cast<char>(c.op);
  JsonKey(w, wire::kOp);
  w.String(&op, 1);
  JsonKey(w, wire::kTsMs);
  w.Int64(NowMicros() / 1000);
  WriteMarkerFields(w, c, spec);
  if (partitions > 0) {
    JsonKey(w, wire::kPartitions);
    w.Int(partitions);
  }
  w.EndObject();
  w.EndObject();
  value->assign(buf_.GetString(), buf_.GetSize());
}

}  // namespace datatunnel::publish
