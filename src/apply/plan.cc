#include "apply/plan.h"

#include <algorithm>
#include <cstddef>
#include <map>
#include <utility>

#include "apply/chain.h"
#include "apply/install.h"

namespace datatunnel::apply {

bool IsDuplicate(const Position& stored, const Position& p) {
  if (p.epoch != stored.epoch) return p.epoch < stored.epoch;  // older installation: stale
  return p <= stored;
}

void BatchPlan::Clear() {
  changes.clear();
  advances.clear();
  advance_table.clear();
  resync_of.clear();
  arrivals.clear();
  tick.reset();
  before.clear();
}

PartitionState BatchPlan::StateAfter(size_t i) const {
  const Advance& a = advances[i];
  return PartitionState{a.offset, a.pos, a.tail, resync_of[i]};
}

Status BatchPlan::GapError(const std::vector<TableSpec>& targets) const {
  for (size_t i = 0; i < advances.size(); ++i) {
    const Advance& a = advances[i];
    if (!a.gap) continue;
    // Recorded with what came before it; nothing after it is applied.
    const TableSpec& spec = targets[advance_table[i]];
    RecordedGap gap{a.stream,
                    a.partition,
                    a.gap_offset,
                    PositionText(a.gap_expected),
                    PositionText(a.gap_found),
                    ""};
    return Status::Fatal(gap.Describe(spec.source.ToString(), spec.target.ToString()));
  }
  return Status::OK();
}

namespace {

// Adds item's effect to its partition's advance `a` (resync: the partition's).
void PlanItem(const Item& item, const Position& resync, Advance* a, BatchPlan* plan,
              bool whole_ticks) {
  if (a->gap) return;  // nothing of the partition past its gap
  if (item.chained && ReadLink(&a->tail, item.change.pos, item.prev) == Link::kGap) {
    a->gap = true;
    a->gap_offset = item.offset;
    a->gap_expected = a->tail;
    a->gap_found = *item.prev;
    return;
  }
  a->offset = item.offset >= 0 ? item.offset : a->offset + 1;
  switch (item.kind) {
    case Item::Kind::kDeadLetter:
      ++a->dead;
      return;
    case Item::Kind::kIgnored:  // schema markers, tombstones: no change to apply or skip
      return;
    case Item::Kind::kTickEnd:  // planned by PlanBatch, never here
      return;
    case Item::Kind::kChange:
      break;
  }
  const Change& c = item.change;
  if (IsDuplicate(a->pos, c.pos) || (resync.epoch != 0 && IsDuplicate(resync, c.pos))) {
    ++a->skipped;  // applied already, or superseded by a snapshot
    return;
  }
  a->pos = c.pos;
  if (c.op == Op::kMarker) {
    a->snapshot_marker = true;
    a->snapshot_pos = c.pos;
    a->snapshot_partitions = std::max(1, item.broadcast_partitions);
    return;
  }
  if (c.op == Op::kTruncate && item.broadcast_partitions > 1 && whole_ticks) {
    // Every copy is in this batch: partition 0's is the table's TRUNCATE.
    if (item.partition != 0) return;
    plan->changes.push_back(&c);
    ++a->applied;
    return;
  }
  if (c.op == Op::kTruncate && item.broadcast_partitions > 1) {
    plan->arrivals.push_back(
        {std::string(item.stream), item.partition, c.pos, item.broadcast_partitions, c.table});
    if (item.partition == 0) ++a->applied;  // one change, whatever the copies
    return;
  }
  plan->changes.push_back(&c);
  if (c.packed_rows > 0) {
    a->applied += c.packed_rows;  // a snapshot chunk passed through whole
  } else if (c.pos.part() == 0) {
    ++a->applied;  // a key change is one change in two messages
  }
  if (c.op != Op::kRead) a->captured_us = std::max(a->captured_us, c.captured_us);
}

}  // namespace

Status PlanBatch(std::span<const Item> items, const StateFn& state, BatchPlan* plan,
                 bool whole_ticks) {
  plan->Clear();
  // Items come in runs of one partition: look the partition up only when
  // the run changes.
  std::map<std::pair<std::string_view, int32_t>, size_t> advance_of;
  size_t current = SIZE_MAX;  // the advance of the previous item's partition
  for (const Item& item : items) {
    if (item.kind == Item::Kind::kTickEnd) {
      if (!plan->tick || plan->tick->end < item.change.pos) {
        plan->tick = TickMark{std::string(item.stream), item.offset, item.change.pos};
      }
      continue;
    }
    if (current == SIZE_MAX || plan->advances[current].partition != item.partition ||
        plan->advances[current].stream != item.stream) {
      const auto key = std::make_pair(item.stream, item.partition);
      auto it = advance_of.find(key);
      if (it != advance_of.end()) {
        current = it->second;
      } else {
        std::string stream(item.stream);
        DT_ASSIGN_OR_RETURN(auto st, state(stream, item.partition, item.change.table));
        Advance a;
        a.stream = std::move(stream);
        a.partition = item.partition;
        a.expected_offset = st.offset;
        a.offset = st.offset;
        a.pos = st.pos;
        a.tail = st.tail;
        current = plan->advances.size();
        advance_of.emplace(key, current);
        plan->advances.push_back(std::move(a));
        plan->advance_table.push_back(item.change.table);
        plan->resync_of.push_back(st.resync);
        plan->before.push_back(st);
      }
    }
    PlanItem(item, plan->resync_of[current], &plan->advances[current], plan, whole_ticks);
  }
  if (whole_ticks) {
    bool gap = false;
    for (const Advance& a : plan->advances) gap = gap || a.gap;
    if (gap) {
      // Nothing of these ticks is applied: only the gap is recorded, every
      // partition left where it was.
      plan->changes.clear();
      plan->arrivals.clear();
      plan->tick.reset();
      std::vector<Advance> kept;
      std::vector<uint32_t> kept_table;
      std::vector<Position> kept_resync;
      std::vector<PartitionState> kept_before;
      for (size_t i = 0; i < plan->advances.size(); ++i) {
        Advance a = plan->advances[i];
        if (!a.gap) continue;
        const PartitionState& b = plan->before[i];
        a.offset = b.offset;
        a.pos = b.pos;
        a.tail = b.tail;
        a.applied = a.skipped = a.dead = 0;
        a.captured_us = 0;
        a.snapshot_marker = false;
        kept.push_back(std::move(a));
        kept_table.push_back(plan->advance_table[i]);
        kept_resync.push_back(plan->resync_of[i]);
        kept_before.push_back(b);
      }
      plan->advances = std::move(kept);
      plan->advance_table = std::move(kept_table);
      plan->resync_of = std::move(kept_resync);
      plan->before = std::move(kept_before);
    }
  }
  return Status::OK();
}

}  // namespace datatunnel::apply
