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
  virtual Status Send(const Change& change, int32_t partition, uint64_t token) = 0;
  // The same for a change the caller no longer needs: a sink that keeps
  // changes may take its row instead of copying it. `change` is left as it
  // was when the result is not OK.
  virtual Status SendOwned(Change&& change, int32_t partition, uint64_t token) {
    return Send(change, partition, token);
  }
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
};

}  // namespace datatunnel::tunnel
