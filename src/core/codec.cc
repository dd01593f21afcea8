#include "core/codec.h"

#include <array>
#include <cstdint>

namespace datatunnel {
namespace {

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int HexVal(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

constexpr std::array<int8_t, 256> MakeB64Table() {
  std::array<int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(kB64[i])] = static_cast<int8_t>(i);
  return t;
}
constexpr auto kB64Val = MakeB64Table();

}  // namespace

bool ByteaHexToBase64(std::string_view hex, std::string* out) {
  if (hex.size() < 2 || hex[0] != '\\' || hex[1] != 'x' || hex.size() % 2 != 0) return false;
  const size_t n = (hex.size() - 2) / 2;
  out->reserve(out->size() + (n + 2) / 3 * 4);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; ++i) {
    int hi = HexVal(hex[2 + 2 * i]), lo = HexVal(hex[3 + 2 * i]);
    if (hi < 0 || lo < 0) return false;
    acc = (acc << 8) | static_cast<uint32_t>(hi << 4 | lo);
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out->push_back(kB64[(acc >> bits) & 63]);
    }
  }
  if (bits > 0) out->push_back(kB64[(acc << (6 - bits)) & 63]);
  while (out->size() % 4 != 0) out->push_back('=');
  return true;
}

bool Base64ToByteaHex(std::string_view b64, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  while (!b64.empty() && b64.back() == '=') b64.remove_suffix(1);
  if (b64.size() % 4 == 1) return false;
  out->reserve(out->size() + 2 + b64.size() * 3 / 2);
  out->append("\\x");
  uint32_t acc = 0;
  int bits = 0;
  for (char c : b64) {
    int v = kB64Val[static_cast<unsigned char>(c)];
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      uint8_t byte = static_cast<uint8_t>((acc >> bits) & 0xff);
      out->push_back(kHex[byte >> 4]);
      out->push_back(kHex[byte & 15]);
    }
  }
  return true;
}

void AppendIsoTimestamp(std::string_view pg, std::string* out) {
  // "YYYY-MM-DD HH:..." with nothing after the offset ("+00"), no " BC".
  bool iso = pg.size() >= 19 && pg[4] == '-' && pg[7] == '-' && pg[10] == ' ' && pg[13] == ':' &&
             pg.back() != 'C';
  if (!iso) {
    out->append(pg);
    return;
  }
  size_t base = out->size();
  out->append(pg);
  (*out)[base + 10] = 'T';
  if (pg.size() >= 3 && pg.substr(pg.size() - 3) == "+00") {
    out->resize(out->size() - 3);
    out->push_back('Z');
  }
}

}  // namespace datatunnel
