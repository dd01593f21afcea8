#include "tunnel/kafka_sink.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/clock.h"
#include "pg/connection.h"

namespace datatunnel::tunnel {

namespace {

constexpr const char* kProducerId = "datatunnel-producer";
constexpr const char* kTicksProducerId = "datatunnel-ticks";

}  // namespace

Result<std::unique_ptr<KafkaSink>> KafkaSink::Create(const KafkaConfig& config,
                                                     publish::Origin origin, DeliveryFn on_delivery,
                                                     bool packed_chunks) {
  std::unique_ptr<KafkaSink> sink(new KafkaSink(config, std::move(origin), std::move(on_delivery)));
  // Only our own format has chunks (other formats are read by other sinks).
  sink->packed_chunks_ = packed_chunks && config.format == KafkaConfig::Format::kDatatunnel;
  DT_ASSIGN_OR_RETURN(sink->producer_,
                      broker::Producer::Create(config, sink->on_delivery_, kProducerId));
  return sink;
}

Status KafkaSink::Recover() {
  for (auto* p : {&producer_, &ticks_producer_}) {
    if (!*p) continue;
    Status fatal = (*p)->FatalError();
    if (fatal.ok()) continue;
    if (!fatal.IsRetryable()) return fatal;  // a cause a new producer cannot fix
    spdlog::warn(
        "producer: {}; replacing it with a new Kafka producer, which publishes again what the old "
        "one had not delivered",
        fatal.message());
    (*p)->Purge();  // its delivery reports fail what it held; the session is over
    p->reset();
    if (p == &ticks_producer_) {
      DT_ASSIGN_OR_RETURN(*p, NewTicksProducer());
    } else {
      DT_ASSIGN_OR_RETURN(*p, broker::Producer::Create(config_, on_delivery_, kProducerId));
    }
  }
  return Status::OK();
}

Result<std::unique_ptr<broker::Producer>> KafkaSink::NewTicksProducer() {
  ticks_stored_ = false;
  ticks_in_flight_ = 0;
  return broker::Producer::Create(
      config_,
      [this](uint64_t token, const Status& st) {
        --ticks_in_flight_;
        if (st.ok()) ticks_stored_ = true;
        on_delivery_(token, st);
      },
      kTicksProducerId, broker::Producer::Role::kTickEnds);
}

void KafkaSink::Poll(int timeout_ms) {
  if (ticks_producer_) ticks_producer_->Poll(0);
  producer_->Poll(timeout_ms);
  if (ticks_producer_ && timeout_ms > 0) ticks_producer_->Poll(0);
}

int KafkaSink::Flush(int timeout_ms) {
  const int64_t deadline = MonotonicMicros() + int64_t{timeout_ms} * 1000;
  int left = producer_->Flush(timeout_ms);
  if (!ticks_producer_) return left;
  const int64_t rest_ms = std::max<int64_t>(0, (deadline - MonotonicMicros()) / 1000);
  return left + ticks_producer_->Flush(static_cast<int>(rest_ms));
}

Status KafkaSink::Health() const {
  Status st = producer_->FatalError();
  if (st.ok() && ticks_producer_) st = ticks_producer_->FatalError();
  return st;
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
  Touch(change.table, partition);
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
  Touch(change.table, partition);
  *sent_to = partition;
  bytes_sent_ += static_cast<int64_t>(value_.size() + connect_key_.size());
  return st;
}

Status KafkaSink::SplitChunk(Change&& packed, std::vector<std::pair<int32_t, Change>>* parts) {
  DT_ASSIGN_OR_RETURN(int n, PartitionCount(packed.table));
  const TableSpec& spec = (*tables_)[packed.table];
  const std::string_view text = packed.row.Get(0);
  const int64_t first_seq = packed.pos.seq - (packed.packed_rows - 1);
  // Per partition: the rows gathered, how many, the last one's number.
  struct Part {
    std::string text;
    int64_t rows = 0;
    int64_t last = 0;
  };
  std::vector<Part> open(static_cast<size_t>(n));
  auto flush = [&](int32_t p) {
    Part& part = open[static_cast<size_t>(p)];
    if (part.rows == 0) return;
    Change c;
    c.op = Op::kRead;
    c.table = packed.table;
    c.pos = packed.pos;
    c.pos.seq = first_seq + part.last;
    c.captured_us = packed.captured_us;
    c.packed_rows = part.rows;
    c.row.Assign(std::move(part.text));
    parts->emplace_back(p, std::move(c));
    part = Part{};
  };
  // Only the key's fields are looked at; the widest key column bounds the
  // fields split off each line.
  size_t key_fields = 0;
  for (size_t k : spec.key) key_fields = std::max(key_fields, k + 1);
  int64_t row = 0;
  for (size_t at = 0; at < text.size(); ++row) {
    size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(at, end - at);
    int32_t p = 0;
    if (n > 1 && !spec.key.empty()) {
      // The key as a row's own message would carry it: its JSON, hashed.
      key_row_.table = packed.table;
      key_row_.op = Op::kRead;
      key_row_.row.Reset(spec.columns.size());
      if (line.find('\\') == std::string_view::npos) {
        size_t f = 0, from = 0;
        for (; f < key_fields; ++f) {
          size_t tab = line.find('\t', from);
          if (tab == std::string_view::npos) tab = line.size();
          if (spec.IsKey(f)) key_row_.row.Set(f, line.substr(from, tab - from));
          from = tab + 1;
          if (from > line.size()) break;
        }
        if (f + 1 < key_fields) {
          return Status::Fatal(fmt::format("snapshot of {}: a row of a chunk lacks its key",
                                           spec.source.ToString()));
        }
      } else {
        // Escapes (or NULL, \N): unescape the line.
        if (!pg::SplitCopyLine(line, &fields_) || fields_.size() < key_fields) {
          return Status::Fatal(
              fmt::format("snapshot of {}: cannot read a row of a chunk", spec.source.ToString()));
        }
        for (size_t k : spec.key) {
          if (fields_[k]) key_row_.row.Set(k, *fields_[k]);
        }
      }
      encoder_->EncodeKey(key_row_, &key_);
      p = broker::KeyPartition(key_, n);
    }
    Part& part = open[static_cast<size_t>(p)];
    if (part.rows > 0 && part.text.size() + line.size() + 1 > kChunkMessageBytes) flush(p);
    part.text.append(line);
    part.text.push_back('\n');
    ++part.rows;
    part.last = row;
    at = end + 1;
  }
  for (int32_t p = 0; p < n; ++p) flush(p);
  return Status::OK();
}

Status KafkaSink::PrepareTickEnds() {
  if (!ticks_producer_) {
    DT_ASSIGN_OR_RETURN(ticks_producer_, NewTicksProducer());
  }
  // Its connection, metadata and producer id before the first tick.
  return ticks_producer_->PartitionCount(config_.ticks_topic(), 10000).status();
}

Status KafkaSink::SendTickEnd(const Position& end, uint64_t token) {
  // A new producer's first record goes alone: a broker that has no state
  // for a producer on a partition accepts its second request even when the
  // first failed, and librdkafka then reports the first one delivered
  // ("implicitly acked", docs/architecture.md, Guarantees). Once a record is
  // stored the broker refuses a request out of sequence. (The changes'
  // producer does the same with its schema markers at session start.)
  if (!ticks_stored_ && ticks_in_flight_ > 0) {
    return Status::Retryable("the first end-of-tick record of this producer is not stored yet");
  }
  TickEnd record;
  record.end = end;
  record.parts.reserve(touched_.size());
  for (const auto& [table, partition] : touched_) {
    record.parts.push_back(
        {(*tables_)[table].topic, partition, heads_[table][static_cast<size_t>(partition)]});
  }
  publish::EncodeTickEnd(origin_, record, &value_);
  if (!ticks_producer_) DT_RETURN_IF_ERROR(PrepareTickEnds());
  Status st = ticks_producer_->Send(config_.ticks_topic(), 0, {}, value_, token);
  if (!st.ok()) return st;
  ++ticks_in_flight_;
  touched_.clear();
  bytes_sent_ += static_cast<int64_t>(value_.size());
  return st;
}

}  // namespace datatunnel::tunnel
