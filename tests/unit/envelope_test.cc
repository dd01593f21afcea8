// The envelope: what publish writes, apply reads back exactly; malformed and
// truncated input is refused with kBadData, never a crash.
#include "publish/envelope.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "apply/decoder.h"
#include "core/version.h"
#include "pg/connection.h"

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

// The origin fields are written once per table and reused (envelope.cc,
// WriteOrigin): each message still names its own table, escaped, with the
// fields after them in place, and a table renamed in place is written anew.
TEST(Envelope, OriginFieldsFollowEachMessagesTable) {
  std::vector<TableSpec> specs = {Spec(), Spec()};
  specs[1].source = {"sales", "we\"ird"};
  publish::EnvelopeEncoder enc(&specs, publish::Origin("db1", "tun", "inst"));
  apply::EnvelopeDecoder dec(&specs);
  dec.ExpectOrigin("tun", "inst");
  auto encode = [&](uint32_t table, int64_t seq) {
    Change c;
    c.op = Op::kInsert;
    c.table = table;
    c.pos = {7, 8, seq, 0};
    c.txid = 99;
    c.row.Reset(9);
    c.row.Set(0, std::to_string(seq));
    std::string key, value;
    enc.Encode(c, &key, &value);
    return value;
  };
  const std::string head = std::string("\"source\":{\"version\":\"") + DATATUNNEL_VERSION +
                           "\",\"connector\":\"datatunnel\",\"name\":\"tun\",\"install\":\"inst\","
                           "\"db\":\"db1\",";
  for (int round = 0; round < 2; ++round) {
    const std::string v0 = encode(0, 10 + round), v1 = encode(1, 20 + round);
    EXPECT_NE(v0.find(head + "\"schema\":\"public\",\"table\":\"t\",\"txId\":99,"),
              std::string::npos)
        << v0;
    EXPECT_NE(v1.find(head + "\"schema\":\"sales\",\"table\":\"we\\\"ird\",\"txId\":99,"),
              std::string::npos)
        << v1;
    Change back;
    ASSERT_TRUE(dec.Decode(v1, 1, &back).ok()) << v1;
    EXPECT_EQ(back.pos.seq, 20 + round);
    EXPECT_EQ(back.row.Get(0), std::to_string(20 + round));
  }
  specs[0].source = {"public", "t2"};
  const std::string renamed = encode(0, 30);
  EXPECT_NE(renamed.find("\"schema\":\"public\",\"table\":\"t2\",\"txId\":99,"), std::string::npos)
      << renamed;
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

// Snapshot chunks (issue 16 item 8): the rows of a chunk as COPY text under a
// one-line header, passed through without encoding or decoding any value.

// Rows of Spec()'s columns as COPY text, escaped as the applier's COPY does.
std::string CopyText(const std::vector<std::vector<std::optional<std::string>>>& rows) {
  std::string out;
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) {
      if (i) out.push_back('\t');
      if (r[i]) {
        pg::AppendCopyEscaped(*r[i], &out);
      } else {
        out.append("\\N");
      }
    }
    out.push_back('\n');
  }
  return out;
}

// Hard values: tabs, newlines, backslashes, a literal "\N", NULL against the
// empty string, an array, bytea, JSON, a timestamp.
std::vector<std::vector<std::optional<std::string>>> HardRows() {
  return {
      {"1", "tab\there\nnewline \\ backslash \\N not null \r\x01 \xc3\xa9", "1.50", "NaN", "t",
       "\\x00ff5c09", "2024-02-29 23:59:59.999999+00", "{\"a\": \"\\t\\n\"}",
       "{a,\"b c\",NULL,\"\\\\\"}"},
      {"2", "", std::nullopt, "-Infinity", "f", "\\x", std::nullopt, "null", "{}"},
      {"3", std::nullopt, "0", "1e-300", std::nullopt, std::nullopt, "infinity", "[]", "{\"\"}"},
  };
}

Change PackedChunk(const std::string& text, int64_t rows, int64_t last) {
  Change c;
  c.op = Op::kRead;
  c.pos = {7, 8, Position::kSnapshotSeqBase + last, 0};
  c.captured_us = 1700000000123000;
  c.packed_rows = rows;
  c.row.Assign(text);
  return c;
}

