// DeliveryTracker: turns out-of-order delivery reports into safe progress.
//
// Every message the producer hands to the broker (or to the in-memory
// hand-over) is registered in publish order and gets a token. Reports arrive
// in any order; progress may only be recorded up to the longest prefix of
// registered messages that are all delivered (the watermark), because after a
// crash the producer restarts from the recorded progress. Entries that are
// not progress points (the first half of a split change, all but the last
// copy of a message sent to every partition, snapshot rows) are delivered
// like others but never recorded on their own. Bookkeeping entries (the end
// of a tick, the end of a chunk) send nothing and count once everything
// registered before them is delivered.
//
// Chain heads: for a message sent to a known partition, the tracker also
// reports, per (table, partition), the position of the last such message in
// the watermark, but only once a progress point of its table follows it
// (TableAdvance::heads). A head recorded with progress therefore never lies
// beyond that progress, so a producer that restarts from recorded progress
// sends nothing at or below a recorded head except its schema markers, which
// it places above them (tunnel/source_worker.cc).
//
// Thread-safety: not thread-safe; the producer thread owns it and delivery
// callbacks run on that thread (from the broker's poll).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <vector>

#include "core/change.h"
#include "core/status.h"

namespace datatunnel::publish {

// What a watermark advance means for one table.
struct TableAdvance {
  uint32_t table = 0;
  Position pos;               // the newest progress point now delivered
  int64_t delivered = 0;      // progress points (changes) delivered since last taken
  int64_t max_change_id = 0;  // largest change_id delivered (for pruning)
  int64_t snapshot_rows = 0;  // snapshot rows delivered since last taken
  int chunks_done = 0;        // snapshot chunks whose rows are all delivered
  bool marker_done = false;   // the end-of-snapshot marker is delivered
  // Partition -> position of the last message sent there that is delivered
  // and followed by a delivered progress point of the table (chain heads).
  std::map<int32_t, Position> heads;
};

class DeliveryTracker {
 public:
  enum class Kind : uint8_t { kChange, kPart, kSnapshotRow, kChunkEnd, kMarker, kTickEnd };

  // Registers the next message, or with `delivered` a bookkeeping entry that
  // sends nothing (the end of a tick, an empty chunk). Returns its token.
  // `captured_us`: when the change was captured (0 for anything but changes).
  // `rows`: snapshot rows the message carries (a packed chunk carries many).
  // `partition`: where the message went, when the sink chains messages per
  // partition (source.prev), else -1.
  uint64_t Add(uint32_t table, const Position& pos, Kind kind, bool delivered = false,
               int64_t captured_us = 0, uint32_t rows = 1, int32_t partition = -1);
  void MarkDelivered(uint64_t token);
  // A message could not be delivered; remembers the first failure.
  void MarkFailed(uint64_t token, Status why);

  // Advances the watermark and returns what it covers, per table.
  std::vector<TableAdvance> TakeAdvances();
  // The first delivery failure, if any.
  const Status& failure() const { return failure_; }

  // Per table (indexes below per_table->size()), the capture time of the
  // oldest change registered and not yet delivered; 0 where there is none.
  void OldestUndelivered(std::vector<int64_t>* per_table) const;

  size_t in_flight() const { return entries_.size(); }
  uint64_t next_token() const { return base_ + entries_.size(); }
  // Forgets everything (after a restart from recorded progress).
  void Reset();

 private:
  struct Entry {
    uint32_t table;
    Kind kind;
    bool delivered;
    uint32_t rows;
    int32_t partition;
    Position pos;
    int64_t captured_us;
  };
  // Per table: delivered messages past its last delivered progress point,
  // the last one per partition (`last`, indexed by partition; `dirty` lists
  // the partitions set), reported as heads at its next progress point.
  struct Unconfirmed {
    std::vector<Position> last;
    std::vector<int32_t> dirty;
  };
  std::deque<Entry> entries_;
  std::vector<Unconfirmed> unconfirmed_;
  uint64_t base_ = 0;  // token of entries_.front()
  Status failure_;
};

}  // namespace datatunnel::publish
