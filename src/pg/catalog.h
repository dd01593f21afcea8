// Catalog look-ups: a table's columns, types and unique keys, read from
// pg_catalog. Column lists in datatunnel always come from here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::pg {

struct CatalogColumn : Column {
  char typtype = 'b';       // b base, d domain, e enum, c composite, r range, ...
  std::string type_schema;  // schema of the type (for enums/domains to create on the target)
};

struct TableInfo {
  uint32_t oid = 0;
  char relkind = 'r';          // r table, p partitioned table, v view, ...
  int64_t estimated_rows = 0;  // pg_class.reltuples (may be -1: never analyzed)
  std::vector<CatalogColumn> columns;
  std::vector<std::string> primary_key;               // column names, in index order
  std::vector<std::vector<std::string>> unique_keys;  // every valid full unique index (PK first)
};

// Returns nullopt when the table does not exist (or is not visible to the role).
Result<std::optional<TableInfo>> LoadTable(Connection& conn, const QualifiedName& name);

// Checks that `key` names columns of `info`; returns their indexes, or a
// kBadConfig Status that names the table, the missing column and the fix.
Result<std::vector<size_t>> ResolveKey(const TableInfo& info, const QualifiedName& name,
                                       const std::vector<std::string>& key, std::string_view side);

// Which database `conn` is in, as a string equal for two connections to the
// same database of the same running server and different otherwise (the
// server's start time and the database's oid; readable by any role).
Result<std::string> DatabaseIdentity(Connection& conn);

// Backend pids of other sessions of this database whose application_name is
// `application_name` (not the caller's own session).
Result<std::vector<int>> OtherSessions(Connection& conn, const std::string& application_name);

// Builds a TableSpec's column list from catalog columns.
std::vector<Column> ToColumns(const std::vector<CatalogColumn>& cols);

}  // namespace datatunnel::pg
