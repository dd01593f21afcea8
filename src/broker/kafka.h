// Kafka adapters over librdkafka. The only code that sees librdkafka types.
//
// They are ordinary Kafka clients: nothing here depends on the development
// broker. Our defaults (below) come first, then [kafka.properties], then
// [kafka.producer_properties] / [kafka.consumer_properties].
//
// Producer defaults: enable.idempotence=true (acks=all, no duplicates or
// reordering from retries), message.timeout.ms=0 (never give up on a message:
// an unreachable broker makes the producer wait, not drop), a bounded local
// queue (queue.buffering.max.kbytes) so that backpressure reaches the reader,
// lz4 compression, murmur2_random partitioner (the Java client's, so other
// tools agree on key -> partition).
// Consumer defaults: no automatic offset commits (positions live in the
// target database), auto.offset.reset=error (a position the broker no longer
// has is reported, never silently skipped), fetch.wait.max.ms=10 (latency),
// fetch.queue.backoff.ms=10 where librdkafka has it (2.2 and later; before,
// Poll() wakes the fetchers itself when it finds the queue full).
//
// Thread-safety: a Producer may be called from several threads except Poll
// (delivery callbacks run on the thread calling Poll/Flush). A Consumer is
// used by one thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.h"
#include "core/message.h"
#include "core/status.h"

struct rd_kafka_s;
struct rd_kafka_message_s;

namespace datatunnel::broker {

inline constexpr int32_t kAnyPartition = -1;

// Decides whether a librdkafka error can heal by waiting (pinned by a test).
bool IsRetryableKafkaError(int err);
// "Broker: Unknown topic or partition" style text for an error code.
std::string KafkaErrorText(int err);

using Header = std::pair<std::string, std::string>;

// Asks the bootstrap servers for cluster metadata, waiting up to timeout_ms.
// Used at start-up so a wrong or unreachable kafka.brokers fails at once
// with one clear line; later outages are waited out instead.
Status CheckReachable(const KafkaConfig& config, int timeout_ms);

class Producer {
 public:
  // Called on the polling thread for every message: OK when it is stored by
  // the broker (acks=all), otherwise why it was not.
  using DeliveryFn = std::function<void(uint64_t token, const Status& status)>;

  static Result<std::unique_ptr<Producer>> Create(const KafkaConfig& config, DeliveryFn on_delivery,
                                                  const std::string& client_id = "datatunnel");
  ~Producer();

  // Enqueues one message. Returns kRetryable when the local queue is full:
  // poll and try again (that is the backpressure). Permanent errors (message
  // too large, unknown partition) are kFatal. After a fatal client error,
  // returns FatalError().
  Status Send(const std::string& topic, int32_t partition, std::string_view key,
              std::string_view value, uint64_t token, const std::vector<Header>* headers = nullptr);
  // Serves delivery reports and client events for up to timeout_ms.
  void Poll(int timeout_ms);
  // Waits up to timeout_ms for everything queued to be delivered; returns
  // how many messages are still undelivered.
  int Flush(int timeout_ms);
  // Drops every queued, undelivered message (they get failed delivery reports).
  void Purge();
  int OutQueueLength() const;
  // Number of partitions of `topic` (from metadata; waits for auto-creation).
  Result<int> PartitionCount(const std::string& topic, int timeout_ms);
  // A fatal client error: librdkafka's idempotent producer could not keep
  // its guarantees (librdkafka 2.0.2 raises OUT_OF_ORDER_SEQUENCE_NUMBER
  // after two of three brokers were down and came back) and this producer
  // sends nothing more. kRetryable when a new producer can go on (a new
  // producer id starts new sequences), kFatal when the cause cannot heal
  // (authorization); OK when there is none. Send() and the delivery reports
  // return the same status once it happened.
  Status FatalError() const;
  // For tests: makes librdkafka raise the fatal error `err` as if the
  // brokers had caused it (rd_kafka_test_fatal_error).
  void InjectFatalError(int err, const std::string& reason);

 private:
  Producer() = default;
  rd_kafka_s* rk_ = nullptr;
  DeliveryFn on_delivery_;
};

// A polled message; owns the librdkafka message until destroyed.
class Message {
 public:
  explicit Message(rd_kafka_message_s* m) : m_(m) {}
  ~Message();
  Message(Message&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
  Message& operator=(Message&&) = delete;
  InboundMessage view() const;
  size_t size() const;  // key + value bytes
  // Value of the last header named `name`, or nullopt.
  std::optional<std::string_view> Header(const char* name) const;

 private:
  rd_kafka_message_s* m_;
};

class Consumer {
 public:
  // Group membership events, called on the thread that calls Poll().
  class Listener {
   public:
    virtual ~Listener() = default;
    // New partitions: set each one's offset (where to start reading); leave
    // kOffsetStored to use the group's committed offset.
    virtual void OnAssigned(std::vector<TopicPartition>* partitions) = 0;
    virtual void OnRevoked(const std::vector<TopicPartition>& partitions) = 0;
  };

  static Result<std::unique_ptr<Consumer>> Create(const KafkaConfig& config,
                                                  const std::vector<std::string>& topics,
                                                  Listener* listener);
  ~Consumer();

  // Appends up to `max` messages or about `max_bytes` of them: waits up to
  // timeout_ms for the first, then up to linger_ms for more. Broker-side problems that heal
  // (transport, all brokers down) are logged and not returned; errors that lose data or cannot heal
  // (offset out of range, authorization) are returned as kFatal.
  Status Poll(size_t max, int timeout_ms, int linger_ms, std::vector<Message>* out,
              size_t max_bytes = 16 << 20);
  void Pause(const std::vector<TopicPartition>& parts);
  void Resume(const std::vector<TopicPartition>& parts);
  // Restarts fetching of a partition at `offset` (after an apply was rolled back).
  Status Seek(const TopicPartition& tp);
  // Records offsets in the group (a hint for tools; positions live in the target).
  void CommitAsync(const std::vector<TopicPartition>& offsets);
  // Leaves the group cleanly.
  Status Close();
  std::vector<TopicPartition> Assignment() const;

 private:
  Consumer() = default;
  static void RebalanceCb(rd_kafka_s* rk, int err, void* partitions, void* opaque);
  // Makes the broker threads decide again which partitions to fetch.
  void WakeFetchers();
  rd_kafka_s* rk_ = nullptr;
  Listener* listener_ = nullptr;
  bool closed_ = false;
  bool wake_fetchers_ = false;  // librdkafka before 2.2 (no fetch.queue.backoff.ms)
};

}  // namespace datatunnel::broker
