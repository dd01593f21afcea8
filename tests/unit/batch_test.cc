// Batching (net effect per key) and the delivery watermark.
#include "apply/batch.h"

#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <random>

#include "publish/delivery_tracker.h"

namespace datatunnel {
namespace {

TableSpec Spec() {
  TableSpec s;
  Column id;
  id.name = "id";
  Column v;
  v.name = "v";
  s.columns = {id, v};
  s.key = {0};
  return s;
}

Change Make(Op op, const char* id, const char* v = nullptr) {
  Change c;
  c.op = op;
  c.row.Reset(2);
  c.row.Set(0, id);
  if (v) c.row.Set(1, v);
  return c;
}

TEST(Collapse, LastChangePerKeyWins) {
  TableSpec spec = Spec();
  std::vector<Change> cs = {Make(Op::kInsert, "1", "a"), Make(Op::kUpdate, "1", "b"),
                            Make(Op::kInsert, "2", "x"), Make(Op::kDelete, "2"),
                            Make(Op::kDelete, "3"),      Make(Op::kInsert, "3", "again")};
  std::vector<const Change*> ptrs;
  for (auto& c : cs) ptrs.push_back(&c);
  auto eff = apply::Collapse(spec, ptrs);
  EXPECT_FALSE(eff.truncate);
  ASSERT_EQ(eff.upserts.size(), 2u);
  EXPECT_EQ(eff.upserts[0]->row.Get(1), "b");
  EXPECT_EQ(eff.upserts[1]->row.Get(1), "again");
  ASSERT_EQ(eff.deletes.size(), 1u);
  EXPECT_EQ(eff.deletes[0]->row.Get(0), "2");
}

TEST(Collapse, TruncateWipesWhatCameBefore) {
  TableSpec spec = Spec();
  std::vector<Change> cs = {Make(Op::kInsert, "1", "a"), Change{}, Make(Op::kInsert, "2", "b")};
  cs[1].op = Op::kTruncate;
  std::vector<const Change*> ptrs;
  for (auto& c : cs) ptrs.push_back(&c);
  auto eff = apply::Collapse(spec, ptrs);
  EXPECT_TRUE(eff.truncate);
  ASSERT_EQ(eff.upserts.size(), 1u);
  EXPECT_EQ(eff.upserts[0]->row.Get(0), "2");
}

TEST(KeyBytes, NullIsNotEmpty) {
  TableSpec spec = Spec();
  Row a, b;
  a.Reset(2);
  b.Reset(2);
  b.Set(0, "");
  EXPECT_NE(apply::KeyBytes(spec, a), apply::KeyBytes(spec, b));
}

// Against a plain map, on random runs of changes to two-column keys (with
// NULL and empty key values, and truncates): the same last change per key,
// in first-seen order.
TEST(Collapse, MatchesAMapOnRandomRuns) {
  TableSpec spec;
  for (const char* n : {"a", "b", "v"}) {
    Column c;
    c.name = n;
    spec.columns.push_back(c);
  }
  spec.key = {0, 1};
  std::mt19937 rng(42);
  const std::vector<std::optional<std::string>> values = {std::nullopt, "", "1", "2", "10", "x"};
  for (int round = 0; round < 200; ++round) {
    std::vector<Change> cs(rng() % 300);
    for (auto& c : cs) {
      const unsigned r = rng() % 100;
      c.op = r < 2 ? Op::kTruncate : r < 4 ? Op::kMarker : r < 30 ? Op::kDelete : Op::kUpdate;
      c.row.Reset(3);
      for (size_t k : {0, 1}) {
        const auto& v = values[rng() % values.size()];
        if (v) c.row.Set(k, *v);
      }
      c.row.Set(2, std::to_string(rng()));
    }
    std::vector<const Change*> ptrs;
    for (auto& c : cs) ptrs.push_back(&c);
    // The reference.
    bool truncate = false;
    std::map<std::string, const Change*> last;
    std::vector<std::string> order;
    for (const Change* c : ptrs) {
      if (c->op == Op::kTruncate) {
        truncate = true;
        last.clear();
        order.clear();
      } else if (c->op != Op::kMarker) {
        const std::string k = apply::KeyBytes(spec, c->row);
        if (last.emplace(k, c).second) order.push_back(k);
        last[k] = c;
      }
    }
    std::vector<const Change*> deletes, upserts;
    for (const auto& k : order) {
      (last[k]->op == Op::kDelete ? deletes : upserts).push_back(last[k]);
    }
    auto eff = apply::Collapse(spec, ptrs);
    EXPECT_EQ(eff.truncate, truncate) << "round " << round;
    EXPECT_EQ(eff.deletes, deletes) << "round " << round;
    EXPECT_EQ(eff.upserts, upserts) << "round " << round;
  }
}

TEST(DeliveryTracker, WatermarkOnlyOverAContiguousPrefix) {
  publish::DeliveryTracker t;
  using K = publish::DeliveryTracker::Kind;
  uint64_t a = t.Add(0, {1, 1, 10, 0}, K::kChange);
  uint64_t b = t.Add(0, {1, 1, 11, 0}, K::kPart);  // first half of a key change
  uint64_t c = t.Add(0, {1, 1, 11, 1}, K::kChange);
  t.Add(0, {1, 1, Position::kEndOfTick, 0}, K::kTickEnd, true);
  t.MarkDelivered(c);
  t.MarkDelivered(b);
  EXPECT_TRUE(t.TakeAdvances().empty());  // a is still out
  t.MarkDelivered(a);
  auto adv = t.TakeAdvances();
  ASSERT_EQ(adv.size(), 1u);
  EXPECT_EQ(adv[0].pos.seq, Position::kEndOfTick);
  EXPECT_EQ(adv[0].delivered, 2);  // two changes; the part does not count
  EXPECT_EQ(adv[0].max_change_id, 11);
  EXPECT_EQ(t.in_flight(), 0u);
}

TEST(DeliveryTracker, OldestUndeliveredPerTable) {
  publish::DeliveryTracker t;
  using K = publish::DeliveryTracker::Kind;
  uint64_t a = t.Add(0, {1, 1, 1, 0}, K::kChange, false, 100);
  t.Add(1, {1, 1, 2, 0}, K::kSnapshotRow);  // no capture time: not a change waiting
  uint64_t c = t.Add(1, {1, 1, 3, 0}, K::kChange, false, 300);
  t.Add(0, {1, 1, 4, 0}, K::kChange, false, 400);
  std::vector<int64_t> oldest(3, -1);
  t.OldestUndelivered(&oldest);
  EXPECT_EQ(oldest, (std::vector<int64_t>{100, 300, 0}));
  t.MarkDelivered(a);
  t.MarkDelivered(c);
  t.OldestUndelivered(&oldest);
  EXPECT_EQ(oldest, (std::vector<int64_t>{400, 0, 0}));
}

// Chain heads are reported per partition only up to a progress point of
// their table: a restarted producer resends everything after its recorded
// progress, and none of that may sit at or below a recorded head.
TEST(DeliveryTracker, ChainHeadsOnlyUpToAProgressPoint) {
  publish::DeliveryTracker t;
  using K = publish::DeliveryTracker::Kind;
  uint64_t schema0 = t.Add(0, {1, 1, 2, 2}, K::kPart, false, 0, 1, 0);  // schema markers
  uint64_t schema1 = t.Add(0, {1, 1, 2, 2}, K::kPart, false, 0, 1, 1);
  uint64_t del = t.Add(0, {1, 2, 5, 0}, K::kPart, false, 0, 1, 1);  // key change: delete half
  uint64_t ins = t.Add(0, {1, 2, 5, 1}, K::kChange, false, 0, 1, 0);
  uint64_t other = t.Add(1, {1, 2, 6, 0}, K::kChange, false, 0, 1, 3);  // another table
  uint64_t row = t.Add(0, {1, 2, Position::kSnapshotSeqBase, 0}, K::kSnapshotRow, false, 0, 1, 1);
  for (uint64_t tok : {schema0, schema1, del, other, row}) t.MarkDelivered(tok);
  auto adv = t.TakeAdvances();  // the insert half is still out: no progress, no head
  for (const auto& a : adv) {
    EXPECT_EQ(a.pos, Position{});
    EXPECT_TRUE(a.heads.empty());
  }
  t.MarkDelivered(ins);
  adv = t.TakeAdvances();
  ASSERT_EQ(adv.size(), 2u);
  EXPECT_EQ(adv[0].table, 0u);
  EXPECT_EQ(adv[0].pos, (Position{1, 2, 5, 1}));
  EXPECT_EQ(adv[0].heads, (std::map<int32_t, Position>{{0, {1, 2, 5, 1}}, {1, {1, 2, 5, 0}}}));
  EXPECT_EQ(adv[1].heads, (std::map<int32_t, Position>{{3, {1, 2, 6, 0}}}));
  // The snapshot row is delivered but no progress point follows it yet.
  t.Add(0, {1, 2, Position::kSnapshotSeqBase + 1, 0}, K::kChunkEnd, true);
  adv = t.TakeAdvances();
  ASSERT_EQ(adv.size(), 1u);
  EXPECT_EQ(adv[0].heads,
            (std::map<int32_t, Position>{{1, {1, 2, Position::kSnapshotSeqBase, 0}}}));
  // A sink that keeps no chain (partition -1) reports no heads.
  uint64_t mem = t.Add(0, {1, 3, 1, 0}, K::kChange);
  t.MarkDelivered(mem);
  adv = t.TakeAdvances();
  ASSERT_EQ(adv.size(), 1u);
  EXPECT_TRUE(adv[0].heads.empty());
  // After a reset (a new session), what was not confirmed is forgotten.
  uint64_t lone = t.Add(0, {1, 4, 1, 0}, K::kPart, false, 0, 1, 2);
  t.MarkDelivered(lone);
  EXPECT_EQ(t.TakeAdvances().size(), 1u);
  t.Reset();
  t.Add(0, {1, 4, Position::kEndOfTick, 0}, K::kTickEnd, true);
  adv = t.TakeAdvances();
  ASSERT_EQ(adv.size(), 1u);
  EXPECT_TRUE(adv[0].heads.empty());
}

TEST(DeliveryTracker, FailureAndReset) {
  publish::DeliveryTracker t;
  uint64_t a = t.Add(0, {1, 1, 1, 0}, publish::DeliveryTracker::Kind::kChange);
  t.MarkFailed(a, Status::Retryable("broker down"));
  EXPECT_FALSE(t.failure().ok());
  t.Reset();
  EXPECT_TRUE(t.failure().ok());
  t.MarkDelivered(a);  // a report from before the reset is ignored
  EXPECT_TRUE(t.TakeAdvances().empty());
}

}  // namespace
}  // namespace datatunnel
