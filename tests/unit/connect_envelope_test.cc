// kafka.format = "connect-json" (issue 21 item 2): each PostgreSQL type's
// Connect schema and value as Debezium's PostgreSQL connector writes them,
// values a Connect type cannot hold kept exactly in "source.raw", and our own
// decoder reading the messages back (also when a topic mixes both formats).
#include "publish/connect_envelope.h"

#include <gtest/gtest.h>

#include "apply/decoder.h"
#include "publish/envelope.h"

namespace datatunnel {
namespace {

Column Col(std::string name, std::string typname, std::string type_sql = {}) {
  Column c;
  c.name = std::move(name);
  c.typname = std::move(typname);
  c.type_sql = type_sql.empty() ? c.typname : std::move(type_sql);
  c.kind = ValueKindForType(c.typname);
  return c;
}

std::string Schema(std::string typname, std::string type_sql = {}) {
  return publish::ConnectFieldSchema(Col("c", std::move(typname), std::move(type_sql)));
}

std::string Value(std::string typname, std::string type_sql, std::string_view text,
                  bool want_raw = false) {
  bool raw = false;
  std::string v =
      publish::ConnectValue(Col("c", std::move(typname), std::move(type_sql)), text, &raw);
  EXPECT_EQ(raw, want_raw) << text;
  return v;
}

TEST(ConnectEnvelope, SchemasFollowDebeziumsPostgresTypes) {
  EXPECT_EQ(Schema("bool"), R"({"type":"boolean"})");
  EXPECT_EQ(Schema("int2"), R"({"type":"int16"})");
  EXPECT_EQ(Schema("int4"), R"({"type":"int32"})");
  EXPECT_EQ(Schema("int8"), R"({"type":"int64"})");
  EXPECT_EQ(Schema("float4"), R"({"type":"float"})");
  EXPECT_EQ(Schema("float8"), R"({"type":"double"})");
  EXPECT_EQ(Schema("numeric", "numeric(12,2)"),
            R"({"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","version":1,)"
            R"("parameters":{"scale":"2","connect.decimal.precision":"12"}})");
  EXPECT_EQ(Schema("numeric", "numeric(5)"),
            R"({"type":"bytes","name":"org.apache.kafka.connect.data.Decimal","version":1,)"
            R"("parameters":{"scale":"0","connect.decimal.precision":"5"}})");
  EXPECT_EQ(Schema("numeric"),
            R"({"type":"struct","name":"io.debezium.data.VariableScaleDecimal","version":1,)"
            R"("fields":[{"type":"int32","optional":false,"field":"scale"},)"
            R"({"type":"bytes","optional":false,"field":"value"}]})");
  EXPECT_EQ(Schema("date"), R"({"type":"int32","name":"io.debezium.time.Date","version":1})");
  EXPECT_EQ(Schema("time", "time(3) without time zone"),
            R"({"type":"int32","name":"io.debezium.time.Time","version":1})");
  EXPECT_EQ(Schema("time", "time without time zone"),
            R"({"type":"int64","name":"io.debezium.time.MicroTime","version":1})");
  EXPECT_EQ(Schema("timestamp", "timestamp(2) without time zone"),
            R"({"type":"int64","name":"io.debezium.time.Timestamp","version":1})");
  EXPECT_EQ(Schema("timestamp", "timestamp without time zone"),
            R"({"type":"int64","name":"io.debezium.time.MicroTimestamp","version":1})");
  EXPECT_EQ(Schema("timestamptz"),
            R"({"type":"string","name":"io.debezium.time.ZonedTimestamp","version":1})");
  EXPECT_EQ(Schema("bytea"), R"({"type":"bytes"})");
  EXPECT_EQ(Schema("uuid"), R"({"type":"string","name":"io.debezium.data.Uuid","version":1})");
  EXPECT_EQ(Schema("jsonb"), R"({"type":"string","name":"io.debezium.data.Json","version":1})");
  EXPECT_EQ(Schema("json"), R"({"type":"string","name":"io.debezium.data.Json","version":1})");
  EXPECT_EQ(Schema("xml"), R"({"type":"string","name":"io.debezium.data.Xml","version":1})");
  EXPECT_EQ(Schema("_int4", "integer[]"),
            R"({"type":"array","items":{"type":"int32","optional":true}})");
  EXPECT_EQ(Schema("_date", "date[]"),
            R"({"type":"array","items":{"type":"int32","name":"io.debezium.time.Date",)"
            R"("version":1,"optional":true}})");
  for (const char* text_type :
       {"text", "varchar", "interval", "timetz", "inet", "mood", "int4range"}) {
    EXPECT_EQ(Schema(text_type), R"({"type":"string"})") << text_type;
  }
}

TEST(ConnectEnvelope, ValuesFollowDebeziumsEncodings) {
  EXPECT_EQ(Value("bool", "", "t"), "true");
  EXPECT_EQ(Value("int8", "", "-9223372036854775808"), "-9223372036854775808");
  EXPECT_EQ(Value("float8", "", "-1.5e-10"), "-1.5e-10");
  // Decimal: the unscaled value, big-endian two's complement, base64.
  EXPECT_EQ(Value("numeric", "numeric(12,2)", "1.25"), "\"fQ==\"");   // 125 = 0x7d
  EXPECT_EQ(Value("numeric", "numeric(12,2)", "-1.25"), "\"gw==\"");  // -125 = 0x83
  EXPECT_EQ(Value("numeric", "numeric(12,2)", "1.28"), "\"AIA=\"");   // 128 = 0x0080
  EXPECT_EQ(Value("numeric", "numeric(12,2)", "-1.28"), "\"gA==\"");  // -128 = 0x80
  EXPECT_EQ(Value("numeric", "numeric(12,2)", "-1.29"), "\"/38=\"");  // -129 = 0xff7f
  EXPECT_EQ(Value("numeric", "numeric(12,2)", "0.00"), "\"AA==\"");
  EXPECT_EQ(Value("numeric", "numeric", "0.00000000000000000001"),
            R"({"scale":20,"value":"AQ=="})");
  EXPECT_EQ(Value("numeric", "numeric", "-256"), R"({"scale":0,"value":"/wA="})");
  // Dates: days since 1970-01-01, BC too; times and timestamps in ms (p <= 3) or µs.
  EXPECT_EQ(Value("date", "", "1970-01-02"), "1");
  EXPECT_EQ(Value("date", "", "1969-12-31"), "-1");
  EXPECT_EQ(Value("date", "", "2024-02-29"), "19782");
  EXPECT_EQ(Value("date", "", "0001-12-31 BC"), "-719163");
  EXPECT_EQ(Value("time", "time(3) without time zone", "23:59:59.999"), "86399999");
  EXPECT_EQ(Value("time", "time without time zone", "23:59:59.999999"), "86399999999");
  EXPECT_EQ(Value("time", "time without time zone", "24:00:00"), "86400000000");
  EXPECT_EQ(Value("timestamp", "timestamp(3) without time zone", "1969-12-31 23:59:59.5"), "-500");
  EXPECT_EQ(Value("timestamp", "timestamp without time zone", "2024-02-29 23:59:59.999999"),
            "1709251199999999");
  EXPECT_EQ(Value("timestamptz", "", "2024-06-01 06:49:56.789012+00"),
            "\"2024-06-01T06:49:56.789012Z\"");
  EXPECT_EQ(Value("bytea", "", "\\x0001ff00"), "\"AAH/AA==\"");
  EXPECT_EQ(Value("uuid", "", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"");
  EXPECT_EQ(Value("interval", "", "1 year 2 mons 00:00:01"), "\"1 year 2 mons 00:00:01\"");
  EXPECT_EQ(Value("_int4", "integer[]", "{1,NULL,3}"), "[1,null,3]");
  EXPECT_EQ(Value("_text", "text[]", R"({"",NULL,"NULL","a,b","q\"uote"})"),
            R"(["",null,"NULL","a,b","q\"uote"])");
  EXPECT_EQ(Value("_date", "date[]", "{1970-01-02,NULL}"), "[1,null]");
  // What the Connect type cannot hold: null, the text in source.raw.
  EXPECT_EQ(Value("numeric", "numeric(12,2)", "NaN", true), "null");
  EXPECT_EQ(Value("numeric", "numeric", "Infinity", true), "null");
  EXPECT_EQ(Value("float8", "", "NaN", true), "null");
  EXPECT_EQ(Value("float4", "", "-Infinity", true), "null");
  EXPECT_EQ(Value("date", "", "infinity", true), "null");
  EXPECT_EQ(Value("timestamp", "timestamp without time zone", "-infinity", true), "null");
  EXPECT_EQ(Value("_int4", "integer[]", "{{1,2},{3,4}}", true), "null");
  EXPECT_EQ(Value("_int4", "integer[]", "[0:1]={1,2}", true), "null");
  EXPECT_EQ(Value("_float8", "double precision[]", "{1,NaN}", true), "null");
}

TableSpec Spec() {
  TableSpec s;
  s.source = {"public", "t"};
  s.target = s.source;
  s.topic = "dt.public.t";
  s.columns = {Col("id", "int4"),
               Col("n", "numeric", "numeric(12,2)"),
               Col("nv", "numeric"),
               Col("f8", "float8"),
               Col("d", "date"),
               Col("tm3", "time", "time(3) without time zone"),
               Col("ts", "timestamp", "timestamp without time zone"),
               Col("tstz", "timestamptz"),
               Col("by", "bytea"),
               Col("ai", "_int4", "integer[]"),
               Col("iv", "interval"),
               Col("bo", "bool")};
  s.key = {0};
  return s;
}

// What our consumer reads back from a connect-json message, value by value.
TEST(ConnectEnvelope, OurDecoderReadsItBack) {
  std::vector<TableSpec> specs = {Spec()};
  publish::ConnectEncoder enc(&specs, publish::Origin("db1", "t1", "inst"));
  apply::EnvelopeDecoder dec(&specs);
  dec.ExpectOrigin("t1", "inst");
  Change c;
  c.op = Op::kUpdate;
  c.pos = {7, 8, 9, 0};
  c.txid = 42;
  c.row.Reset(12);
  const std::vector<std::string> in = {"5",
                                       "-1234.50",
                                       "NaN",
                                       "Infinity",
                                       "2024-02-29",
                                       "23:59:59.999",
                                       "1950-06-15 01:02:03.000004",
                                       "2024-06-01 06:49:56.789012+00",
                                       "\\xdeadbeef",
                                       "{{1,2},{3,NULL}}",
                                       "1 year 2 mons -00:00:00.000001",
                                       "f"};
  for (size_t i = 0; i < in.size(); ++i) c.row.Set(i, in[i]);
  const Position prev{7, 8, 1, 0};
  std::string key, value;
  enc.EncodeKey(c, &key);
  enc.EncodeValue(c, &value, 0, &prev);
  EXPECT_EQ(
      key.rfind(R"({"schema":{"type":"struct","name":"dt.public.t.Key","optional":false,)", 0), 0u)
      << key;
  EXPECT_NE(key.find(R"("payload":{"id":5}})"), std::string::npos) << key;
  EXPECT_NE(value.find(R"("raw":{"nv":"NaN","f8":"Infinity","ai":"{{1,2},{3,NULL}}"})"),
            std::string::npos)
      << value;
  EXPECT_NE(value.find(R"("name":"dt.public.t.Envelope")"), std::string::npos) << value;
  Change back;
  Status st = dec.Decode(value, 0, &back);
  ASSERT_TRUE(st.ok()) << st.message() << "\n" << value;
  EXPECT_EQ(back.op, Op::kUpdate);
  EXPECT_EQ(back.pos, c.pos);
  EXPECT_EQ(back.txid, 42);
  ASSERT_TRUE(dec.prev().has_value());
  EXPECT_EQ(*dec.prev(), prev);
  const std::vector<std::string> want = {"5",
                                         "-1234.50",
                                         "NaN",
                                         "Infinity",
                                         "2024-02-29",
                                         "23:59:59.999000",
                                         "1950-06-15 01:02:03.000004",
                                         "2024-06-01T06:49:56.789012Z",
                                         "\\xdeadbeef",
                                         "{{1,2},{3,NULL}}",
                                         "1 year 2 mons -00:00:00.000001",
                                         "false"};
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(back.row.HasValue(i)) << specs[0].columns[i].name;
    EXPECT_EQ(back.row.Get(i), want[i]) << specs[0].columns[i].name;
  }
  // The chain of a message the consumer could not apply is still read.
  Position pos;
  std::optional<Position> chain_prev;
  EXPECT_TRUE(dec.ReadChain(value, &pos, &chain_prev));
  EXPECT_EQ(pos, c.pos);
}

