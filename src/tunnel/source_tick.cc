// One tick of the producer loop: take it (or recompute one recorded before
// a restart), read its batch table after table and its snapshot chunk, and
// send every change, marker and end through the sink.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "tunnel/source_session.h"
#include "tunnel/source_worker.h"

namespace datatunnel::tunnel {

using Kind = publish::DeliveryTracker::Kind;

namespace {

// When a captured change was made, for the lag; 0 for snapshot rows and
// markers, which are not changes waiting to reach the target.
int64_t CaptureTime(const Change& c) {
  return c.op == Op::kRead || c.op == Op::kMarker ? 0 : c.captured_us;
}

}  // namespace

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
    std::vector<size_t> checked;
    SizeReads(s, w);
    DT_ASSIGN_OR_RETURN(w.hi, s.log->RecordTick(w.lo, s.schema->tick_check(), &signature, s.epoch,
                                                w.reads, &checked));
    // No signature: the batch has no change, so no columns to vouch for.
    return signature.empty() ? Status::OK() : s.schema->Verify(signature, checked);
  }
  DT_ASSIGN_OR_RETURN(w.hi, s.log->BeginTick(w.lo.number + 1));
  DT_RETURN_IF_ERROR(s.schema->VerifyInTick());
  // While a snapshot runs, read one chunk at exactly this tick's snapshot.
  auto table = s.snaps->Read(*s.conn, s.epoch, w.hi.number, w.lo.snapshot,
                             sink_->TakesPackedChunks(), &w.chunk, &w.referenced);
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
    Change& c = changes[i];
    if ((c.op == Op::kInsert || c.op == Op::kUpdate) &&
        s.snaps->SendsAsDelete(c.table, c.pos.tick)) {
      // Before its copy, a referencing table's row goes as a delete of its
      // key (snapshot/driver.h): its copy brings it.
      c.op = Op::kDelete;
    }
    const bool split_first = i + 1 < changes.size() && changes[i + 1].pos.SameChange(c.pos);
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
  for (Change& row : w.referenced) {
    // A snapshot row: not a progress point (its seq is no change_id).
    DT_RETURN_IF_ERROR(SendOwnedChange(s, std::move(row), Kind::kSnapshotRow));
  }
  if (w.chunk_table >= 0) DT_RETURN_IF_ERROR(SendChunk(s));
  if (w.replay && s.snaps->CatchUpPending()) {
    // A self-referencing table is being copied. The first attempt at this
    // tick also sent the rows not copied yet that its changes reference,
    // read at its snapshot, which is gone; and chunks it counted on may be
    // lost too. So no record: the target must not commit here. The next new
    // tick reads every such row at its own snapshot (snapshot::Driver::
    // CatchUpPending) and its record ends this tick too, in one target
    // transaction.
    s.tick_end_owed = true;
  } else if (options_.pipeline.transactional() &&
             (w.batch->had_changes() || w.chunk_table >= 0 || !w.referenced.empty() || w.replay ||
              s.tick_end_owed)) {
    // Consumers commit whole ticks: tell them this one is all sent. The
    // tick counts as delivered only with its record (a part before the
    // tick's end); a tick replayed after a restart always sends one, since
    // its record may be what was not delivered.
    const Position end{s.epoch, w.hi.number, Position::kEndOfTick, 0};
    DT_RETURN_IF_ERROR(SendVia(s, 0, end, 0, 1, Kind::kPart, [&](uint64_t token, int32_t* sent_to) {
      *sent_to = -1;
      return sink_->SendTickEnd(end, token);
    }));
    s.tick_end_owed = false;
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
    // The chunk's rows as COPY text, in as many messages as the sink cuts
    // it into (through Kafka: per partition of their keys).
    std::vector<std::pair<int32_t, Change>> parts;
    DT_RETURN_IF_ERROR(
        sink_->SplitChunk(snapshot::PackedChange(&w.chunk, t, s.epoch, w.hi.number), &parts));
    for (auto& [partition, part] : parts) {
      const Position pos = part.pos;
      const auto rows = static_cast<uint32_t>(part.packed_rows);
      DT_RETURN_IF_ERROR(
          SendVia(s, t, pos, 0, rows, Kind::kSnapshotRow, [&](uint64_t token, int32_t* sent_to) {
            return sink_->SendOwned(std::move(part), partition, token, sent_to);
          }));
    }
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

}  // namespace datatunnel::tunnel
