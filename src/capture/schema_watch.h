// Capture, control plane of a producer session: the captured tables' columns.
//
// A SchemaWatch has two duties:
//   - Reconcile(), when a session starts: compares each table's live columns
//     with those the tunnel accepted (CheckSchema) and applies the table's
//     schema_changes policy. A dropped or retyped column, or a new one under
//     "stop", is kFatal with the fix. Under "evolve" the new columns are
//     captured and accepted (Install) and, when rows that exist got a value
//     no trigger recorded (a DEFAULT), the table's snapshot is requested
//     again (capture/snapshot_state.h).
//   - a signature of every column of the captured tables, read once the
//     session has reconciled (Start) and compared in every tick's
//     transaction (Verify, VerifyInTick): any change ends the session with
//     kRetryable, so the next session reconciles before it publishes a
//     change written after the ALTER TABLE. The tick that saw the change
//     stays recorded and is published by that session.
//
// Thread-safety: one thread; every call uses the connection given at
// construction (the producer's).
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "capture/change_log.h"
#include "config/config.h"
#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::capture {

class SchemaWatch {
 public:
  // `specs` (the live columns, DescribeSourceTables) and `tables` (their
  // configuration, same order) must outlive the watch.
  SchemaWatch(pg::Connection* conn, std::string tunnel, const std::vector<TableSpec>* specs,
              const std::vector<TableConfig>* tables);

  // Applies the schema_changes policy to every table whose columns differ
  // from those accepted. OK when none does or all were evolved; kFatal with
  // the fix otherwise. REQUIRES: the producer lock is held.
  Status Reconcile();

  // Reads the signature the ticks are compared with. kFatal when a table
  // disappeared. REQUIRES: Reconcile() succeeded.
  Status Start();

  // A query of one text value, the signature, for a tick to evaluate at its
  // snapshot (ChangeLog::RecordTick).
  const std::string& signature_query() const { return query_; }
  // The same for ChangeLog::RecordTick, which may narrow it to the tables
  // a batch has changes in (TickCheck::of: an md5 of each of those tables'
  // columns, so a tick's check costs by the tables it reads).
  const TickCheck& tick_check() const { return tick_check_; }
  // OK when `signature` is the one Start() read for `tables` (empty: the
  // signature of every table, signature_query()); kRetryable otherwise.
  Status Verify(std::string_view signature, std::span<const size_t> tables = {}) const;
  // Evaluates the signature inside the open tick transaction and verifies
  // it. On any failure rolls the transaction back and returns the error.
  Status VerifyInTick();

 private:
  Status Evolve(const TableSpec& spec, const std::string& drift, const std::vector<Column>& added);

  pg::Connection* conn_;
  std::string tunnel_;
  const std::vector<TableSpec>* specs_;
  const std::vector<TableConfig>* tables_;
  std::string query_;
  std::string signature_;
  std::string oids_;                     // "{oid,...}": every table's, in table order
  std::vector<std::string> table_sigs_;  // per table: TableSignatures()'s value
  TickCheck tick_check_;
};

}  // namespace datatunnel::capture
