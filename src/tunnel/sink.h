// ChangeSink: where the source worker hands changes — the Kafka producer, or
// the in-memory hand-over to a target worker in the same process.
//
// Contract: Send() only enqueues; success is the delivery report, passed to
// the callback given at construction from inside Poll(), on the worker's
// thread. Send() returns kRetryable when the sink is full: Poll() and retry
// (that is the backpressure that bounds memory).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "core/change.h"
#include "core/status.h"
#include "core/table.h"

namespace datatunnel::tunnel {

using DeliveryFn = std::function<void(uint64_t token, const Status& status)>;

class ChangeSink {
 public:
  virtual ~ChangeSink() = default;
  // The source-side specs of this session (columns and key from the source
  // catalog); called by the source worker before it sends anything.
  virtual void SetTables(const std::vector<TableSpec>* tables) { (void)tables; }
  // `partition` -1: by key. Truncates and markers are sent once per partition.
  // On success *sent_to is the partition the message went to when the sink
  // chains the messages of each partition (Chained()), else -1.
  virtual Status Send(const Change& change, int32_t partition, uint64_t token,
                      int32_t* sent_to) = 0;
  // The same for a change the caller no longer needs: a sink that keeps
  // changes may take its row instead of copying it. `change` is left as it
  // was when the result is not OK.
  virtual Status SendOwned(Change&& change, int32_t partition, uint64_t token, int32_t* sent_to) {
    return Send(change, partition, token, sent_to);
  }
  // Whether each message carries the position of the message sent to the
  // same partition before it ("source.prev", so a consumer notices one
  // missing from the broker). Then the source worker records, with its
  // progress, the chain heads the delivery tracker reports, and hands them
  // to the next session with SetChainHeads().
  virtual bool Chained() const { return false; }
  // The chain heads recorded for table `table` (indexed by partition; the
  // zero Position where none is): the first message this session sends to a
  // partition links to its head. Called after SetTables(), before sending.
  virtual void SetChainHeads(uint32_t table, std::vector<Position> heads) {
    (void)table;
    (void)heads;
  }
  // apply_consistency = "transaction": every message of the tick ending at
  // `end` ({epoch, tick, Position::kEndOfTick, 0}) was sent. Through Kafka an
  // end-of-tick record on the tunnel's control topic listing, per partition
  // sent to since the previous one, the position of the last message sent
  // there (core/message.h, TickEnd); in memory a marker in the stream.
  // Delivered like a message (its token). kRetryable when the sink is full.
  virtual Status SendTickEnd(const Position& end, uint64_t token) = 0;
  // Makes ready what SendTickEnd() needs before the first tick (through
  // Kafka: the control topic's partitions and leader), so that the first
  // change after the producer is ready waits for none of it.
  virtual Status PrepareTickEnds() { return Status::OK(); }
  virtual void Poll(int timeout_ms) = 0;
  // Waits up to timeout_ms for everything sent to be delivered; returns how
  // many are still outstanding.
  virtual int Flush(int timeout_ms) = 0;
  // Partitions of table `table`'s topic (1 for the in-memory hand-over).
  virtual Result<int> PartitionCount(uint32_t table) = 0;
  // Non-OK when the sink cannot go on (e.g. a fatal producer error):
  // kRetryable when Recover() can make it go on again, kFatal when not.
  virtual Status Health() const = 0;
  // Called by the source worker before a new session, after one failed: a
  // sink whose Health() is kRetryable starts afresh, dropping what it held
  // undelivered (the new session publishes it again from recorded progress).
  // OK when the sink can go on.
  virtual Status Recover() { return Health(); }
  // Bytes of messages handed to the broker so far (0 in memory).
  virtual int64_t bytes_sent() const { return 0; }
  // Takes a snapshot chunk as one packed change (Change::packed_rows), the
  // rows passed through as COPY text, instead of one change per row.
  virtual bool TakesPackedChunks() const { return false; }
  // Cuts a packed chunk (`packed`, position that of its last row) into the
  // messages it is sent as, appended to *parts in sending order: each with
  // the partition it goes to (-1: the sink's choice) and some of the rows,
  // in the chunk's order, its position that of its last row. By default one
  // message, the whole chunk.
  virtual Status SplitChunk(Change&& packed, std::vector<std::pair<int32_t, Change>>* parts) {
    parts->emplace_back(-1, std::move(packed));
    return Status::OK();
  }
  // Who confirms a delivery, for messages ("the broker").
  virtual const char* receiver() const = 0;
};

}  // namespace datatunnel::tunnel
