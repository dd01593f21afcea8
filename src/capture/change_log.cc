#include "capture/change_log.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <limits>
#include <optional>

#include "capture/install.h"
#include "core/clock.h"

namespace datatunnel::capture {

Result<bool> ChangeLog::TryLock() {
  DT_ASSIGN_OR_RETURN(auto r, conn_->Query(fmt::format("SELECT pg_catalog.pg_try_advisory_lock({}, "
                                                       "pg_catalog.hashtext($1))",
                                                       kLockClass),
                                           {tunnel_}));
  return r.GetBool(0, 0);
}

Result<int64_t> ChangeLog::LoadEpoch() {
  auto r = conn_->Query("SELECT epoch FROM datatunnel.meta");
  if (!r.ok()) {
    if (r.status().code() == StatusCode::kFatal) {
      return Status::Fatal(fmt::format(
          "the {} has no datatunnel state (datatunnel.meta): run `datatunnel init` first",
          conn_->description()));
    }
    return r.status();
  }
  if (r->rows() != 1) return Status::Fatal("datatunnel.meta is empty: run `datatunnel init`");
  return r->GetInt64(0, 0);
}

Result<std::vector<TableProgress>> ChangeLog::LoadProgress() {
  DT_ASSIGN_OR_RETURN(auto has,
                      conn_->Query("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE "
                                   "attrelid = 'datatunnel.tables'::regclass AND attname = "
                                   "'published_sub' AND NOT attisdropped)"));
  if (!has.GetBool(0, 0)) {
    return Status::Fatal(fmt::format(
        "the datatunnel state on the {} is from an older version (no "
        "datatunnel.tables.published_sub): run `datatunnel init` to upgrade it, then start again",
        conn_->description()));
  }
  std::vector<TableProgress> out;
  for (const auto& spec : *tables_) {
    DT_ASSIGN_OR_RETURN(auto r,
                        conn_->Query("SELECT published_tick, published_seq, published_count, "
                                     "published_sub FROM datatunnel.tables "
                                     "WHERE schema_name = $1 AND table_name = $2 AND tunnel = $3",
                                     {spec.source.schema, spec.source.name, tunnel_}));
    if (r.rows() != 1) {
      return Status::Fatal(fmt::format(
          "table {} is not set up for capture by tunnel \"{}\" on the {}: run `datatunnel "
          "init` with this configuration",
          spec.source.ToString(), tunnel_, conn_->description()));
    }
    out.push_back({r.GetInt64(0, 0), r.GetInt64(0, 1), static_cast<int32_t>(r.GetInt64(0, 3)),
                   r.GetInt64(0, 2)});
  }
  return out;
}

Result<std::vector<Tick>> ChangeLog::LoadTicks(int64_t from, int limit) {
  DT_ASSIGN_OR_RETURN(auto r, conn_->Query("SELECT tick, snapshot::text, COALESCE(change_seq, -1) "
                                           "FROM datatunnel.ticks WHERE tunnel = $3 AND tick >= $1 "
                                           "ORDER BY tick LIMIT $2",
                                           {std::to_string(from), std::to_string(limit), tunnel_}));
  std::vector<Tick> out;
  for (int i = 0; i < r.rows(); ++i) {
    out.push_back({r.GetInt64(i, 0), std::string(r.Get(i, 1)), r.GetInt64(i, 2)});
    Remember(out.back());
  }
  return out;
}

Result<std::vector<Position>> ChangeLog::LoadHeads(size_t t) {
  const TableSpec& spec = (*tables_)[t];
  DT_ASSIGN_OR_RETURN(auto has,
                      conn_->Query("SELECT pg_catalog.to_regclass('datatunnel.chain_heads') "
                                   "IS NOT NULL"));
  if (!has.GetBool(0, 0)) {
    return Status::Fatal(fmt::format(
        "the datatunnel state on the {} is from an older version (no datatunnel.chain_heads): "
        "run `datatunnel init` to upgrade it, then start again",
        conn_->description()));
  }
  DT_ASSIGN_OR_RETURN(auto r, conn_->Query("SELECT partition, epoch, tick, seq, sub "
                                           "FROM datatunnel.chain_heads WHERE tunnel = $2 "
                                           "AND topic = $1 AND partition >= 0 ORDER BY partition",
                                           {spec.topic, tunnel_}));
  std::vector<Position> heads;
  for (int i = 0; i < r.rows(); ++i) {
    const auto p = static_cast<size_t>(r.GetInt64(i, 0));
    if (heads.size() <= p) heads.resize(p + 1);
    heads[p] = Position{r.GetInt64(i, 1), r.GetInt64(i, 2), r.GetInt64(i, 3),
                        static_cast<int32_t>(r.GetInt64(i, 4))};
  }
  return heads;
}

std::string TickWritesQuery(const TableSpec& spec) {
  std::string cols, elems, names;
  for (const auto& c : spec.columns) {
    const std::string sep = cols.empty() ? "" : ", ";
    cols += sep + QuoteIdent(c.name);
    elems += fmt::format("{}(e.v::{}).{}", sep, spec.source.Quoted(), QuoteIdent(c.name));
    names += sep + QuoteLiteral(c.name);
  }
  // The batch's predicate (BatchQuery), its hi the tick's own snapshot.
  const std::string in_tick = fmt::format(
      "{0} >= pg_catalog.txid_snapshot_xmin($1::txid_snapshot) "
      "  AND {0} < pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot()) "
      "  AND pg_catalog.txid_visible_in_snapshot({0}, pg_catalog.txid_current_snapshot()) "
      "  AND NOT pg_catalog.txid_visible_in_snapshot({0}, $1::txid_snapshot) "
      "  AND {1} IN ('INSERT', 'UPDATE')",
      kTxidColumn, kActionColumn);
  // A bulk change row's elements are record literals of the table as it was
  // written: read as the table's row type when its columns are still those.
  return fmt::format(
      "SELECT {0} FROM {1} WHERE {2} AND {3} IS NULL "
      "UNION ALL SELECT {4} FROM {1}, pg_catalog.unnest({3}) AS e(v) "
      "WHERE {2} AND {3} IS NOT NULL AND {5} = ARRAY[{6}]::text[]",
      cols, spec.change_table.Quoted(), in_tick, kRowsColumn, elems, kColsColumn, names);
}

Result<Position> NewestRecordedPosition(pg::Connection& source, const std::string& tunnel) {
  DT_ASSIGN_OR_RETURN(auto r, source.Query("SELECT (SELECT epoch FROM datatunnel.meta), "
                                           "(SELECT COALESCE(max(tick), 0) FROM datatunnel.ticks "
                                           "WHERE tunnel = $1)",
                                           {tunnel}));
  if (r.IsNull(0, 0)) return Status::Fatal("datatunnel.meta is empty: run `datatunnel init`");
  return Position{r.GetInt64(0, 0), r.GetInt64(0, 1), Position::kEndOfTick,
                  std::numeric_limits<int32_t>::max()};
}

Result<int> ProducerBackend(pg::Connection& source, const std::string& tunnel) {
  // A two-key advisory lock shows as classid = key1, objid = key2 (as an
  // unsigned 32-bit number), objsubid = 2.
  DT_ASSIGN_OR_RETURN(
      auto r, source.Query(fmt::format("SELECT pid FROM pg_catalog.pg_locks WHERE locktype = "
                                       "'advisory' AND granted AND classid = {} AND objsubid = 2 "
                                       "AND objid = (pg_catalog.hashtext($1)::bigint & "
                                       "4294967295)::oid AND database = (SELECT oid FROM "
                                       "pg_catalog.pg_database WHERE datname = "
                                       "pg_catalog.current_database())",
                                       kLockClass),
                           {tunnel}));
  return r.rows() == 0 ? 0 : static_cast<int>(r.GetInt64(0, 0));
}

Result<SourceBacklog> LoadBacklog(pg::Connection& source, const QualifiedName& table,
                                  const std::string& topic) {
  DT_ASSIGN_OR_RETURN(auto q, source.Query("SELECT published_count, change_table, "
                                           "(SELECT epoch FROM datatunnel.meta), tunnel "
                                           "FROM datatunnel.tables WHERE schema_name = $1 AND "
                                           "table_name = $2",
                                           {table.schema, table.name}));
  if (q.rows() == 0) {
    return Status::BadConfig(
        fmt::format("table {} is not set up for capture: run `datatunnel init`", table.ToString()));
  }
  SourceBacklog b;
  b.published_count = q.GetInt64(0, 0);
  const QualifiedName cdc{table.schema, std::string(q.Get(0, 1))};
  b.epoch = q.IsNull(0, 2) ? 0 : q.GetInt64(0, 2);
  DT_ASSIGN_OR_RETURN(auto pend,
                      source.Query(fmt::format("SELECT count(*), COALESCE(extract(epoch FROM now() "
                                               "- min({})), 0)::float8 FROM {}",
                                               kCapturedAtColumn, cdc.Quoted())));
  b.pending = pend.GetInt64(0, 0);
  b.oldest_pending_age = std::max(0.0, std::strtod(std::string(pend.Get(0, 1)).c_str(), nullptr));
  DT_ASSIGN_OR_RETURN(
      auto h, source.Query("SELECT partition, epoch, tick, seq, sub, since_epoch, since_tick, "
                           "since_seq, since_sub, "
                           "GREATEST(extract(epoch FROM now() - since_at), 0)::float8 "
                           "FROM datatunnel.chain_heads WHERE tunnel = $2 AND topic = $1 "
                           "ORDER BY partition",
                           {topic, std::string(q.Get(0, 3))}));
  for (int i = 0; i < h.rows(); ++i) {
    SourceBacklog::Head head;
    head.partition = static_cast<int32_t>(h.GetInt64(i, 0));
    head.pos = Position{h.GetInt64(i, 1), h.GetInt64(i, 2), h.GetInt64(i, 3),
                        static_cast<int32_t>(h.GetInt64(i, 4))};
    head.since = Position{h.GetInt64(i, 5), h.GetInt64(i, 6), h.GetInt64(i, 7),
                          static_cast<int32_t>(h.GetInt64(i, 8))};
    head.since_age = std::strtod(std::string(h.Get(i, 9)).c_str(), nullptr);
    b.heads.push_back(head);
  }
  return b;
}

namespace {

// Read a batch by walking the change_id index. The visibility filters defeat
// the planner's estimates: on a change table autovacuum has not analyzed yet
// (a backlog that built up in the last minute) it picks a parallel scan of
// the whole table and a sort for every read of 5,000 rows (478 ms instead of
// 4 ms at 1,000,000 rows). Scoped to the reading transaction.
constexpr const char* kChangeIdOrder =
    "SELECT pg_catalog.set_config('enable_seqscan', 'off', true), "
    "pg_catalog.set_config('enable_bitmapscan', 'off', true)";

// kChangeIdOrder's settings for the prepared reads (ChangeLog::PrepareTables),
// which also run their generic plan, made once with those settings, instead
// of planning each read again.
constexpr const char* kPreparedReads =
    "SELECT pg_catalog.set_config('enable_seqscan', 'off', true), "
    "pg_catalog.set_config('enable_bitmapscan', 'off', true), "
    "pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true)";

// Old ticks are deleted at most this often: the statement reads every
// table's progress row, which with hundreds of tables costs more than the
// rest of a progress record (ticks kept a little longer cost nothing).
constexpr int64_t kTicksPruneUs = 1'000'000;

// The shared sequence's last id given out (0: none yet). Read in the tick's
// INSERT, before the transaction takes its xid (at the row's insertion).
constexpr const char* kChangeSeq =
    "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM datatunnel.change_id_seq)";

// The names of the statements prepared on the producer's connection.
constexpr const char* kProbeStatement = "datatunnel_probe";
constexpr const char* kTouchStatement = "datatunnel_touch";
constexpr const char* kCountsStatement = "datatunnel_counts";
constexpr const char* kProgressStatement = "datatunnel_progress";
constexpr const char* kCheckStatement = "datatunnel_check";
// Per table: "datatunnel_read_<t>", "datatunnel_prune_<t>".
std::string TableStatement(bool prune, size_t t) {
  return fmt::format("datatunnel_{}_{}", prune ? "prune" : "read", t);
}

// The xmin (or, with `xmax`, the xmax) of a txid_snapshot's text.
int64_t SnapshotBound(std::string_view snapshot, bool xmax) {
  size_t start = 0;
  if (xmax) {
    start = snapshot.find(':');
    if (start == std::string_view::npos) return 0;
    ++start;
  }
  return std::strtoll(std::string(snapshot.substr(start)).c_str(), nullptr, 10);
}

// The numbers of an int[] or bigint[] in its text form ("{1,-2,3}"); NULL
// elements are skipped.
std::vector<int64_t> ParseIntArray(std::string_view text) {
  std::vector<int64_t> out;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) {
      const size_t start = i++;
      while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
      out.push_back(std::strtoll(std::string(text.substr(start, i - start)).c_str(), nullptr, 10));
    } else {
      ++i;
    }
  }
  return out;
}

