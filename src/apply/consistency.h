// Transaction-consistent apply on the target (pipeline.apply_consistency =
// "transaction"; docs/architecture.md, "Transaction-consistent apply"):
//   - the state: datatunnel.consistency, per tunnel the end of the newest
//     tick committed whole and the control record it came from, written in
//     the batch's transaction (Applier, TickMark);
//   - the apply lock: one consumer of a tunnel applies at a time, the others
//     wait as hot standbys;
//   - the order of statements inside a target transaction from the target's
//     foreign keys (pg_constraint), so that every constraint holds statement
//     by statement.
//
// Thread-safety: functions of their arguments.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/change.h"
#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::apply {

// What the target stored for tunnel `tunnel` in datatunnel.consistency.
struct ConsistencyState {
  bool found = false;
  std::string stream;      // the control topic, or "memory"
  int64_t offset = -1;     // its offset (-1 in memory)
  Position end;            // the end of the newest tick committed whole
  std::string applied_at;  // when (text, UTC)
  double age_seconds = 0;  // how long ago
};

// kFatal asking for `init` when the target's state predates transaction
// mode (no datatunnel.consistency).
Status CheckConsistencyState(pg::Connection& target);

Result<ConsistencyState> LoadConsistency(pg::Connection& target, const std::string& tunnel);

// The SQL that stores `end` (from `stream` at `offset`) for `tunnel`, in the
// batch's transaction; never moves the tick back.
std::string StoreConsistencySql();

// Tries to take tunnel `tunnel`'s apply lock, a session-level advisory lock
// held as long as `target`'s session lives. True when this session holds it.
Result<bool> TryApplyLock(pg::Connection& target, const std::string& tunnel);

// The order of a target transaction's statements across tables.
struct TableOrder {
  // Tables that reference or are referenced by another tunnel table through
  // a foreign key, referenced tables first (a cycle's tables together).
  std::vector<uint32_t> parent_first;
  std::vector<bool> linked;  // per table: in parent_first
  // Quoted constraint names (schema.name) to defer inside each transaction:
  // the DEFERRABLE foreign keys of a self-reference or a cycle.
  std::vector<std::string> deferred;
};

// Reads the foreign keys between the tunnel's target tables. kBadConfig
// naming the constraint and the fix when one in a self-reference or a cycle
// is not DEFERRABLE.
Result<TableOrder> LoadTableOrder(pg::Connection& target, const std::vector<TableSpec>& targets);

}  // namespace datatunnel::apply
