// Capture, data plane: reads committed changes from the change tables in an
// order that never skips a late-committing transaction.
//
// The rule (PgQ's): change_id order is not commit order, so progress is never
// a "last change_id seen". Instead the producer records ticks: tick n holds
// txid_current_snapshot() at some moment. Batch n is every change whose
// transaction is visible in tick n's snapshot but not in tick n-1's; a
// transaction still open at tick n lands in a later batch when it commits,
// however small its change_id. Within a batch, changes are read in change_id
// order, which for any one row is its commit order (a second writer of a row
// waits for the first's row lock, so takes a larger change_id).
//
// A tick is committed to datatunnel.ticks before any change of its batch is
// published, so after a crash the same batch is recomputed with the same
// content and the same positions, and consumers recognise what they already
// applied.
//
// Progress per table, stored in datatunnel.tables, is (tick, seq, sub): every
// change of earlier ticks, and of `tick` up to change_id `seq` (kEndOfTick:
// all of it), has been delivered; when `seq` is a change row in the bulk form
// (BulkRow), only its elements up to the element of `sub` (Position). Delivered changes are then
// deleted from the change table, which stays as small as the backlog. With progress go the chain
// heads (datatunnel.chain_heads): per partition of the table's topic, the
// position of the last delivered message sent there that progress covers.
//
// Thread-safety: one thread. All calls use the connection given at
// construction, which also holds the producer lock.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/change.h"
#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::capture {

struct Tick {
  int64_t number = 0;
  std::string snapshot;  // txid_snapshot text: "xmin:xmax:xip,..."
  // datatunnel.change_id_seq as the tick read it, after taking its snapshot
  // and before taking its xid; -1 when unknown (a tick of an earlier version).
  int64_t change_seq = -1;
  // The xid of the transaction that recorded it; 0 when unknown.
  int64_t xid = 0;
};

struct TableProgress {
  int64_t tick = 0;
  int64_t seq = 0;
  int32_t sub = 0;
  int64_t published = 0;  // changes published so far
};

struct ProgressUpdate {
  size_t table = 0;
  int64_t tick = 0;
  int64_t seq = 0;
  int32_t sub = 0;
  int64_t delivered = 0;  // changes delivered since the last update
  // Pruning: delete changes visible in `prune_snapshot` (the snapshot of the
  // newest tick whose batch is entirely delivered) with change_id <=
  // prune_upto (an index bound). Empty snapshot: prune nothing.
  int64_t prune_upto = 0;
  std::string prune_snapshot;
  int64_t prune_tick = 0;  // the tick of prune_snapshot (for the caller)
  // Chain heads of the table's topic that moved: (partition, position).
  std::vector<std::pair<int32_t, Position>> heads;
};

// A change row in the bulk form (install.sql): a statement of many rows
// written as arrays of record literals ("dt$rows", the column names in
// "dt$cols"), up to 10,000 rows per change row. Its element e (0-based) is
// the change at sub-position (e + 1) << Position::kElementShift of the change
// row's position. ChangeLog::ReadBatch() stops at such a row and describes it
// here; ChangeLog::ReadBulk() reads its elements in pieces. A bulk DELETE of
// a table with a key holds only the key's columns; every delete of such a
// table (of any form) is read as key_only, its other columns absent.
// What a tick evaluates at its snapshot to vouch for the columns of the
// tables whose changes it reads (the schema signature, SchemaWatch).
struct TickCheck {
  // A query of one text value covering every table.
  std::string all;
  // The same value for some tables only: a query of one text value over
  // the tables whose numbers the int[] SQL expression `tables` lists, in
  // its order. Null: `all` serves every tick. With hundreds of tables,
  // `all` costs a tick more than reading the few tables it has changes in
  // (an md5 of 500 tables' pg_attribute rows: 12-14 ms under load).
  std::function<std::string(std::string_view tables)> of;
};

struct BulkRow {
  int64_t change_id = 0;  // 0: none
  int64_t txid = 0;
  int64_t captured_us = 0;
  Op op = Op::kInsert;
  int32_t next = 0;  // the next element to read (0-based)
  // Per field of its record literals, the TableSpec column it is, or -1 (a
  // column dropped since); read with the first piece.
  std::vector<int> columns;
  // Whether the change table has a bulk DELETE's typed key arrays
  // ("dt$keys<n>"), whose elements are read as record literals; asked with
  // the first piece.
  bool typed_keys = false;
  bool active() const { return change_id != 0; }
};

