#include "tunnel/target_worker.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "apply/chain.h"
#include "apply/install.h"
#include "core/clock.h"

namespace datatunnel::tunnel {

bool IsDuplicate(const Position& stored, const Position& p) {
  if (p.epoch != stored.epoch) return p.epoch < stored.epoch;  // older installation: stale
  return p <= stored;
}

// ---- TargetCore ------------------------------------------------------------

TargetCore::TargetCore(TargetOptions options, metrics::Metrics* metrics, const StopSource* stop)
    : options_(std::move(options)), metrics_(metrics), stop_(stop) {}

Status TargetCore::Connect() {
  if (options_.fail_fast_connect && !connected_once_) {
    DT_ASSIGN_OR_RETURN(conn_, pg::Connection::Open(options_.connect));
  } else {
    DT_ASSIGN_OR_RETURN(conn_, pg::OpenWithRetry(options_.connect, 1 << 30,
                                                 [this] { return stop_->stop_requested(); }));
  }
  DT_ASSIGN_OR_RETURN(targets_, apply::DescribeTargetTables(*conn_, options_.tables));
  auto check = conn_->Query("SELECT 1 FROM datatunnel.applied LIMIT 0");
  // A lost connection (the target restarting) is retried, not "run init".
  if (!check.ok() && check.status().code() != StatusCode::kFatal) return check.status();
  if (!check.ok()) {
    return Status::Fatal(fmt::format(
        "the {} has no datatunnel state (datatunnel.applied): run `datatunnel init` first",
        conn_->description()));
  }
  check = conn_->Query(
      "SELECT a.tail_epoch, a.gap_offset, r.tick FROM datatunnel.applied a, datatunnel.resyncs r "
      "LIMIT 0");
  if (!check.ok() && check.status().code() != StatusCode::kFatal) return check.status();
  if (!check.ok()) {
    return Status::Fatal(fmt::format(
        "the datatunnel state on the {} is from an older version (no chain check columns): run "
        "`datatunnel init` to upgrade it, then start again",
        conn_->description()));
  }
  if (!options_.tunnel.empty()) {
    DT_ASSIGN_OR_RETURN(source_install_, apply::BoundSource(*conn_, options_.tunnel));
  }
  applier_ = std::make_unique<apply::Applier>(conn_.get(), &targets_);
  states_.clear();
  connected_once_ = true;
  metrics_->target_connected = 1;
  return Status::OK();
}

Status TargetCore::Reconnect() {
  metrics_->target_connected = 0;
  ++metrics_->reconnects;
  DT_ASSIGN_OR_RETURN(conn_, pg::OpenWithRetry(options_.connect, 1 << 30,
                                               [this] { return stop_->stop_requested(); }));
  if (stop_->stop_requested()) return Status::Cancelled();
  applier_->Reset(conn_.get());
  states_.clear();
  metrics_->target_connected = 1;
  spdlog::info("consumer: reconnected to the {}", conn_->description());
  return Status::OK();
}

Result<std::string> TargetCore::ReloadSourceInstall() {
  if (!conn_ || conn_->IsBroken()) return source_install_;
  DT_ASSIGN_OR_RETURN(source_install_, apply::BoundSource(*conn_, options_.tunnel));
  return source_install_;
}

int TargetCore::TableForTopic(std::string_view topic) const {
  for (size_t i = 0; i < options_.tables.size(); ++i) {
    if (options_.tables[i].topic == topic) return static_cast<int>(i);
  }
  return -1;
}

Result<apply::PartitionState> TargetCore::State(const std::string& stream, int32_t partition,
                                                uint32_t table) {
  auto key = std::make_pair(stream, partition);
  auto it = states_.find(key);
  if (it != states_.end()) return it->second;
  if (!conn_ || conn_->IsBroken()) {
    // Called from a rebalance, where the apply loop (which reconnects) cannot
    // run: try once here, or the assignment waits on a connection no one
    // reopens (seen in the chaos test after a target restart).
    auto c = pg::Connection::Open(options_.connect);
    if (!c.ok()) return Status::Retryable("the target connection is down: " + c.status().message());
    conn_ = std::move(*c);
    applier_->Reset(conn_.get());
    states_.clear();
    ++metrics_->reconnects;
    metrics_->target_connected = 1;
    spdlog::info("consumer: reconnected to the {}", conn_->description());
  }
  DT_ASSIGN_OR_RETURN(auto st, applier_->Load(stream, partition, table));
  states_[key] = st;
  return st;
}

void TargetCore::Forget(const std::string& stream, int32_t partition) {
  states_.erase(std::make_pair(stream, partition));
}

Status TargetCore::EnsureColumns(uint32_t table, const std::vector<Column>& columns,
                                 bool* changed) {
  *changed = false;
  TableSpec& spec = targets_[table];
  std::vector<Column> missing;
  for (const auto& c : columns) {
    if (spec.ColumnIndex(c.name) < 0) missing.push_back(c);
  }
  if (missing.empty()) return Status::OK();
  // `datatunnel init` may have added them since this worker described the
  // table (adding them again would need the table's owner): look first.
  if (conn_ && !conn_->IsBroken()) {
    auto fresh = apply::DescribeTargetTables(*conn_, {options_.tables[table]});
    if (fresh.ok()) {
      bool all = true;
      for (const auto& c : missing) all = all && (*fresh)[0].ColumnIndex(c.name) >= 0;
      if (all) {
        spec.columns = (*fresh)[0].columns;
        spec.key = (*fresh)[0].key;
        applier_->Invalidate(table);
        *changed = true;
        return Status::OK();
      }
    }
  }
  std::string list;
  for (const auto& c : missing) {
    list += fmt::format("{}{} {}", list.empty() ? "" : ", ", c.name, c.type_sql);
  }
  if (options_.tables[table].schema_changes == SchemaChangePolicy::kStop) {
    return Status::Fatal(fmt::format(
        "source table {} has column(s) that target table {} lacks ({}); add them to the target "
        "(`datatunnel init` does), or set schema_changes = \"evolve\" for this table, then "
        "start again",
        spec.source.ToString(), spec.target.ToString(), list));
  }
  for (;;) {
    if (!conn_ || conn_->IsBroken()) DT_RETURN_IF_ERROR(Reconnect());
    auto added = apply::AddColumns(*conn_, spec, missing);
    if (added.ok()) break;
    if (!added.status().IsRetryable()) return added.status();
    if (stop_->SleepFor(500)) return Status::Cancelled();
  }
  DT_ASSIGN_OR_RETURN(auto fresh, apply::DescribeTargetTables(*conn_, {options_.tables[table]}));
  spec.columns = fresh[0].columns;
  spec.key = fresh[0].key;
  applier_->Invalidate(table);
  *changed = true;
  spdlog::info("consumer: added column(s) {} to target table {}", list, spec.target.ToString());
  return Status::OK();
}

Status TargetCore::Redescribe(uint32_t table, bool* changed) {
  *changed = false;
  if (!conn_ || conn_->IsBroken()) return Status::Retryable("the target connection is down");
  DT_ASSIGN_OR_RETURN(auto fresh, apply::DescribeTargetTables(*conn_, {options_.tables[table]}));
  TableSpec& spec = targets_[table];
  std::vector<std::string> before, after;
  for (const auto& c : spec.columns) before.push_back(c.name + " " + c.type_sql);
  for (const auto& c : fresh[0].columns) after.push_back(c.name + " " + c.type_sql);
  if (before == after && spec.key == fresh[0].key) return Status::OK();
  spec.columns = fresh[0].columns;
  spec.key = fresh[0].key;
  applier_->Invalidate(table);
  *changed = true;
  spdlog::info("consumer: read the columns of target table {} again ({} now)",
               spec.target.ToString(), spec.columns.size());
  return Status::OK();
}

Result<bool> TargetCore::BarrierDone(const std::string& stream, const Position& pos) {
  if (!conn_ || conn_->IsBroken()) return Status::Retryable("the target connection is down");
  return applier_->BarrierDone(stream, pos);
}

Result<std::optional<Position>> TargetCore::OpenBarrier(const std::string& stream,
                                                        int32_t partition) {
  if (!conn_ || conn_->IsBroken()) return Status::Retryable("the target connection is down");
  return applier_->OpenBarrier(stream, partition);
}

Status TargetCore::ApplyBatch(std::vector<Item>& items, const std::function<void()>& keepalive) {
  // The lag gauge: while this batch is held (through any retries), its
  // oldest change to apply keeps getting older; set per attempt below.
  std::vector<int64_t> oldest(targets_.size(), 0);
  struct Release {
    metrics::Metrics* m;
    const std::vector<int64_t>& oldest;
    ~Release() {
      for (size_t t = 0; t < oldest.size(); ++t) {
        if (oldest[t] > 0) m->table(t).unapplied_since_us = 0;
      }
    }
  } release{metrics_, oldest};
  Backoff backoff(100, 5000);
  std::vector<const Change*> changes;
  std::vector<apply::Advance> advances;
  std::vector<uint32_t> advance_table;  // the table of each advance, for metrics
  std::vector<Position> resync_of;      // each advance's resync (apply::PartitionState)
  std::vector<apply::TruncateArrival> arrivals;
  std::map<std::pair<std::string, int32_t>, size_t> advance_of;
  for (;;) {
    if (stop_->stop_requested()) return Status::Cancelled();
    Status st;
    if (!conn_ || conn_->IsBroken()) st = Reconnect();
    changes.clear();
    advances.clear();
    advance_table.clear();
    resync_of.clear();
    advance_of.clear();
    arrivals.clear();
    size_t current = SIZE_MAX;  // the advance of the previous item's partition
    for (size_t i = 0; st.ok() && i < items.size(); ++i) {
      Item& item = items[i];
      // Items come in runs of one partition: look the partition up only when
      // the run changes.
      if (current == SIZE_MAX || advances[current].partition != item.partition ||
          advances[current].stream != item.stream) {
        auto key = std::make_pair(std::string(item.stream), item.partition);
        auto [ait, inserted] = advance_of.try_emplace(key, advances.size());
        if (inserted) {
          auto res = State(key.first, item.partition, item.change.table);
          if (!res.ok()) {
            st = res.status();
            break;
          }
          apply::Advance a;
          a.stream = key.first;
          a.partition = item.partition;
          a.expected_offset = res->offset;
          a.offset = res->offset;
          a.pos = res->pos;
          a.tail = res->tail;
          advances.push_back(a);
          advance_table.push_back(item.change.table);
          resync_of.push_back(res->resync);
        }
        current = ait->second;
      }
      apply::Advance& a = advances[current];
      if (a.gap) continue;  // nothing of the partition past its gap
      if (item.chained &&
          apply::ReadLink(&a.tail, item.change.pos, item.prev) == apply::Link::kGap) {
        a.gap = true;
        a.gap_offset = item.offset;
        a.gap_expected = a.tail;
        a.gap_found = *item.prev;
        continue;
      }
      a.offset = item.offset >= 0 ? item.offset : a.offset + 1;
      switch (item.kind) {
        case Item::Kind::kDeadLetter:
          ++a.dead;
          continue;
        case Item::Kind::kIgnored:  // schema markers, tombstones: no change to apply or skip
          continue;
        case Item::Kind::kChange:
          break;
      }
      const Change& c = item.change;
      const Position& resync = resync_of[current];
      if (IsDuplicate(a.pos, c.pos) || (resync.epoch != 0 && IsDuplicate(resync, c.pos))) {
        ++a.skipped;  // applied already, or superseded by a snapshot
        continue;
      }
      a.pos = c.pos;
      if (c.op == Op::kMarker) {
        a.snapshot_marker = true;
        a.snapshot_pos = c.pos;
        a.snapshot_partitions = std::max(1, item.broadcast_partitions);
        continue;
      }
      if (c.op == Op::kTruncate && item.broadcast_partitions > 1) {
        arrivals.push_back(
            {std::string(item.stream), item.partition, c.pos, item.broadcast_partitions, c.table});
        if (item.partition == 0) ++a.applied;  // one change, whatever the copies
        continue;
      }
      changes.push_back(&c);
      if (c.packed_rows > 0) {
        a.applied += c.packed_rows;  // a snapshot chunk passed through whole
      } else if (c.pos.sub == 0) {
        ++a.applied;  // a key change is one change in two messages
      }
      if (c.op != Op::kRead) a.captured_us = std::max(a.captured_us, c.captured_us);
    }
    if (st.ok()) {
      for (const Change* c : changes) {
        if (c->op == Op::kRead || c->captured_us <= 0 || c->table >= oldest.size()) continue;
        int64_t& o = oldest[c->table];
        if (o == 0 || c->captured_us < o) o = c->captured_us;
      }
      for (size_t t = 0; t < oldest.size(); ++t) {
        if (oldest[t] > 0) metrics_->table(t).unapplied_since_us = oldest[t];
      }
      st = applier_->Apply(changes, advances, arrivals);
    }
    if (st.ok()) {
      const int64_t now = NowMicros();
      for (size_t i = 0; i < advances.size(); ++i) {
        const apply::Advance& a = advances[i];
        states_[{a.stream, a.partition}] =
            apply::PartitionState{a.offset, a.pos, a.tail, resync_of[i]};
      }
      for (const Change* c : changes) {
        auto& tm = metrics_->table(c->table);
        if (c->op == Op::kRead) continue;  // snapshot rows are not changes
        if (c->pos.sub == 0) ++tm.applied;
        if (c->captured_us > 0) {
          tm.latency.Observe(static_cast<double>(now - c->captured_us) / 1e6);
          tm.last_captured_us = c->captured_us;
          tm.last_applied_us = now;
        }
      }
      for (size_t i = 0; i < advances.size(); ++i) {
        metrics_->table(advance_table[i]).skipped += advances[i].skipped;
        metrics_->table(advance_table[i]).dead_letters += advances[i].dead;
      }
      if (!changes.empty()) {
        for (size_t t = 0; t < targets_.size(); ++t) {
          for (const Change* c : changes) {
            if (c->table == t) {
              ++metrics_->table(t).batches;
              break;
            }
          }
        }
      }
      for (size_t i = 0; i < advances.size(); ++i) {
        const apply::Advance& a = advances[i];
        if (!a.gap) continue;
        // Recorded with what came before it; nothing after it is applied.
        const TableSpec& spec = targets_[advance_table[i]];
        apply::RecordedGap gap{a.stream,
                               a.partition,
                               a.gap_offset,
                               apply::PositionText(a.gap_expected),
                               apply::PositionText(a.gap_found),
                               ""};
        return Status::Fatal(gap.Describe(spec.source.ToString(), spec.target.ToString()));
      }
      return Status::OK();
    }
    // Something failed: forget cached positions (a commit in doubt may have
    // landed; the guard and the dedup sort that out on the retry).
    for (const auto& a : advances) Forget(a.stream, a.partition);
    if (applier_ && applier_->position_moved()) {
      ++metrics_->retries;
      continue;  // another consumer moved a partition: reload and filter again
    }
    if (!st.IsRetryable()) {
      // Name every table of the batch, not just the first change's.
      std::vector<std::string> names;
      for (const Change* c : changes) {
        std::string n = targets_[c->table].target.ToString();
        if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
      }
      return st.WithContext(changes.empty() ? std::string("applying a batch")
                                            : fmt::format("applying a batch of {} change(s) to {}",
                                                          changes.size(), fmt::join(names, ", ")));
    }
    ++metrics_->errors;
    ++metrics_->retries;
    const int delay = backoff.NextDelayMs();
    if (backoff.attempts() == 1 || backoff.attempts() % 10 == 0) {
      spdlog::warn("consumer: {} (retrying in {} ms; the batch is kept)", st.message(), delay);
    }
    if (conn_ && conn_->IsBroken()) metrics_->target_connected = 0;
    for (int waited = 0; waited < delay; waited += 200) {
      if (stop_->SleepFor(std::min(200, delay - waited))) return Status::Cancelled();
      if (keepalive) keepalive();
    }
  }
}

// ---- KafkaTargetWorker -----------------------------------------------------

KafkaTargetWorker::KafkaTargetWorker(TargetOptions options, metrics::Metrics* metrics,
                                     const StopSource* stop)
    : options_(options), metrics_(metrics), stop_(stop), core_(std::move(options), metrics, stop) {}

void KafkaTargetWorker::OnAssigned(std::vector<TopicPartition>* partitions) {
  for (auto& p : *partitions) {
    const int t = core_.TableForTopic(p.topic);
    if (t < 0) continue;
    // Start right after what the target has applied. If the target cannot be
    // reached now, start from the beginning: what is already applied is
    // dropped by position, so that costs time, never correctness.
    Result<apply::PartitionState> st = Status::Retryable("not loaded");
    const int64_t deadline = MonotonicMicros() + 30'000'000;
    while (!stop_->stop_requested()) {
      st = core_.State(p.topic, p.partition, static_cast<uint32_t>(t));
      if (st.ok() || MonotonicMicros() > deadline) break;
      stop_->SleepFor(500);
    }
    if (st.ok()) {
      // Never applied: from offset 0, not from the oldest offset the broker
      // still has. If retention already removed offset 0, the consumer stops
      // with "no longer on the broker" instead of silently skipping changes.
      p.offset = st->offset >= 0 ? st->offset + 1 : 0;
      auto open = core_.OpenBarrier(p.topic, p.partition);
      if (open.ok() && *open) waiting_[{p.topic, p.partition}] = Waiting{**open, false};
    } else {
      spdlog::warn(
          "consumer: cannot read the stored position of {} [{}] ({}); reading it from "
          "the beginning, already-applied changes will be skipped",
          p.topic, p.partition, st.status().message());
      p.offset = kOffsetBeginning;
    }
    spdlog::debug("consumer: assigned {} [{}] from offset {}", p.topic, p.partition, p.offset);
  }
}

void KafkaTargetWorker::OnRevoked(const std::vector<TopicPartition>& partitions) {
  for (const auto& p : partitions) {
    core_.Forget(p.topic, p.partition);
    waiting_.erase({p.topic, p.partition});
    // Its next owner starts from the target's stored position, and commits.
    uncommitted_.erase({p.topic, p.partition});
  }
}

void KafkaTargetWorker::CommitOffsets(broker::Consumer* consumer, bool force) {
  const int64_t now = MonotonicMicros();
  if (uncommitted_.empty() || (!force && now - last_commit_us_ < kCommitIntervalUs)) return;
  last_commit_us_ = now;
  std::vector<TopicPartition> commits;
  commits.reserve(uncommitted_.size());
  for (const auto& [tp, next] : uncommitted_) commits.push_back({tp.first, tp.second, next});
  uncommitted_.clear();
  consumer->CommitAsync(commits);
}

void KafkaTargetWorker::ResumeAll(broker::Consumer* consumer) {
  std::vector<TopicPartition> resume;
  for (const auto& tp : consumer->Assignment()) {
    if (!waiting_.count({tp.topic, tp.partition})) resume.push_back(tp);
  }
  consumer->Resume(resume);
}

Status KafkaTargetWorker::CheckBarriers(broker::Consumer* consumer) {
  const int64_t now = MonotonicMicros();
  if (waiting_.empty() || now - last_barrier_check_us_ < 200'000) return Status::OK();
  last_barrier_check_us_ = now;
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    const TopicPartition tp{it->first.first, it->first.second, -1};
    if (!it->second.paused) {
      consumer->Pause({tp});
      it->second.paused = true;
    }
    auto done = core_.BarrierDone(tp.topic, it->second.pos);
    if (!done.ok()) return done.status().IsRetryable() ? Status::OK() : done.status();
    if (*done) {
      spdlog::debug("consumer: {} [{}] continues after the TRUNCATE", tp.topic, tp.partition);
      consumer->Resume({tp});
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  return Status::OK();
}

Status KafkaTargetWorker::DeadLetter(const broker::Message& m, const Status& why) {
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

void KafkaTargetWorker::KeepAlive(broker::Consumer* consumer) {
  auto assigned = consumer->Assignment();
  consumer->Pause(assigned);  // fetched messages are dropped and fetched again on resume
  paused_ = true;
  // Serves rebalances and keeps max.poll.interval.ms from expiring. A message
  // can still arrive from a partition assigned just now: keep it for later.
  Status st = consumer->Poll(1000, 0, 0, &carry_);
  if (!st.ok()) spdlog::warn("consumer: {}", st.message());
  metrics_->consumer_ready = consumer->Ready() ? 1 : 0;
  consumer->Pause(consumer->Assignment());
}

Status KafkaTargetWorker::Run() {
  DT_RETURN_IF_ERROR(core_.Connect());
  std::vector<std::string> topics;
  for (const auto& t : options_.tables) topics.push_back(t.topic);
  // Create waits until the brokers know every topic, so the first group
  // join assigns all their partitions.
  auto created = broker::Consumer::Create(options_.kafka, topics, this,
                                          [this] { return stop_->stop_requested(); });
  if (created.status().IsCancelled()) return Status::OK();
  DT_ASSIGN_OR_RETURN(auto consumer, std::move(created));
  apply::EnvelopeDecoder decoder(&core_.targets());
  decoder.ExpectOrigin(options_.tunnel, core_.source_install());
  spdlog::info("consumer: applying {} topic(s) to the target as group \"{}\"", topics.size(),
               options_.kafka.group_id);
  std::vector<broker::Message> msgs;
  std::vector<Item> items;
  Status result;
  while (!stop_->stop_requested()) {
    msgs.clear();
    Status st;
    if (!carry_.empty()) {
      msgs = std::move(carry_);
      carry_.clear();
    } else {
      st = consumer->Poll(static_cast<size_t>(options_.pipeline.batch_max_changes), 100,
                          options_.pipeline.batch_max_wait_ms, &msgs);
      metrics_->consumer_ready = consumer->Ready() ? 1 : 0;
    }
    if (!st.ok()) {
      result = st;
      break;
    }
    if (Status bs = CheckBarriers(consumer.get()); !bs.ok()) {
      result = bs;
      break;
    }
    if (msgs.empty()) continue;
    items.clear();
    items.reserve(msgs.size());
    // A partition's input stops at a TRUNCATE sent to every partition: what
    // follows it waits until every partition got there (the barrier).
    std::map<std::pair<std::string, int32_t>, Position> cut;
    std::map<std::pair<std::string, int32_t>, int64_t> refetch;  // first message left out
    for (const auto& m : msgs) {
      const InboundMessage v = m.view();
      const auto tp = std::make_pair(std::string(v.topic), v.partition);
      if (cut.count(tp) || waiting_.count(tp)) {
        refetch.try_emplace(tp, v.offset);
        continue;
      }
      Item item;
      auto name = topic_names_.find(v.topic);
      if (name == topic_names_.end()) name = topic_names_.emplace(v.topic).first;
      item.stream = *name;
      item.partition = v.partition;
      item.offset = v.offset;
      const int t = core_.TableForTopic(v.topic);
      if (t < 0 || v.null_value) {
        item.kind = Item::Kind::kIgnored;  // tombstones and foreign topics carry no change
        item.change.table = t < 0 ? 0 : static_cast<uint32_t>(t);
      } else {
        Status dst = decoder.Decode(v.value, static_cast<uint32_t>(t), &item.change);
        if (dst.code() == StatusCode::kFatal) {
          // A column the cached target columns lack: `init` may have added
          // it to the target since they were read. Look before stopping.
          bool changed = false;
          if (core_.Redescribe(static_cast<uint32_t>(t), &changed).ok() && changed) {
            decoder.Refresh();
            dst = decoder.Decode(v.value, static_cast<uint32_t>(t), &item.change);
          }
        }
        if (dst.code() == StatusCode::kBadConfig && decoder.origin_tunnel() == options_.tunnel) {
          // `init` may have bound the tunnel to a new installation of its
          // source (set up again) since this consumer started.
          auto fresh = core_.ReloadSourceInstall();
          if (fresh.ok() && *fresh == decoder.origin_install()) {
            decoder.ExpectOrigin(options_.tunnel, *fresh);
            dst = decoder.Decode(v.value, static_cast<uint32_t>(t), &item.change);
          }
        }
        if (dst.code() == StatusCode::kBadConfig) {
          // Nothing of this batch is applied: it stops here.
          const bool same_name = decoder.origin_tunnel() == options_.tunnel;
          result = Status::BadConfig(fmt::format(
              "{} [{}] offset {}: {}; nothing was applied. {}", v.topic, v.partition, v.offset,
              dst.message(),
              same_name
                  ? "Two sources publish as this tunnel to the same topics: give one of them "
                    "another [tunnel] name (or kafka.topic_prefix) and run `datatunnel init` "
                    "with it; if this tunnel's source was set up anew, run `datatunnel init` to "
                    "bind the target to it"
                  : "Each tunnel needs its own topics: give the two tunnels different "
                    "kafka.topic_prefix (or [[tables]] topic) settings"));
          break;
        }
        item.broadcast_partitions = decoder.broadcast_partitions();
        item.chained = dst.ok();
        item.prev = decoder.prev();
        if (dst.code() == StatusCode::kBadData) {
          result = DeadLetter(m, dst);
          if (!result.ok()) break;
          item.kind = Item::Kind::kDeadLetter;
          item.change.table = static_cast<uint32_t>(t);
          // A dead letter of ours still takes its place in the chain, so the
          // next message, which links to it, is no gap.
          item.chained = decoder.ReadChain(v.value, &item.change.pos, &item.prev);
        } else if (!dst.ok()) {
          result =
              dst.WithContext(fmt::format("{} [{}] offset {}", v.topic, v.partition, v.offset));
          break;
        } else if (item.change.op == Op::kTruncate && item.broadcast_partitions > 1) {
          cut[tp] = item.change.pos;
        } else if (item.change.op == Op::kMarker && item.change.marker == Marker::kSchema) {
          // Processed whatever its position: adding a column is idempotent.
          bool changed = false;
          result =
              core_.EnsureColumns(static_cast<uint32_t>(t), decoder.schema_columns(), &changed);
          if (!result.ok()) break;
          if (changed) decoder.Refresh();
          item.kind = Item::Kind::kIgnored;
        }
      }
      items.push_back(std::move(item));
    }
    if (!result.ok()) break;
    if (spdlog::should_log(spdlog::level::trace)) {
      for (const auto& it : items) {
        spdlog::trace("consumer: batch item {} [{}] @{} op {}", it.stream, it.partition, it.offset,
                      static_cast<char>(it.change.op));
      }
    }
    // Dead letters must be stored before the offsets that skip them commit.
    while (dlq_ && dlq_pending_ > 0 && !stop_->stop_requested()) dlq_->Poll(50);
    if (!dlq_error_.ok()) {
      result = dlq_error_.WithContext("writing to the dead-letter topic");
      break;
    }
    st = core_.ApplyBatch(items, [&] { KeepAlive(consumer.get()); });
    if (st.IsCancelled()) break;
    if (!st.ok()) {
      result = st;
      break;
    }
    if (paused_) {
      ResumeAll(consumer.get());
      paused_ = false;
    }
    for (const auto& [tp, pos] : cut) {
      auto done = core_.BarrierDone(tp.first, pos);
      if (!done.ok() || !*done) waiting_[tp] = Waiting{pos, false};
      spdlog::debug("consumer: {} [{}] reached a TRUNCATE ({}): {}", tp.first, tp.second,
                    pos.ToString(), done.ok() && *done ? "it has run" : "waiting for the others");
    }
    for (const auto& [tp, offset] : refetch) {
      Status s = consumer->Seek({tp.first, tp.second, offset});
      if (!s.ok()) spdlog::warn("consumer: {}", s.message());
    }
    last_barrier_check_us_ = 0;
    if (Status bs = CheckBarriers(consumer.get()); !bs.ok()) {
      result = bs;
      break;
    }
    // The last offset of each partition: items come in runs of one partition,
    // so the map is touched once per run, not per message.
    for (size_t i = 0; i < items.size(); ++i) {
      const Item& it = items[i];
      if (i + 1 == items.size() || items[i + 1].partition != it.partition ||
          items[i + 1].stream != it.stream) {
        uncommitted_[{std::string(it.stream), it.partition}] = it.offset + 1;
      }
    }
    CommitOffsets(consumer.get(), false);
  }
  CommitOffsets(consumer.get(), true);  // Close() waits for it
  metrics_->consumer_ready = 0;
  Status closed = consumer->Close();
  if (!closed.ok()) spdlog::warn("consumer: {}", closed.message());
  return result;
}

// ---- MemoryTargetWorker ----------------------------------------------------

MemoryTargetWorker::MemoryTargetWorker(TargetOptions options, MemoryChannel* channel,
                                       metrics::Metrics* metrics, const StopSource* stop)
    : options_(options), channel_(channel), stop_(stop), core_(std::move(options), metrics, stop) {}

Status MemoryTargetWorker::MapFor(const SourceSpecs& specs) {
  if (specs != mapped_) {
    // New source specs (a producer session started): make sure the target
    // has their columns, then map target columns to source columns by name.
    map_.assign(specs->size(), {});
    identity_.assign(specs->size(), false);
    passthrough_.assign(specs->size(), false);
    for (size_t t = 0; t < specs->size(); ++t) {
      bool changed = false;
      DT_RETURN_IF_ERROR(
          core_.EnsureColumns(static_cast<uint32_t>(t), (*specs)[t].columns, &changed));
      const TableSpec& src = (*specs)[t];
      const TableSpec& tgt = core_.targets()[t];
      identity_[t] = src.columns.size() == tgt.columns.size();
      for (size_t i = 0; i < tgt.columns.size(); ++i) {
        const int s = src.ColumnIndex(tgt.columns[i].name);
        map_[t].push_back(s);
        identity_[t] = identity_[t] && s == static_cast<int>(i);
      }
      // A snapshot chunk's COPY text goes into the target as it is when the
      // columns line up and none is generated (COPY cannot write those).
      passthrough_[t] = identity_[t] && std::none_of(tgt.columns.begin(), tgt.columns.end(),
                                                     [](const Column& c) { return c.generated; });
    }
    mapped_ = specs;
  }
  return Status::OK();
}

Status MemoryTargetWorker::Unpack(const SourceSpecs& specs, const Change& packed,
                                  std::vector<Change>* out) {
  const std::string_view text = packed.row.Get(0);
  const size_t ncols = (*specs)[packed.table].columns.size();
  std::vector<std::optional<std::string>> fields;
  int64_t seq = packed.pos.seq - (packed.packed_rows - 1);
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    if (!pg::SplitCopyLine(text.substr(at, end - at), &fields) || fields.size() != ncols) {
      return Status::Fatal("a snapshot chunk handed over in memory is malformed");
    }
    Change c;
    c.op = Op::kRead;
    c.table = packed.table;
    c.pos = packed.pos;
    c.pos.seq = seq++;
    c.captured_us = packed.captured_us;
    c.row.Reset(ncols);
    for (size_t i = 0; i < ncols; ++i) {
      if (fields[i]) c.row.Set(i, *fields[i]);
    }
    out->push_back(std::move(c));
    at = end + 1;
  }
  return Status::OK();
}

Status MemoryTargetWorker::Remap(const SourceSpecs& specs, Change* c) {
  DT_RETURN_IF_ERROR(MapFor(specs));
  if (identity_[c->table] || c->op == Op::kTruncate || c->op == Op::kMarker) return Status::OK();
  const auto& map = map_[c->table];
  Row row;
  row.ResetAbsent(map.size());
  for (size_t i = 0; i < map.size(); ++i) {
    const int s = map[i];
    if (s < 0 || static_cast<size_t>(s) >= c->row.size()) continue;
    if (c->row.HasValue(static_cast<size_t>(s))) {
      row.Set(i, c->row.Get(static_cast<size_t>(s)));
    } else if (c->row.IsNull(static_cast<size_t>(s)) &&
               !(c->key_only && !(*mapped_)[c->table].IsKey(static_cast<size_t>(s)))) {
      row.SetNull(i);
    }
  }
  c->row = std::move(row);
  return Status::OK();
}

Status MemoryTargetWorker::Run() {
  DT_RETURN_IF_ERROR(core_.Connect());
  std::vector<std::string> streams;
  for (const auto& t : core_.targets()) streams.push_back("memory:" + t.target.ToString());
  std::vector<Change> changes, unpacked;
  std::vector<uint64_t> tokens, done;
  std::vector<SourceSpecs> specs;
  std::vector<Item> items, segment;
  std::vector<size_t> token_end;
  while (!stop_->stop_requested()) {
    changes.clear();
    tokens.clear();
    specs.clear();
    channel_->Pop(static_cast<size_t>(options_.pipeline.batch_max_changes), 100, &changes, &tokens,
                  &specs);
    if (changes.empty()) {
      if (channel_->closed()) break;
      continue;
    }
    items.clear();
    items.reserve(changes.size());
    token_end.clear();
    auto add = [&](Change&& c) {
      Item item;
      item.stream = streams[c.table];
      item.partition = 0;
      item.broadcast_partitions = 1;
      if (c.op == Op::kMarker && c.marker == Marker::kSchema) item.kind = Item::Kind::kIgnored;
      item.change = std::move(c);
      items.push_back(std::move(item));
    };
    for (size_t i = 0; i < changes.size(); ++i) {
      Change& c = changes[i];
      DT_RETURN_IF_ERROR(MapFor(specs[i]));
      if (c.packed_rows > 0 && !passthrough_[c.table]) {
        // The target lays its columns out differently: row by row.
        unpacked.clear();
        DT_RETURN_IF_ERROR(Unpack(specs[i], c, &unpacked));
        for (Change& u : unpacked) {
          DT_RETURN_IF_ERROR(Remap(specs[i], &u));
          add(std::move(u));
        }
      } else {
        DT_RETURN_IF_ERROR(Remap(specs[i], &c));
        add(std::move(c));
      }
      token_end.push_back(items.size());  // tokens[i] is done once these items are
    }
    // Packed snapshot chunks apply in transactions of their own (COPY
    // straight into the target), the changes around them as usual.
    size_t begin = 0, acked = 0;
    while (begin < items.size()) {
      const bool packed = items[begin].change.packed_rows > 0;
      size_t end = begin + 1;
      while (end < items.size() && (items[end].change.packed_rows > 0) == packed) ++end;
      Status st;
      if (begin == 0 && end == items.size()) {
        st = core_.ApplyBatch(items);
      } else {
        segment.assign(std::make_move_iterator(items.begin() + static_cast<ptrdiff_t>(begin)),
                       std::make_move_iterator(items.begin() + static_cast<ptrdiff_t>(end)));
        st = core_.ApplyBatch(segment);
      }
      if (st.IsCancelled()) return Status::OK();
      if (!st.ok()) return st;
      done.clear();
      while (acked < tokens.size() && token_end[acked] <= end) done.push_back(tokens[acked++]);
      channel_->Ack(done);
      begin = end;
    }
  }
  return Status::OK();
}

}  // namespace datatunnel::tunnel
