// TargetCore: the target database as the target worker sees it. It owns the
// target connection (opened in one place, Open()), caches each partition's
// stored state, keeps the target tables' columns current, and applies
// batches: apply::PlanBatch decides what a batch does (chain check,
// duplicates, advances), apply::Applier writes it in one transaction, and
// ApplyBatch retries with backoff until the target accepts it. A batch is
// kept in memory until it commits, so a target outage costs a pause, never a
// change.
//
// Thread-safety: one thread (the target worker's; a ChangeSource calls it
// from that thread too, also from inside rebalance callbacks).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apply/applier.h"
#include "apply/consistency.h"
#include "apply/plan.h"
#include "config/config.h"
#include "core/stop.h"
#include "metrics/metrics.h"
#include "pg/connection.h"

namespace datatunnel::tunnel {

struct TargetOptions {
  pg::ConnectOptions connect;
  // The tunnel's name: through a broker, only its messages, from the source
  // installation `init` bound it to (apply::BoundSource), are applied.
  std::string tunnel;
  std::vector<TableConfig> tables;
  PipelineConfig pipeline;
  KafkaConfig kafka;
  bool fail_fast_connect = true;
};

class TargetCore {
 public:
  TargetCore(TargetOptions options, metrics::Metrics* metrics, const StopSource* stop);
  // Connects, checks the target's state (apply::CheckStateCurrent) and reads
  // the target tables' specs. With fail_fast_connect, a target that cannot
  // be reached at all fails at once; once it answered, a connection lost
  // while starting is retried (Cancelled when a stop is requested first).
  Status Connect();
  const std::vector<TableSpec>& targets() const { return targets_; }
  // The source installation the tunnel is bound to on the target (read at
  // Connect; "" without a tunnel name). Reload() reads it again.
  const std::string& source_install() const { return source_install_; }
  Result<std::string> ReloadSourceInstall();
  // Table index for a topic, or -1.
  int TableForTopic(std::string_view topic) const;
  // The stored state of a partition (cached; loads and creates it). Opens
  // the connection once when it is down (kRetryable when that fails).
  Result<apply::PartitionState> State(const std::string& stream, int32_t partition, uint32_t table);
  void Forget(const std::string& stream, int32_t partition);
  // The source table `table` has `columns`: adds those the target lacks
  // (schema_changes = "evolve") or stops with an explanation ("stop").
  // Sets *changed when the target's columns changed.
  Status EnsureColumns(uint32_t table, const std::vector<Column>& columns, bool* changed);
  // Reads target table `table`'s columns again (`datatunnel init` may have
  // added some since they were read). Sets *changed when they differ.
  Status Redescribe(uint32_t table, bool* changed);
  // TRUNCATE barriers (apply/install.h): has the one at `pos` run; where,
  // if anywhere, is `partition` waiting.
  Result<bool> BarrierDone(const std::string& stream, const Position& pos);
  Result<std::optional<Position>> OpenBarrier(const std::string& stream, int32_t partition);
  // apply_consistency = "transaction": what the target stored for the
  // tunnel (apply/consistency.h); kRetryable while the target is down.
  Result<apply::ConsistencyState> Consistency();
  bool transactional() const { return options_.pipeline.transactional(); }
  const TargetOptions& options() const { return options_; }
  // Applies the items in one transaction, retrying until it commits.
  // Returns OK once applied, Cancelled when a stop was requested first, or a
  // failure that cannot heal. While waiting to retry it calls `keepalive`
  // every few hundred milliseconds (the Kafka consumer stays in its group).
  // Chained items are checked against their partition's tail first: at a gap
  // (apply/chain.h) nothing of that partition from the gap on is applied,
  // the gap is recorded with the batch, and once it committed the result is
  // kFatal with the one-line explanation and fix. An empty batch returns OK
  // at once unless a second passed since the last commit: then it is an
  // empty transaction, which tells whether the target is still there.
  Status ApplyBatch(std::vector<apply::Item>& items, const std::function<void()>& keepalive = {});
  // A tick too large to hold (apply_consistency = "transaction",
  // pipeline.tick_stream_changes), streamed (apply::Applier::StagePiece):
  // StreamPiece stages `items`, a piece of a tick not yet complete, in the
  // open target transaction (opening it); FinishStream stages the batch
  // that completes it and commits the whole. One attempt each: on a failure
  // that may heal the transaction is rolled back and the result is
  // kRetryable — the caller reads the tick again from the stored positions
  // (ChangeSource::Rewind). Cancelled when a stop was requested first.
  Status StreamPiece(std::vector<apply::Item>& items) { return Stream(items, false); }
  Status FinishStream(std::vector<apply::Item>& items) { return Stream(items, true); }
  bool streaming() const { return applier_ && applier_->streaming(); }
  void AbortStream();

 private:
  // The one place the target connection is opened: `wait` retries until it
  // opens or a stop is requested, else it tries once.
  Status Open(bool wait);
  Status ConnectOnce();
  Status Reconnect(bool wait);
  // Target table `table` has `fresh`'s columns and key now.
  void Adopt(uint32_t table, const TableSpec& fresh);
  // After plan_ committed: the cached states and the metrics.
  void Committed();
  // Notes in *rows and *ends, per table, the newest tick of a snapshot row
  // and of an end-of-snapshot marker plan_ applies.
  void NoteCopies(std::vector<int64_t>* rows, std::vector<int64_t>* ends) const;
  Status Stream(std::vector<apply::Item>& items, bool finish);
  // A failure that cannot heal, naming the tables of the batch.
  Status Failed(const Status& st) const;
  TargetOptions options_;
  metrics::Metrics* metrics_;
  const StopSource* stop_;
  std::unique_ptr<pg::Connection> conn_;
  std::vector<TableSpec> targets_;
  std::string source_install_;
  std::unique_ptr<apply::Applier> applier_;
  std::map<std::pair<std::string, int32_t>, apply::PartitionState> states_;
  apply::BatchPlan plan_;
  bool reached_ = false;  // a connection to the target opened once
  // A streamed tick: each partition's state inside its open transaction,
  // and the changes staged per table (counted once it commits).
  std::map<std::pair<std::string, int32_t>, apply::PartitionState> stream_states_;
  std::vector<int64_t> stream_applied_;
  // Whole ticks: per table, the newest tick of a snapshot row and of an
  // end-of-snapshot marker committed (copy_*), and staged in the streamed
  // tick (stream_*). A table whose rows are newer than its marker is being
  // copied: the target does not show a source state yet.
  std::vector<int64_t> copy_rows_, copy_ends_, stream_copy_rows_, stream_copy_ends_;
  int64_t stream_started_us_ = 0;
  size_t stream_pieces_ = 0, stream_changes_ = 0;
  // When a batch last committed (ApplyBatch: how often an empty one goes).
  static constexpr int64_t kIdleCheckUs = 1'000'000;
  int64_t last_round_trip_us_ = 0;
};

}  // namespace datatunnel::tunnel
