#include "metrics/metrics.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/clock.h"

namespace datatunnel::metrics {

void Histogram::Observe(double seconds) {
  size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_micros_.fetch_add(static_cast<int64_t>(seconds * 1e6), std::memory_order_relaxed);
}

double Histogram::sum() const { return sum_micros_.load(std::memory_order_relaxed) / 1e6; }

double Histogram::Quantile(double q) const {
  uint64_t total = count();
  if (total == 0) return 0;
  // Nearest rank: the bucket holding the ceil(q * total)-th smallest observation.
  if (!(q > 0)) q = 0;
  if (q > 1) q = 1;
  const double rank = std::ceil(q * static_cast<double>(total));
  const uint64_t want = rank < 1 ? 1 : static_cast<uint64_t>(rank);
  uint64_t seen = 0;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    seen += bucket(i);
    if (seen >= want) return i < kBounds.size() ? kBounds[i] : kBounds.back();
  }
  return kBounds.back();
}

double TableMetrics::LagSeconds(int64_t now_us) const {
  int64_t held = undelivered_age_us.load(std::memory_order_relaxed);
  const int64_t since = unapplied_since_us.load(std::memory_order_relaxed);
  if (since > 0) held = std::max(held, now_us - since);
  return held > 0 ? static_cast<double>(held) / 1e6 : 0.0;
}

Metrics::Metrics(const std::vector<std::pair<std::string, std::string>>& tables) {
  for (const auto& [src, tgt] : tables) {
    auto t = std::make_unique<TableMetrics>();
    t->source = src;
    t->target = tgt;
    tables_.push_back(std::move(t));
  }
}

