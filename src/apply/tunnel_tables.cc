#include "apply/tunnel_tables.h"

#include <fmt/format.h>

#include <optional>

namespace datatunnel::apply {

namespace {

constexpr const char* kDdl =
    "CREATE TABLE IF NOT EXISTS datatunnel.tunnel_tables ("
    "  tunnel text NOT NULL,"
    "  schema_name text NOT NULL,"
    "  table_name text NOT NULL,"
    "  PRIMARY KEY (tunnel, schema_name, table_name))";

}  // namespace

Result<bool> RecordTunnelTables(pg::Connection& target, const std::string& tunnel,
                                const std::vector<QualifiedName>& sources) {
  std::vector<std::optional<std::string>> schemas, names;
  for (const auto& s : sources) {
    schemas.emplace_back(s.schema);
    names.emplace_back(s.name);
  }
  const std::string schema_list = pg::TextArrayLiteral(schemas);
  const std::string name_list = pg::TextArrayLiteral(names);
  std::vector<pg::QueryResult> results;
  const pg::Statement stmts[] = {
      {"BEGIN", {}},
      {kDdl, {}},
      {"WITH gone AS (DELETE FROM datatunnel.tunnel_tables t WHERE t.tunnel = $1 AND NOT EXISTS "
       "(SELECT 1 FROM unnest($2::text[], $3::text[]) AS u(s, n) WHERE u.s = t.schema_name AND "
       "u.n = t.table_name) RETURNING 1), "
       "added AS (INSERT INTO datatunnel.tunnel_tables (tunnel, schema_name, table_name) "
       "SELECT $1, u.s, u.n FROM unnest($2::text[], $3::text[]) AS u(s, n) "
       "ON CONFLICT DO NOTHING RETURNING 1) "
       "SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM added)",
       {tunnel, schema_list, name_list}},
      {"COMMIT", {}},
  };
  Status st = target.ExecPipeline(stmts, &results);
  if (!st.ok()) {
    target.RollbackQuietly();
    return st;
  }
  return results[2].GetInt64(0, 0) > 0;
}

Result<std::vector<QualifiedName>> LoadTunnelTables(pg::Connection& target,
                                                    const std::string& tunnel) {
  DT_ASSIGN_OR_RETURN(auto has, target.Query("SELECT pg_catalog.to_regclass("
                                             "'datatunnel.tunnel_tables') IS NOT NULL"));
  std::vector<QualifiedName> out;
  if (has.GetBool(0, 0)) {
    DT_ASSIGN_OR_RETURN(auto r, target.Query("SELECT schema_name, table_name FROM "
                                             "datatunnel.tunnel_tables WHERE tunnel = $1 "
                                             "ORDER BY 1, 2",
                                             {tunnel}));
    for (int i = 0; i < r.rows(); ++i) {
      out.push_back({std::string(r.Get(i, 0)), std::string(r.Get(i, 1))});
    }
  }
  if (out.empty()) {
    return Status::BadConfig(fmt::format(
        "the {} has no record of the tables of tunnel \"{}\", which a [[tables]] pattern needs "
        "when the source is not at hand: run `datatunnel init` (it records them)",
        target.description(), tunnel));
  }
  return out;
}

}  // namespace datatunnel::apply
