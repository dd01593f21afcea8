// Configuration: defaults, file, environment and flag overrides, and one
// clear error per kind of mistake.
#include "config/config.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/suggest.h"

namespace datatunnel {
namespace {

std::string WriteFile(const std::string& text) {
  char tmpl[] = "/tmp/datatunnel-config-XXXXXX";
  int fd = mkstemp(tmpl);
  close(fd);
  std::ofstream(tmpl) << text;
  return tmpl;
}

TEST(Config, DefaultsMatchTheDemo) {
  auto c = LoadConfig("", {}, {});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->source.dsn, "postgresql://postgres@127.0.0.1:5433/db1");
  EXPECT_EQ(c->target.dsn, "postgresql://postgres@127.0.0.1:5434/db2");
  EXPECT_TRUE(c->kafka.none());  // no broker: `run` hands over in memory
  ASSERT_EQ(c->tables.size(), 1u);
  EXPECT_EQ(c->tables[0].source.ToString(), "public.employees");
  EXPECT_EQ(c->tables[0].key, std::vector<std::string>{"emp_id"});
  // The tunnel is named after the source database; its topics and group too.
  EXPECT_EQ(c->tunnel.name, "db1");
  EXPECT_EQ(c->tables[0].topic, "datatunnel.db1.public.employees");
  EXPECT_EQ(c->kafka.group_id, "datatunnel.db1");
  // Progress is recorded every 200 ms, not every 20: each record delays the
  // next tick, which under load held back a fifth of the changes (issue 16).
  EXPECT_EQ(c->pipeline.progress_interval_ms, 200);
}

// The default name: the source database, then the config file's stem unless
// it is datatunnel.toml; an explicit name, topic prefix and group are kept.
TEST(Config, TunnelName) {
  EXPECT_EQ(DefaultTunnelName("postgresql://u@h:5432/shop?sslmode=require", "/etc/x/orders.toml"),
            "shop-orders");
  EXPECT_EQ(DefaultTunnelName("postgresql://u@h/shop", "/etc/x/datatunnel.toml"), "shop");
  EXPECT_EQ(DefaultTunnelName("postgresql://u@h/my%20db", ""), "my_db");
  EXPECT_EQ(DefaultTunnelName("host=h dbname='sales eu' user=u", "a.b.toml"), "sales_eu-a_b");
  EXPECT_EQ(DefaultTunnelName("postgresql://u@h/?dbname=x", ""), "x");
  EXPECT_EQ(DefaultTunnelName("postgresql://u@h", ""), "");
  EXPECT_TRUE(ValidTunnelName("eu-orders_2"));
  EXPECT_FALSE(ValidTunnelName("-x"));
  EXPECT_FALSE(ValidTunnelName("a.b"));
  EXPECT_FALSE(ValidTunnelName(std::string(64, 'a')));

  auto c = LoadConfig("", {{"DATATUNNEL_TUNNEL_NAME", "eu"}},
                      {"kafka.topic_prefix=legacy", "kafka.group_id=g"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->tunnel.name, "eu");
  EXPECT_EQ(c->tables[0].topic, "legacy.public.employees");
  EXPECT_EQ(c->kafka.group_id, "g");
  c = LoadConfig("", {}, {"tunnel.name=eu"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->tables[0].topic, "datatunnel.eu.public.employees");
  EXPECT_EQ(c->kafka.group_id, "datatunnel.eu");
  c = LoadConfig("", {}, {"tunnel.name=a b"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("tunnel.name \"a b\" is not a valid tunnel name"),
            std::string::npos)
      << c.status().message();
  c = LoadConfig("", {}, {"source.dsn=host=h user=u"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("set [tunnel] name"), std::string::npos)
      << c.status().message();
}

TEST(Config, FileEnvironmentAndFlags) {
  std::string f = WriteFile(R"(
[source]
dsn = "postgresql://a@h1/db1"
[kafka]
brokers = "k1:9092"
[kafka.properties]
"security.protocol" = "SASL_SSL"
[[tables]]
source = "hr.people"
target = "\"Archive\".\"People\""
key = ["id", "region"]
schema_changes = "evolve"
[[tables]]
source = "public.t2"
[pipeline]
batch_max_changes = 100
min_tick_interval_ms = 5
)");
  auto c = LoadConfig(f, {{"DATATUNNEL_KAFKA_BROKERS", "k2:9092"}},
                      {"target.dsn=postgresql://b@h2/db2", "kafka.properties.sasl.username=u"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->source.dsn, "postgresql://a@h1/db1");
  EXPECT_EQ(c->target.dsn, "postgresql://b@h2/db2");
  EXPECT_EQ(c->kafka.brokers, "k2:9092");  // the environment beats the file
  EXPECT_EQ(c->kafka.properties.at("security.protocol"), "SASL_SSL");
  EXPECT_EQ(c->kafka.properties.at("sasl.username"), "u");
  ASSERT_EQ(c->tables.size(), 2u);
  EXPECT_EQ(c->tables[0].target, (QualifiedName{"Archive", "People"}));
  EXPECT_EQ(c->tables[0].key, (std::vector<std::string>{"id", "region"}));
  EXPECT_EQ(c->tables[0].schema_changes, SchemaChangePolicy::kEvolve);
  EXPECT_EQ(c->tunnel.name, "db1-" + std::filesystem::path(f).stem().string());
  EXPECT_EQ(c->tables[1].topic, "datatunnel." + c->tunnel.name + ".public.t2");
  EXPECT_TRUE(c->tables[1].key.empty());  // the primary key, resolved later
  EXPECT_EQ(c->pipeline.batch_max_changes, 100);
  EXPECT_EQ(c->pipeline.min_tick_interval_ms, 5);
  std::remove(f.c_str());
}

struct BadCase {
  const char* toml;
  const char* expect;  // a fragment of the one-line error
};

class BadConfig : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadConfig, OneClearError) {
  std::string f = WriteFile(GetParam().toml);
  auto c = LoadConfig(f, {}, {});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kBadConfig);
  EXPECT_NE(c.status().message().find(GetParam().expect), std::string::npos)
      << c.status().message();
  EXPECT_EQ(c.status().message().find('\n'), std::string::npos) << "one line";
  std::remove(f.c_str());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadConfig,
    ::testing::Values(
        BadCase{"[source\ndsn = 1", "malformed TOML"},
        BadCase{"[sourec]\ndsn = \"x\"", "unknown section \"sourec\""},
        BadCase{"[source]\ndns = \"x\"", "unknown key \"dns\" in [source]"},
        BadCase{"[[tables]]\ntarget = \"a.b\"", "needs source"},
        BadCase{"[[tables]]\nsource = \"a.b.c\"", "is not a table name"},
        BadCase{"[[tables]]\nsource = \"a\"\nkey = []", "key must be a non-empty list"},
        BadCase{"[[tables]]\nsource = \"a\"\n[[tables]]\nsource = \"a\"", "listed twice"},
        BadCase{"[pipeline]\nbatch_max_changes = 0", "expected a whole number"},
        BadCase{"[pipeline]\non_bad_message = \"ignore\"", "on_bad_message"},
        BadCase{"[pipeline]\nmin_tick_interval_ms = -1", "min_tick_interval_ms"},
        BadCase{"[[tables]]\nsource = \"a\"\nschema_changes = \"maybe\"", "schema_changes"},
        BadCase{"[[tables]]\nsource = \"a\"\ntopic = \"my topic\"", "not a valid Kafka topic name"},
        BadCase{"[[table]]\nsource = \"a\"",
                "unknown section \"table\" (did you mean \"tables\"?)"},
        BadCase{"[kafka]\nbrokerz = \"k\"\n[[tables]]\nsource = \"a\"",
                "unknown key \"brokerz\" in [kafka] (did you mean \"brokers\"?)"},
        BadCase{"[kafka]\nbrokers = \"k\"", "no [[tables]] entry: add one per table to sync"},
        BadCase{"[kafka]\ntopic_prefix = \"a b\"", "kafka.topic_prefix \"a b\" cannot start"},
        // Patterns: no key, no target, exclude and target_schema as documented.
        BadCase{"[[tables]]\nsource = \"public.*\"\nkey = [\"id\"]",
                "key cannot be set with a pattern (source = \"public.*\")"},
        BadCase{"[[tables]]\nsource = \"public.*\"\ntarget = \"x.y\"",
                "target cannot be set with a pattern"},
        BadCase{"[[tables]]\nsource = \"public.t\"\nexclude = [\"u\"]",
                "exclude only goes with a pattern"},
        BadCase{"[[tables]]\nsource = \"public.*\"\nexclude = \"u\"",
                "exclude must be a list of table names or patterns"},
        BadCase{"[[tables]]\nsource = \"public.*\"\nexclude = [\"a.b.c\"]",
                "every exclude entry must be a table name or pattern"},
        BadCase{"[[tables]]\nsource = \"public.*\"\ntarget_schema = \"\"",
                "target_schema must be a schema name"},
        BadCase{"[[tables]]\nsource = \"a\"\ntarget = \"b.a\"\ntarget_schema = \"b\"",
                "not given together with target"},
        BadCase{"[[tables]]\nsource = \"public.*\"\ntopic = \"a b\"",
                "with a pattern it is the prefix of each table's topic"},
        BadCase{"[[tables]]\nsource = \"pub*lic.\"", "is not a table name or pattern"},
        BadCase{"[[tables]]\nsource = \"public.t\"\nauto_add = true",
                "auto_add must be true or false, and only goes with a pattern"},
        BadCase{"[[tables]]\nsource = \"public.*\"\nauto_add = \"maybe\"",
                "auto_add must be true or false"},
        BadCase{"[[tables]]\nsource = \"public.*\"\nexclue = []",
                "unknown key \"exclue\" in [[tables]] #1 (did you mean \"exclude\"?)"}));

// A pattern entry keeps its pattern until the tables are known; then it
// becomes one entry per matching table, explicit entries first and
// winning, with target_schema, the topic prefix and the policy applied.
TEST(Config, PatternsExpandToTables) {
  std::string f = WriteFile(
      "[[tables]]\n"
      "source = \"public.order_*\"\n"
      "exclude = [\"*_old\", \"public.order_tmp?\"]\n"
      "target_schema = \"copy\"\n"
      "topic = \"shop\"\n"
      "schema_changes = \"evolve\"\n"
      "auto_add = true\n"
      "[[tables]]\n"
      "source = \"public.order_lines\"\n"
      "key = [\"id\", \"line\"]\n"
      "[[tables]]\n"
      "source = '\"Sales\".*'\n");
  auto c = LoadConfig(f, {}, {});
  ASSERT_TRUE(c.ok()) << c.status().message();
  ASSERT_TRUE(HasPatterns(*c));
  ASSERT_EQ(c->tables.size(), 3u);
  EXPECT_TRUE(c->tables[0].is_pattern);
  EXPECT_EQ(c->tables[0].pattern.schema, "public");
  EXPECT_EQ(c->tables[0].pattern.name, "order\\_%");
  EXPECT_EQ(c->tables[2].pattern.schema, "Sales");  // quoted: literal, case kept
  EXPECT_TRUE(c->tables[0].auto_add);
  EXPECT_FALSE(c->tables[2].auto_add);
  EXPECT_TRUE(HasAutoAdd(*c));

  const std::vector<QualifiedName> catalog = {
      {"public", "orders"},      {"public", "order_items"}, {"public", "order_lines"},
      {"public", "order_old"},   {"public", "order_tmp1"},  {"public", "order_tmp12"},
      {"public", "orderxnotes"}, {"Sales", "Q1"},           {"sales", "q2"}};
  ASSERT_TRUE(ExpandPatterns(&*c, catalog, "in the test").ok());
  EXPECT_FALSE(HasPatterns(*c));
  std::vector<std::string> names;
  for (const auto& t : c->tables) names.push_back(t.source.ToString());
  EXPECT_EQ(names, (std::vector<std::string>{"public.order_lines", "public.order_items",
                                             "public.order_tmp12", "Sales.Q1"}));
  // The explicit entry keeps its key and default topic; the pattern's
  // tables take its target schema, topic prefix and policy.
  EXPECT_EQ(c->tables[0].key, (std::vector<std::string>{"id", "line"}));
  EXPECT_FALSE(c->tables[0].from_pattern);
  EXPECT_EQ(c->tables[1].target, (QualifiedName{"copy", "order_items"}));
  EXPECT_EQ(c->tables[1].topic, "shop.public.order_items");
  EXPECT_EQ(c->tables[1].schema_changes, SchemaChangePolicy::kEvolve);
  EXPECT_TRUE(c->tables[1].from_pattern);
  EXPECT_EQ(c->tables[3].target, (QualifiedName{"Sales", "Q1"}));
  EXPECT_EQ(c->tables[3].topic, "datatunnel." + c->tunnel.name + ".Sales.Q1");

  // A pattern matching nothing is one clear line naming it.
  c = LoadConfig(f, {}, {});
  ASSERT_TRUE(c.ok());
  Status st = ExpandPatterns(&*c, {{"public", "order_old"}, {"Sales", "Q1"}}, "in the test");
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kBadConfig);
  EXPECT_NE(st.message().find("source = \"public.order_*\" (line "), std::string::npos)
      << st.message();
  EXPECT_NE(st.message().find("matches no table in the test once exclude is applied (1 excluded)"),
            std::string::npos)
      << st.message();
  // ... unless matching nothing is fine (uninstall).
  EXPECT_TRUE(ExpandPatterns(&*c, {{"Sales", "Q1"}}, "in the test", false).ok());
  std::remove(f.c_str());

  // Two patterns sending two tables to one target are refused once expanded.
  f = WriteFile(
      "[[tables]]\nsource = \"a.*\"\ntarget_schema = \"t\"\n"
      "[[tables]]\nsource = \"b.*\"\ntarget_schema = \"t\"\n");
  c = LoadConfig(f, {}, {});
  ASSERT_TRUE(c.ok()) << c.status().message();
  st = ExpandPatterns(&*c, {{"a", "x"}, {"b", "x"}}, "in the test");
  EXPECT_NE(st.message().find("write to the same target t.x"), std::string::npos) << st.message();
  std::remove(f.c_str());
}

TEST(Config, LikeMatch) {
  EXPECT_TRUE(LikeMatch("%", ""));
  EXPECT_TRUE(LikeMatch("a%c", "abbbc"));
  EXPECT_TRUE(LikeMatch("a_c", "abc"));
  EXPECT_FALSE(LikeMatch("a_c", "abbc"));
  EXPECT_TRUE(LikeMatch("a\\_c", "a_c"));
  EXPECT_FALSE(LikeMatch("a\\_c", "abc"));
  EXPECT_TRUE(LikeMatch("%\\%", "50%"));
  EXPECT_FALSE(LikeMatch("abc", "abcd"));
  EXPECT_TRUE(LikeMatch("%b%b%", "abcb"));
}

TEST(Config, TopicPrefixNamesDefaultTopics) {
  std::string f = WriteFile(
      "[kafka]\ntopic_prefix = \"prod-eu\"\n[[tables]]\nsource = \"s.a\"\n[[tables]]\nsource = "
      "\"s.b\"\ntopic = \"own\"\n");
  auto c = LoadConfig(f, {}, {});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->tables[0].topic, "prod-eu.s.a");
  EXPECT_EQ(c->tables[1].topic, "own");
  std::remove(f.c_str());
}

// Whole ticks by default; by key with Debezium's topics, which carry no
// end-of-tick records, where naming "transaction" is one clear error.
TEST(Config, ApplyConsistencyDefaultsToTransactionExceptForDebezium) {
  auto c = LoadConfig("", {}, {});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->pipeline.transactional());
  c = LoadConfig("", {}, {"pipeline.apply_consistency=key"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_FALSE(c->pipeline.transactional());
  c = LoadConfig("", {}, {"kafka.format=debezium", "kafka.topic_prefix=dbserver1"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_FALSE(c->pipeline.transactional());
  c = LoadConfig("", {},
                 {"kafka.format=debezium", "kafka.topic_prefix=dbserver1",
                  "pipeline.apply_consistency=transaction"});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kBadConfig);
  EXPECT_NE(c.status().message().find("set apply_consistency = \"key\""), std::string::npos)
      << c.status().message();
}

// kafka.format = "debezium": the topics are the connector's,
// <topic.prefix>.<schema>.<table>, so the prefix must be given.
TEST(Config, DebeziumFormatNeedsTheConnectorsPrefix) {
  auto c = LoadConfig("", {}, {"kafka.format=debezium", "kafka.topic_prefix=dbserver1"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->kafka.debezium());
  EXPECT_EQ(c->tables[0].topic, "dbserver1.public.employees");
  c = LoadConfig("", {}, {"kafka.format=debezium"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("topic.prefix"), std::string::npos) << c.status().message();
  c = LoadConfig("", {}, {"kafka.format=avro"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("\"debezium\""), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("\"connect-json\""), std::string::npos)
      << c.status().message();
  c = LoadConfig("", {}, {});
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->kafka.debezium());
  EXPECT_FALSE(c->kafka.connect_json());
  // connect-json: our own topics in Kafka Connect's form, the default prefix.
  c = LoadConfig("", {}, {"kafka.format=connect-json"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->kafka.connect_json());
  EXPECT_FALSE(c->kafka.debezium());
}

// kafka.snapshot_chunks: snapshot rows as COPY text chunks (default) or one
// envelope per row (issue 16 item 8).
TEST(Config, SnapshotChunksAreCopyOrRows) {
  auto c = LoadConfig("", {}, {});
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->kafka.copy_chunks);
  c = LoadConfig("", {}, {"kafka.snapshot_chunks=rows"});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_FALSE(c->kafka.copy_chunks);
  c = LoadConfig("", {}, {"kafka.snapshot_chunks=json"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("\"copy\" or \"rows\""), std::string::npos)
      << c.status().message();
}

TEST(Config, MisspeltNamesGetAHint) {
  EXPECT_EQ(DidYouMean("stauts", {"status", "snapshot", "run"}), " (did you mean \"status\"?)");
  EXPECT_EQ(DidYouMean("xyz", {"status", "snapshot", "run"}), "");
  EXPECT_EQ(ClosestMatch("table", {"source", "target", "tables"}), "tables");
  auto o = LoadConfig("", {}, {"kafka.brokerz=x"});
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("(did you mean \"kafka.brokers\"?)"), std::string::npos)
      << o.status().message();
  // An unknown DATATUNNEL_* variable is a warning, not silence.
  auto e = LoadConfig("", {{"DATATUNNEL_KAFKA_BROKER", "k:9092"}, {"DATATUNNEL_BIN", "x"}}, {});
  ASSERT_TRUE(e.ok()) << e.status().message();
  ASSERT_EQ(e->warnings.size(), 1u);
  EXPECT_NE(e->warnings[0].find("DATATUNNEL_KAFKA_BROKER is not a setting and is ignored (did you "
                                "mean \"DATATUNNEL_KAFKA_BROKERS\"?)"),
            std::string::npos)
      << e->warnings[0];
}

TEST(Config, DefaultTopicIsAValidKafkaName) {
  std::string f = WriteFile("[[tables]]\nsource = '\"My Schema\".\"Order Items\"'\n");
  auto c = LoadConfig(f, {}, {});
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->tables[0].topic, "datatunnel." + c->tunnel.name + ".My_Schema.Order_Items");
  std::remove(f.c_str());
}

TEST(Config, MissingFileAndBadOverride) {
  auto c = LoadConfig("/nonexistent/datatunnel.toml", {}, {});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("not found"), std::string::npos);
  auto o = LoadConfig("", {}, {"nonsense"});
  ASSERT_FALSE(o.ok());
  EXPECT_NE(o.status().message().find("section.key=value"), std::string::npos);
  auto e = LoadConfig("", {{"DATATUNNEL_PIPELINE_BATCH_MAX_CHANGES", "lots"}}, {});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("DATATUNNEL_PIPELINE_BATCH_MAX_CHANGES"), std::string::npos);
}

}  // namespace
}  // namespace datatunnel

namespace datatunnel {
namespace {

TEST(Config, PasswordFileErrorsSayWhatIsWrong) {
  const std::string dir = ::testing::TempDir() + "dt_password_test";
  std::filesystem::create_directories(dir);
  DatabaseConfig db;
  db.password_file = dir;
  auto r = ReadPassword(db);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("is a directory"), std::string::npos)
      << r.status().ToString();
  db.password_file = dir + "/empty";
  std::ofstream(db.password_file) << "\n";
  r = ReadPassword(db);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("is empty"), std::string::npos) << r.status().ToString();
  std::ofstream(db.password_file) << "s3cret\nignored\n";
  r = ReadPassword(db);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value(), "s3cret");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace datatunnel
