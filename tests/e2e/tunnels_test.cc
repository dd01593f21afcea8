// Several tunnels side by side (issue "safe under operator mistakes",
// findings 1 and 11): a tunnel has a name, and its topics, consumer group,
// state rows and producer lock are its own, so tunnels sharing a source
// database, a target database and a Kafka cluster never see each other.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "support/kafka_cluster.h"
#include "support/tunnel_fixture.h"

namespace datatunnel {
namespace {

using testing::Contains;
using testing::RunCommand;
using testing::RunResult;
using testing::SourceCluster;
using testing::Subprocess;
using testing::TargetCluster;

constexpr const char* kCustomersDdl =
    "CREATE SCHEMA shop; CREATE TABLE shop.customers(id int PRIMARY KEY, name text)";
constexpr const char* kCustomersTable = "[[tables]]\nsource = \"shop.customers\"\n";

class TunnelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / testing::UniqueName("datatunnel-tunnels");
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    for (auto& p : started_) p->Stop();
    std::filesystem::remove_all(dir_);
  }

  // Writes `file` (under the test's folder) with no topic_prefix and no
  // group_id: the defaults, as a user who never heard of them would.
  std::string WriteConfig(const std::string& file, const std::string& src, const std::string& tgt,
                          const std::string& brokers, const std::string& rest) {
    const std::string path = dir_ + "/" + file;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream(path) << fmt::format(R"(
[source]
dsn = "{}"
[target]
dsn = "{}"
[kafka]
brokers = "{}"
[kafka.consumer_properties]
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "300"
{}
)",
                                       SourceCluster().Dsn(src), TargetCluster().Dsn(tgt), brokers,
                                       rest);
    return path;
  }
  // Two independent pairs of databases, srcj -> tgtj and srck -> tgtk, each
  // with an empty table shop.customers.
  struct TwoPairs {
    std::string srcj, srck, tgtj, tgtk;
  };
  TwoPairs CreateTwoPairs() {
    TwoPairs p{SourceCluster().CreateDatabase("srcj"), SourceCluster().CreateDatabase("srck"),
               TargetCluster().CreateDatabase("tgtj"), TargetCluster().CreateDatabase("tgtk")};
    for (const auto& db : {p.srcj, p.srck}) SourceCluster().Exec(db, kCustomersDdl);
    for (const auto& db : {p.tgtj, p.tgtk}) TargetCluster().Exec(db, kCustomersDdl);
    return p;
  }
  RunResult Dt(const std::string& config, std::vector<std::string> rest, double seconds = 60) {
    std::vector<std::string> a = {testing::BinaryPath(), "-c", config};
    a.insert(a.end(), rest.begin(), rest.end());
    return RunCommand(a, {}, seconds);
  }
  std::shared_ptr<Subprocess> Start(const std::string& config, std::vector<std::string> rest) {
    std::vector<std::string> a = {testing::BinaryPath(), "-c", config};
    a.insert(a.end(), rest.begin(), rest.end());
    started_.push_back(std::make_shared<Subprocess>(a));
    return started_.back();
  }
  void ExpectInSync(const std::string& config, double seconds = 90) {
    const double s = seconds * testing::TimeoutMultiplier();
    auto r = Dt(config, {"verify", "--wait", std::to_string(s)}, s * 2 + 30);
    std::string logs;
    for (auto& p : started_) logs += "\n--- a tunnel process logged:\n" + p->Stderr();
    EXPECT_EQ(r.code, 0) << config << "\n" << r.out << r.err << logs;
  }

  std::string dir_;
  std::vector<std::shared_ptr<Subprocess>> started_;
};

