#include "capture/change_log.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "capture/install.h"

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
  std::vector<TableProgress> out;
  for (const auto& spec : *tables_) {
    DT_ASSIGN_OR_RETURN(auto r,
                        conn_->Query("SELECT published_tick, published_seq, published_count "
                                     "FROM datatunnel.tables "
                                     "WHERE schema_name = $1 AND table_name = $2 AND tunnel = $3",
                                     {spec.source.schema, spec.source.name, tunnel_}));
    if (r.rows() != 1) {
      return Status::Fatal(fmt::format(
          "table {} is not set up for capture by tunnel \"{}\" on the {}: run `datatunnel "
          "init` with this configuration",
          spec.source.ToString(), tunnel_, conn_->description()));
    }
    out.push_back({r.GetInt64(0, 0), r.GetInt64(0, 1), r.GetInt64(0, 2)});
  }
  return out;
}

Result<std::vector<Tick>> ChangeLog::LoadTicks(int64_t from, int limit) {
  DT_ASSIGN_OR_RETURN(auto r, conn_->Query("SELECT tick, snapshot::text FROM datatunnel.ticks "
                                           "WHERE tunnel = $3 AND tick >= $1 ORDER BY tick "
                                           "LIMIT $2",
                                           {std::to_string(from), std::to_string(limit), tunnel_}));
  std::vector<Tick> out;
  for (int i = 0; i < r.rows(); ++i) out.push_back({r.GetInt64(i, 0), std::string(r.Get(i, 1))});
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

}  // namespace

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
      "INSERT INTO datatunnel.ticks (tunnel, tick, snapshot) "
      "VALUES ($2, $1, pg_catalog.txid_current_snapshot()) "
      "ON CONFLICT (tunnel, tick) DO NOTHING RETURNING snapshot::text",
      {std::to_string(number), tunnel_});
  if (!r.ok()) {
    conn_->RollbackQuietly();
    return r.status();
  }
  if (r->rows() != 1) {
    conn_->RollbackQuietly();
    return TickTaken(number);
  }
  return Tick{number, std::string(r->Get(0, 0))};
}

Status ChangeLog::CommitTick() { return conn_->Commit(); }

Result<Tick> ChangeLog::RecordTick(const Tick& lo, const std::string& check_sql, std::string* check,
                                   int64_t epoch, std::span<TickRead> reads) {
  PrepareQueries();
  const int64_t number = lo.number + 1;
  pg::Arena arena;
  std::vector<pg::Statement> stmts;
  stmts.push_back({"BEGIN ISOLATION LEVEL REPEATABLE READ", {}});
  stmts.push_back(
      {"INSERT INTO datatunnel.ticks (tunnel, tick, snapshot) "
       "VALUES ($2, $1, pg_catalog.txid_current_snapshot()) "
       "ON CONFLICT (tunnel, tick) DO NOTHING RETURNING snapshot::text, (" +
           check_sql + ")",
       {arena.Keep(std::to_string(number)), tunnel_}});
  if (!reads.empty()) stmts.push_back({kChangeIdOrder, {}});
  const size_t first_read = stmts.size();
  for (size_t i = 0; i < reads.size(); ++i) {
    stmts.push_back({tick_queries_[reads[i].table],
                     {"0", lo.snapshot, arena.Keep(std::to_string(reads[i].limit))}});
  }
  stmts.push_back({"COMMIT", {}});
  std::vector<pg::QueryResult> results;
  Status st = conn_->ExecPipeline(stmts, &results);
  if (!st.ok()) {
    conn_->RollbackQuietly();
    return st;
  }
  if (results.size() != stmts.size() || results[1].rows() != 1) return TickTaken(number);
  *check = std::string(results[1].Get(0, 1));
  for (size_t i = 0; i < reads.size(); ++i) {
    DT_ASSIGN_OR_RETURN(reads[i].last, ParseBatch(reads[i].table, results[first_read + i], number,
                                                  0, epoch, &reads[i].changes));
  }
  return Tick{number, std::string(results[1].Get(0, 0))};
}

Result<bool> ChangeLog::ChangedSince(const Tick& last) {
  if (newest_.size() != tables_->size()) {
    changed_query_ =
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.txid_snapshot_xip($1::txid_snapshot) x "
        "WHERE pg_catalog.txid_visible_in_snapshot(x, pg_catalog.txid_current_snapshot()))";
    for (const auto& spec : *tables_) {
      changed_query_ +=
          fmt::format(", COALESCE((SELECT {0} FROM {1} ORDER BY {0} DESC LIMIT 1), 0)",
                      kChangeIdColumn, spec.change_table.Quoted());
    }
    newest_.assign(tables_->size(), -1);
  }
  DT_ASSIGN_OR_RETURN(auto r, conn_->Query(changed_query_, {last.snapshot}));
  bool changed = r.GetBool(0, 0);
  for (size_t t = 0; t < newest_.size(); ++t) {
    const int64_t newest = r.GetInt64(0, static_cast<int>(t) + 1);
    changed = changed || newest != newest_[t];
    newest_[t] = newest;
  }
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
      "(extract(epoch FROM {7}) * 1000000)::bigint{0} "
      "FROM {1} "
      "WHERE {4} > $1 "
      "  AND {5} >= pg_catalog.txid_snapshot_xmin($2::txid_snapshot) "
      "  AND {5} < pg_catalog.txid_snapshot_xmax({2}) "
      "  AND pg_catalog.txid_visible_in_snapshot({5}, {2}) "
      "  AND NOT pg_catalog.txid_visible_in_snapshot({5}, $2::txid_snapshot) "
      "ORDER BY {4} LIMIT ${3}",
      cols, spec.change_table.Quoted(), hi, in_tick ? 3 : 4, kChangeIdColumn, kTxidColumn,
      kActionColumn, kCapturedAtColumn);
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