// The numbers in an int[]'s text ("{1,2,3}"), those below `n` only.
std::vector<size_t> ParseTables(std::string_view text, size_t n) {
  std::vector<size_t> out;
  for (int64_t t : ParseIntArray(text)) {
    if (t >= 0 && static_cast<size_t>(t) < n) out.push_back(static_cast<size_t>(t));
  }
  return out;
}

}  // namespace

void ChangeLog::Remember(const Tick& tick) {
  history_[tick.number] = {SnapshotBound(tick.snapshot, true), tick.change_seq};
  while (history_.size() > 512) history_.erase(history_.begin());
}

// install_capture()'s row version: every `init`, of any version, replaces
// the function (and then the capture functions), which gives it a new one.
constexpr const char* kInstallVersion =
    "(SELECT xmin::text FROM pg_catalog.pg_proc WHERE oid = "
    "pg_catalog.to_regprocedure('datatunnel.install_capture(regclass,text[])'))";

Status ChangeLog::PrepareTouch() {
  if (touch_ != 0) return Status::OK();
  touch_ = -1;
  if (touch_prepared_) {
    DT_RETURN_IF_ERROR(conn_->Exec(fmt::format("DEALLOCATE {}", kTouchStatement)));
    touch_prepared_ = false;
  }
  // The touch log is used when it is there, this role may read and delete
  // its rows and write its guard, and every table's capture triggers write
  // to it (a table set up by an earlier version, not `init` since, does
  // not: then every tick probes).
  std::string cdcs, sources;
  for (size_t t = 0; t < tables_->size(); ++t) {
    cdcs += (t == 0 ? "" : ", ") + QuoteLiteral((*tables_)[t].change_table.Quoted());
    sources += (t == 0 ? "" : ", ") + QuoteLiteral((*tables_)[t].source.Quoted());
  }
  auto r = conn_->Query(
      "SELECT pg_catalog.to_regclass('datatunnel.touches') IS NOT NULL AND "
      "pg_catalog.to_regclass('datatunnel.touch_guards') IS NOT NULL AND "
      "pg_catalog.has_table_privilege('datatunnel.touches', 'SELECT, DELETE') AND "
      "pg_catalog.has_table_privilege('datatunnel.touch_guards', 'SELECT, INSERT') AND "
      "NOT EXISTS (SELECT FROM pg_catalog.unnest(ARRAY[" +
      sources +
      "]::text[]) AS u(s) "
      "WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_trigger g WHERE g.tgrelid = "
      "pg_catalog.to_regclass(u.s) AND g.tgname LIKE 'datatunnel\\_capture%') OR EXISTS ("
      "SELECT FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_proc p ON p.oid = g.tgfoid "
      "WHERE g.tgrelid = pg_catalog.to_regclass(u.s) AND (g.tgname LIKE "
      "'datatunnel\\_capture%' OR g.tgname = 'datatunnel_truncate') AND p.prosrc NOT LIKE "
      "'%INSERT INTO datatunnel.touches %')), "
      "(SELECT pg_catalog.array_agg(COALESCE(pg_catalog.to_regclass(c)::oid, 0) ORDER BY o) "
      "FROM pg_catalog.unnest(ARRAY[" +
      cdcs + "]::text[]) WITH ORDINALITY AS u(c, o))::text, " + kInstallVersion);
  if (!r.ok()) return r.status();
  if (!r->GetBool(0, 0) || r->IsNull(0, 2)) return Status::OK();
  const std::string oids(r->Get(0, 1));
  install_version_ = std::string(r->Get(0, 2));
  // One statement: deletes the log's rows of this tunnel's change tables
  // that the tick's snapshot sees (its transaction's first statement took
  // it), returning their tables' numbers; whether the guard is there; and
  // install_capture()'s version: an `init` since this check (an older
  // version's may have rewritten the capture functions to write no touches)
  // makes the tick probe, and the next one check again.
  DT_RETURN_IF_ERROR(conn_->Exec(fmt::format(
      "PREPARE {} (text) AS WITH d AS (DELETE FROM datatunnel.touches WHERE rel = ANY ({}::oid[]) "
      "RETURNING rel) SELECT (SELECT pg_catalog.array_agg(DISTINCT u.o - 1) FROM d JOIN "
      "pg_catalog.unnest({}::oid[]) WITH ORDINALITY AS u(r, o) ON u.r = d.rel)::text, EXISTS "
      "(SELECT FROM datatunnel.touch_guards WHERE tunnel = $1), {}",
      kTouchStatement, QuoteLiteral(oids), QuoteLiteral(oids), kInstallVersion)));
  touch_prepared_ = true;
  touch_ = 1;
  return Status::OK();
}

