// Snapshot, driving the copies of one producer session.
//
// A Driver keeps, per captured table, the snapshot this session runs: its
// Chunker, the cursor of the next chunk to read, the chunks sent whose rows
// are not all delivered yet, and whether the last chunk and the
// end-of-snapshot marker were sent. The producer loop (tunnel/) asks it:
//   - Poll(), about every second: start the snapshots requested (or resume
//     those running) in the bookkeeping (capture/snapshot_state.h);
//   - Read(), inside a tick's transaction: the next chunk of one running
//     snapshot, the snapshots taking turns; Committed() once the tick is;
//   - ChunkSent() and MarkerSent(), once the loop sent them;
//   - Delivered() and Record(): records the chunks whose rows are all
//     delivered, in the order they were read, and the end of the snapshot
//     once its marker is delivered. Call Record() right after the tables'
//     progress is recorded (capture/progress_book.h), never before: a
//     chunk is only recorded once the changes before it are.
//
// With `fk_order` (apply_consistency = "transaction") the copies follow the
// foreign keys between the tunnel's source tables (snapshot/links.h), so
// that the target's foreign keys hold at every commit:
//   - a table's chunks are read only once every table it references
//     (directly or not, outside its own cycle) has recorded its end (all
//     its chunks and its marker delivered; EndAwaited() asks for that
//     record early);
//   - SendsAsDelete(): until its first chunk, the changes of a table that
//     references a tunnel table (and whose referencing tables are being
//     copied too) go to the target as deletes of their keys. Its copy
//     brings every row that still exists, at its image of the chunk's tick,
//     so the target loses nothing; sent as they are, such a change could
//     reference a row whose copy has not reached the target yet.
//   - while a self-referencing table is copied, a chunk brings the rows its
//     rows reference, and a tick the rows not copied yet that its changes
//     reference (snapshot/chunker.h).
//
// Thread-safety: one thread (the producer's loop).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "capture/snapshot_state.h"
#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"
#include "snapshot/chunker.h"
#include "snapshot/links.h"

namespace datatunnel::snapshot {

class Driver {
 public:
  // `specs` must outlive the driver. Chunks hold at most `chunk_rows` rows
  // and about `chunk_bytes` bytes.
  Driver(const std::vector<TableSpec>* specs, int chunk_rows, int64_t chunk_bytes,
         bool fk_order = false);

  // Starts the snapshots requested or running in the bookkeeping that this
  // driver is not running (and did not finish in this run); `started` is
  // called for each before its chunker is set up.
  Status Poll(pg::Connection& source, const std::function<void(size_t, const Progress&)>& started);
  // MonotonicMicros() of the last Poll().
  int64_t last_poll_us() const { return last_poll_us_; }

  // Some snapshot is running (its end not yet recorded).
  bool running() const;
  // Some snapshot has chunks left to read.
  bool reading() const;

  // Reads the next chunk of the next snapshot with chunks left into *chunk,
  // at tick `tick`; packed as COPY text when `sink_takes_packed` and no
  // chunk of the table can hold a key twice. Returns the table, or -1 when
  // no snapshot has chunks left. With fk_order, first appends to
  // *referenced the rows not copied yet that the tick's changes of a
  // self-referencing table being copied reference (Chunker::
  // ReadReferencedByTick; `lo_snapshot` the previous tick's snapshot), to
  // send after the tick's changes and before the chunk; at a table's first
  // read of the session, every row not copied yet that its rows reference
  // instead (CatchUpPending). REQUIRES: `source` is inside the tick's
  // transaction.
  Result<int> Read(pg::Connection& source, int64_t epoch, int64_t tick,
                   const std::string& lo_snapshot, bool sink_takes_packed, Chunk* chunk,
                   std::vector<Change>* referenced);
  // The tick of a chunk Read() for `table` committed: the next chunk follows `next`.
  void Committed(size_t table, const Cursor& next);
  // The `rows` rows of the chunk Read() for `table` are sent (call before
  // its end is registered with the delivery tracker); the next chunk
  // follows `next`.
  void ChunkSent(size_t table, const Cursor& next, int64_t rows);
  // The end-of-snapshot marker of `table` is sent, at tick `tick`.
  void MarkerSent(size_t table, int64_t tick);

  // fk_order: a self-referencing snapshot not waiting for another table
  // still has to send, at its first chunk of this session, every row not
  // copied yet that its rows reference (Chunker::ReadAllReferenced): rows
  // an earlier session sent but did not record may be on the target, with
  // references to rows that are not. Until then, a tick replayed after a
  // restart must not end a target transaction (tunnel/source_tick.cc).
  bool CatchUpPending() const;

  // A change of `table` at tick `tick` is sent as a delete of its key
  // (fk_order, see above): the table's snapshot runs and its first chunk was
  // read at a later tick, or is not read yet.
  bool SendsAsDelete(size_t table, int64_t tick) const;

  // Delivery reports: `chunks` more chunks of `table` have all their rows
  // delivered; `marker` its end-of-snapshot marker is.
  void Delivered(size_t table, int chunks, bool marker);
  // fk_order: the end marker of a copy that another copy waits for is
  // delivered and not recorded yet; record soon (Record()), the other
  // copy's chunks start only then.
  bool EndAwaited() const;
  // Records what Delivered() reported since the last call. Returns the
  // tables whose snapshot ended (all rows published).
  Result<std::vector<size_t>> Record(pg::Connection& source);

 private:
  struct Snap {
    bool active = false;
    bool all_read = false;    // last chunk and marker sent
    int64_t marker_tick = 0;  // the end marker's tick, once sent
    int64_t run = 0;
    // The tick of the first chunk read in this run (0: none yet; 1 when
    // resumed after a chunk recorded earlier).
    int64_t first_tick = 0;
    // Self-referencing under fk_order, and ReadAllReferenced() not run yet.
    bool catch_up = false;
    std::optional<Chunker> chunker;
    Cursor cursor;  // where the next chunk starts
    struct Inflight {
      Cursor next;
      int64_t rows;
    };
    std::deque<Inflight> inflight;
    // Delivered since the last Record().
    int chunks_done = 0;
    bool marker_done = false;
  };

  // fk_order: table `t`'s chunks wait for a table it references.
  bool Waits(size_t t) const;

  const std::vector<TableSpec>* specs_;
  int chunk_rows_;
  int64_t chunk_bytes_;
  bool fk_order_;
  Links links_;  // fk_order: read when a snapshot starts
  std::vector<Snap> snaps_;
  size_t next_ = 0;  // the table whose turn it is to read
  int64_t last_poll_us_ = 0;
};

}  // namespace datatunnel::snapshot