TEST(Chunk, PassesCopyTextThroughAndUnpacksEveryEscape) {
  std::vector<TableSpec> specs = {Spec()};
  publish::EnvelopeEncoder enc(&specs, {"db1", "tun", "inst"});
  apply::EnvelopeDecoder dec(&specs);
  dec.ExpectOrigin("tun", "inst");
  const auto rows = HardRows();
  const std::string text = CopyText(rows);
  const Change c = PackedChunk(text, 3, 9);
  const Position prev{7, 8, 5, 0};
  std::string key, value;
  enc.EncodeKey(c, &key);
  enc.EncodeValue(c, &value, 0, &prev);
  EXPECT_EQ(key, "");  // many keys: a null key, the partition chosen by the sink
  ASSERT_EQ(value.rfind("{\"chunk\":1,\"op\":\"r\",\"rows\":3,\"columns\":[\"id\",\"name\",", 0),
            0u)
      << value;
  const size_t nl = value.find('\n');
  ASSERT_NE(nl, std::string::npos);
  EXPECT_EQ(value.substr(nl + 1), text);  // the rows as they were, byte for byte
  EXPECT_NE(value.find("\"snapshot\":true"), std::string::npos);

  Change back;
  Status st = dec.Decode(value, 0, &back);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(back.op, Op::kRead);
  EXPECT_EQ(back.packed_rows, 3);
  EXPECT_EQ(back.pos, c.pos);
  EXPECT_EQ(back.captured_us, c.captured_us);
  ASSERT_TRUE(dec.prev().has_value());
  EXPECT_EQ(*dec.prev(), prev);
  EXPECT_TRUE(dec.chunk_passthrough());
  EXPECT_EQ(back.row.Get(0), text);

  std::vector<Change> unpacked;
  ASSERT_TRUE(dec.UnpackChunk(back, &unpacked).ok());
  ASSERT_EQ(unpacked.size(), 3u);
  for (size_t r = 0; r < rows.size(); ++r) {
    EXPECT_EQ(unpacked[r].op, Op::kRead);
    EXPECT_EQ(unpacked[r].pos.seq, Position::kSnapshotSeqBase + 7 + static_cast<int64_t>(r));
    for (size_t i = 0; i < rows[r].size(); ++i) {
      if (rows[r][i]) {
        ASSERT_TRUE(unpacked[r].row.HasValue(i)) << r << "," << i;
        EXPECT_EQ(unpacked[r].row.Get(i), *rows[r][i]) << r << "," << i;
      } else {
        EXPECT_TRUE(unpacked[r].row.IsNull(i)) << r << "," << i;
      }
    }
  }

  // A dead letter's place in the chain comes from the header.
  Position pos;
  std::optional<Position> p;
  ASSERT_TRUE(dec.ReadChain(value, &pos, &p));
  EXPECT_EQ(pos, c.pos);
  EXPECT_EQ(p, prev);

  // Another tunnel's chunk is refused as such.
  dec.ExpectOrigin("other", "inst");
  EXPECT_EQ(dec.Decode(value, 0, &back).code(), StatusCode::kBadConfig);
}

TEST(Chunk, MapsColumnsByNameIntoATargetLaidOutDifferently) {
  std::vector<TableSpec> sources = {Spec()};
  std::vector<TableSpec> targets = {Spec()};
  // The target: its own order, one column more (left alone), one generated.
  auto& cols = targets[0].columns;
  std::reverse(cols.begin(), cols.end());
  Column extra;
  extra.name = "extra";
  extra.typname = extra.type_sql = "text";
  cols.push_back(extra);
  targets[0].key = {8};  // "id", now last of the source's nine
  publish::EnvelopeEncoder enc(&sources, "db1");
  apply::EnvelopeDecoder dec(&targets);
  const auto rows = HardRows();
  std::string key, value;
  enc.Encode(PackedChunk(CopyText(rows), 3, 2), &key, &value);
  Change back;
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok());
  EXPECT_FALSE(dec.chunk_passthrough());
  std::vector<Change> unpacked;
  ASSERT_TRUE(dec.UnpackChunk(back, &unpacked).ok());
  ASSERT_EQ(unpacked.size(), 3u);
  EXPECT_EQ(unpacked[0].row.size(), 10u);
  EXPECT_EQ(unpacked[0].row.Get(8), "1");          // id
  EXPECT_EQ(unpacked[0].row.Get(7), *rows[0][1]);  // name
  EXPECT_TRUE(unpacked[1].row.IsNull(6));          // price
  EXPECT_EQ(unpacked[1].row.Get(7), "");           // name: empty, not NULL
  EXPECT_TRUE(unpacked[2].row.IsAbsent(9));        // extra: not carried

  // A column the target lacks stops the consumer (as a row's field does).
  cols.erase(cols.begin() + 1);  // "doc"
  dec.Refresh();
  Status st = dec.Decode(value, 0, &back);
  EXPECT_EQ(st.code(), StatusCode::kFatal) << st.message();
  EXPECT_NE(st.message().find("\"doc\""), std::string::npos) << st.message();
}

