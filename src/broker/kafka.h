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
// tools agree on key -> partition). Our own messages name their partition
// (KeyPartition below computes the same one), so the sender knows where each
// message goes.
// Consumer defaults: no automatic offset commits (positions live in the
// target database), auto.offset.reset=error (a position the broker no longer
// has is reported, never silently skipped), fetch.wait.max.ms=10 (latency),
// fetch.queue.backoff.ms=10 where librdkafka has it (2.2 and later; before,
// a Poll() cut short by its limits has a thread of the Consumer's own wake
// the fetchers, without waiting for it),
// enable.partition.eof=true (how Ready() learns a partition is positioned).
//
// Security: a failure to authenticate (SASL) or to set up TLS with the
// brokers cannot heal by waiting. CheckReachable reports it at start-up, and
// a Producer or Consumer that meets one later reports it too (FatalError(),
// Poll()), as kBadConfig with a message naming the settings to fix, instead
// of retrying forever.
//
// Thread-safety: a Producer may be called from several threads except Poll
// (delivery callbacks run on the thread calling Poll/Flush). A Consumer is
// used by one thread (its waker thread only asks librdkafka for offsets).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "config/config.h"
#include "core/message.h"
#include "core/status.h"

struct rd_kafka_s;
struct rd_kafka_message_s;

namespace datatunnel::broker {

class SecurityWatch;  // kafka.cc: remembers an authentication or TLS failure

inline constexpr int32_t kAnyPartition = -1;

// Decides whether a librdkafka error can heal by waiting. Every code of
// librdkafka 2.0.2 is classified explicitly (tests/unit/classify_test.cc pins
// each); a code the compiled header does not list is retryable.
bool IsRetryableKafkaError(int err);
// "Broker: Unknown topic or partition" style text for an error code.
std::string KafkaErrorText(int err);

// The partition librdkafka's murmur2_random partitioner (the Java client's
// default) gives `key` among `partitions`: the same for every client that
// uses it. An empty key is hashed like any other (never random).
// REQUIRES: partitions > 0.
int32_t KeyPartition(std::string_view key, int32_t partitions);

using Header = std::pair<std::string, std::string>;

// Asks the bootstrap servers for cluster metadata, waiting up to timeout_ms.
// Used at start-up so a wrong or unreachable kafka.brokers fails at once
// with one clear line; later outages are waited out instead. Returns OK,
// kBadConfig when the brokers refuse the credentials or the TLS handshake
// fails (as soon as that happens, with what to fix in [kafka.properties]),
// or kRetryable when no broker answered in time.
Status CheckReachable(const KafkaConfig& config, int timeout_ms);

// Fault injection for tests: with DATATUNNEL_FAULT_LOSE_MESSAGE=n in the
// environment, the n-th message a Producer sends (counting from 1) is
// reported delivered but never reaches the broker: what librdkafka's
// implicit acks do against a broker that does not check the idempotent
// producer's sequence numbers (docs/architecture.md, Guarantees). It logs a
// warning when armed. Never set in production.
inline constexpr const char* kFaultLoseMessageEnv = "DATATUNNEL_FAULT_LOSE_MESSAGE";

class Producer {
 public:
  // Called on the polling thread for every message: OK when it is stored by
  // the broker (acks=all), otherwise why it was not.
  using DeliveryFn = std::function<void(uint64_t token, const Status& status)>;

  // What a producer sends: kFaultLoseMessageEnv applies to kChanges only
  // (end-of-tick records have their own producer, tunnel/kafka_sink.h).
  enum class Role { kChanges, kTickEnds };
  static Result<std::unique_ptr<Producer>> Create(const KafkaConfig& config, DeliveryFn on_delivery,
                                                  const std::string& client_id = "datatunnel",
                                                  Role role = Role::kChanges);
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
  // (authorization), kBadConfig for a refused SASL login or TLS handshake;
  // OK when there is none. Send() and the delivery reports
  // return the same status once it happened.
  Status FatalError() const;
  // For tests: makes librdkafka raise the fatal error `err` as if the
  // brokers had caused it (rd_kafka_test_fatal_error).
  void InjectFatalError(int err, const std::string& reason);

 private:
  Producer();
  // Reports the acknowledgements faked by the fault above.
  void DeliverFaked();
  std::unique_ptr<SecurityWatch> security_;
  rd_kafka_s* rk_ = nullptr;
  DeliveryFn on_delivery_;
  int64_t lose_at_ = 0;  // kFaultLoseMessageEnv; 0: off
  int64_t sent_ = 0;
  std::vector<uint64_t> faked_;
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

