// The envelope: what publish writes, apply reads back exactly; malformed and
// truncated input is refused with kBadData, never a crash.
#include "publish/envelope.h"

#include <gtest/gtest.h>

#include "apply/decoder.h"

namespace datatunnel {
namespace {

TableSpec Spec() {
  TableSpec s;
  s.source = {"public", "t"};
  s.target = s.source;
  s.topic = "datatunnel.public.t";
  auto col = [](std::string name, std::string typname) {
    Column c;
    c.name = name;
    c.typname = typname;
    c.type_sql = typname;
    c.kind = ValueKindForType(typname);
    return c;
  };
  s.columns = {col("id", "int8"),        col("name", "text"), col("price", "numeric"),
               col("ratio", "float8"),   col("ok", "bool"),   col("blob", "bytea"),
               col("at", "timestamptz"), col("doc", "jsonb"), col("tags", "_text")};
  s.key = {0};
  return s;
}

// Issue 20 item 3: a table without a key has a null Kafka key, and its
// deletes carry the whole old row, which decodes back.
TEST(Envelope, KeylessTableHasANullKeyAndWholeRows) {
  std::vector<TableSpec> specs = {Spec()};
  specs[0].key.clear();
  publish::EnvelopeEncoder enc(&specs, "db1");
  apply::EnvelopeDecoder dec(&specs);
  Change c;
  c.op = Op::kDelete;
  c.pos = {7, 8, 9, 0};
  c.row.Reset(9);
  c.row.Set(0, "1");
  c.row.Set(1, "dup");
  std::string key, value;
  enc.Encode(c, &key, &value);
  EXPECT_EQ(key, "");
  EXPECT_NE(value.find("\"before\":{\"id\":1,\"name\":\"dup\",\"price\":null"), std::string::npos)
      << value;
  Change back;
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok());
  EXPECT_EQ(back.op, Op::kDelete);
  EXPECT_EQ(back.row.Get(1), "dup");
  EXPECT_TRUE(back.row.IsNull(2));
}

TEST(Envelope, RoundTripsEveryKind) {
  std::vector<TableSpec> specs = {Spec()};
  publish::EnvelopeEncoder enc(&specs, "db1");
  apply::EnvelopeDecoder dec(&specs);
  Change c;
  c.op = Op::kUpdate;
  c.pos = {7, 8, 9, 0};
  c.txid = 1234;
  c.captured_us = 1700000000123000;
  c.row.Reset(9);
  c.row.Set(0, "-9223372036854775808");
  c.row.Set(1, "quote \" backslash \\ tab \t newline \n unicode é 日本 \x01");
  c.row.Set(2, "123456789012345678901234567890.000000000000000000001");
  c.row.Set(3, "NaN");
  c.row.Set(4, "t");
  c.row.Set(5, "\\x00ff10");
  c.row.Set(6, "2024-02-29 23:59:59.999999+00");
  c.row.Set(7, "{\"a\": [1, 2.50, null]}");
  c.row.Set(8, "{a,\"b c\",NULL}");
  std::string key, value;
  enc.Encode(c, &key, &value);
  EXPECT_EQ(key, "{\"id\":-9223372036854775808}");
  EXPECT_NE(value.find("\"op\":\"u\""), std::string::npos);
  EXPECT_NE(value.find("\"pos\":[7,8,9,0]"), std::string::npos);
  EXPECT_NE(value.find("\"blob\":\"AP8Q\""), std::string::npos) << value;  // base64
  EXPECT_NE(value.find("\"at\":\"2024-02-29T23:59:59.999999Z\""), std::string::npos);
  EXPECT_NE(value.find("\"ok\":true"), std::string::npos);

  Change back;
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok());
  EXPECT_EQ(back.op, Op::kUpdate);
  EXPECT_EQ(back.pos, c.pos);
  EXPECT_EQ(back.txid, 1234);
  EXPECT_EQ(back.captured_us, 1700000000123000);
  EXPECT_EQ(back.row.Get(0), c.row.Get(0));
  EXPECT_EQ(back.row.Get(1), c.row.Get(1));
  EXPECT_EQ(back.row.Get(2), c.row.Get(2));
  EXPECT_EQ(back.row.Get(3), "NaN");
  EXPECT_EQ(back.row.Get(4), "true");
  EXPECT_EQ(back.row.Get(5), "\\x00ff10");
  EXPECT_EQ(back.row.Get(6), "2024-02-29T23:59:59.999999Z");  // PostgreSQL reads both forms
  EXPECT_EQ(back.row.Get(7), c.row.Get(7));
  EXPECT_EQ(back.row.Get(8), c.row.Get(8));
}

