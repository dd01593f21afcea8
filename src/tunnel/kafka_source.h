// KafkaSource: the target worker's input through a broker, the mirror of
// KafkaSink. It reads each table's topic as a member of the consumer group,
// starts each assigned partition right after the offset the target stored
// with its rows, and decodes messages into items (apply::EnvelopeDecoder):
//   - a message it cannot decode goes to the dead-letter topic
//     (on_bad_message = "dlq") or stops the worker, and still takes its place
//     in its partition's chain;
//   - a message of another tunnel or source installation stops the worker
//     before anything of its batch is applied;
//   - a schema marker adds the columns the target lacks first;
//   - a TRUNCATE sent to every partition cuts its partition's input: what
//     follows waits, its partition paused, until every partition got there
//     (the barrier, apply/install.h), then is fetched again.
// With kafka.format = "debezium" the topics hold Debezium's change events
// (apply::DebeziumDecoder, kafka_source_debezium.cc): no chain, tunnel or
// installation to check; each message's position is its offset, and an
// event of another source table than the topic's stops the worker.
// The group's committed offsets are only a hint for Kafka's lag tools
// (positions live in the target).
//
// With apply_consistency = "transaction" it applies whole ticks
// (apply/tick_gate.h): it also reads partition 0 of the tunnel's control
// topic, holds every item until the end-of-tick records say its ticks are
// complete, and hands out batches of whole ticks. It needs every partition,
// so only one consumer of a tunnel applies: Open() waits (a hot standby)
// until it holds the tunnel's apply lock on the target
// (apply/consistency.h), then reads every partition without joining the
// group's assignment (broker::Consumer, assign_all). TRUNCATE needs no
// barrier then: every copy is in the same batch. A tick of more than
// pipeline.tick_stream_changes changes is not held whole: it goes out in
// pieces (piece()), which the target stages in one open transaction; if that
// transaction is rolled back, Rewind() seeks back to the stored offsets.
//
// A packed snapshot chunk (publish/envelope.h) is one item whose COPY text
// goes into the target as it is, in batches of such chunks only (the
// applier writes them with COPY); a message of any other kind starts the
// next batch. A chunk laid out unlike the target, and any chunk with whole
// ticks, becomes one item per row.
//
// Thread-safety: one thread, as ChangeSource; the rebalance callbacks run
// inside the consumer's Poll() on that thread.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "apply/debezium_decoder.h"
#include "apply/decoder.h"
#include "apply/tick_gate.h"
#include "broker/kafka.h"
#include "core/stop.h"
#include "metrics/metrics.h"
#include "tunnel/change_source.h"
#include "tunnel/target_core.h"

namespace datatunnel::tunnel {

class KafkaSource : public ChangeSource, public broker::Consumer::Listener {
 public:
  KafkaSource(const TargetOptions& options, metrics::Metrics* metrics, const StopSource* stop);
  Status Open(TargetCore* core) override;
  Status Next(std::vector<apply::Item>* items, bool* ended) override;
  // Keeps the consumer in its group while a batch waits for the target:
  // pauses fetching and polls, keeping any message that still arrives.
  void KeepAlive() override;
  Status Committed(const std::vector<apply::Item>& items) override;
  void Close() override;
  bool piece() const override { return piece_; }
  // Seeks every partition (and the control topic) back to what the target
  // stored, forgetting what the gate held.
  Status Rewind() override;

  void OnAssigned(std::vector<TopicPartition>* partitions) override;
  void OnRevoked(const std::vector<TopicPartition>& partitions) override;

 private:
  // Message `m` (of table `table`, -1: a foreign topic) as an item.
  Status ToItem(const broker::Message& m, int table, apply::Item* item);
  // Appends message `m`'s items: one, or one per row for a packed snapshot
  // chunk whose columns do not line up with the target's.
  Status AddItems(const broker::Message& m, int table, std::vector<apply::Item>* out);
  // Keeps msgs_[from..] for the next batch (ahead of carry_).
  void Carry(size_t from);
  // With whole ticks: the gate holds a piece's worth (tick_stream_changes
  // items, or kWholeTicksHeldBytes of chunks) and reads no more until a
  // tick completes or a piece goes out.
  bool GateFull() const;
  // Decodes `m` for table `table` into *item, looking again at the target's
  // columns and the tunnel's binding before refusing it.
  Status Decode(const InboundMessage& v, uint32_t table, apply::Item* item);
  // ToItem for a topic of Debezium's (kafka.format = "debezium").
  Status DebeziumItem(const broker::Message& m, uint32_t table, apply::Item* item);
  Status DeadLetter(const broker::Message& m, const Status& why);
  Status CheckBarriers();
  // Next() by key: every message polled, cut at TRUNCATE barriers.
  Status NextByKey(std::vector<apply::Item>* items);
  bool whole_ticks() const { return options_.pipeline.transactional(); }
  // Waits as a hot standby until this consumer holds the apply lock;
  // `idle` (if set) serves the Kafka consumer between attempts.
  // `standing_by`: this consumer already said it stands by (it lost the
  // lock); it says when it takes over, even at the first try.
  Status TakeApplyLock(const std::function<void()>& idle = {}, bool standing_by = false);
  // Every few seconds: the session holding the lock is still there. If it
  // ended and another consumer took the lock, this one steps down: it drops
  // what it holds (rolling back a streamed tick), stands by until it holds
  // the lock again, and reads on from the positions the target stored.
  Status CheckApplyLock();
  // A control-topic message as an end-of-tick item for the gate.
  Status AddTickEnd(const broker::Message& m);
  std::string_view StreamName(std::string_view topic);
  void ResumeAll();
  void CommitOffsets(bool force);

