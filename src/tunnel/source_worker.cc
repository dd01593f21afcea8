#include "tunnel/source_worker.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>

#include "capture/install.h"
#include "core/clock.h"
#include "pg/catalog.h"

namespace datatunnel::tunnel {

using Kind = publish::DeliveryTracker::Kind;

namespace {

constexpr int kReadLimit = 5000;           // change-table rows per read, at most
constexpr int64_t kReadBudget = 16 << 20;  // bytes per read, roughly

bool AtOrAfter(const capture::TableProgress& p, int64_t tick, int64_t seq) {
  return p.tick > tick || (p.tick == tick && p.seq >= seq);
}

// When a captured change was made, for the lag; 0 for snapshot rows and
// markers, which are not changes waiting to reach the target.
int64_t CaptureTime(const Change& c) {
  return c.op == Op::kRead || c.op == Op::kMarker ? 0 : c.captured_us;
}

// Where a session's schema markers for a table sit: right after the table's
// recorded progress, so every message the session sends for the table after
// them is newer (it resends what follows the progress), and above the
// table's recorded chain heads, so the markers link to them ("source.prev"
// must be older than "pos"). Heads never pass the recorded progress (the
// delivery tracker reports them only up to a progress point), so the heads
// at the progress itself are a previous session's markers: sub 2 and up,
// one more per session that recorded no progress (changes use sub 0 and 1).
Position SchemaMarkerPosition(int64_t epoch, const capture::TableProgress& progress,
                              const std::vector<Position>& heads) {
  Position m{epoch, progress.tick, progress.seq, 2};
  for (const Position& h : heads) {
    if (h >= m) m = Position{h.epoch, h.tick, h.seq, h.sub + 1};
  }
  return m;
}

}  // namespace

struct SourceWorker::Session {
  std::unique_ptr<pg::Connection> conn;
  std::vector<TableSpec> specs;
  std::unique_ptr<capture::ChangeLog> log;
  int64_t epoch = 0;
  std::vector<capture::TableProgress> progress;  // as recorded on the source
  std::deque<capture::Tick> ticks;               // from the oldest still needed
  size_t cursor = 0;                             // index in ticks of the next batch's lower bound

  struct Work {
    capture::Tick lo, hi;
    std::vector<int64_t> after;                       // per table: the last change_id read
    std::vector<capture::ChangeLog::TickRead> reads;  // first reads, done with the tick
    std::vector<bool> prefetched;                     // reads[t] not yet taken
    std::vector<bool> done;
    bool had_changes = false;
    int chunk_table = -1;
    snapshot::Chunk chunk;
  };
  std::optional<Work> work;

  struct Snap {
    bool active = false;
    bool all_read = false;    // last chunk and marker sent
    int64_t marker_tick = 0;  // the end marker's tick, once sent
    int64_t run = 0;
    std::optional<snapshot::Chunker> chunker;
    snapshot::Cursor cursor;  // where the next chunk starts
    struct Inflight {
      snapshot::Cursor next;
      int64_t rows;
    };
    std::deque<Inflight> inflight;
  };
  std::vector<Snap> snaps;
  size_t next_snap = 0;

