// Apply, control plane: what `init` prepares on the target database.
//
// - datatunnel.tunnels: each tunnel applying here, bound to its source
//   installation.
// - The schema `datatunnel` with datatunnel.applied: one row per (stream,
//   partition) holding the Kafka offset and source Position applied last,
//   updated in the same transaction as the rows it describes. A stream is a
//   topic, or "memory:<target table>" for the in-memory hand-over.
// - datatunnel.advance(): moves one such row forward, failing (SQLSTATE
//   DT001) if someone else moved it since we read it; that fences off a
//   consumer that lost its partition in a rebalance. (A batch of several
//   partitions moves them with one UPDATE of the same guard, applier.cc,
//   and calls advance() only to fail.)
// - The chain check's state in datatunnel.applied (the tail, a recorded gap;
//   apply/chain.h) and datatunnel.resyncs: a snapshot into an emptied table
//   supersedes every message up to a source tick.
// - datatunnel.barriers and datatunnel.truncate_arrive(): a TRUNCATE reaches
//   every partition of a topic; each partition's consumer records its arrival
//   with the batch that got there, and the last to arrive runs the TRUNCATE.
//   Until then the partitions that arrived wait, so the TRUNCATE falls between
//   the changes before and after it on the source, for every key.
// - The target table, created from the source's catalog when missing, and a
//   unique index on the key when it has none (upserts need one).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/change.h"
#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::apply {

inline constexpr const char* kPositionMovedSqlState = "DT001";

std::string TargetStateDdl();

// The statements Install() runs for target table `src` when it lacks them:
// the table itself (the source's column names and types), the unique index
// on the key, and the TRUNCATE trigger. For `init --print-sql` too.
std::string TargetTableDdl(const TableSpec& src);
std::string KeyIndexDdl(const TableSpec& src);
std::string TruncateTriggerDdl(const TableSpec& src);

// Creates the state objects and, for each table, the target table (with the
// source's column names and types) and a unique index on the key. Idempotent.
// `sources`: the source-side specs (columns and key from the source catalog).
// A user-defined type the source's columns use (enum, domain, composite).
struct TypeToCreate {
  std::string name;  // "schema"."type"
  std::string schema;
  std::string ddl;  // CREATE TYPE / CREATE DOMAIN
};

// Checks that `init` has set up the target's state (datatunnel.applied). OK,
// or kBadConfig asking for `datatunnel init`.
Status CheckInstalled(pg::Connection& target);

// Checks, for a consumer about to apply, that the target's state is there
// and of this version (the chain check's columns, datatunnel.resyncs): kFatal
// asking for `datatunnel init` (to set it up or upgrade it), or the error of
// a target that cannot be read now (retryable: it may be restarting).
Status CheckStateCurrent(pg::Connection& target);

// The source installation id tunnel `tunnel` is bound to on the target
// (datatunnel.tunnels, written by `init`); kBadConfig asking for `init` when
// the tunnel is not registered there.
Result<std::string> BoundSource(pg::Connection& target, const std::string& tunnel);

// Registers tunnel `tunnel` on the target, bound to source installation
// `install` (or re-binds it: the source was set up again). Returns the action
// taken, "" when it was already so. REQUIRES: the state schema exists.
Result<std::string> BindTunnel(pg::Connection& target, const std::string& tunnel,
                               const std::string& install);

// Whether target table `name` is itself captured by a datatunnel installation
// in the target database (it carries the capture trigger): emptying it would
// destroy a source's rows.
Result<bool> IsCapturedSource(pg::Connection& target, const QualifiedName& name);

// Creates the state objects, the types in `types` the target lacks, and for
// each table the target table (with the source's column names and types)
// or the source's columns it lacks, and a unique index on the key.
// Idempotent.
Result<std::vector<std::string>> Install(pg::Connection& target,
                                         const std::vector<TableSpec>& sources,
                                         const std::vector<TypeToCreate>& types = {});

// How a value of a source column type fares in a target column of another
// type (compared by format_type() text and pg_type.typname):
//   kSame   the same type;
//   kSafe   every value converts without loss (int4 -> int8, int -> numeric,
//           varchar(10) -> varchar(20) or text, float4 -> float8, any -> text);
//   kLossy  values can be refused or changed (numeric -> integer, text ->
//           varchar(n), int8 -> int4, timestamptz -> timestamp, ...).
enum class TypeFit { kSame, kSafe, kLossy };
TypeFit ClassifyTypeChange(const Column& source, const Column& target);

// What `init` found on the target before changing anything.
struct TargetCheck {
  std::vector<std::string> errors;    // init must not go on: each with its fix
  std::vector<std::string> warnings;  // init goes on
};
// Read-only checks of the target for `sources` (source-side specs): an
// existing target relation is a table, has the key columns, can take a
// unique index on the key (no duplicate keys), the index name is free, and
// its columns' types take the source's values (kLossy: error; kSafe: warning).
Result<TargetCheck> CheckTarget(pg::Connection& target, const std::vector<TableSpec>& sources);

// Adds to target table `spec` (target side) the columns of `columns` it
// lacks (ALTER TABLE ... ADD COLUMN IF NOT EXISTS). Returns the names added.
Result<std::vector<std::string>> AddColumns(pg::Connection& target, const TableSpec& spec,
                                            const std::vector<Column>& columns);

