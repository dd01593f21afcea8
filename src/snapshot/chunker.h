// Snapshot: the initial copy, read in chunks that interleave with the stream.
//
// Each chunk is read inside the transaction that records a tick (see
// capture/change_log.h), so it holds exactly the rows visible in that tick's
// snapshot. The producer publishes it after every change of that tick's batch
// and before any change of the next: for every row, changes committed before
// the chunk's snapshot are applied before the chunk's copy of the row, later
// ones after it. That gives the exact hand-over with writers running, without
// a long transaction on the source and without locks beyond a plain SELECT.
//
// Chunks follow the key when the source has a unique index on the key columns
// (key-ordered, resumable after the last key copied), and physical page ranges
// (ctid) otherwise, which needs no index: any row that moves to a page already
// copied does so through an UPDATE, which the stream carries, or through a
// rewrite of the whole table, after which the copy starts over.
//
// Progress lives in datatunnel.tables, owned by capture/snapshot_state.h: a
// killed snapshot continues after the last chunk whose rows were all
// delivered. Driving the snapshots of a producer session: snapshot/driver.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "capture/snapshot_state.h"
#include "core/change.h"
#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::snapshot {

// The snapshot bookkeeping types, owned by capture/ (see snapshot_state.h).
using State = capture::SnapshotState;
using Cursor = capture::SnapshotCursor;
using Progress = capture::SnapshotProgress;
inline std::string_view StateName(State s) { return capture::SnapshotStateName(s); }

struct Chunk {
  std::vector<Change> rows;  // op kRead, positions (epoch, tick, kSnapshotSeqBase + i)
  // Read packed instead: the rows as COPY text, `rows` empty.
  std::string copy_text;
  int64_t count = 0;  // rows, either way
  Cursor next;        // cursor after this chunk
  bool last = false;  // nothing after this chunk
  int64_t bytes = 0;
};

class Chunker {
 public:
  // Inspects the source table: chooses key or page order. `self_refs`: the
  // table's foreign keys to its own key (snapshot/links.h), each as the
  // columns that match spec.key; with them, a chunk read in key order also
  // brings the rows its rows reference, directly or through others, at the
  // same snapshot, so that it holds no reference to a row not copied yet.
  static Result<Chunker> Create(pg::Connection& source, const TableSpec& spec, uint32_t table,
                                int max_rows, int64_t max_bytes,
                                std::vector<std::vector<size_t>> self_refs = {});

  // Reads the chunk after `cursor`; with `packed`, as COPY text (for a sink
  // that passes it through) instead of one change per row. The rows a
  // self-reference brings (see Create) follow the chunk's own, which
  // alone decide `next` and `last`.
  // REQUIRES: `source` is inside the tick's REPEATABLE READ transaction.
  Result<Chunk> Read(pg::Connection& source, const Cursor& cursor, int64_t epoch, int64_t tick,
                     bool packed = false);

  // While the copy runs, inside the tick's transaction: the rows not
  // copied yet (after `cursor`, the end of the copied range) that the
  // tick's inserts and updates reference through a self-reference, directly
  // or through others (`lo_snapshot`: the previous tick's), appended to
  // *out as snapshot rows of tick `tick`, placed after the tick's changes and
  // before its chunk. Nothing without self-references or before the first
  // chunk.
  Status ReadReferencedByTick(pg::Connection& source, const Cursor& cursor,
                              const std::string& lo_snapshot, int64_t epoch, int64_t tick,
                              std::vector<Change>* out);
  // The first tick a producer session copies the table at: every row
  // after `cursor` (all rows when it is empty) that a row of the table
  // references through a self-reference, appended to *out as snapshot rows
  // of tick `tick` (as ReadReferencedByTick does). Whatever rows of the
  // table an earlier session left on the target (chunks and referenced rows
  // sent but not recorded, changes of ticks replayed without theirs), they
  // are rows of the source at this tick once the tick is applied, and rows
  // up to the cursor are all there: with these, every reference holds.
  // REQUIRES: `source` is inside the tick's transaction.
  Status ReadAllReferenced(pg::Connection& source, const Cursor& cursor, int64_t epoch,
                           int64_t tick, std::vector<Change>* out);
  bool self_referencing() const { return !self_refs_.empty(); }

  bool key_ordered() const { return key_ordered_; }
  // A unique index covers the key: no chunk holds a key twice.
  bool unique_key() const { return unique_key_; }

 private:
  Chunker() = default;
  const TableSpec* spec_ = nullptr;
  uint32_t table_ = 0;
  bool key_ordered_ = false;
  bool unique_key_ = false;
  int max_rows_ = 0;
  int64_t max_bytes_ = 0;
  int64_t ramp_rows_ = 1000;    // the next chunk's row bound while growing
  double avg_row_bytes_ = 100;  // refined after each chunk
  double rows_per_page_ = 50;
  std::string select_list_;
  std::vector<std::vector<size_t>> self_refs_;
};

// The first seq of the rows ReadReferencedByTick() reads: after every
// change_id, before the chunk's rows.
inline constexpr int64_t kReferencedSeqBase = Position::kSnapshotSeqBase - (int64_t{1} << 60);

// The change that carries a packed chunk (read at tick `tick`) whole: its
// rows as COPY text, taken from chunk->copy_text.
Change PackedChange(Chunk* chunk, uint32_t table, int64_t epoch, int64_t tick);
// The end-of-snapshot marker after the last chunk (`rows` rows, read at
// tick `tick`); it goes to every partition.
Change EndMarker(uint32_t table, int64_t epoch, int64_t tick, int64_t rows);

// The bookkeeping in datatunnel.tables, by its owner (capture/snapshot_state.h).
inline Result<Progress> LoadProgress(pg::Connection& source, const TableSpec& spec) {
  return capture::LoadSnapshotProgress(source, spec);
}
inline Status Request(pg::Connection& source, const TableSpec& spec, bool restart) {
  return capture::RequestSnapshot(source, spec, restart);
}

}  // namespace datatunnel::snapshot
