// The batch plan (apply/plan.h): what a batch does on the target, decided
// before it touches the database — duplicates dropped by position, the
// chain check, each partition's advance — and the in-memory input's column
// mapping (apply/remap.h).
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "apply/plan.h"
#include "apply/remap.h"
#include "apply/tick_gate.h"
#include "publish/envelope.h"

namespace datatunnel {
namespace {

using apply::Item;

Position P(int64_t tick, int64_t seq, int32_t sub = 0) { return Position{5, tick, seq, sub}; }

Item Change1(std::string_view stream, int32_t partition, int64_t offset, Position pos,
             Op op = Op::kInsert) {
  Item it;
  it.stream = stream;
  it.partition = partition;
  it.offset = offset;
  it.change.op = op;
  it.change.pos = pos;
  it.change.captured_us = 1000 + offset;
  return it;
}

// The stored states, and how often each partition was looked up.
struct States {
  std::map<std::pair<std::string, int32_t>, apply::PartitionState> stored;
  std::map<std::pair<std::string, int32_t>, int> loads;
  apply::StateFn Fn() {
    return [this](const std::string& stream, int32_t partition, uint32_t) {
      ++loads[{stream, partition}];
      return Result<apply::PartitionState>(stored[{stream, partition}]);
    };
  }
};

TEST(Plan, DropsWhatTheTargetAppliedAlready) {
  States s;
  s.stored[{"t", 0}] = apply::PartitionState{41, P(2, 5), P(2, 5), {}};
  std::vector<Item> items = {Change1("t", 0, 40, P(2, 4)), Change1("t", 0, 41, P(2, 5)),
                             Change1("t", 0, 42, P(2, 6)), Change1("t", 0, 43, P(3, 1))};
  apply::BatchPlan plan;
  ASSERT_TRUE(apply::PlanBatch(items, s.Fn(), &plan).ok());
  ASSERT_EQ(plan.advances.size(), 1u);
  const apply::Advance& a = plan.advances[0];
  EXPECT_EQ(a.skipped, 2);
  EXPECT_EQ(a.applied, 2);
  EXPECT_EQ(a.expected_offset, 41);  // the guard: what was stored
  EXPECT_EQ(a.offset, 43);
  EXPECT_EQ(a.pos, P(3, 1));
  ASSERT_EQ(plan.changes.size(), 2u);
  EXPECT_EQ(plan.changes[0], &items[2].change);
  EXPECT_EQ(plan.StateAfter(0).offset, 43);
  EXPECT_EQ(plan.StateAfter(0).pos, P(3, 1));
}

TEST(Plan, AnOlderInstallationIsStaleANewerOneIsNot) {
  EXPECT_TRUE(apply::IsDuplicate(P(9, 9), Position{4, 100, 1, 0}));
  EXPECT_FALSE(apply::IsDuplicate(P(9, 9), Position{6, 1, 1, 0}));
  EXPECT_TRUE(apply::IsDuplicate(P(9, 9), P(9, 9)));
  EXPECT_FALSE(apply::IsDuplicate(P(9, 9), P(9, 9, 1)));
}

TEST(Plan, ASnapshotSupersedesMessagesUpToItsResync) {
  States s;
  s.stored[{"t", 0}].resync = P(7, Position::kEndOfTick, INT32_MAX);
  std::vector<Item> items = {Change1("t", 0, 0, P(6, 1)), Change1("t", 0, 1, P(7, 3)),
                             Change1("t", 0, 2, P(8, 1))};
  apply::BatchPlan plan;
  ASSERT_TRUE(apply::PlanBatch(items, s.Fn(), &plan).ok());
  EXPECT_EQ(plan.advances[0].skipped, 2);
  ASSERT_EQ(plan.changes.size(), 1u);
  EXPECT_EQ(plan.changes[0]->pos, P(8, 1));
  const Position resync = s.stored[{"t", 0}].resync;
  EXPECT_EQ(plan.StateAfter(0).resync, resync);
}

TEST(Plan, AGapStopsOnlyItsPartition) {
  States s;
  s.stored[{"t", 0}] = apply::PartitionState{9, P(1, 1), P(1, 1), {}};
  std::vector<Item> items = {Change1("t", 0, 10, P(1, 2)), Change1("t", 1, 3, P(1, 3)),
                             Change1("t", 0, 11, P(1, 5)), Change1("t", 0, 12, P(1, 6))};
  for (auto& it : items) it.chained = true;
  items[0].prev = P(1, 1);     // links
  items[1].prev = Position{};  // the partition's first: links
  items[2].prev = P(1, 4);     // (1,4) was never read: a gap
  items[3].prev = P(1, 5);
  apply::BatchPlan plan;
  ASSERT_TRUE(apply::PlanBatch(items, s.Fn(), &plan).ok());
  ASSERT_EQ(plan.advances.size(), 2u);
  const apply::Advance& a = plan.advances[0];
  EXPECT_TRUE(a.gap);
  EXPECT_EQ(a.gap_offset, 11);
  EXPECT_EQ(a.gap_expected, P(1, 2));
  EXPECT_EQ(a.gap_found, P(1, 4));
  EXPECT_EQ(a.offset, 10);  // nothing past the gap
  EXPECT_EQ(a.tail, P(1, 2));
  EXPECT_FALSE(plan.advances[1].gap);
  EXPECT_EQ(plan.changes.size(), 2u);  // (1,2) of partition 0, (1,3) of partition 1

  std::vector<TableSpec> targets(1);
  targets[0].source = {"public", "s"};
  targets[0].target = {"public", "t"};
  Status gap = plan.GapError(targets);
  EXPECT_EQ(gap.code(), StatusCode::kFatal);
  EXPECT_NE(gap.message().find("offset 11"), std::string::npos) << gap.message();
}

TEST(Plan, EachPartitionIsLookedUpOnce) {
  States s;
  std::vector<Item> items = {Change1("a", 0, 0, P(1, 1)), Change1("a", 1, 0, P(1, 2)),
                             Change1("a", 0, 1, P(1, 3)), Change1("b", 0, 0, P(1, 4))};
  apply::BatchPlan plan;
  ASSERT_TRUE(apply::PlanBatch(items, s.Fn(), &plan).ok());
  EXPECT_EQ(plan.advances.size(), 3u);
  for (const auto& [key, n] : s.loads) EXPECT_EQ(n, 1) << key.first << key.second;
  EXPECT_EQ(plan.advances[0].offset, 1);
  EXPECT_EQ(plan.advances[0].applied, 2);
}

TEST(Plan, ALookupErrorStopsThePlan) {
  std::vector<Item> items = {Change1("a", 0, 0, P(1, 1))};
  apply::BatchPlan plan;
  Status st = apply::PlanBatch(
      items,
      [](const std::string&, int32_t, uint32_t) -> Result<apply::PartitionState> {
        return Status::Retryable("down");
      },
      &plan);
  EXPECT_TRUE(st.IsRetryable());
  EXPECT_TRUE(plan.changes.empty());
}

TEST(Plan, InMemoryOffsetsCountOnAndPlaceholdersOnlyMoveThem) {
  States s;
  s.stored[{"memory:t", 0}] = apply::PartitionState{6, P(1, 1), P(1, 1), {}};
  std::vector<Item> items = {Change1("memory:t", 0, -1, P(1, 2)),
                             Change1("memory:t", 0, -1, P(1, 3)),
                             Change1("memory:t", 0, -1, P(1, 4))};
  items[1].kind = Item::Kind::kIgnored;
  items[2].kind = Item::Kind::kDeadLetter;
  apply::BatchPlan plan;
  ASSERT_TRUE(apply::PlanBatch(items, s.Fn(), &plan).ok());
  EXPECT_EQ(plan.advances[0].offset, 9);
  EXPECT_EQ(plan.advances[0].dead, 1);
  EXPECT_EQ(plan.advances[0].applied, 1);
  EXPECT_EQ(plan.advances[0].pos, P(1, 2));  // placeholders do not move the position
}

TEST(Plan, MarkersTruncatesKeyChangesAndChunks) {
  States s;
  std::vector<Item> items = {
      Change1("t", 0, 0, P(1, 1)),                 // an update that changed the key ...
      Change1("t", 0, 1, P(1, 1, 1)),              // ... is one change in two messages
      Change1("t", 0, 2, P(1, 2), Op::kTruncate),  // to every partition: a barrier
      Change1("t", 0, 3, P(2, 1), Op::kRead),      // a packed chunk of 50 rows
      Change1("t", 0, 4, P(2, 2), Op::kMarker),    // the end of a snapshot
      Change1("t", 1, 0, P(1, 2), Op::kTruncate),  // the TRUNCATE's copy
  };
  items[2].broadcast_partitions = 2;
  items[5].broadcast_partitions = 2;
  items[3].change.packed_rows = 50;
  items[4].change.marker = Marker::kSnapshotDone;
  items[4].broadcast_partitions = 2;
  apply::BatchPlan plan;
  ASSERT_TRUE(apply::PlanBatch(items, s.Fn(), &plan).ok());
  const apply::Advance& a = plan.advances[0];
  EXPECT_EQ(a.applied, 1 + 1 + 50);
  EXPECT_EQ(plan.advances[1].applied, 0);  // counted once, in partition 0
  ASSERT_EQ(plan.arrivals.size(), 2u);
  EXPECT_EQ(plan.arrivals[0].partitions, 2);
  EXPECT_EQ(plan.arrivals[1].partition, 1);
  EXPECT_TRUE(a.snapshot_marker);
  EXPECT_EQ(a.snapshot_pos, P(2, 2));
  EXPECT_EQ(a.snapshot_partitions, 2);
  EXPECT_EQ(plan.changes.size(), 3u);  // the key change's halves and the chunk
  EXPECT_EQ(a.captured_us, 1001);      // the newest captured change, not the snapshot's
}

TableSpec Spec(std::vector<std::string> names, std::vector<size_t> key) {
  TableSpec t;
  for (auto& n : names) {
    Column c;
    c.name = n;
    t.columns.push_back(c);
  }
  t.key = std::move(key);
  return t;
}

TEST(Remap, LaysSourceRowsOutByTheTargetsColumnsByName) {
  apply::Remapper remap;
  // The target has the columns in another order, one the source lacks, and
  // lacks one the source has.
  remap.Build({Spec({"id", "a", "b", "gone"}, {0})}, {Spec({"b", "id", "extra", "a"}, {1})});
  EXPECT_FALSE(remap.passthrough(0));
  Change c;
  c.op = Op::kUpdate;
  c.row.Reset(4);
  c.row.Set(0, "7");
  c.row.Set(1, "x");  // b stays NULL
  c.row.Set(3, "dropped");
  remap.Remap(&c);
  ASSERT_EQ(c.row.size(), 4u);
  EXPECT_TRUE(c.row.IsNull(0));
  EXPECT_EQ(c.row.Get(1), "7");
  EXPECT_TRUE(c.row.IsAbsent(2));  // left alone on the target
  EXPECT_EQ(c.row.Get(3), "x");

  Change d;  // a delete carries the key only: its other columns are not NULL
  d.op = Op::kDelete;
  d.key_only = true;
  d.row.Reset(4);
  d.row.Set(0, "7");
  remap.Remap(&d);
  EXPECT_EQ(d.row.Get(1), "7");
  EXPECT_TRUE(d.row.IsAbsent(0));
  EXPECT_TRUE(d.row.IsAbsent(3));
}

TEST(Remap, ChunksPassThroughOnlyWhenTheColumnsLineUp) {
  apply::Remapper remap;
  TableSpec generated = Spec({"id", "v"}, {0});
  generated.columns[1].generated = true;
  remap.Build({Spec({"id", "v"}, {0}), Spec({"id", "v"}, {0})},
              {Spec({"id", "v"}, {0}), generated});
  EXPECT_TRUE(remap.passthrough(0));
  EXPECT_FALSE(remap.passthrough(1));  // COPY cannot write a generated column

  Change packed;
  packed.op = Op::kRead;
  packed.table = 1;
  packed.packed_rows = 2;
  packed.pos = P(3, Position::kSnapshotSeqBase + 10);
  packed.row.Reset(1);
  packed.row.Set(0, "1\ta\n2\t\\N\n");
  std::vector<Change> rows;
  ASSERT_TRUE(remap.Unpack(packed, &rows).ok());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].pos, P(3, Position::kSnapshotSeqBase + 9));
  EXPECT_EQ(rows[1].pos, packed.pos);
  EXPECT_EQ(rows[0].row.Get(1), "a");
  EXPECT_TRUE(rows[1].row.IsNull(1));

