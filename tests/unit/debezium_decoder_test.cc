// apply::DebeziumDecoder: Debezium's PostgreSQL change events, with and
// without schemas, back into changes whose values are PostgreSQL text.
#include "apply/debezium_decoder.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace datatunnel::apply {
namespace {

Column Col(std::string name, std::string typname, std::string type_sql) {
  Column c;
  c.name = std::move(name);
  c.typname = std::move(typname);
  c.type_sql = std::move(type_sql);
  c.kind = ValueKindForType(c.typname);
  return c;
}

std::vector<TableSpec> Specs() {
  TableSpec t;
  t.source = {"public", "t"};
  t.target = {"public", "t"};
  t.columns = {Col("id", "int4", "integer"),
               Col("d", "date", "date"),
               Col("tm", "time", "time without time zone"),
               Col("tm3", "time", "time(3) without time zone"),
               Col("ts", "timestamp", "timestamp without time zone"),
               Col("ts3", "timestamp", "timestamp(3) without time zone"),
               Col("n", "numeric", "numeric(20,2)"),
               Col("nv", "numeric", "numeric"),
               Col("by", "bytea", "bytea"),
               Col("ai", "_int4", "integer[]"),
               Col("at", "_text", "text[]"),
               Col("tx", "text", "text"),
               Col("iv", "interval", "interval"),
               Col("f8", "float8", "double precision")};
  t.key = {0};
  return {t};
}

std::string Get(const Change& c, size_t i) {
  if (c.row.IsAbsent(i)) return "<absent>";
  if (c.row.IsNull(i)) return "<null>";
  return std::string(c.row.Get(i));
}

constexpr const char* kSource = R"("source":{"connector":"postgresql","name":"p","db":"db1",
  "schema":"public","table":"t","txId":77,"lsn":123,"ts_ms":1700000000000})";

TEST(DebeziumDecoderTest, WithoutSchemas) {
  auto specs = Specs();
  DebeziumDecoder d(&specs);
  Change c;
  const std::string value = std::string(R"({"before":null,"after":{"id":1,"d":-25509,
    "tm":86399999999,"tm3":1,"ts":-500000,"ts3":1709251199999,"n":"-1234.50","nv":"1E-20",
    "by":"AAH/AA==","ai":[1,null,3],"at":["",null,"NULL","q\"uote","back\\slash"],
    "tx":"__debezium_unavailable_value","iv":93784500000,"f8":0.1},)") +
                            kSource + R"(,"op":"c","ts_ms":1700000000001})";
  ASSERT_TRUE(d.Decode(R"({"id":1})", value, 0, &c).ok());
  EXPECT_EQ(c.op, Op::kInsert);
  EXPECT_EQ(c.txid, 77);
  EXPECT_EQ(c.captured_us, 1700000000000000);
  EXPECT_EQ(Get(c, 0), "1");
  EXPECT_EQ(Get(c, 1), "1900-02-28");
  EXPECT_EQ(Get(c, 2), "23:59:59.999999");
  EXPECT_EQ(Get(c, 3), "00:00:00.001000");
  EXPECT_EQ(Get(c, 4), "1969-12-31 23:59:59.500000");
  EXPECT_EQ(Get(c, 5), "2024-02-29 23:59:59.999000");
  EXPECT_EQ(Get(c, 6), "-1234.50");
  EXPECT_EQ(Get(c, 7), "1E-20");
  EXPECT_EQ(Get(c, 8), "\\x0001ff00");
  EXPECT_EQ(Get(c, 9), R"({"1",NULL,"3"})");
  EXPECT_EQ(Get(c, 10), R"({"",NULL,"NULL","q\"uote","back\\slash"})");
  EXPECT_EQ(Get(c, 11), "<absent>");  // an unchanged TOASTed value: left alone
  EXPECT_EQ(Get(c, 12), "93784500000 microseconds");
  EXPECT_EQ(Get(c, 13), "0.1");

  // A base64 Decimal cannot be read without its schema (no scale).
  const std::string precise =
      std::string(R"({"before":null,"after":{"id":2,"n":"/2o="},)") + kSource + R"(,"op":"u"})";
  Status st = d.Decode(R"({"id":2})", precise, 0, &c);
  EXPECT_EQ(st.code(), StatusCode::kBadData) << st.message();
  EXPECT_NE(st.message().find("decimal.handling.mode"), std::string::npos) << st.message();
}

