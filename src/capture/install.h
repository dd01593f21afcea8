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
// (No NOTIFY trigger: NOTIFY serialises committing writers; the producer
// polls with two index probes instead. `init` drops one left by an earlier
// version.)
// and, once per database, the schema `datatunnel` with the state tables and
// the event trigger datatunnel_ddl, which keeps the capture of a table up to
// date within the ALTER TABLE that changes it. The SQL is src/capture/install.sql.
//
// Install() is idempotent and runs in one transaction: a second run changes
// nothing. It also records the columns the tunnel accepts for each table;
// the producer compares them with the live catalog to notice schema changes.
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

// Checks that `init` has set up every table of `tables` on the source for
// tunnel `tunnel` (its state schema, in this version's form, and each
// table's registration). OK, or kBadConfig naming what is missing and asking
// for `datatunnel init`, or naming the other tunnel a table belongs to.
Status CheckInstalled(pg::Connection& source, const std::string& tunnel,
                      const std::vector<TableConfig>& tables);

// The one line for "table `table` belongs to tunnel `owner`, not `tunnel`".
std::string OtherTunnelMessage(const QualifiedName& table, const std::string& owner,
                               const std::string& tunnel, const std::string& where);

// The source installation's identity (datatunnel.meta.install_id), carried
// by every message as "source.install". kBadConfig asking for `init` when
// the state predates it.
Result<std::string> LoadInstallId(pg::Connection& source);

// The SQL that creates the state schema and the capture functions.
std::string StateSchemaDdl();

struct InstallReport {
  std::vector<std::string> actions;   // one line per action taken
  std::vector<std::string> warnings;  // e.g. no event trigger (needs a superuser)
  // Tables whose change table gained columns after the table did: rows
  // changed in between lack those values, so their snapshot must be redone.
  std::vector<size_t> needs_snapshot;
};

// Installs or updates everything for tunnel `tunnel` and accepts each
// table's current columns. Registers the tunnel (its tick 0) and its tables;
// a table registered by an earlier version (no tunnel) is claimed for
// `tunnel`. kBadConfig, with nothing changed, when a table belongs to
// another tunnel (a table is captured by one tunnel only).
Result<InstallReport> Install(pg::Connection& source, const std::string& tunnel,
                              const std::vector<TableSpec>& tables);

// How a table's live columns differ from the columns the tunnel accepted.
struct SchemaDrift {
  std::vector<Column> added;
  std::vector<std::string> dropped;
  std::vector<std::string> retyped;  // "name: old type -> new type"
  bool empty() const { return added.empty() && dropped.empty() && retyped.empty(); }
  std::string Describe() const;
};
// `spec` holds the live columns (DescribeSourceTables).
Result<SchemaDrift> CheckSchema(pg::Connection& source, const TableSpec& spec);
// Records `spec`'s columns as accepted.
Status AcceptSchema(pg::Connection& source, const TableSpec& spec);

// CREATE TYPE / CREATE DOMAIN statements for the user-defined types (enums,
// domains, composites, and arrays of them) the tables' columns use, so the
// target can be given the same types. In dependency order.
struct TypeDdl {
  std::string name;  // "schema"."type"
  std::string schema;
  std::string ddl;
};
Result<std::vector<TypeDdl>> UserTypes(pg::Connection& source,
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