int64_t ChangeLog::ProbeBound(const Tick& lo) const {
  const int64_t xmin = SnapshotBound(lo.snapshot, false);
  for (auto it = history_.rbegin(); it != history_.rend(); ++it) {
    if (it->first > lo.number || it->second.first > xmin) continue;
    // Tick m + 1 = it->first qualifies: its predecessor's change_seq bounds.
    auto m = history_.find(it->first - 1);
    if (m == history_.end()) return 0;
    if (m->second.second >= 0) return m->second.second;
  }
  return 0;
}

Status ChangeLog::PrepareProbe(const TickCheck& check) {
  // Over the probe's tables `p` when the check can be narrowed to them.
  const std::string check_sql = check.of ? check.of("p") : check.all;
  if (probe_prepared_ && check_sql == probe_check_) return Status::OK();
  if (probe_prepared_) {
    DT_RETURN_IF_ERROR(conn_->Exec(fmt::format("DEALLOCATE {}", kProbeStatement)));
    probe_prepared_ = false;
  }
  // One scalar subquery per table, each an index range scan from the bound
  // that stops at its first row in the batch: the table's number, or NULL.
  // $1: the bound (ProbeBound), $2: lo, $3: hi (NULL: the snapshot of the
  // transaction it runs in, the tick's), $4: evaluate the check (an
  // uncorrelated subquery, run only when its CASE branch is taken).
  std::string sql = fmt::format(
      "PREPARE {} (bigint, txid_snapshot, txid_snapshot, boolean) AS SELECT p::text, "
      "CASE WHEN $4 AND pg_catalog.cardinality(p) > 0 THEN ({}) END FROM (SELECT "
      "pg_catalog.array_remove(ARRAY[",
      kProbeStatement, check_sql.empty() ? "NULL::text" : check_sql);
  for (size_t t = 0; t < tables_->size(); ++t) {
    sql += fmt::format(
        "{0}(SELECT {1} FROM {2} WHERE {3} > $1 AND {4} >= pg_catalog.txid_snapshot_xmin($2) "
        "AND pg_catalog.txid_visible_in_snapshot({4}, COALESCE($3, "
        "pg_catalog.txid_current_snapshot())) AND NOT pg_catalog.txid_visible_in_snapshot({4}, "
        "$2) LIMIT 1)",
        t == 0 ? "" : ", ", t, (*tables_)[t].change_table.Quoted(), kChangeIdColumn, kTxidColumn);
  }
  sql += "]::int[], NULL) AS p OFFSET 0) s";
  DT_RETURN_IF_ERROR(conn_->Exec(sql));
  probe_prepared_ = true;
  probe_check_ = check_sql;
  return Status::OK();
}

std::string ChangeLog::ProbeCall(const Tick& lo, const Tick* hi, bool check) {
  // Values of our own (numbers and snapshot text, "digits:digits:digits,..."):
  // EXECUTE takes no bound parameters.
  return fmt::format("EXECUTE {}({}, {}, {}, {})", kProbeStatement, ProbeBound(lo),
                     QuoteLiteral(lo.snapshot), hi ? QuoteLiteral(hi->snapshot) : "NULL",
                     check ? "true" : "false");
}

void ChangeLog::Recorded(const Tick& tick) {
  Remember(tick);
  newest_seq_ = std::max(newest_seq_, tick.change_seq);
  own_xids_.clear();
}

Status ChangeLog::PrepareCheck(const TickCheck& check) {
  const std::string sql = check.of("$1");
  if (sql == check_prepared_) return Status::OK();
  if (!check_prepared_.empty()) {
    DT_RETURN_IF_ERROR(conn_->Exec(fmt::format("DEALLOCATE {}", kCheckStatement)));
    check_prepared_.clear();
  }
  DT_RETURN_IF_ERROR(conn_->Exec(fmt::format("PREPARE {} (int[]) AS {}", kCheckStatement, sql)));
  check_prepared_ = sql;
  return Status::OK();
}

Status ChangeLog::ReadProbed(std::string_view probed, const Tick& lo, const Tick& hi, int64_t epoch,
                             std::span<TickRead> reads) {
  const std::vector<size_t> tables = ParseTables(probed, tables_->size());
  for (auto& r : reads) r.empty = true;
  if (tables.empty()) return Status::OK();
  DT_RETURN_IF_ERROR(PrepareTables(tables, false));
  std::vector<pg::Statement> stmts;
  stmts.push_back({"BEGIN", {}});
  stmts.push_back({kPreparedReads, {}});
  const std::vector<size_t> which = AddReads(tables, lo, hi, reads, &stmts);
  stmts.push_back({"COMMIT", {}});
  std::vector<pg::QueryResult> results;
  DT_RETURN_IF_ERROR(RunTransaction(stmts, &results));
  return ParseReads(which, results, 2, hi.number, epoch, reads);
}

std::vector<size_t> ChangeLog::AddReads(std::span<const size_t> tables, const Tick& lo,
                                        const Tick& hi, std::span<TickRead> reads,
                                        std::vector<pg::Statement>* stmts) const {
  std::vector<size_t> which;
  const int64_t after = ProbeBound(lo);  // below every change of the batch
  for (size_t t : tables) {
    for (size_t i = 0; i < reads.size(); ++i) {
      if (reads[i].table != t) continue;
      reads[i].empty = false;
      which.push_back(i);
      stmts->push_back({ReadCall(t, after, lo, hi, reads[i].limit), {}});
    }
  }
  return which;
}

Status ChangeLog::ParseReads(std::span<const size_t> which,
                             std::span<const pg::QueryResult> results, size_t at, int64_t tick,
                             int64_t epoch, std::span<TickRead> reads) {
  for (size_t k = 0; k < which.size(); ++k) {
    TickRead& r = reads[which[k]];
    r.rows = results[at + k].rows();
    DT_ASSIGN_OR_RETURN(r.last,
                        ParseBatch(r.table, results[at + k], tick, 0, epoch, &r.changes, &r.bulk));
  }
  return Status::OK();
}

