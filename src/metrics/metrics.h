// Metrics: counters the pipeline updates and the endpoint and status line
// read. Names follow Prometheus conventions (see RenderPrometheus).
//
// Thread-safety: all updates are relaxed atomics; any thread may read.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace datatunnel::metrics {

// A fixed-bucket histogram of seconds.
class Histogram {
 public:
  static constexpr std::array<double, 14> kBounds = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
                                                     0.2,   0.5,   1,     2,    5,    10,   30};
  void Observe(double seconds);
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const;
  uint64_t bucket(size_t i) const { return buckets_[i].load(std::memory_order_relaxed); }
  // Approximate quantile (upper bound of the bucket holding it); 0 when empty.
  double Quantile(double q) const;

 private:
  std::array<std::atomic<uint64_t>, kBounds.size() + 1> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<int64_t> sum_micros_{0};
};

struct TableMetrics {
  std::string source;  // schema.table
  std::string target;
  std::atomic<int64_t> captured{0};   // changes read from the change table
  std::atomic<int64_t> published{0};  // changes delivered to the broker / hand-over
  std::atomic<int64_t> published_bytes{0};
  std::atomic<int64_t> applied{0};         // changes applied on the target
  std::atomic<int64_t> skipped{0};         // duplicates dropped by position
  std::atomic<int64_t> dead_letters{0};    // malformed messages set aside
  std::atomic<int64_t> batches{0};         // target transactions
  std::atomic<int64_t> snapshot_rows{0};   // snapshot rows delivered
  std::atomic<int64_t> snapshot_total{0};  // estimate of the snapshot's rows
  std::atomic<int64_t> snapshot_running{0};
  std::atomic<int64_t> pending{0};           // changes waiting in the change table (sampled)
  std::atomic<int64_t> last_captured_us{0};  // capture time of the newest change applied
  std::atomic<int64_t> last_applied_us{0};   // when it was applied
  // Consumer: capture time of the oldest change in the batch it is applying
  // (held until the target commits it, through any retries); 0: none.
  std::atomic<int64_t> unapplied_since_us{0};
  // Producer: how long the oldest change it read and has not yet delivered
  // had waited, when last sampled (every 200 ms); 0: none.
  std::atomic<int64_t> undelivered_age_us{0};
  Histogram latency;  // capture -> applied, seconds

  // How far behind this process is on the table: the age of the oldest
  // change it holds, not yet applied (or delivered); 0 when it holds none.
  // Grows while a target or broker outage holds changes back.
  double LagSeconds(int64_t now_us) const;
};

class Metrics {
 public:
  explicit Metrics(const std::vector<std::pair<std::string, std::string>>& tables);
  TableMetrics& table(size_t i) { return *tables_[i]; }
  const TableMetrics& table(size_t i) const { return *tables_[i]; }
  size_t size() const { return tables_.size(); }

  std::atomic<int64_t> errors{0};   // failures that caused a retry
  std::atomic<int64_t> retries{0};  // retries of a batch or reconnects
  std::atomic<int64_t> reconnects{0};
  std::atomic<int> source_connected{0};
  std::atomic<int> target_connected{0};
  std::atomic<int> broker_ok{1};
  std::atomic<int> leader{0};  // this process publishes (holds the producer lock)
  // Readiness (/readyz), set by the workers. The producer: it stands by, or
  // it publishes and the brokers acknowledged its first messages (so it knows
  // its topics' partitions and leaders and holds a producer id). The
  // consumer: the group gave it its partitions and each answered a fetch.
  std::atomic<int> producer_ready{0};
  std::atomic<int> consumer_ready{0};
  // apply_consistency = "transaction": this process applies (holds the
  // tunnel's apply lock on the target); the target shows a state the source
  // had (every commit ended at a tick), at the end of tick consistent_tick.
  std::atomic<int> applier{0};
  std::atomic<int> target_consistent{0};
  std::atomic<int64_t> consistent_tick{0};
  // Target commits that applied a snapshot's end marker (not exported): a
  // hint for `snapshot` to look at the target now, not at its next check.
  std::atomic<int64_t> snapshot_ends_applied{0};

  // Prometheus text exposition format (version 0.0.4).
  std::string RenderPrometheus() const;

 private:
  std::vector<std::unique_ptr<TableMetrics>> tables_;
};

// `value` escaped for a label value of the Prometheus text format: a
// backslash, a double quote and a line feed become \\, \" and \n; every
// other byte stays as it is. These are the format's only escapes: this is
// not JSON, whose \u00XX escapes a Prometheus parser refuses.
std::string EscapeLabelValue(std::string_view value);

}  // namespace datatunnel::metrics
