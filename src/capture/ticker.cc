#include "capture/ticker.h"

#include <algorithm>

namespace datatunnel::capture {

Result<Ticker::Next> Ticker::Decide(ChangeLog& log, const Tick& newest, bool reading, bool recorded,
                                    int64_t now) {
  const int64_t gap = int64_t{pipeline_.min_tick_interval_ms} * 1000;
  if (gap > 0 && !recorded && now - last_tick_us_ < gap) {
    const int64_t left_ms = (gap - (now - last_tick_us_)) / 1000 + 1;
    return Next{Next::kWait, static_cast<int>(std::min<int64_t>(left_ms, 100))};
  }
  if (notified_ || last_had_changes_ || reading || recorded ||
      now - last_tick_us_ >= int64_t{pipeline_.poll_interval_ms} * 1000) {
    return Next{Next::kTick, 0};
  }
  const int64_t check = int64_t{pipeline_.check_interval_ms} * 1000;
  if (now - last_check_us_ >= check) {
    last_check_us_ = now;
    DT_ASSIGN_OR_RETURN(bool changed, log.ChangedSince(newest));
    if (changed) return Next{Next::kTick, 0};
  }
  // Idle until the next check.
  const int64_t next_check = last_check_us_ + check - now;
  return Next{Next::kIdle, static_cast<int>(std::clamp<int64_t>(
                               next_check / 1000 + 1, 1, int64_t{pipeline_.progress_interval_ms}))};
}

}  // namespace datatunnel::capture