class ChangeLog {
 public:
  // `tunnel`: the tunnel's name; its ticks, tables, chain heads and
  // producer lock are its own, so tunnels sharing a source never meet.
  ChangeLog(pg::Connection* conn, const std::vector<TableSpec>* tables, std::string tunnel)
      : conn_(conn), tables_(tables), tunnel_(std::move(tunnel)) {}

  // Takes the tunnel's producer lock, a session-level advisory lock held for
  // the life of the connection. Returns false when another producer of the
  // same tunnel holds it.
  Result<bool> TryLock();
  Result<int64_t> LoadEpoch();
  // One entry per table; kFatal when a table is not registered (init not run).
  Result<std::vector<TableProgress>> LoadProgress();
  // Ticks numbered >= from, in order, at most `limit`.
  Result<std::vector<Tick>> LoadTicks(int64_t from, int limit);
  // The chain heads recorded for table t's topic, indexed by partition (the
  // zero Position where none is). kFatal with the fix when the source state
  // predates chain heads (`init` not run since the upgrade).
  Result<std::vector<Position>> LoadHeads(size_t t);

  // Begins a REPEATABLE READ transaction and records tick `number` with its
  // snapshot. The transaction stays open so the caller may read rows at
  // exactly this snapshot (a snapshot chunk); CommitTick() ends it.
  // Returns kFatal (another producer took over) if `number` already exists.
  Result<Tick> BeginTick(int64_t number);
  Status CommitTick();
  // One table's first read of a batch, done inside RecordTick().
  struct TickRead {
    size_t table = 0;
    int limit = 0;
    // Filled in: what ReadBatch(table, lo, tick, 0, limit, ...) would give.
    std::vector<Change> changes;
    int64_t last = 0;
    int rows = 0;
    BulkRow bulk;
    // The table has nothing in the batch (the probe found nothing): no read
    // was done and none is needed.
    bool empty = false;
  };
  // Records tick lo.number + 1 and reads the first rows of its batch for
  // each of `reads` (one per table, in table order), when no snapshot chunk
  // needs reading at the tick's snapshot. `check_sql` is evaluated at the
  // tick's snapshot (the schema signature); its value is stored in *check,
  // and the tables it covers in *checked (left empty: every table; with
  // more than kProbeAbove tables and TickCheck::of, only the tables the
  // batch has changes in). *check is left empty when the batch has no change
  // (with more than kProbeAbove tables the check is evaluated only then, or
  // when the touch log names a table, below:
  // over hundreds of tables it costs more than the rest of an idle tick, and
  // only a change of the batch needs the columns it vouches for).
  //
  // With at most kProbeAbove tables, one round trip: BEGIN, the tick's
  // INSERT, every table's read and COMMIT sent as one pipeline. With more,
  // the reads of all tables would cost as much as the tables are many, so
  // the tick's transaction asks instead which tables have anything in the
  // batch (ProbeQuery: one prepared statement, an index probe per table
  // bounded by ProbeBound()), and a second round trip reads only those; the
  // others are marked `empty`. When the shared sequence, as last seen, had
  // not passed that bound (an idle source), the tick's INSERT goes first and
  // the probe runs only if the tick's change_seq passed it: a batch whose
  // ids would all lie in (bound, change_seq] is empty when that range is,
  // so an idle tick costs the same whatever the number of tables.
  //
  // The probe's index probe per table is itself a cost per table (~80 us
  // each under load), and so was reading every table's touch sequence (4 ms
  // per tick over 500). So each capture trigger adds a row to the touch log
  // (datatunnel.touches: its change table, its transaction; install.sql),
  // and a busy tick takes (deletes) the rows its snapshot sees of this
  // tunnel's change tables in its first round trip: their tables are every
  // table its batch has changes in (the rows of transactions visible in lo
  // were taken by an earlier tick), read with the check in the second. The
  // log is unlogged; a crash empties it, and with it the tunnel's guard row
  // (datatunnel.touch_guards), which only a probing tick writes: a tick that
  // finds its guard gone probes. Without the log (an install before it, a
  // table whose triggers an earlier version wrote, or a role that may not
  // use it), the probe as above.
  Result<Tick> RecordTick(const Tick& lo, const TickCheck& check_sql, std::string* check,
                          int64_t epoch, std::span<TickRead> reads,
                          std::vector<size_t>* checked = nullptr);
  // The same first reads for a tick `hi` recorded earlier (a batch replayed
  // after a restart): with more than kProbeAbove tables, probes and reads
  // the tables that have changes (two round trips) and marks the others
  // `empty`; with fewer, clears *reads (the reader reads every table).
  Status ReadFirst(const Tick& lo, const Tick& hi, int64_t epoch, std::vector<TickRead>* reads);
  static constexpr size_t kProbeAbove = 4;

