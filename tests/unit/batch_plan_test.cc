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

}  // namespace
}  // namespace datatunnel
