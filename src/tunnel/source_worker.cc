#include "tunnel/source_worker.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>

#include "capture/batch_reader.h"
#include "capture/install.h"
#include "capture/progress_book.h"
#include "capture/schema_watch.h"
#include "capture/ticker.h"
#include "core/clock.h"
#include "snapshot/driver.h"

namespace datatunnel::tunnel {

using Kind = publish::DeliveryTracker::Kind;

namespace {

// When a captured change was made, for the lag; 0 for snapshot rows and
// markers, which are not changes waiting to reach the target.
int64_t CaptureTime(const Change& c) {
  return c.op == Op::kRead || c.op == Op::kMarker ? 0 : c.captured_us;
}

}  // namespace

// The batch being published: (lo, hi], and the snapshot chunk read at hi.
struct SourceWorker::Work {
  capture::Tick lo, hi;
  std::vector<capture::ChangeLog::TickRead> reads;  // first reads, done with the tick
  std::optional<capture::BatchReader> batch;
  int chunk_table = -1;
  snapshot::Chunk chunk;
  bool replay = false;  // a tick recorded before a restart
};

// What one session of the loop holds; the stages' own state lives in their
// types (the schema watch, the progress book, the snapshot driver).
struct SourceWorker::Session {
  std::unique_ptr<pg::Connection> conn;
  std::vector<TableSpec> specs;
  std::unique_ptr<capture::ChangeLog> log;
  std::optional<capture::SchemaWatch> schema;
  capture::ProgressBook book;
  std::optional<snapshot::Driver> snaps;
  capture::ReadSizer read_sizer;
  std::optional<capture::Ticker> ticker;
  int64_t epoch = 0;
  std::optional<Work> work;

