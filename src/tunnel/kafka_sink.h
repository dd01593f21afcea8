// KafkaSink: encodes changes as envelopes and publishes them, keyed by the
// row's key, to each table's topic.
//
// It chooses every message's partition itself (broker::KeyPartition, the
// same as librdkafka's murmur2_random partitioner), so it knows, per
// partition, the position of the message it sent there last: each message
// carries that position as "source.prev", and consumers check the chain
// (apply/chain.h). The first message of a session to a partition links to the
// head an earlier session recorded (SetChainHeads).
//
// With kafka.format = "connect-json" the messages are written as Kafka
// Connect's JsonConverter writes them (publish/connect_envelope.h), control
// messages with the publish::kControlHeader header. The partition is still
// chosen from our own key encoding, so a tunnel switching formats keeps
// every row on its partition (per-key order holds across the switch).
//
// Snapshot chunks of tables with a unique key come packed (`packed_chunks`,
// kafka.snapshot_chunks = "copy", in either apply_consistency: a consumer
// applying whole ticks unpacks them into rows): SplitChunk() cuts a chunk's
// COPY text by the partition of each row's key (the same hash as a row's
// own message would get), in messages of at most kChunkMessageBytes, each
// written in the chunk format (publish/envelope.h).
//
// End-of-tick records (transaction mode) go through a producer of their own,
// with its own connection to the brokers: a broker serves one connection's
// requests one at a time, and the data producer keeps up to five of them in
// flight (one per partition and tick), so a record behind them waited for
// all of them (bench/README.md, "Latency through the broker per stage").
// Order on the wire between a record and its tick's changes never mattered
// (they are different partitions even on one connection): the consumer
// holds a tick until it has read every listed partition up to the listed
// position (apply/tick_gate.h), and the delivery tracker counts a tick only
// when its changes and its record are delivered, whichever came first.
//
// Thread-safety: one thread (the source worker's), as ChangeSink.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "broker/kafka.h"
#include "publish/connect_envelope.h"
#include "publish/envelope.h"
#include "tunnel/sink.h"

namespace datatunnel::tunnel {

class KafkaSink : public ChangeSink {
 public:
  // `origin`: the source database, tunnel name and installation id the
  // messages carry (publish/envelope.h).
  static Result<std::unique_ptr<KafkaSink>> Create(const KafkaConfig& config,
                                                   publish::Origin origin, DeliveryFn on_delivery,
                                                   bool packed_chunks = true);
  // The COPY text of one chunk message stays below this (a row larger than
  // it goes alone): under the brokers' default message.max.bytes (1 MB).
  static constexpr size_t kChunkMessageBytes = 512 << 10;
  void SetTables(const std::vector<TableSpec>* tables) override;
  Status Send(const Change& change, int32_t partition, uint64_t token, int32_t* sent_to) override;
  // To partition 0 of config.ticks_topic().
  Status SendTickEnd(const Position& end, uint64_t token) override;
  Status PrepareTickEnds() override;
  // Serves both producers' delivery reports (the records' without waiting).
  void Poll(int timeout_ms) override;
  int Flush(int timeout_ms) override;
  Result<int> PartitionCount(uint32_t table) override;
  Status Health() const override;
  // After a fatal error that can heal, replaces the producer that hit it with
  // a new one (a new producer id); what the old one held is purged.
  Status Recover() override;
  int64_t bytes_sent() const override { return bytes_sent_; }
  bool Chained() const override { return true; }
  const char* receiver() const override { return "the broker"; }
  void SetChainHeads(uint32_t table, std::vector<Position> heads) override;
  bool TakesPackedChunks() const override { return packed_chunks_; }
  Status SplitChunk(Change&& packed, std::vector<std::pair<int32_t, Change>>* parts) override;
  // For tests (fault injection): the producer of the changes.
  broker::Producer& producer() { return *producer_; }
  // The end-of-tick records' producer; null before PrepareTickEnds().
  broker::Producer* ticks_producer() { return ticks_producer_.get(); }

 private:
  // A producer for end-of-tick records, counting their deliveries.
  Result<std::unique_ptr<broker::Producer>> NewTicksProducer();
  KafkaSink(const KafkaConfig& config, publish::Origin origin, DeliveryFn on_delivery)
      : config_(config), origin_(std::move(origin)), on_delivery_(std::move(on_delivery)) {}
  // Send() of an encoded change with kafka.format = "connect-json".
  Status SendConnect(const Change& change, int32_t partition, int n, uint64_t token,
                     int32_t* sent_to);
  const std::vector<TableSpec>* tables_ = nullptr;
  KafkaConfig config_;
  bool packed_chunks_ = true;
  publish::Origin origin_;
  DeliveryFn on_delivery_;
  std::unique_ptr<publish::EnvelopeEncoder> encoder_;
  std::unique_ptr<publish::ConnectEncoder> connect_;  // kafka.format = "connect-json"
  std::unique_ptr<broker::Producer> producer_;
  // End-of-tick records' own (PrepareTickEnds() creates it), whether the
  // broker stored one of its records yet, and how many are in flight: until
  // one is stored, SendTickEnd() sends one at a time.
  std::unique_ptr<broker::Producer> ticks_producer_;
  bool ticks_stored_ = false;
  int ticks_in_flight_ = 0;
  std::map<uint32_t, int> partitions_;
  // Per table, per partition: the position of the last message sent there
  // (this session), or the recorded head; the zero Position before the first.
  std::vector<std::vector<Position>> heads_;
  std::string key_, value_, connect_key_;
  // SplitChunk's: a row's key columns, each row's fields.
  Change key_row_;
  std::vector<std::optional<std::string>> fields_;
  int64_t bytes_sent_ = 0;
  // (table, partition) sent to since the last end-of-tick record (or since
  // the session started: its schema markers go to every partition).
  std::set<std::pair<uint32_t, int32_t>> touched_;
  // Notes a message sent to (table, partition). insert(), unlike emplace(),
  // makes no node when the pair is there already: for all but a tick's
  // first message per partition, a malloc and a free per message saved.
  void Touch(uint32_t table, int32_t partition) { touched_.insert({table, partition}); }
};

}  // namespace datatunnel::tunnel
