// KafkaSource: one message -> the items the applier takes (decoding, the
// checks of our envelope, snapshot chunks unpacked when their columns do
// not line up with the target's, bad messages
// to the dead-letter topic). Debezium's topics: kafka_source_debezium.cc.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "tunnel/kafka_source.h"

namespace datatunnel::tunnel {

Status KafkaSource::ToItem(const broker::Message& m, int table, apply::Item* item) {
  const InboundMessage v = m.view();
  item->stream = StreamName(v.topic);
  item->partition = v.partition;
  item->offset = v.offset;
  if (table < 0 || v.null_value) {
    item->kind = apply::Item::Kind::kIgnored;  // tombstones and foreign topics carry no change
    item->change.table = table < 0 ? 0 : static_cast<uint32_t>(table);
    return Status::OK();
  }
  const auto t = static_cast<uint32_t>(table);
  if (debezium_) return DebeziumItem(m, t, item);
  Status dst = Decode(v, t, item);
  if (dst.code() == StatusCode::kBadConfig) return dst;  // nothing of this batch is applied
  item->broadcast_partitions = decoder_->broadcast_partitions();
  item->chained = dst.ok();
  item->prev = decoder_->prev();
  if (dst.code() == StatusCode::kBadData) {
    DT_RETURN_IF_ERROR(DeadLetter(m, dst));
    item->kind = apply::Item::Kind::kDeadLetter;
    item->change.table = t;
    // A dead letter of ours still takes its place in the chain, so the
    // next message, which links to it, is no gap.
    item->chained = decoder_->ReadChain(v.value, &item->change.pos, &item->prev);
  } else if (!dst.ok()) {
    return dst.WithContext(fmt::format("{} [{}] offset {}", v.topic, v.partition, v.offset));
  } else if (item->change.op == Op::kTruncate && item->broadcast_partitions > 1 && !whole_ticks()) {
    cut_[{std::string(v.topic), v.partition}] = item->change.pos;
  } else if (item->change.op == Op::kMarker && item->change.marker == Marker::kSchema) {
    // Processed whatever its position: adding a column is idempotent.
    bool changed = false;
    DT_RETURN_IF_ERROR(core_->EnsureColumns(t, decoder_->schema_columns(), &changed));
    if (changed) decoder_->Refresh();
    item->kind = apply::Item::Kind::kIgnored;
  }
  return Status::OK();
}

Status KafkaSource::AddItems(const broker::Message& m, int table, std::vector<apply::Item>* out) {
  apply::Item item;
  DT_RETURN_IF_ERROR(ToItem(m, table, &item));
  if (item.kind != apply::Item::Kind::kChange || item.change.packed_rows == 0 ||
      decoder_->chunk_passthrough()) {
    out->push_back(std::move(item));
    return Status::OK();
  }
  unpacked_.clear();
  if (Status st = decoder_->UnpackChunk(item.change, &unpacked_); !st.ok()) {
    DT_RETURN_IF_ERROR(DeadLetter(m, st));
    item.kind = apply::Item::Kind::kDeadLetter;
    out->push_back(std::move(item));
    return Status::OK();
  }
  // Each row links to the one before it, the first to the chunk's "prev":
  // the partition's chain reads on as if the rows came one by one.
  std::optional<Position> prev = item.prev;
  for (Change& c : unpacked_) {
    apply::Item row;
    row.stream = item.stream;
    row.partition = item.partition;
    row.offset = item.offset;
    row.chained = item.chained;
    row.prev = prev;
    prev = c.pos;
    row.change = std::move(c);
    out->push_back(std::move(row));
  }
  return Status::OK();
}

Status KafkaSource::Decode(const InboundMessage& v, uint32_t table, apply::Item* item) {
  apply::EnvelopeDecoder& decoder = *decoder_;
  Status dst = decoder.Decode(v.value, table, &item->change);
  if (dst.code() == StatusCode::kFatal) {
    // A column the cached target columns lack: `init` may have added
    // it to the target since they were read. Look before stopping.
    bool changed = false;
    if (core_->Redescribe(table, &changed).ok() && changed) {
      decoder.Refresh();
      dst = decoder.Decode(v.value, table, &item->change);
    }
  }
  if (dst.code() == StatusCode::kBadConfig && decoder.origin_tunnel() == options_.tunnel) {
    // `init` may have bound the tunnel to a new installation of its
    // source (set up again) since this consumer started.
    auto fresh = core_->ReloadSourceInstall();
    if (fresh.ok() && *fresh == decoder.origin_install()) {
      decoder.ExpectOrigin(options_.tunnel, *fresh);
      dst = decoder.Decode(v.value, table, &item->change);
    }
  }
  if (dst.code() != StatusCode::kBadConfig) return dst;
  const bool same_name = decoder.origin_tunnel() == options_.tunnel;
  return Status::BadConfig(fmt::format(
      "{} [{}] offset {}: {}; nothing was applied. {}", v.topic, v.partition, v.offset,
      dst.message(),
      same_name ? "Two sources publish as this tunnel to the same topics: give one of them "
                  "another [tunnel] name (or kafka.topic_prefix) and run `datatunnel init` "
                  "with it; if this tunnel's source was set up anew, run `datatunnel init` to "
                  "bind the target to it"
                : "Each tunnel needs its own topics: give the two tunnels different "
                  "kafka.topic_prefix (or [[tables]] topic) settings"));
}

Status KafkaSource::DeadLetter(const broker::Message& m, const Status& why) {
  const InboundMessage v = m.view();
  if (options_.pipeline.on_bad_message == BadMessagePolicy::kStop) {
    return Status::Fatal(fmt::format(
        "bad message at {} [{}] offset {}: {}; fix or skip it (on_bad_message = \"dlq\" sends such "
        "messages to {}.dlq instead of stopping)",
        v.topic, v.partition, v.offset, why.message(), v.topic));
  }
  if (!dlq_) {
    DT_ASSIGN_OR_RETURN(dlq_, broker::Producer::Create(
                                  options_.kafka,
                                  [this](uint64_t, const Status& st) {
                                    --dlq_pending_;
                                    if (!st.ok() && dlq_error_.ok()) dlq_error_ = st;
                                  },
                                  "datatunnel-dlq"));
  }
  std::vector<broker::Header> headers = {
      {"datatunnel.error", why.message()},
      {"datatunnel.topic", std::string(v.topic)},
      {"datatunnel.partition", std::to_string(v.partition)},
      {"datatunnel.offset", std::to_string(v.offset)},
  };
  const std::string topic = std::string(v.topic) + ".dlq";
  for (;;) {
    Status st = dlq_->Send(topic, broker::kAnyPartition, v.key, v.value, 0, &headers);
    if (st.ok()) break;
    if (!st.IsRetryable()) return st;
    dlq_->Poll(10);
  }
  ++dlq_pending_;
  spdlog::warn("consumer: bad message at {} [{}] offset {} sent to {}: {}", v.topic, v.partition,
               v.offset, topic, why.message());
  return Status::OK();
}

}  // namespace datatunnel::tunnel
