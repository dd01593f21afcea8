// Time helpers: wall clock for timestamps that cross processes, a monotonic
// clock for deadlines, and a jittered exponential backoff for retries.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>

namespace datatunnel {

// Microseconds since the Unix epoch (wall clock; comparable across processes).
int64_t NowMicros();
// Microseconds on a monotonic clock (for durations and deadlines only).
int64_t MonotonicMicros();

// Delays for retrying a failing operation: starts at `initial_ms`, doubles up
// to `max_ms`, with +-20% jitter so restarted processes do not retry in step.
// Not thread-safe.
class Backoff {
 public:
  Backoff(int initial_ms = 100, int max_ms = 5000) : initial_ms_(initial_ms), max_ms_(max_ms) {}
  // Returns the next delay and doubles the one after it.
  int NextDelayMs();
  void Reset() { attempt_ = 0; }
  int attempts() const { return attempt_; }

 private:
  int initial_ms_;
  int max_ms_;
  int attempt_ = 0;
  // Seeded at the first retry: a Backoff is made for every batch applied,
  // and std::random_device costs a system call (3.6% of the tunnel's CPU).
  bool seeded_ = false;
  std::minstd_rand rng_;
};

}  // namespace datatunnel
