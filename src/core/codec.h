// Small value codecs shared by publish (encode) and apply (decode).
#pragma once

#include <string>
#include <string_view>

namespace datatunnel {

// PostgreSQL's hex bytea text ("\x0aff") to standard base64; false when the
// input is not hex bytea text.
bool ByteaHexToBase64(std::string_view hex, std::string* out);
// Standard base64 (padding optional) to hex bytea text; false when malformed.
bool Base64ToByteaHex(std::string_view b64, std::string* out);

// timestamp/timestamptz text in ISO style ("2024-01-02 03:04:05.6+00") to
// ISO-8601 ("2024-01-02T03:04:05.6Z"). Values outside that shape (BC dates,
// years past 9999, infinity) are appended unchanged; PostgreSQL reads both.
void AppendIsoTimestamp(std::string_view pg, std::string* out);

}  // namespace datatunnel