  // Whether a tick now could find changes that tick `last` did not: a
  // transaction in progress at `last` has ended, or the shared change_id
  // sequence (every change table draws from it) moved since `last` and a
  // transaction that began after `last` has committed since: a writer's ids
  // are taken before it commits, and a tick before the commit would not see
  // them. Transactions of this ChangeLog's own (`last`'s, and the progress
  // records since it) do not count: they write no change, and counting them
  // would take an empty tick each time progress is recorded while a writer
  // holds ids. One read of the sequence, whatever the number of tables, and
  // no write: cheap enough to run every few milliseconds, unlike NOTIFY,
  // which serialises every committing writer.
  // REQUIRES: `last` is the newest tick this ChangeLog recorded or loaded.
  Result<bool> ChangedSince(const Tick& last);

  // Every table's change-table row count (exact), in table order, with one
  // statement (prepared once per connection); nullopt when nothing can have changed since the last
  // call that returned counts (they were all 0 and the shared sequence, as last seen by
  // ChangedSince() or a tick, has not moved).
  Result<std::optional<std::vector<int64_t>>> CountAllPending();

  // Reads up to `limit` change-table rows of table `t` in the batch (lo, hi]
  // with change_id > after, in change_id order, appending Changes to `out`
  // (an UPDATE that changed the key gives two), and their number to *rows
  // (may be null). Stops before the first change row in the bulk form, which
  // it describes in *bulk (else leaves it inactive); the caller reads it with
  // ReadBulk(), then goes on after its change_id. Returns the last change_id
  // read, or `after` when there was none.
  Result<int64_t> ReadBatch(size_t t, const Tick& lo, const Tick& hi, int64_t after, int limit,
                            int64_t epoch, std::vector<Change>* out, BulkRow* bulk,
                            int* rows = nullptr);
  // Reads the next at most `limit` elements of bulk row *bulk of table t in
  // the batch up to tick `tick`, appending their changes to `out` and moving
  // bulk->next. Returns true when the row is read to its end. Memory is
  // bounded by the piece: the server expands only the slice asked for.
  Result<bool> ReadBulk(size_t t, int64_t tick, int64_t epoch, int limit, BulkRow* bulk,
                        std::vector<Change>* out);

  // Writes progress and chain heads and prunes delivered changes and old
  // ticks, in one transaction (one round trip). Progress and heads only move
  // forward.
  Status RecordProgress(std::span<const ProgressUpdate> updates);

  // Changes waiting in table t's change table (an exact count; for status).
  Result<int64_t> CountPending(size_t t);

  // The average size in bytes of table t's source rows (with their TOAST),
  // from the statistics (a size function would wait for a lock on the
  // table); 0 when unknown. A first guess at the size of a change.
  double EstimatedRowBytes(size_t t);