  int64_t last_record_us = 0;
  int64_t last_pending_us = 0;  // last count of the change tables
  int64_t last_lag_sample_us = 0;
  std::vector<int64_t> oldest_undelivered;  // per table, see ServeDeliveries
  // While the schema markers are not all delivered (the producer is not
  // ready yet): the token after them.
  bool ready_pending = false;
  uint64_t ready_token = 0;
};

SourceWorker::SourceWorker(SourceOptions options, metrics::Metrics* metrics, const StopSource* stop)
    : options_(std::move(options)), metrics_(metrics), stop_(stop) {}

SourceWorker::~SourceWorker() = default;

void SourceWorker::OnDelivery(uint64_t token, const Status& status) {
  if (status.ok()) {
    tracker_.MarkDelivered(token);
  } else {
    tracker_.MarkFailed(token, status);
  }
}

Status SourceWorker::Run() {
  Backoff backoff(500, 10000);
  bool first = true;
  for (;;) {
    Status st = RunSession();
    metrics_->source_connected = 0;
    metrics_->leader = 0;
    metrics_->producer_ready = 0;
    session_.reset();
    if (st.ok() || st.IsCancelled()) return Status::OK();
    if (!st.IsRetryable() || (first && options_.fail_fast_connect && !started_)) return st;
    ++metrics_->errors;
    ++metrics_->reconnects;
    int delay = backoff.NextDelayMs();
    spdlog::warn("producer: {}; restarting from recorded progress in {} ms", st.message(), delay);
    first = false;
    // A sink that cannot go on as it is (a fatal producer error) starts afresh.
    if (Status r = sink_->Recover(); !r.ok()) return r;
    if (stop_->SleepFor(delay)) return Status::OK();
  }
}

Status SourceWorker::RunSession() {
  session_ = std::make_unique<Session>();
  Session& s = *session_;
  DT_RETURN_IF_ERROR(Connect(s));
  DT_RETURN_IF_ERROR(Lock(s));
  DT_RETURN_IF_ERROR(Prepare(s));
  DT_RETURN_IF_ERROR(Announce(s));
  spdlog::info("producer: publishing {} table(s) from the {}, resuming at tick {}", s.specs.size(),
               s.conn->description(), s.book.first_batch());
  while (!stop_->stop_requested()) {
    bool finished = false;
    DT_RETURN_IF_ERROR(Step(s, &finished));
    if (finished) return Status::OK();
  }
  return Drain(s);
}

Status SourceWorker::Connect(Session& s) {
  DT_ASSIGN_OR_RETURN(s.conn, options_.fail_fast_connect && !started_
                                  ? pg::Connection::Open(options_.connect)
                                  : pg::OpenWithRetry(options_.connect, 1 << 30,
                                                      [this] { return stop_->stop_requested(); }));
  metrics_->source_connected = 1;
  std::vector<std::string> warnings;
  DT_ASSIGN_OR_RETURN(s.specs, capture::DescribeSourceTables(*s.conn, options_.tables, &warnings));
  s.log = std::make_unique<capture::ChangeLog>(s.conn.get(), &s.specs, options_.tunnel);
  sink_->SetTables(&s.specs);
  DT_ASSIGN_OR_RETURN(s.epoch, s.log->LoadEpoch());
  started_ = true;  // connected and configured once: from now on, failures are waited out
  return Status::OK();
}

Status SourceWorker::Lock(Session& s) {
  bool announced = false;
  for (;;) {
    DT_ASSIGN_OR_RETURN(bool got, s.log->TryLock());
    if (got) break;
    if (!announced) {
      spdlog::info(
          "producer: another producer of tunnel \"{}\" is publishing from the {}; standing by",
          options_.tunnel, s.conn->description());
      announced = true;
      metrics_->producer_ready = 1;  // a standby is ready: it takes over when needed
    }
    if (stop_->SleepFor(1000)) return Status::Cancelled();
  }
  metrics_->producer_ready = 0;  // until the schema markers are delivered (Announce)
  metrics_->leader = 1;
  if (!announced) return Status::OK();
  spdlog::info("producer: took over publishing");
  // The columns may have changed while this producer stood by: describe the
  // tables again, so the schema watch compares what is there now.
  std::vector<std::string> warnings;
  DT_ASSIGN_OR_RETURN(s.specs, capture::DescribeSourceTables(*s.conn, options_.tables, &warnings));
  sink_->SetTables(&s.specs);
  return Status::OK();
}

Status SourceWorker::Prepare(Session& s) {
  // Only the lock holder's view of progress is current: read it now, with
  // the chain heads recorded with it and the ticks it needs.
  DT_RETURN_IF_ERROR(s.book.Load(*s.log, s.conn->description()));
  if (sink_->Chained()) {
    DT_RETURN_IF_ERROR(s.book.LoadHeads(*s.log));
    for (size_t t = 0; t < s.specs.size(); ++t) {
      sink_->SetChainHeads(static_cast<uint32_t>(t), s.book.heads(t));
    }
  }
  s.schema.emplace(s.conn.get(), options_.tunnel, &s.specs, &options_.tables);
  DT_RETURN_IF_ERROR(s.schema->Reconcile());
  DT_RETURN_IF_ERROR(s.schema->Start());
  DT_RETURN_IF_ERROR(s.conn->Listen(capture::kNotifyChannel));

  tracker_.Reset();
  for (size_t t = 0; t < s.specs.size(); ++t) metrics_->table(t).undelivered_age_us = 0;
  s.read_sizer.Start(*s.log, s.specs.size());
  s.ticker.emplace(options_.pipeline);
  s.snaps.emplace(&s.specs, options_.pipeline.snapshot_chunk_rows,
                  options_.pipeline.snapshot_chunk_bytes);
  return PollSnapshots(s);
}

Status SourceWorker::PollSnapshots(Session& s) {
  return s.snaps->Poll(*s.conn, [this](size_t t, const snapshot::Progress& p) {
    metrics_->table(t).snapshot_running = 1;
    metrics_->table(t).snapshot_total = p.total;
    metrics_->table(t).snapshot_rows = p.rows;
  });
}

Status SourceWorker::Announce(Session& s) {
  // Tell consumers the columns before any row that uses them.
  for (size_t t = 0; t < s.specs.size(); ++t) {
    Change schema;
    schema.op = Op::kMarker;
    schema.marker = Marker::kSchema;
    schema.table = static_cast<uint32_t>(t);
    schema.pos = s.book.SchemaMarkerPosition(t, s.epoch);
    schema.captured_us = NowMicros();
    DT_RETURN_IF_ERROR(SendToAll(s, schema, Kind::kPart));
  }
  // Ready once the markers are delivered (ServeDeliveries): by then the
  // producer knows every topic's partitions and leaders and holds its
  // producer id, so the first change waits for none of that.
  s.ready_token = tracker_.next_token();
  s.ready_pending = true;
  if (sink_->Chained()) {
    // Nothing more until the broker stored the markers. A broker that has no
    // state for this producer on a partition (a new process, a new topic)
    // accepts its second request there even when the first failed, and
    // librdkafka then reports the first one delivered though it never was
    // ("implicitly acked"; docs/architecture.md, Guarantees): one request
    // at a time until every partition stored one of ours. From then on the
    // broker refuses a request out of sequence.
    while (tracker_.in_flight() > 0) {
      if (stop_->stop_requested()) return Status::Cancelled();
      DT_RETURN_IF_ERROR(ServeDeliveries(s, 10, false));
    }
  }
  return Status::OK();
}

Status SourceWorker::Step(Session& s, bool* finished) {
  DT_RETURN_IF_ERROR(ServeDeliveries(s, 0, false));
  if (options_.exit_after_snapshot && tracker_.in_flight() == 0 && !s.snaps->running() && !s.work) {
    *finished = true;
    return RecordProgress(s, true);
  }
  // In memory with whole ticks, the target commits (and so confirms) only
  // at the end of a tick: a tick larger than max_in_flight is read whole.
  const bool whole_tick = options_.pipeline.transactional() && !sink_->Chained() && s.work;
  if (!whole_tick && tracker_.in_flight() >= static_cast<size_t>(options_.pipeline.max_in_flight)) {
    // Backpressure: wait for deliveries instead of reading further ahead.
    return ServeDeliveries(s, 10, false);
  }
  if (s.work) {
    bool progressed = false;
    DT_RETURN_IF_ERROR(StepTick(s, &progressed));
    return progressed ? Status::OK() : FinishTick(s);
  }
  const int64_t now = MonotonicMicros();
  if (now - s.snaps->last_poll_us() > 1'000'000) DT_RETURN_IF_ERROR(PollSnapshots(s));
  if (now - s.last_pending_us > 10'000'000) {
    // Sampled: a count of the change tables, for the change_table_rows gauge.
    s.last_pending_us = now;
    for (size_t t = 0; t < s.specs.size(); ++t) {
      DT_ASSIGN_OR_RETURN(metrics_->table(t).pending, s.log->CountPending(t));
    }
  }
  DT_ASSIGN_OR_RETURN(auto next, s.ticker->Decide(*s.log, s.book.newest(), s.snaps->reading(),
                                                  s.book.recorded_upper() != nullptr, now));
  if (next.kind == capture::Ticker::Next::kTick) return StartTick(s);
  if (next.kind == capture::Ticker::Next::kWait) return ServeDeliveries(s, next.wait_ms, false);
  // Idle (a NOTIFY: `snapshot` wakes the producer), serving deliveries.
  DT_ASSIGN_OR_RETURN(int notes, s.conn->WaitForNotifications(next.wait_ms, stop_->wake_fd()));
  if (notes > 0) s.ticker->Notified();
  return Status::OK();
}

Status SourceWorker::Drain(Session& s) {
  const int64_t deadline = MonotonicMicros() + 5'000'000;
  while (tracker_.in_flight() > 0 && MonotonicMicros() < deadline) {
    sink_->Flush(100);
    DT_RETURN_IF_ERROR(ServeDeliveries(s, 0, false));
  }
  DT_RETURN_IF_ERROR(ServeDeliveries(s, 0, true));
  if (tracker_.in_flight() > 0) {
    spdlog::warn(
        "producer: stopped with {} change(s) not confirmed by {}; they will be "
        "published again on restart",
        tracker_.in_flight(), sink_->receiver());
  }
  return Status::OK();
}

Status SourceWorker::StartTick(Session& s) {
  Work w;
  w.lo = s.book.lower();
  if (const capture::Tick* recorded = s.book.recorded_upper()) {
    // A tick recorded before a restart: its batch is recomputed exactly.
    w.hi = *recorded;
    w.replay = true;
    SizeReads(s, w);
    DT_RETURN_IF_ERROR(s.log->ReadFirst(w.lo, w.hi, s.epoch, &w.reads));
  } else {
    DT_RETURN_IF_ERROR(RecordTick(s, w));
  }
  s.book.StartBatch(w.hi);
  s.ticker->Ticked(MonotonicMicros());
  w.batch.emplace(w.lo, w.hi, std::move(w.reads), s.book);
  s.work = std::move(w);
  return Status::OK();
}

void SourceWorker::SizeReads(Session& s, Work& w) {
  w.reads.resize(s.specs.size());
  for (size_t t = 0; t < s.specs.size(); ++t) {
    w.reads[t].table = t;
    w.reads[t].limit = s.read_sizer.Limit(t);
  }
}

Status SourceWorker::RecordTick(Session& s, Work& w) {
  if (!s.snaps->reading()) {
    // The common case: one round trip. A change in this batch may have been
    // written after an ALTER TABLE; the catalog seen at the tick's snapshot
    // includes every ALTER committed before it. If the columns changed, the
    // tick stays recorded and a new session (which handles the change)
    // publishes it, as it does any tick recorded before a restart.
    // The first read of every table's batch rides along.
    std::string signature;
    SizeReads(s, w);
    DT_ASSIGN_OR_RETURN(
        w.hi, s.log->RecordTick(w.lo, s.schema->signature_query(), &signature, s.epoch, w.reads));
    return s.schema->Verify(signature);
  }
  DT_ASSIGN_OR_RETURN(w.hi, s.log->BeginTick(w.lo.number + 1));
  DT_RETURN_IF_ERROR(s.schema->VerifyInTick());
  // While a snapshot runs, read one chunk at exactly this tick's snapshot.
  auto table = s.snaps->Read(*s.conn, s.epoch, w.hi.number, sink_->TakesPackedChunks(), &w.chunk);
  if (!table.ok()) {
    s.conn->RollbackQuietly();
    return table.status();
  }
  w.chunk_table = *table;
  DT_RETURN_IF_ERROR(s.log->CommitTick());
  if (w.chunk_table >= 0) s.snaps->Committed(static_cast<size_t>(w.chunk_table), w.chunk.next);
  // With many tables, the tick's changes are read only where there are any.
  SizeReads(s, w);
  return s.log->ReadFirst(w.lo, w.hi, s.epoch, &w.reads);
}

template <typename SendFn>
Status SourceWorker::SendVia(Session& s, uint32_t table, const Position& pos, int64_t captured_us,
                             uint32_t rows, Kind kind, SendFn&& send) {
  const uint64_t token = tracker_.next_token();
  const int64_t bytes_before = sink_->bytes_sent();
  int32_t sent_to = -1;
  for (;;) {
    Status st = send(token, &sent_to);
    if (st.ok()) {
      metrics_->table(table).published_bytes += sink_->bytes_sent() - bytes_before;
      break;
    }
    if (!st.IsRetryable()) return st;
    // The sink is full: serve deliveries until it has room.
    if (stop_->stop_requested()) return Status::Cancelled();
    DT_RETURN_IF_ERROR(ServeDeliveries(s, 10, false));
  }
  tracker_.Add(table, pos, kind, /*delivered=*/false, captured_us, rows, sent_to);
  return Status::OK();
}

Status SourceWorker::SendChange(Session& s, const Change& c, int32_t partition, Kind kind) {
  return SendVia(s, c.table, c.pos, CaptureTime(c), 1, kind, [&](uint64_t token, int32_t* sent_to) {
    return sink_->Send(c, partition, token, sent_to);
  });
}

Status SourceWorker::SendOwnedChange(Session& s, Change&& c, Kind kind) {
  const uint32_t table = c.table;
  const Position pos = c.pos;
  const int64_t captured = CaptureTime(c);
  const auto rows = static_cast<uint32_t>(std::max<int64_t>(1, c.packed_rows));
  return SendVia(s, table, pos, captured, rows, kind, [&](uint64_t token, int32_t* sent_to) {
    return sink_->SendOwned(std::move(c), -1, token, sent_to);
  });
}

Status SourceWorker::SendToAll(Session& s, const Change& c, Kind last) {
  DT_ASSIGN_OR_RETURN(int n, sink_->PartitionCount(c.table));
  for (int p = 0; p < n; ++p) {
    DT_RETURN_IF_ERROR(SendChange(s, c, n == 1 ? -1 : p, p + 1 < n ? Kind::kPart : last));
  }
  return Status::OK();
}

Status SourceWorker::StepTick(Session& s, bool* progressed) {
  // One read per step, so deliveries are served between reads.
  size_t t = 0;
  int64_t rows = 0;
  std::vector<Change> changes;
  DT_ASSIGN_OR_RETURN(*progressed,
                      s.work->batch->Next(*s.log, s.read_sizer, s.epoch, &t, &rows, &changes));
  if (!*progressed) return Status::OK();
  metrics_->table(t).captured += rows;
  for (size_t i = 0; i < changes.size(); ++i) {
    const Change& c = changes[i];
    const bool split_first = i + 1 < changes.size() && changes[i + 1].pos.seq == c.pos.seq;
    if (c.op == Op::kTruncate) {
      // Every partition gets the truncate, so it is ordered against every key.
      DT_RETURN_IF_ERROR(SendToAll(s, c, Kind::kChange));
      continue;
    }
    // Not needed after this (a moved-from change keeps its position).
    DT_RETURN_IF_ERROR(
        SendOwnedChange(s, std::move(changes[i]), split_first ? Kind::kPart : Kind::kChange));
  }
  return Status::OK();
}

Status SourceWorker::FinishTick(Session& s) {
  Work& w = *s.work;
  if (w.chunk_table >= 0) DT_RETURN_IF_ERROR(SendChunk(s));
  if (options_.pipeline.transactional() &&
      (w.batch->had_changes() || w.chunk_table >= 0 || w.replay)) {
    // Consumers commit whole ticks: tell them this one is all sent. The
    // tick counts as delivered only with its record (a part before the
    // tick's end); a tick replayed after a restart always sends one, since
    // its record may be what was not delivered.
    const Position end{s.epoch, w.hi.number, Position::kEndOfTick, 0};
    DT_RETURN_IF_ERROR(SendVia(s, 0, end, 0, 1, Kind::kPart, [&](uint64_t token, int32_t* sent_to) {
      *sent_to = -1;
      return sink_->SendTickEnd(end, token);
    }));
  }
  for (size_t t = 0; t < s.specs.size(); ++t) {
    tracker_.Add(static_cast<uint32_t>(t), Position{s.epoch, w.hi.number, Position::kEndOfTick, 0},
                 Kind::kTickEnd, /*delivered=*/true);
  }
  s.ticker->BatchDone(w.batch->had_changes() || w.chunk_table >= 0);
  s.work.reset();
  return Status::OK();
}

Status SourceWorker::SendChunk(Session& s) {
  Work& w = *s.work;
  const auto t = static_cast<uint32_t>(w.chunk_table);
  const int64_t nrows = w.chunk.count;
  if (!w.chunk.copy_text.empty()) {
    // One change carries the whole chunk, its rows as COPY text.
    Change packed = snapshot::PackedChange(&w.chunk, t, s.epoch, w.hi.number);
    DT_RETURN_IF_ERROR(SendOwnedChange(s, std::move(packed), Kind::kSnapshotRow));
  }
  for (Change& row : w.chunk.rows) {
    DT_RETURN_IF_ERROR(SendOwnedChange(s, std::move(row), Kind::kSnapshotRow));
  }
  s.snaps->ChunkSent(t, w.chunk.next, nrows);
  tracker_.Add(t, Position{s.epoch, w.hi.number, Position::kSnapshotSeqBase + nrows, 0},
               Kind::kChunkEnd, /*delivered=*/true);
  if (!w.chunk.last) return Status::OK();
  // The end of the snapshot, on every partition: consumers learn the
  // target holds the whole table once they all have it.
  const Change marker = snapshot::EndMarker(t, s.epoch, w.hi.number, nrows);
  DT_RETURN_IF_ERROR(SendToAll(s, marker, Kind::kMarker));
  s.snaps->MarkerSent(t, w.hi.number);
  return Status::OK();
}

Status SourceWorker::ServeDeliveries(Session& s, int wait_ms, bool force_record) {
  sink_->Poll(wait_ms);
  if (!tracker_.failure().ok()) {
    Status f = tracker_.failure();
    return f.IsRetryable() ? f : f.WithContext("publishing failed");
  }
  DT_RETURN_IF_ERROR(sink_->Health());
  for (const auto& a : tracker_.TakeAdvances()) {
    s.book.Delivered(a.table, a.pos, a.delivered, a.max_change_id, a.heads);
    s.snaps->Delivered(a.table, a.chunks_done, a.marker_done);
    metrics_->table(a.table).published += a.delivered;
    metrics_->table(a.table).snapshot_rows += a.snapshot_rows;
  }
  // Everything registered before ready_token is delivered.
  if (s.ready_pending && tracker_.next_token() - tracker_.in_flight() >= s.ready_token) {
    s.ready_pending = false;
    metrics_->producer_ready = 1;
  }
  const int64_t now = MonotonicMicros();
  if (now - s.last_lag_sample_us >= 200'000) {
    // The lag gauge: how long the oldest undelivered change of each table
    // has waited. Sampled, since finding it may walk every message in flight.
    s.last_lag_sample_us = now;
    s.oldest_undelivered.resize(s.specs.size());
    tracker_.OldestUndelivered(&s.oldest_undelivered);
    const int64_t wall = NowMicros();
    for (size_t t = 0; t < s.oldest_undelivered.size(); ++t) {
      const int64_t oldest = s.oldest_undelivered[t];
      metrics_->table(t).undelivered_age_us = oldest > 0 ? std::max<int64_t>(1, wall - oldest) : 0;
    }
  }
  if (force_record ||
      now - s.last_record_us >= int64_t{options_.pipeline.progress_interval_ms} * 1000) {
    DT_RETURN_IF_ERROR(RecordProgress(s, force_record));
  }
  return Status::OK();
}

Status SourceWorker::RecordProgress(Session& s, bool all) {
  s.last_record_us = MonotonicMicros();
  // While a snapshot runs, every table's progress is recorded at once: its
  // chunks are recorded only with the progress before them.
  DT_ASSIGN_OR_RETURN(bool recorded, s.book.Record(*s.log, all || s.snaps->running()));
  if (!recorded) return Status::OK();
  // Chunks only after the changes before them are recorded.
  DT_ASSIGN_OR_RETURN(auto ended, s.snaps->Record(*s.conn));
  for (size_t t : ended) metrics_->table(t).snapshot_running = 0;
  return Status::OK();
}

}  // namespace datatunnel::tunnel
