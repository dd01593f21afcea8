// MemorySource: the target worker's input without a broker (`run --broker
// none`), the mirror of MemorySink: it takes changes from a MemoryChannel.
//
// Changes come in the source's column layout and are laid out by the
// target's (apply::Remapper), after the target got any column it lacks. A
// packed snapshot chunk goes to the target whole, in a batch of its own,
// when the target's columns line up; else row by row. Positions are stored
// under the stream "memory:<target table>", partition 0; each change is
// acknowledged to the source worker once the target committed it.
//
// Thread-safety: one thread, as ChangeSource.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "apply/remap.h"
#include "core/stop.h"
#include "tunnel/change_source.h"
#include "tunnel/memory_channel.h"

namespace datatunnel::tunnel {

class MemorySource : public ChangeSource {
 public:
  // `whole_ticks` (apply_consistency = "transaction"): each batch ends at
  // the end of a tick (a Marker::kTickEnd change), holding one or several
  // whole ticks; what follows the last end waits for the next batch.
  // A tick of more than `stream_changes` changes goes out in pieces
  // (piece()); a rollback of its target transaction asks the source worker
  // to publish again from its recorded progress (Rewind()).
  MemorySource(MemoryChannel* channel, size_t batch_max_changes, const StopSource* stop,
               bool whole_ticks = false, size_t stream_changes = 50000)
      : channel_(channel),
        batch_max_changes_(batch_max_changes),
        stop_(stop),
        whole_ticks_(whole_ticks),
        stream_changes_(stream_changes) {}
  Status Open(TargetCore* core) override;
  Status Next(std::vector<apply::Item>* items, bool* ended) override;
  Status Committed(const std::vector<apply::Item>& items) override;
  bool piece() const override { return piece_; }
  Status Rewind() override;

 private:
  // Waits for changes and turns them into pending_ items. Sets *ended when
  // the channel closed or a stop was requested first.
  Status Fill(bool* ended);
  // Adds the columns of `specs` the target lacks and maps them (by name),
  // once per specs.
  Status MapFor(const SourceSpecs& specs);
  void Add(Change&& c);
  Status NextWholeTicks(std::vector<apply::Item>* items, bool* ended);

  MemoryChannel* channel_;
  size_t batch_max_changes_;
  const StopSource* stop_;
  TargetCore* core_ = nullptr;
  std::vector<std::string> streams_;  // per table: "memory:<target table>"
  std::vector<Change> changes_, unpacked_;
  std::vector<SourceSpecs> specs_;
  // What one Pop() took: its items, handed out in batches by Next(), and its
  // tokens; tokens_[i] is acknowledged once items up to token_end_[i] are.
  std::vector<apply::Item> pending_;
  size_t pending_size_ = 0, next_ = 0;
  std::vector<uint64_t> tokens_, done_;
  std::vector<size_t> token_end_;
  size_t acked_ = 0;
  // Whole ticks: items (and each one's token) waiting for the end of their
  // tick; the tokens of the batch handed out, acknowledged in Committed().
  bool whole_ticks_ = false;
  std::deque<apply::Item> held_;
  std::deque<uint64_t> held_tokens_;
  std::vector<uint64_t> batch_tokens_;
  // A tick too large to hold: the last batch was a piece of it.
  size_t stream_changes_;
  bool piece_ = false;
  bool whole_ticks_streaming_ = false;  // batch_tokens_ holds a piece's tokens
  static constexpr uint64_t kNoToken = UINT64_MAX;
  const std::string tick_stream_ = "memory";
  SourceSpecs mapped_;     // the specs `remap_` was built for
  apply::Remapper remap_;  // rows of `mapped_` laid out by the target's columns
};

}  // namespace datatunnel::tunnel
