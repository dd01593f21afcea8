// StopSource: one process-wide "please stop" flag that loops can also wait on.
//
// Signal handlers call RequestStop() (async-signal-safe: an atomic store and a
// write to an eventfd). Loops check stop_requested() between units of work and
// include wake_fd() in their poll() sets so a blocking wait ends at once.
// Thread-safe.
#pragma once

#include <atomic>

namespace datatunnel {

class StopSource {
 public:
  StopSource();
  ~StopSource();
  StopSource(const StopSource&) = delete;
  StopSource& operator=(const StopSource&) = delete;

  void RequestStop();
  bool stop_requested() const { return stop_.load(std::memory_order_acquire); }
  // Readable once a stop was requested; never drained.
  int wake_fd() const { return fd_; }
  // Sleeps up to `ms` milliseconds; returns early (true) when a stop is requested.
  bool SleepFor(int ms) const;

 private:
  std::atomic<bool> stop_{false};
  int fd_ = -1;
};

}  // namespace datatunnel