// Finding 1: two independent tunnels (srcj -> tgtj, srck -> tgtk), both with
// a table shop.customers, on one Kafka cluster, with the default topics and
// consumer groups. Before tunnels had names both used topic
// datatunnel.shop.customers and group datatunnel, and each target got a mix.
TEST_F(TunnelsTest, TwoTunnelsOnOneKafkaClusterStayApart) {
  const std::string brokers = testing::SharedKafka().bootstrap();
  const auto [srcj, srck, tgtj, tgtk] = CreateTwoPairs();
  SourceCluster().Exec(
      srcj, "INSERT INTO shop.customers SELECT i, 'j' || i FROM generate_series(1, 10) i");
  SourceCluster().Exec(
      srck, "INSERT INTO shop.customers SELECT i, 'k' || i FROM generate_series(1, 13) i");
  const std::string cj = WriteConfig("j/datatunnel.toml", srcj, tgtj, brokers, kCustomersTable);
  const std::string ck = WriteConfig("k/datatunnel.toml", srck, tgtk, brokers, kCustomersTable);
  for (const auto& c : {cj, ck}) {
    auto r = Dt(c, {"init"});
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    // init says which name, topics and group the tunnel has.
    EXPECT_TRUE(Contains(r.out, "tunnel \"" + (c == cj ? srcj : srck) + "\"")) << r.out;
  }
  Start(cj, {"run"});
  Start(ck, {"run"});
  ExpectInSync(cj);
  ExpectInSync(ck);
  // Changes after the snapshot stream to their own target only.
  SourceCluster().Exec(srcj, "UPDATE shop.customers SET name = name || '!' WHERE id <= 5");
  SourceCluster().Exec(srck, "DELETE FROM shop.customers WHERE id > 10");
  SourceCluster().Exec(srck, "INSERT INTO shop.customers VALUES (100, 'k100')");
  ExpectInSync(cj);
  ExpectInSync(ck);
  EXPECT_EQ(TargetCluster().Count(tgtj, "SELECT count(*) FROM shop.customers WHERE name LIKE 'j%'"),
            10);
  EXPECT_EQ(TargetCluster().Count(tgtj, "SELECT count(*) FROM shop.customers"), 10);
  EXPECT_EQ(TargetCluster().Count(tgtk, "SELECT count(*) FROM shop.customers WHERE name LIKE 'k%'"),
            11);
  EXPECT_EQ(TargetCluster().Count(tgtk, "SELECT count(*) FROM shop.customers"), 11);
  // Each tunnel's own topic: datatunnel.<name>.shop.customers.
  EXPECT_EQ(TargetCluster().Count(tgtj, fmt::format("SELECT count(*) FROM datatunnel.applied "
                                                    "WHERE stream = 'datatunnel.{}.shop.customers'",
                                                    srcj)),
            TargetCluster().Count(tgtj, "SELECT count(*) FROM datatunnel.applied"));
  for (const auto& [c, db] : {std::pair{cj, srcj}, std::pair{ck, srck}}) {
    auto st = Dt(c, {"status", "--json"});
    EXPECT_EQ(st.code, 0) << st.out << st.err;
    EXPECT_TRUE(Contains(st.out, "shop.customers")) << st.out;
  }
}

// Finding 11: two configurations splitting the tables of one source database
// into one target. Each is its own tunnel (named after the database and the
// config file) with its own producer lock, so both publish; before, the
// second producer stood by forever. A table in both is refused by `init`.
TEST_F(TunnelsTest, TwoConfigsSplittingOneSourceDatabaseBothSync) {
  const std::string src = SourceCluster().CreateDatabase("split_src"),
                    tgt = TargetCluster().CreateDatabase("split_tgt");
  const char* ddl =
      "CREATE TABLE a(id int PRIMARY KEY, v text); CREATE TABLE b(id int PRIMARY KEY, v text)";
  SourceCluster().Exec(src, ddl);
  TargetCluster().Exec(tgt, ddl);
  SourceCluster().Exec(src,
                       "INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 20) i; "
                       "INSERT INTO b SELECT i, 'b' || i FROM generate_series(1, 30) i");
  const std::string one =
      WriteConfig("one.toml", src, tgt, "none", "[[tables]]\nsource = \"public.a\"\n");
  const std::string two =
      WriteConfig("two.toml", src, tgt, "none", "[[tables]]\nsource = \"public.b\"\n");
  for (const auto& c : {one, two}) {
    auto r = Dt(c, {"init"});
    ASSERT_EQ(r.code, 0) << r.out << r.err;
  }
  // The same table in a third configuration: refused, naming its tunnel.
  const std::string three =
      WriteConfig("three.toml", src, tgt, "none", "[[tables]]\nsource = \"public.a\"\n");
  auto refused = Dt(three, {"init"});
  EXPECT_EQ(refused.code, 2) << refused.out << refused.err;
  EXPECT_TRUE(Contains(refused.err, "table public.a is captured by tunnel \"" + src + "-one\""))
      << refused.err;
  EXPECT_EQ(std::count(refused.err.begin(), refused.err.end(), '\n'), 1) << refused.err;

  Start(one, {"run"});
  Start(two, {"run"});
  ExpectInSync(one);
  ExpectInSync(two);
  SourceCluster().Exec(src, "INSERT INTO a VALUES (21, 'a21'); UPDATE b SET v = 'x' WHERE id = 1");
  ExpectInSync(one);
  ExpectInSync(two);
  EXPECT_EQ(TargetCluster().Count(tgt, "SELECT count(*) FROM a"), 21);
  EXPECT_EQ(TargetCluster().Count(tgt, "SELECT count(*) FROM b WHERE v = 'x'"), 1);
}

