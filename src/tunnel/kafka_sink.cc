#include "tunnel/kafka_sink.h"

namespace datatunnel::tunnel {

Result<std::unique_ptr<KafkaSink>> KafkaSink::Create(const KafkaConfig& config,
                                                     std::string source_db,
                                                     DeliveryFn on_delivery) {
  std::unique_ptr<KafkaSink> sink(new KafkaSink(std::move(source_db)));
  DT_ASSIGN_OR_RETURN(sink->producer_, broker::Producer::Create(config, std::move(on_delivery),
                                                                "datatunnel-producer"));
  return sink;
}

void KafkaSink::SetTables(const std::vector<TableSpec>* tables) {
  tables_ = tables;
  encoder_ = std::make_unique<publish::EnvelopeEncoder>(tables, db_);
  partitions_.clear();
}

Result<int> KafkaSink::PartitionCount(uint32_t table) {
  auto it = partitions_.find(table);
  if (it != partitions_.end()) return it->second;
  DT_ASSIGN_OR_RETURN(int n, producer_->PartitionCount((*tables_)[table].topic, 10000));
  partitions_[table] = n;
  return n;
}

Status KafkaSink::Send(const Change& change, int32_t partition, uint64_t token) {
  int broadcast = 0;
  if (change.op == Op::kTruncate || change.op == Op::kMarker) {
    DT_ASSIGN_OR_RETURN(broadcast, PartitionCount(change.table));
  }
  encoder_->Encode(change, &key_, &value_, broadcast);
  Status st = producer_->Send((*tables_)[change.table].topic, partition, key_, value_, token);
  if (st.ok()) bytes_sent_ += static_cast<int64_t>(value_.size() + key_.size());
  return st;
}

}  // namespace datatunnel::tunnel