TEST(Envelope, NullsFloatsAndDeletes) {
  std::vector<TableSpec> specs = {Spec()};
  publish::EnvelopeEncoder enc(&specs, "db1");
  apply::EnvelopeDecoder dec(&specs);
  Change c;
  c.op = Op::kInsert;
  c.row.Reset(9);
  c.row.Set(0, "1");
  c.row.Set(1, "");  // empty string, not NULL
  c.row.Set(3, "1e+300");
  std::string key, value;
  enc.Encode(c, &key, &value);
  Change back;
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok()) << value;
  EXPECT_TRUE(back.row.HasValue(1));
  EXPECT_EQ(back.row.Get(1), "");
  EXPECT_TRUE(back.row.IsNull(2));
  EXPECT_EQ(back.row.Get(3), "1e+300");

  Change del;
  del.op = Op::kDelete;
  del.key_only = true;
  del.row.Reset(9);
  del.row.Set(0, "42");
  enc.Encode(del, &key, &value);
  EXPECT_NE(value.find("\"before\":{\"id\":42}"), std::string::npos) << value;
  EXPECT_NE(value.find("\"after\":null"), std::string::npos);
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok());
  EXPECT_EQ(back.op, Op::kDelete);
  EXPECT_EQ(back.row.Get(0), "42");
  EXPECT_TRUE(back.key_only);
}

TEST(Envelope, BroadcastsCarryPartitions) {
  std::vector<TableSpec> specs = {Spec()};
  publish::EnvelopeEncoder enc(&specs, "db1");
  apply::EnvelopeDecoder dec(&specs);
  Change t;
  t.op = Op::kTruncate;
  t.pos = {1, 2, 3, 0};
  std::string key, value;
  enc.Encode(t, &key, &value, 6);
  EXPECT_TRUE(key.empty());
  Change back;
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok()) << value;
  EXPECT_EQ(back.op, Op::kTruncate);
  EXPECT_EQ(dec.broadcast_partitions(), 6);
}

// "source.prev" links a message to the one sent to its partition before it:
// an array like "pos", null for the partition's first message, absent when
// the writer keeps no chain.
TEST(Envelope, PrevRoundTrips) {
  std::vector<TableSpec> specs = {Spec()};
  publish::EnvelopeEncoder enc(&specs, "db1");
  apply::EnvelopeDecoder dec(&specs);
  Change c;
  c.op = Op::kInsert;
  c.pos = {7, 8, 9, 1};
  c.row.Reset(9);
  c.row.Set(0, "1");
  std::string key, value;
  Change back;

  const Position prev{7, 8, 5, 0};
  enc.EncodeKey(c, &key);
  enc.EncodeValue(c, &value, 0, &prev);
  EXPECT_EQ(key, "{\"id\":1}");
  EXPECT_NE(value.find("\"pos\":[7,8,9,1],\"prev\":[7,8,5,0]"), std::string::npos) << value;
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok()) << value;
  ASSERT_TRUE(dec.prev().has_value());
  EXPECT_EQ(*dec.prev(), prev);
  EXPECT_EQ(back.pos, c.pos);

  const Position first{};  // the first message ever sent to the partition
  enc.EncodeValue(c, &value, 0, &first);
  EXPECT_NE(value.find("\"prev\":null"), std::string::npos) << value;
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok()) << value;
  ASSERT_TRUE(dec.prev().has_value());
  EXPECT_EQ(*dec.prev(), Position{});

  enc.Encode(c, &key, &value);  // no chain: no field, and the decoder says so
  EXPECT_EQ(value.find("\"prev\""), std::string::npos) << value;
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok());
  EXPECT_FALSE(dec.prev().has_value());

  // A broadcast copy carries its partition's own prev.
  Change t;
  t.op = Op::kTruncate;
  t.pos = {7, 9, 1, 0};
  enc.EncodeKey(t, &key);
  enc.EncodeValue(t, &value, 4, &prev);
  EXPECT_TRUE(key.empty());
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok()) << value;
  EXPECT_EQ(dec.broadcast_partitions(), 4);
  EXPECT_EQ(*dec.prev(), prev);
}

TEST(Decoder, RefusesMalformedPrev) {
  std::vector<TableSpec> specs = {Spec()};
  apply::EnvelopeDecoder dec(&specs);
  Change c;
  const std::string head = R"({"after":{"id":1},"op":"c","source":{"pos":[1,2,3,0],"prev":)";
  const char* bad[] = {
      "[1,2,3]",        // short
      "[1,2,3,0,0]",    // long
      "[1,2,\"3\",0]",  // not an integer
      "[1,2,3,-1]",     // bad sub-position
      "\"[1,2,2,0]\"",  // a string
      "{}",             // an object
      "[1,2,3,0]",      // pos not after prev: malformed in the chain
      "[1,2,4,0]",      // prev after pos
      "[2,0,0,0]",      // a later epoch
  };
  for (const char* b : bad) {
    const std::string msg = head + b + "}}";
    Status st = dec.Decode(msg, 0, &c);
    EXPECT_EQ(st.code(), StatusCode::kBadData) << msg << " -> " << st.message();
  }
  // Every prefix of a message with prev is refused cleanly too.
  const std::string good = head + "[1,2,2,1]}}";
  ASSERT_TRUE(dec.Decode(good, 0, &c).ok());
  EXPECT_EQ(*dec.prev(), (Position{1, 2, 2, 1}));
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(dec.Decode(good.substr(0, n), 0, &c).ok()) << n;
  }
}