// Builds the target-side spec of each configured table from the target
// catalog. The key is the configured one, else the target's primary key, else
// its first unique index, else none: full-row identity (the applier's
// keyless path, for a source table without a key).
Result<std::vector<TableSpec>> DescribeTargetTables(pg::Connection& target,
                                                    const std::vector<TableConfig>& tables);

// Drops the target state (never the target tables or their rows).
Result<std::vector<std::string>> Uninstall(pg::Connection& target,
                                           const std::vector<TableSpec>& tables);

std::vector<std::string> RuntimeGrants(const std::vector<TableSpec>& targets,
                                       const std::string& role, const std::string& database);

// The position that stands for "every message up to the end of source tick
// `tick`": (epoch, tick, kEndOfTick, INT32_MAX).
Position ResyncPosition(int64_t epoch, int64_t tick);

// Before a snapshot into target table `table`, in one transaction: empties
// it, records in datatunnel.resyncs that every message of its streams at or
// below `upto` (capture::NewestRecordedPosition() on the source, read before
// this call) is superseded by the snapshot, marks the TRUNCATE barriers there
// done, and clears the table's recorded gaps. Consumers then drop those
// messages (a partition's stored state reloads it on assignment) and go past
// a gap among them. Only moves the resync forward.
// Several tables are emptied with one TRUNCATE: a table another one
// references by a foreign key can only be emptied together with it.
Status ResyncForSnapshot(pg::Connection& target, std::span<const QualifiedName> tables,
                         const Position& upto);
inline Status ResyncForSnapshot(pg::Connection& target, const QualifiedName& table,
                                const Position& upto) {
  return ResyncForSnapshot(target, std::span<const QualifiedName>(&table, 1), upto);
}

// A foreign key on the target from `referencing` to `referenced`.
struct ForeignReference {
  QualifiedName referencing, referenced;
  std::string constraint;
};
// The foreign keys (not those of partitions, inherited from their parent)
// from a table outside `tables` to one of them: what keeps ResyncForSnapshot
// from emptying them.
Result<std::vector<ForeignReference>> ReferencesFromOutside(pg::Connection& target,
                                                            std::span<const QualifiedName> tables);

// A gap a consumer recorded (apply/chain.h): it stopped before `offset` of
// (stream, partition), whose message links to `found` while the newest
// position read there was `expected` ("[epoch,tick,seq,sub]" each).
struct RecordedGap {
  std::string stream;
  int32_t partition = 0;
  int64_t offset = -1;
  std::string expected, found;
  std::string detected_at;  // ISO-8601, UTC
  // One line for an operator: where, what is missing, the fix.
  std::string Describe(const std::string& source_table, const std::string& target_table) const;
};
// The gaps recorded for target table `table`, in every stream.
Result<std::vector<RecordedGap>> LoadGaps(pg::Connection& target, const QualifiedName& table);

// The target's side of one table, for `datatunnel status` and for `run`'s
// decision to copy a table again: per partition what was applied (a
// position, not only counters), the end-of-snapshot markers applied, and the
// table's identity (its OID now, and when each partition applied its marker).
struct TargetTableState {
  bool exists = false;  // the target table exists
  int64_t relid = 0;    // its OID
  bool has_rows = false;
  Position resync;  // a snapshot into the emptied table superseded everything up to here
  struct Partition {
    std::string stream;
    int32_t partition = 0;
    // The newest position the consumer is done with: applied, skipped as a
    // duplicate or dead-lettered (max of the applied position and the tail).
    Position done;
    int64_t applied_count = 0, dead_letters = 0;
    double since_applied = -1;  // seconds since the newest applied change was captured; <0: none
    std::string updated_at;     // ISO-8601, UTC; "" when never
    int64_t snapshot_epoch = 0, snapshot_tick = 0;  // the newest end marker applied; 0: none
    int snapshot_partitions = 0;
    int64_t snapshot_relid = 0;  // the table's OID when it was applied; 0: unknown
    bool truncated = false;      // emptied by a TRUNCATE outside the tunnel since
  };
  std::vector<Partition> partitions;
};
Result<TargetTableState> LoadTargetState(pg::Connection& target, const QualifiedName& table);

// The newest end-of-snapshot marker applied to a table (tick 0: none), and
// whether every partition it was published on has applied it.
struct SnapshotMarker {
  int64_t tick = 0;
  bool complete = false;
};
SnapshotMarker NewestSnapshotMarker(const TargetTableState& target);
// Changes applied to the table by the stream, over all partitions.
int64_t AppliedCount(const TargetTableState& target);

// Whether the target holds the copy of the snapshot whose end marker the
// source published at (epoch, marker_tick) (marker_tick 0: recorded by an
// earlier version, any marker counts).
enum class CopyState {
  kApplied,     // every partition applied the marker, into this very table
  kNotApplied,  // published, not (yet) applied everywhere
  kLost,        // applied, but the table was since recreated or truncated by hand
};
struct CopyJudgement {
  CopyState state = CopyState::kNotApplied;
  std::string why;  // kLost, kNotApplied: one phrase for an operator
};
CopyJudgement JudgeCopy(const TargetTableState& target, int64_t epoch, int64_t marker_tick);

}  // namespace datatunnel::apply
