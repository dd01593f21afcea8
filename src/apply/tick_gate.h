// The tick gate: transaction-consistent apply through Kafka
// (pipeline.apply_consistency = "transaction", docs/architecture.md,
// "Transaction-consistent apply").
//
// A tick's messages are spread over every partition of every topic of the
// tunnel; the producer ends each tick that sent anything with one record on
// the tunnel's control topic (core/message.h, TickEnd) listing, per topic
// partition it sent to, the position of the last message it sent there. The
// gate holds the items read from each partition until a tick is complete —
// every listed partition has been read at or past its listed position (or
// the target stored a tail there at or past it) — and then releases, from
// each partition in offset order, every held item up to the end of that
// tick, with the end-of-tick item last: a batch of whole ticks.
//
// Why it is correct across restarts:
//   - a producer that restarts republishes a tick with the same positions and
//     its first record lists every partition it sent to in the session,
//     schema markers included, so a partly delivered tick is still covered;
//     a record seen again for a tick already applied completes at once and
//     releases only duplicates, which the batch plan drops;
//   - a consumer restarts from the offsets and tails the target stored with
//     the last whole ticks it committed, and from the control record stored
//     with them (apply/consistency.h).
// Items are released per partition as a prefix in offset order, never
// past an item of a later tick, so a stored offset never skips a message.
//
// Thread-safety: one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apply/plan.h"
#include "core/message.h"
#include "core/status.h"

namespace datatunnel::apply {

// Parses a control-topic message value (publish/envelope.h, EncodeTickEnd).
// kBadData when it is not one.
Status DecodeTickEnd(std::string_view value, TickEnd* out);

class TickGate {
 public:
  // Partition (stream, partition) is read from here on; `tail` is the newest
  // position the target stored for it (PartitionState::tail), zero if none.
  void Start(std::string_view stream, int32_t partition, const Position& tail);
  // Forgets a partition and what it held (no longer read by this consumer).
  void Forget(std::string_view stream, int32_t partition);
  // A data item (a change, dead letter or ignored message), in offset order
  // within its partition. REQUIRES: item.stream outlives the gate's use.
  void Add(Item&& item);
  // An end-of-tick record: `item` (Item::Kind::kTickEnd, change.pos the
  // tick's end) and what it lists. Records come in control-topic order.
  void AddEnd(Item&& item, TickEnd&& end);
  // Appends to *out every held item of every tick now complete (in runs of
  // one partition, each in offset order), then their end-of-tick items.
  // Returns the number of ticks released.
  size_t Release(std::vector<Item>* out);
  // A tick too large to hold whole (pipeline.tick_stream_changes): appends
  // to *out about `max` held items (at least one partition's run) of the
  // oldest tick held and of any before it, each partition's in offset order
  // as a prefix, and returns how many. They are a piece of a tick not yet
  // complete: from then on Release() waits until a tick at or past it is
  // complete, so that the pieces and the rest go in one target transaction.
  size_t ReleasePiece(size_t max, std::vector<Item>* out);
  // Pieces were released and their tick is not yet (Release() ends it).
  bool streaming() const { return stream_bound_ != Position{}; }
  // Forgets every item and end-of-tick record held and the pieces released
  // (the target rolled their transaction back): the caller reads again from
  // what the target stored, and calls Start() for each partition.
  void Reset();

  size_t held() const { return held_; }
  // The COPY text of the packed snapshot chunks held (each counts as one
  // item in held()).
  size_t held_bytes() const { return held_bytes_; }
  size_t pending_ends() const { return ends_.size(); }
  // The end of the newest tick released (zero before the first).
  const Position& released() const { return released_; }

 private:
  struct Partition {
    Position reached;  // the newest position read there (or stored)
    std::deque<Item> items;
  };
  struct End {
    Item item;
    TickEnd end;
  };
  bool Complete(const TickEnd& end) const;
  // `item` leaves the gate.
  void Took(const Item& item);
  using Key = std::pair<std::string, int32_t>;
  // parts_[(stream, partition)], made when missing.
  Partition& PartitionOf(std::string_view stream, int32_t partition);
  std::map<Key, Partition, std::less<>> parts_;
  Key scratch_;  // PartitionOf's lookup key
  std::deque<End> ends_;
  size_t held_ = 0;
  size_t held_bytes_ = 0;
  Position released_;
  Position stream_bound_;  // the end of the tick pieces were released of
};

}  // namespace datatunnel::apply
