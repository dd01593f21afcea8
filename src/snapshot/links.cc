#include "snapshot/links.h"

#include <algorithm>
#include <map>
#include <string>

namespace datatunnel::snapshot {

Result<Links> LoadLinks(pg::Connection& source, const std::vector<TableSpec>& specs) {
  // One row per column pair of each foreign key, in the key's column order.
  DT_ASSIGN_OR_RETURN(
      auto r, source.Query("SELECT c.oid::bigint, cn.nspname, cl.relname, pn.nspname, pl.relname, "
                           "  ca.attname, pa.attname "
                           "FROM pg_catalog.pg_constraint c "
                           "JOIN pg_catalog.pg_class cl ON cl.oid = c.conrelid "
                           "JOIN pg_catalog.pg_namespace cn ON cn.oid = cl.relnamespace "
                           "JOIN pg_catalog.pg_class pl ON pl.oid = c.confrelid "
                           "JOIN pg_catalog.pg_namespace pn ON pn.oid = pl.relnamespace "
                           "CROSS JOIN LATERAL unnest(c.conkey, c.confkey) "
                           "  WITH ORDINALITY AS k(child, parent, i) "
                           "JOIN pg_catalog.pg_attribute ca "
                           "  ON ca.attrelid = c.conrelid AND ca.attnum = k.child "
                           "JOIN pg_catalog.pg_attribute pa "
                           "  ON pa.attrelid = c.confrelid AND pa.attnum = k.parent "
                           "WHERE c.contype = 'f' ORDER BY 1, k.i"));
  auto find = [&](std::string_view schema, std::string_view name) -> int {
    for (size_t t = 0; t < specs.size(); ++t) {
      if (specs[t].source.schema == schema && specs[t].source.name == name) {
        return static_cast<int>(t);
      }
    }
    return -1;
  };
  auto column = [](const TableSpec& spec, std::string_view name) -> int {
    for (size_t i = 0; i < spec.columns.size(); ++i) {
      if (spec.columns[i].name == name) return static_cast<int>(i);
    }
    return -1;
  };
  const size_t n = specs.size();
  Links links;
  links.after.assign(n, {});
  links.referencing.assign(n, false);
  links.referrers.assign(n, {});
  links.self.assign(n, {});
  std::vector<std::vector<bool>> reach(n, std::vector<bool>(n, false));
  // A self-reference: per constraint, child column per parent (key) column.
  std::map<int64_t, std::map<std::string, int>> self_cols;
  std::map<int64_t, int> self_table;
  for (int i = 0; i < r.rows(); ++i) {
    const int child = find(r.Get(i, 1), r.Get(i, 2));
    const int parent = find(r.Get(i, 3), r.Get(i, 4));
    if (child < 0 || parent < 0) continue;  // a table outside the tunnel
    links.referencing[child] = true;
    reach[child][parent] = true;
    auto& referrers = links.referrers[parent];
    if (child != parent &&
        std::find(referrers.begin(), referrers.end(), child) == referrers.end()) {
      referrers.push_back(child);
    }
    if (child == parent) {
      const int64_t oid = r.GetInt64(i, 0);
      self_table[oid] = child;
      self_cols[oid][std::string(r.Get(i, 6))] = column(specs[child], r.Get(i, 5));
    }
  }
  // Transitive closure (a tunnel has few tables).
  for (size_t k = 0; k < n; ++k) {
    for (size_t i = 0; i < n; ++i) {
      if (!reach[i][k]) continue;
      for (size_t j = 0; j < n; ++j) {
        if (reach[k][j]) reach[i][j] = true;
      }
    }
  }
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      // Tables of one cycle reference each other: neither waits.
      if (i != j && reach[i][j] && !reach[j][i]) links.after[i].push_back(j);
    }
  }
  for (const auto& [oid, cols] : self_cols) {
    const int t = self_table[oid];
    const TableSpec& spec = specs[t];
    // Only a reference to the tunnel's key can be followed by key.
    if (cols.size() != spec.key.size()) continue;
    std::vector<size_t> fk;
    for (size_t k : spec.key) {
      auto it = cols.find(spec.columns[k].name);
      if (it == cols.end() || it->second < 0) break;
      fk.push_back(static_cast<size_t>(it->second));
    }
    if (fk.size() == spec.key.size()) links.self[t].push_back(std::move(fk));
  }
  return links;
}

}  // namespace datatunnel::snapshot
