// Capture, control plane: the objects that record every change on the source.
//
// For each tunnelled table <schema>.<table>, `init` creates, beside it:
//   <schema>.<table>_cdc        the change table: "dt$change_id" (from the
//                               shared sequence datatunnel.change_id_seq),
//                               "dt$txid", "dt$action", "dt$captured_at",
//                               "dt$cols", "dt$rows" (a statement of more
//                               than 1,000 rows: its rows as an array of
//                               record literals, up to 10,000 per change
//                               row, and their column names; else NULL),
//                               "dt$keys1".."dt$keys<n>" (a bulk DELETE's
//                               keys as arrays of their own types, when
//                               every key column has a fixed-length type;
//                               "dt$rows" is then '{NULL}'),
//                               "dt$old1".."dt$old<n>" (the n key columns'
//                               values before an UPDATE that changed the
//                               key; written by versions before the
//                               statement triggers only, still read), then
//                               the table's own columns with the
//                               same names and types. Every column of ours
//                               starts with dt$, so the table's columns can
//                               have any name (but one starting with dt$).
//   datatunnel.capture_<oid>()  the trigger function (SECURITY DEFINER, so
//                               writers need no rights on the change table).
//   datatunnel_capture_insert   AFTER INSERT FOR EACH STATEMENT, with the
//   datatunnel_capture_update   transition tables "dt$new" / "dt$old": one
//   datatunnel_capture_delete   set-based INSERT per statement, or for more
//                               than 1,000 rows the arrays. An UPDATE
//                               pairs old and new rows by key (install.sql).
//                               `init` replaces the row-level trigger
//                               datatunnel_capture of earlier versions,
//                               which partitioned tables, partitions and
//                               tables in an inheritance tree keep.
//   datatunnel_truncate         AFTER TRUNCATE FOR EACH STATEMENT.
// A table with no key (no primary key, no unique index, none configured) is
// captured with full-row identity: its TableSpec key is empty, the change
// rows hold whole rows, and an UPDATE is a DELETE of the old row plus an
// INSERT of the new one.
// (No NOTIFY trigger: NOTIFY serialises committing writers; the producer
// polls with one read of the shared sequence instead. `init` drops one left by an earlier
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

// The change table's own columns. They precede the captured row image: the
// meta columns, then one old-key column per key column ("dt$old1", ...).
// Source columns whose name starts with kReservedPrefix are refused.
inline constexpr const char* kReservedPrefix = "dt$";
inline constexpr const char* kChangeIdColumn = "\"dt$change_id\"";
inline constexpr const char* kTxidColumn = "\"dt$txid\"";
inline constexpr const char* kActionColumn = "\"dt$action\"";
inline constexpr const char* kCapturedAtColumn = "\"dt$captured_at\"";
// The bulk form (capture/change_log.h, BulkRow): the column names of the
// rows, and the rows as record literals; NULL in a change row of one row.
inline constexpr const char* kColsColumn = "\"dt$cols\"";
inline constexpr const char* kRowsColumn = "\"dt$rows\"";
// The quoted old-key column of key column `n` (0-based): "dt$old<n+1>".
std::string OldKeyColumn(size_t n);
// The quoted typed-key array of key column `n` (0-based), "dt$keys<n+1>":
// a bulk DELETE's keys when every key column has a fixed-length type.
std::string TypedKeysColumn(size_t n);
inline constexpr const char* kNotifyChannel = "datatunnel";

// Builds the source-side spec of each configured table from the catalog:
// checks it exists, resolves the key (configured, else the primary key, else
// the first unique index, else none: full-row identity) and names its change
// table. Errors are kBadConfig with the fix. Warnings (a key with no unique
// index on the source; a table without a key, one line naming it) go to
// `warnings`.
Result<std::vector<TableSpec>> DescribeSourceTables(pg::Connection& source,
                                                    const std::vector<TableConfig>& tables,
                                                    std::vector<std::string>* warnings);

// The tables of the source's catalog a pattern entry may select: ordinary
// and partitioned tables (not partitions, which their parent's capture
// covers), outside the system schemas and schema datatunnel, that are not
// change tables (named *_cdc with a "dt$change_id" column), whose schema
// and name match `pattern`. In name order.
Result<std::vector<QualifiedName>> CatalogTables(pg::Connection& source,
                                                 const NamePattern& pattern);

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

