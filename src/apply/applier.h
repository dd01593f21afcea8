// Applier: writes batches of changes to the target, exactly once in effect.
//
// A batch is one transaction that (1) moves the stored position of every
// (stream, partition) it covers, guarded by the offset we last saw there
// (datatunnel.advance() fails with DT001 if another consumer moved it; a
// batch of several partitions moves them in one UPDATE with the same guard
// and calls advance() only for one it did not move, to fail), and
// (2) writes the net effect of its changes: TRUNCATE, then deletes by key,
// then upserts (INSERT ... ON CONFLICT (key) DO UPDATE); a table without a
// key gets its changes in order instead (inserts, and deletes of one row
// equal to the old row). Because positions
// commit with the rows, a crash at any point leaves the target and its
// positions consistent, and re-reading from the stored offsets applies
// nothing twice.
//
// Each table's deletes and upserts of a batch go as parameter statements
// when they are few (kPipelinedMaxRows), all pipelined (a batch of such is
// one round trip; those of at most kPreparedMaxRows rows, and the advances,
// prepared once per session); more are staged with COPY into the table's temporary
// tables and merged set-wise, except deletes by a one-column key: one
// DELETE of an array of the keys (the key index probed per key). Staged
// rows whose key's newest change is an UPDATE go by a plain UPDATE joined
// on the key (UpdateRows), not INSERT ... ON CONFLICT.
//
// Thread-safety: one thread; owns the use of its connection.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "apply/batch.h"
#include "apply/consistency.h"
#include "core/change.h"
#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::apply {

// What the target has stored for one (stream, partition).
struct PartitionState {
  int64_t offset = -1;  // last Kafka offset applied; -1: nothing yet
  Position pos;         // last source position applied
  // The chain's tail (apply/chain.h): the newest position read from the
  // partition, at least `pos` and `resync`.
  Position tail;
  // Set by a snapshot that emptied the target table: messages at or below
  // it are superseded by the snapshot (dropped, never a gap). Zero: none.
  Position resync;
};

// One partition's part of a batch.
struct Advance {
  std::string stream;
  int32_t partition = 0;
  int64_t expected_offset = -1;  // the offset stored before this batch (the guard)
  int64_t offset = -1;           // the batch's last offset in this partition
  Position pos;                  // the batch's last position in this partition
  int64_t applied = 0;           // changes applied
  int64_t skipped = 0;           // duplicates dropped
  int64_t dead = 0;              // messages sent to the dead-letter topic
  int64_t captured_us = 0;       // capture time of the newest change applied
  // An end-of-snapshot marker was applied in this partition.
  bool snapshot_marker = false;  // the batch holds an end-of-snapshot marker ...
  Position snapshot_pos;         // ... at this position (not the batch's last)
  int snapshot_partitions = 0;
  Position tail;  // the chain's tail after the batch
  // The chain broke at `gap_offset` (apply/chain.h): recorded with the batch,
  // which holds nothing of the partition from there on.
  bool gap = false;
  int64_t gap_offset = -1;
  Position gap_expected;  // the tail: what the message should have linked to, at most
  Position gap_found;     // its "source.prev"
};

// A partition reached a TRUNCATE that was sent to every partition (Kafka
// topics with more than one): recorded in datatunnel.barriers; the last
// partition to arrive runs the TRUNCATE, after the batch's other writes.
struct TruncateArrival {
  std::string stream;
  int32_t partition = 0;
  Position pos;
  int partitions = 0;
  uint32_t table = 0;
};

// Whole ticks (apply_consistency = "transaction"): the end of the newest
// tick a batch completes, and the control record it came from
// (apply/consistency.h), stored with the batch.
struct TickMark {
  std::string stream;
  int64_t offset = -1;
  Position end;
};

class Applier {
 public:
  Applier(pg::Connection* conn, const std::vector<TableSpec>* targets)
      : conn_(conn), targets_(targets), staged_(targets->size(), false) {}

  // Reads the state of (stream, partition) of table `table`, creating it.
  Result<PartitionState> Load(const std::string& stream, int32_t partition, uint32_t table);

