// The batch plan: what one transaction on the target does with a run of
// input items, decided before it touches the database.
//
// For each (stream, partition) of the batch, in item order:
//   - the chain check (apply/chain.h): a chained item that does not link to
//     the partition's tail is a gap; nothing of that partition from there on
//     is applied, and the gap is recorded with the batch (Advance::gap);
//   - the offset moves to the item's (or by one, for in-memory streams);
//   - dead letters and ignored items (schema markers, tombstones, foreign
//     topics) only move the offset;
//   - duplicates are dropped: a position the target already applied
//     (IsDuplicate against the stored position), or one a snapshot into the
//     emptied table superseded (the partition's resync);
//   - the rest is applied: end-of-snapshot markers are recorded with the
//     advance, a TRUNCATE sent to every partition becomes a barrier arrival
//     (Applier), every other change goes to Applier::Apply.
//
// Thread-safety: functions of their arguments.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "apply/applier.h"
#include "core/change.h"
#include "core/status.h"
#include "core/table.h"

namespace datatunnel::apply {

// One input record for the target: a decoded change, or a placeholder for a
// message that advances the offset without applying anything.
struct Item {
  // The topic (or in-memory stream name), in storage that outlives the batch:
  // a string per item cost an allocation per change.
  std::string_view stream;
  int32_t partition = 0;
  int64_t offset = -1;  // -1: next in sequence (in-memory streams)
  // kTickEnd: the end of a tick (apply_consistency = "transaction"); its
  // change.pos is the tick's end position, stream and offset those of the
  // control record (in memory: no offset).
  enum class Kind { kChange, kDeadLetter, kIgnored, kTickEnd } kind = Kind::kChange;
  int broadcast_partitions = 0;
  // The message takes part in its partition's chain (apply/chain.h):
  // change.pos is its "source.pos", `prev` its "source.prev" (nullopt: none,
  // not checked). False for the in-memory hand-over, tombstones and messages
  // without a readable position.
  bool chained = false;
  std::optional<Position> prev;
  Change change;
};

// True when the target already has `p` (stored is the newest applied there).
// A position of an older source installation (a lower epoch) is stale.
bool IsDuplicate(const Position& stored, const Position& p);

// The stored state of (stream, partition) of table `table` (Applier::Load,
// usually cached by the caller).
using StateFn = std::function<Result<PartitionState>(const std::string& stream, int32_t partition,
                                                     uint32_t table)>;

struct BatchPlan {
  std::vector<const Change*> changes;   // to apply (pointing into the items)
  std::vector<Advance> advances;        // one per (stream, partition) of the batch
  std::vector<uint32_t> advance_table;  // each advance's table
  std::vector<Position> resync_of;      // each advance's resync (PartitionState)
  std::vector<TruncateArrival> arrivals;
  // Whole ticks: the newest end of tick of the batch, stored with it.
  std::optional<TickMark> tick;
  std::vector<PartitionState> before;  // each advance's stored state before the batch

  void Clear();
  // Advance `i`'s stored state once the batch committed.
  PartitionState StateAfter(size_t i) const;
  // kFatal with the one-line explanation and fix of the first gap the batch
  // records (`targets`: the target-side specs), or OK when none.
  Status GapError(const std::vector<TableSpec>& targets) const;
};

// Plans `items` into *plan (cleared first). Calls `state` once per (stream,
// partition) of the batch. Returns its error when one fails (*plan is then
// incomplete), else OK. REQUIRES: `items` outlive the plan's use.
// `whole_ticks` (apply_consistency = "transaction"): the items are whole
// ticks, every partition of the tunnel included, so a TRUNCATE sent to
// every partition is one change (its partition 0 copy), ordered by position
// with the table's other changes, instead of a barrier; and a gap makes the
// batch apply nothing, only record the gap (a part of a tick is never
// committed).
Status PlanBatch(std::span<const Item> items, const StateFn& state, BatchPlan* plan,
                 bool whole_ticks = false);

}  // namespace datatunnel::apply