Status ChangeLog::ReadFirst(const Tick& lo, const Tick& hi, int64_t epoch,
                            std::vector<TickRead>* reads) {
  if (!Probing()) reads->clear();
  if (reads->empty()) return Status::OK();
  PrepareQueries();
  if (!probe_prepared_) DT_RETURN_IF_ERROR(PrepareProbe(TickCheck{}));
  const pg::Statement stmts[] = {
      {"BEGIN", {}},
      {kChangeIdOrder, {}},
      {"SET LOCAL plan_cache_mode = force_generic_plan", {}},
      {ProbeCall(lo, &hi, false), {}},
      {"COMMIT", {}},
  };
  std::vector<pg::QueryResult> results;
  DT_RETURN_IF_ERROR(RunTransaction(stmts, &results));
  return ReadProbed(results[3].Get(0, 0), lo, hi, epoch, *reads);
}

Status ChangeLog::RunTransaction(std::span<const pg::Statement> stmts,
                                 std::vector<pg::QueryResult>* results) {
  Status st = conn_->ExecPipeline(stmts, results);
  if (!st.ok()) conn_->RollbackQuietly();
  return st;
}

Status ChangeLog::TickTaken(int64_t number) const {
  return Status::Fatal(fmt::format(
      "tick {} already exists on the {}: another producer is writing to the same source "
      "(the producer lock was lost); stopping so only one publishes",
      number, conn_->description()));
}

Result<Tick> ChangeLog::BeginTick(int64_t number) {
  DT_RETURN_IF_ERROR(conn_->Exec("BEGIN ISOLATION LEVEL REPEATABLE READ"));
  // The first statement fixes the transaction's snapshot; record exactly it.
  auto r = conn_->Query(
      std::string("INSERT INTO datatunnel.ticks (tunnel, tick, snapshot, change_seq) "
                  "VALUES ($2, $1, pg_catalog.txid_current_snapshot(), ") +
          kChangeSeq +
          ") ON CONFLICT (tunnel, tick) DO NOTHING RETURNING snapshot::text, change_seq, "
          "pg_catalog.txid_current()",
      {std::to_string(number), tunnel_});
  if (!r.ok()) {
    conn_->RollbackQuietly();
    return r.status();
  }
  if (r->rows() != 1) {
    conn_->RollbackQuietly();
    return TickTaken(number);
  }
  Tick tick{number, std::string(r->Get(0, 0)), r->GetInt64(0, 1), r->GetInt64(0, 2)};
  Recorded(tick);
  return tick;
}

Status ChangeLog::CommitTick() { return conn_->Commit(); }

Result<Tick> ChangeLog::RecordTick(const Tick& lo, const TickCheck& check_sql, std::string* check,
                                   int64_t epoch, std::span<TickRead> reads,
                                   std::vector<size_t>* checked) {
  PrepareQueries();
  check->clear();
  std::vector<size_t> unused;
  if (!checked) checked = &unused;
  checked->clear();
  const int64_t number = lo.number + 1;
  pg::Arena arena;
  std::vector<pg::Statement> stmts;
  stmts.push_back({"BEGIN ISOLATION LEVEL REPEATABLE READ", {}});
  const bool probing = Probing() && !reads.empty();
  if (probing) {
    DT_RETURN_IF_ERROR(PrepareProbe(check_sql));
    DT_RETURN_IF_ERROR(PrepareTouch());
  }
  // Below every change_id of the batch: where its reads start, and with
  // many tables the probe's bound.
  const int64_t bound = ProbeBound(lo);
  const bool quiet = probing && newest_seq_ >= 0 && newest_seq_ <= bound;
  const bool touching = probing && touch_ > 0 && !quiet;
  const size_t ins = stmts.size();
  // Probing, the probe evaluates the check, and only for a batch with changes.
  stmts.push_back(
      {std::string("INSERT INTO datatunnel.ticks (tunnel, tick, snapshot, change_seq) "
                   "VALUES ($2, $1, pg_catalog.txid_current_snapshot(), ") +
           kChangeSeq +
           ") ON CONFLICT (tunnel, tick) DO NOTHING RETURNING snapshot::text, change_seq, (" +
           (probing ? std::string("NULL::text") : check_sql.all) + "), pg_catalog.txid_current()",
       {arena.Keep(std::to_string(number)), tunnel_}});
  // Then the touch log's rows the tick's snapshot sees (the INSERT, the
  // transaction's first statement, took it), taken. Not before the INSERT:
  // the tick must read the sequence before its transaction takes an xid (a
  // deleted row takes one), which every bound on change_ids (ProbeBound)
  // relies on: a writer whose xid follows the tick's draws after its read.
  // Not by a tick that looks idle (the sequence, as last seen, had not
  // passed the probe's bound): idle ticks cost the same whatever the number
  // of tables, and the first batch after idle probes instead (the rows it
  // leaves are taken by the next).
  const size_t take = stmts.size();
  if (touching) {
    stmts.push_back({fmt::format("EXECUTE {}({})", kTouchStatement, QuoteLiteral(tunnel_)), {}});
  }
  // Idle (the sequence, as last seen, had not passed the probe's bound), or
  // taking the touch log: the INSERT alone first; the probe (or the reads of
  // the touched tables) follows only if the tick's change_seq passed the
  // bound.
  const bool idle = touching || quiet;
  std::vector<pg::Statement> probe;
  if (!reads.empty()) probe.push_back({kChangeIdOrder, {}});
  if (probing) {
    // The probe's generic plan is made once, with the settings above.
    probe.push_back({"SET LOCAL plan_cache_mode = force_generic_plan", {}});
    probe.push_back({ProbeCall(lo, nullptr, true), {}});
  } else {
    for (size_t i = 0; i < reads.size(); ++i) {
      probe.push_back({tick_queries_[reads[i].table],
                       {arena.Keep(std::to_string(bound)), lo.snapshot,
                        arena.Keep(std::to_string(reads[i].limit))}});
    }
  }
  probe.push_back({"COMMIT", {}});
  if (!idle) stmts.insert(stmts.end(), probe.begin(), probe.end());
  std::vector<pg::QueryResult> results;
  DT_RETURN_IF_ERROR(RunTransaction(stmts, &results));
  if (results.size() != stmts.size() || results[ins].rows() != 1) {
    if (idle) conn_->RollbackQuietly();
    return TickTaken(number);
  }
  Tick tick{number, std::string(results[ins].Get(0, 0)), results[ins].GetInt64(0, 1),
            results[ins].GetInt64(0, 3)};
  if (!probing) *check = std::string(results[ins].Get(0, 2));
  // With the touch log: whether its guard is there (else probe, and write it).
  const bool guarded = touching && results[take].GetBool(0, 1) && !results[take].IsNull(0, 2) &&
                       results[take].Get(0, 2) == install_version_;
  if (touching && !guarded && results[take].Get(0, 2) != install_version_) touch_ = 0;
  if (idle) {
    if (tick.change_seq <= bound) {
      // Every id of the batch would lie in (bound, change_seq]: none does.
      DT_RETURN_IF_ERROR(conn_->Commit());
      Recorded(tick);
      for (auto& r : reads) r.empty = true;
      return tick;
    }
    if (guarded) {
      // The log has been complete since a tick before lo: it names every
      // table the batch has changes in (and maybe a few more, left by a
      // batch that probed).
      Status st = ReadTouched(ParseTables(results[take].Get(0, 0), tables_->size()), lo, tick,
                              check_sql, check, checked, epoch, reads);
      if (!st.ok()) {
        conn_->RollbackQuietly();
        return st;
      }
      Recorded(tick);
      return tick;
    }
    if (touching) {
      // No guard: the log was emptied (a crash, a promoted standby) or never
      // complete for this tunnel. This batch probes every change table;
      // transactions committing after this tick's snapshot wrote their rows
      // to the log as it is now (one in flight across a crash did not
      // commit), so it is complete from here on, unless emptied again,
      // which takes the guard with it.
      probe.insert(probe.end() - 1, {"INSERT INTO datatunnel.touch_guards (tunnel) VALUES ($1) "
                                     "ON CONFLICT (tunnel) DO NOTHING",
                                     {tunnel_}});
    }
    results.clear();
    DT_RETURN_IF_ERROR(RunTransaction(probe, &results));
    if (results.size() != probe.size()) return TickTaken(number);
  }
  // Where the probe's pipeline starts in `results`: after BEGIN and INSERT,
  // or alone. The read settings, then the probe after its SET LOCAL, or the
  // reads.
  const size_t at = idle ? 0 : 2;
  Recorded(tick);
  if (probing) {
    const pg::QueryResult& p = results[at + 2];
    if (!p.IsNull(0, 1)) {
      *check = std::string(p.Get(0, 1));
      if (check_sql.of) *checked = ParseTables(p.Get(0, 0), tables_->size());
    }
    DT_RETURN_IF_ERROR(ReadProbed(p.Get(0, 0), lo, tick, epoch, reads));
    return tick;
  }
  for (size_t i = 0; i < reads.size(); ++i) {
    reads[i].rows = results[at + 1 + i].rows();
    DT_ASSIGN_OR_RETURN(reads[i].last, ParseBatch(reads[i].table, results[at + 1 + i], number, 0,
                                                  epoch, &reads[i].changes, &reads[i].bulk));
  }
  return tick;
}

