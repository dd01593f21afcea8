#include "apply/consistency.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <functional>

namespace datatunnel::apply {

Status CheckConsistencyState(pg::Connection& target) {
  auto has = target.Query("SELECT to_regclass('datatunnel.consistency') IS NOT NULL");
  if (has.ok() && !has->GetBool(0, 0)) {
    return Status::Fatal(fmt::format(
        "the datatunnel state on the {} is from an older version (no datatunnel.consistency): "
        "run `datatunnel init` to upgrade it, then start again",
        target.description()));
  }
  return Status::OK();
}

Result<ConsistencyState> LoadConsistency(pg::Connection& target, const std::string& tunnel) {
  ConsistencyState s;
  DT_ASSIGN_OR_RETURN(auto has,
                      target.Query("SELECT to_regclass('datatunnel.consistency') IS NOT NULL"));
  if (!has.GetBool(0, 0)) return s;
  DT_ASSIGN_OR_RETURN(
      auto r,
      target.Query("SELECT stream, kafka_offset, epoch, tick, "
                   "to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
                   "extract(epoch FROM now() - applied_at)::float8 "
                   "FROM datatunnel.consistency WHERE tunnel = $1",
                   {tunnel}));
  if (r.rows() == 0) return s;
  s.found = true;
  s.stream = std::string(r.Get(0, 0));
  s.offset = r.GetInt64(0, 1);
  s.end = Position{r.GetInt64(0, 2), r.GetInt64(0, 3), Position::kEndOfTick, 0};
  s.applied_at = std::string(r.Get(0, 4));
  s.age_seconds = std::max(0.0, std::strtod(std::string(r.Get(0, 5)).c_str(), nullptr));
  return s;
}

std::string StoreConsistencySql() {
  // $1 tunnel, $2 stream, $3 offset, $4 epoch, $5 tick.
  return "INSERT INTO datatunnel.consistency AS c (tunnel, stream, kafka_offset, epoch, tick, "
         "applied_at) VALUES ($1, $2, $3, $4, $5, pg_catalog.now()) "
         "ON CONFLICT (tunnel) DO UPDATE SET "
         "kafka_offset = CASE WHEN c.stream = EXCLUDED.stream "
         "THEN GREATEST(c.kafka_offset, EXCLUDED.kafka_offset) ELSE EXCLUDED.kafka_offset END, "
         "stream = EXCLUDED.stream, "
         "epoch = CASE WHEN (c.epoch, c.tick) < (EXCLUDED.epoch, EXCLUDED.tick) "
         "THEN EXCLUDED.epoch ELSE c.epoch END, "
         "tick = CASE WHEN (c.epoch, c.tick) < (EXCLUDED.epoch, EXCLUDED.tick) "
         "THEN EXCLUDED.tick ELSE c.tick END, "
         "applied_at = pg_catalog.now()";
}

Result<bool> TryApplyLock(pg::Connection& target, const std::string& tunnel) {
  // "DTNL" as the producer's lock on the source, keyed by "apply:<tunnel>".
  DT_ASSIGN_OR_RETURN(auto r, target.Query("SELECT pg_try_advisory_lock(1146375756, "
                                           "hashtext('apply:' || $1))",
                                           {tunnel}));
  return r.GetBool(0, 0);
}

namespace {

struct ForeignKey {
  std::string name;  // quoted schema.name
  std::string conname;
  bool deferrable = false;
  uint32_t child = 0, parent = 0;
};

// Strongly connected components (Tarjan), as a component number per node.
std::vector<int> Components(size_t n, const std::vector<std::vector<uint32_t>>& out) {
  std::vector<int> index(n, -1), low(n, 0), comp(n, -1);
  std::vector<bool> on(n, false);
  std::vector<uint32_t> stack;
  int next = 0, comps = 0;
  std::function<void(uint32_t)> visit = [&](uint32_t v) {
    index[v] = low[v] = next++;
    stack.push_back(v);
    on[v] = true;
    for (uint32_t w : out[v]) {
      if (index[w] < 0) {
        visit(w);
        low[v] = std::min(low[v], low[w]);
      } else if (on[w]) {
        low[v] = std::min(low[v], index[w]);
      }
    }
    if (low[v] == index[v]) {
      for (;;) {
        uint32_t w = stack.back();
        stack.pop_back();
        on[w] = false;
        comp[w] = comps;
        if (w == v) break;
      }
      ++comps;
    }
  };
  for (uint32_t v = 0; v < n; ++v) {
    if (index[v] < 0) visit(v);
  }
  return comp;
}

}  // namespace

Result<TableOrder> LoadTableOrder(pg::Connection& target, const std::vector<TableSpec>& targets) {
  DT_ASSIGN_OR_RETURN(
      auto r, target.Query("SELECT n.nspname, c.conname, c.condeferrable, cn.nspname, cl.relname, "
                           "pn.nspname, pl.relname FROM pg_catalog.pg_constraint c "
                           "JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace "
                           "JOIN pg_catalog.pg_class cl ON cl.oid = c.conrelid "
                           "JOIN pg_catalog.pg_namespace cn ON cn.oid = cl.relnamespace "
                           "JOIN pg_catalog.pg_class pl ON pl.oid = c.confrelid "
                           "JOIN pg_catalog.pg_namespace pn ON pn.oid = pl.relnamespace "
                           "WHERE c.contype = 'f' ORDER BY 4, 5, 2"));
  auto find = [&](std::string_view schema, std::string_view name) -> int {
    for (size_t t = 0; t < targets.size(); ++t) {
      if (targets[t].target.schema == schema && targets[t].target.name == name) {
        return static_cast<int>(t);
      }
    }
    return -1;
  };
  const size_t n = targets.size();
  std::vector<ForeignKey> fks;
  std::vector<std::vector<uint32_t>> out(n);  // parent -> children
  for (int i = 0; i < r.rows(); ++i) {
    const int child = find(r.Get(i, 3), r.Get(i, 4));
    const int parent = find(r.Get(i, 5), r.Get(i, 6));
    if (child < 0 || parent < 0) continue;  // a table outside the tunnel
    ForeignKey fk;
    fk.conname = std::string(r.Get(i, 1));
    fk.name = QuoteIdent(r.Get(i, 0)) + "." + QuoteIdent(fk.conname);
    fk.deferrable = r.GetBool(i, 2);
    fk.child = static_cast<uint32_t>(child);
    fk.parent = static_cast<uint32_t>(parent);
    out[fk.parent].push_back(fk.child);
    fks.push_back(std::move(fk));
  }
  TableOrder order;
  order.linked.assign(n, false);
  if (fks.empty()) return order;
  const std::vector<int> comp = Components(n, out);
  for (const ForeignKey& fk : fks) {
    order.linked[fk.child] = order.linked[fk.parent] = true;
    if (comp[fk.child] != comp[fk.parent]) continue;
    // A self-reference or a cycle: no order of statements satisfies it row
    // by row, so it is checked at COMMIT.
    if (!fk.deferrable) {
      const std::string child = targets[fk.child].target.ToString();
      return Status::BadConfig(fmt::format(
          "foreign key {} of target table {} {} and is not DEFERRABLE, so "
          "apply_consistency = \"transaction\" cannot keep it satisfied statement by "
          "statement; make it deferrable on the target (ALTER TABLE {} ALTER CONSTRAINT {} "
          "DEFERRABLE) or set pipeline.apply_consistency = \"key\"",
          fk.conname, child,
          fk.child == fk.parent
              ? "references its own table"
              : fmt::format("is part of a cycle through {}", targets[fk.parent].target.ToString()),
          targets[fk.child].target.Quoted(), QuoteIdent(fk.conname)));
    }
    order.deferred.push_back(fk.name);
  }
  std::vector<uint32_t> linked;
  for (uint32_t t = 0; t < n; ++t) {
    if (order.linked[t]) linked.push_back(t);
  }
  // Tarjan emits a component only after every component reachable from it
  // (here: its referencing tables) is emitted, so a higher number means a
  // component that is referenced by the lower ones: parents first.
  std::stable_sort(linked.begin(), linked.end(),
                   [&](uint32_t a, uint32_t b) { return comp[a] > comp[b]; });
  order.parent_first = std::move(linked);
  return order;
}

}  // namespace datatunnel::apply
