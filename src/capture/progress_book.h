// Capture, data plane of one producer session: the progress it records on
// the source, the pruning that goes with it, and the ticks it still needs.
//
// A ProgressBook holds
//   - each table's progress as recorded in datatunnel.tables (read by Load()
//     under the producer lock, moved only by Record());
//   - the ticks from the lower bound of the oldest batch some table has not
//     fully delivered up to the newest recorded, with a cursor at the lower
//     bound of the next batch to publish (ticks recorded before a restart
//     lie ahead of it and are published again exactly);
//   - what was delivered since the last Record(): per table the delivered
//     watermark (only ever a point the delivery tracker reports, so every
//     message before it is delivered), how many changes, the largest
//     change_id, and the chain heads that moved.
//
// Record() writes all of it and prunes in one transaction
// (ChangeLog::RecordProgress), then forgets the ticks no table needs. Each
// table is pruned once per newest fully delivered tick: pruning again at the
// same tick would find nothing new and scan the change table below the
// pruned change_id again.
//
// Thread-safety: one thread (the producer's loop).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "capture/change_log.h"
#include "core/change.h"
#include "core/status.h"

namespace datatunnel::capture {

class ProgressBook {
 public:
  // Reads each table's progress and the ticks from the lower bound of the
  // oldest batch not fully delivered. kFatal (the state is damaged) when
  // that tick is missing; `where` names the source in the message.
  // REQUIRES: `log` holds the producer lock.
  Status Load(ChangeLog& log, const std::string& where);

  // Reads the chain heads recorded with the progress (a chained sink).
  Status LoadHeads(ChangeLog& log);
  size_t tables() const { return progress_.size(); }
  const TableProgress& progress(size_t t) const { return progress_[t]; }
  // Table t's chain heads as loaded, by partition (empty: not loaded).
  const std::vector<Position>& heads(size_t t) const { return heads_[t]; }
  // Where this session's schema markers for table t sit: right after its
  // recorded progress, so every message the session sends for the table
  // after them is newer (it resends what follows the progress), and above
  // its recorded chain heads, so the markers link to them ("source.prev"
  // must be older than "pos"). Heads never pass the recorded progress (the
  // delivery tracker reports them only up to a progress point), so the
  // heads at the progress itself are a previous session's markers: part 2
  // and up of the progress's element, one more per session that recorded
  // no progress (changes use parts 0 and 1; Position::sub).
  Position SchemaMarkerPosition(size_t t, int64_t epoch) const;
  // The first batch the session publishes (its upper tick).
  int64_t first_batch() const { return first_batch_; }

  // The lower bound of the next batch.
  const Tick& lower() const { return ticks_[cursor_]; }
  // A tick recorded after lower() (before a restart), or nullptr when the
  // next batch needs a new tick.
  const Tick* recorded_upper() const {
    return cursor_ + 1 < ticks_.size() ? &ticks_[cursor_ + 1] : nullptr;
  }
  const Tick& newest() const { return ticks_.back(); }
  // The next batch is (lower(), hi]: keeps `hi` (a new tick, or
  // *recorded_upper()) and moves the cursor to it.
  void StartBatch(const Tick& hi);

  // Where table t's batch up to tick `tick` resumes: the change_id after
  // which to read (0: from its start); *done when the table already
  // delivered all of it (before a restart). *element > 0 when the change
  // row at that change_id is in the bulk form and was delivered only up to
  // its element *element - 1 (0-based): the batch resumes inside it, at
  // element *element.
  int64_t ResumeAfter(size_t t, int64_t tick, bool* done, int32_t* element) const;

  // Adds a delivery report: `pos` the table's newest delivered progress
  // point (the zero Position: none), `count` changes, `max_change_id` the
  // largest delivered, `heads` the chain heads that moved.
  void Delivered(size_t t, const Position& pos, int64_t count, int64_t max_change_id,
                 const std::map<int32_t, Position>& heads);

  // Records what was delivered since the last call, with pruning, and
  // forgets ticks no table needs. A table that delivered no change since
  // the last call (it only passed ends of ticks) is recorded at most every
  // kIdleRecordUs, or with `all`. Returns false when there was nothing to
  // record (nothing is written then). Every 10 s: it updates every idle
  // table's row, a cost that grows with the tables; a restart reads at most
  // that much of empty ticks again, and the ticks table keeps as many more.
  Result<bool> Record(ChangeLog& log, bool all = false);
  static constexpr int64_t kIdleRecordUs = 10'000'000;
  // A table's delivered changes are pruned at most this often.
  static constexpr int64_t kPruneIntervalUs = 1'000'000;

 private:
  struct Pending {
    bool any = false;
    Position pos;
    int64_t delivered = 0;
    std::map<int32_t, Position> heads;
  };
  void ForgetTicks();

  std::vector<TableProgress> progress_;
  std::vector<std::vector<Position>> heads_;
  std::deque<Tick> ticks_;
  size_t cursor_ = 0;
  int64_t first_batch_ = 0;
  std::vector<Pending> pending_;
  std::vector<int64_t> max_cid_delivered_;
  std::vector<int64_t> pruned_tick_;     // per table: the tick the last prune was at
  std::vector<int64_t> pruned_us_;       // per table: when (MonotonicMicros; 0: never)
  std::vector<int64_t> delivered_tick_;  // per table: the tick of its last delivered change
  int64_t last_idle_record_us_ = 0;
};

}  // namespace datatunnel::capture