// Markers, TRUNCATE and deletes in connect-json, and a topic holding both
// formats (a producer switched): each message is read in its own.
TEST(ConnectEnvelope, ControlMessagesAndMixedFormats) {
  std::vector<TableSpec> specs = {Spec()};
  publish::ConnectEncoder enc(&specs, publish::Origin("db1", "t1", "inst"));
  publish::EnvelopeEncoder native(&specs, publish::Origin("db1", "t1", "inst"));
  apply::EnvelopeDecoder dec(&specs);
  dec.ExpectOrigin("t1", "inst");
  Change m;
  m.op = Op::kMarker;
  m.marker = Marker::kSchema;
  m.pos = {1, 2, 3, 0};
  std::string key, value;
  enc.EncodeKey(m, &key);
  EXPECT_EQ(key, "");
  enc.EncodeValue(m, &value, 3, nullptr);
  Change back;
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok()) << value;
  EXPECT_EQ(back.op, Op::kMarker);
  EXPECT_EQ(back.marker, Marker::kSchema);
  EXPECT_EQ(dec.broadcast_partitions(), 3);
  ASSERT_EQ(dec.schema_columns().size(), specs[0].columns.size());
  EXPECT_EQ(dec.schema_columns()[1].type_sql, "numeric(12,2)");

  Change t;
  t.op = Op::kTruncate;
  t.pos = {1, 2, 4, 0};
  enc.EncodeValue(t, &value, 2, nullptr);
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok()) << value;
  EXPECT_EQ(back.op, Op::kTruncate);
  EXPECT_EQ(dec.broadcast_partitions(), 2);

  Change d;
  d.op = Op::kDelete;
  d.key_only = true;
  d.pos = {1, 2, 5, 0};
  d.row.Reset(12);
  d.row.Set(0, "9");
  native.EncodeValue(d, &value, 0, nullptr);  // the old format, then the new
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok()) << value;
  EXPECT_EQ(back.op, Op::kDelete);
  EXPECT_EQ(back.row.Get(0), "9");
  d.pos = {1, 2, 6, 0};
  d.row.Set(0, "10");
  enc.EncodeValue(d, &value, 0, nullptr);
  ASSERT_TRUE(dec.Decode(value, 0, &back).ok()) << value;
  EXPECT_EQ(back.op, Op::kDelete);
  EXPECT_EQ(back.row.Get(0), "10");
  EXPECT_EQ(back.pos, d.pos);

  // Another tunnel's message is refused as such in this format too.
  publish::ConnectEncoder other(&specs, publish::Origin("db1", "t2", "inst2"));
  other.EncodeValue(d, &value, 0, nullptr);
  EXPECT_EQ(dec.Decode(value, 0, &back).code(), StatusCode::kBadConfig);
}

}  // namespace
}  // namespace datatunnel
