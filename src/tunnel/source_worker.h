// SourceWorker: the producer loop. Reads changes and snapshot chunks from the
// source (capture/, snapshot/), hands them to a ChangeSink (Kafka or the
// in-memory hand-over), and records progress on the source only for what the
// sink confirmed (publish/delivery_tracker.h).
//
// One loop, one thread; each session: connect, take the producer lock, then
//   1. tick: record a snapshot in datatunnel.ticks (and, while a snapshot is
//      running, read one chunk at exactly that snapshot: snapshot::Driver);
//   2. read the tick's batch of every table in change_id order
//      (capture::BatchReader) and send it;
//   3. send the chunk's rows, then the end-of-snapshot marker if it was the last;
//   4. meanwhile serve delivery reports, and every progress_interval_ms record
//      the delivered watermark (with the chain heads of a chained sink) and
//      prune delivered changes (capture::ProgressBook), then the snapshot
//      chunks whose rows are delivered (snapshot::Driver).
// The loop holds no SQL and no policy of its own: the schema_changes policy
// and the column check of every tick are capture::SchemaWatch's.
// When to tick is capture::Ticker's rule: right after a batch that had
// changes, otherwise when the check run every check_interval_ms
// (ChangeLog::ChangedSince) sees new changes, on NOTIFY (a snapshot
// request), or after poll_interval_ms.
//
// Failures: a lost source connection or a failed delivery restarts the loop
// from the recorded progress (what was sent again is dropped downstream by
// position), after the sink recovered if it cannot go on as it is
// (ChangeSink::Recover: a new Kafka producer after a fatal producer error);
// errors that cannot heal end Run() with the Status. Only one
// producer per source publishes: the others wait as hot standbys on the
// producer lock and take over when its session ends.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "capture/change_log.h"
#include "config/config.h"
#include "core/stop.h"
#include "metrics/metrics.h"
#include "pg/connection.h"
#include "publish/delivery_tracker.h"
#include "tunnel/sink.h"

namespace datatunnel::tunnel {

struct SourceOptions {
  pg::ConnectOptions connect;
  std::string tunnel;  // the tunnel's name ([tunnel] name)
  std::vector<TableConfig> tables;
  PipelineConfig pipeline;
  // Exit at the first failed connection instead of retrying (start-up).
  bool fail_fast_connect = true;
  // Stop (Run returns OK) once every snapshot in progress is done and
  // delivered, and nothing else is in flight (the `snapshot` command).
  bool exit_after_snapshot = false;
};

class SourceWorker {
 public:
  SourceWorker(SourceOptions options, metrics::Metrics* metrics, const StopSource* stop);
  ~SourceWorker();

  // REQUIRES: called once, before Run().
  void SetSink(ChangeSink* sink) { sink_ = sink; }
  // The delivery callback for the sink (runs on the worker thread, in Poll).
  void OnDelivery(uint64_t token, const Status& status);

  // Runs until a stop is requested (returns OK after flushing and recording
  // progress) or a failure that cannot heal (returns it).
  Status Run();

 private:
  struct Session;
  struct Work;  // the batch being published
  // One session: connect, take the producer lock, then the loop, until a
  // stop (OK) or a failure (the session ends; Run() decides what next).
  Status RunSession();
  Status Connect(Session& s);
  // Waits as a hot standby until this producer holds the lock.
  Status Lock(Session& s);
  // Under the lock: progress, chain heads, schema, snapshots, ticks.
  Status Prepare(Session& s);
  // Starts the snapshots requested since (snapshot::Driver::Poll).
  Status PollSnapshots(Session& s);
  // Sends every table's schema marker; ready once they are delivered.
  Status Announce(Session& s);
  // One turn of the loop; *finished when the session's work is done
  // (exit_after_snapshot).
  Status Step(Session& s, bool* finished);
  // Graceful stop: deliver what is in flight, record it.
  Status Drain(Session& s);
  Status ServeDeliveries(Session& s, int wait_ms, bool force_record);
  // `all`: also the tables that only passed ends of ticks (ProgressBook::Record).
  Status RecordProgress(Session& s, bool all = false);
  Status StartTick(Session& s);
  // The new tick of StartTick, with the first reads or a snapshot chunk.
  Status RecordTick(Session& s, Work& w);
  // One first read per table, each as large as the read sizer says.
  void SizeReads(Session& s, Work& w);
  Status StepTick(Session& s, bool* progressed);
  Status FinishTick(Session& s);
  // Sends the batch's snapshot chunk, and the end marker after the last.
  Status SendChunk(Session& s);
  // Sends `c` to every partition of its table's topic (`last`: the kind
  // of the last copy; the others are parts).
  Status SendToAll(Session& s, const Change& c, publish::DeliveryTracker::Kind last);
  Status SendChange(Session& s, const Change& c, int32_t partition,
                    publish::DeliveryTracker::Kind kind);
  // The same for a change not needed afterwards: the sink may take its row.
  Status SendOwnedChange(Session& s, Change&& c, publish::DeliveryTracker::Kind kind);
  // `captured_us`: the change's capture time, 0 for snapshot rows and markers;
  // `rows`: the snapshot rows a packed chunk carries, else 1.
  template <typename SendFn>
  Status SendVia(Session& s, uint32_t table, const Position& pos, int64_t captured_us,
                 uint32_t rows, publish::DeliveryTracker::Kind kind, SendFn&& send);

  SourceOptions options_;
  metrics::Metrics* metrics_;
  const StopSource* stop_;
  ChangeSink* sink_ = nullptr;
  publish::DeliveryTracker tracker_;
  std::unique_ptr<Session> session_;
  bool started_ = false;  // the source answered once: later failures are retried
};

}  // namespace datatunnel::tunnel
