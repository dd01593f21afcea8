// KafkaSink: encodes changes as envelopes and publishes them, keyed by the
// row's key, to each table's topic.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "broker/kafka.h"
#include "publish/envelope.h"
#include "tunnel/sink.h"

namespace datatunnel::tunnel {

class KafkaSink : public ChangeSink {
 public:
  static Result<std::unique_ptr<KafkaSink>> Create(const KafkaConfig& config, std::string source_db,
                                                   DeliveryFn on_delivery);
  void SetTables(const std::vector<TableSpec>* tables) override;
  Status Send(const Change& change, int32_t partition, uint64_t token) override;
  void Poll(int timeout_ms) override { producer_->Poll(timeout_ms); }
  int Flush(int timeout_ms) override { return producer_->Flush(timeout_ms); }
  Result<int> PartitionCount(uint32_t table) override;
  Status Health() const override { return producer_->FatalError(); }
  int64_t bytes_sent() const override { return bytes_sent_; }

 private:
  explicit KafkaSink(std::string db) : db_(std::move(db)) {}
  const std::vector<TableSpec>* tables_ = nullptr;
  std::string db_;
  std::unique_ptr<publish::EnvelopeEncoder> encoder_;
  std::unique_ptr<broker::Producer> producer_;
  std::map<uint32_t, int> partitions_;
  std::string key_, value_;
  int64_t bytes_sent_ = 0;
};

}  // namespace datatunnel::tunnel
