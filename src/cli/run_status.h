// What a running tunnel tells its operator: the status line (redrawn on a
// terminal, logged otherwise) and the readiness answer of /readyz.
//
// Thread-safety: StatusReporter is the main thread's; Readiness reads the
// metrics' atomics and may run on the HTTP server's thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cli/runner.h"
#include "metrics/http_server.h"
#include "metrics/metrics.h"

namespace datatunnel::cli {

// On a terminal, a status line redrawn every second; otherwise (a service, a
// pipe, JSON logs) a log line every few seconds while something moves, and
// once a minute while idle.
class StatusReporter {
 public:
  StatusReporter(const metrics::Metrics* metrics, const RunPlan& plan, bool tty);
  // Prints when the interval has passed; called by the main loop.
  void Tick(int64_t now_us);
  // Ends the redrawn line (on a terminal) before the process goes on logging.
  void Finish();

 private:
  std::string Line(double dt);

  const metrics::Metrics* metrics_;
  const RunPlan plan_;
  const bool tty_;
  const int interval_s_;
  std::vector<int64_t> last_rows_;
  int64_t last_print_us_, last_logged_us_ = 0;
  std::string last_line_;
};

// /readyz: a change written now is carried at once. `max_lag` is
// pipeline.ready_max_lag_seconds; `memory` is the in-memory hand-over.
metrics::Readiness Readiness(const metrics::Metrics& metrics, const RunPlan& plan, bool memory,
                             double max_lag);

}  // namespace datatunnel::cli
