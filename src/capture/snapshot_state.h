// Capture, control plane: the snapshot bookkeeping of each captured table,
// kept in its row of datatunnel.tables (snapshot_state, snapshot_cursor,
// snapshot_rows, snapshot_total, snapshot_chunks, snapshot_run, snapshot_tick,
// snapshot_started_at, snapshot_done_at). This file alone writes those
// columns; snapshot/ (the chunked copy) and the commands read and move them
// through these functions.
//
// The rules they keep: a request bumps `snapshot_run`, and a chunk is only
// recorded for the run it was read in, so a chunk of a restarted snapshot
// that is delivered late never moves the new run's cursor; the cursor only
// names a chunk whose rows were all delivered, so a killed snapshot continues
// after it.
//
// Thread-safety: free functions on the caller's connection; one thread per
// connection.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::capture {

enum class SnapshotState { kNone, kRequested, kRunning, kDone };
// "none", "requested", "running", "done" (as stored and as `status` shows it).
std::string_view SnapshotStateName(SnapshotState s);

// Where the next chunk starts: {"key", v1, v2, ...} after the last key copied,
// or {"page", n, file} at heap page n of relation file `file` (a rewritten
// table starts over at page 0). Empty: from the beginning.
using SnapshotCursor = std::vector<std::optional<std::string>>;

struct SnapshotProgress {
  SnapshotState state = SnapshotState::kNone;
  SnapshotCursor cursor;
  int64_t rows = 0;   // rows delivered so far
  int64_t total = 0;  // estimate of the table's rows when the snapshot began
  int64_t chunks = 0;
  int64_t run = 0;     // increases with every request; guards stale chunk records
  double seconds = 0;  // since the snapshot started
  // kDone: the tick of its end-of-snapshot marker (0 when recorded by an
  // earlier version). The target holds this copy once every partition of the
  // table's topic applied a marker at or after it.
  int64_t marker_tick = 0;
};

// Reads table `spec`'s snapshot bookkeeping. kFatal (run `init`) when the
// table is not captured.
Result<SnapshotProgress> LoadSnapshotProgress(pg::Connection& source, const TableSpec& spec);

// For each of `specs`, whether its snapshot is requested or running: one
// query, however many tables (the producer asks every second).
Result<std::vector<bool>> SnapshotsWanted(pg::Connection& source,
                                          const std::vector<TableSpec>& specs);

// Marks the table for a (new) snapshot, estimating its size (from statistics,
// else by counting a small table or sampling a large one). Restarts a
// snapshot in progress when `restart`; otherwise leaves one requested or
// running as it is.
Status RequestSnapshot(pg::Connection& source, const TableSpec& spec, bool restart);

// Records that a chunk's rows are delivered: `rows` more, the cursor now
// `next`, state running, or done when `last` (with `marker_tick` the tick of
// the end-of-snapshot marker). Does nothing when the snapshot is no longer
// run `run` or no longer requested or running.
Status RecordSnapshotChunk(pg::Connection& source, const TableSpec& spec, int64_t run,
                           const SnapshotCursor& next, int64_t rows, bool last,
                           int64_t marker_tick = 0);

}  // namespace datatunnel::capture
