#include "tunnel/kafka_source.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>

#include "core/clock.h"

namespace datatunnel::tunnel {

KafkaSource::KafkaSource(const TargetOptions& options, metrics::Metrics* metrics,
                         const StopSource* stop)
    : options_(options), metrics_(metrics), stop_(stop) {}

Status KafkaSource::Open(TargetCore* core) {
  core_ = core;
  if (const char* ms = std::getenv(kNoEndsWarnEnv); ms && std::atoi(ms) > 0) {
    no_ends_warn_us_ = int64_t{std::atoi(ms)} * 1000;
  }
  std::vector<std::string> topics;
  for (const auto& t : options_.tables) topics.push_back(t.topic);
  if (whole_ticks()) {
    DT_RETURN_IF_ERROR(TakeApplyLock());
    // The control topic from the record stored with the last whole ticks.
    Result<apply::ConsistencyState> c = Status::Retryable("not loaded");
    while (!stop_->stop_requested()) {
      c = core_->Consistency();
      if (c.ok() || !c.status().IsRetryable()) break;
      stop_->SleepFor(500);
    }
    if (stop_->stop_requested()) return Status::Cancelled();
    if (!c.ok()) return c.status();
    const std::string ticks = options_.kafka.ticks_topic();
    ticks_offset_ = c->found && c->stream == ticks && c->offset >= 0 ? c->offset + 1 : 0;
    topics.push_back(ticks);
    if (c->found) metrics_->consistent_tick = c->end.tick;
  }
  // Create waits until the brokers know every topic, so the first group
  // join assigns all their partitions.
  DT_ASSIGN_OR_RETURN(consumer_, broker::Consumer::Create(
                                     options_.kafka, topics, this,
                                     [this] { return stop_->stop_requested(); }, whole_ticks()));
  decoder_ = std::make_unique<apply::EnvelopeDecoder>(&core_->targets());
  decoder_->ExpectOrigin(options_.tunnel, core_->source_install());
  if (options_.kafka.debezium()) {
    debezium_ = std::make_unique<apply::DebeziumDecoder>(&core_->targets());
  }
  spdlog::info("consumer: applying {} topic(s) to the target as group \"{}\"", topics.size(),
               options_.kafka.group_id);
  return Status::OK();
}

void KafkaSource::Close() {
  CommitOffsets(true);  // Close() waits for it
  metrics_->consumer_ready = 0;
  if (consumer_) {
    Status closed = consumer_->Close();
    if (!closed.ok()) spdlog::warn("consumer: {}", closed.message());
  }
  lock_conn_.reset();  // releases the apply lock
  metrics_->applier = 0;
}

Status KafkaSource::TakeApplyLock(const std::function<void()>& idle, bool standing_by) {
  bool announced = standing_by;
  for (;;) {
    if (!lock_conn_ || lock_conn_->IsBroken()) {
      auto c =
          pg::OpenWithRetry(options_.connect, 1 << 30, [this] { return stop_->stop_requested(); });
      if (stop_->stop_requested()) return Status::Cancelled();
      if (!c.ok()) return c.status();
      lock_conn_ = std::move(*c);
    }
    auto got = apply::TryApplyLock(*lock_conn_, options_.tunnel);
    if (got.ok() && *got) break;
    if (!got.ok() && !got.status().IsRetryable()) return got.status();
    if (!announced && got.ok()) {
      spdlog::info(
          "consumer: another consumer applies tunnel \"{}\" to the {} (apply_consistency = "
          "\"transaction\" needs every partition); standing by",
          options_.tunnel, lock_conn_->description());
      announced = true;
      metrics_->consumer_ready = 1;  // a standby is ready: it takes over when needed
    }
    if (idle) {
      idle();
      if (stop_->stop_requested()) return Status::Cancelled();
    } else if (stop_->SleepFor(1000)) {
      return Status::Cancelled();
    }
  }
  metrics_->consumer_ready = 0;
  metrics_->applier = 1;
  last_lock_check_us_ = MonotonicMicros();
  if (announced) spdlog::info("consumer: took over applying");
  return Status::OK();
}

Status KafkaSource::CheckApplyLock() {
  const int64_t now = MonotonicMicros();
  if (now - last_lock_check_us_ < 2'000'000) return Status::OK();
  last_lock_check_us_ = now;
  if (lock_conn_ && lock_conn_->Exec("SELECT 1").ok()) return Status::OK();
  // The session that held the lock is gone: take it again on a new one,
  // unless another consumer took it meanwhile (then this one stands down;
  // its batches could only fail on the position guard anyway).
  auto c = pg::Connection::Open(options_.connect);
  if (!c.ok()) return Status::OK();  // the target is down: the apply waits too
  lock_conn_ = std::move(*c);
  auto got = apply::TryApplyLock(*lock_conn_, options_.tunnel);
  if (!got.ok()) return Status::OK();
  if (*got) {
    spdlog::warn("consumer: took the apply lock again on a new session");
    return Status::OK();
  }
  // Its batches could only fail on the position guard now: step down.
  metrics_->applier = 0;
  spdlog::warn(
      "consumer: the session holding the apply lock ended and another consumer took over "
      "applying; standing by");
  core_->AbortStream();
  DT_RETURN_IF_ERROR(TakeApplyLock([this] { KeepAlive(); }, /*standing_by=*/true));
  for (;;) {
    Status st = Rewind();
    if (st.ok() || !st.IsRetryable()) return st;
    // E.g. a seek librdkafka did not finish in time: try again.
    spdlog::warn("consumer: {}; reading again from the positions stored on the target",
                 st.message());
    KeepAlive();  // about a second, serving the Kafka consumer
    if (stop_->stop_requested()) return Status::Cancelled();
  }
}

std::string_view KafkaSource::StreamName(std::string_view topic) {
  auto name = topic_names_.find(topic);
  if (name == topic_names_.end()) name = topic_names_.emplace(topic).first;
  return *name;
}

Status KafkaSource::AddTickEnd(const broker::Message& m) {
  const InboundMessage v = m.view();
  if (v.partition != 0 || v.null_value) return Status::OK();  // only partition 0 is written
  TickEnd end;
  Status st = apply::DecodeTickEnd(v.value, &end);
  if (!st.ok()) {
    return Status::Fatal(fmt::format(
        "{} [{}] offset {}: {}; this topic carries only datatunnel's end-of-tick records", v.topic,
        v.partition, v.offset, st.message()));
  }
  if (!options_.tunnel.empty() && end.tunnel != options_.tunnel) {
    return Status::BadConfig(fmt::format(
        "{} [{}] offset {}: an end-of-tick record of tunnel \"{}\", not \"{}\"; nothing was "
        "applied. Each tunnel needs its own topics: give the two tunnels different "
        "kafka.topic_prefix settings",
        v.topic, v.partition, v.offset, end.tunnel, options_.tunnel));
  }
  // Partitions of topics this consumer does not apply (a table no longer
  // configured) cannot hold it back.
  std::erase_if(end.parts,
                [this](const TickEnd::Part& p) { return core_->TableForTopic(p.topic) < 0; });
  apply::Item item;
  item.stream = StreamName(v.topic);
  item.partition = v.partition;
  item.offset = v.offset;
  item.kind = apply::Item::Kind::kTickEnd;
  item.change.op = Op::kMarker;
  item.change.marker = Marker::kTickEnd;
  item.change.pos = end.end;
  gate_.AddEnd(std::move(item), std::move(end));
  warned_no_ends_ = false;
  unended_first_ = unended_last_ = Position{};
  return Status::OK();
}

void KafkaSource::OnAssigned(std::vector<TopicPartition>* partitions) {
  for (auto& p : *partitions) {
    if (whole_ticks() && p.topic == options_.kafka.ticks_topic()) {
      // The control topic: from the record after the one stored with the
      // last whole ticks (only partition 0 is written).
      p.offset = p.partition == 0 ? ticks_offset_ : kOffsetBeginning;
      continue;
    }
    const int t = core_->TableForTopic(p.topic);
    if (t < 0) continue;
    // Start right after what the target has applied. If the target cannot be
    // reached now, start from the beginning: what is already applied is
    // dropped by position, so that costs time, never correctness.
    Result<apply::PartitionState> st = Status::Retryable("not loaded");
    const int64_t deadline = MonotonicMicros() + 30'000'000;
    while (!stop_->stop_requested()) {
      st = core_->State(p.topic, p.partition, static_cast<uint32_t>(t));
      if (st.ok() || MonotonicMicros() > deadline) break;
      stop_->SleepFor(500);
    }
    if (st.ok()) {
      if (whole_ticks()) gate_.Start(p.topic, p.partition, st->tail);
      // Never applied: from offset 0, not from the oldest offset the broker
      // still has. If retention already removed offset 0, the consumer stops
      // with "no longer on the broker" instead of silently skipping changes.
      p.offset = st->offset >= 0 ? st->offset + 1 : 0;
      // Whole ticks need no barrier (every copy of a TRUNCATE is in one batch).
      auto open = whole_ticks() ? Result<std::optional<Position>>(std::optional<Position>())
                                : core_->OpenBarrier(p.topic, p.partition);
      if (open.ok() && *open) waiting_[{p.topic, p.partition}] = Waiting{**open, false};
    } else {
      spdlog::warn(
          "consumer: cannot read the stored position of {} [{}] ({}); reading it from "
          "the beginning, already-applied changes will be skipped",
          p.topic, p.partition, st.status().message());
      p.offset = kOffsetBeginning;
    }
    if (whole_ticks() && !st.ok()) gate_.Start(p.topic, p.partition, Position{});
    spdlog::debug("consumer: assigned {} [{}] from offset {}", p.topic, p.partition, p.offset);
  }
}

void KafkaSource::OnRevoked(const std::vector<TopicPartition>& partitions) {
  for (const auto& p : partitions) {
    if (whole_ticks()) gate_.Forget(p.topic, p.partition);
    core_->Forget(p.topic, p.partition);
    waiting_.erase({p.topic, p.partition});
    // Its next owner starts from the target's stored position, and commits.
    uncommitted_.erase({p.topic, p.partition});
  }
}

Status KafkaSource::Next(std::vector<apply::Item>* items, bool* ended) {
  *ended = false;
  msgs_.clear();
  if (!carry_.empty()) {
    msgs_ = std::move(carry_);
    carry_.clear();
  } else if (whole_ticks() && GateFull()) {
    // The gate holds a piece's worth already: hand it out (below) before
    // reading more. Polls that went on while the gate streamed a tick
    // piece by piece held a 1,000,000-row snapshot's rows in memory
    // (360 MB, when chunks were unpacked into rows).
  } else {
    // With whole ticks, at most tick_stream_changes at a time and about
    // kWholeTicksPollBytes of messages: the gate holds no more than that
    // and a poll's worth before it streams a tick.
    size_t max = static_cast<size_t>(options_.pipeline.batch_max_changes);
    size_t max_bytes = 16 << 20;
    if (whole_ticks()) {
      max = std::min(max, static_cast<size_t>(options_.pipeline.tick_stream_changes));
      max_bytes = kWholeTicksPollBytes;
    }
    DT_RETURN_IF_ERROR(
        consumer_->Poll(max, 100, options_.pipeline.batch_max_wait_ms, &msgs_, max_bytes));
    metrics_->consumer_ready = consumer_->Ready() ? 1 : 0;
  }
  if (whole_ticks()) {
    DT_RETURN_IF_ERROR(CheckApplyLock());
    const std::string ticks = options_.kafka.ticks_topic();
    for (const auto& m : msgs_) {
      const InboundMessage v = m.view();
      if (v.topic == ticks) {
        DT_RETURN_IF_ERROR(AddTickEnd(m));
        continue;
      }
      items_.clear();
      // A chunk stays whole (packed) when its columns line up with the
      // target's: the applier writes it with COPY among its tick's changes.
      DT_RETURN_IF_ERROR(AddItems(m, core_->TableForTopic(v.topic), &items_));
      for (auto& item : items_) {
        if (item.kind == apply::Item::Kind::kChange && item.change.op != Op::kMarker) {
          if (unended_first_ == Position{}) unended_first_ = item.change.pos;
          unended_last_ = std::max(unended_last_, item.change.pos);
        }
        gate_.Add(std::move(item));
      }
    }
    msgs_.clear();
    piece_ = false;
    gate_.Release(items);
    const auto stream_at = static_cast<size_t>(options_.pipeline.tick_stream_changes);
    if (items->empty() && GateFull()) {
      // A tick too large to hold whole: hand out a piece of it.
      gate_.ReleasePiece(stream_at, items);
      piece_ = !items->empty();
      // Once per run of a partition's items, not per item (a string each).
      for (size_t i = 0; i < items->size(); ++i) {
        const apply::Item& it = (*items)[i];
        if (i + 1 < items->size() && (*items)[i + 1].stream == it.stream &&
            (*items)[i + 1].partition == it.partition) {
          continue;
        }
        streamed_[{std::string(it.stream), it.partition}] = it.offset + 1;
      }
    }
    // Messages of several ticks held with no end-of-tick record to complete
    // them: a producer running by key sends none.
    const int64_t now = MonotonicMicros();
    const bool several_ticks =
        unended_first_.epoch != unended_last_.epoch || unended_first_.tick != unended_last_.tick;
    if (gate_.held() == 0 || gate_.pending_ends() > 0 || !several_ticks) {
      held_since_us_ = 0;
    } else if (held_since_us_ == 0) {
      held_since_us_ = now;
    } else if (!warned_no_ends_ && now - held_since_us_ > no_ends_warn_us_) {
      warned_no_ends_ = true;
      spdlog::warn(
          "consumer: holding {} message(s) of ticks {} to {} for {} s without an end-of-tick "
          "record on {}; the producer must run with pipeline.apply_consistency = "
          "\"transaction\" too",
          gate_.held(), unended_first_.tick, unended_last_.tick, no_ends_warn_us_ / 1'000'000,
          ticks);
    }
  } else {
    DT_RETURN_IF_ERROR(NextByKey(items));
  }
  // Dead letters must be stored before the offsets that skip them commit.
  while (dlq_ && dlq_pending_ > 0 && !stop_->stop_requested()) dlq_->Poll(50);
  if (!dlq_error_.ok()) return dlq_error_.WithContext("writing to the dead-letter topic");
  return Status::OK();
}

Status KafkaSource::NextByKey(std::vector<apply::Item>* items) {
  DT_RETURN_IF_ERROR(CheckBarriers());
  items->reserve(msgs_.size());
  cut_.clear();
  refetch_.clear();
  // Packed snapshot chunks go to the target in batches of their own: what
  // a batch holds is known from its first change (-1: not yet).
  int packed = -1;
  const auto max_rows = static_cast<size_t>(options_.pipeline.batch_max_changes);
  for (size_t i = 0; i < msgs_.size(); ++i) {
    const broker::Message& m = msgs_[i];
    const InboundMessage v = m.view();
    const auto tp = std::make_pair(std::string(v.topic), v.partition);
    if (cut_.count(tp) || waiting_.count(tp)) {
      refetch_.try_emplace(tp, v.offset);
      continue;
    }
    const size_t before = items->size();
    DT_RETURN_IF_ERROR(AddItems(m, core_->TableForTopic(v.topic), items));
    // Markers, dead letters and ignored items go with either kind.
    const apply::Item* first = items->size() > before ? &(*items)[before] : nullptr;
    if (first && first->kind == apply::Item::Kind::kChange && first->change.op != Op::kMarker) {
      const int kind = first->change.packed_rows > 0 ? 1 : 0;
      if (packed >= 0 && kind != packed) {
        // It starts the next batch: keep it and what follows for then.
        items->resize(before);
        Carry(i);
        break;
      }
      packed = kind;
    }
    if (packed == 0 && items->size() >= max_rows && i + 1 < msgs_.size()) {
      // Chunks unpacked row by row: a batch of at most about max_rows rows.
      Carry(i + 1);
      break;
    }
  }
  if (spdlog::should_log(spdlog::level::trace)) {
    for (const auto& it : *items) {
      spdlog::trace("consumer: batch item {} [{}] @{} op {}", it.stream, it.partition, it.offset,
                    static_cast<char>(it.change.op));
    }
  }
  return Status::OK();
}

bool KafkaSource::GateFull() const {
  return gate_.held() >= static_cast<size_t>(options_.pipeline.tick_stream_changes) ||
         gate_.held_bytes() >= kWholeTicksHeldBytes;
}

void KafkaSource::Carry(size_t from) {
  // Before anything a keepalive polls (carry_ is empty here: Next() took it).
  std::vector<broker::Message> rest;
  rest.reserve(msgs_.size() - from + carry_.size());
  for (size_t j = from; j < msgs_.size(); ++j) rest.emplace_back(std::move(msgs_[j]));
  for (auto& m : carry_) rest.emplace_back(std::move(m));
  carry_ = std::move(rest);
}

Status KafkaSource::Committed(const std::vector<apply::Item>& items) {
  if (paused_) {
    ResumeAll();
    paused_ = false;
  }
  for (const auto& [tp, pos] : cut_) {
    auto done = core_->BarrierDone(tp.first, pos);
    if (!done.ok() || !*done) waiting_[tp] = Waiting{pos, false};
    spdlog::debug("consumer: {} [{}] reached a TRUNCATE ({}): {}", tp.first, tp.second,
                  pos.ToString(), done.ok() && *done ? "it has run" : "waiting for the others");
  }
  for (const auto& [tp, offset] : refetch_) {
    Status s = consumer_->Seek({tp.first, tp.second, offset});
    if (!s.ok()) spdlog::warn("consumer: {}", s.message());
  }
  last_barrier_check_us_ = 0;
  DT_RETURN_IF_ERROR(CheckBarriers());
  for (const auto& [tp, next] : streamed_) uncommitted_[tp] = next;
  streamed_.clear();
  // The last offset of each partition: items come in runs of one partition,
  // so the map is touched once per run, not per message.
  for (size_t i = 0; i < items.size(); ++i) {
    const apply::Item& it = items[i];
    if (i + 1 == items.size() || items[i + 1].partition != it.partition ||
        items[i + 1].stream != it.stream) {
      uncommitted_[{std::string(it.stream), it.partition}] = it.offset + 1;
    }
  }
  CommitOffsets(false);
  return Status::OK();
}

void KafkaSource::CommitOffsets(bool force) {
  const int64_t now = MonotonicMicros();
  if (uncommitted_.empty() || (!force && now - last_commit_us_ < kCommitIntervalUs)) return;
  last_commit_us_ = now;
  std::vector<TopicPartition> commits;
  commits.reserve(uncommitted_.size());
  for (const auto& [tp, next] : uncommitted_) commits.push_back({tp.first, tp.second, next});
  uncommitted_.clear();
  consumer_->CommitAsync(commits);
}

void KafkaSource::ResumeAll() {
  std::vector<TopicPartition> resume;
  for (const auto& tp : consumer_->Assignment()) {
    if (!waiting_.count({tp.topic, tp.partition})) resume.push_back(tp);
  }
  consumer_->Resume(resume);
}

Status KafkaSource::CheckBarriers() {
  const int64_t now = MonotonicMicros();
  if (waiting_.empty() || now - last_barrier_check_us_ < 200'000) return Status::OK();
  last_barrier_check_us_ = now;
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    const TopicPartition tp{it->first.first, it->first.second, -1};
    if (!it->second.paused) {
      consumer_->Pause({tp});
      it->second.paused = true;
    }
    auto done = core_->BarrierDone(tp.topic, it->second.pos);
    if (!done.ok()) return done.status().IsRetryable() ? Status::OK() : done.status();
    if (*done) {
      spdlog::debug("consumer: {} [{}] continues after the TRUNCATE", tp.topic, tp.partition);
      consumer_->Resume({tp});
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  return Status::OK();
}

Status KafkaSource::Rewind() {
  if (paused_) {
    ResumeAll();
    paused_ = false;
  }
  msgs_.clear();
  carry_.clear();
  streamed_.clear();
  piece_ = false;
  gate_.Reset();
  unended_first_ = unended_last_ = Position{};
  DT_ASSIGN_OR_RETURN(auto c, core_->Consistency());
  const std::string ticks = options_.kafka.ticks_topic();
  ticks_offset_ = c.found && c.stream == ticks && c.offset >= 0 ? c.offset + 1 : 0;
  // Where each partition starts, as at its assignment (which also tells the
  // gate each partition's stored tail).
  std::vector<TopicPartition> parts = consumer_->Assignment();
  OnAssigned(&parts);
  for (const auto& tp : parts) {
    DT_RETURN_IF_ERROR(consumer_->Seek(tp));
  }
  spdlog::info("consumer: reading {} partition(s) again from the positions stored on the target",
               parts.size());
  return Status::OK();
}

void KafkaSource::KeepAlive() {
  auto assigned = consumer_->Assignment();
  consumer_->Pause(assigned);  // fetched messages are dropped and fetched again on resume
  paused_ = true;
  // Serves rebalances and keeps max.poll.interval.ms from expiring. A message
  // can still arrive from a partition assigned just now: keep it for later.
  Status st = consumer_->Poll(1000, 0, 0, &carry_);
  if (!st.ok()) spdlog::warn("consumer: {}", st.message());
  metrics_->consumer_ready = consumer_->Ready() ? 1 : 0;
  consumer_->Pause(consumer_->Assignment());
}

}  // namespace datatunnel::tunnel
