// Core types: Status, Position order, Row slots, names, codecs.
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include "core/change.h"
#include "core/clock.h"
#include "core/codec.h"
#include "core/json.h"
#include "core/status.h"
#include "core/table.h"

namespace datatunnel {
namespace {

Result<int> Half(int x) {
  if (x % 2) return Status::BadData("odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  DT_ASSIGN_OR_RETURN(int h, Half(x));
  DT_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(Status, CodesAndContext) {
  EXPECT_TRUE(Status::OK().ok());
  Status s = Status::Retryable("connection lost").WithContext("reading changes");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.IsRetryable());
  EXPECT_EQ(s.message(), "reading changes: connection lost");
  EXPECT_TRUE(Status::InDoubt("commit").IsRetryable());
  EXPECT_FALSE(Status::Fatal("x").IsRetryable());
  EXPECT_EQ(Quarter(8).value(), 2);
  EXPECT_EQ(Quarter(6).status().code(), StatusCode::kBadData);
}

TEST(Backoff, DoublesToTheCapWithJitter) {
  Backoff b(100, 1000);
  const int expect[] = {100, 200, 400, 800, 1000, 1000};
  bool jittered = false;
  for (int base : expect) {
    const int d = b.NextDelayMs();
    EXPECT_GE(d, base - base / 5);
    EXPECT_LE(d, base + base / 5);
    jittered = jittered || d != base;
  }
  EXPECT_TRUE(jittered);
  EXPECT_EQ(b.attempts(), 6);
  b.Reset();
  const int first = b.NextDelayMs();
  EXPECT_GE(first, 80);
  EXPECT_LE(first, 120);
}

TEST(Position, TotalOrder) {
  Position a{1, 5, 100, 0}, b{1, 5, 100, 1}, c{1, 6, 3, 0}, d{2, 0, 0, 0};
  EXPECT_LT(a, b);  // the insert half of a key change comes after its delete
  EXPECT_LT(b, c);  // a later tick sorts later whatever its change_id
  EXPECT_LT(c, d);  // a new installation sorts after everything before
  Position snap{1, 5, Position::kSnapshotSeqBase, 0};
  EXPECT_LT(b, snap);  // snapshot rows of a tick follow its changes
  EXPECT_LT(snap, c);
  EXPECT_EQ(Position({1, 2, 3, 0}).ToString(), "1/2/3.0");
}

TEST(Row, NullValueAbsent) {
  Row r;
  r.Reset(3);
  EXPECT_TRUE(r.IsNull(0));
  r.Set(1, "");
  r.Set(2, "x\ty");
  EXPECT_TRUE(r.HasValue(1));
  EXPECT_EQ(r.Get(1), "");  // empty string is not NULL
  EXPECT_EQ(r.Get(2), "x\ty");
  r.ResetAbsent(2);
  EXPECT_TRUE(r.IsAbsent(0));
  EXPECT_FALSE(r.IsNull(0));
  EXPECT_FALSE(r.HasValue(0));
}

TEST(QualifiedName, Parse) {
  EXPECT_EQ(*QualifiedName::Parse("employees"), (QualifiedName{"public", "employees"}));
  EXPECT_EQ(*QualifiedName::Parse("hr.Employees"), (QualifiedName{"hr", "employees"}));
  EXPECT_EQ(*QualifiedName::Parse(R"("My Schema"."Tab.le""x")"),
            (QualifiedName{"My Schema", "Tab.le\"x"}));
  EXPECT_FALSE(QualifiedName::Parse(""));
  EXPECT_FALSE(QualifiedName::Parse("a.b.c"));
  EXPECT_FALSE(QualifiedName::Parse("\"unterminated"));
  EXPECT_FALSE(QualifiedName::Parse("a."));
}

TEST(Quote, IdentAndLiteral) {
  EXPECT_EQ(QuoteIdent("select"), "\"select\"");
  EXPECT_EQ(QuoteIdent("a\"b"), "\"a\"\"b\"");
  EXPECT_EQ(QuoteLiteral("O'Brien"), "'O''Brien'");
  EXPECT_EQ((QualifiedName{"s p", "t"}).Quoted(), "\"s p\".\"t\"");
}

TEST(Codec, ByteaBase64RoundTrip) {
  for (std::string hex : {"\\x", "\\x00", "\\xff01", "\\x000102", "\\xdeadbeef42"}) {
    std::string b64, back;
    ASSERT_TRUE(ByteaHexToBase64(hex, &b64)) << hex;
    ASSERT_TRUE(Base64ToByteaHex(b64, &back)) << b64;
    EXPECT_EQ(back, hex);
  }
  std::string b64;
  ASSERT_TRUE(ByteaHexToBase64("\\x48656c6c6f", &b64));
  EXPECT_EQ(b64, "SGVsbG8=");
  std::string out;
  EXPECT_FALSE(ByteaHexToBase64("not hex", &out));
  EXPECT_FALSE(ByteaHexToBase64("\\xzz", &out));
  EXPECT_FALSE(Base64ToByteaHex("a!b=", &out));
  EXPECT_FALSE(Base64ToByteaHex("a", &out));
}

TEST(Codec, IsoTimestamps) {
  auto iso = [](std::string_view pg) {
    std::string out;
    AppendIsoTimestamp(pg, &out);
    return out;
  };
  EXPECT_EQ(iso("2024-01-02 03:04:05+00"), "2024-01-02T03:04:05Z");
  EXPECT_EQ(iso("2024-01-02 03:04:05.123456+00"), "2024-01-02T03:04:05.123456Z");
  EXPECT_EQ(iso("2024-01-02 03:04:05"), "2024-01-02T03:04:05");
  EXPECT_EQ(iso("infinity"), "infinity");
  EXPECT_EQ(iso("0044-03-15 12:00:00+00 BC"), "0044-03-15 12:00:00+00 BC");
}

TEST(ValueKind, FromTypeName) {
  EXPECT_EQ(ValueKindForType("int4"), ValueKind::kInteger);
  EXPECT_EQ(ValueKindForType("float8"), ValueKind::kFloat);
  EXPECT_EQ(ValueKindForType("numeric"), ValueKind::kNumeric);
  EXPECT_EQ(ValueKindForType("bool"), ValueKind::kBool);
  EXPECT_EQ(ValueKindForType("bytea"), ValueKind::kBytes);
  EXPECT_EQ(ValueKindForType("timestamptz"), ValueKind::kTimestamp);
  EXPECT_EQ(ValueKindForType("_int4"), ValueKind::kString);  // arrays travel as literals
  EXPECT_EQ(ValueKindForType("date"), ValueKind::kString);
}

// core/json.h: strings and keys of any bytes make valid JSON that reads back
// unchanged.
TEST(Json, StringsAndKeysOfAnyBytes) {
  const std::string odd =
      std::string("\"we\\ird\".\"Tab \"\"q\"\"\" \n\r\t\0\x1f\x7f K\xc3\xa4se", 33);
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  JsonKey(w, std::string_view(odd));
  JsonString(w, std::string_view(odd));
  w.EndObject();
  const std::string text = JsonText(buf);
  EXPECT_EQ(text.find('\n'), std::string::npos) << text;
  rapidjson::Document d;
  d.Parse(text.c_str(), text.size());
  ASSERT_FALSE(d.HasParseError()) << text;
  ASSERT_EQ(d.MemberCount(), 1u);
  const auto& m = *d.MemberBegin();
  EXPECT_EQ(std::string(m.name.GetString(), m.name.GetStringLength()), odd);
  EXPECT_EQ(std::string(m.value.GetString(), m.value.GetStringLength()), odd);
}

}  // namespace
}  // namespace datatunnel
