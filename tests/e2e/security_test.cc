// End to end: the tunnel through a broker that requires TLS and SASL (issue
// 16, item 7). A one-node cluster of its own with a SASL_SSL listener, its
// certificates made with openssl by scripts/kafka.sh. With nothing but
// [kafka.properties] settings the tunnel connects and syncs a change; a wrong
// password, or a CA file that did not sign the broker's certificate, each
// stop it at once with one clear line and a non-zero exit code instead of
// retrying forever.
//
// librdkafka before 2.6.1 (Debian 12 ships 2.0.2) cannot authenticate with
// SCRAM to Kafka 4 brokers even with the right password (librdkafka issue
// #4895): with such a librdkafka the tunnel uses PLAIN (over TLS), which the
// listener also offers, and a test pins the message that explains the SCRAM
// failure. With a newer librdkafka every test uses SCRAM-SHA-512.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "support/kafka_cluster.h"
#include "support/pg_cluster.h"
#include "support/subprocess.h"
#include "support/test_util.h"
#include "support/tunnel_fixture.h"

namespace datatunnel {
namespace {

using testing::Contains;
using testing::KafkaCluster;
using testing::Lines;
using testing::RunCommand;
using testing::RunResult;
using testing::SourceCluster;
using testing::TargetCluster;

constexpr const char* kEmployeesPkDdl =
    "CREATE TABLE employees(emp_id SERIAL PRIMARY KEY, first_name VARCHAR(100), "
    "last_name VARCHAR(100), dob DATE, city VARCHAR(100))";
constexpr const char* kPassword = "datatunnel-secret";  // scripts/kafka.sh --sasl-ssl

bool ScramWorksWithKafka4() { return rd_kafka_version() >= 0x020601ff; }

class SecurityTest : public testing::TunnelFixture {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new KafkaCluster(KafkaCluster::Options{.nodes = 1, .sasl_ssl = true});
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  void SetUp() override {
    TunnelFixture::SetUp();
    SourceCluster().Exec(src_, kEmployeesPkDdl);
    TargetCluster().Exec(tgt_, kEmployeesPkDdl);
  }

  // Points the config at the SASL_SSL listener with these settings only.
  void WriteSecureConfig(const std::string& mechanism, const std::string& password,
                         const std::string& ca_file) {
    bootstrap_ = cluster_->sasl_bootstrap();
    WriteConfig(testing::kEmployeesTable, fmt::format(R"([kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "{}"
"sasl.username" = "datatunnel"
"sasl.password" = "{}"
"ssl.ca.location" = "{}"
)",
                                                      mechanism, password, ca_file));
  }
  static std::string Mechanism() { return ScramWorksWithKafka4() ? "SCRAM-SHA-512" : "PLAIN"; }

  // Runs `datatunnel run`, which must stop on its own: exit code, stderr, seconds.
  struct Outcome {
    RunResult result;
    double seconds = 0;
  };
  Outcome RunExpectingFailure() {
    const auto start = std::chrono::steady_clock::now();
    Outcome o;
    o.result = Dt({"run"}, 60);
    o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return o;
  }
  // Exactly one line on stderr, the error; exit code 2 (credentials);
  // within seconds, not after retrying.
  static void ExpectOneClearLine(const Outcome& o, const std::vector<std::string>& says) {
    EXPECT_EQ(o.result.code, 2) << o.result.err;
    EXPECT_LT(o.seconds, 20 * testing::TimeoutMultiplier()) << o.result.err;
    const auto lines = Lines(o.result.err);
    ASSERT_EQ(lines.size(), 1u) << o.result.err;
    EXPECT_EQ(lines[0].rfind("datatunnel: error: ", 0), 0u) << lines[0];
    for (const auto& s : says) EXPECT_TRUE(Contains(lines[0], s)) << s << " in: " << lines[0];
    EXPECT_FALSE(Contains(lines[0], kPassword)) << lines[0];
  }

  static KafkaCluster* cluster_;
};

KafkaCluster* SecurityTest::cluster_ = nullptr;

TEST_F(SecurityTest, SyncsAChangeWithOnlyKafkaProperties) {
  WriteSecureConfig(Mechanism(), kPassword, cluster_->ca_file());
  ASSERT_EQ(Dt({"init"}).code, 0);
  auto run = Start({"run"});
  SourceCluster().Exec(src_,
                       "INSERT INTO employees(first_name, city) VALUES ('Ada', 'London'), "
                       "('Grace', 'Arlington')");
  SourceCluster().Exec(src_, "UPDATE employees SET city = 'Zürich' WHERE first_name = 'Ada'");
  ExpectInSync();
  EXPECT_EQ(TableText(SourceCluster(), src_, "employees", "emp_id"),
            TableText(TargetCluster(), tgt_, "employees", "emp_id"));
  EXPECT_EQ(run->Stop(), 0) << run->Stderr();
  EXPECT_FALSE(Contains(run->Stderr(), kPassword));
}

TEST_F(SecurityTest, WrongPasswordStopsWithOneClearLine) {
  WriteSecureConfig(Mechanism(), "not-the-password", cluster_->ca_file());
  ExpectOneClearLine(RunExpectingFailure(), {"refused the SASL login", cluster_->sasl_bootstrap(),
                                             "sasl.password", "[kafka.properties]"});
}

TEST_F(SecurityTest, UntrustedCertificateStopsWithOneClearLine) {
  // A CA of its own, which did not sign the broker's certificate.
  const std::string ca = dir_ + "/other-ca.pem";
  auto made =
      RunCommand({"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                  "-subj", "/CN=not-the-broker-ca", "-keyout", dir_ + "/other-ca.key", "-out", ca});
  ASSERT_EQ(made.code, 0) << made.err;
  WriteSecureConfig(Mechanism(), kPassword, ca);
  ExpectOneClearLine(RunExpectingFailure(),
                     {"TLS connection to the Kafka brokers", cluster_->sasl_bootstrap(),
                      "certificate verify failed", "ssl.ca.location"});
}

// With a librdkafka that cannot do SCRAM with Kafka 4 brokers, the right
// password is refused too: the line says why and what to do.
TEST_F(SecurityTest, ScramWithAnOldLibrdkafkaSaysWhyItFails) {
  if (ScramWorksWithKafka4()) GTEST_SKIP() << "this librdkafka authenticates with SCRAM";
  WriteSecureConfig("SCRAM-SHA-512", kPassword, cluster_->ca_file());
  ExpectOneClearLine(RunExpectingFailure(),
                     {"refused the SASL login", "before 2.6.1", "#4895", "PLAIN"});
}

}  // namespace
}  // namespace datatunnel
