#include "core/table.h"

#include <algorithm>

namespace datatunnel {

ValueKind ValueKindForType(std::string_view t) {
  if (t == "int2" || t == "int4" || t == "int8" || t == "oid") return ValueKind::kInteger;
  if (t == "float4" || t == "float8") return ValueKind::kFloat;
  if (t == "numeric") return ValueKind::kNumeric;
  if (t == "bool") return ValueKind::kBool;
  if (t == "bytea") return ValueKind::kBytes;
  if (t == "timestamp" || t == "timestamptz") return ValueKind::kTimestamp;
  return ValueKind::kString;
}

namespace {

// Reads one identifier at `pos`: either "quoted" (with "" escapes) or a bare
// run up to the next '.'. Bare identifiers fold to lower case, as in SQL.
std::optional<std::string> ReadIdent(std::string_view text, size_t& pos) {
  std::string out;
  if (pos < text.size() && text[pos] == '"') {
    ++pos;
    for (;;) {
      if (pos >= text.size()) return std::nullopt;  // unterminated quote
      char c = text[pos++];
      if (c == '"') {
        if (pos < text.size() && text[pos] == '"') {
          out.push_back('"');
          ++pos;
        } else {
          break;
        }
      } else {
        out.push_back(c);
      }
    }
  } else {
    while (pos < text.size() && text[pos] != '.') {
      char c = text[pos++];
      if (c == '"') return std::nullopt;
      out.push_back(static_cast<char>((c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c));
    }
  }
  if (out.empty()) return std::nullopt;
  return out;
}

}  // namespace

std::optional<QualifiedName> QualifiedName::Parse(std::string_view text) {
  size_t pos = 0;
  auto first = ReadIdent(text, pos);
  if (!first) return std::nullopt;
  if (pos == text.size()) return QualifiedName{"public", *first};
  if (text[pos] != '.') return std::nullopt;
  ++pos;
  auto second = ReadIdent(text, pos);
  if (!second || pos != text.size()) return std::nullopt;
  return QualifiedName{*first, *second};
}

std::string QuoteIdent(std::string_view ident) {
  std::string out;
  out.reserve(ident.size() + 2);
  out.push_back('"');
  for (char c : ident) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string QuoteLiteral(std::string_view value) {
  std::string out;
  out.reserve(value.size() + 2);
  out.push_back('\'');
  for (char c : value) {
    if (c == '\'') out.push_back('\'');
    out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

std::string QualifiedName::Quoted() const { return QuoteIdent(schema) + "." + QuoteIdent(name); }

std::string QualifiedName::ToString() const { return schema + "." + name; }

int TableSpec::ColumnIndex(std::string_view name) const {
  for (size_t i = 0; i < columns.size(); ++i) {
    if (columns[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

bool TableSpec::IsKey(size_t column) const {
  return std::find(key.begin(), key.end(), column) != key.end();
}

}  // namespace datatunnel