Status ChangeLog::ReadTouched(std::vector<size_t> tables, const Tick& lo, const Tick& hi,
                              const TickCheck& check_sql, std::string* check,
                              std::vector<size_t>* checked, int64_t epoch,
                              std::span<TickRead> reads) {
  std::sort(tables.begin(), tables.end());
  for (auto& r : reads) r.empty = true;
  std::vector<pg::Statement> stmts;
  std::vector<size_t> which;  // index into reads, per read statement
  if (!tables.empty()) {
    DT_RETURN_IF_ERROR(PrepareTables(tables, false));
    stmts.push_back({kPreparedReads, {}});
    if (check_sql.of) {
      // Only the tables read: their columns are the ones that must match.
      DT_RETURN_IF_ERROR(PrepareCheck(check_sql));
      std::string list;
      for (size_t t : tables) list += fmt::format("{}{}", list.empty() ? "" : ",", t);
      stmts.push_back({fmt::format("EXECUTE {}('{{{}}}')", kCheckStatement, list), {}});
      *checked = tables;
    } else if (!check_sql.all.empty()) {
      stmts.push_back({check_sql.all, {}});
    }
    which = AddReads(tables, lo, hi, reads, &stmts);
  }
  stmts.push_back({"COMMIT", {}});
  std::vector<pg::QueryResult> results;
  DT_RETURN_IF_ERROR(conn_->ExecPipeline(stmts, &results));
  if (tables.empty()) return Status::OK();
  size_t at = 1;
  if (check_sql.of || !check_sql.all.empty()) *check = std::string(results[at++].Get(0, 0));
  return ParseReads(which, results, at, hi.number, epoch, reads);
}

Result<bool> ChangeLog::ChangedSince(const Tick& last) {
  // Transactions that began after `last` and committed: xids from its xmax
  // up to the current xmax (at most 10,000 of them: more, and a tick is due
  // anyway), other than ours (`last`'s and the progress records since).
  std::string own = "{" + std::to_string(last.xid);
  for (int64_t x : own_xids_) own += "," + std::to_string(x);
  own += "}";
  DT_ASSIGN_OR_RETURN(
      auto r,
      conn_->Query(
          std::string(
              "SELECT EXISTS (SELECT 1 FROM pg_catalog.txid_snapshot_xip($1::txid_snapshot) "
              "x WHERE pg_catalog.txid_visible_in_snapshot(x, "
              "pg_catalog.txid_current_snapshot())), "
              "EXISTS (SELECT 1 FROM pg_catalog.generate_series("
              "pg_catalog.txid_snapshot_xmax($1::txid_snapshot), LEAST("
              "pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot()) - 1, "
              "pg_catalog.txid_snapshot_xmax($1::txid_snapshot) + 10000)) x "
              "WHERE x <> ALL ($2::bigint[]) AND pg_catalog.txid_visible_in_snapshot(x, "
              "pg_catalog.txid_current_snapshot())), ") +
              kChangeSeq,
          {last.snapshot, own}));
  const int64_t newest = r.GetInt64(0, 2);
  const int64_t since = last.change_seq >= 0 ? last.change_seq : newest_seq_;
  const bool changed = r.GetBool(0, 0) || (newest != since && r.GetBool(0, 1));
  newest_seq_ = newest;
  return changed;
}

std::string ChangeLog::BatchQuery(const TableSpec& spec, bool in_tick) const {
  std::string cols;
  for (size_t k = 0; k < spec.key.size(); ++k) cols += ", " + OldKeyColumn(k);
  for (const auto& c : spec.columns) cols += ", " + QuoteIdent(c.name);
  // Inside the tick's own REPEATABLE READ transaction, its snapshot is hi.
  const std::string hi = in_tick ? "pg_catalog.txid_current_snapshot()" : "$3::txid_snapshot";
  // The xmin/xmax bounds are a cheap pre-filter: below lo's xmin everything
  // is visible in lo; at or above hi's xmax nothing is visible in hi.
  return fmt::format(
      "SELECT {4}, {5}, {6}, "
      "(extract(epoch FROM {7}) * 1000000)::bigint, {8} IS NOT NULL{0} "
      "FROM {1} "
      "WHERE {4} > $1 "
      "  AND {5} >= pg_catalog.txid_snapshot_xmin($2::txid_snapshot) "
      "  AND {5} < pg_catalog.txid_snapshot_xmax({2}) "
      "  AND pg_catalog.txid_visible_in_snapshot({5}, {2}) "
      "  AND NOT pg_catalog.txid_visible_in_snapshot({5}, $2::txid_snapshot) "
      "ORDER BY {4} LIMIT ${3}",
      cols, spec.change_table.Quoted(), hi, in_tick ? 3 : 4, kChangeIdColumn, kTxidColumn,
      kActionColumn, kCapturedAtColumn, kRowsColumn);
}

void ChangeLog::PrepareQueries() {
  if (batch_queries_.size() == tables_->size()) return;
  batch_queries_.clear();
  tick_queries_.clear();
  for (const auto& spec : *tables_) {
    batch_queries_.push_back(BatchQuery(spec, false));
    tick_queries_.push_back(BatchQuery(spec, true));
  }
}

Status ChangeLog::PrepareTables(std::span<const size_t> tables, bool prune) {
  std::vector<bool>& done = prune ? prune_prepared_ : read_prepared_;
  done.resize(tables_->size(), false);
  std::vector<pg::Statement> stmts;
  std::vector<size_t> which;
  for (size_t t : tables) {
    if (done[t] || std::find(which.begin(), which.end(), t) != which.end()) continue;
    const TableSpec& spec = (*tables_)[t];
    which.push_back(t);
    if (prune) {
      stmts.push_back(
          {fmt::format("PREPARE {} (bigint, txid_snapshot) AS DELETE FROM {} WHERE {} <= $1 AND "
                       "pg_catalog.txid_visible_in_snapshot({}, $2)",
                       TableStatement(true, t), spec.change_table.Quoted(), kChangeIdColumn,
                       kTxidColumn),
           {}});
    } else {
      stmts.push_back(
          {fmt::format("PREPARE {} (bigint, txid_snapshot, txid_snapshot, integer) AS {}",
                       TableStatement(false, t), batch_queries_[t]),
           {}});
    }
  }
  if (stmts.empty()) return Status::OK();
  DT_RETURN_IF_ERROR(conn_->ExecPipeline(stmts));
  for (size_t t : which) done[t] = true;
  return Status::OK();
}

