#include "capture/progress_book.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

#include "core/clock.h"

namespace datatunnel::capture {

namespace {

// The newest tick whose batch table progress `p` covers entirely.
int64_t CompleteTick(int64_t tick, int64_t seq) {
  return seq == Position::kEndOfTick ? tick : tick - 1;
}

}  // namespace

Status ProgressBook::Load(ChangeLog& log, const std::string& where) {
  DT_ASSIGN_OR_RETURN(progress_, log.LoadProgress());
  const size_t n = progress_.size();
  heads_.assign(n, {});
  pending_.assign(n, {});
  max_cid_delivered_.assign(n, 0);
  pruned_tick_.assign(n, 0);
  pruned_us_.assign(n, 0);
  delivered_tick_.assign(n, 0);
  // Start at the oldest batch some table has not fully delivered.
  first_batch_ = INT64_MAX;
  for (const auto& p : progress_)
    first_batch_ = std::min(first_batch_, CompleteTick(p.tick, p.seq) + 1);
  DT_ASSIGN_OR_RETURN(auto ticks, log.LoadTicks(first_batch_ - 1, 1 << 20));
  if (ticks.empty() || ticks.front().number != first_batch_ - 1) {
    return Status::Fatal(fmt::format(
        "tick {} is missing from datatunnel.ticks on the {}: the capture state is damaged; run "
        "`datatunnel uninstall` and `datatunnel init`, then snapshot again",
        first_batch_ - 1, where));
  }
  ticks_.assign(ticks.begin(), ticks.end());
  cursor_ = 0;
  return Status::OK();
}

Status ProgressBook::LoadHeads(ChangeLog& log) {
  for (size_t t = 0; t < heads_.size(); ++t) {
    DT_ASSIGN_OR_RETURN(heads_[t], log.LoadHeads(t));
  }
  return Status::OK();
}

Position ProgressBook::SchemaMarkerPosition(size_t t, int64_t epoch) const {
  const int32_t element = progress_[t].sub & ~Position::kPartMask;
  Position m{epoch, progress_[t].tick, progress_[t].seq, element | 2};
  for (const Position& h : heads_[t]) {
    if (h >= m) m = Position{h.epoch, h.tick, h.seq, h.sub + 1};
  }
  return m;
}

void ProgressBook::StartBatch(const Tick& hi) {
  if (cursor_ + 1 == ticks_.size()) ticks_.push_back(hi);
  ++cursor_;
}

int64_t ProgressBook::ResumeAfter(size_t t, int64_t tick, bool* done, int32_t* element) const {
  const TableProgress& p = progress_[t];
  *done = p.tick > tick || (p.tick == tick && p.seq >= Position::kEndOfTick);
  *element = 0;
  if (*done || p.tick != tick) return 0;
  // Part of this batch was delivered before a restart.
  *element = Position{0, 0, 0, p.sub}.element();
  return p.seq;
}

void ProgressBook::Delivered(size_t t, const Position& pos, int64_t count, int64_t max_change_id,
                             const std::map<int32_t, Position>& heads) {
  Pending& p = pending_[t];
  if (pos != Position{}) {  // a prefix of parts only (a key change's first half) is no progress
    p.any = true;
    p.pos = pos;
  }
  if (count > 0) delivered_tick_[t] = std::max(delivered_tick_[t], pos.tick);
  p.delivered += count;
  for (const auto& [partition, head] : heads) p.heads[partition] = head;
  max_cid_delivered_[t] = std::max(max_cid_delivered_[t], max_change_id);
}

Result<bool> ProgressBook::Record(ChangeLog& log, bool all) {
  // A table that only passed ends of ticks (no change delivered) records
  // that at most every kIdleRecordUs: with hundreds of tables, recording
  // every table's new tick every progress_interval_ms would cost the source
  // a row update per table and tick. Recorded progress may lag: a restart
  // reads those batches again and finds nothing in them.
  const int64_t now = MonotonicMicros();
  const bool idle_due = all || now - last_idle_record_us_ >= kIdleRecordUs;
  std::vector<ProgressUpdate> updates;
  for (size_t t = 0; t < pending_.size(); ++t) {
    const Pending& p = pending_[t];
    if (!p.any) continue;
    if (!idle_due && p.delivered == 0 && p.heads.empty()) continue;
    ProgressUpdate u;
    u.table = t;
    u.tick = p.pos.tick;
    u.seq = p.pos.seq;
    u.sub = p.pos.sub;
    u.delivered = p.delivered;
    u.heads.assign(p.heads.begin(), p.heads.end());
    // Everything visible in the newest fully delivered tick can go, once:
    // pruning again at the same tick finds nothing new (every change it
    // covers was delivered, so its change_id is at most the largest
    // delivered when the tick completed) and would scan the whole change
    // table below that id again (half the producer's time in a 1,000,000
    // change backlog, whose single batch completes only at its end).
    // Only where a change was delivered since the last prune: a table that
    // only passed ends of ticks has nothing to prune.
    // And at most every kPruneIntervalUs per table (or with `all`): a
    // prune is a statement per table whatever it deletes, and over hundreds
    // of tables each record pruned about as many tables as had changes,
    // 20 ms of every 200 on the producer's connection at 1,000 changes/s
    // over 500 tables. The rows left meanwhile cost a batch's reads
    // nothing: they start above the bound of lo (ChangeLog::ProbeBound).
    const int64_t complete = CompleteTick(p.pos.tick, p.pos.seq);
    if (complete > pruned_tick_[t] && delivered_tick_[t] > pruned_tick_[t] &&
        (all || now - pruned_us_[t] >= kPruneIntervalUs)) {
      for (const auto& tick : ticks_) {
        if (tick.number == complete) u.prune_snapshot = tick.snapshot;
      }
      u.prune_upto = max_cid_delivered_[t];
      u.prune_tick = complete;
    }
    updates.push_back(std::move(u));
  }
  if (updates.empty()) return false;
  DT_RETURN_IF_ERROR(log.RecordProgress(updates));
  for (const auto& u : updates) {
    progress_[u.table].tick = u.tick;
    progress_[u.table].seq = u.seq;
    progress_[u.table].sub = u.sub;
    if (!u.prune_snapshot.empty()) {
      pruned_tick_[u.table] = u.prune_tick;
      pruned_us_[u.table] = now;
    }
  }
  for (const auto& u : updates) pending_[u.table] = Pending{};
  if (idle_due) last_idle_record_us_ = now;
  ForgetTicks();
  return true;
}

void ProgressBook::ForgetTicks() {
  // Keep the lower bound of the oldest unfinished batch.
  int64_t keep = INT64_MAX;
  for (const auto& p : progress_) keep = std::min(keep, CompleteTick(p.tick, p.seq));
  while (ticks_.size() > 1 && cursor_ > 0 && ticks_.front().number < keep) {
    ticks_.pop_front();
    --cursor_;
  }
}

}  // namespace datatunnel::capture