  TargetOptions options_;
  metrics::Metrics* metrics_;
  const StopSource* stop_;
  TargetCore* core_ = nullptr;
  std::unique_ptr<broker::Consumer> consumer_;
  std::unique_ptr<apply::EnvelopeDecoder> decoder_;
  std::unique_ptr<apply::DebeziumDecoder> debezium_;  // kafka.format = "debezium" only
  std::vector<broker::Message> msgs_;
  std::vector<apply::Item> items_;  // AddItems' scratch with whole ticks
  std::vector<Change> unpacked_;
  std::unique_ptr<broker::Producer> dlq_;
  std::vector<broker::Message> carry_;              // polled during a keepalive, applied next
  std::set<std::string, std::less<>> topic_names_;  // what items' `stream` points to
  bool paused_ = false;
  // A partition's input stops at a TRUNCATE sent to every partition: what
  // follows it waits until every partition got there (the barrier). Per
  // batch: where each partition was cut, and the first message left out.
  std::map<std::pair<std::string, int32_t>, Position> cut_;
  std::map<std::pair<std::string, int32_t>, int64_t> refetch_;
  // Partitions stopped at a TRUNCATE that waits for the other partitions:
  // they stay paused until it has run.
  struct Waiting {
    Position pos;
    bool paused = false;
  };
  std::map<std::pair<std::string, int32_t>, Waiting> waiting_;
  int64_t last_barrier_check_us_ = 0;
  int64_t dlq_pending_ = 0;
  Status dlq_error_;
  // Applied offsets wait here and are committed at most once per
  // kCommitIntervalUs, and when the consumer stops. Committing after every
  // batch sent the broker an OffsetCommit (a write to __consumer_offsets)
  // per fetch: as many requests as the fetches.
  static constexpr int64_t kCommitIntervalUs = 1'000'000;
  // With whole ticks, a poll's messages at most (about); a chunk whose
  // columns do not line up with the target's unpacks into a row per line.
  static constexpr size_t kWholeTicksPollBytes = 4 << 20;
  // With whole ticks, the packed snapshot chunks' text the gate holds
  // before it reads no more and streams the tick held (a tick brings at
  // most one chunk, snapshot_chunk_bytes: 32 MiB by default).
  static constexpr size_t kWholeTicksHeldBytes = 64 << 20;
  std::map<std::pair<std::string, int32_t>, int64_t> uncommitted_;  // next offset to read
  int64_t last_commit_us_ = 0;
  // Whole ticks (apply_consistency = "transaction").
  apply::TickGate gate_;
  std::unique_ptr<pg::Connection> lock_conn_;  // holds the apply lock
  int64_t last_lock_check_us_ = 0;
  int64_t ticks_offset_ = 0;   // where the control topic is read from
  int64_t held_since_us_ = 0;  // items held and no end-of-tick record since
  bool warned_no_ends_ = false;
  // The first and the newest tick of the changes added to the gate since
  // the last end-of-tick record (markers aside): a producer running by key
  // moves on to new ticks without records; one huge tick streams for long
  // without its record, legitimately.
  Position unended_first_, unended_last_;
  // After how long such messages are warned about (30 s; tests shorten it
  // with kNoEndsWarnEnv).
  static constexpr const char* kNoEndsWarnEnv = "DATATUNNEL_TEST_NO_ENDS_WARN_MS";
  int64_t no_ends_warn_us_ = 30'000'000;
  // A tick too large to hold goes out in pieces (TickGate::ReleasePiece):
  // the last batch was one; the next offsets of the partitions pieces came
  // from, committed (as a hint) with the batch that ends the tick.
  bool piece_ = false;
  std::map<std::pair<std::string, int32_t>, int64_t> streamed_;
};

}  // namespace datatunnel::tunnel