Result<int64_t> ChangeLog::ReadBatch(size_t t, const Tick& lo, const Tick& hi, int64_t after,
                                     int limit, int64_t epoch, std::vector<Change>* out) {
  PrepareQueries();
  const std::string a = std::to_string(after), l = std::to_string(limit);
  const pg::Statement stmts[] = {
      {"BEGIN", {}},
      {kChangeIdOrder, {}},
      {batch_queries_[t], {a, lo.snapshot, hi.snapshot, l}},
      {"COMMIT", {}},
  };
  std::vector<pg::QueryResult> results;
  Status st = conn_->ExecPipeline(stmts, &results);
  if (!st.ok()) {
    conn_->RollbackQuietly();
    return st;
  }
  return ParseBatch(t, results[2], hi.number, after, epoch, out);
}

Result<int64_t> ChangeLog::ParseBatch(size_t t, const pg::QueryResult& r, int64_t tick,
                                      int64_t after, int64_t epoch, std::vector<Change>* out) {
  const TableSpec& spec = (*tables_)[t];
  const int nkey = static_cast<int>(spec.key.size());
  const int first_col = 4 + nkey;
  const size_t ncols = spec.columns.size();
  int64_t last = after;
  for (int i = 0; i < r.rows(); ++i) {
    Change c;
    c.table = static_cast<uint32_t>(t);
    c.pos = Position{epoch, tick, r.GetInt64(i, 0), 0};
    c.txid = r.GetInt64(i, 1);
    c.captured_us = r.GetInt64(i, 3);
    last = c.pos.seq;
    std::string_view action = r.Get(i, 2);
    if (action == "TRUNCATE") {
      c.op = Op::kTruncate;
      out->push_back(std::move(c));
      continue;
    }
    // An UPDATE that changed the key becomes a delete of the old key and an
    // insert of the new row, each keyed (and partitioned) by its own key, so
    // per-key order holds for both keys.
    if (action == "UPDATE" && !r.IsNull(i, 4)) {
      Change del = c;
      del.op = Op::kDelete;
      del.key_only = true;
      del.row.Reset(ncols);
      for (int k = 0; k < nkey; ++k) {
        if (r.IsNull(i, 4 + k)) continue;
        del.row.Set(spec.key[k], r.Get(i, 4 + k));
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
    } else {
      return Status::Fatal(fmt::format("change {} in {} has an unknown action \"{}\"", c.pos.seq,
                                       spec.change_table.ToString(), action));
    }
    r.ReadRow(i, first_col, ncols, &c.row);
    out->push_back(std::move(c));
  }
  return last;
}

Status ChangeLog::RecordProgress(std::span<const ProgressUpdate> updates) {
  if (updates.empty()) return Status::OK();
  // One round trip: the producer's loop waits for it.
  pg::Arena arena;
  std::vector<pg::Statement> stmts;
  stmts.push_back({"BEGIN", {}});
  for (const auto& u : updates) {
    const TableSpec& spec = (*tables_)[u.table];
    if (u.prune_upto > 0 && !u.prune_snapshot.empty()) {
      stmts.push_back({fmt::format("DELETE FROM {} WHERE {} <= $1 AND "
                                   "pg_catalog.txid_visible_in_snapshot({}, $2::txid_snapshot)",
                                   spec.change_table.Quoted(), kChangeIdColumn, kTxidColumn),
                       {arena.Keep(std::to_string(u.prune_upto)), u.prune_snapshot}});
    }
    stmts.push_back(
        {"UPDATE datatunnel.tables SET published_tick = $3, published_seq = $4, "
         "  published_count = published_count + $5, published_at = now() "
         "WHERE schema_name = $1 AND table_name = $2 "
         "  AND (published_tick, published_seq) < ($3::bigint, $4::bigint)",
         {spec.source.schema, spec.source.name, arena.Keep(std::to_string(u.tick)),
          arena.Keep(std::to_string(u.seq)), arena.Keep(std::to_string(u.delivered))}});
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
  // Keep the ticks some table may still need as its batch's lower bound.
  stmts.push_back(
      {"DELETE FROM datatunnel.ticks WHERE tunnel = $2 AND tick < (SELECT min(CASE WHEN "
       "published_seq = $1 THEN published_tick ELSE published_tick - 1 END) FROM "
       "datatunnel.tables WHERE tunnel = $2)",
       {arena.Keep(std::to_string(Position::kEndOfTick)), tunnel_}});
  stmts.push_back({"COMMIT", {}});
  Status st = conn_->ExecPipeline(stmts);
  if (!st.ok()) conn_->RollbackQuietly();
  return st;
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
  avg_change_bytes_.clear();
  for (size_t t = 0; t < tables; ++t) {
    avg_change_bytes_.push_back(std::max(256.0, log.EstimatedRowBytes(t)));
  }
}

int ReadSizer::Limit(size_t t) const {
  return static_cast<int>(
      std::clamp<double>(static_cast<double>(kBudgetBytes) / avg_change_bytes_[t], 1, kMaxRows));
}

int64_t ReadSizer::Observe(size_t t, const std::vector<Change>& changes) {
  int64_t rows = 0;
  for (size_t i = 0; i < changes.size(); ++i) {
    if (i == 0 || changes[i].pos.seq != changes[i - 1].pos.seq) ++rows;
  }
  if (rows > 0) {
    int64_t bytes = 0;
    for (const Change& c : changes) bytes += static_cast<int64_t>(c.row.ByteSize());
    avg_change_bytes_[t] = std::max(64.0, static_cast<double>(bytes) / static_cast<double>(rows));
  }
  return rows;
}

}  // namespace datatunnel::capture