// A consumer that receives a message of another tunnel, or of another source
// installation under the same name, stops before applying anything, with
// one line naming the tunnel and topic and the fix.
TEST_F(TunnelsTest, AConsumerOfAnotherTunnelsTopicStopsBeforeApplying) {
  const std::string brokers = testing::SharedKafka().bootstrap();
  const auto [srcj, srck, tgtj, tgtk] = CreateTwoPairs();
  const std::string cj = WriteConfig("j/datatunnel.toml", srcj, tgtj, brokers, kCustomersTable);
  ASSERT_EQ(Dt(cj, {"init"}).code, 0);
  auto produce = Start(cj, {"produce"});
  SourceCluster().Exec(
      srcj, "INSERT INTO shop.customers SELECT i, 'j' || i FROM generate_series(1, 10) i");
  const std::string topic = "datatunnel." + srcj + ".shop.customers";

  struct Case {
    std::string name, rest, expect;
  };
  const std::vector<Case> cases = {
      // Tunnel K pointed at J's topic.
      {"k/datatunnel.toml",
       fmt::format("[[tables]]\nsource = \"shop.customers\"\ntopic = \"{}\"\n", topic),
       fmt::format("a message of tunnel \"{}\"", srcj)},
      // Another source installation under J's name (so J's default topics).
      {"k2/datatunnel.toml", fmt::format("[tunnel]\nname = \"{}\"\n{}", srcj, kCustomersTable),
       "source installation"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string ck = WriteConfig(c.name, srck, tgtk, brokers, c.rest);
    auto init = Dt(ck, {"init"});
    ASSERT_EQ(init.code, 0) << init.out << init.err;
    auto r = Dt(ck, {"consume"}, 90);
    EXPECT_EQ(r.code, 2) << r.err;
    const std::vector<std::string> errors = testing::ErrorLines(r.err);
    ASSERT_EQ(errors.size(), 1u) << r.err;
    EXPECT_TRUE(Contains(errors[0], c.expect)) << errors[0];
    EXPECT_TRUE(Contains(errors[0], topic)) << errors[0];
    EXPECT_TRUE(Contains(errors[0], "nothing was applied")) << errors[0];
    EXPECT_TRUE(Contains(errors[0], "kafka.topic_prefix")) << errors[0];
    EXPECT_EQ(TargetCluster().Count(tgtk, "SELECT count(*) FROM shop.customers"), 0);
    EXPECT_EQ(TargetCluster().Count(
                  tgtk, "SELECT COALESCE(sum(applied_count), 0) FROM datatunnel.applied"),
              0);
    ASSERT_EQ(Dt(ck, {"uninstall", "--yes"}).code, 0);
  }
  EXPECT_TRUE(produce->Running()) << produce->Stderr();
}

// State from a version without tunnel names (no tunnel columns, one tick
// sequence, no installation id, no datatunnel.tunnels on the target): every
// command asks for `init`, which upgrades it in place, keeping the changes
// captured meanwhile.
TEST_F(TunnelsTest, InitUpgradesStateWithoutTunnelNames) {
  const std::string src = SourceCluster().CreateDatabase("legacy_src"),
                    tgt = TargetCluster().CreateDatabase("legacy_tgt");
  const char* ddl = "CREATE TABLE a(id int PRIMARY KEY, v text)";
  SourceCluster().Exec(src, ddl);
  TargetCluster().Exec(tgt, ddl);
  const std::string config =
      WriteConfig("datatunnel.toml", src, tgt, "none", "[[tables]]\nsource = \"public.a\"\n");
  ASSERT_EQ(Dt(config, {"init"}).code, 0);
  SourceCluster().Exec(src, "INSERT INTO a SELECT i, 'v' || i FROM generate_series(1, 10) i");
  {
    auto run = Start(config, {"run"});
    ExpectInSync(config);
    run->Stop();
  }
  // Back to the earlier version's form of the state.
  SourceCluster().Exec(src,
                       "ALTER TABLE datatunnel.ticks DROP CONSTRAINT ticks_pkey; "
                       "ALTER TABLE datatunnel.ticks DROP COLUMN tunnel; "
                       "ALTER TABLE datatunnel.ticks ADD PRIMARY KEY (tick); "
                       "ALTER TABLE datatunnel.chain_heads DROP CONSTRAINT chain_heads_pkey; "
                       "ALTER TABLE datatunnel.chain_heads DROP COLUMN tunnel; "
                       "ALTER TABLE datatunnel.chain_heads ADD PRIMARY KEY (topic, partition); "
                       "ALTER TABLE datatunnel.tables DROP COLUMN tunnel; "
                       "ALTER TABLE datatunnel.meta DROP COLUMN install_id");
  TargetCluster().Exec(tgt, "DROP TABLE datatunnel.tunnels");
  // Changes captured while the old state waits for its upgrade.
  SourceCluster().Exec(src, "INSERT INTO a VALUES (11, 'v11'); UPDATE a SET v = 'x' WHERE id = 1");
  for (const std::vector<std::string>& cmd : {std::vector<std::string>{"run"}, {"status"}}) {
    auto r = Dt(config, cmd);
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_TRUE(Contains(r.err, "from an earlier version")) << r.err;
    EXPECT_TRUE(Contains(r.err, "run `datatunnel init`")) << r.err;
  }
  auto init = Dt(config, {"init"});
  ASSERT_EQ(init.code, 0) << init.out << init.err;
  EXPECT_TRUE(Contains(init.out, "upgraded the state of 1 table(s)")) << init.out;
  EXPECT_EQ(SourceCluster().Count(src, "SELECT count(*) FROM datatunnel.ticks WHERE tunnel = ''"),
            0);
  Start(config, {"run"});
  ExpectInSync(config);
  EXPECT_EQ(TargetCluster().Count(tgt, "SELECT count(*) FROM a"), 11);
}

}  // namespace
}  // namespace datatunnel