namespace {

void ProcessMetrics(std::string* out) {
  // Resident memory and CPU from /proc, as the Go and Java clients export them.
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  const long page = sysconf(_SC_PAGESIZE);
  std::ifstream stat("/proc/self/stat");
  std::string line;
  std::getline(stat, line);
  auto rp = line.rfind(')');
  std::istringstream fields(rp == std::string::npos ? "" : line.substr(rp + 2));
  std::string f;
  double utime = 0, stime = 0;
  for (int i = 3; fields >> f; ++i) {
    if (i == 14) utime = std::stod(f);
    if (i == 15) {
      stime = std::stod(f);
      break;
    }
  }
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  fmt::format_to(
      std::back_inserter(*out),
      "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
      "# TYPE process_resident_memory_bytes gauge\n"
      "process_resident_memory_bytes {}\n"
      "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
      "# TYPE process_virtual_memory_bytes gauge\n"
      "process_virtual_memory_bytes {}\n"
      "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
      "# TYPE process_cpu_seconds_total counter\n"
      "process_cpu_seconds_total {}\n",
      resident * page, pages * page, (utime + stime) / ticks);
}

}  // namespace

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string Metrics::RenderPrometheus() const {
  std::string out;
  auto counter = [&](const char* name, const char* help, auto get) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} counter\n", name, help, name);
    for (const auto& t : tables_) {
      fmt::format_to(std::back_inserter(out), "{}{{table=\"{}\"}} {}\n", name,
                     EscapeLabelValue(t->source), get(*t));
    }
  };
  auto gauge = [&](const char* name, const char* help, auto get) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} gauge\n", name, help, name);
    for (const auto& t : tables_) {
      fmt::format_to(std::back_inserter(out), "{}{{table=\"{}\"}} {}\n", name,
                     EscapeLabelValue(t->source), get(*t));
    }
  };
  auto load = [](const std::atomic<int64_t>& a) { return a.load(std::memory_order_relaxed); };
  counter("datatunnel_changes_captured_total", "Changes read from the change table.",
          [&](const TableMetrics& t) { return load(t.captured); });
  counter("datatunnel_changes_published_total",
          "Changes confirmed delivered to the broker (or the in-memory hand-over).",
          [&](const TableMetrics& t) { return load(t.published); });
  counter("datatunnel_published_bytes_total",
          "Bytes of messages (key and value) handed to the broker.",
          [&](const TableMetrics& t) { return load(t.published_bytes); });
  counter("datatunnel_changes_applied_total", "Changes applied to the target.",
          [&](const TableMetrics& t) { return load(t.applied); });
  counter("datatunnel_duplicates_skipped_total",
          "Changes dropped because the target had already applied them.",
          [&](const TableMetrics& t) { return load(t.skipped); });
  counter("datatunnel_dead_letters_total", "Malformed messages sent to the dead-letter topic.",
          [&](const TableMetrics& t) { return load(t.dead_letters); });
  counter("datatunnel_batches_total", "Transactions committed on the target.",
          [&](const TableMetrics& t) { return load(t.batches); });
  counter("datatunnel_snapshot_rows_total", "Snapshot rows delivered.",
          [&](const TableMetrics& t) { return load(t.snapshot_rows); });
  gauge("datatunnel_snapshot_rows_estimated", "Estimated rows of the snapshot in progress.",
        [&](const TableMetrics& t) { return load(t.snapshot_total); });
  gauge("datatunnel_snapshot_running", "1 while a snapshot of the table is in progress.",
        [&](const TableMetrics& t) { return load(t.snapshot_running); });
  gauge("datatunnel_change_table_rows",
        "Rows in the change table, counted every 10 s by the producer holding the lock.",
        [&](const TableMetrics& t) { return load(t.pending); });
  gauge("datatunnel_lag_changes", "Changes captured but not yet applied by this process.",
        [&](const TableMetrics& t) {
          int64_t lag = load(t.captured) - load(t.applied) - load(t.skipped);
          return lag < 0 ? 0 : lag;
        });
  const int64_t now = NowMicros();
  gauge("datatunnel_lag_seconds",
        "Age of the oldest change this process holds and has not yet applied (or delivered); 0 "
        "when it holds none. Grows while an outage holds changes back.",
        [&](const TableMetrics& t) { return t.LagSeconds(now); });
  const char* hname = "datatunnel_end_to_end_latency_seconds";
  fmt::format_to(std::back_inserter(out),
                 "# HELP {0} Time from capture on the source to commit on the target.\n"
                 "# TYPE {0} histogram\n",
                 hname);
  for (const auto& t : tables_) {
    uint64_t cum = 0;
    for (size_t i = 0; i <= Histogram::kBounds.size(); ++i) {
      cum += t->latency.bucket(i);
      std::string le = i < Histogram::kBounds.size() ? fmt::format("{}", Histogram::kBounds[i])
                                                     : std::string("+Inf");
      fmt::format_to(std::back_inserter(out), "{}_bucket{{table=\"{}\",le=\"{}\"}} {}\n", hname,
                     EscapeLabelValue(t->source), le, cum);
    }
    // _count repeats the +Inf bucket: read separately, a concurrent Observe()
    // could make the two differ, which the format forbids.
    fmt::format_to(
        std::back_inserter(out), "{}_sum{{table=\"{}\"}} {}\n{}_count{{table=\"{}\"}} {}\n", hname,
        EscapeLabelValue(t->source), t->latency.sum(), hname, EscapeLabelValue(t->source), cum);
  }
  auto scalar = [&](const char* name, const char* type, const char* help, auto value) {
    fmt::format_to(std::back_inserter(out), "# HELP {0} {2}\n# TYPE {0} {1}\n{0} {3}\n", name, type,
                   help, value);
  };
  scalar("datatunnel_errors_total", "counter", "Failures that caused a retry.", errors.load());
  scalar("datatunnel_retries_total", "counter", "Retried batches and reconnects.", retries.load());
  scalar("datatunnel_reconnects_total", "counter", "Database reconnections.", reconnects.load());
  scalar("datatunnel_source_connected", "gauge", "1 when connected to the source.",
         source_connected.load());
  scalar("datatunnel_target_connected", "gauge", "1 when connected to the target.",
         target_connected.load());
  scalar("datatunnel_leader", "gauge", "1 when this process holds the producer lock.",
         leader.load());
  scalar("datatunnel_applier", "gauge",
         "1 when this process applies a transaction-consistent tunnel (holds its apply lock).",
         applier.load());
  scalar("datatunnel_target_consistent", "gauge",
         "1 when apply_consistency is transaction and the target shows a state the source had.",
         target_consistent.load());
  scalar("datatunnel_target_consistent_tick", "gauge",
         "The source tick whose state the target shows (transaction consistency).",
         consistent_tick.load());
  ProcessMetrics(&out);
  return out;
}

}  // namespace datatunnel::metrics