TEST(Chunk, RefusesMalformedChunks) {
  std::vector<TableSpec> specs = {Spec()};
  publish::EnvelopeEncoder enc(&specs, "db1");
  apply::EnvelopeDecoder dec(&specs);
  const std::string good_text = CopyText(HardRows());
  std::string key, value;
  enc.Encode(PackedChunk(good_text, 3, 2), &key, &value);
  const std::string header = value.substr(0, value.find('\n') + 1);
  Change back;
  ASSERT_TRUE(dec.Decode(header + good_text, 0, &back).ok());
  auto refused = [&](const std::string& v, const std::string& says) {
    Status st = dec.Decode(v, 0, &back);
    EXPECT_EQ(st.code(), StatusCode::kBadData) << v.substr(0, 200);
    EXPECT_NE(st.message().find(says), std::string::npos) << st.message();
  };
  // Rows: a field too few, a field too many, a row too few, no final
  // newline, a lone backslash at a line's end, COPY's end marker, an escaped
  // tab that is no separator.
  const std::string row9 = "9\ta\t1\t1\tt\t\\\\x\t\\N\tnull\t{}\n";
  refused(header + good_text + "9\ta\n", "has 2 fields, not 9");
  refused(header + good_text.substr(0, good_text.size() - 1) + "\tx\n", "has 10 fields");
  refused(header + good_text.substr(0, good_text.find('\n') + 1),
          "holds 1 rows, its header says 3");
  refused(header + good_text.substr(0, good_text.size() - 1), "must end with a newline");
  refused(header + good_text + "9\ta\\\n", "lone backslash");
  refused(header + good_text + "\\.\n", "end-of-data marker");
  refused(header + good_text + "9\ta\\\tb\t1\t1\tt\t\\N\t\\N\tnull\n", "has 8 fields");
  std::string four;
  enc.Encode(PackedChunk(good_text + row9, 4, 3), &key, &four);
  EXPECT_TRUE(dec.Decode(four, 0, &back).ok());
  refused(header + good_text + row9, "holds 4 rows, its header says 3");
  // Header: no newline, not JSON, a newer format version, no position, no
  // rows, a position below its rows'.
  refused(header.substr(0, header.size() - 1), "without rows");
  refused("{\"chunk\":1,\"op\":\n" + good_text, "");
  std::string v2 = header;
  v2.replace(0, 10, "{\"chunk\":2");
  refused(v2 + good_text, "format version 2");
  std::string nopos = header;
  nopos.replace(nopos.find("\"pos\""), 5, "\"p_s\"");
  refused(nopos + good_text, "source.pos");
  std::string low = header;
  low.replace(low.find("4611686018427387906"), 19, "4611686018427387905");
  refused(low + good_text, "below its rows");
  // The chain of a refused chunk is still read from its header.
  Position pos;
  std::optional<Position> p;
  EXPECT_TRUE(dec.ReadChain(header + "9\ta\n", &pos, &p));
  EXPECT_EQ(pos.seq, Position::kSnapshotSeqBase + 2);
}

// Snapshot rows written one message each (every version before the chunk
// format, and still for tables without a unique key) decode as before.
TEST(Chunk, PerRowSnapshotMessagesStillDecode) {
  std::vector<TableSpec> specs = {Spec()};
  apply::EnvelopeDecoder dec(&specs);
  const std::string old =
      "{\"before\":null,\"after\":{\"id\":5,\"name\":\"a\\tb\",\"price\":null,\"ratio\":1.5,"
      "\"ok\":true,\"blob\":\"AP8=\",\"at\":\"2024-01-01T00:00:00Z\",\"doc\":{\"a\":1},\"tags\":"
      "\"{x}\"},\"op\":\"r\",\"ts_ms\":1,\"source\":{\"version\":\"0.9.0\",\"connector\":"
      "\"datatunnel\",\"name\":\"datatunnel\",\"db\":\"db1\",\"schema\":\"public\",\"table\":"
      "\"t\",\"txId\":null,\"change_id\":null,\"ts_ms\":1,\"snapshot\":true,\"pos\":[7,8,"
      "4611686018427387904,0],\"prev\":null}}";
  Change back;
  Status st = dec.Decode(old, 0, &back);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(back.op, Op::kRead);
  EXPECT_EQ(back.packed_rows, 0);
  EXPECT_EQ(back.row.Get(0), "5");
  EXPECT_EQ(back.row.Get(1), "a\tb");
  EXPECT_EQ(back.row.Get(5), "\\x00ff");
}

}  // namespace
}  // namespace datatunnel
