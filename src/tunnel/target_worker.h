// Target workers: the consumer loops. They take changes from Kafka (or the
// in-memory hand-over), drop what the target already applied (by position),
// and apply the rest in batches through apply::Applier, retrying with backoff
// until the target accepts them. A batch is kept in memory until it commits,
// so a target outage costs a pause, never a change.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apply/applier.h"
#include "apply/decoder.h"
#include "broker/kafka.h"
#include "config/config.h"
#include "core/stop.h"
#include "metrics/metrics.h"
#include "pg/connection.h"
#include "tunnel/memory_channel.h"

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

// One input record for the target: a decoded change, or a placeholder for a
// message that advances the offset without applying anything.
struct Item {
  // The topic (or in-memory stream name), in storage that outlives the batch:
  // a string per item cost an allocation per change.
  std::string_view stream;
  int32_t partition = 0;
  int64_t offset = -1;  // -1: next in sequence (in-memory streams)
  enum class Kind { kChange, kDeadLetter, kIgnored } kind = Kind::kChange;
  int broadcast_partitions = 0;
  // The message takes part in its partition's chain (apply/chain.h):
  // change.pos is its "source.pos", `prev` its "source.prev" (nullopt: none,
  // not checked). False for the in-memory hand-over, tombstones and messages
  // without a readable position.
  bool chained = false;
  std::optional<Position> prev;
  Change change;
};

// True when the target already has `p` (stored is the newest applied there).
bool IsDuplicate(const Position& stored, const Position& p);

// What both loops share: the target connection, stored positions, dedup and
// the retrying apply.
class TargetCore {
 public:
  TargetCore(TargetOptions options, metrics::Metrics* metrics, const StopSource* stop);
  // Connects and reads the target tables' specs.
  Status Connect();
  const std::vector<TableSpec>& targets() const { return targets_; }
  // The source installation the tunnel is bound to on the target (read at
  // Connect; "" without a tunnel name). Reload() reads it again.
  const std::string& source_install() const { return source_install_; }
  Result<std::string> ReloadSourceInstall();
  // Table index for a topic, or -1.
  int TableForTopic(std::string_view topic) const;
  // The stored state of a partition (cached; loads and creates it).
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
  // Applies the items in one transaction, retrying until it commits.
  // Returns OK once applied, Cancelled when a stop was requested first, or a
  // failure that cannot heal. While waiting to retry it calls `keepalive`
  // every few hundred milliseconds (the Kafka worker stays in its group).
  // Chained items are checked against their partition's tail first: at a gap
  // (apply/chain.h) nothing of that partition from the gap on is applied,
  // the gap is recorded with the batch, and once it committed the result is
  // kFatal with the one-line explanation and fix.
  Status ApplyBatch(std::vector<Item>& items, const std::function<void()>& keepalive = {});

 private:
  Status Reconnect();
  TargetOptions options_;
  metrics::Metrics* metrics_;
  const StopSource* stop_;
  std::unique_ptr<pg::Connection> conn_;
  std::vector<TableSpec> targets_;
  std::string source_install_;
  std::unique_ptr<apply::Applier> applier_;
  std::map<std::pair<std::string, int32_t>, apply::PartitionState> states_;
  bool connected_once_ = false;
};

class KafkaTargetWorker : public broker::Consumer::Listener {
 public:
  KafkaTargetWorker(TargetOptions options, metrics::Metrics* metrics, const StopSource* stop);
  Status Run();

  void OnAssigned(std::vector<TopicPartition>* partitions) override;
  void OnRevoked(const std::vector<TopicPartition>& partitions) override;

 private:
  Status DeadLetter(const broker::Message& m, const Status& why);
  // Keeps the consumer in its group while a batch waits for the target:
  // pauses fetching and polls, keeping any message that still arrives.
  void KeepAlive(broker::Consumer* consumer);
  TargetOptions options_;
  metrics::Metrics* metrics_;
  const StopSource* stop_;
  TargetCore core_;
  std::unique_ptr<broker::Producer> dlq_;
  std::vector<broker::Message> carry_;              // polled during a keepalive, applied next
  std::set<std::string, std::less<>> topic_names_;  // what items' `stream` points to
  bool paused_ = false;
  // Partitions stopped at a TRUNCATE that waits for the other partitions:
  // they stay paused until it has run.
  struct Waiting {
    Position pos;
    bool paused = false;
  };
  std::map<std::pair<std::string, int32_t>, Waiting> waiting_;
  int64_t last_barrier_check_us_ = 0;
  Status CheckBarriers(broker::Consumer* consumer);
  void ResumeAll(broker::Consumer* consumer);
  int64_t dlq_pending_ = 0;
  Status dlq_error_;
  // The group's committed offsets are only a hint for Kafka's lag tools
  // (positions live in the target): applied offsets wait here and are
  // committed at most once per kCommitIntervalUs, and when the consumer
  // stops. Committing after every batch sent the broker an OffsetCommit (a
  // write to __consumer_offsets) per fetch: as many requests as the fetches.
  static constexpr int64_t kCommitIntervalUs = 1'000'000;
  std::map<std::pair<std::string, int32_t>, int64_t> uncommitted_;  // next offset to read
  int64_t last_commit_us_ = 0;
  void CommitOffsets(broker::Consumer* consumer, bool force);
};

class MemoryTargetWorker {
 public:
  MemoryTargetWorker(TargetOptions options, MemoryChannel* channel, metrics::Metrics* metrics,
                     const StopSource* stop);
  Status Run();

 private:
  TargetOptions options_;
  // Maps the target's columns to those of `specs` (by name), once per specs.
  Status MapFor(const SourceSpecs& specs);
  // Lays rows read with the source's columns out by the target's (by name).
  Status Remap(const SourceSpecs& specs, Change* c);
  // A packed snapshot chunk as one change per row (source column order).
  static Status Unpack(const SourceSpecs& specs, const Change& packed, std::vector<Change>* out);
  MemoryChannel* channel_;
  const StopSource* stop_;
  TargetCore core_;
  SourceSpecs mapped_;                 // the specs `map_` was built for
  std::vector<std::vector<int>> map_;  // per table: target column -> source column, or -1
  std::vector<bool> identity_;         // per table: same columns, same order
  std::vector<bool> passthrough_;      // per table: a packed chunk goes in as it is
};

}  // namespace datatunnel::tunnel
