// ChangeSource: where the target worker takes changes from — the Kafka
// consumer (KafkaSource), or the in-memory hand-over from a source worker in
// the same process (MemorySource). The mirror of ChangeSink (tunnel/sink.h).
//
// Contract: the target worker calls Open() once, after it connected to the
// target; then, until a stop is requested, Next() for a batch, applies it
// (TargetCore::ApplyBatch, which calls KeepAlive() while it waits to retry),
// and Committed() with the same items once the target committed them; and
// Close() at the end, whatever happened after Open() succeeded. A change is
// confirmed to its sender (offsets, acknowledgements) only in Committed().
//
// Thread-safety: every call on the target worker's thread.
#pragma once

#include <vector>

#include "apply/plan.h"
#include "core/status.h"

namespace datatunnel::tunnel {

class TargetCore;

class ChangeSource {
 public:
  virtual ~ChangeSource() = default;
  // Starts reading. `core` (the target: stored positions, columns, barriers)
  // stays valid until Close(). kCancelled when a stop was requested first;
  // another error ends the worker.
  virtual Status Open(TargetCore* core) = 0;
  // Appends the next batch to *items. An empty batch is applied too (Kafka:
  // nothing arrived within the batch wait; applying it finds a lost target
  // connection). Sets *ended when no input follows (the hand-over closed). A
  // non-OK result ends the worker; nothing of the batch is applied.
  virtual Status Next(std::vector<apply::Item>* items, bool* ended) = 0;
  // Called every few hundred milliseconds while a batch waits for the
  // target, so a consumer stays in its group.
  virtual void KeepAlive() {}
  // The batch Next() returned is committed on the target: confirm it to the
  // sender. A non-OK result ends the worker.
  virtual Status Committed(const std::vector<apply::Item>& items) = 0;
  virtual void Close() {}

  // Whole ticks (apply_consistency = "transaction"): true when the batch
  // Next() returned last is a piece of a tick too large to hold
  // (pipeline.tick_stream_changes), which the target stages in an open
  // transaction (TargetCore::StreamPiece); the batches that follow, up to
  // the one ending that tick, belong to the same target transaction. A
  // piece is never passed to Committed(): the batch that ends its tick
  // confirms it too.
  virtual bool piece() const { return false; }
  // The target rolled back a streamed tick: forget everything read and not
  // committed, and hand out again from what the target stored. kRetryable
  // while that cannot be read; the target worker tries again.
  virtual Status Rewind() { return Status::Fatal("internal: this input cannot be read again"); }
};

}  // namespace datatunnel::tunnel
