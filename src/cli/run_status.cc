#include "cli/run_status.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/clock.h"

namespace datatunnel::cli {
namespace {

constexpr int64_t kIdleLogMicros = 60'000'000;

std::string Human(double v) {
  if (v >= 1e6) return fmt::format("{:.1f}M", v / 1e6);
  if (v >= 1e4) return fmt::format("{:.0f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

}  // namespace

StatusReporter::StatusReporter(const metrics::Metrics* metrics, const RunPlan& plan, bool tty)
    : metrics_(metrics),
      plan_(plan),
      tty_(tty),
      interval_s_(plan.status_interval_s >= 0 ? plan.status_interval_s : (tty ? 1 : 5)),
      last_rows_(metrics->size(), 0),
      last_print_us_(MonotonicMicros()) {}

void StatusReporter::Tick(int64_t now) {
  if (interval_s_ <= 0 || now - last_print_us_ < int64_t{interval_s_} * 1'000'000) return;
  std::string line = Line((now - last_print_us_) / 1e6);
  if (tty_) {
    fmt::print(stderr, "\r\033[K{}", line);
  } else if (line != last_line_ || now - last_logged_us_ >= kIdleLogMicros) {
    spdlog::info("{}", line);
    last_logged_us_ = now;
    last_line_ = std::move(line);
  }
  last_print_us_ = now;
}

void StatusReporter::Finish() {
  if (tty_ && interval_s_ > 0) fmt::print(stderr, "\n");
}

// One line of counters per table, of the sides this process runs: a
// producer has nothing applied, a consumer nothing captured.
std::string StatusReporter::Line(double dt) {
  std::string line;
  for (size_t i = 0; i < metrics_->size(); ++i) {
    const auto& t = metrics_->table(i);
    std::string part = t.source + ":";
    if (plan_.source) {
      part += fmt::format(" captured {} published {}", t.captured.load(), t.published.load());
    }
    if (plan_.target) part += fmt::format(" applied {}", t.applied.load());
    if (plan_.source && plan_.target) {
      const int64_t lag = t.captured.load() - t.applied.load() - t.skipped.load();
      part += fmt::format(" lag {}", std::max<int64_t>(0, lag));
    }
    const int64_t cap = t.last_captured_us.load(), app = t.last_applied_us.load();
    if (plan_.target && cap > 0 && app >= cap) {
      part += fmt::format(" ({:.0f} ms)", (app - cap) / 1000.0);
    }
    if (t.snapshot_running.load()) {
      const int64_t rows = t.snapshot_rows.load(),
                    total = std::max<int64_t>(1, t.snapshot_total.load());
      const double rate = dt > 0 ? (rows - last_rows_[i]) / dt : 0;
      part +=
          fmt::format(" | snapshot {:3.0f}% {}/{} rows {}/s", std::min(100.0, 100.0 * rows / total),
                      Human(rows), Human(total), Human(rate));
      if (rate > 0 && total > rows) part += fmt::format(" ETA {:.0f}s", (total - rows) / rate);
      last_rows_[i] = rows;
    }
    line += (line.empty() ? "" : "  ") + part;
  }
  return line;
}

metrics::Readiness Readiness(const metrics::Metrics& metrics, const RunPlan& plan, bool memory,
                             double max_lag) {
  if (plan.source && !metrics.source_connected) return {false, "not connected to the source"};
  if (plan.target && !metrics.target_connected) return {false, "not connected to the target"};
  // Ready means a change written now is carried at once: the producer knows
  // its topics and the consumer has its partitions.
  if (plan.source && !metrics.producer_ready) {
    return {false, "the producer is starting (its first messages are not acknowledged yet)"};
  }
  if (plan.target && !memory && !metrics.consumer_ready) {
    return {false,
            "the consumer is waiting for its partitions (joining its group, or waiting for the "
            "topics to exist)"};
  }
  if (!(plan.source && plan.target)) return {true, ""};
  const int64_t now = NowMicros();
  for (size_t i = 0; i < metrics.size(); ++i) {
    const auto& t = metrics.table(i);
    // The age of the oldest change held back: an idle tunnel is not behind.
    const double lag = t.LagSeconds(now);
    if (lag > max_lag) {
      return {false, fmt::format("{} is {:.1f} s behind (more than {} s)", t.source, lag, max_lag)};
    }
  }
  return {true, ""};
}

}  // namespace datatunnel::cli
