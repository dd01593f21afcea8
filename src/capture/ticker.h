// Capture, data plane of one producer session: when to take the next tick.
//
// A tick is taken right after a batch that had changes, while a snapshot
// has chunks left to read, when a tick recorded before a restart is next,
// after a NOTIFY (`datatunnel snapshot` sends one), after poll_interval_ms,
// or when the check run every check_interval_ms (ChangeLog::ChangedSince:
// two index probes, no write) sees new changes; but not sooner than
// min_tick_interval_ms after the last one (a recorded tick excepted). Under
// load the next tick follows at once: one small write transaction on the
// source per round trip; min_tick_interval_ms trades a little latency for
// fewer of them.
//
// Thread-safety: one thread (the producer's loop).
#pragma once

#include <cstdint>

#include "capture/change_log.h"
#include "config/config.h"
#include "core/status.h"

namespace datatunnel::capture {

class Ticker {
 public:
  explicit Ticker(const PipelineConfig& pipeline) : pipeline_(pipeline) {}

  struct Next {
    enum Kind { kTick, kWait, kIdle } kind = kTick;
    // kWait: serve deliveries this long, then ask again. kIdle: wait this
    // long for a NOTIFY (serving deliveries), then ask again.
    int wait_ms = 0;
  };
  // What to do now (MonotonicMicros() `now`): `reading` a snapshot has
  // chunks left; `recorded` the next batch's tick was recorded before a
  // restart. Runs the check for new changes against `newest` (the newest
  // recorded tick) when it is due.
  Result<Next> Decide(ChangeLog& log, const Tick& newest, bool reading, bool recorded, int64_t now);

  // A tick was taken (or a recorded one started) at `now`.
  void Ticked(int64_t now) {
    last_tick_us_ = now;
    notified_ = false;
  }
  // The batch (or snapshot chunk) of the last tick was published;
  // `had_changes`: it carried any.
  void BatchDone(bool had_changes) { last_had_changes_ = had_changes; }
  // A NOTIFY arrived.
  void Notified() { notified_ = true; }

 private:
  const PipelineConfig& pipeline_;
  int64_t last_tick_us_ = 0;
  int64_t last_check_us_ = 0;  // last ChangedSince()
  bool notified_ = true;
  bool last_had_changes_ = true;
};

}  // namespace datatunnel::capture
