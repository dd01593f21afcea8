// The chain check (apply/chain.h) and how the producer picks partitions
// (broker::KeyPartition): a consumer must notice a message missing from a
// partition, and must never see a gap where a restarted producer only sent
// the same messages again.
#include "apply/chain.h"

#include <gtest/gtest.h>

#include <random>

#include "broker/kafka.h"

namespace datatunnel {
namespace {

using apply::Link;
using apply::ReadLink;

Position P(int64_t tick, int64_t seq, int32_t sub = 0) { return Position{5, tick, seq, sub}; }

TEST(Chain, LinkedMessagesMoveTheTail) {
  Position tail;
  EXPECT_EQ(ReadLink(&tail, P(1, 1), Position{}), Link::kLinked);  // the first ever: prev null
  EXPECT_EQ(tail, P(1, 1));
  EXPECT_EQ(ReadLink(&tail, P(1, 2), P(1, 1)), Link::kLinked);
  EXPECT_EQ(ReadLink(&tail, P(1, 2, 1), P(1, 2)), Link::kLinked);  // a key change's halves
  EXPECT_EQ(ReadLink(&tail, P(3, 7), P(1, 2, 1)), Link::kLinked);
  EXPECT_EQ(tail, P(3, 7));
}

TEST(Chain, ResentDuplicatesLinkBehindTheTail) {
  // Read up to (3,9); a producer restarted from progress at (2,5) sends its
  // schema marker (at the progress, linking to the recorded head (2,4)) and
  // then everything after (2,5) again, each linking to the one before.
  Position tail = P(3, 9);
  EXPECT_EQ(ReadLink(&tail, P(2, 5, 2), P(2, 4)), Link::kLinked);
  EXPECT_EQ(ReadLink(&tail, P(2, 6), P(2, 5, 2)), Link::kLinked);
  EXPECT_EQ(ReadLink(&tail, P(3, 9), P(2, 6)), Link::kLinked);
  EXPECT_EQ(tail, P(3, 9));  // duplicates never move it back
  EXPECT_EQ(ReadLink(&tail, P(3, 10), P(3, 9)), Link::kLinked);
  EXPECT_EQ(tail, P(3, 10));
}

TEST(Chain, AMissingPredecessorIsAGap) {
  Position tail = P(3, 9);
  // (3,10) never arrived; (3,11) names it.
  EXPECT_EQ(ReadLink(&tail, P(3, 11), P(3, 10)), Link::kGap);
  EXPECT_EQ(tail, P(3, 9));  // left where it was: the same message is a gap again
  EXPECT_EQ(ReadLink(&tail, P(3, 11), P(3, 10)), Link::kGap);
  // Also right at the start of a partition read from nothing.
  Position empty;
  EXPECT_EQ(ReadLink(&empty, P(1, 2), P(1, 1)), Link::kGap);
  // A later epoch (a new installation) is newer than any tail of the old one.
  tail = P(3, 9);
  EXPECT_EQ(ReadLink(&tail, Position{6, 1, 2, 0}, Position{6, 1, 1, 0}), Link::kGap);
}

TEST(Chain, PosNotAfterPrevIsMalformed) {
  Position tail = P(3, 9);
  EXPECT_EQ(ReadLink(&tail, P(2, 1), P(2, 1)), Link::kMalformed);
  EXPECT_EQ(ReadLink(&tail, P(2, 1), P(2, 2)), Link::kMalformed);
  EXPECT_EQ(ReadLink(&tail, P(4, 1), P(4, 2)), Link::kMalformed);  // malformed before a gap
  EXPECT_EQ(tail, P(3, 9));
}

TEST(Chain, WithoutPrevNothingIsChecked) {
  Position tail = P(3, 9);
  EXPECT_EQ(ReadLink(&tail, P(1, 1), std::nullopt), Link::kLinked);
  EXPECT_EQ(tail, P(3, 9));
  EXPECT_EQ(ReadLink(&tail, P(9, 1), std::nullopt), Link::kLinked);
  EXPECT_EQ(tail, P(9, 1));
}

// A producer's stream to one partition, cut by random restarts, each
// resending from a head recorded earlier: read in full, it never shows a
// gap; with every copy of one position lost (the broker acknowledged it and
// dropped it, so no restart sends it again... or every resend was lost too),
// it always does, unless that was the very last position.
TEST(Chain, RandomRestartsNeverGapLossesAlwaysDo) {
  std::mt19937 rng(42);
  std::vector<Position> stream;
  for (int i = 1; i <= 40; ++i) stream.push_back(P(i, i));
  for (int round = 0; round < 300; ++round) {
    std::vector<Position> sent, prevs;  // in offset order
    Position head;
    size_t next = 0;
    while (next < stream.size()) {
      sent.push_back(stream[next]);
      prevs.push_back(head);
      head = stream[next++];
      if (rng() % 8 == 0) {  // restart from a recorded head at or before the last sent
        next -= rng() % next;
        head = next == 0 ? Position{} : stream[next - 1];
      }
    }
    Position tail;
    for (size_t i = 0; i < sent.size(); ++i) {
      ASSERT_EQ(ReadLink(&tail, sent[i], prevs[i]), Link::kLinked) << "round " << round;
    }
    const Position lost = stream[rng() % (stream.size() - 1)];
    tail = Position{};
    bool gap = false;
    for (size_t i = 0; i < sent.size() && !gap; ++i) {
      if (sent[i] == lost) continue;
      const Link l = ReadLink(&tail, sent[i], prevs[i]);
      ASSERT_NE(l, Link::kMalformed);
      gap = l == Link::kGap;
    }
    EXPECT_TRUE(gap) << "round " << round << ": lost " << lost.ToString();
  }
}

// The Java client's murmur2 (org.apache.kafka.common.utils.Utils.murmur2,
// whose test vectors these are) masked to positive, modulo the partitions:
// other clients put a key where datatunnel does.
TEST(KeyPartition, MatchesTheJavaClient) {
  const std::pair<const char*, int32_t> vectors[] = {
      {"21", -973932308},
      {"foobar", -790332482},
      {"a-little-bit-long-string", -985981536},
      {"a-little-bit-longer-string", -1486304829},
      {"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
      {"abc", 479470107},
  };
  for (const auto& [key, hash] : vectors) {
    for (int32_t n : {1, 3, 4, 8, 1000}) {
      EXPECT_EQ(broker::KeyPartition(key, n), (hash & 0x7fffffff) % n) << key << " " << n;
    }
  }
  EXPECT_EQ(broker::KeyPartition("", 7), broker::KeyPartition("", 7));  // never random
}

}  // namespace
}  // namespace datatunnel
