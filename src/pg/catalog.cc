#include "pg/catalog.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>

namespace datatunnel::pg {

Result<std::optional<TableInfo>> LoadTable(Connection& conn, const QualifiedName& name) {
  DT_ASSIGN_OR_RETURN(QueryResult rel,
                      conn.Query("SELECT c.oid, c.relkind, c.reltuples::bigint "
                                 "FROM pg_catalog.pg_class c "
                                 "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                                 "WHERE n.nspname = $1 AND c.relname = $2",
                                 {name.schema, name.name}));
  if (rel.rows() == 0) return std::optional<TableInfo>();
  TableInfo info;
  info.oid = static_cast<uint32_t>(rel.GetInt64(0, 0));
  info.relkind = rel.Get(0, 1).empty() ? 'r' : rel.Get(0, 1)[0];
  info.estimated_rows = rel.GetInt64(0, 2);
  std::string oid = std::to_string(info.oid);

  DT_ASSIGN_OR_RETURN(
      QueryResult cols,
      conn.Query("SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), "
                 "  COALESCE(bt.typname, t.typname), a.atttypid, a.attnotnull, "
                 "  a.attgenerated <> '', t.typtype, tn.nspname "
                 "FROM pg_catalog.pg_attribute a "
                 "JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
                 "JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace "
                 "LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype "
                 "WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped "
                 "ORDER BY a.attnum",
                 {oid}));
  for (int r = 0; r < cols.rows(); ++r) {
    CatalogColumn c;
    c.name = std::string(cols.Get(r, 0));
    c.type_sql = std::string(cols.Get(r, 1));
    c.typname = std::string(cols.Get(r, 2));
    c.type_oid = static_cast<uint32_t>(cols.GetInt64(r, 3));
    c.not_null = cols.GetBool(r, 4);
    c.generated = cols.GetBool(r, 5);
    c.typtype = cols.Get(r, 6).empty() ? 'b' : cols.Get(r, 6)[0];
    c.type_schema = std::string(cols.Get(r, 7));
    c.kind = ValueKindForType(c.typname);
    info.columns.push_back(std::move(c));
  }

  DT_ASSIGN_OR_RETURN(
      QueryResult idx,
      conn.Query(
          "SELECT i.indexrelid, i.indisprimary, a.attname "
          "FROM pg_catalog.pg_index i "
          "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
          "JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
          "WHERE i.indrelid = $1::oid AND i.indisunique AND i.indisvalid "
          "  AND i.indpred IS NULL AND i.indexprs IS NULL "
          "ORDER BY i.indisprimary DESC, i.indexrelid, k.ord",
          {oid}));
  std::vector<std::pair<int64_t, std::vector<std::string>>> keys;
  for (int r = 0; r < idx.rows(); ++r) {
    int64_t id = idx.GetInt64(r, 0);
    if (keys.empty() || keys.back().first != id) keys.push_back({id, {}});
    keys.back().second.emplace_back(idx.Get(r, 2));
    if (idx.GetBool(r, 1) && keys.size() == 1) info.primary_key = keys.back().second;
  }
  for (auto& k : keys) info.unique_keys.push_back(std::move(k.second));
  return std::optional<TableInfo>(std::move(info));
}

Result<std::string> DatabaseIdentity(Connection& conn) {
  DT_ASSIGN_OR_RETURN(auto r, conn.Query("SELECT pg_postmaster_start_time()::text || ' ' || oid "
                                         "FROM pg_database WHERE datname = current_database()"));
  return std::string(r.Get(0, 0));
}

Result<std::vector<size_t>> ResolveKey(const TableInfo& info, const QualifiedName& name,
                                       const std::vector<std::string>& key, std::string_view side) {
  std::vector<size_t> out;
  for (const auto& k : key) {
    auto it = std::find_if(info.columns.begin(), info.columns.end(),
                           [&](const CatalogColumn& c) { return c.name == k; });
    if (it == info.columns.end()) {
      return Status::BadConfig(fmt::format(
          "key column \"{}\" is not a column of the {} table {}; fix key = [...] for this table", k,
          side, name.ToString()));
    }
    size_t i = static_cast<size_t>(it - info.columns.begin());
    if (std::find(out.begin(), out.end(), i) != out.end()) {
      return Status::BadConfig(
          fmt::format("key column \"{}\" of {} is listed twice", k, name.ToString()));
    }
    out.push_back(i);
  }
  return out;
}

std::vector<Column> ToColumns(const std::vector<CatalogColumn>& cols) {
  std::vector<Column> out;
  out.reserve(cols.size());
  for (const auto& c : cols) out.push_back(static_cast<const Column&>(c));
  return out;
}

Result<std::vector<int>> OtherSessions(Connection& conn, const std::string& application_name) {
  DT_ASSIGN_OR_RETURN(
      auto r, conn.Query("SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = "
                         "pg_catalog.current_database() AND application_name = $1 AND pid <> "
                         "pg_catalog.pg_backend_pid() ORDER BY pid",
                         {application_name}));
  std::vector<int> out;
  for (int i = 0; i < r.rows(); ++i) out.push_back(static_cast<int>(r.GetInt64(i, 0)));
  return out;
}

}  // namespace datatunnel::pg
