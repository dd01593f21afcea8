#include "tunnel/kafka_sink.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace datatunnel::tunnel {

Result<std::unique_ptr<KafkaSink>> KafkaSink::Create(const KafkaConfig& config,
                                                     publish::Origin origin,
                                                     DeliveryFn on_delivery) {
  std::unique_ptr<KafkaSink> sink(new KafkaSink(config, std::move(origin), std::move(on_delivery)));
  DT_ASSIGN_OR_RETURN(sink->producer_,
                      broker::Producer::Create(config, sink->on_delivery_, "datatunnel-producer"));
  return sink;
}

Status KafkaSink::Recover() {
  Status fatal = producer_->FatalError();
  if (!fatal.IsRetryable()) return fatal;  // OK, or a cause a new producer cannot fix
  spdlog::warn(
      "producer: {}; replacing it with a new Kafka producer, which publishes again what the old "
      "one had not delivered",
      fatal.message());
  producer_->Purge();  // its delivery reports fail what it held; the session is over
  producer_.reset();
  DT_ASSIGN_OR_RETURN(producer_,
                      broker::Producer::Create(config_, on_delivery_, "datatunnel-producer"));
  return Status::OK();
}

void KafkaSink::SetTables(const std::vector<TableSpec>* tables) {
  tables_ = tables;
  encoder_ = std::make_unique<publish::EnvelopeEncoder>(tables, origin_);
  if (config_.connect_json()) connect_ = std::make_unique<publish::ConnectEncoder>(tables, origin_);
  partitions_.clear();
  heads_.assign(tables->size(), {});
  touched_.clear();
}

void KafkaSink::SetChainHeads(uint32_t table, std::vector<Position> heads) {
  heads_[table] = std::move(heads);
  auto n = partitions_.find(table);
  if (n != partitions_.end() && heads_[table].size() < static_cast<size_t>(n->second)) {
    heads_[table].resize(static_cast<size_t>(n->second));
  }
}

Result<int> KafkaSink::PartitionCount(uint32_t table) {
  auto it = partitions_.find(table);
  if (it != partitions_.end()) return it->second;
  DT_ASSIGN_OR_RETURN(int n, producer_->PartitionCount((*tables_)[table].topic, 10000));
  partitions_[table] = n;
  // Partitions beyond the recorded heads start their chain here.
  if (heads_[table].size() < static_cast<size_t>(n)) heads_[table].resize(static_cast<size_t>(n));
  return n;
}

Status KafkaSink::Send(const Change& change, int32_t partition, uint64_t token, int32_t* sent_to) {
  // Counted once per session (a topic's partitions are not expected to
  // change while the tunnel runs), so choosing the partition costs a hash.
  DT_ASSIGN_OR_RETURN(int n, PartitionCount(change.table));
  const bool broadcast = change.op == Op::kTruncate || change.op == Op::kMarker;
  encoder_->EncodeKey(change, &key_);
  // A table without a key (full-row identity) has a null Kafka key and all
  // its changes in partition 0: a delete must follow the insert of its row.
  const bool keyless = (*tables_)[change.table].key.empty();
  if (partition < 0) partition = broadcast || keyless ? 0 : broker::KeyPartition(key_, n);
  if (partition >= n) {
    return Status::Fatal(fmt::format("internal: partition {} of topic {} which has {}", partition,
                                     (*tables_)[change.table].topic, n));
  }
  Position& head = heads_[change.table][static_cast<size_t>(partition)];
  if (connect_) return SendConnect(change, partition, n, token, sent_to);
  encoder_->EncodeValue(change, &value_, broadcast ? n : 0, &head);
  Status st = producer_->Send((*tables_)[change.table].topic, partition, key_, value_, token);
  if (!st.ok()) return st;
  head = change.pos;
  touched_.emplace(change.table, partition);
  *sent_to = partition;
  bytes_sent_ += static_cast<int64_t>(value_.size() + key_.size());
  return st;
}

Status KafkaSink::SendConnect(const Change& change, int32_t partition, int n, uint64_t token,
                              int32_t* sent_to) {
  const bool broadcast = change.op == Op::kTruncate || change.op == Op::kMarker;
  Position& head = heads_[change.table][static_cast<size_t>(partition)];
  connect_->EncodeKey(change, &connect_key_);
  connect_->EncodeValue(change, &value_, broadcast ? n : 0, &head);
  // Control messages carry the header a Connect sink filters on; the copy
  // of a TRUNCATE on partition 0 is Debezium's own truncate event.
  std::vector<broker::Header> headers;
  if (change.op == Op::kMarker) {
    headers.emplace_back(publish::kControlHeader,
                         change.marker == Marker::kSchema ? "schema" : "snapshot_done");
  } else if (change.op == Op::kTruncate && partition != 0) {
    headers.emplace_back(publish::kControlHeader, "truncate");
  }
  Status st = producer_->Send((*tables_)[change.table].topic, partition, connect_key_, value_,
                              token, headers.empty() ? nullptr : &headers);
  if (!st.ok()) return st;
  head = change.pos;
  touched_.emplace(change.table, partition);
  *sent_to = partition;
  bytes_sent_ += static_cast<int64_t>(value_.size() + connect_key_.size());
  return st;
}

Status KafkaSink::SendTickEnd(const Position& end, uint64_t token) {
  TickEnd record;
  record.end = end;
  record.parts.reserve(touched_.size());
  for (const auto& [table, partition] : touched_) {
    record.parts.push_back(
        {(*tables_)[table].topic, partition, heads_[table][static_cast<size_t>(partition)]});
  }
  publish::EncodeTickEnd(origin_, record, &value_);
  Status st = producer_->Send(config_.ticks_topic(), 0, {}, value_, token);
  if (!st.ok()) return st;
  touched_.clear();
  bytes_sent_ += static_cast<int64_t>(value_.size());
  return st;
}

}  // namespace datatunnel::tunnel
