#include "tunnel/target_core.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "apply/install.h"
#include "core/clock.h"

namespace datatunnel::tunnel {

namespace {

// The lag gauge: while a batch is held (through any retries), its oldest
// change to apply keeps getting older. Released when the batch is done.
class HeldSince {
 public:
  HeldSince(metrics::Metrics* m, size_t tables) : m_(m), oldest_(tables, 0) {}
  ~HeldSince() {
    for (size_t t = 0; t < oldest_.size(); ++t) {
      if (oldest_[t] > 0) m_->table(t).unapplied_since_us = 0;
    }
  }
  void Hold(const std::vector<const Change*>& changes) {
    for (const Change* c : changes) {
      if (c->op == Op::kRead || c->captured_us <= 0 || c->table >= oldest_.size()) continue;
      int64_t& o = oldest_[c->table];
      if (o == 0 || c->captured_us < o) o = c->captured_us;
    }
    for (size_t t = 0; t < oldest_.size(); ++t) {
      if (oldest_[t] > 0) m_->table(t).unapplied_since_us = oldest_[t];
    }
  }

 private:
  metrics::Metrics* m_;
  std::vector<int64_t> oldest_;
};

}  // namespace

TargetCore::TargetCore(TargetOptions options, metrics::Metrics* metrics, const StopSource* stop)
    : options_(std::move(options)), metrics_(metrics), stop_(stop) {}

Status TargetCore::Open(bool wait) {
  auto c = wait ? pg::OpenWithRetry(options_.connect, 1 << 30,
                                    [this] { return stop_->stop_requested(); })
                : pg::Connection::Open(options_.connect);
  if (!c.ok()) return c.status();
  conn_ = std::move(*c);
  reached_ = true;
  if (applier_) applier_->Reset(conn_.get());
  states_.clear();
  return Status::OK();
}

Status TargetCore::Connect() {
  Backoff backoff(500, 10000);
  for (;;) {
    Status st = ConnectOnce();
    // Once the target answered, its address and credentials are right: a
    // connection lost while starting (the server restarting) is waited out
    // like one lost later, instead of ending the process.
    if (st.ok() || !st.IsRetryable() || !reached_) return st;
    ++metrics_->reconnects;
    const int delay = backoff.NextDelayMs();
    spdlog::warn("consumer: {}; connecting again in {} ms", st.message(), delay);
    if (stop_->SleepFor(delay)) return Status::Cancelled();
  }
}

Status TargetCore::ConnectOnce() {
  metrics_->target_connected = 0;
  DT_RETURN_IF_ERROR(Open(!options_.fail_fast_connect || reached_));
  DT_ASSIGN_OR_RETURN(targets_, apply::DescribeTargetTables(*conn_, options_.tables));
  DT_RETURN_IF_ERROR(apply::CheckStateCurrent(*conn_));
  if (!options_.tunnel.empty()) {
    DT_ASSIGN_OR_RETURN(source_install_, apply::BoundSource(*conn_, options_.tunnel));
  }
  applier_ = std::make_unique<apply::Applier>(conn_.get(), &targets_);
  if (transactional()) {
    // The order of statements from the target's foreign keys; a cycle that
    // cannot be deferred stops here, before anything is applied.
    DT_ASSIGN_OR_RETURN(auto order, apply::LoadTableOrder(*conn_, targets_));
    if (!order.deferred.empty()) {
      spdlog::info("consumer: deferring foreign key(s) {} to the end of each transaction",
                   fmt::join(order.deferred, ", "));
    }
    DT_RETURN_IF_ERROR(apply::CheckConsistencyState(*conn_));
    applier_->SetTransactional(options_.tunnel, std::move(order));
  }
  metrics_->target_connected = 1;
  return Status::OK();
}

Status TargetCore::Reconnect(bool wait) {
  if (wait) {
    metrics_->target_connected = 0;
    ++metrics_->reconnects;
  }
  Status st = Open(wait);
  if (!st.ok()) {
    return wait ? st : Status::Retryable("the target connection is down: " + st.message());
  }
  if (wait && stop_->stop_requested()) return Status::Cancelled();
  if (!wait) ++metrics_->reconnects;
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
  // Called from a rebalance too, where the apply loop (which reconnects)
  // cannot run: try once here, or the assignment waits on a connection no
  // one reopens (seen in the chaos test after a target restart).
  if (!conn_ || conn_->IsBroken()) DT_RETURN_IF_ERROR(Reconnect(false));
  DT_ASSIGN_OR_RETURN(auto st, applier_->Load(stream, partition, table));
  states_[key] = st;
  return st;
}

void TargetCore::Forget(const std::string& stream, int32_t partition) {
  states_.erase(std::make_pair(stream, partition));
}

void TargetCore::Adopt(uint32_t table, const TableSpec& fresh) {
  targets_[table].columns = fresh.columns;
  targets_[table].key = fresh.key;
  applier_->Invalidate(table);
}

Status TargetCore::EnsureColumns(uint32_t table, const std::vector<Column>& columns,
                                 bool* changed) {
  *changed = false;
  const TableSpec& spec = targets_[table];
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
        Adopt(table, (*fresh)[0]);
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
    if (!conn_ || conn_->IsBroken()) DT_RETURN_IF_ERROR(Reconnect(true));
    auto added = apply::AddColumns(*conn_, spec, missing);
    if (added.ok()) break;
    if (!added.status().IsRetryable()) return added.status();
    if (stop_->SleepFor(500)) return Status::Cancelled();
  }
  DT_ASSIGN_OR_RETURN(auto fresh, apply::DescribeTargetTables(*conn_, {options_.tables[table]}));
  Adopt(table, fresh[0]);
  *changed = true;
  spdlog::info("consumer: added column(s) {} to target table {}", list, spec.target.ToString());
  return Status::OK();
}