  packed.row.Set(0, "1\ta\textra\n");
  rows.clear();
  EXPECT_EQ(remap.Unpack(packed, &rows).code(), StatusCode::kFatal);
}

// Whole ticks (apply_consistency = "transaction"): the gate.

Item TickEndItem(int64_t offset, int64_t tick) {
  Item it;
  it.stream = "ticks";
  it.offset = offset;
  it.kind = Item::Kind::kTickEnd;
  it.change.op = Op::kMarker;
  it.change.marker = Marker::kTickEnd;
  it.change.pos = Position{5, tick, Position::kEndOfTick, 0};
  return it;
}

TickEnd EndOf(int64_t tick, std::vector<TickEnd::Part> parts) {
  TickEnd e;
  e.end = Position{5, tick, Position::kEndOfTick, 0};
  e.parts = std::move(parts);
  return e;
}

std::vector<int64_t> Offsets(const std::vector<Item>& items, std::string_view stream) {
  std::vector<int64_t> out;
  for (const auto& it : items) {
    if (it.stream == stream) out.push_back(it.offset);
  }
  return out;
}

TEST(TickGate, ReleasesATickOnlyOnceEveryListedPartitionHasIt) {
  apply::TickGate gate;
  gate.Start("a", 0, {});
  gate.Start("a", 1, {});
  gate.Add(Change1("a", 0, 10, P(7, 1)));
  gate.Add(Change1("a", 0, 11, P(7, 3)));
  gate.Add(Change1("a", 0, 12, P(8, 1)));  // the next tick
  gate.AddEnd(TickEndItem(100, 7), EndOf(7, {{"a", 0, P(7, 3)}, {"a", 1, P(7, 2)}}));
  std::vector<Item> out;
  EXPECT_EQ(gate.Release(&out), 0u);  // partition 1 has not got there
  EXPECT_TRUE(out.empty());
  gate.Add(Change1("a", 1, 20, P(7, 2)));
  EXPECT_EQ(gate.Release(&out), 1u);
  EXPECT_EQ(Offsets(out, "a"), (std::vector<int64_t>{10, 11, 20}));
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.back().kind, Item::Kind::kTickEnd);  // last, with the batch
  EXPECT_EQ(gate.held(), 1u);                        // tick 8 waits for its record
}