 private:
  // `stmts` (BEGIN … COMMIT) as one pipeline; rolled back when one fails.
  Status RunTransaction(std::span<const pg::Statement> stmts,
                        std::vector<pg::QueryResult>* results = nullptr);
  Status TickTaken(int64_t number) const;
  std::string BatchQuery(const TableSpec& spec, bool in_tick) const;
  void PrepareQueries();
  // Per-table statements are prepared once per connection (named
  // statements), as the probe is: with hundreds of tables a batch under load
  // reads and prunes tens of them, and planning each read every time cost
  // more than running it. The reads run their generic plan; the prunes are
  // left to PostgreSQL's choice (custom plans while the generic one looks
  // costlier: a backlog's prune must not become a scan of the whole table).
  // Prepares, in one round trip, the reads (`prune`: the prunes) of `tables`
  // not yet prepared.
  Status PrepareTables(std::span<const size_t> tables, bool prune);
  // EXECUTE of table t's prepared read of batch (lo, hi] after `after`.
  std::string ReadCall(size_t t, int64_t after, const Tick& lo, const Tick& hi, int limit) const;
  // Appends to `stmts` the first read of each of `reads` whose table is in
  // `tables` (marking the others empty), returning the index into `reads`
  // of each appended statement.
  std::vector<size_t> AddReads(std::span<const size_t> tables, const Tick& lo, const Tick& hi,
                               std::span<TickRead> reads, std::vector<pg::Statement>* stmts) const;
  // Parses the results of AddReads()'s statements, which start at
  // results[at], into `reads`.
  Status ParseReads(std::span<const size_t> which, std::span<const pg::QueryResult> results,
                    size_t at, int64_t tick, int64_t epoch, std::span<TickRead> reads);
  // Whether RecordTick() and ReadFirst() probe (more than kProbeAbove tables).
  bool Probing() const { return tables_->size() > kProbeAbove; }
  // Decides (once per connection) whether ticks use the touch log, and
  // prepares the statement that takes its rows; leaves touch_ off when they
  // cannot (see RecordTick).
  Status PrepareTouch();
  // Prepares the probe statement (once per connection and `check_sql`;
  // empty: none). It returns the tables with changes (a text int[]) and,
  // when asked and there are any, the value of `check_sql` (TickCheck::of
  // over those tables when given, else `all`).
  Status PrepareProbe(const TickCheck& check_sql);
  // Prepares TickCheck::of's query with its tables as parameter $1 (once
  // per connection and `check_sql`), for ReadTouched.
  Status PrepareCheck(const TickCheck& check_sql);
  // The statement that runs the probe of batch (lo, hi]; with `in_tick`, hi
  // is the snapshot of the transaction it runs in; `check`: evaluate the
  // check when a table has changes.
  std::string ProbeCall(const Tick& lo, const Tick* hi, bool check);
  // A tick was recorded: the sequence has been seen at its change_seq, and
  // no own transaction committed after it.
  void Recorded(const Tick& tick);
  // A change_id below every change of a transaction not visible in `lo`:
  // the change_seq of the newest known tick m whose successor's snapshot
  // has xmax <= xmin(lo). Tick m read the sequence before taking its xid X,
  // X committed before tick m+1 began (X < xmax(m+1) <= xmin(lo)), and a
  // transaction T not visible in lo has T >= xmin(lo) > X, so T took its
  // ids (from a trigger, after T's own write took T) after m's read. 0 when
  // no such tick is known.
  int64_t ProbeBound(const Tick& lo) const;
  void Remember(const Tick& tick);
  // Inside tick hi's open transaction: reads the first rows of `tables`
  // (those the touch log named), evaluating `check_sql` into *check when
  // there are any (over those tables, *checked, when TickCheck::of is
  // given), marks the others empty, and commits. One round trip.
  Status ReadTouched(std::vector<size_t> tables, const Tick& lo, const Tick& hi,
                     const TickCheck& check_sql, std::string* check, std::vector<size_t>* checked,
                     int64_t epoch, std::span<TickRead> reads);
  // Reads the first rows of the tables probe result `probed` names (a text
  // int[]), marks the others empty. One round trip.
  Status ReadProbed(std::string_view probed, const Tick& lo, const Tick& hi, int64_t epoch,
                    std::span<TickRead> reads);
  Result<int64_t> ParseBatch(size_t t, const pg::QueryResult& r, int64_t tick, int64_t after,
                             int64_t epoch, std::vector<Change>* out, BulkRow* bulk);
  pg::Connection* conn_;
  const std::vector<TableSpec>* tables_;
  std::string tunnel_;
  std::vector<std::string> batch_queries_;
  std::vector<std::string> tick_queries_;  // the same, inside the tick
  int64_t newest_seq_ = -1;  // the shared sequence, as the last ChangedSince() or tick saw it
  // Xids of this ChangeLog's transactions committed since the newest tick
  // (progress records), which ChangedSince() ignores.
  std::vector<int64_t> own_xids_;
  // CountAllPending(): the sequence at its last count, -1 when that count
  // found rows (or none was made).
  int64_t counted_seq_ = -1;
  bool probe_prepared_ = false;
  bool counts_prepared_ = false;                      // CountAllPending()'s statement
  std::vector<bool> read_prepared_, prune_prepared_;  // per table (PrepareTables)
  bool progress_prepared_ = false;                    // RecordProgress()'s UPDATE
  // When RecordProgress() last deleted old ticks (MonotonicMicros; 0: never).
  int64_t ticks_pruned_us_ = 0;
  std::string probe_check_;     // the check the probe was prepared with
  std::string check_prepared_;  // PrepareCheck()'s statement, as prepared ("": none)
  // Recent ticks: number -> (xmax of its snapshot, change_seq), for ProbeBound().
  std::map<int64_t, std::pair<int64_t, int64_t>> history_;
  // PrepareTouch(): 0 not looked up, 1 the touch log in use, -1 not.
  int touch_ = 0;
  bool touch_prepared_ = false;  // its statement
  std::string install_version_;  // install_capture()'s row version it checked at
};

