#include "capture/snapshot_state.h"

#include <fmt/format.h>

#include <cstdlib>
#include <map>
#include <string_view>
#include <utility>

namespace datatunnel::capture {

std::string_view SnapshotStateName(SnapshotState s) {
  switch (s) {
    case SnapshotState::kNone:
      return "none";
    case SnapshotState::kRequested:
      return "requested";
    case SnapshotState::kRunning:
      return "running";
    case SnapshotState::kDone:
      return "done";
  }
  return "none";
}

namespace {

SnapshotState ParseState(std::string_view s) {
  if (s == "requested") return SnapshotState::kRequested;
  if (s == "running") return SnapshotState::kRunning;
  if (s == "done") return SnapshotState::kDone;
  return SnapshotState::kNone;
}

}  // namespace

Result<std::vector<bool>> SnapshotsWanted(pg::Connection& source,
                                          const std::vector<TableSpec>& specs) {
  // The tables that want one (usually none, found by the partial index
  // tables_snapshot_wanted), matched to specs here: a join of every spec's
  // name with the table cost milliseconds per second over hundreds of tables.
  DT_ASSIGN_OR_RETURN(auto r, source.Query("SELECT schema_name, table_name FROM datatunnel.tables "
                                           "WHERE snapshot_state IN ('requested', 'running')"));
  std::vector<bool> wanted(specs.size(), false);
  if (r.rows() == 0) return wanted;
  std::map<std::pair<std::string_view, std::string_view>, size_t> index;
  for (size_t t = 0; t < specs.size(); ++t) {
    index.emplace(
        std::pair<std::string_view, std::string_view>(specs[t].source.schema, specs[t].source.name),
        t);
  }
  for (int i = 0; i < r.rows(); ++i) {
    auto it = index.find({r.Get(i, 0), r.Get(i, 1)});
    if (it != index.end()) wanted[it->second] = true;
  }
  return wanted;
}

Result<SnapshotProgress> LoadSnapshotProgress(pg::Connection& source, const TableSpec& spec) {
  DT_ASSIGN_OR_RETURN(
      auto r,
      source.Query(
          "SELECT snapshot_state, snapshot_rows, snapshot_total, snapshot_chunks, snapshot_run, "
          "  COALESCE(extract(epoch FROM (COALESCE(snapshot_done_at, now()) - "
          "    snapshot_started_at)), 0)::float8, COALESCE(snapshot_tick, 0) "
          "FROM datatunnel.tables WHERE schema_name = $1 AND table_name = $2",
          {spec.source.schema, spec.source.name}));
  if (r.rows() != 1) {
    return Status::Fatal(fmt::format("table {} is not set up for capture: run `datatunnel init`",
                                     spec.source.ToString()));
  }
  SnapshotProgress p;
  p.state = ParseState(r.Get(0, 0));
  p.rows = r.GetInt64(0, 1);
  p.total = r.GetInt64(0, 2);
  p.chunks = r.GetInt64(0, 3);
  p.run = r.GetInt64(0, 4);
  p.seconds = std::strtod(std::string(r.Get(0, 5)).c_str(), nullptr);
  p.marker_tick = r.GetInt64(0, 6);
  DT_ASSIGN_OR_RETURN(auto cur,
                      source.Query("SELECT c FROM datatunnel.tables t, "
                                   "unnest(t.snapshot_cursor) WITH ORDINALITY AS u(c, n) "
                                   "WHERE schema_name = $1 AND table_name = $2 ORDER BY n",
                                   {spec.source.schema, spec.source.name}));
  for (int i = 0; i < cur.rows(); ++i) {
    p.cursor.push_back(cur.IsNull(i, 0) ? std::nullopt : std::optional<std::string>(cur.Get(i, 0)));
  }
  return p;
}

Status RequestSnapshot(pg::Connection& source, const TableSpec& spec, bool restart) {
  DT_ASSIGN_OR_RETURN(auto est,
                      source.Query("SELECT c.reltuples::bigint FROM pg_catalog.pg_class c "
                                   "WHERE c.oid = $1::regclass",
                                   {spec.source.Quoted()}));
  int64_t total = est.GetInt64(0, 0);
  if (total < 0) {
    // Never analyzed (after a bulk load or a restore; autovacuum never
    // analyzes a partitioned table's parent). Count a small table; sample
    // about kSamplePages pages of a larger one, so a request never reads a
    // whole large table first.
    constexpr int64_t kSamplePages = 1000;
    DT_ASSIGN_OR_RETURN(
        auto size, source.Query("SELECT (COALESCE((SELECT sum(pg_catalog.pg_relation_size(relid)) "
                                "  FROM pg_catalog.pg_partition_tree($1::regclass) WHERE isleaf), "
                                "  pg_catalog.pg_relation_size($1::regclass)) / "
                                "current_setting('block_size')::bigint)::bigint",
                                {spec.source.Quoted()}));
    const int64_t pages = size.GetInt64(0, 0);
    if (pages <= kSamplePages) {
      DT_ASSIGN_OR_RETURN(auto cnt, source.Query("SELECT count(*) FROM " + spec.source.Quoted()));
      total = cnt.GetInt64(0, 0);
    } else {
      const double percent = 100.0 * kSamplePages / static_cast<double>(pages);
      DT_ASSIGN_OR_RETURN(auto cnt, source.Query(fmt::format("SELECT count(*) FROM {} "
                                                             "TABLESAMPLE SYSTEM ({})",
                                                             spec.source.Quoted(), percent)));
      total = static_cast<int64_t>(static_cast<double>(cnt.GetInt64(0, 0)) * 100.0 / percent);
    }
  }
  std::string cond = restart ? "true" : "snapshot_state IN ('none', 'done')";
  DT_ASSIGN_OR_RETURN(
      auto r, source.Query(fmt::format("UPDATE datatunnel.tables SET snapshot_state = 'requested', "
                                       "  snapshot_cursor = NULL, snapshot_rows = 0, "
                                       "  snapshot_total = $3, snapshot_chunks = 0, "
                                       "  snapshot_run = snapshot_run + 1, "
                                       "  snapshot_started_at = now(), snapshot_done_at = NULL "
                                       "WHERE schema_name = $1 AND table_name = $2 AND {}",
                                       cond),
                           {spec.source.schema, spec.source.name, std::to_string(total)}));
  (void)r;
  return Status::OK();
}

Status RecordSnapshotChunk(pg::Connection& source, const TableSpec& spec, int64_t run,
                           const SnapshotCursor& next, int64_t rows, bool last,
                           int64_t marker_tick) {
  DT_ASSIGN_OR_RETURN(
      auto r, source.Query("UPDATE datatunnel.tables SET "
                           "  snapshot_state = CASE WHEN $5 THEN 'done' ELSE 'running' END, "
                           "  snapshot_cursor = $3::text[], snapshot_rows = snapshot_rows + $4, "
                           "  snapshot_chunks = snapshot_chunks + 1, "
                           "  snapshot_done_at = CASE WHEN $5 THEN now() END, "
                           "  snapshot_tick = CASE WHEN $5 THEN $7::bigint END "
                           "WHERE schema_name = $1 AND table_name = $2 AND snapshot_run = $6 "
                           "  AND snapshot_state IN ('requested', 'running')",
                           {spec.source.schema, spec.source.name, pg::TextArrayLiteral(next),
                            std::to_string(rows), last ? "true" : "false", std::to_string(run),
                            std::to_string(marker_tick)}));
  (void)r;
  return Status::OK();
}

}  // namespace datatunnel::capture