TEST(TickGate, AStoredTailCountsAndAnAppliedTickCompletesAtOnce) {
  apply::TickGate gate;
  gate.Start("a", 0, P(9, 5));  // the target stored this: ticks up to 9 applied
  gate.Start("a", 1, {});
  // A restarted producer's record for tick 9 again, and its copies.
  gate.Add(Change1("a", 1, 30, P(9, 2)));
  gate.AddEnd(TickEndItem(101, 9), EndOf(9, {{"a", 0, P(9, 5)}, {"a", 1, P(9, 2)}}));
  std::vector<Item> out;
  EXPECT_EQ(gate.Release(&out), 1u);
  EXPECT_EQ(Offsets(out, "a"), (std::vector<int64_t>{30}));
}

TEST(TickGate, APartitionIsReleasedAsAPrefixNeverPastALaterTick) {
  apply::TickGate gate;
  gate.Start("a", 0, {});
  // An earlier session sent tick 4 and part of tick 5, then the producer
  // restarted and sent tick 5 again (same positions).
  gate.Add(Change1("a", 0, 1, P(4, 1)));
  gate.Add(Change1("a", 0, 2, P(5, 1)));
  gate.Add(Change1("a", 0, 3, P(4, 1)));  // out of order after a restart (a copy)
  gate.AddEnd(TickEndItem(7, 4), EndOf(4, {{"a", 0, P(4, 1)}}));
  std::vector<Item> out;
  EXPECT_EQ(gate.Release(&out), 1u);
  EXPECT_EQ(Offsets(out, "a"), (std::vector<int64_t>{1}));  // offset 3 waits behind 2
  out.clear();
  gate.AddEnd(TickEndItem(8, 5), EndOf(5, {{"a", 0, P(5, 1)}}));
  EXPECT_EQ(gate.Release(&out), 1u);
  EXPECT_EQ(Offsets(out, "a"), (std::vector<int64_t>{2, 3}));
}