  // Creates the consumer and subscribes it to `topics` once the brokers know
  // every one of them (with its partitions): it asks for each
  // (which creates it where the brokers auto-create topics) and waits until
  // it exists, logging while it waits. Subscribing earlier costs seconds: a
  // group join that finds a topic missing assigns none of its partitions,
  // and librdkafka joins again at most once a second, after new metadata.
  // Returns kCancelled once `cancelled` returns true while waiting, kFatal
  // when the consumer may not read a topic, kBadConfig for bad properties or
  // a security failure.
  // With `assign_all`, it reads every partition of every topic without
  // joining the group (manual assignment: no rebalance ever moves one);
  // the listener's OnAssigned() is called once, from Create().
  // A partition the listener starts at kOffsetBeginning or kOffsetEnd is
  // started at the concrete offset that stands for, looked up (and looked
  // up again on failure, for up to 30 s) before it is assigned.
  static Result<std::unique_ptr<Consumer>> Create(
      const KafkaConfig& config, const std::vector<std::string>& topics, Listener* listener,
      const std::function<bool()>& cancelled = [] { return false; }, bool assign_all = false);
  ~Consumer();

  // Appends up to `max` messages or about `max_bytes` of them: waits up to
  // timeout_ms for the first, then up to linger_ms for more. Broker-side problems that heal
  // (transport, all brokers down) are logged and not returned; errors that lose data or cannot heal
  // (offset out of range, authorization) are returned as kFatal, a security
  // failure as kBadConfig.
  Status Poll(size_t max, int timeout_ms, int linger_ms, std::vector<Message>* out,
              size_t max_bytes = 16 << 20);
  // True once the group gave this consumer its partitions (possibly none)
  // and each of them answered a first fetch (a message, or the end of the
  // partition): a message produced from now on reaches Poll() within a
  // fetch, with no group join, metadata refresh or offset lookup first.
  // False again from a rebalance until the new partitions answered. Updated
  // by Poll().
  bool Ready() const { return assigned_ && unpositioned_.empty(); }
  // Stops and restarts fetching of assigned partitions. A pause lasts until
  // Resume() or until the partition is revoked: a partition assigned again
  // starts unpaused, as with Kafka's Java consumer (librdkafka alone keeps
  // the pause across the revocation, and the partition is never read again
  // unless the application remembers it).
  void Pause(const std::vector<TopicPartition>& parts);
  void Resume(const std::vector<TopicPartition>& parts);
  // Restarts fetching of a partition at `offset` (after an apply was rolled back).
  Status Seek(const TopicPartition& tp);
  // Records offsets in the group (a hint for tools; positions live in the target).
  void CommitAsync(const std::vector<TopicPartition>& offsets);
  // Leaves the group cleanly, waiting at most `timeout_ms` for the group
  // coordinator; past it the close is abandoned (nothing is lost: positions
  // live in the target) and a Retryable status says so.
  Status Close(int timeout_ms = 5000);
  std::vector<TopicPartition> Assignment() const;

 private:
  Consumer();
  static void RebalanceCb(rd_kafka_s* rk, int err, void* partitions, void* opaque);
  // Waits until the brokers know every topic (see Create).
  Status AwaitTopics(const std::vector<std::string>& topics,
                     const std::function<bool()>& cancelled);
  // Makes the broker threads decide again which partitions to fetch. It
  // waits for a broker's answer, so Poll() only asks for it (RequestWake)
  // and the waker thread does it: done on the polling thread, a
  // 1,000,000-row transaction's ~80 waits (28 ms each on average on a
  // loaded host) kept the applier from its next batch for 2-4 s.
  void WakeFetchers();
  void RequestWake();
  void StopWaker();  // joins the waker thread (at most one wake's 100 ms)
  // Replaces kOffsetBeginning and kOffsetEnd in `parts` by the offsets they
  // stand for now, trying for up to kResolveMicros (left as they are past
  // it). librdkafka before 2.1 looks a logical offset up once and, on any
  // failure (even "Unknown topic or partition" from a broker not yet told
  // of a just-created topic), stops fetching the partition for good.
  void ResolveLogicalOffsets(std::vector<TopicPartition>* parts);
  static constexpr int64_t kResolveMicros = 30'000'000;
  std::unique_ptr<SecurityWatch> security_;
  rd_kafka_s* rk_ = nullptr;
  Listener* listener_ = nullptr;
  bool closed_ = false;
  bool wake_fetchers_ = false;  // librdkafka before 2.2 (no fetch.queue.backoff.ms)
  // The waker thread, started by the first RequestWake(): requests made
  // while it wakes the fetchers make one more wake, not one each.
  std::thread waker_;
  std::mutex waker_mu_;
  std::condition_variable waker_cv_;
  bool wake_wanted_ = false;  // guarded by waker_mu_
  bool waker_stop_ = false;   // guarded by waker_mu_
  // Readiness (see Ready()): an assignment since the last revocation, and
  // the assigned partitions that have not answered a fetch yet.
  bool assigned_ = false;
  std::set<std::pair<std::string, int32_t>> unpositioned_;
  std::set<std::pair<std::string, int32_t>> paused_;  // by Pause(), not resumed
  std::map<std::string, int32_t> partition_counts_;   // found by AwaitTopics
};

}  // namespace datatunnel::broker