TEST(DebeziumDecoderTest, WithSchemas) {
  auto specs = Specs();
  DebeziumDecoder d(&specs);
  Change c;
  const std::string row_schema = R"({"type":"struct","optional":true,"field":"after","fields":[
    {"type":"int32","optional":false,"field":"id"},
    {"type":"int32","optional":true,"name":"io.debezium.time.Date","field":"d"},
    {"type":"int64","optional":true,"name":"io.debezium.time.MicroTime","field":"tm"},
    {"type":"int32","optional":true,"name":"io.debezium.time.Time","field":"tm3"},
    {"type":"int64","optional":true,"name":"io.debezium.time.MicroTimestamp","field":"ts"},
    {"type":"int64","optional":true,"name":"io.debezium.time.Timestamp","field":"ts3"},
    {"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal",
     "parameters":{"scale":"2","connect.decimal.precision":"20"},"field":"n"},
    {"type":"struct","optional":true,"name":"io.debezium.data.VariableScaleDecimal","field":"nv",
     "fields":[{"type":"int32","field":"scale"},{"type":"bytes","field":"value"}]},
    {"type":"bytes","optional":true,"field":"by"},
    {"type":"array","optional":true,"items":{"type":"int32","optional":true},"field":"ai"}]})";
  std::string before_schema = row_schema;
  before_schema.replace(before_schema.find("\"after\""), 7, "\"before\"");
  const std::string value =
      R"({"schema":{"type":"struct","fields":[)" + before_schema + "," + row_schema +
      R"(],"name":"p.public.t.Envelope"},"payload":{"before":null,"after":{"id":1,"d":19782,
      "tm":1,"tm3":86399999,"ts":0,"ts3":-1,"n":"/2o=",
      "nv":{"scale":9,"value":"AY7pD/bDc+DuTj8K0g=="},"by":"","ai":[]},)" +
      kSource + R"(,"op":"r"}})";
  Status st = d.Decode(R"({"schema":{},"payload":{"id":1}})", value, 0, &c);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(c.op, Op::kRead);
  EXPECT_EQ(Get(c, 1), "2024-02-29");
  EXPECT_EQ(Get(c, 2), "00:00:00.000001");
  EXPECT_EQ(Get(c, 3), "23:59:59.999000");
  EXPECT_EQ(Get(c, 4), "1970-01-01 00:00:00.000000");
  EXPECT_EQ(Get(c, 5), "1969-12-31 23:59:59.999000");
  EXPECT_EQ(Get(c, 6), "-1.50");
  EXPECT_EQ(Get(c, 7), "123456789012345678901.234567890");
  EXPECT_EQ(Get(c, 8), "\\x");
  EXPECT_EQ(Get(c, 9), "{}");
  EXPECT_EQ(Get(c, 10), "<absent>");  // not in the message
}

TEST(DebeziumDecoderTest, DeletesTruncatesAndOtherTables) {
  auto specs = Specs();
  DebeziumDecoder d(&specs);
  Change c;
  // REPLICA IDENTITY DEFAULT: "before" holds the key (other columns null).
  std::string del =
      std::string(R"({"before":{"id":5,"tx":null},"after":null,)") + kSource + R"(,"op":"d"})";
  ASSERT_TRUE(d.Decode(R"({"id":5})", del, 0, &c).ok());
  EXPECT_EQ(c.op, Op::kDelete);
  EXPECT_TRUE(c.key_only);
  EXPECT_EQ(Get(c, 0), "5");
  // No "before" (REPLICA IDENTITY NOTHING): the message key has it.
  del = std::string(R"({"before":null,"after":null,)") + kSource + R"(,"op":"d"})";
  ASSERT_TRUE(d.Decode(R"({"schema":{"type":"struct"},"payload":{"id":6}})", del, 0, &c).ok());
  EXPECT_EQ(Get(c, 0), "6");

  const std::string trunc =
      std::string(R"({"before":null,"after":null,)") + kSource + R"(,"op":"t"})";
  ASSERT_TRUE(d.Decode("", trunc, 0, &c).ok());
  EXPECT_EQ(c.op, Op::kTruncate);

  // Another table's events on this topic: stop, apply nothing.
  std::string other = std::string(R"({"after":{"id":1},"source":{"schema":"public",
    "table":"other"},"op":"c"})");
  Status st = d.Decode(R"({"id":1})", other, 0, &c);
  EXPECT_EQ(st.code(), StatusCode::kBadConfig) << st.message();
  EXPECT_EQ(d.source(), "public.other");

  // A column the target lacks stops the consumer (dropping it would lose data).
  std::string extra = std::string(R"({"after":{"id":1,"surprise":2},)") + kSource + R"(,"op":"c"})";
  EXPECT_EQ(d.Decode(R"({"id":1})", extra, 0, &c).code(), StatusCode::kFatal);

  // Not a change event.
  EXPECT_EQ(d.Decode("", "{\"id\":1}", 0, &c).code(), StatusCode::kBadData);
  EXPECT_EQ(d.Decode("", "not json", 0, &c).code(), StatusCode::kBadData);
  std::string keyless = std::string(R"({"after":{"tx":"x"},)") + kSource + R"(,"op":"c"})";
  EXPECT_EQ(d.Decode("", keyless, 0, &c).code(), StatusCode::kBadData);
}

}  // namespace
}  // namespace datatunnel::apply
