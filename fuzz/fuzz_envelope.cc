// libFuzzer target: the envelope decoder (apply/decoder.h) and the codecs the
// apply side runs on untrusted bytes, fed the same arbitrary input.
//
// Besides "no crash, no sanitizer report", it checks the contracts:
//   - Decode fails only with kBadData (not an envelope) or kFatal (a column
//     the target lacks);
//   - a Decode that succeeds yields, for c/u/r/d, a row as wide as the target
//     table whose key columns are all present (a value or NULL), and for t/m
//     an empty row;
//   - base64 <-> hex bytea and COPY text split <-> escape round-trip.
// A broken contract aborts, so libFuzzer saves the input as a crash.
//
// Run: make fuzz (fuzz/run.sh), or build-fuzz/fuzz/fuzz_envelope <corpus dir>.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apply/decoder.h"
#include "core/change.h"
#include "core/codec.h"
#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel {
namespace {

Column Col(std::string name, std::string typname) {
  Column c;
  c.name = std::move(name);
  c.typname = typname;
  c.type_sql = typname;
  c.kind = ValueKindForType(typname);
  return c;
}

// Table 0: a column of every ValueKind, keyed on (tenant, id).
// Table 1: keyed on (blob, at): a bytea and a timestamp in the key.
std::vector<TableSpec> MakeTargets() {
  TableSpec wide;
  wide.source = {"public", "t"};
  wide.target = wide.source;
  wide.topic = "datatunnel.public.t";
  wide.columns = {Col("tenant", "int4"),   Col("id", "int8"),        Col("name", "text"),
                  Col("price", "numeric"), Col("ratio", "float8"),   Col("ok", "bool"),
                  Col("blob", "bytea"),    Col("at", "timestamptz"), Col("doc", "jsonb"),
                  Col("tags", "_text"),    Col("code", "varchar")};
  wide.key = {0, 1};

  TableSpec bin;
  bin.source = {"s", "bin"};
  bin.target = {"s", "bin_copy"};
  bin.topic = "datatunnel.s.bin";
  bin.columns = {Col("blob", "bytea"), Col("at", "timestamp"), Col("n", "int2"),
                 Col("f", "float4")};
  bin.key = {0, 1};
  return {wide, bin};
}

[[noreturn]] void Fail(const char* what, std::string_view detail) {
  std::fprintf(stderr, "fuzz_envelope: %s: %.*s\n", what, static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

void CheckDecode(apply::EnvelopeDecoder* dec, const std::vector<TableSpec>& targets,
                 std::string_view input) {
  for (uint32_t t = 0; t < targets.size(); ++t) {
    Change c;
    Status st = dec->Decode(input, t, &c);
    if (!st.ok()) {
      if (st.code() != StatusCode::kBadData && st.code() != StatusCode::kFatal) {
        Fail("Decode failed with an unexpected code", st.message());
      }
      if (st.message().empty()) Fail("Decode failed without a message", input);
      continue;
    }
    const TableSpec& spec = targets[t];
    if (c.table != t) Fail("decoded change names the wrong table", input);
    if (c.op == Op::kTruncate || c.op == Op::kMarker) {
      if (c.row.size() != 0) Fail("truncate/marker carries a row", input);
      continue;
    }
    if (c.row.size() != spec.columns.size()) Fail("row width is not the table's", input);
    if ((c.op == Op::kDelete) != c.key_only) Fail("key_only does not match the op", input);
    for (size_t k : spec.key) {
      if (c.row.IsAbsent(k)) Fail("decoded change lacks a key column", input);
    }
    for (size_t i = 0; i < c.row.size(); ++i) {
      if (!c.row.HasValue(i)) continue;
      std::string_view v = c.row.Get(i);  // touch every byte: ASan checks the slot bounds
      size_t sum = 0;
      for (char ch : v) sum += static_cast<unsigned char>(ch);
      (void)sum;
    }
  }
}

void CheckCodecs(std::string_view input) {
  // hex bytea -> base64 -> hex gives back the input, lower-cased.
  std::string b64;
  if (ByteaHexToBase64(input, &b64)) {
    std::string hex;
    if (!Base64ToByteaHex(b64, &hex)) Fail("base64 made from bytea does not decode", input);
    std::string lower(input);
    for (char& ch : lower) {
      if (ch >= 'A' && ch <= 'F') ch = static_cast<char>(ch - 'A' + 'a');
    }
    if (hex != lower) Fail("bytea -> base64 -> bytea changed the value", input);
  }
  // base64 -> hex -> base64 -> hex is stable (base64 may be non-canonical).
  std::string hex;
  if (Base64ToByteaHex(input, &hex)) {
    std::string again, hex2;
    if (!ByteaHexToBase64(hex, &again)) Fail("bytea made from base64 does not encode", input);
    if (!Base64ToByteaHex(again, &hex2) || hex2 != hex) {
      Fail("base64 -> bytea -> base64 changed the value", input);
    }
  }
}

void CheckCopyLine(std::string_view input) {
  std::vector<std::optional<std::string>> fields;
  if (!pg::SplitCopyLine(input, &fields)) return;
  if (fields.empty()) Fail("SplitCopyLine accepted a line with no field", input);
  std::string line;
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) line.push_back('\t');
    if (fields[i]) {
      pg::AppendCopyEscaped(*fields[i], &line);
    } else {
      line += "\\N";
    }
  }
  std::vector<std::optional<std::string>> again;
  if (!pg::SplitCopyLine(line, &again) || again != fields) {
    Fail("COPY split -> escape -> split changed the fields", input);
  }
}

}  // namespace
}  // namespace datatunnel

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace datatunnel;
  static const std::vector<TableSpec>* targets = new std::vector<TableSpec>(MakeTargets());
  static apply::EnvelopeDecoder* decoder = new apply::EnvelopeDecoder(targets);
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  CheckDecode(decoder, *targets, input);
  CheckCodecs(input);
  CheckCopyLine(input);
  return 0;
}