  // Applies `changes` (in commit order per key, duplicates already removed)
  // and the advances, in one transaction. On failure nothing is applied; if
  // a guard failed, position_moved() is true and the caller must reload.
  // Packed snapshot chunks (Change::packed_rows, COPY text laid out like the
  // target table, no generated column) go into the target as they are: by
  // key they come in batches of their own; with whole ticks
  // (SetTransactional()) among the tick's other changes, and the batch is
  // written in position order as runs: the changes before a chunk (their
  // net effect, in the order of steps below), the chunk, the changes after
  // it. Each run ends at a state where the target's foreign keys hold: a
  // chunk follows its tick's changes and holds rows of that tick's snapshot,
  // whose referenced tables the snapshot copied first (docs/architecture.md,
  // "Snapshot").
  // `tick`: the batch holds whole ticks up to it (stored with the batch in
  // datatunnel.consistency for tunnel `tunnel`, see SetTransactional()).
  Status Apply(std::span<const Change* const> changes, std::span<const Advance> advances,
               std::span<const TruncateArrival> arrivals = {}, const TickMark* tick = nullptr);
  // apply_consistency = "transaction" for tunnel `tunnel`: each table's
  // changes are applied in position order (across partitions), every
  // TRUNCATE of a batch runs first as one statement, and tables linked by
  // foreign keys are written in `order` (apply/consistency.h): upserts of
  // referenced tables before referencing ones, then deletes the other way
  // round, with the DEFERRABLE keys of cycles deferred.
  void SetTransactional(std::string tunnel, TableOrder order) {
    transactional_ = true;
    tunnel_ = std::move(tunnel);
    order_ = std::move(order);
  }
  // Streaming a tick too large to hold (apply_consistency = "transaction",
  // pipeline.tick_stream_changes): the pieces of the tick go, as they
  // arrive, into per-table staging tables (dt_tick_N: the target table's
  // columns, the change's op, position and absent columns) inside ONE
  // target transaction, opened by the first piece, so no target table is
  // touched before the tick is whole and no foreign key can see part of it.
  // FinishStream() stages the rest, reduces each keyed table's rows to the
  // newest change per key in SQL, writes them in Apply()'s order of steps,
  // then the advances and the tick mark, and commits. A table whose staged
  // changes are all inserts is first written with a plain INSERT, without
  // the reduction (rolled back to it when a key is there already); one of
  // deletes only is joined with the staged rows as they are; a key whose
  // newest change is an UPDATE is written by a plain UPDATE joined on the
  // key (then the keys the target lacks are inserted). On any failure the
  // transaction is rolled back (nothing of the tick stays) and the caller
  // reads the tick again from the stored positions.
  // StagePiece: `changes` (any order; a packed chunk is staged row by row,
  // or written straight in as Apply() writes it) and `advances` (applied in
  // the open transaction, guarded as in Apply()).
  Status StagePiece(std::span<const Change* const> changes, std::span<const Advance> advances);
  Status FinishStream(std::span<const Change* const> changes, std::span<const Advance> advances,
                      const TickMark* tick);
  // Rolls the open stream transaction back (a failure elsewhere, a stop).
  void AbortStream();
  bool streaming() const { return stream_open_; }
  // Changes of the current (or last) streamed tick written straight into
  // their tables instead of staged (WriteDirect()).
  int64_t stream_direct() const { return stream_direct_; }
  // After a failed Apply: the table the failing statement wrote, or -1.
  int failed_table() const { return failed_table_; }
  // Whether the TRUNCATE barrier at `pos` of `stream` has run.
  Result<bool> BarrierDone(const std::string& stream, const Position& pos);
  // If `partition` of `stream` stopped at a TRUNCATE that has not run yet
  // (it waits for other partitions), that TRUNCATE's position.
  Result<std::optional<Position>> OpenBarrier(const std::string& stream, int32_t partition);
  bool position_moved() const { return position_moved_; }

  // The connection was replaced (after a reconnect): staging tables are gone.
  void Reset(pg::Connection* conn);
  // Table `table`'s columns changed: its staging tables are rebuilt on next use.
  void Invalidate(uint32_t table) {
    staged_[table] = false;
    if (table < tick_staging_.size()) tick_staging_[table] = false;
  }

