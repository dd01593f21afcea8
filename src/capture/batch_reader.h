// Capture, data plane: reading one batch of a producer session.
//
// A BatchReader reads the batch (lo, hi] of every table, one bounded read
// at a time (ReadSizer), table after table in order, each table's changes in
// change_id order (ChangeLog::ReadBatch). It starts each table where the
// recorded progress left it (ProgressBook::ResumeAfter: a batch partly
// delivered before a restart goes on after its last delivered change, one
// delivered whole is skipped), and first hands out the reads done with the
// tick (ChangeLog::RecordTick) where they start at the table's beginning.
// A change row in the bulk form (BulkRow) is read in pieces of at most the
// ReadSizer's limit, one per Next(); a restart inside one resumes after its
// last delivered element.
//
// Thread-safety: one thread (the producer's loop).
#pragma once

#include <cstdint>
#include <vector>

#include "capture/change_log.h"
#include "capture/progress_book.h"
#include "core/change.h"
#include "core/status.h"

namespace datatunnel::capture {

class BatchReader {
 public:
  // `reads`: the first reads done with tick `hi`, one per table, or empty.
  BatchReader(const Tick& lo, const Tick& hi, std::vector<ChangeLog::TickRead> reads,
              const ProgressBook& book);

  // Reads the next changes of the first table with changes left into
  // *changes (replacing them), its index into *table and the change-table
  // rows they came from into *rows. Returns false when the batch is read.
  Result<bool> Next(ChangeLog& log, ReadSizer& sizer, int64_t epoch, size_t* table, int64_t* rows,
                    std::vector<Change>* changes);

  const Tick& hi() const { return hi_; }
  // Some table had changes in this batch.
  bool had_changes() const { return had_changes_; }

 private:
  Tick lo_, hi_;
  std::vector<ChangeLog::TickRead> reads_;
  std::vector<int64_t> after_;    // per table: the last change_id read
  std::vector<bool> prefetched_;  // reads_[t] not yet taken
  std::vector<bool> done_;
  std::vector<BulkRow> bulk_;  // per table: the change row in the bulk form being read
  // Per table: the first element not delivered of the bulk change row the
  // recorded progress lies in (0: none), applied when the row is read.
  std::vector<int32_t> resume_element_;
  bool had_changes_ = false;
};

}  // namespace datatunnel::capture
