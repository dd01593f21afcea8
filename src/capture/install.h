// Capture, control plane: the objects that record every change on the source.
//
// For each tunnelled table <schema>.<table>, `init` creates, beside it:
//   <schema>.<table>_cdc        the change table: change_id bigserial, txid,
//                               action, captured_at, old_<key> (set when an
//                               UPDATE changes the key), then the table's own
//                               columns with the same types.
//   datatunnel.capture_<oid>()  the trigger function (SECURITY DEFINER, so
//                               writers need no rights on the change table).
//   datatunnel_capture          AFTER INSERT/UPDATE/DELETE FOR EACH ROW.
//   datatunnel_truncate         AFTER TRUNCATE FOR EACH STATEMENT.
//   datatunnel_notify           AFTER ... FOR EACH STATEMENT: one NOTIFY per
//                               statement wakes the producer.
// and, once per database, the schema `datatunnel` with the state tables
// (meta, ticks, tables); see docs/architecture.md.
//
// Install() is idempotent and runs in one transaction: a second run changes
// nothing, and a run after a source schema change brings the change table and
// trigger up to date (adding columns; never dropping captured data).
#pragma once

#include <string>
#include <vector>

#include "config/config.h"
#include "core/status.h"
#include "core/table.h"
#include "pg/catalog.h"
#include "pg/connection.h"

namespace datatunnel::capture {

// Columns of the change table that precede the captured row image.
inline constexpr const char* kMetaColumns[] = {"change_id", "txid", "action", "captured_at"};
inline constexpr const char* kOldKeyPrefix = "old_";
inline constexpr const char* kNotifyChannel = "datatunnel";

// Builds the source-side spec of each configured table from the catalog:
// checks it exists, resolves the key (configured, else the primary key) and
// names its change table. Errors are kBadConfig with the fix.
// Warnings (a key with no unique index on the source) go to `warnings`.
Result<std::vector<TableSpec>> DescribeSourceTables(pg::Connection& source,
                                                    const std::vector<TableConfig>& tables,
                                                    std::vector<std::string>* warnings);

// DDL, exposed for tests and for `init --print-sql`.
std::string ChangeTableDdl(const TableSpec& spec);
std::string CaptureFunctionDdl(const TableSpec& spec, const std::string& function);
std::string StateSchemaDdl();

// Installs or updates everything; returns one line per action taken.
Result<std::vector<std::string>> Install(pg::Connection& source,
                                         const std::vector<TableSpec>& tables);

// Removes triggers, functions, change tables and the state schema for
// `tables` (the state schema only once no captured table is left).
// User tables and their rows are never touched.
Result<std::vector<std::string>> Uninstall(pg::Connection& source,
                                           const std::vector<TableSpec>& tables);

// The GRANT statements for a low-privilege runtime role that runs
// `produce` (read and prune the change tables, write the state tables).
std::vector<std::string> RuntimeGrants(const std::vector<TableSpec>& tables,
                                       const std::string& role);

}  // namespace datatunnel::capture