 private:
  // One write of a batch: a TRUNCATE of `tables`, or the deletes or the
  // upserts of table tables[0], or every change of a table without a key,
  // one by one.
  struct Step {
    enum class Kind { kTruncate, kDelete, kUpsert, kInOrder } kind;
    std::vector<uint32_t> tables;
  };
  // What a batch does to each table (which kinds of writes it has).
  struct Shape {
    bool truncate = false, deletes = false, upserts = false, in_order = false;
  };
  static std::vector<Shape> Shapes(const std::vector<TableEffect>& eff);
  // A run of a batch, written in turn: the net effect of its changes per
  // table (`eff`), or packed snapshot chunks written as they are (`packed`).
  struct Run {
    std::vector<TableEffect> eff;
    std::vector<const Change*> packed;
  };
  // Each table's net effect of `by_table` (sorted by position with whole
  // ticks; a keyless table's changes in order).
  std::vector<TableEffect> Effects(std::vector<std::vector<const Change*>>* by_table) const;
  // Whole ticks with packed chunks: `changes` cut into runs in position
  // order, a chunk (or chunks in a row) between the changes before and after.
  std::vector<Run> Runs(std::span<const Change* const> changes) const;
  // The order of the writes of a batch that does `eff` to each table.
  std::vector<Step> Steps(const std::vector<Shape>& eff) const;
  // BEGIN, the deferred constraints, the advances and the tick mark.
  void Head(std::span<const Advance> advances, const TickMark* tick, pg::Arena* arena,
            std::vector<pg::Statement>* out) const;
  // The parameter statements of `step` (a TRUNCATE, keyless changes, or at
  // most kPipelinedMaxRows deletes or upserts).
  Status AddStatements(const Step& step, const std::vector<TableEffect>& eff,
                       std::vector<pg::Statement>* out) const;
  static size_t StepRows(const Step& step, const std::vector<TableEffect>& eff);
  // Writes `runs` in one transaction, in turn: each run's steps of up to
  // kPipelinedMaxRows rows as parameter statements, pipelined together,
  // larger ones with COPY into the table's staging tables and one set-based
  // statement; its chunks with WriteRows().
  Status ApplyRuns(const std::vector<Run>& runs, std::span<const Advance> advances,
                   std::span<const TruncateArrival> arrivals, const TickMark* tick);
  // Creates table `table`'s staging tables (dt_stage_N: its columns, dt_keys_N:
  // its key) once per session, outside any transaction.
  Status EnsureStaging(uint32_t table);
  // Table `table`'s staging tables hold rows of this batch; AddEmptyStaging
  // adds the TRUNCATE of those used so far (before the COMMIT).
  void Used(uint32_t table);
  void AddEmptyStaging(std::vector<pg::Statement>* out);
  // Writes rows of table `table` (COPY text of columns `cols`): with one
  // COPY straight into the table while none of them is there yet, else
  // staged and upserted. *stage_used: the staging table holds rows already.
  // REQUIRES: inside a transaction; dt_stage_N exists.
  Status WriteRows(uint32_t table, const std::vector<size_t>& cols, std::string_view data,
                   bool* stage_used);
  // direct_backoff_[t], the vector sized to the tables first.
  int& DirectBackoff(uint32_t t);
  // One COPY of `pieces` (rows of columns `cols`) straight into table
  // `spec`, in a savepoint: false (undone) when a key was there already.
  Result<bool> CopyStraight(const TableSpec& spec, const std::vector<size_t>& cols,
                            std::span<const std::string_view> pieces);
  // Writes packed snapshot chunks (a run of them, in position order) with
  // WriteRows(); consecutive chunks of one table and the same columns with
  // one COPY straight in when their keys are new, else each on its own.
  // REQUIRES: inside a transaction; the chunks' staging tables exist.
  Status WriteChunks(std::span<const Change* const> chunks, std::vector<bool>* stage_used);
  // Writes `rows` updates of table `table` (COPY text of columns `cols`, at
  // least one not in the key; each key once): staged, then one UPDATE
  // joined on the key; keys the target lacks are inserted after it. With
  // `send_ahead` the UPDATE is sent and not waited for (sent_): the next
  // FinishSent() waits for it and inserts the keys it missed.
  Status UpdateRows(uint32_t table, const std::vector<size_t>& cols, size_t rows,
                    std::string_view data, bool* stage_used, bool send_ahead = false);
  // Waits for the write of a streamed piece sent ahead (sent_), if any, and
  // inserts the keys its UPDATE did not find. Before anything else is
  // written in the tick's transaction, so the writes keep their order.
  Status FinishSent();

