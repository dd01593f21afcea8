// KafkaSource, for topics written by Debezium's PostgreSQL connector
// (kafka.format = "debezium"): what replaces our envelope's checks.
#include <fmt/format.h>

#include "tunnel/kafka_source.h"

namespace datatunnel::tunnel {

Status KafkaSource::DebeziumItem(const broker::Message& m, uint32_t table, apply::Item* item) {
  const InboundMessage v = m.view();
  apply::DebeziumDecoder& decoder = *debezium_;
  Status dst = decoder.Decode(v.key, v.value, table, &item->change);
  if (dst.code() == StatusCode::kFatal) {
    // A column the cached target columns lack: it may have been added to the
    // target since they were read. Look before stopping.
    bool changed = false;
    if (core_->Redescribe(table, &changed).ok() && changed) {
      decoder.Refresh();
      dst = decoder.Decode(v.key, v.value, table, &item->change);
    }
  }
  if (dst.code() == StatusCode::kBadConfig) {
    return Status::BadConfig(fmt::format(
        "{} [{}] offset {}: {}; nothing was applied. Each [[tables]] entry reads the topic of "
        "its own source table: set kafka.topic_prefix to the connector's topic.prefix, or the "
        "table's topic to the one Debezium writes it to",
        v.topic, v.partition, v.offset, dst.message()));
  }
  // Debezium's events carry no link to their predecessor: nothing to chain.
  // Their order in the partition is their order on the source, so the offset
  // is the position (plus one: position zero is "nothing applied").
  item->chained = false;
  item->prev.reset();
  item->broadcast_partitions = 0;
  if (dst.code() == StatusCode::kBadData) {
    DT_RETURN_IF_ERROR(DeadLetter(m, dst));
    item->kind = apply::Item::Kind::kDeadLetter;
    item->change.table = table;
    return Status::OK();
  }
  if (!dst.ok())
    return dst.WithContext(fmt::format("{} [{}] offset {}", v.topic, v.partition, v.offset));
  item->change.pos = Position{0, 0, v.offset + 1, 0};
  return Status::OK();
}

}  // namespace datatunnel::tunnel