TEST(TickGate, TheRecordRoundTrips) {
  TickEnd e = EndOf(12, {{"t.x", 3, P(12, 77, 1)}, {"t.y", 0, P(11, 2, 2)}});
  std::string value;
  publish::EncodeTickEnd(publish::Origin("db1", "tun", "inst"), e, &value);
  TickEnd back;
  ASSERT_TRUE(apply::DecodeTickEnd(value, &back).ok()) << value;
  EXPECT_EQ(back.end, e.end);
  ASSERT_EQ(back.parts.size(), 2u);
  EXPECT_EQ(back.parts[0].topic, "t.x");
  EXPECT_EQ(back.parts[0].partition, 3);
  EXPECT_EQ(back.parts[0].pos, P(12, 77, 1));
  EXPECT_EQ(back.parts[1].pos, P(11, 2, 2));
  EXPECT_EQ(back.tunnel, "tun");
  EXPECT_EQ(back.install, "inst");
  EXPECT_EQ(apply::DecodeTickEnd("{\"tick_end\": 3}", &back).code(), StatusCode::kBadData);
  EXPECT_EQ(apply::DecodeTickEnd("not json", &back).code(), StatusCode::kBadData);
}

TEST(Plan, WholeTicksTruncateOnceAndStoreTheTick) {
  States s;
  Item t0 = Change1("a", 0, 5, P(3, 9), Op::kTruncate);
  t0.broadcast_partitions = 2;
  Item t1 = Change1("a", 1, 6, P(3, 9), Op::kTruncate);
  t1.broadcast_partitions = 2;
  std::vector<Item> items = {Change1("a", 0, 4, P(3, 8)), t0, t1, Change1("a", 1, 7, P(3, 10)),
                             TickEndItem(50, 3)};
  apply::BatchPlan plan;
  ASSERT_TRUE(apply::PlanBatch(items, s.Fn(), &plan, /*whole_ticks=*/true).ok());
  EXPECT_TRUE(plan.arrivals.empty());  // no barrier: every copy is here
  ASSERT_EQ(plan.changes.size(), 3u);
  EXPECT_EQ(plan.changes[1], &items[1].change);  // partition 0's copy
  ASSERT_TRUE(plan.tick.has_value());
  EXPECT_EQ(plan.tick->offset, 50);
  EXPECT_EQ(plan.tick->end.tick, 3);
  EXPECT_EQ(plan.advances.size(), 2u);  // the record is no partition of a table
}

TEST(Plan, WholeTicksAGapAppliesNothing) {
  States s;
  Item a = Change1("a", 0, 4, P(3, 8));
  Item b = Change1("a", 1, 9, P(3, 9));
  b.chained = true;
  b.prev = P(2, 1);  // never read: a gap
  std::vector<Item> items = {a, b, TickEndItem(50, 3)};
  apply::BatchPlan plan;
  ASSERT_TRUE(apply::PlanBatch(items, s.Fn(), &plan, /*whole_ticks=*/true).ok());
  EXPECT_TRUE(plan.changes.empty());
  EXPECT_FALSE(plan.tick.has_value());
  ASSERT_EQ(plan.advances.size(), 1u);
  EXPECT_TRUE(plan.advances[0].gap);
  EXPECT_EQ(plan.advances[0].offset, plan.advances[0].expected_offset);
}

}  // namespace
}  // namespace datatunnel
