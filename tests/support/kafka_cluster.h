// KafkaCluster: a real Apache Kafka (KRaft) cluster for tests, never mocked.
//
// Started by scripts/kafka.sh in a temporary folder on free loopback ports.
// Each test binary that goes through a broker starts one cluster on first use
// (Shared) and stops it when the binary exits; tests keep out of each other's
// way with unique topic names and consumer groups (TestTopicPrefix). With
// DATATUNNEL_TEST_BROKERS set, Shared() uses that running cluster instead
// (handy when iterating on one test; fault tests need their own).
//
// Thread-safety: none; call from the test's main thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace datatunnel::testing {

class KafkaCluster {
 public:
  struct Options {
    int nodes = 1;
    int partitions = 4;     // partitions of a topic created on first use
    bool sasl_ssl = false;  // also a SASL_SSL (SCRAM-SHA-512) listener
    // C1 JIT only and the serial GC (kafka.sh --quick-start): nodes start and
    // restart in about half the time on a busy machine; tests need no peak
    // throughput.
    bool quick_start = true;
  };
  // Starts a cluster; aborts the test binary with the script's error on failure.
  explicit KafkaCluster(const Options& options);
  // A cluster somebody else started and stops (DATATUNNEL_TEST_BROKERS).
  explicit KafkaCluster(std::string bootstrap) : bootstrap_(std::move(bootstrap)), owned_(false) {}
  ~KafkaCluster();  // stops every node it started
  KafkaCluster(const KafkaCluster&) = delete;
  KafkaCluster& operator=(const KafkaCluster&) = delete;

  // "127.0.0.1:p1,127.0.0.1:p2,..." (PLAINTEXT listeners).
  const std::string& bootstrap() const { return bootstrap_; }
  // With Options::sasl_ssl: the SASL_SSL listeners and the CA's PEM file.
  const std::string& sasl_bootstrap() const { return sasl_bootstrap_; }
  const std::string& ca_file() const { return ca_file_; }
  int nodes() const { return nodes_; }

  // Fault injection on node 1..nodes(); each returns once done (kill -9,
  // start again, SIGSTOP, SIGCONT). Failures fail the current test.
  void Kill(int node);
  void Restart(int node);
  void Pause(int node);
  void Resume(int node);
  // Every node at once: kill -9 all, or start all again (killing those that
  // run). RestartAll returns once the nodes are started, not ready.
  void KillAll();
  void RestartAll();
  // Waits until every node runs and is registered, acks=all produce requests
  // succeed and no partition lacks an in-sync replica (the cluster is whole
  // again after faults); false after 180 s (scaled).
  bool WaitReady();
  // Creates `topic` with `partitions` partitions, the cluster's replication
  // factor and topic-level `configs` (name, value); fails the current test on
  // error. Topics not created this way are created on first use.
  void CreateTopic(const std::string& topic, int partitions,
                   const std::vector<std::pair<std::string, std::string>>& configs = {});
  // CreateTopic that returns the broker's error ("" on success) instead.
  std::string TryCreateTopic(const std::string& topic, int partitions,
                             const std::vector<std::pair<std::string, std::string>>& configs = {});
  // Deletes `topic`; false (and a test failure) on error. The brokers may
  // take a moment to forget it: CreateTopic of the same name can fail until
  // they have.
  bool DeleteTopic(const std::string& topic);
  // The oldest offset still on the broker for `topic` [partition] (-1 on error).
  int64_t LowWatermark(const std::string& topic, int partition);
  // The node leading `topic` [partition], or -1 when none does now.
  int Leader(const std::string& topic, int partition);

 private:
  bool Script(const std::string& args, std::string* out = nullptr);

  std::string dir_, bootstrap_, sasl_bootstrap_, ca_file_;
  int nodes_ = 1;
  bool owned_ = true;
};

// Copies every message of `topic` (partitions 0..partitions-1) from the
// brokers at `from` to the same partition of the same topic at `to`, in
// order, with key, value, headers and timestamp: a byte-faithful copy. Reads
// with assigned partitions and no consumer group, so it works against
// librdkafka's mock cluster without its group coordinator. Returns the
// number of messages copied, or -1 (and fails the current test) on error.
int64_t CopyTopic(const std::string& from, const std::string& to, const std::string& topic,
                  int partitions);

// The one-node cluster of this test binary, started on first call.
KafkaCluster& SharedKafka();

// A name no other test of any binary uses, for topic prefixes and groups.
std::string TestTopicPrefix();

}  // namespace datatunnel::testing