std::string ChangeLog::ReadCall(size_t t, int64_t after, const Tick& lo, const Tick& hi,
                                int limit) const {
  // Values of our own (numbers and snapshot text): EXECUTE takes no bound
  // parameters.
  return fmt::format("EXECUTE {}({}, {}, {}, {})", TableStatement(false, t), after,
                     QuoteLiteral(lo.snapshot), QuoteLiteral(hi.snapshot), limit);
}

Result<int64_t> ChangeLog::ReadBatch(size_t t, const Tick& lo, const Tick& hi, int64_t after,
                                     int limit, int64_t epoch, std::vector<Change>* out,
                                     BulkRow* bulk, int* rows) {
  PrepareQueries();
  DT_RETURN_IF_ERROR(PrepareTables({&t, 1}, false));
  const pg::Statement stmts[] = {
      {"BEGIN", {}},
      {kPreparedReads, {}},
      {ReadCall(t, after, lo, hi, limit), {}},
      {"COMMIT", {}},
  };
  std::vector<pg::QueryResult> results;
  DT_RETURN_IF_ERROR(RunTransaction(stmts, &results));
  if (rows) *rows = results[2].rows();
  return ParseBatch(t, results[2], hi.number, after, epoch, out, bulk);
}

Result<int64_t> ChangeLog::ParseBatch(size_t t, const pg::QueryResult& r, int64_t tick,
                                      int64_t after, int64_t epoch, std::vector<Change>* out,
                                      BulkRow* bulk) {
  const TableSpec& spec = (*tables_)[t];
  const int nkey = static_cast<int>(spec.key.size());
  const int old_col = 5;
  const int first_col = old_col + nkey;
  const size_t ncols = spec.columns.size();
  int64_t last = after;
  *bulk = BulkRow{};
  for (int i = 0; i < r.rows(); ++i) {
    Change c;
    c.table = static_cast<uint32_t>(t);
    c.pos = Position{epoch, tick, r.GetInt64(i, 0), 0};
    c.txid = r.GetInt64(i, 1);
    c.captured_us = r.GetInt64(i, 3);
    std::string_view action = r.Get(i, 2);
    if (r.GetBool(i, 4)) {
      // The bulk form: the caller reads its elements (ReadBulk), then the
      // rows after it.
      bulk->change_id = c.pos.seq;
      bulk->txid = c.txid;
      bulk->captured_us = c.captured_us;
      if (action == "INSERT") {
        bulk->op = Op::kInsert;
      } else if (action == "UPDATE") {
        bulk->op = Op::kUpdate;
      } else if (action == "DELETE") {
        bulk->op = Op::kDelete;
      } else {
        return Status::Fatal(fmt::format("change {} in {} has an unknown action \"{}\"", c.pos.seq,
                                         spec.change_table.ToString(), action));
      }
      break;
    }
    last = c.pos.seq;
    if (action == "TRUNCATE") {
      c.op = Op::kTruncate;
      out->push_back(std::move(c));
      continue;
    }
    // An UPDATE that changed the key becomes a delete of the old key and an
    // insert of the new row, each keyed (and partitioned) by its own key, so
    // per-key order holds for both keys.
    if (action == "UPDATE" && nkey > 0 && !r.IsNull(i, old_col)) {
      Change del = c;
      del.op = Op::kDelete;
      del.key_only = true;
      del.row.Reset(ncols);
      for (int k = 0; k < nkey; ++k) {
        if (r.IsNull(i, old_col + k)) continue;
        del.row.Set(spec.key[k], r.Get(i, old_col + k));
      }
      out->push_back(std::move(del));
      c.op = Op::kInsert;
      c.pos.sub = 1;
    } else if (action == "INSERT") {
      c.op = Op::kInsert;
    } else if (action == "UPDATE") {
      c.op = Op::kUpdate;
    } else if (action == "DELETE") {
      c.op = Op::kDelete;
      if (nkey > 0) {
        // A delete of a table with a key carries only the key, in every
        // form (docs/architecture.md, The message).
        c.key_only = true;
        c.row.ResetAbsent(ncols);
        for (int k = 0; k < nkey; ++k) {
          const size_t col = spec.key[k];
          if (r.IsNull(i, first_col + static_cast<int>(col))) {
            c.row.SetNull(col);
          } else {
            c.row.Set(col, r.Get(i, first_col + static_cast<int>(col)));
          }
        }
        out->push_back(std::move(c));
        continue;
      }
    } else {
      return Status::Fatal(fmt::format("change {} in {} has an unknown action \"{}\"", c.pos.seq,
                                       spec.change_table.ToString(), action));
    }
    r.ReadRow(i, first_col, ncols, &c.row);
    out->push_back(std::move(c));
  }
  return last;
}

namespace {

// One field of a record literal (SplitRecord): NULL, or `len` bytes at
// `off` of the literal itself (`unescaped` false) or of the scratch buffer
// its unescaped text went to.
struct RecordField {
  bool null = true;
  bool unescaped = false;
  uint32_t off = 0;
  uint32_t len = 0;
};

// Splits a record literal as record_out writes it, "(f1,f2,...)", into its
// fields: an empty field is NULL, a quoted one has "" and \x escapes. A
// field without quotes (most of them) stays a slice of `text`; only quoted
// ones are copied, unescaped, into `scratch`. Nothing is allocated per field
// once `fields` and `scratch` have grown: a bulk statement's elements are
// read by the million. Returns false when `text` is not one.
bool SplitRecord(std::string_view text, std::vector<RecordField>* fields, std::string* scratch) {
  fields->clear();
  scratch->clear();
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') return false;
  size_t i = 1;
  const size_t end = text.size() - 1;
  for (;;) {
    RecordField f;
    if (i != end && text[i] != ',') {
      f.null = false;
      // record_out quotes any value holding a quote, a backslash, a comma,
      // a parenthesis or white space: the others are their own text.
      const size_t comma = text.find(',', i);
      const size_t stop = comma == std::string_view::npos || comma > end ? end : comma;
      const std::string_view plain = text.substr(i, stop - i);
      if (plain.find_first_of("\"\\") == std::string_view::npos) {
        f.off = static_cast<uint32_t>(i);
        f.len = static_cast<uint32_t>(plain.size());
        i = stop;
      } else {
        f.unescaped = true;
        f.off = static_cast<uint32_t>(scratch->size());
        bool quoted = false;
        while (i < end && (quoted || text[i] != ',')) {
          const char ch = text[i++];
          if (ch == '\\' && i < end) {
            scratch->push_back(text[i++]);
          } else if (ch == '"') {
            if (quoted && i < end && text[i] == '"') {
              scratch->push_back('"');
              ++i;
            } else {
              quoted = !quoted;
            }
          } else {
            scratch->push_back(ch);
          }
        }
        if (quoted) return false;
        f.len = static_cast<uint32_t>(scratch->size() - f.off);
      }
    }
    fields->push_back(f);
    if (i == end) return true;
    ++i;  // the comma
  }
}

}  // namespace

