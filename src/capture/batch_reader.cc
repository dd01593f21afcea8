#include "capture/batch_reader.h"

#include <utility>

namespace datatunnel::capture {

BatchReader::BatchReader(const Tick& lo, const Tick& hi, std::vector<ChangeLog::TickRead> reads,
                         const ProgressBook& book)
    : lo_(lo), hi_(hi), reads_(std::move(reads)) {
  const size_t n = book.tables();
  after_.assign(n, 0);
  done_.assign(n, false);
  prefetched_.assign(n, !reads_.empty());
  for (size_t t = 0; t < n; ++t) {
    bool done = false;
    after_[t] = book.ResumeAfter(t, hi_.number, &done);
    // The probe found nothing of the table in the batch: nothing after any
    // point either.
    if (!reads_.empty() && reads_[t].empty) done = true;
    done_[t] = done;
    if (done || after_[t] != 0) prefetched_[t] = false;  // read from 0: not what's wanted
  }
}

Result<bool> BatchReader::Next(ChangeLog& log, ReadSizer& sizer, int64_t epoch, size_t* table,
                               int64_t* rows, std::vector<Change>* changes) {
  for (size_t t = 0; t < done_.size(); ++t) {
    if (done_[t]) continue;
    changes->clear();
    int64_t last = 0;
    int limit = 0;
    if (prefetched_[t]) {
      prefetched_[t] = false;
      *changes = std::move(reads_[t].changes);
      last = reads_[t].last;
      limit = reads_[t].limit;
    } else {
      limit = sizer.Limit(t);
      DT_ASSIGN_OR_RETURN(last, log.ReadBatch(t, lo_, hi_, after_[t], limit, epoch, changes));
    }
    *rows = sizer.Observe(t, *changes);
    *table = t;
    after_[t] = last;
    if (*rows > 0) had_changes_ = true;
    if (*rows < limit) done_[t] = true;
    return true;
  }
  return false;
}

}  // namespace datatunnel::capture
