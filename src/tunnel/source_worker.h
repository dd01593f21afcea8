// SourceWorker: the producer loop. Reads changes and snapshot chunks from the
// source (capture/, snapshot/), hands them to a ChangeSink (Kafka or the
// in-memory hand-over), and records progress on the source only for what the
// sink confirmed (publish/delivery_tracker.h).
//
// One loop, one thread:
//   1. tick: record a snapshot in datatunnel.ticks (and, while a snapshot is
//      running, read one chunk at exactly that snapshot);
//   2. read the tick's batch of every table in change_id order and send it;
//   3. send the chunk's rows, then the end-of-snapshot marker if it was the last;
//   4. meanwhile serve delivery reports, and every progress_interval_ms record
//      the delivered watermark (with the chain heads of a chained sink) and
//      prune delivered changes.
// A tick is taken right after a batch that had changes, otherwise when the
// check run every check_interval_ms (ChangeLog::ChangedSince) sees new
// changes, on NOTIFY (a snapshot request), or after poll_interval_ms.
//
// Failures: a lost source connection or a failed delivery restarts the loop
// from the recorded progress (what was sent again is dropped downstream by
// position), after the sink recovered if it cannot go on as it is
// (ChangeSink::Recover: a new Kafka producer after a fatal producer error);
// errors that cannot heal end Run() with the Status. Only one
// producer per source publishes: the others wait as hot standbys on the
// producer lock and take over when its session ends.
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "capture/change_log.h"
#include "config/config.h"
#include "core/stop.h"
#include "metrics/metrics.h"
#include "pg/connection.h"
#include "publish/delivery_tracker.h"
#include "snapshot/chunker.h"
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
  Status RunSession(bool first);
  Status ServeDeliveries(Session& s, int wait_ms, bool force_record);
  Status RecordProgress(Session& s);
  Status StartTick(Session& s);
  static int ReadLimit(const Session& s, size_t t);
  Status StepTick(Session& s, bool* progressed);
  Status FinishTick(Session& s);
  Status SendChange(Session& s, const Change& c, int32_t partition,
                    publish::DeliveryTracker::Kind kind);
  // The same for a change not needed afterwards: the sink may take its row.
  Status SendOwnedChange(Session& s, Change&& c, publish::DeliveryTracker::Kind kind);
  // `captured_us`: the change's capture time, 0 for snapshot rows and markers;
  // `rows`: the snapshot rows a packed chunk carries, else 1.
  template <typename SendFn>
  Status SendVia(Session& s, uint32_t table, const Position& pos, int64_t captured_us,
                 uint32_t rows, publish::DeliveryTracker::Kind kind, SendFn&& send);
  Status CheckSnapshotRequests(Session& s);
  // Compares each table's columns with those the tunnel accepted: evolves
  // (schema_changes = "evolve") or stops with an explanation.
  Status HandleSchemaChanges(Session& s);
  // The captured tables' columns, as one string that changes with any of them.
  // A query of one text value naming every column and type of the tables
  // `oids` ("{oid,...}", our own catalog numbers, inlined).
  static std::string SchemaSignatureSql(const std::string& oids);

  SourceOptions options_;
  metrics::Metrics* metrics_;
  const StopSource* stop_;
  ChangeSink* sink_ = nullptr;
  publish::DeliveryTracker tracker_;
  std::unique_ptr<Session> session_;
  bool started_ = false;  // connected once: later failures are retried, not fatal
};

}  // namespace datatunnel::tunnel
