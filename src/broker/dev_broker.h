// DevBroker: librdkafka's in-process mock cluster, speaking the Kafka protocol
// on 127.0.0.1 so separate processes (datatunnel, kcat) can use it.
//
// FOR DEVELOPMENT AND TESTS ONLY: everything is in memory and lost when the
// process exits, and each partition keeps at most 5 MB / 100,000 message
// sets (older ones are dropped, as retention would). It can inject faults:
// take a broker down, make requests fail, add latency.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

struct rd_kafka_s;
struct rd_kafka_mock_cluster_s;

namespace datatunnel::broker {

class DevBroker {
 public:
  // Starts `brokers` mock brokers on random loopback ports. With `port` > 0
  // the bootstrap address is 127.0.0.1:`port` (a forwarder to the brokers:
  // a config can name a fixed address across restarts); BadConfig when that
  // port cannot be bound.
  static Result<std::unique_ptr<DevBroker>> Start(int brokers, int port = 0);
  ~DevBroker();

  // "127.0.0.1:port,..." for bootstrap.servers (the forwarder's address
  // when Start was given a port).
  std::string bootstraps() const;
  // Creates a topic (topics are otherwise auto-created with 4 partitions).
  Status CreateTopic(const std::string& name, int partitions);
  Status SetBrokerDown(int broker_id);
  Status SetBrokerUp(int broker_id);
  Status SetBrokerRtt(int broker_id, int rtt_ms);
  // The next `count` requests of API `api_key` (e.g. 0 Produce, 1 Fetch)
  // fail with Kafka error code `error`.
  void PushRequestErrors(int api_key, int count, int error);

  // Executes one control command (the `dev-broker` stdin protocol):
  //   down <id> | up <id> | rtt <id> <ms> | errors <api_key> <count> <code> |
  //   topic <name> <partitions>
  Status Command(const std::string& line);

 private:
  class Forwarder;
  DevBroker() = default;
  std::unique_ptr<Forwarder> forwarder_;
  int port_ = 0;
  rd_kafka_s* rk_ = nullptr;
  rd_kafka_mock_cluster_s* cluster_ = nullptr;
};

}  // namespace datatunnel::broker
