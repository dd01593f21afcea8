// MemoryChannel: the in-memory hand-over of `run --broker none`, and the
// MemorySink that feeds it (the target worker reads it through MemorySource,
// tunnel/memory_source.h).
//
// A bounded queue of changes from the source worker to the target worker,
// and a queue of acknowledgements back: a change counts as delivered only
// once the target committed it. When the queue is full the source worker
// stops reading ahead (backpressure), so memory stays bounded whatever the
// backlog.
//
// Thread-safety: one producer thread and one consumer thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "tunnel/sink.h"

namespace datatunnel::tunnel {

// The source-side specs a change was read with (its row follows their columns).
using SourceSpecs = std::shared_ptr<const std::vector<TableSpec>>;

class MemoryChannel {
 public:
  MemoryChannel(size_t max_changes, size_t max_bytes)
      : max_changes_(max_changes), max_bytes_(max_bytes) {}

  // Source side: false when the queue is full. The second form moves the
  // change's row in, but only when it returns true.
  bool TryPush(const Change& c, uint64_t token, const SourceSpecs& specs);
  bool TryPush(Change&& c, uint64_t token, const SourceSpecs& specs);
  // Target side: waits up to timeout_ms for changes, then takes up to `max`
  // of them, or about `max_bytes` (at least one).
  void Pop(size_t max, int timeout_ms, std::vector<Change>* out, std::vector<uint64_t>* tokens,
           std::vector<SourceSpecs>* specs, size_t max_bytes = 16 << 20);
  // Target side: these changes are committed on the target.
  void Ack(const std::vector<uint64_t>& tokens);
  // Source side: waits up to timeout_ms for acknowledgements, then takes them.
  void TakeAcks(int timeout_ms, std::vector<uint64_t>* out);
  // Drops everything queued and every acknowledgement not taken, and ends a
  // replay request (source side, before it restarts from progress).
  void Clear();
  // Target side: it rolled back what it had taken and not acknowledged (a
  // streamed tick): drops the queue; until the source side calls Clear(),
  // pushes are dropped and Pop() hands out nothing, and the source worker's
  // session ends (MemorySink::Health) and starts again from its recorded
  // progress, which only acknowledged changes moved.
  void RequestReplay();
  bool replay_requested() const;
  void Close();
  bool closed() const;
  size_t queued() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable changes_cv_;
  std::condition_variable acks_cv_;
  struct Entry {
    Change change;
    uint64_t token;
    SourceSpecs specs;
  };
  template <typename C>
  bool Push(C&& c, uint64_t token, const SourceSpecs& specs);
  std::deque<Entry> queue_;
  std::vector<uint64_t> acks_;
  size_t bytes_ = 0;
  size_t max_changes_;
  size_t max_bytes_;
  bool closed_ = false;
  bool replay_ = false;
};

class MemorySink : public ChangeSink {
 public:
  // Snapshot chunks come packed, in both modes: with whole ticks the
  // applier writes a chunk among the rest of its tick (apply/applier.h).
  MemorySink(MemoryChannel* channel, DeliveryFn on_delivery)
      : channel_(channel), on_delivery_(std::move(on_delivery)) {}
  Status Send(const Change& change, int32_t partition, uint64_t token, int32_t* sent_to) override;
  // A change of its own (op kMarker, Marker::kTickEnd, pos `end`).
  Status SendTickEnd(const Position& end, uint64_t token) override;
  Status SendOwned(Change&& change, int32_t partition, uint64_t token, int32_t* sent_to) override;
  void Poll(int timeout_ms) override;
  int Flush(int timeout_ms) override;
  Result<int> PartitionCount(uint32_t) override { return 1; }
  void SetTables(const std::vector<TableSpec>* tables) override {
    specs_ = std::make_shared<const std::vector<TableSpec>>(*tables);
  }
  // kRetryable while the target worker asks for a replay (RequestReplay).
  Status Health() const override;
  Status Recover() override;
  bool TakesPackedChunks() const override { return true; }
  const char* receiver() const override { return "the target worker"; }

 private:
  // Queues `change` (copied or moved), or says the hand-over is full.
  template <typename C>
  Status Hand(C&& change, uint64_t token);

  MemoryChannel* channel_;
  DeliveryFn on_delivery_;
  std::vector<uint64_t> acks_;
  int64_t outstanding_ = 0;
  SourceSpecs specs_;
};

}  // namespace datatunnel::tunnel