// How many change-table rows to read at once, per table: at most
// kMaxRows, and about kBudgetBytes by the size of the table's last changes
// read (until a read tells: its rows' average size from the statistics), so
// a table of 10 MB rows is not read 5,000 rows at a time.
// Thread-safety: one thread.
class ReadSizer {
 public:
  static constexpr int kMaxRows = 5000;
  static constexpr int64_t kBudgetBytes = 16 << 20;

  // Tests only: at most this many rows (changes, or elements of a change row
  // in the bulk form) per read, to read a bulk row in many pieces.
  static constexpr const char* kMaxRowsEnv = "DATATUNNEL_TEST_READ_ROWS";

  // Starts with the estimates of `log`'s tables (ChangeLog::EstimatedRowBytes).
  void Start(ChangeLog& log, size_t tables);
  int Limit(size_t t) const;
  // Notes the changes of one read of table t; returns how many changes they
  // are (an UPDATE that changed the key gives two Changes, one change).
  int64_t Observe(size_t t, const std::vector<Change>& changes);

 private:
  std::vector<double> avg_change_bytes_;
  int max_rows_ = kMaxRows;
};

// A position at or after every message any producer of tunnel `tunnel` has
// published from the source so far, and before any it will publish from a
// tick not yet recorded: the end of the tunnel's newest recorded tick,
// (epoch, tick, kEndOfTick, INT32_MAX).
Result<Position> NewestRecordedPosition(pg::Connection& source, const std::string& tunnel);

// The SQL of one tick's inserts and updates of `spec` (their after-images,
// as `spec`'s columns), run inside the transaction that records the tick
// (its snapshot is the tick's), with $1 the previous tick's snapshot. The
// elements of bulk change rows are included while the table's columns are
// those they were written with (after an ALTER they are left out).
std::string TickWritesQuery(const TableSpec& spec);

// The backend pid of the session holding tunnel `tunnel`'s producer lock (a
// running producer), or 0 when none does.
Result<int> ProducerBackend(pg::Connection& source, const std::string& tunnel);

// The source's side of one table's backlog, for `datatunnel status`: what the
// producer has published (positions, not only counters) and what waits in
// the change table.
struct SourceBacklog {
  int64_t epoch = 0;              // datatunnel.meta.epoch
  int64_t published_count = 0;    // changes published so far (a counter)
  int64_t pending = 0;            // rows in the change table, not yet published
  double oldest_pending_age = 0;  // seconds since the oldest of them was captured; 0: none
  // Per partition of the table's topic, the chain head (the last message the
  // producer published there, datatunnel.chain_heads) and where the current
  // burst of publishing began (`since`, `since_age` seconds ago).
  struct Head {
    int32_t partition = 0;
    Position pos;
    Position since;
    double since_age = 0;
  };
  std::vector<Head> heads;
};
// Reads it for source table `table`, published to `topic`. kBadConfig when
// the table is not captured (init not run for it).
Result<SourceBacklog> LoadBacklog(pg::Connection& source, const QualifiedName& table,
                                  const std::string& topic);

// The advisory lock key pair a tunnel's producer holds:
// ("DTNL", hashtext(tunnel name)).
inline constexpr int32_t kLockClass = 0x44544e4c;

}  // namespace datatunnel::capture
