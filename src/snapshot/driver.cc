#include "snapshot/driver.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/clock.h"

namespace datatunnel::snapshot {

Driver::Driver(const std::vector<TableSpec>* specs, int chunk_rows, int64_t chunk_bytes,
               bool fk_order)
    : specs_(specs),
      chunk_rows_(chunk_rows),
      chunk_bytes_(chunk_bytes),
      fk_order_(fk_order),
      snaps_(specs->size()) {}

Status Driver::Poll(pg::Connection& source,
                    const std::function<void(size_t, const Progress&)>& started) {
  last_poll_us_ = MonotonicMicros();
  DT_ASSIGN_OR_RETURN(auto wanted, capture::SnapshotsWanted(source, *specs_));
  bool links_read = false;
  for (size_t t = 0; t < snaps_.size(); ++t) {
    Snap& sn = snaps_[t];
    if (sn.active || !wanted[t]) continue;
    const TableSpec& spec = (*specs_)[t];
    DT_ASSIGN_OR_RETURN(auto p, capture::LoadSnapshotProgress(source, spec));
    if (p.state != State::kRequested && p.state != State::kRunning) continue;
    if (p.run == sn.run && sn.run != 0) continue;  // this run already finished here
    // Running from here on, also while its first read waits for a lock.
    started(t, p);
    if (fk_order_ && !links_read) {
      // Read again for each start: the keys may have changed since.
      DT_ASSIGN_OR_RETURN(links_, LoadLinks(source, *specs_));
      links_read = true;
    }
    DT_ASSIGN_OR_RETURN(
        auto chunker,
        Chunker::Create(source, spec, static_cast<uint32_t>(t), chunk_rows_, chunk_bytes_,
                        fk_order_ ? links_.self[t] : std::vector<std::vector<size_t>>{}));
    sn = Snap{};
    sn.active = true;
    sn.run = p.run;
    sn.chunker = std::move(chunker);
    sn.cursor = p.cursor;
    sn.catch_up = fk_order_ && sn.chunker->self_referencing();
    // Resumed after chunks recorded: the copy had started.
    if (!p.cursor.empty()) sn.first_tick = 1;
    spdlog::info("snapshot of {}: {} ({} rows so far of about {}, {} order)",
                 spec.source.ToString(), p.rows ? "resuming" : "starting", p.rows, p.total,
                 sn.chunker->key_ordered() ? "key" : "physical");
  }
  return Status::OK();
}

bool Driver::running() const {
  return std::any_of(snaps_.begin(), snaps_.end(), [](const Snap& sn) { return sn.active; });
}

bool Driver::reading() const {
  return std::any_of(snaps_.begin(), snaps_.end(),
                     [](const Snap& sn) { return sn.active && !sn.all_read; });
}

Result<int> Driver::Read(pg::Connection& source, int64_t epoch, int64_t tick,
                         const std::string& lo_snapshot, bool sink_takes_packed, Chunk* chunk,
                         std::vector<Change>* referenced) {
  referenced->clear();
  for (size_t t = 0; t < snaps_.size(); ++t) {
    Snap& sn = snaps_[t];
    if (!sn.active || sn.all_read || !sn.chunker->self_referencing()) continue;
    if (sn.catch_up && !Waits(t)) {
      // The session's first read: whatever an earlier one left.
      DT_RETURN_IF_ERROR(sn.chunker->ReadAllReferenced(source, sn.cursor, epoch, tick, referenced));
      sn.catch_up = false;
      // From here on the target holds what the table's rows reference; each
      // tick brings what its changes reference, so they go as they are.
      if (sn.first_tick == 0) sn.first_tick = tick;
      continue;
    }
    // Its changes up to the first chunk's tick went as deletes.
    if (sn.first_tick == 0 || tick <= sn.first_tick) continue;
    DT_RETURN_IF_ERROR(
        sn.chunker->ReadReferencedByTick(source, sn.cursor, lo_snapshot, epoch, tick, referenced));
  }
  for (size_t i = 0; i < snaps_.size(); ++i) {
    const size_t t = (next_ + i) % snaps_.size();
    Snap& sn = snaps_[t];
    if (!sn.active || sn.all_read || Waits(t)) continue;
    // Passed through as COPY text where the sink takes it and no chunk
    // can hold a key twice (the target applies such a chunk whole).
    DT_ASSIGN_OR_RETURN(*chunk, sn.chunker->Read(source, sn.cursor, epoch, tick,
                                                 sink_takes_packed && sn.chunker->unique_key()));
    next_ = t + 1;
    if (sn.first_tick == 0) sn.first_tick = tick;
    return static_cast<int>(t);
  }
  return -1;
}

bool Driver::Waits(size_t t) const {
  if (!fk_order_ || links_.after.size() != snaps_.size()) return false;
  // Until the referenced copy's end is recorded, not merely sent: its last
  // chunks may still be in flight, and if the producer died then, a restart
  // would copy them again at a later tick than a chunk of `t` recorded in
  // between, whose rows reference them (the target's key would fail there).
  return std::any_of(links_.after[t].begin(), links_.after[t].end(),
                     [&](size_t u) { return snaps_[u].active; });
}

bool Driver::EndAwaited() const {
  if (!fk_order_ || links_.after.size() != snaps_.size()) return false;
  for (size_t t = 0; t < snaps_.size(); ++t) {
    if (!snaps_[t].active || snaps_[t].all_read) continue;
    for (size_t u : links_.after[t]) {
      if (snaps_[u].active && snaps_[u].marker_done) return true;
    }
  }
  return false;
}

bool Driver::CatchUpPending() const {
  for (size_t t = 0; t < snaps_.size(); ++t) {
    const Snap& sn = snaps_[t];
    if (sn.active && !sn.all_read && sn.catch_up && !Waits(t)) return true;
  }
  return false;
}

bool Driver::SendsAsDelete(size_t table, int64_t tick) const {
  if (!fk_order_ || table >= snaps_.size() || links_.referencing.size() != snaps_.size()) {
    return false;
  }
  const Snap& sn = snaps_[table];
  if (!links_.referencing[table] || !sn.active || (sn.first_tick != 0 && tick > sn.first_tick)) {
    return false;
  }
  // A delete must not hit a row that a table outside the copies references
  // on the target (a table copied alone, say): those changes go as they are.
  return std::all_of(links_.referrers[table].begin(), links_.referrers[table].end(),
                     [&](size_t u) { return snaps_[u].active; });
}

void Driver::Committed(size_t table, const Cursor& next) { snaps_[table].cursor = next; }

void Driver::ChunkSent(size_t table, const Cursor& next, int64_t rows) {
  snaps_[table].inflight.push_back({next, rows});
}

void Driver::MarkerSent(size_t table, int64_t tick) {
  snaps_[table].all_read = true;
  snaps_[table].marker_tick = tick;
  spdlog::info("snapshot of {}: every row read and sent (tick {}); waiting for delivery",
               (*specs_)[table].source.ToString(), tick);
}

void Driver::Delivered(size_t table, int chunks, bool marker) {
  Snap& sn = snaps_[table];
  sn.chunks_done += chunks;
  sn.marker_done = sn.marker_done || marker;
}

Result<std::vector<size_t>> Driver::Record(pg::Connection& source) {
  std::vector<size_t> ended;
  for (size_t t = 0; t < snaps_.size(); ++t) {
    Snap& sn = snaps_[t];
    const TableSpec& spec = (*specs_)[t];
    for (int i = 0; i < sn.chunks_done && !sn.inflight.empty(); ++i) {
      const auto& done = sn.inflight.front();
      DT_RETURN_IF_ERROR(
          capture::RecordSnapshotChunk(source, spec, sn.run, done.next, done.rows, false));
      sn.inflight.pop_front();
    }
    if (sn.marker_done) {
      DT_RETURN_IF_ERROR(
          capture::RecordSnapshotChunk(source, spec, sn.run, sn.cursor, 0, true, sn.marker_tick));
      sn.active = false;
      ended.push_back(t);
      spdlog::info("snapshot of {}: all rows published", spec.source.ToString());
    }
    sn.chunks_done = 0;
    sn.marker_done = false;
  }
  return ended;
}

}  // namespace datatunnel::snapshot
