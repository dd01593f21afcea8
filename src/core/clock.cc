#include "core/clock.h"

#include <algorithm>

namespace datatunnel {

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t MonotonicMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int Backoff::NextDelayMs() {
  int64_t base = initial_ms_;
  for (int i = 0; i < attempt_ && base < max_ms_; ++i) base *= 2;
  base = std::min<int64_t>(base, max_ms_);
  ++attempt_;
  if (!seeded_) {
    rng_.seed(std::random_device{}());
    seeded_ = true;
  }
  std::uniform_int_distribution<int64_t> jitter(-base / 5, base / 5);
  return static_cast<int>(std::max<int64_t>(1, base + jitter(rng_)));
}

}  // namespace datatunnel
