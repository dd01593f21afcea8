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
#include "tunnel/source_session.h"

namespace datatunnel::tunnel {

using Kind = publish::DeliveryTracker::Kind;

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
  // The source answered, so its address and credentials are right: from now
  // on a lost connection is waited out, even one lost before the tables are
  // described (the server restarting as the producer starts).
  started_ = true;
  metrics_->source_connected = 1;
  std::vector<std::string> warnings;
  DT_ASSIGN_OR_RETURN(s.specs, capture::DescribeSourceTables(*s.conn, options_.tables, &warnings));
  s.log = std::make_unique<capture::ChangeLog>(s.conn.get(), &s.specs, options_.tunnel);
  sink_->SetTables(&s.specs);
  DT_ASSIGN_OR_RETURN(s.epoch, s.log->LoadEpoch());
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
                  options_.pipeline.snapshot_chunk_bytes, options_.pipeline.transactional());
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
  if (options_.pipeline.transactional()) DT_RETURN_IF_ERROR(sink_->PrepareTickEnds());
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
  // Ticks replayed without their record are confirmed with the next one.
  const bool whole_tick =
      options_.pipeline.transactional() && !sink_->Chained() && (s.work || s.tick_end_owed);
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
    // Sampled: a count of the change tables, for the change_table_rows gauge
    // (one statement; none while nothing was captured since they were empty).
    s.last_pending_us = now;
    DT_ASSIGN_OR_RETURN(auto counts, s.log->CountAllPending());
    for (size_t t = 0; counts && t < s.specs.size(); ++t) metrics_->table(t).pending = (*counts)[t];
  }
  DT_ASSIGN_OR_RETURN(auto next,
                      s.ticker->Decide(*s.log, s.book.newest(), s.snaps->reading(),
                                       s.book.recorded_upper() != nullptr || s.tick_end_owed, now));
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
  if (force_record || s.snaps->EndAwaited() ||
      now - s.last_record_us >= int64_t{options_.pipeline.progress_interval_ms} * 1000) {
    DT_RETURN_IF_ERROR(RecordProgress(s, force_record));
  }
  return Status::OK();
}

Status SourceWorker::RecordProgress(Session& s, bool all) {
  s.last_record_us = MonotonicMicros();
  // While a snapshot runs, every table's progress is recorded at once: its
  // chunks are recorded only with the progress before them.
  DT_RETURN_IF_ERROR(s.book.Record(*s.log, all || s.snaps->running()).status());
  // Chunks only after the changes before them are recorded (just now, or
  // before: with nothing pending the book records nothing). Not only when
  // the book recorded something: a snapshot's last chunks and end marker
  // can be delivered after every change before them was recorded, and a
  // process that then exits (`snapshot`) must still record them.
  DT_ASSIGN_OR_RETURN(auto ended, s.snaps->Record(*s.conn));
  for (size_t t : ended) metrics_->table(t).snapshot_running = 0;
  return Status::OK();
}

}  // namespace datatunnel::tunnel