  struct Pending {
    bool any = false;
    Position pos;
    int64_t delivered = 0;
    int64_t snapshot_rows = 0;
    int chunks_done = 0;
    bool marker_done = false;
    std::map<int32_t, Position> heads;  // chain heads that moved
  };
  std::vector<Pending> pending;
  std::vector<int64_t> max_cid_delivered;
  std::vector<int64_t> pruned_tick;      // per table: the tick the last prune was at
  std::vector<double> avg_change_bytes;  // per table, from the last read
  int64_t last_record_us = 0;
  int64_t last_tick_us = 0;
  int64_t last_check_us = 0;    // last ChangedSince()
  int64_t last_pending_us = 0;  // last count of the change tables
  int64_t last_lag_sample_us = 0;
  std::vector<int64_t> oldest_undelivered;  // per table, see ServeDeliveries
  int64_t last_snapshot_check_us = 0;
  // The tables' columns as this session read them; checked in every tick.
  std::string signature_sql;  // SchemaSignatureSql() of the tables
  std::string schema_signature;
  bool notified = true;
  bool last_had_changes = true;
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
    Status st = RunSession(first);
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

Status SourceWorker::RunSession(bool first) {
  (void)first;
  session_ = std::make_unique<Session>();
  Session& s = *session_;
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

  // Hot standby: wait for the producer lock.
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
  metrics_->producer_ready = 0;  // until the schema markers below are delivered
  metrics_->leader = 1;
  if (announced) spdlog::info("producer: took over publishing");
  // Only the lock holder's view of progress is current: read it now, with
  // the chain heads recorded with it.
  DT_ASSIGN_OR_RETURN(s.progress, s.log->LoadProgress());
  std::vector<std::vector<Position>> heads(s.specs.size());
  if (sink_->Chained()) {
    for (size_t t = 0; t < s.specs.size(); ++t) {
      DT_ASSIGN_OR_RETURN(heads[t], s.log->LoadHeads(t));
      sink_->SetChainHeads(static_cast<uint32_t>(t), heads[t]);
    }
  }
  DT_RETURN_IF_ERROR(HandleSchemaChanges(s));
  {
    std::string oids;
    for (const auto& spec : s.specs) {
      DT_ASSIGN_OR_RETURN(auto info, pg::LoadTable(*s.conn, spec.source));
      if (!info) return Status::Fatal("source table " + spec.source.ToString() + " disappeared");
      oids += (oids.empty() ? "" : ",") + std::to_string(info->oid);
    }
    s.signature_sql = SchemaSignatureSql("{" + oids + "}");
    DT_ASSIGN_OR_RETURN(auto r, s.conn->Query(s.signature_sql));
    s.schema_signature = std::string(r.Get(0, 0));
  }
  DT_RETURN_IF_ERROR(s.conn->Listen(capture::kNotifyChannel));

  tracker_.Reset();
  for (size_t t = 0; t < s.specs.size(); ++t) metrics_->table(t).undelivered_age_us = 0;
  s.pending.assign(s.specs.size(), {});
  s.max_cid_delivered.assign(s.specs.size(), 0);
  s.pruned_tick.assign(s.specs.size(), 0);
  s.avg_change_bytes.clear();
  for (const auto& spec : s.specs) {
    // Until a read tells, assume the source table's average row size (from
    // the statistics: a size function would wait for a lock on the table).
    auto est = s.conn->Query(
        "SELECT COALESCE((c.relpages + COALESCE(t.relpages, 0))::float8 * "
        "  current_setting('block_size')::float8 / NULLIF(c.reltuples, 0), 0)::float8 "
        "FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid "
        "WHERE c.oid = $1::regclass",
        {spec.source.Quoted()});
    double avg =
        est.ok() && est->rows() ? std::strtod(std::string(est->Get(0, 0)).c_str(), nullptr) : 0;
    s.avg_change_bytes.push_back(std::max(256.0, avg));
  }
  s.snaps.resize(s.specs.size());
  DT_RETURN_IF_ERROR(CheckSnapshotRequests(s));

  // Start at the oldest batch some table has not fully delivered.
  int64_t first_batch = INT64_MAX;
  for (const auto& p : s.progress) {
    first_batch = std::min(first_batch, p.seq == Position::kEndOfTick ? p.tick + 1 : p.tick);
  }
  DT_ASSIGN_OR_RETURN(auto ticks, s.log->LoadTicks(first_batch - 1, 1 << 20));
  if (ticks.empty() || ticks.front().number != first_batch - 1) {
    return Status::Fatal(fmt::format(
        "tick {} is missing from datatunnel.ticks on the {}: the capture state is damaged; run "
        "`datatunnel uninstall` and `datatunnel init`, then snapshot again",
        first_batch - 1, s.conn->description()));
  }
  s.ticks.assign(ticks.begin(), ticks.end());
  // Tell consumers the columns before any row that uses them.
  for (size_t t = 0; t < s.specs.size(); ++t) {
    Change schema;
    schema.op = Op::kMarker;
    schema.marker = Marker::kSchema;
    schema.table = static_cast<uint32_t>(t);
    schema.pos = SchemaMarkerPosition(s.epoch, s.progress[t], heads[t]);
    schema.captured_us = NowMicros();
    DT_ASSIGN_OR_RETURN(int n, sink_->PartitionCount(static_cast<uint32_t>(t)));
    for (int p = 0; p < n; ++p)
      DT_RETURN_IF_ERROR(SendChange(s, schema, n == 1 ? -1 : p, Kind::kPart));
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
  spdlog::info("producer: publishing {} table(s) from the {}, resuming at tick {}", s.specs.size(),
               s.conn->description(), first_batch);

  while (!stop_->stop_requested()) {
    DT_RETURN_IF_ERROR(ServeDeliveries(s, 0, false));
    if (options_.exit_after_snapshot && tracker_.in_flight() == 0) {
      bool running = std::any_of(s.snaps.begin(), s.snaps.end(),
                                 [](const Session::Snap& sn) { return sn.active; });
      if (!running && !s.work) {
        DT_RETURN_IF_ERROR(RecordProgress(s));
        return Status::OK();
      }
    }
    if (tracker_.in_flight() >= static_cast<size_t>(options_.pipeline.max_in_flight)) {
      // Backpressure: wait for deliveries instead of reading further ahead.
      DT_RETURN_IF_ERROR(ServeDeliveries(s, 10, false));
      continue;
    }
    if (s.work) {
      bool progressed = false;
      DT_RETURN_IF_ERROR(StepTick(s, &progressed));
      if (!progressed) DT_RETURN_IF_ERROR(FinishTick(s));
      continue;
    }
    const int64_t now = MonotonicMicros();
    if (now - s.last_snapshot_check_us > 1'000'000) DT_RETURN_IF_ERROR(CheckSnapshotRequests(s));
    if (now - s.last_pending_us > 10'000'000) {
      // Sampled: a count of the change tables, for the change_table_rows gauge.
      s.last_pending_us = now;
      for (size_t t = 0; t < s.specs.size(); ++t) {
        DT_ASSIGN_OR_RETURN(metrics_->table(t).pending, s.log->CountPending(t));
      }
    }
    const bool snapshot_reading =
        std::any_of(s.snaps.begin(), s.snaps.end(),
                    [](const Session::Snap& sn) { return sn.active && !sn.all_read; });
    const bool poll_due =
        now - s.last_tick_us >= int64_t{options_.pipeline.poll_interval_ms} * 1000;
    const bool recorded_ticks_left = s.cursor + 1 < s.ticks.size();
    // Under load the next tick follows at once: one small write transaction
    // on the source per round trip (400-580 a second at 1,000 changes/s).
    // min_tick_interval_ms trades a little latency for fewer of them.
    const int64_t tick_gap = int64_t{options_.pipeline.min_tick_interval_ms} * 1000;
    if (tick_gap > 0 && !recorded_ticks_left && now - s.last_tick_us < tick_gap) {
      const int64_t left_ms = (tick_gap - (now - s.last_tick_us)) / 1000 + 1;
      DT_RETURN_IF_ERROR(
          ServeDeliveries(s, static_cast<int>(std::min<int64_t>(left_ms, 100)), false));
      continue;
    }
    bool changed = false;
    if (!s.notified && !s.last_had_changes && !snapshot_reading && !poll_due &&
        !recorded_ticks_left &&
        now - s.last_check_us >= int64_t{options_.pipeline.check_interval_ms} * 1000) {
      s.last_check_us = now;
      DT_ASSIGN_OR_RETURN(changed, s.log->ChangedSince(s.ticks.back()));
    }
    if (changed || s.notified || s.last_had_changes || snapshot_reading || poll_due ||
        recorded_ticks_left) {
      DT_RETURN_IF_ERROR(StartTick(s));
      continue;
    }
    // Idle until the next check (or a NOTIFY: `snapshot` wakes the producer
    // with one), serving deliveries.
    const int64_t next_check =
        s.last_check_us + int64_t{options_.pipeline.check_interval_ms} * 1000 - now;
    const int wait_ms = static_cast<int>(std::clamp<int64_t>(
        next_check / 1000 + 1, 1, int64_t{options_.pipeline.progress_interval_ms}));
    DT_ASSIGN_OR_RETURN(int notes, s.conn->WaitForNotifications(wait_ms, stop_->wake_fd()));
    if (notes > 0) s.notified = true;
  }

  // Graceful stop: deliver what is in flight, record it, leave.
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

Status SourceWorker::HandleSchemaChanges(Session& s) {
  for (size_t t = 0; t < s.specs.size(); ++t) {
    const TableSpec& spec = s.specs[t];
    DT_ASSIGN_OR_RETURN(auto drift, capture::CheckSchema(*s.conn, spec));
    if (drift.empty()) continue;
    const std::string name = spec.source.ToString();
    if (!drift.retyped.empty()) {
      return Status::Fatal(fmt::format(
          "the schema of source table {} changed ({}). Give the change table {} the new type "
          "(ALTER TABLE {} ALTER COLUMN ... TYPE ...), alter the column of target table {} too, "
          "then run `datatunnel init` and start again (docs/operations.md: \"A dropped, renamed "
          "or retyped column\")",
          name, drift.Describe(), spec.change_table.ToString(), spec.change_table.Quoted(),
          spec.target.ToString()));
    }
    if (!drift.dropped.empty()) {
      return Status::Fatal(fmt::format(
          "the schema of source table {} changed ({}). Changes from now on carry no value for a "
          "dropped column and the new type for a retyped one, while target table {} still has "
          "the old column: decide what the target should have (drop or alter the column there, "
          "or keep it), then run `datatunnel init` to accept the change and start again",
          name, drift.Describe(), spec.target.ToString()));
    }
    if (options_.tables[t].schema_changes == SchemaChangePolicy::kStop) {
      return Status::Fatal(fmt::format(
          "the schema of source table {} changed ({}) and schema_changes is \"stop\": run "
          "`datatunnel init` to capture the new column(s) and add them to target table {}, then "
          "start again; or set schema_changes = \"evolve\" for this table to do it on the fly",
          name, drift.Describe(), spec.target.ToString()));
    }
    // Evolve: capture the new columns (the event trigger usually already
    // did, within the ALTER TABLE) and accept them. Consumers add them to
    // the target when they see this session's schema marker.
    auto report = capture::Install(*s.conn, options_.tunnel, {spec});
    if (!report.ok()) return report.status().WithContext("capturing the new column(s) of " + name);
    // A new column with a DEFAULT gave every existing row a value without
    // any trigger firing: copy the table again so the target gets them.
    std::vector<std::optional<std::string>> names;
    for (const auto& c : drift.added) names.emplace_back(c.name);
    DT_ASSIGN_OR_RETURN(auto defaults,
                        s.conn->Query("SELECT COALESCE(bool_or(atthasdef OR atthasmissing), false) "
                                      "FROM pg_catalog.pg_attribute WHERE attrelid = $1::regclass "
                                      "AND attname = ANY ($2::text[])",
                                      {spec.source.Quoted(), pg::TextArrayLiteral(names)}));
    if (!report->needs_snapshot.empty() || defaults.GetBool(0, 0)) {
      // Rows changed between the ALTER TABLE and now lack the new values.
      DT_RETURN_IF_ERROR(snapshot::Request(*s.conn, spec, /*restart=*/true));
      spdlog::warn(
          "schema of {}: {}; copying the table again so the target gets the new column(s)' "
          "values for rows that existed or changed before capture caught up",
          name, drift.Describe());
    } else {
      spdlog::info("schema of {}: {}; the target will get the new column(s)", name,
                   drift.Describe());
    }
  }
  return Status::OK();
}

std::string SourceWorker::SchemaSignatureSql(const std::string& oids) {
  return fmt::format(
      "SELECT COALESCE(string_agg(a.attrelid::text || ':' || a.attname || ':' "
      "|| pg_catalog.format_type(a.atttypid, a.atttypmod), ',' ORDER BY "
      "a.attrelid, a.attnum), '') || '/' || (SELECT count(*) FROM "
      "pg_catalog.pg_class WHERE oid = ANY ('{0}'::oid[])) "
      "FROM pg_catalog.pg_attribute a WHERE a.attrelid = ANY ('{0}'::oid[]) "
      "AND a.attnum > 0 AND NOT a.attisdropped",
      oids);
}

Status SourceWorker::CheckSnapshotRequests(Session& s) {
  s.last_snapshot_check_us = MonotonicMicros();
  for (size_t t = 0; t < s.specs.size(); ++t) {
    Session::Snap& sn = s.snaps[t];
    if (sn.active) continue;
    DT_ASSIGN_OR_RETURN(auto p, snapshot::LoadProgress(*s.conn, s.specs[t]));
    if (p.state != snapshot::State::kRequested && p.state != snapshot::State::kRunning) continue;
    if (p.run == sn.run && sn.run != 0) continue;  // this run already finished here
    // Running from here on, also while its first read waits for a lock.
    metrics_->table(t).snapshot_running = 1;
    metrics_->table(t).snapshot_total = p.total;
    metrics_->table(t).snapshot_rows = p.rows;
    DT_ASSIGN_OR_RETURN(auto chunker,
                        snapshot::Chunker::Create(*s.conn, s.specs[t], static_cast<uint32_t>(t),
                                                  options_.pipeline.snapshot_chunk_rows,
                                                  options_.pipeline.snapshot_chunk_bytes));
    sn = Session::Snap{};
    sn.active = true;
    sn.run = p.run;
    sn.chunker = std::move(chunker);
    sn.cursor = p.cursor;
    spdlog::info("snapshot of {}: {} ({} rows so far of about {}, {} order)",
                 s.specs[t].source.ToString(), p.rows ? "resuming" : "starting", p.rows, p.total,
                 sn.chunker->key_ordered() ? "key" : "physical");
  }
  return Status::OK();
}

Status SourceWorker::StartTick(Session& s) {
  Session::Work w;
  w.lo = s.ticks[s.cursor];
  if (s.cursor + 1 < s.ticks.size()) {
    // A tick recorded before a restart: its batch is recomputed exactly.
    w.hi = s.ticks[s.cursor + 1];
  } else if (std::none_of(s.snaps.begin(), s.snaps.end(),
                          [](const Session::Snap& sn) { return sn.active && !sn.all_read; })) {
    // The common case: one round trip. A change in this batch may have been
    // written after an ALTER TABLE; the catalog seen at the tick's snapshot
    // includes every ALTER committed before it. If the columns changed, the
    // tick stays recorded and a new session (which handles the change)
    // publishes it, as it does any tick recorded before a restart.
    // The first read of every table's batch rides along.
    std::string signature;
    w.reads.resize(s.specs.size());
    for (size_t t = 0; t < s.specs.size(); ++t) {
      w.reads[t].table = t;
      w.reads[t].limit = ReadLimit(s, t);
    }
    DT_ASSIGN_OR_RETURN(w.hi,
                        s.log->RecordTick(w.lo, s.signature_sql, &signature, s.epoch, w.reads));
    if (signature != s.schema_signature) {
      return Status::Retryable("the columns of a captured table changed; describing them again");
    }
    s.ticks.push_back(w.hi);
    w.prefetched.assign(s.specs.size(), true);
  } else {
    DT_ASSIGN_OR_RETURN(w.hi, s.log->BeginTick(w.lo.number + 1));
    auto signature = s.conn->Query(s.signature_sql);
    if (!signature.ok() || signature->Get(0, 0) != s.schema_signature) {
      s.conn->RollbackQuietly();
      if (!signature.ok()) return signature.status();
      return Status::Retryable("the columns of a captured table changed; describing them again");
    }
    // While a snapshot runs, read one chunk at exactly this tick's snapshot.
    for (size_t i = 0; i < s.snaps.size(); ++i) {
      const size_t t = (s.next_snap + i) % s.snaps.size();
      Session::Snap& sn = s.snaps[t];
      if (!sn.active || sn.all_read) continue;
      // Passed through as COPY text where the sink takes it and no chunk
      // can hold a key twice (the target applies such a chunk whole).
      auto chunk = sn.chunker->Read(*s.conn, sn.cursor, s.epoch, w.hi.number,
                                    sink_->TakesPackedChunks() && sn.chunker->unique_key());
      if (!chunk.ok()) {
        s.conn->RollbackQuietly();
        return chunk.status();
      }
      w.chunk = std::move(*chunk);
      w.chunk_table = static_cast<int>(t);
      s.next_snap = t + 1;
      break;
    }
    DT_RETURN_IF_ERROR(s.log->CommitTick());
    s.ticks.push_back(w.hi);
    if (w.chunk_table >= 0) s.snaps[w.chunk_table].cursor = w.chunk.next;
  }
  ++s.cursor;
  s.last_tick_us = MonotonicMicros();
  s.notified = false;
  w.after.assign(s.specs.size(), 0);
  w.done.assign(s.specs.size(), false);
  w.prefetched.resize(s.specs.size(), false);
  for (size_t t = 0; t < s.specs.size(); ++t) {
    const auto& p = s.progress[t];
    if (AtOrAfter(p, w.hi.number, Position::kEndOfTick)) {
      w.done[t] = true;
    } else if (p.tick == w.hi.number) {
      w.after[t] = p.seq;  // part of this batch was delivered before a restart
    }
    if (w.done[t] || w.after[t] != 0) w.prefetched[t] = false;  // read from 0: not what's wanted
  }
  s.work = std::move(w);
  return Status::OK();
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

int SourceWorker::ReadLimit(const Session& s, size_t t) {
  // Bound each read by bytes as well as rows: a table of 10 MB rows must
  // not be read 5,000 rows at a time.
  return static_cast<int>(
      std::clamp<double>(static_cast<double>(kReadBudget) / s.avg_change_bytes[t], 1, kReadLimit));
}

Status SourceWorker::StepTick(Session& s, bool* progressed) {
  Session::Work& w = *s.work;
  *progressed = false;
  for (size_t t = 0; t < s.specs.size(); ++t) {
    if (w.done[t]) continue;
    std::vector<Change> changes;
    int64_t last = 0;
    int limit = 0;
    if (w.prefetched[t]) {
      w.prefetched[t] = false;
      changes = std::move(w.reads[t].changes);
      last = w.reads[t].last;
      limit = w.reads[t].limit;
    } else {
      limit = ReadLimit(s, t);
      DT_ASSIGN_OR_RETURN(last,
                          s.log->ReadBatch(t, w.lo, w.hi, w.after[t], limit, s.epoch, &changes));
    }
    // Rows read (a key-changing update gives two changes from one row).
    int64_t rows = 0;
    for (size_t i = 0; i < changes.size(); ++i) {
      if (i == 0 || changes[i].pos.seq != changes[i - 1].pos.seq) ++rows;
    }
    metrics_->table(t).captured += rows;
    if (rows > 0) {
      int64_t bytes = 0;
      for (const Change& c : changes) bytes += static_cast<int64_t>(c.row.ByteSize());
      s.avg_change_bytes[t] =
          std::max(64.0, static_cast<double>(bytes) / static_cast<double>(rows));
    }
    for (size_t i = 0; i < changes.size(); ++i) {
      const Change& c = changes[i];
      const bool split_first = i + 1 < changes.size() && changes[i + 1].pos.seq == c.pos.seq;
      if (c.op == Op::kTruncate) {
        // Every partition gets the truncate, so it is ordered against every key.
        DT_ASSIGN_OR_RETURN(int n, sink_->PartitionCount(static_cast<uint32_t>(t)));
        for (int p = 0; p < n; ++p) {
          DT_RETURN_IF_ERROR(
              SendChange(s, c, n == 1 ? -1 : p, p + 1 < n ? Kind::kPart : Kind::kChange));
        }
        continue;
      }
      // Not needed after this (a moved-from change keeps its position).
      DT_RETURN_IF_ERROR(
          SendOwnedChange(s, std::move(changes[i]), split_first ? Kind::kPart : Kind::kChange));
    }
    w.after[t] = last;
    if (rows > 0) w.had_changes = true;
    if (rows < limit) w.done[t] = true;
    *progressed = true;
    return Status::OK();  // one read per step, so deliveries are served between reads
  }
  return Status::OK();
}

Status SourceWorker::FinishTick(Session& s) {
  Session::Work& w = *s.work;
  if (w.chunk_table >= 0) {
    const uint32_t t = static_cast<uint32_t>(w.chunk_table);
    Session::Snap& sn = s.snaps[t];
    const int64_t nrows = w.chunk.count;
    if (!w.chunk.copy_text.empty()) {
      // One change carries the whole chunk, its rows as COPY text.
      Change packed;
      packed.op = Op::kRead;
      packed.table = t;
      packed.pos = Position{s.epoch, w.hi.number, Position::kSnapshotSeqBase + nrows - 1, 0};
      packed.captured_us = NowMicros();
      packed.packed_rows = nrows;
      packed.row.Assign(std::move(w.chunk.copy_text));
      DT_RETURN_IF_ERROR(SendOwnedChange(s, std::move(packed), Kind::kSnapshotRow));
    }
    for (Change& row : w.chunk.rows) {
      DT_RETURN_IF_ERROR(SendOwnedChange(s, std::move(row), Kind::kSnapshotRow));
    }
    sn.inflight.push_back({w.chunk.next, nrows});
    tracker_.Add(t, Position{s.epoch, w.hi.number, Position::kSnapshotSeqBase + nrows, 0},
                 Kind::kChunkEnd, /*delivered=*/true);
    if (w.chunk.last) {
      // The end of the snapshot, on every partition: consumers learn the
      // target holds the whole table once they all have it.
      Change marker;
      marker.op = Op::kMarker;
      marker.marker = Marker::kSnapshotDone;
      marker.table = t;
      marker.pos = Position{s.epoch, w.hi.number, Position::kSnapshotSeqBase + nrows, 1};
      marker.captured_us = NowMicros();
      DT_ASSIGN_OR_RETURN(int n, sink_->PartitionCount(t));
      for (int p = 0; p < n; ++p) {
        DT_RETURN_IF_ERROR(
            SendChange(s, marker, n == 1 ? -1 : p, p + 1 < n ? Kind::kPart : Kind::kMarker));
      }
      sn.all_read = true;
      sn.marker_tick = w.hi.number;
    }
  }
  for (size_t t = 0; t < s.specs.size(); ++t) {
    tracker_.Add(static_cast<uint32_t>(t), Position{s.epoch, w.hi.number, Position::kEndOfTick, 0},
                 Kind::kTickEnd, /*delivered=*/true);
  }
  s.last_had_changes = w.had_changes || w.chunk_table >= 0;
  s.work.reset();
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
    Session::Pending& p = s.pending[a.table];
    if (a.pos != Position{}) {  // a prefix of parts only (a key change's first half) is no progress
      p.any = true;
      p.pos = a.pos;
    }
    p.delivered += a.delivered;
    p.snapshot_rows += a.snapshot_rows;
    p.chunks_done += a.chunks_done;
    p.marker_done = p.marker_done || a.marker_done;
    for (const auto& [partition, pos] : a.heads) p.heads[partition] = pos;
    s.max_cid_delivered[a.table] = std::max(s.max_cid_delivered[a.table], a.max_change_id);
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
    DT_RETURN_IF_ERROR(RecordProgress(s));
  }
  return Status::OK();
}

Status SourceWorker::RecordProgress(Session& s) {
  s.last_record_us = MonotonicMicros();
  std::vector<capture::ProgressUpdate> updates;
  for (size_t t = 0; t < s.pending.size(); ++t) {
    const Session::Pending& p = s.pending[t];
    if (!p.any) continue;
    capture::ProgressUpdate u;
    u.table = t;
    u.tick = p.pos.tick;
    u.seq = p.pos.seq;
    u.delivered = p.delivered;
    u.heads.assign(p.heads.begin(), p.heads.end());
    // Everything visible in the newest fully delivered tick can go, once:
    // pruning again at the same tick finds nothing new (every change it
    // covers was delivered, so its change_id is at most the largest
    // delivered when the tick completed) and would scan the whole change
    // table below that id again (half the producer's time in a 1,000,000
    // change backlog, whose single batch completes only at its end).
    const int64_t complete = p.pos.seq == Position::kEndOfTick ? p.pos.tick : p.pos.tick - 1;
    if (complete > s.pruned_tick[t]) {
      for (const auto& tick : s.ticks) {
        if (tick.number == complete) u.prune_snapshot = tick.snapshot;
      }
      u.prune_upto = s.max_cid_delivered[t];
      u.prune_tick = complete;
    }
    updates.push_back(std::move(u));
  }
  if (updates.empty()) return Status::OK();
  DT_RETURN_IF_ERROR(s.log->RecordProgress(updates));
  for (const auto& u : updates) {
    s.progress[u.table].tick = u.tick;
    s.progress[u.table].seq = u.seq;
    if (!u.prune_snapshot.empty()) s.pruned_tick[u.table] = u.prune_tick;
  }
  for (size_t t = 0; t < s.pending.size(); ++t) {
    Session::Pending& p = s.pending[t];
    Session::Snap& sn = s.snaps[t];
    for (int i = 0; i < p.chunks_done && !sn.inflight.empty(); ++i) {
      const auto& done = sn.inflight.front();
      DT_RETURN_IF_ERROR(
          snapshot::RecordChunk(*s.conn, s.specs[t], sn.run, done.next, done.rows, false));
      sn.inflight.pop_front();
    }
    if (p.marker_done) {
      DT_RETURN_IF_ERROR(
          snapshot::RecordChunk(*s.conn, s.specs[t], sn.run, sn.cursor, 0, true, sn.marker_tick));
      sn.active = false;
      metrics_->table(t).snapshot_running = 0;
      spdlog::info("snapshot of {}: all rows published", s.specs[t].source.ToString());
    }
    p = Session::Pending{};
  }
  // Forget ticks no table needs any more (the lower bound of the oldest
  // unfinished batch stays).
  int64_t keep = INT64_MAX;
  for (const auto& pr : s.progress) {
    keep = std::min(keep, pr.seq == Position::kEndOfTick ? pr.tick : pr.tick - 1);
  }
  while (s.ticks.size() > 1 && s.cursor > 0 && s.ticks.front().number < keep) {
    s.ticks.pop_front();
    --s.cursor;
  }
  return Status::OK();
}

}  // namespace datatunnel::tunnel