// A message the decoder refuses (here: a bytea value that is not base64)
// still names its place in the partition's chain, so it can be dead-lettered
// without the next message looking like a gap.
TEST(Decoder, ReadsTheChainOfARefusedMessage) {
  std::vector<TableSpec> specs = {Spec()};
  apply::EnvelopeDecoder dec(&specs);
  Change c;
  const std::string bad =
      R"({"after":{"id":1,"blob":"***"},"op":"c","source":{"pos":[1,2,3,0],"prev":[1,2,2,0]}})";
  ASSERT_EQ(dec.Decode(bad, 0, &c).code(), StatusCode::kBadData);
  Position pos;
  std::optional<Position> prev;
  ASSERT_TRUE(dec.ReadChain(bad, &pos, &prev));
  EXPECT_EQ(pos, (Position{1, 2, 3, 0}));
  EXPECT_EQ(prev, (Position{1, 2, 2, 0}));
  ASSERT_TRUE(dec.ReadChain(R"({"source":{"pos":[1,2,3,0],"prev":null}})", &pos, &prev));
  EXPECT_EQ(prev, Position{});
  ASSERT_TRUE(dec.ReadChain(R"({"op":"?","source":{"pos":[1,2,3,0]}})", &pos, &prev));
  EXPECT_FALSE(prev.has_value());
  // Without a readable position, or out of order, it takes no place.
  for (const char* none :
       {"", "not json", "[]", R"({"source":{"prev":[1,2,2,0]}})", R"({"source":{"pos":[1,2,3]}})",
        R"({"source":{"pos":[1,2,3,0],"prev":[1,2,3,0]}})",
        R"({"source":{"pos":[1,2,3,0],"prev":"x"}})"}) {
    EXPECT_FALSE(dec.ReadChain(none, &pos, &prev)) << none;
  }
}

TEST(Decoder, RefusesMalformedInput) {
  std::vector<TableSpec> specs = {Spec()};
  apply::EnvelopeDecoder dec(&specs);
  const std::string good =
      R"({"before":null,"after":{"id":1,"name":"x"},"op":"c","source":{"pos":[1,2,3,0]}})";
  Change c;
  ASSERT_TRUE(dec.Decode(good, 0, &c).ok());
  // Every prefix of a valid message is invalid and must be refused cleanly.
  for (size_t n = 0; n < good.size(); ++n) {
    Status st = dec.Decode(good.substr(0, n), 0, &c);
    EXPECT_FALSE(st.ok()) << n;
  }
  const char* bad[] = {
      "",
      "null",
      "[1,2]",
      R"({"op":"c","source":{"pos":[1,2,3,0]}})",                                // no after
      R"({"after":{"id":1},"source":{"pos":[1,2,3,0]}})",                        // no op
      R"({"after":{"id":1},"op":"x","source":{"pos":[1,2,3,0]}})",               // unknown op
      R"({"after":{"id":1},"op":"c","source":{"pos":[1,2,3]}})",                 // short pos
      R"({"after":{"id":1},"op":"c","source":{"pos":["a",2,3,0]}})",             // bad pos
      R"({"after":{"id":1},"op":"c"})",                                          // no pos
      R"({"after":{"name":"x"},"op":"c","source":{"pos":[1,2,3,0]}})",           // no key
      R"({"after":{"id":1,"blob":"***"},"op":"c","source":{"pos":[1,2,3,0]}})",  // not base64
      R"({"before":5,"op":"d","source":{"pos":[1,2,3,0]}})",
  };
  for (const char* b : bad) {
    Status st = dec.Decode(b, 0, &c);
    EXPECT_EQ(st.code(), StatusCode::kBadData) << b << " -> " << st.message();
  }
  // Found by fuzz/fuzz_envelope: a "ts_ms" whose microseconds overflow int64
  // was multiplied anyway (undefined behaviour); it is refused instead.
  for (const char* ts : {"170001700000000123", "-9223372036854775808", "9223372036854776"}) {
    const std::string msg = std::string(R"({"after":{"id":1},"op":"c","source":{"ts_ms":)") + ts +
                            R"(,"pos":[1,2,3,0]}})";
    Status st = dec.Decode(msg, 0, &c);
    EXPECT_EQ(st.code(), StatusCode::kBadData) << msg << " -> " << st.message();
  }
  ASSERT_TRUE(
      dec.Decode(
             R"({"after":{"id":1},"op":"c","source":{"ts_ms":9223372036854775,"pos":[1,2,3,0]}})",
             0, &c)
          .ok());
  EXPECT_EQ(c.captured_us, 9223372036854775000);
  // A valid change for a column the target lacks stops rather than loses data.
  Status unknown =
      dec.Decode(R"({"after":{"id":1,"newcol":2},"op":"c","source":{"pos":[1,2,3,0]}})", 0, &c);
  EXPECT_EQ(unknown.code(), StatusCode::kFatal);
  EXPECT_NE(unknown.message().find("newcol"), std::string::npos);
}

}  // namespace
}  // namespace datatunnel