Status TargetCore::Redescribe(uint32_t table, bool* changed) {
  *changed = false;
  if (!conn_ || conn_->IsBroken()) return Status::Retryable("the target connection is down");
  DT_ASSIGN_OR_RETURN(auto fresh, apply::DescribeTargetTables(*conn_, {options_.tables[table]}));
  const TableSpec& spec = targets_[table];
  std::vector<std::string> before, after;
  for (const auto& c : spec.columns) before.push_back(c.name + " " + c.type_sql);
  for (const auto& c : fresh[0].columns) after.push_back(c.name + " " + c.type_sql);
  if (before == after && spec.key == fresh[0].key) return Status::OK();
  Adopt(table, fresh[0]);
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

Result<apply::ConsistencyState> TargetCore::Consistency() {
  if (!conn_ || conn_->IsBroken()) DT_RETURN_IF_ERROR(Reconnect(false));
  return apply::LoadConsistency(*conn_, options_.tunnel);
}

Status TargetCore::ApplyBatch(std::vector<apply::Item>& items,
                              const std::function<void()>& keepalive) {
  // An empty batch (nothing came, or the tick gate holds what came) goes to
  // the target at most once a second, as a check that its connection still
  // works. Going every time was half the batches in transaction mode at
  // 1,000 changes/s: a round trip to the target's backend while the record
  // or partition that completes the tick waited behind it.
  if (items.empty() && conn_ && !conn_->IsBroken() &&
      MonotonicMicros() - last_round_trip_us_ < kIdleCheckUs) {
    return Status::OK();
  }
  HeldSince held(metrics_, targets_.size());
  Backoff backoff(100, 5000);
  const apply::StateFn state = [this](const std::string& stream, int32_t partition,
                                      uint32_t table) { return State(stream, partition, table); };
  for (;;) {
    if (stop_->stop_requested()) return Status::Cancelled();
    plan_.Clear();
    Status st;
    if (!conn_ || conn_->IsBroken()) st = Reconnect(true);
    if (st.ok()) st = apply::PlanBatch(items, state, &plan_, transactional());
    if (st.ok()) {
      held.Hold(plan_.changes);
      st = applier_->Apply(plan_.changes, plan_.advances, plan_.arrivals,
                           plan_.tick ? &*plan_.tick : nullptr);
    }
    if (st.ok()) {
      last_round_trip_us_ = MonotonicMicros();
      Committed();
      return plan_.GapError(targets_);
    }
    // Something failed: forget cached positions (a commit in doubt may have
    // landed; the guard and the dedup sort that out on the retry).
    for (const auto& a : plan_.advances) Forget(a.stream, a.partition);
    if (applier_ && applier_->position_moved()) {
      ++metrics_->retries;
      continue;  // another consumer moved a partition: reload and filter again
    }
    if (!st.IsRetryable()) return Failed(st);
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

void TargetCore::AbortStream() {
  if (applier_) applier_->AbortStream();
  stream_states_.clear();
  stream_applied_.clear();
  stream_copy_rows_.clear();
  stream_copy_ends_.clear();
  // States read inside the rolled-back transaction may be gone with it.
  states_.clear();
}

Status TargetCore::Stream(std::vector<apply::Item>& items, bool finish) {
  if (stop_->stop_requested()) {
    AbortStream();
    return Status::Cancelled();
  }
  const apply::StateFn state = [this](const std::string& stream, int32_t partition,
                                      uint32_t table) -> Result<apply::PartitionState> {
    auto it = stream_states_.find({stream, partition});
    if (it != stream_states_.end()) return it->second;
    return State(stream, partition, table);
  };
  plan_.Clear();
  Status st;
  const bool first = !streaming();
  if (first && (!conn_ || conn_->IsBroken())) st = Reconnect(false);
  if (st.ok()) st = apply::PlanBatch(items, state, &plan_, /*whole_ticks=*/true);
  if (first) {
    stream_started_us_ = MonotonicMicros();
    stream_pieces_ = stream_changes_ = 0;
  }
  const int64_t finish_from_us = MonotonicMicros();
  if (st.ok()) {
    for (const auto& a : plan_.advances) {
      if (!a.gap) continue;
      // A gap: nothing of the tick is applied; the gap is recorded (in a
      // transaction of its own) and stops the worker.
      AbortStream();
      return ApplyBatch(items);
    }
    // A reconnect while reading states (State()) ended the transaction
    // holding the earlier pieces: read the tick again.
    if (!first && !streaming()) {
      st = Status::Retryable("the target connection was lost while a tick streamed");
    } else {
      st = finish ? applier_->FinishStream(plan_.changes, plan_.advances,
                                           plan_.tick ? &*plan_.tick : nullptr)
                  : applier_->StagePiece(plan_.changes, plan_.advances);
    }
  }
  if (!st.ok()) {
    const bool moved = applier_ && applier_->position_moved();
    AbortStream();
    if (st.IsCancelled()) return st;
    if (!st.IsRetryable() && !moved) return Failed(st);
    ++metrics_->errors;
    ++metrics_->retries;
    if (conn_ && conn_->IsBroken()) metrics_->target_connected = 0;
    return Status::Retryable(st.message());
  }
  if (stream_applied_.size() != targets_.size()) stream_applied_.assign(targets_.size(), 0);
  for (size_t i = 0; i < plan_.advances.size(); ++i) {
    const apply::Advance& a = plan_.advances[i];
    stream_states_[{a.stream, a.partition}] = plan_.StateAfter(i);
  }
  if (first) {
    spdlog::info(
        "consumer: a tick of more than {} change(s) is streamed to the target in pieces, "
        "within one transaction",
        options_.pipeline.tick_stream_changes);
  }
  NoteCopies(&stream_copy_rows_, &stream_copy_ends_);
  if (!finish) {
    ++stream_pieces_;
    stream_changes_ += plan_.changes.size();
    for (const Change* c : plan_.changes) {
      if (c->op != Op::kRead && c->pos.part() == 0) ++stream_applied_[c->table];
    }
    for (size_t i = 0; i < plan_.advances.size(); ++i) {
      metrics_->table(plan_.advance_table[i]).skipped += plan_.advances[i].skipped;
      metrics_->table(plan_.advance_table[i]).dead_letters += plan_.advances[i].dead;
    }
    return Status::OK();
  }
  const int64_t now = MonotonicMicros();
  spdlog::info(
      "consumer: a streamed tick committed: {} change(s) in {} piece(s), {} of them written "
      "straight into their tables as they came; {:.1f} s from its first piece, of which {:.1f} s "
      "for the last piece, the writes to the target tables and the commit",
      stream_changes_ + plan_.changes.size(), stream_pieces_ + 1, applier_->stream_direct(),
      static_cast<double>(now - stream_started_us_) / 1e6,
      static_cast<double>(now - finish_from_us) / 1e6);
  // Committed: the states reached, the metrics of the pieces, then the
  // final batch's as for any batch.
  for (auto& [key, s] : stream_states_) states_[key] = s;
  for (size_t t = 0; t < stream_applied_.size(); ++t) {
    metrics_->table(t).applied += stream_applied_[t];
  }
  for (size_t t = 0; t < stream_copy_rows_.size(); ++t) {
    copy_rows_.resize(targets_.size(), 0);
    copy_ends_.resize(targets_.size(), 0);
    copy_rows_[t] = std::max(copy_rows_[t], stream_copy_rows_[t]);
    copy_ends_[t] = std::max(copy_ends_[t], stream_copy_ends_[t]);
  }
  stream_states_.clear();
  stream_applied_.clear();
  stream_copy_rows_.clear();
  stream_copy_ends_.clear();
  Committed();
  return Status::OK();
}

void TargetCore::Committed() {
  bool snapshot_end = false;
  for (size_t i = 0; i < plan_.advances.size(); ++i) {
    const apply::Advance& a = plan_.advances[i];
    states_[{a.stream, a.partition}] = plan_.StateAfter(i);
    snapshot_end = snapshot_end || a.snapshot_marker;
  }
  if (snapshot_end) ++metrics_->snapshot_ends_applied;
  if (plan_.tick) {
    // A source state once no table is being copied (as `status` says): a
    // table's snapshot rows applied and its end marker not yet.
    NoteCopies(&copy_rows_, &copy_ends_);
    bool copying = false;
    for (size_t t = 0; t < copy_rows_.size(); ++t) copying |= copy_rows_[t] > copy_ends_[t];
    metrics_->target_consistent = copying ? 0 : 1;
    metrics_->consistent_tick = std::max(metrics_->consistent_tick.load(), plan_.tick->end.tick);
  }
  const int64_t now = NowMicros();
  std::vector<bool> batched(targets_.size(), false);
  for (const Change* c : plan_.changes) {
    batched[c->table] = true;
    auto& tm = metrics_->table(c->table);
    if (c->op == Op::kRead) continue;  // snapshot rows are not changes
    if (c->pos.part() == 0) ++tm.applied;
    if (c->captured_us > 0) {
      tm.latency.Observe(static_cast<double>(now - c->captured_us) / 1e6);
      tm.last_captured_us = c->captured_us;
      tm.last_applied_us = now;
    }
  }
  for (size_t i = 0; i < plan_.advances.size(); ++i) {
    metrics_->table(plan_.advance_table[i]).skipped += plan_.advances[i].skipped;
    metrics_->table(plan_.advance_table[i]).dead_letters += plan_.advances[i].dead;
  }
  for (size_t t = 0; t < batched.size(); ++t) {
    if (batched[t]) ++metrics_->table(t).batches;
  }
}

void TargetCore::NoteCopies(std::vector<int64_t>* rows, std::vector<int64_t>* ends) const {
  rows->resize(targets_.size(), 0);
  ends->resize(targets_.size(), 0);
  for (const Change* c : plan_.changes) {
    if (c->op == Op::kRead && c->table < rows->size()) {
      (*rows)[c->table] = std::max((*rows)[c->table], c->pos.tick);
    }
  }
  for (size_t i = 0; i < plan_.advances.size(); ++i) {
    const uint32_t t = plan_.advance_table[i];
    if (plan_.advances[i].snapshot_marker && t < ends->size()) {
      (*ends)[t] = std::max((*ends)[t], plan_.advances[i].snapshot_pos.tick);
    }
  }
}

Status TargetCore::Failed(const Status& st) const {
  if (applier_ && applier_->failed_table() >= 0 &&
      static_cast<size_t>(applier_->failed_table()) < targets_.size()) {
    // The table the failing statement wrote.
    return st.WithContext(fmt::format("applying a batch of {} change(s) to {}",
                                      plan_.changes.size(),
                                      targets_[applier_->failed_table()].target.ToString()));
  }
  // Name every table of the batch, not just the first change's.
  std::vector<std::string> names;
  for (const Change* c : plan_.changes) {
    std::string n = targets_[c->table].target.ToString();
    if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  }
  return st.WithContext(plan_.changes.empty()
                            ? std::string("applying a batch")
                            : fmt::format("applying a batch of {} change(s) to {}",
                                          plan_.changes.size(), fmt::join(names, ", ")));
}

}  // namespace datatunnel::tunnel