Result<bool> ChangeLog::ReadBulk(size_t t, int64_t tick, int64_t epoch, int limit, BulkRow* bulk,
                                 std::vector<Change>* out) {
  const TableSpec& spec = (*tables_)[t];
  const std::string id = std::to_string(bulk->change_id);
  // One more element than asked for: whether the row goes on.
  const std::string from = std::to_string(int64_t{bulk->next} + 1);
  const std::string to = std::to_string(int64_t{bulk->next} + limit + 1);
  const bool names = bulk->columns.empty();
  if (names) {
    // Whether the change table has the typed key arrays of a bulk DELETE
    // ("dt$keys<n>", install.sql): asked once per bulk row, as `init` may
    // add them while the producer runs.
    DT_ASSIGN_OR_RETURN(
        auto k, conn_->Query("SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute WHERE "
                             "attrelid = $1::regclass AND attname::text ~ '^dt\\$keys[0-9]+$' "
                             "AND attnum > 0 AND NOT attisdropped",
                             {spec.change_table.Quoted()}));
    bulk->typed_keys =
        !spec.key.empty() && k.GetInt64(0, 0) >= static_cast<int64_t>(spec.key.size());
  }
  std::vector<pg::Statement> stmts;
  stmts.push_back({"BEGIN", {}});
  if (names) {
    stmts.push_back({fmt::format("SELECT c FROM {}, pg_catalog.unnest({}) WITH ORDINALITY AS "
                                 "u(c, i) WHERE {} = $1 ORDER BY u.i",
                                 spec.change_table.Quoted(), kColsColumn, kChangeIdColumn),
                     {id}});
  }
  // The slice is cut from the array before it is expanded: memory follows
  // the piece, not the row. A bulk DELETE's typed keys ("dt$rows" is then
  // '{NULL}') are turned into record literals here, in the producer's
  // session, as the trigger's text form would have written them.
  std::string arrays = fmt::format("pg_catalog.unnest({}[$2::int:$3::int])", kRowsColumn);
  std::string aliases = "v";
  std::string element = "e.v";
  if (bulk->typed_keys) {
    std::string row;
    for (size_t k = 0; k < spec.key.size(); ++k) {
      arrays += fmt::format(", pg_catalog.unnest({}[$2::int:$3::int])", TypedKeysColumn(k));
      aliases += fmt::format(", k{}", k + 1);
      row += fmt::format("{}e.k{}", k == 0 ? "" : ", ", k + 1);
    }
    element = fmt::format("COALESCE(e.v, ROW({})::text)", row);
  }
  stmts.push_back(
      {fmt::format("SELECT {3} FROM {0}, ROWS FROM ({1}) WITH "
                   "ORDINALITY AS e({4}, i) WHERE {2} = $1 ORDER BY e.i",
                   spec.change_table.Quoted(), arrays, kChangeIdColumn, element, aliases),
       {id, from, to}});
  stmts.push_back({"COMMIT", {}});
  std::vector<pg::QueryResult> results;
  DT_RETURN_IF_ERROR(RunTransaction(stmts, &results));
  if (names) {
    const pg::QueryResult& n = results[1];
    for (int i = 0; i < n.rows(); ++i) {
      int col = -1;
      for (size_t c = 0; c < spec.columns.size(); ++c) {
        if (spec.columns[c].name == n.Get(i, 0)) col = static_cast<int>(c);
      }
      bulk->columns.push_back(col);
    }
    if (bulk->columns.empty()) {
      return Status::Fatal(fmt::format("change {} in {} has no column names", bulk->change_id,
                                       spec.change_table.ToString()));
    }
  }
  const pg::QueryResult& r = results[names ? 2 : 1];
  const int n = std::min(r.rows(), limit);
  std::vector<RecordField> fields;
  std::string unescaped;
  out->reserve(out->size() + static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    if (bulk->next + i + 1 > (std::numeric_limits<int32_t>::max() >> Position::kElementShift)) {
      return Status::Fatal(fmt::format("change {} in {} has more elements than a position holds",
                                       bulk->change_id, spec.change_table.ToString()));
    }
    const std::string_view text = r.IsNull(i, 0) ? std::string_view() : r.Get(i, 0);
    if (r.IsNull(i, 0) || !SplitRecord(text, &fields, &unescaped) ||
        fields.size() != bulk->columns.size()) {
      return Status::Fatal(fmt::format(
          "element {} of change {} in {} is not a row of its {} columns", bulk->next + i,
          bulk->change_id, spec.change_table.ToString(), bulk->columns.size()));
    }
    Change c;
    c.op = bulk->op;
    c.table = static_cast<uint32_t>(t);
    c.pos = Position{epoch, tick, bulk->change_id,
                     static_cast<int32_t>((bulk->next + i + 1) << Position::kElementShift)};
    c.txid = bulk->txid;
    c.captured_us = bulk->captured_us;
    // A delete of a table with a key carries only the key (ParseBatch); its
    // elements hold only the key's columns, those of earlier versions the
    // whole row.
    c.key_only = c.op == Op::kDelete && !spec.key.empty();
    if (c.key_only) {
      c.row.ResetAbsent(spec.columns.size());
      for (size_t k : spec.key) c.row.SetNull(k);
    } else {
      c.row.Reset(spec.columns.size());
    }
    // The values are at most the literal's text: one allocation.
    c.row.Reserve(text.size());
    for (size_t f = 0; f < fields.size(); ++f) {
      const int col = bulk->columns[f];
      if (col < 0 || (c.key_only && !spec.IsKey(static_cast<size_t>(col)))) continue;
      const RecordField& field = fields[f];
      if (field.null) continue;
      const std::string_view from = field.unescaped ? std::string_view(unescaped) : text;
      c.row.Set(static_cast<size_t>(col), from.substr(field.off, field.len));
    }
    out->push_back(std::move(c));
  }
  bulk->next += n;
  return r.rows() <= limit;
}

