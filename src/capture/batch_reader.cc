#include "capture/batch_reader.h"

#include <spdlog/spdlog.h>

#include <utility>

namespace datatunnel::capture {

BatchReader::BatchReader(const Tick& lo, const Tick& hi, std::vector<ChangeLog::TickRead> reads,
                         const ProgressBook& book)
    : lo_(lo), hi_(hi), reads_(std::move(reads)) {
  const size_t n = book.tables();
  after_.assign(n, 0);
  done_.assign(n, false);
  prefetched_.assign(n, !reads_.empty());
  bulk_.assign(n, BulkRow{});
  resume_element_.assign(n, 0);
  for (size_t t = 0; t < n; ++t) {
    bool done = false;
    int32_t element = 0;
    after_[t] = book.ResumeAfter(t, hi_.number, &done, &element);
    if (element > 0) {
      // Inside a change row in the bulk form: read it again from its change
      // row, then skip the elements delivered.
      --after_[t];
      resume_element_[t] = element;
    }
    // The probe found nothing of the table in the batch: nothing after any
    // point either.
    if (!reads_.empty() && reads_[t].empty) done = true;
    done_[t] = done;
    if (done || after_[t] != 0 || element > 0) prefetched_[t] = false;  // read from 0: not wanted
  }
}

Result<bool> BatchReader::Next(ChangeLog& log, ReadSizer& sizer, int64_t epoch, size_t* table,
                               int64_t* rows, std::vector<Change>* changes) {
  for (size_t t = 0; t < done_.size(); ++t) {
    if (done_[t]) continue;
    changes->clear();
    *table = t;
    BulkRow& bulk = bulk_[t];
    if (bulk.active()) {
      // A piece of a change row in the bulk form.
      DT_ASSIGN_OR_RETURN(bool finished,
                          log.ReadBulk(t, hi_.number, epoch, sizer.Limit(t), &bulk, changes));
      if (finished) {
        after_[t] = bulk.change_id;
        bulk = BulkRow{};
      }
      *rows = sizer.Observe(t, *changes);
      if (*rows > 0) had_changes_ = true;
      return true;
    }
    int64_t last = 0;
    int limit = 0;
    int read = 0;
    if (prefetched_[t]) {
      prefetched_[t] = false;
      *changes = std::move(reads_[t].changes);
      last = reads_[t].last;
      limit = reads_[t].limit;
      read = reads_[t].rows;
      bulk = reads_[t].bulk;
    } else {
      limit = sizer.Limit(t);
      DT_ASSIGN_OR_RETURN(
          last, log.ReadBatch(t, lo_, hi_, after_[t], limit, epoch, changes, &bulk, &read));
    }
    if (bulk.active() && bulk.change_id == after_[t] + 1 && resume_element_[t] > 0) {
      bulk.next = resume_element_[t];  // delivered before a restart up to here
      spdlog::info("producer: resuming inside change {} of table {} at its row {}", bulk.change_id,
                   t, bulk.next);
    }
    resume_element_[t] = 0;
    *rows = sizer.Observe(t, *changes);
    after_[t] = last;
    if (*rows > 0 || bulk.active()) had_changes_ = true;
    if (read < limit && !bulk.active()) done_[t] = true;
    return true;
  }
  return false;
}

}  // namespace datatunnel::capture