  // The streamed tick: dt_tick_N created this session, and per table what
  // the open transaction staged so far.
  Status EnsureTickStaging(uint32_t table);
  Status StageRows(std::span<const Change* const> changes);
  // A piece's changes of table `table` written straight into it instead of
  // staged in dt_tick_N: while nothing of the table is staged in the tick,
  // for a keyed table that no foreign key links to another tunnel table
  // (Direct()). All inserts: one COPY in a savepoint (a key already there
  // rolls it back, and the table is staged from then on); all deletes by a
  // one-column key: one DELETE of the array of keys; all updates (each
  // carrying a column outside the key): the piece's newest change per key
  // through UpdateRows. A key's changes arrive in order (one partition,
  // offset order), so the piece's net effect now leaves what it would at
  // the end. Any other mix of inserts, updates and deletes (by a one-column
  // key): WriteMixed(). False: stage them (a TRUNCATE, deletes by a wider
  // key, or a write the savepoint undid).
  bool Direct(uint32_t table) const;
  Result<bool> WriteDirect(uint32_t table, const std::vector<const Change*>& changes);
  // A mixed piece's net effect per key (Collapse()) written straight in, in
  // a savepoint, as a batch by key writes it: the deletes as one array of
  // keys, the updates through UpdateRows(), the other upserts through
  // WriteRows() (one COPY straight in, else staged and upserted). Without it the
  // tick's updates waited for its end, so a backlog applied nothing while
  // it arrived and all of it after (issue 16 item 8: 1,000,000 changes
  // through the broker took 2.5x logical replication's time).
  Result<bool> WriteMixed(uint32_t table, const std::vector<const Change*>& changes);
  // The set-based writes of one step of a streamed tick.
  Status StreamStep(const Step& step);
  Status StreamFailed(Status st);
  struct Staged {
    bool any = false;
    Shape shape;
    bool updates = false;  // an UPDATE is staged (not inserts only)
    Position truncated;    // the newest TRUNCATE staged (zero: none)
    bool reduced = false;  // dt_net_N holds the newest change per key
  };
  // A keyed table's staged changes are all inserts (Op::kInsert, kRead),
  // or all deletes: written without the reduction (see FinishStream()).
  static bool InsertsOnly(const Staged& st);
  static bool DeletesOnly(const Staged& st);
  // Fills dt_net_N with table `table`'s newest change per key after its last
  // TRUNCATE.
  Status Reduce(uint32_t table);
  // Inserts table `table`'s staged rows with plain INSERTs in a savepoint:
  // false (rolled back) if a key was there already or staged twice.
  Result<bool> InsertStaged(uint32_t table);
  std::vector<bool> tick_staging_;
  // dt_stage_N created inside the open stream transaction (WriteDirect).
  std::vector<uint32_t> stage_created_;
  std::vector<Staged> staged_rows_;
  bool stream_open_ = false;
  int64_t stream_direct_ = 0;
  // The last write of a streamed piece written straight in (an UPDATE
  // joined with dt_stage_N, or a DELETE of an array of keys), sent with
  // pg::Connection::Send() and not waited for: the target runs it while the
  // consumer reads and decodes the next piece. Through the broker the
  // consumer's decoding and the target's UPDATE took turns, and together
  // set the pace of a 1,000,000-row UPDATE (bench/README.md, bigtx).
  struct Sent {
    uint32_t table = 0;
    std::vector<size_t> cols;  // an UPDATE's columns; empty for a DELETE
    size_t rows = 0;           // the rows the UPDATE should find
  };
  std::optional<Sent> sent_;

  pg::Connection* conn_;
  const std::vector<TableSpec>* targets_;
  std::vector<bool> staged_;
  std::vector<uint32_t> used_;  // tables whose staging tables this batch filled
  // Per table: batches left before a COPY straight into the table is tried
  // again, after one met a row already there.
  std::vector<int> direct_backoff_;
  bool position_moved_ = false;
  bool transactional_ = false;
  std::string tunnel_;
  TableOrder order_;
  int failed_table_ = -1;
};

// Rows per table and kind (deletes, upserts) of a batch up to which they are
// written with parameter statements rather than staged with COPY.
inline constexpr size_t kPipelinedMaxRows = 200;
// Parameter statements of up to this many rows run as statements the target
// session prepares once and keeps (pg::Statement::prepare): a tick spread
// over hundreds of tables writes one or two rows to each, and parsing and
// planning each table's statement again in every batch was a third of the
// target's time per batch (docs: bench/README.md, "Many tables"). Larger
// ones vary in shape from batch to batch and would fill the session with
// statements run once.
inline constexpr size_t kPreparedMaxRows = 4;

}  // namespace datatunnel::apply