// A table captured on the source (registered in datatunnel.tables).
struct CapturedTable {
  QualifiedName source;
  QualifiedName change_table;
  std::vector<std::string> key;
  std::string tunnel;  // "" for state of a version before tunnel names
};
// The tables captured on the source by tunnel `tunnel` (and those an earlier
// version captured for no tunnel in particular), or by every tunnel when
// `tunnel` is empty; by name; empty when datatunnel is not installed there.
Result<std::vector<CapturedTable>> CapturedTables(pg::Connection& source,
                                                  const std::string& tunnel);
// The tables of `captured` that tunnel `tunnel` owns, or no tunnel does.
std::vector<CapturedTable> OfTunnel(std::vector<CapturedTable> captured, const std::string& tunnel);

// Checks, before `init` changes anything, against `captured` (every
// tunnel's tables, CapturedTables(source, "")): each table of `tables`
// that is already captured keeps the key it was captured with — a changed
// key is kBadConfig naming both keys and the procedure to re-key the table
// (uninstall its capture, init, snapshot with --truncate-target);
Status CheckKeysUnchanged(const std::vector<CapturedTable>& captured,
                          const std::vector<TableSpec>& tables);
// and no table of `tables` is captured by another tunnel than `tunnel` (a
// table belongs to one tunnel; `where` names the source database).
Status CheckOwnership(const std::vector<CapturedTable>& captured, const std::string& tunnel,
                      const std::vector<TableSpec>& tables, const std::string& where);
// The tables of `captured` that `configured` does not name ("no longer
// configured": their change tables grow until they are uninstalled).
std::vector<QualifiedName> NotConfigured(const std::vector<CapturedTable>& captured,
                                         const std::vector<TableConfig>& configured);

// The number of changes waiting in `change_table` (published or not: rows
// are pruned once delivered).
Result<int64_t> CountChanges(pg::Connection& source, const QualifiedName& change_table);

// What is left of datatunnel on the source: one line per object (schema,
// event triggers, capture triggers); empty when nothing is.
Result<std::vector<std::string>> Leftovers(pg::Connection& source);

// The SQL that creates the state schema and the capture functions.
std::string StateSchemaDdl();
// The event triggers Install() creates when the role may (a superuser):
// datatunnel_drop (refuses to drop a change table by hand) and
// datatunnel_ddl (keeps capture in step with ALTER TABLE).
inline constexpr const char* kDropGuardDdl =
    "CREATE EVENT TRIGGER datatunnel_drop ON sql_drop EXECUTE FUNCTION datatunnel.on_drop()";
inline constexpr const char* kDdlTriggerDdl =
    "CREATE EVENT TRIGGER datatunnel_ddl ON ddl_command_end WHEN TAG IN ('ALTER TABLE') "
    "EXECUTE FUNCTION datatunnel.on_ddl()";
// The event trigger of auto_add (a pattern entry with auto_add = true):
// captures a new matching table in the transaction that creates it
// (install.sql, datatunnel.on_create()). Created by Install() when asked;
// it needs a superuser, and `init` refuses auto_add without one.
inline constexpr const char* kAddTriggerDdl =
    "CREATE EVENT TRIGGER datatunnel_add ON ddl_command_end WHEN TAG IN ('CREATE TABLE', "
    "'CREATE TABLE AS', 'SELECT INTO') EXECUTE FUNCTION datatunnel.on_create()";
// The advisory lock class of auto_add ("DTNA", with hashtext(tunnel)): a
// transaction that registers a new table holds it shared until it ends, and
// the producer prunes ticks only when it gets it (ChangeLog::RecordProgress),
// so the tick the new table starts at is still there when it commits.
inline constexpr int32_t kAddLockClass = 0x44544e41;

// Whether the role connected to `source` may create event triggers (a
// superuser, or rds_superuser on Amazon RDS), as auto_add needs.
Result<bool> MayCreateEventTriggers(pg::Connection& source);

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
//
// `auto_add` (from `init`; null elsewhere): the tunnel's pattern entries
// with auto_add = true, stored in datatunnel.auto_add in place of the
// tunnel's earlier ones; when there are any, the event trigger
// datatunnel_add is created if missing (kBadConfig, nothing changed, when
// the role may not).
Result<InstallReport> Install(pg::Connection& source, const std::string& tunnel,
                              const std::vector<TableSpec>& tables,
                              const std::vector<TableConfig>* auto_add = nullptr);

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
