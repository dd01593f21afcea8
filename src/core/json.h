// JSON output. Every JSON text datatunnel prints or sends (the envelope,
// `status --json`, `verify --json`, JSON log lines) is written with
// rapidjson's Writer, which escapes strings ('"', '\\' and control
// characters) and formats numbers; nothing is spliced together by hand.
// rapidjson's own Key()/String() take `std::string` and `const char*`;
// these helpers add `std::string_view`.
#pragma once

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <string>
#include <string_view>

namespace datatunnel {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// Writes `s` as a JSON string. Bytes of 0x80 and above pass through as they
// are (text is UTF-8; PostgreSQL names and messages are).
template <typename Writer>
void JsonString(Writer& w, std::string_view s) {
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

// Writes `k` as an object's key.
template <typename Writer>
void JsonKey(Writer& w, std::string_view k) {
  w.Key(k.data(), static_cast<rapidjson::SizeType>(k.size()));
}

// The text written so far into `buf`.
inline std::string JsonText(const rapidjson::StringBuffer& buf) {
  return std::string(buf.GetString(), buf.GetSize());
}

}  // namespace datatunnel