Status ChangeLog::RecordProgress(std::span<const ProgressUpdate> updates) {
  if (updates.empty()) return Status::OK();
  // One round trip: the producer's loop waits for it (and, the first time a
  // table is pruned on this connection, one more to prepare its prune).
  std::vector<size_t> pruned;
  for (const auto& u : updates) {
    if (u.prune_upto > 0 && !u.prune_snapshot.empty()) pruned.push_back(u.table);
  }
  DT_RETURN_IF_ERROR(PrepareTables(pruned, true));
  if (!progress_prepared_) {
    DT_RETURN_IF_ERROR(conn_->Exec(fmt::format(
        "PREPARE {} (text[], text[], bigint[], bigint[], bigint[], int[]) AS "
        "UPDATE datatunnel.tables t SET published_tick = u.tick, published_seq = u.seq, "
        "  published_sub = u.sub, published_count = t.published_count + u.n, "
        "  published_at = now() "
        "FROM unnest($1, $2, $3, $4, $5, $6) AS u(sch, tbl, tick, seq, n, sub) "
        "WHERE t.schema_name = u.sch AND t.table_name = u.tbl "
        "  AND (t.published_tick, t.published_seq, t.published_sub) < (u.tick, u.seq, u.sub)",
        kProgressStatement)));
    progress_prepared_ = true;
  }
  pg::Arena arena;
  std::vector<pg::Statement> stmts;
  stmts.push_back({"BEGIN", {}});
  for (const auto& u : updates) {
    const TableSpec& spec = (*tables_)[u.table];
    if (u.prune_upto > 0 && !u.prune_snapshot.empty()) {
      stmts.push_back({fmt::format("EXECUTE {}({}, {})", TableStatement(true, u.table),
                                   u.prune_upto, QuoteLiteral(u.prune_snapshot)),
                       {}});
    }
    if (!u.heads.empty()) {
      // Every head of the table in one statement, as parallel arrays.
      std::string parts, epochs, ticks, seqs, subs;
      for (const auto& [partition, pos] : u.heads) {
        const char* sep = parts.empty() ? "{" : ",";
        parts += fmt::format("{}{}", sep, partition);
        epochs += fmt::format("{}{}", sep, pos.epoch);
        ticks += fmt::format("{}{}", sep, pos.tick);
        seqs += fmt::format("{}{}", sep, pos.seq);
        subs += fmt::format("{}{}", sep, pos.sub);
      }
      stmts.push_back(
          {"INSERT INTO datatunnel.chain_heads AS h (topic, partition, schema_name, table_name, "
           "  epoch, tick, seq, sub, tunnel) "
           "SELECT $1, x.p, $2, $3, x.e, x.t, x.s, x.u, $9 FROM unnest($4::int[], $5::bigint[], "
           "  $6::bigint[], $7::bigint[], $8::int[]) AS x(p, e, t, s, u) "
           "ON CONFLICT (tunnel, topic, partition) DO UPDATE SET epoch = EXCLUDED.epoch, "
           "  tick = EXCLUDED.tick, seq = EXCLUDED.seq, sub = EXCLUDED.sub, "
           "  schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name, "
           "  updated_at = now(), "
           // A head that stayed put for a second starts a new burst (install.sql).
           "  since_epoch = CASE WHEN h.updated_at < now() - interval '1 second' "
           "    THEN h.epoch ELSE h.since_epoch END, "
           "  since_tick = CASE WHEN h.updated_at < now() - interval '1 second' "
           "    THEN h.tick ELSE h.since_tick END, "
           "  since_seq = CASE WHEN h.updated_at < now() - interval '1 second' "
           "    THEN h.seq ELSE h.since_seq END, "
           "  since_sub = CASE WHEN h.updated_at < now() - interval '1 second' "
           "    THEN h.sub ELSE h.since_sub END, "
           "  since_at = CASE WHEN h.updated_at < now() - interval '1 second' "
           "    THEN now() ELSE h.since_at END "
           "WHERE (h.epoch, h.tick, h.seq, h.sub) < "
           "  (EXCLUDED.epoch, EXCLUDED.tick, EXCLUDED.seq, EXCLUDED.sub)",
           {spec.topic, spec.source.schema, spec.source.name, arena.Keep(parts + "}"),
            arena.Keep(epochs + "}"), arena.Keep(ticks + "}"), arena.Keep(seqs + "}"),
            arena.Keep(subs + "}"), tunnel_}});
    }
  }
  // Every table's progress in one statement, as parallel arrays: hundreds
  // of tables cost one statement, not one each.
  std::vector<std::optional<std::string>> schemas, names, ticks, seqs, subs, counts;
  for (const auto& u : updates) {
    const TableSpec& spec = (*tables_)[u.table];
    schemas.emplace_back(spec.source.schema);
    names.emplace_back(spec.source.name);
    ticks.emplace_back(std::to_string(u.tick));
    seqs.emplace_back(std::to_string(u.seq));
    subs.emplace_back(std::to_string(u.sub));
    counts.emplace_back(std::to_string(u.delivered));
  }
  stmts.push_back(
      {fmt::format(
           "EXECUTE {}({}, {}, {}, {}, {}, {})", kProgressStatement,
           QuoteLiteral(pg::TextArrayLiteral(schemas)), QuoteLiteral(pg::TextArrayLiteral(names)),
           QuoteLiteral(pg::TextArrayLiteral(ticks)), QuoteLiteral(pg::TextArrayLiteral(seqs)),
           QuoteLiteral(pg::TextArrayLiteral(counts)), QuoteLiteral(pg::TextArrayLiteral(subs))),
       {}});
  // Keep the ticks some table may still need as its batch's lower bound,
  // and every tick while a transaction registering a new table (auto_add,
  // install.sql) is open: it holds kAddLockClass shared, and the tick it
  // starts the table at must be there when it commits.
  const int64_t now = MonotonicMicros();
  const bool prune_ticks = ticks_pruned_us_ == 0 || now - ticks_pruned_us_ >= kTicksPruneUs;
  if (prune_ticks) {
    stmts.push_back(
        {fmt::format("DELETE FROM datatunnel.ticks WHERE tunnel = $2 AND tick < (SELECT "
                     "min(CASE WHEN published_seq = $1 THEN published_tick ELSE published_tick - 1 "
                     "END) FROM datatunnel.tables WHERE tunnel = $2) AND (SELECT "
                     "pg_catalog.pg_try_advisory_xact_lock({}, pg_catalog.hashtext($2)))",
                     kAddLockClass),
         {arena.Keep(std::to_string(Position::kEndOfTick)), tunnel_}});
  }
  // Its xid, which the idle check ignores (ChangedSince).
  stmts.push_back({"SELECT pg_catalog.txid_current_if_assigned()", {}});
  stmts.push_back({"COMMIT", {}});
  std::vector<pg::QueryResult> results;
  DT_RETURN_IF_ERROR(RunTransaction(stmts, &results));
  const pg::QueryResult& xid = results[results.size() - 2];
  if (xid.rows() == 1 && !xid.IsNull(0, 0)) own_xids_.push_back(xid.GetInt64(0, 0));
  if (prune_ticks) ticks_pruned_us_ = now;
  return Status::OK();
}

Result<std::optional<std::vector<int64_t>>> ChangeLog::CountAllPending() {
  if (counted_seq_ >= 0 && counted_seq_ == newest_seq_) {
    return std::optional<std::vector<int64_t>>();
  }
  const int64_t seq = newest_seq_;
  if (!counts_prepared_) {
    // Prepared once: planning a subquery per table costs far more than
    // running them (120 ms against 5-15 ms at 500 tables).
    std::string sql = fmt::format("PREPARE {} AS SELECT ARRAY[", kCountsStatement);
    for (size_t t = 0; t < tables_->size(); ++t) {
      sql += fmt::format("{}(SELECT count(*) FROM {})", t == 0 ? "" : ", ",
                         (*tables_)[t].change_table.Quoted());
    }
    sql += "]::bigint[]::text";
    DT_RETURN_IF_ERROR(conn_->Exec(sql));
    counts_prepared_ = true;
  }
  DT_ASSIGN_OR_RETURN(auto r, conn_->Query(fmt::format("EXECUTE {}", kCountsStatement)));
  std::vector<int64_t> counts;
  const std::string_view text = r.Get(0, 0);  // {n,n,...}
  bool any = false;
  for (size_t i = 1; i < text.size();) {
    const size_t end = std::min(text.find(',', i), text.size() - 1);
    counts.push_back(std::strtoll(std::string(text.substr(i, end - i)).c_str(), nullptr, 10));
    any = any || counts.back() != 0;
    i = end + 1;
  }
  if (counts.size() != tables_->size()) {
    return Status::Fatal("unexpected change-table counts from the " + conn_->description());
  }
  counted_seq_ = any ? -1 : seq;
  return std::optional<std::vector<int64_t>>(std::move(counts));
}

Result<int64_t> ChangeLog::CountPending(size_t t) {
  DT_ASSIGN_OR_RETURN(auto r,
                      conn_->Query("SELECT count(*) FROM " + (*tables_)[t].change_table.Quoted()));
  return r.GetInt64(0, 0);
}

double ChangeLog::EstimatedRowBytes(size_t t) {
  auto est = conn_->Query(
      "SELECT COALESCE((c.relpages + COALESCE(t.relpages, 0))::float8 * "
      "  current_setting('block_size')::float8 / NULLIF(c.reltuples, 0), 0)::float8 "
      "FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid "
      "WHERE c.oid = $1::regclass",
      {(*tables_)[t].source.Quoted()});
  return est.ok() && est->rows() ? std::strtod(std::string(est->Get(0, 0)).c_str(), nullptr) : 0;
}

void ReadSizer::Start(ChangeLog& log, size_t tables) {
  if (const char* rows = std::getenv(kMaxRowsEnv); rows && std::atoi(rows) > 0) {
    max_rows_ = std::min(kMaxRows, std::atoi(rows));
  }
  avg_change_bytes_.clear();
  for (size_t t = 0; t < tables; ++t) {
    avg_change_bytes_.push_back(std::max(256.0, log.EstimatedRowBytes(t)));
  }
}

int ReadSizer::Limit(size_t t) const {
  return static_cast<int>(
      std::clamp<double>(static_cast<double>(kBudgetBytes) / avg_change_bytes_[t], 1, max_rows_));
}

int64_t ReadSizer::Observe(size_t t, const std::vector<Change>& changes) {
  int64_t rows = 0;
  for (size_t i = 0; i < changes.size(); ++i) {
    if (i == 0 || !changes[i].pos.SameChange(changes[i - 1].pos)) ++rows;
  }
  if (rows > 0) {
    int64_t bytes = 0;
    for (const Change& c : changes) bytes += static_cast<int64_t>(c.row.ByteSize());
    avg_change_bytes_[t] = std::max(64.0, static_cast<double>(bytes) / static_cast<double>(rows));
  }
  return rows;
}

}  // namespace datatunnel::capture
