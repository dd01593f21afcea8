#include "apply/applier.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "apply/batch.h"
#include "apply/chain.h"
#include "apply/install.h"

namespace datatunnel::apply {
namespace {

constexpr size_t kMaxParams = 30000;  // PostgreSQL allows 65535 per statement

using pg::Arena;

// Which columns a row writes: every column it carries, minus generated ones.
std::vector<size_t> WrittenColumns(const TableSpec& spec, const Row& row) {
  std::vector<size_t> cols;
  for (size_t i = 0; i < spec.columns.size(); ++i) {
    if (spec.columns[i].generated || row.IsAbsent(i)) continue;
    cols.push_back(i);
  }
  return cols;
}

std::string ColumnList(const TableSpec& spec, const std::vector<size_t>& cols,
                       const char* prefix = "") {
  std::string out;
  for (size_t i = 0; i < cols.size(); ++i) {
    if (i) out += ", ";
    out += prefix;
    out += QuoteIdent(spec.columns[cols[i]].name);
  }
  return out;
}

std::string KeyList(const TableSpec& spec) {
  std::string out;
  for (size_t i = 0; i < spec.key.size(); ++i) {
    if (i) out += ", ";
    out += QuoteIdent(spec.columns[spec.key[i]].name);
  }
  return out;
}

// The SET list of an UPDATE of the non-key columns of `cols` from the row
// named `from` (the staged row `s`, or EXCLUDED in an upsert), or "" when
// `cols` are all key columns.
std::string UpdateSet(const TableSpec& spec, const std::vector<size_t>& cols,
                      std::string_view from = "s") {
  std::string set;
  for (size_t c : cols) {
    if (spec.IsKey(c)) continue;
    const std::string n = QuoteIdent(spec.columns[c].name);
    set += fmt::format("{}{} = {}.{}", set.empty() ? "" : ", ", n, from, n);
  }
  return set;
}

std::string ConflictClause(const TableSpec& spec, const std::vector<size_t>& cols) {
  const std::string set = UpdateSet(spec, cols, "EXCLUDED");
  if (set.empty()) return fmt::format(" ON CONFLICT ({}) DO NOTHING", KeyList(spec));
  return fmt::format(" ON CONFLICT ({}) DO UPDATE SET {}", KeyList(spec), set);
}

pg::Param ValueParam(const Row& row, size_t i) {
  return row.HasValue(i) ? pg::Param(row.Get(i)) : pg::Param();
}

// After a data error (SQLSTATE class 22: a value the target's column type
// refuses) the failed statement names neither the table nor the column:
// find the first column of the batch whose values its type refuses, by
// casting them all in one query per column, and put both in the error.
Status NameTheColumn(pg::Connection& conn, const std::vector<TableSpec>& targets,
                     const std::vector<std::vector<const Change*>>& by_table, Status error) {
  for (size_t t = 0; t < by_table.size(); ++t) {
    const TableSpec& spec = targets[t];
    for (size_t i = 0; i < spec.columns.size(); ++i) {
      const Column& col = spec.columns[i];
      if (!col.typname.empty() && col.typname[0] == '_') continue;  // arrays: not this way
      std::vector<std::optional<std::string>> values;
      for (const Change* c : by_table[t]) {
        if (c->packed_rows > 0 || i >= c->row.size() || !c->row.HasValue(i)) continue;
        values.emplace_back(std::string(c->row.Get(i)));
      }
      if (values.empty()) continue;
      auto r = conn.Query(fmt::format("SELECT $1::text[]::{}[] IS NULL", col.type_sql),
                          {pg::TextArrayLiteral(values)});
      if (!r.ok()) {
        return error.WithContext(fmt::format(
            "target table {} column {} ({}; compare the source's type, `datatunnel verify` "
            "lists type differences)",
            spec.target.ToString(), col.name, col.type_sql));
      }
    }
  }
  return error;
}

// True when `a` and `b` carry the same columns.
bool SameColumns(const Row& a, const Row& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a.IsAbsent(i) != b.IsAbsent(i)) return false;
  }
  return true;
}

// Upserts grouped by the set of columns they write (one group, normally).
std::map<std::vector<size_t>, std::vector<const Change*>> GroupByColumns(
    const TableSpec& spec, const std::vector<const Change*>& upserts) {
  std::map<std::vector<size_t>, std::vector<const Change*>> groups;
  std::vector<const Change*>* group = nullptr;
  const Row* prev = nullptr;
  for (const Change* c : upserts) {
    // Look the group up only when the columns differ from the previous row's.
    if (!prev || !SameColumns(*prev, c->row)) {
      group = &groups[WrittenColumns(spec, c->row)];
      prev = &c->row;
    }
    group->push_back(c);
  }
  return groups;
}

// The join of the target table `t` with the staged rows (alias `staged`)
// on the key.
std::string KeyMatch(const TableSpec& spec, std::string_view staged = "s") {
  std::string on;
  for (size_t k : spec.key) {
    const std::string n = QuoteIdent(spec.columns[k].name);
    on += fmt::format("{}t.{} = {}.{}", on.empty() ? "" : " AND ", n, staged, n);
  }
  return on;
}

// After an UPDATE of the target from the staged rows of `staged` (that
// satisfy `where`, "" for all), the INSERT of those whose key the target
// lacks (an UPDATE joined on the key changed every one it has). Not
// ON CONFLICT DO NOTHING: that fires the target's insert triggers for
// every row proposed.
std::string InsertMissing(const TableSpec& spec, const std::vector<size_t>& cols,
                          const std::string& staged, const std::string& where) {
  return fmt::format(
      "INSERT INTO {0} ({1}) SELECT {2} FROM {3} AS s WHERE {4}NOT EXISTS (SELECT FROM {0} AS t "
      "WHERE {5})",
      spec.target.Quoted(), ColumnList(spec, cols), ColumnList(spec, cols, "s."), staged, where,
      KeyMatch(spec));
}

// The target columns a packed snapshot chunk's COPY text holds: as many
// of the target's leading columns as its first line has fields. The chunk
// was decoded as lining up with the target's columns; one added to the
// target since (a schema marker read while the chunk waited in the tick
// gate) comes after them and is left out.
std::vector<size_t> ChunkColumns(const TableSpec& spec, std::string_view text) {
  const std::string_view first = text.substr(0, text.find('\n'));
  const auto fields = static_cast<size_t>(std::count(first.begin(), first.end(), '\t')) + 1;
  std::vector<size_t> cols(std::min(fields, spec.columns.size()));
  for (size_t i = 0; i < cols.size(); ++i) cols[i] = i;
  return cols;
}

// A delete of `row` can go by an array of keys (DeleteKeyArray): one key
// column, not an array itself, with a value.
bool OneKeyColumn(const TableSpec& spec, const Row& row) {
  if (spec.key.size() != 1) return false;
  const size_t k = spec.key[0];
  return k < row.size() && row.HasValue(k) && spec.columns[k].typname.rfind('_', 0) != 0;
}

// Deletes the keys of `deletes` (OneKeyColumn) with one statement over an
// array of them: the key index is probed once per key. A join with the keys
// staged in a table (analyzed) merge-joined them with the whole key index
// for every batch.
// With `send_ahead` the DELETE is only sent (pg::Connection::Send()).
Status DeleteKeyArray(pg::Connection& conn, const TableSpec& spec,
                      const std::vector<const Change*>& deletes, bool send_ahead = false) {
  const Column& col = spec.columns[spec.key[0]];
  std::vector<std::optional<std::string>> keys;
  keys.reserve(deletes.size());
  for (const Change* c : deletes) keys.emplace_back(std::string(c->row.Get(spec.key[0])));
  const std::string sql = fmt::format("DELETE FROM {} WHERE {} = ANY ($1::{}[])",
                                      spec.target.Quoted(), QuoteIdent(col.name), col.type_sql);
  const std::string array = pg::TextArrayLiteral(keys);
  const pg::Param param = array;
  if (send_ahead) return conn.Send(sql, std::span<const pg::Param>(&param, 1));
  return conn.Query(sql, std::span<const pg::Param>(&param, 1)).status();
}

// COPY text of `rows`' columns `cols`.
void AppendCopyRows(const std::vector<const Change*>& rows, const std::vector<size_t>& cols,
                    std::string* data) {
  for (const Change* c : rows) {
    for (size_t i = 0; i < cols.size(); ++i) {
      if (i) data->push_back('\t');
      if (c->row.HasValue(cols[i])) {
        pg::AppendCopyEscaped(c->row.Get(cols[i]), data);
      } else {
        data->append("\\N");
      }
    }
    data->push_back('\n');
  }
}

void AddAdvances(std::span<const Advance> advances, Arena* arena, std::vector<pg::Statement>* out) {
  if (advances.size() > 1) {
    // One statement for every partition of the batch (in memory a stream
    // per table, so a batch over 500 tables has 500): each statement of a
    // pipeline is parsed and planned on its own. And one set-based UPDATE
    // rather than a datatunnel.advance() call (PL/pgSQL) per partition:
    // over 500 tables those cost 12 ms for a batch of 155 streams
    // (bench/README.md, many tables). The guard is the same (a row moves
    // only from the offset this consumer expected); a partition the UPDATE
    // did not move is then handed to advance(), which fails with DT001 as
    // before, so the batch applies nothing. Contract (plan.h): at most one
    // advance per (stream, partition).
    std::vector<std::vector<std::optional<std::string>>> cols(16);
    for (const auto& a : advances) {
      cols[0].emplace_back(a.stream);
      size_t i = 1;
      for (int64_t v : {int64_t{a.partition}, a.expected_offset, a.offset, a.pos.epoch, a.pos.tick,
                        a.pos.seq, int64_t{a.pos.sub}, a.applied, a.skipped, a.dead, a.captured_us,
                        a.tail.epoch, a.tail.tick, a.tail.seq, int64_t{a.tail.sub}}) {
        cols[i++].emplace_back(std::to_string(v));
      }
    }
    pg::Statement st;
    st.sql =
        "WITH u AS (SELECT * FROM unnest($1::text[], $2::integer[], $3::bigint[], $4::bigint[], "
        "$5::bigint[], $6::bigint[], $7::bigint[], $8::integer[], $9::bigint[], $10::bigint[], "
        "$11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[], "
        "$16::integer[]) AS u(s, p, e, o, ep, t, sq, sb, ap, sk, d, c, te, tt, ts, tsb)), "
        "m AS (UPDATE datatunnel.applied a SET kafka_offset = u.o, epoch = u.ep, tick = u.t, "
        "seq = u.sq, sub = u.sb, tail_epoch = u.te, tail_tick = u.tt, tail_seq = u.ts, "
        "tail_sub = u.tsb, applied_count = a.applied_count + u.ap, "
        "skipped_count = a.skipped_count + u.sk, dead_letter_count = a.dead_letter_count + u.d, "
        "last_captured_at = COALESCE(pg_catalog.to_timestamp(NULLIF(u.c, 0) / 1000000.0), "
        "a.last_captured_at), updated_at = pg_catalog.now() "
        "FROM u WHERE a.stream = u.s AND a.partition = u.p AND a.kafka_offset = u.e "
        "RETURNING a.stream, a.partition) "
        "SELECT datatunnel.advance(s, p, e, o, ep, t, sq, sb, ap, sk, d, NULLIF(c, 0), te, tt, "
        "ts, tsb) FROM u WHERE NOT EXISTS (SELECT FROM m WHERE m.stream = u.s AND "
        "m.partition = u.p)";
    for (const auto& c : cols) st.params.emplace_back(arena->Keep(pg::TextArrayLiteral(c)));
    st.prepare = true;
    out->push_back(std::move(st));
  }
  for (const auto& a : advances) {
    if (advances.size() == 1) {
      pg::Statement st;
      st.sql =
          "SELECT datatunnel.advance($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
          "NULLIF($12::bigint, 0), $13, $14, $15, $16)";
      for (int64_t v : {int64_t{a.partition}, a.expected_offset, a.offset, a.pos.epoch, a.pos.tick,
                        a.pos.seq, int64_t{a.pos.sub}, a.applied, a.skipped, a.dead, a.captured_us,
                        a.tail.epoch, a.tail.tick, a.tail.seq, int64_t{a.tail.sub}}) {
        st.params.emplace_back(arena->Keep(std::to_string(v)));
      }
      st.params.insert(st.params.begin(), arena->Keep(a.stream));
      st.prepare = true;
      out->push_back(std::move(st));
    }
    if (a.gap) {
      pg::Statement g;
      g.sql =
          "UPDATE datatunnel.applied SET gap_offset = $3, gap_expected = $4, gap_found = $5, "
          "gap_at = now() WHERE stream = $1 AND partition = $2";
      g.params = {arena->Keep(a.stream), arena->Keep(std::to_string(a.partition)),
                  arena->Keep(std::to_string(a.gap_offset)),
                  arena->Keep(PositionText(a.gap_expected)),
                  arena->Keep(PositionText(a.gap_found))};
      out->push_back(std::move(g));
    }
    if (a.snapshot_marker) {
      pg::Statement m;
      m.sql =
          "UPDATE datatunnel.applied SET snapshot_epoch = $3, snapshot_tick = $4, "
          "snapshot_partitions = $5, target_truncated_at = NULL, snapshot_relid = "
          "pg_catalog.to_regclass(pg_catalog.format('%I.%I', target_schema, target_table))::oid "
          "WHERE stream = $1 AND partition = $2";
      m.params = {arena->Keep(a.stream), arena->Keep(std::to_string(a.partition)),
                  arena->Keep(std::to_string(a.snapshot_pos.epoch)),
                  arena->Keep(std::to_string(a.snapshot_pos.tick)),
                  arena->Keep(std::to_string(a.snapshot_partitions))};
      out->push_back(std::move(m));
    }
  }
}

void AddArrivals(std::span<const TruncateArrival> arrivals, const std::vector<TableSpec>& targets,
                 Arena* arena, std::vector<pg::Statement>* out) {
  for (const auto& a : arrivals) {
    const TableSpec& spec = targets[a.table];
    pg::Statement st;
    st.sql = "SELECT datatunnel.truncate_arrive($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    st.params = {arena->Keep(a.stream),
                 arena->Keep(std::to_string(a.pos.epoch)),
                 arena->Keep(std::to_string(a.pos.tick)),
                 arena->Keep(std::to_string(a.pos.seq)),
                 arena->Keep(std::to_string(a.pos.sub)),
                 arena->Keep(std::to_string(a.partition)),
                 arena->Keep(std::to_string(a.partitions)),
                 arena->Keep(spec.target.schema),
                 arena->Keep(spec.target.name)};
    out->push_back(std::move(st));
  }
}

// A table without a key (full-row identity, as REPLICA IDENTITY FULL): its
// changes in order, none collapsed. A TRUNCATE discards what came before it;
// an insert or snapshot row inserts (consecutive ones with the same columns
// in one statement); a delete removes one row equal to the old row, columns
// compared as text with NULLs equal (every type has a text form, not every
// type an equality). The target so holds the same multiset of rows.
Status AddKeyless(const TableSpec& spec, std::span<const Change* const> changes,
                  std::vector<pg::Statement>* out) {
  size_t begin = 0;
  for (size_t i = 0; i < changes.size(); ++i) {
    if (changes[i]->op == Op::kTruncate) begin = i + 1;
  }
  if (begin > 0) {
    out->push_back({"SELECT pg_catalog.set_config('datatunnel.tunnel_truncate', 'on', true)", {}});
    out->push_back({"TRUNCATE " + spec.target.Quoted(), {}});
  }
  const std::string table = spec.target.Quoted();
  for (size_t i = begin; i < changes.size();) {
    const Change* c = changes[i];
    switch (c->op) {
      case Op::kMarker:
      case Op::kTruncate:
        ++i;
        break;
      case Op::kUpdate:
        return Status::Fatal(fmt::format(
            "target table {} has no key (no primary key, unique index or configured key), but "
            "change {} of {} updates a row by its key: the source table has a key; run "
            "`datatunnel init` (it creates the unique index on the target) or set key = [...]",
            spec.target.ToString(), c->pos.ToString(), spec.source.ToString()));
      case Op::kDelete: {
        pg::Statement st;
        std::string match;
        for (size_t col = 0; col < spec.columns.size(); ++col) {
          if (spec.columns[col].generated || c->row.IsAbsent(col)) continue;
          st.params.push_back(ValueParam(c->row, col));
          match += fmt::format("{}{}::text IS NOT DISTINCT FROM ${}::{}::text",
                               match.empty() ? "" : " AND ", QuoteIdent(spec.columns[col].name),
                               st.params.size(), spec.columns[col].type_sql);
        }
        st.sql = fmt::format(
            "WITH x AS MATERIALIZED (SELECT tableoid AS o, ctid AS c FROM {0} WHERE {1} LIMIT 1) "
            "DELETE FROM {0} WHERE ctid = (SELECT c FROM x) AND tableoid = (SELECT o FROM x)",
            table, match.empty() ? "true" : match);
        out->push_back(std::move(st));
        ++i;
        break;
      }
      case Op::kInsert:
      case Op::kRead: {
        const std::vector<size_t> cols = WrittenColumns(spec, c->row);
        const size_t per_stmt = std::max<size_t>(1, kMaxParams / std::max<size_t>(1, cols.size()));
        pg::Statement st;
        std::string values;
        size_t n = 0;
        for (; i < changes.size() && n < per_stmt; ++i, ++n) {
          const Change* r = changes[i];
          if ((r->op != Op::kInsert && r->op != Op::kRead) || !SameColumns(r->row, c->row)) break;
          values += n == 0 ? "(" : ", (";
          for (size_t k = 0; k < cols.size(); ++k) {
            st.params.push_back(ValueParam(r->row, cols[k]));
            values += fmt::format("{}${}", k ? ", " : "", st.params.size());
          }
          values += ")";
        }
        st.sql =
            fmt::format("INSERT INTO {} ({}) VALUES {}", table, ColumnList(spec, cols), values);
        out->push_back(std::move(st));
        break;
      }
    }
  }
  return Status::OK();
}

}  // namespace

Result<bool> Applier::BarrierDone(const std::string& stream, const Position& pos) {
  DT_ASSIGN_OR_RETURN(auto r,
                      conn_->Query("SELECT done FROM datatunnel.barriers WHERE stream = $1 "
                                   "AND epoch = $2 AND tick = $3 AND seq = $4 AND sub = $5",
                                   {stream, std::to_string(pos.epoch), std::to_string(pos.tick),
                                    std::to_string(pos.seq), std::to_string(pos.sub)}));
  return r.rows() == 0 || r.GetBool(0, 0);
}

Result<std::optional<Position>> Applier::OpenBarrier(const std::string& stream, int32_t partition) {
  DT_ASSIGN_OR_RETURN(auto r, conn_->Query("SELECT epoch, tick, seq, sub FROM datatunnel.barriers "
                                           "WHERE stream = $1 AND NOT done AND $2 = ANY (arrived) "
                                           "ORDER BY epoch, tick, seq, sub LIMIT 1",
                                           {stream, std::to_string(partition)}));
  if (r.rows() == 0) return std::optional<Position>();
  return std::optional<Position>(Position{r.GetInt64(0, 0), r.GetInt64(0, 1), r.GetInt64(0, 2),
                                          static_cast<int32_t>(r.GetInt64(0, 3))});
}

Result<PartitionState> Applier::Load(const std::string& stream, int32_t partition, uint32_t table) {
  const TableSpec& spec = (*targets_)[table];
  const std::string p = std::to_string(partition);
  DT_ASSIGN_OR_RETURN(auto ins, conn_->Query("INSERT INTO datatunnel.applied (stream, partition, "
                                             "target_schema, target_table) VALUES ($1, $2, $3, $4) "
                                             "ON CONFLICT DO NOTHING",
                                             {stream, p, spec.target.schema, spec.target.name}));
  (void)ins;
  DT_ASSIGN_OR_RETURN(
      auto r, conn_->Query("SELECT a.kafka_offset, a.epoch, a.tick, a.seq, a.sub, a.tail_epoch, "
                           "a.tail_tick, a.tail_seq, a.tail_sub, COALESCE(r.epoch, 0), "
                           "COALESCE(r.tick, 0) FROM datatunnel.applied a "
                           "LEFT JOIN datatunnel.resyncs r ON r.target_schema = a.target_schema "
                           "AND r.target_table = a.target_table "
                           "WHERE a.stream = $1 AND a.partition = $2",
                           {stream, p}));
  PartitionState s;
  s.offset = r.GetInt64(0, 0);
  s.pos = Position{r.GetInt64(0, 1), r.GetInt64(0, 2), r.GetInt64(0, 3),
                   static_cast<int32_t>(r.GetInt64(0, 4))};
  s.tail = Position{r.GetInt64(0, 5), r.GetInt64(0, 6), r.GetInt64(0, 7),
                    static_cast<int32_t>(r.GetInt64(0, 8))};
  if (r.GetInt64(0, 9) != 0) s.resync = ResyncPosition(r.GetInt64(0, 9), r.GetInt64(0, 10));
  s.tail = std::max({s.tail, s.pos, s.resync});
  return s;
}

void Applier::Reset(pg::Connection* conn) {
  conn_ = conn;
  sent_.reset();
  staged_.assign(targets_->size(), false);
  tick_staging_.assign(targets_->size(), false);
  staged_rows_.clear();
  stage_created_.clear();
  used_.clear();
  stream_open_ = false;
}

Status Applier::Apply(std::span<const Change* const> changes, std::span<const Advance> advances,
                      std::span<const TruncateArrival> arrivals, const TickMark* tick) {
  position_moved_ = false;
  failed_table_ = -1;
  std::vector<std::vector<const Change*>> by_table(targets_->size());
  size_t packed = 0;
  for (const Change* c : changes) {
    by_table[c->table].push_back(c);
    if (c->packed_rows > 0) ++packed;
  }
  if (packed > 0 && !transactional_ && (packed != changes.size() || !arrivals.empty())) {
    return Status::Fatal("internal: a packed snapshot chunk was batched with other changes");
  }
  std::vector<Run> runs;
  if (packed == 0) {
    runs.push_back(Run{Effects(&by_table), {}});
  } else if (!transactional_) {
    runs.push_back(Run{{}, {changes.begin(), changes.end()}});
  } else {
    runs = Runs(changes);
  }
  Status st = ApplyRuns(runs, advances, arrivals, tick);
  if (!st.ok()) {
    used_.clear();  // rolled back: the staging tables are as the last commit left them
    if (conn_->last_sqlstate() == kPositionMovedSqlState) position_moved_ = true;
    const bool data_error = conn_->last_sqlstate().rfind("22", 0) == 0;
    conn_->RollbackQuietly();
    if (data_error) st = NameTheColumn(*conn_, *targets_, by_table, st);
  }
  return st;
}

std::vector<TableEffect> Applier::Effects(std::vector<std::vector<const Change*>>* by_table) const {
  std::vector<TableEffect> eff(by_table->size());
  for (uint32_t t = 0; t < by_table->size(); ++t) {
    std::vector<const Change*>& changes = (*by_table)[t];
    if (changes.empty()) continue;
    if (transactional_) {
      // Whole ticks from every partition: a table's changes in source
      // order, whatever partition carried them (a key change's delete
      // and insert halves included).
      std::stable_sort(changes.begin(), changes.end(),
                       [](const Change* a, const Change* b) { return a->pos < b->pos; });
    }
    if ((*targets_)[t].key.empty()) {
      eff[t].in_order = changes;  // no key: every change, one by one
    } else {
      eff[t] = Collapse((*targets_)[t], changes);
    }
  }
  return eff;
}

std::vector<Applier::Run> Applier::Runs(std::span<const Change* const> changes) const {
  // A chunk's rows were read at its tick's snapshot, after the tick's
  // changes and before the next tick's (their positions say so): in
  // position order the chunk sits between the two, and a change of its
  // table's keys before it is overwritten by it, one after it overwrites it.
  std::vector<const Change*> ordered(changes.begin(), changes.end());
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const Change* a, const Change* b) { return a->pos < b->pos; });
  std::vector<Run> runs;
  std::vector<std::vector<const Change*>> by_table(targets_->size());
  bool any = false;
  const auto end_changes = [&] {
    if (!any) return;
    runs.push_back(Run{Effects(&by_table), {}});
    for (auto& v : by_table) v.clear();
    any = false;
  };
  for (const Change* c : ordered) {
    if (c->packed_rows > 0) {
      end_changes();
      if (runs.empty() || runs.back().packed.empty()) runs.push_back(Run{});
      runs.back().packed.push_back(c);
    } else {
      by_table[c->table].push_back(c);
      any = true;
    }
  }
  end_changes();
  return runs;
}

std::vector<Applier::Shape> Applier::Shapes(const std::vector<TableEffect>& eff) {
  std::vector<Shape> out(eff.size());
  for (size_t t = 0; t < eff.size(); ++t) {
    out[t].truncate = eff[t].truncate;
    out[t].deletes = !eff[t].deletes.empty();
    out[t].upserts = !eff[t].upserts.empty();
    out[t].in_order = !eff[t].in_order.empty();
  }
  return out;
}

std::vector<Applier::Step> Applier::Steps(const std::vector<Shape>& eff) const {
  std::vector<Step> steps;
  const auto n = static_cast<uint32_t>(eff.size());
  if (!transactional_) {
    // Per table: its TRUNCATE, deletes, then upserts.
    for (uint32_t t = 0; t < n; ++t) {
      if (eff[t].in_order) steps.push_back({Step::Kind::kInOrder, {t}});
      if (eff[t].truncate) steps.push_back({Step::Kind::kTruncate, {t}});
      if (eff[t].deletes) steps.push_back({Step::Kind::kDelete, {t}});
      if (eff[t].upserts) steps.push_back({Step::Kind::kUpsert, {t}});
    }
    return steps;
  }
  // Every TRUNCATE first, in one statement (a table referenced by a foreign
  // key can only be emptied together with the tables that reference it).
  Step truncate{Step::Kind::kTruncate, {}};
  for (uint32_t t = 0; t < n; ++t) {
    if (eff[t].truncate) truncate.tables.push_back(t);
  }
  if (!truncate.tables.empty()) steps.push_back(std::move(truncate));
  // Tables without foreign keys between them: deletes, then upserts.
  for (uint32_t t = 0; t < n; ++t) {
    if (t < order_.linked.size() && order_.linked[t]) continue;
    if (eff[t].in_order) steps.push_back({Step::Kind::kInOrder, {t}});
    if (eff[t].deletes) steps.push_back({Step::Kind::kDelete, {t}});
    if (eff[t].upserts) steps.push_back({Step::Kind::kUpsert, {t}});
  }
  // Linked tables: every upsert, referenced tables first, then every
  // delete, referencing tables first (docs/architecture.md, "Foreign keys").
  // A table without a key is never referenced (a foreign key needs a unique
  // key): all of its changes go with the upserts, after its parents' and
  // before any delete.
  for (uint32_t t : order_.parent_first) {
    if (t < n && eff[t].in_order) steps.push_back({Step::Kind::kInOrder, {t}});
    if (t < n && eff[t].upserts) steps.push_back({Step::Kind::kUpsert, {t}});
  }
  for (auto it = order_.parent_first.rbegin(); it != order_.parent_first.rend(); ++it) {
    if (*it < n && eff[*it].deletes) steps.push_back({Step::Kind::kDelete, {*it}});
  }
  return steps;
}

void Applier::Head(std::span<const Advance> advances, const TickMark* tick, Arena* arena,
                   std::vector<pg::Statement>* out) const {
  out->push_back({"BEGIN", {}});
  if (transactional_ && !order_.deferred.empty()) {
    std::string names;
    for (const auto& d : order_.deferred) names += (names.empty() ? "" : ", ") + d;
    out->push_back({"SET CONSTRAINTS " + names + " DEFERRED", {}});
  }
  AddAdvances(advances, arena, out);
  if (tick) {
    pg::Statement st;
    st.sql = StoreConsistencySql();
    st.params = {
        arena->Keep(tunnel_), arena->Keep(tick->stream), arena->Keep(std::to_string(tick->offset)),
        arena->Keep(std::to_string(tick->end.epoch)), arena->Keep(std::to_string(tick->end.tick))};
    out->push_back(std::move(st));
  }
}

// The parameter statements of step `step` (kPipelinedMaxRows rows at most
// per kDelete / kUpsert step, or any kTruncate / kInOrder step).
Status Applier::AddStatements(const Step& step, const std::vector<TableEffect>& eff,
                              std::vector<pg::Statement>* out) const {
  const uint32_t t = step.tables[0];
  const TableSpec& spec = (*targets_)[t];
  if (step.kind == Step::Kind::kInOrder) return AddKeyless(spec, eff[t].in_order, out);
  if (step.kind == Step::Kind::kTruncate) {
    // The tunnel's own TRUNCATE: not one outside it (datatunnel_target_truncate).
    out->push_back({"SELECT pg_catalog.set_config('datatunnel.tunnel_truncate', 'on', true)", {}});
    std::string list;
    for (uint32_t tt : step.tables)
      list += (list.empty() ? "" : ", ") + (*targets_)[tt].target.Quoted();
    out->push_back({"TRUNCATE " + list, {}});
    return Status::OK();
  }
  if (step.kind == Step::Kind::kDelete) {
    const std::vector<const Change*>& deletes = eff[t].deletes;
    const size_t nk = spec.key.size();
    const size_t per_stmt = std::max<size_t>(1, kMaxParams / nk);
    for (size_t start = 0; start < deletes.size(); start += per_stmt) {
      size_t end = std::min(deletes.size(), start + per_stmt);
      pg::Statement st;
      std::string values;
      for (size_t r = start; r < end; ++r) {
        values += r == start ? "(" : ", (";
        for (size_t k = 0; k < nk; ++k) {
          const Column& col = spec.columns[spec.key[k]];
          st.params.push_back(ValueParam(deletes[r]->row, spec.key[k]));
          values += fmt::format("{}${}::{}", k ? ", " : "", st.params.size(), col.type_sql);
        }
        values += ")";
      }
      st.sql = fmt::format("DELETE FROM {} WHERE ({}) IN (VALUES {})", spec.target.Quoted(),
                           KeyList(spec), values);
      st.prepare = end - start <= kPreparedMaxRows;
      out->push_back(std::move(st));
    }
    return Status::OK();
  }
  for (const auto& [cols, rows] : GroupByColumns(spec, eff[t].upserts)) {
    const size_t per_stmt = std::max<size_t>(1, kMaxParams / std::max<size_t>(1, cols.size()));
    for (size_t start = 0; start < rows.size(); start += per_stmt) {
      size_t end = std::min(rows.size(), start + per_stmt);
      pg::Statement st;
      std::string values;
      for (size_t r = start; r < end; ++r) {
        values += r == start ? "(" : ", (";
        for (size_t i = 0; i < cols.size(); ++i) {
          st.params.push_back(ValueParam(rows[r]->row, cols[i]));
          values += fmt::format("{}${}", i ? ", " : "", st.params.size());
        }
        values += ")";
      }
      st.sql = fmt::format("INSERT INTO {} ({}) VALUES {}{}", spec.target.Quoted(),
                           ColumnList(spec, cols), values, ConflictClause(spec, cols));
      st.prepare = end - start <= kPreparedMaxRows;
      out->push_back(std::move(st));
    }
  }
  return Status::OK();
}

Status Applier::WriteRows(uint32_t t, const std::vector<size_t>& cols, std::string_view data,
                          bool* stage_used) {
  const TableSpec& spec = (*targets_)[t];
  const std::string list = ColumnList(spec, cols);
  // Rows the target does not have yet (a snapshot into an empty table, a
  // stream of inserts) go straight in with one COPY; if one is already
  // there, the savepoint undoes the COPY and the staged upsert follows.
  int& backoff = DirectBackoff(t);
  if (backoff > 0) {
    --backoff;
  } else {
    DT_ASSIGN_OR_RETURN(const bool copied,
                        CopyStraight(spec, cols, std::span<const std::string_view>(&data, 1)));
    if (copied) return Status::OK();
    backoff = 50;
  }
  if (*stage_used) DT_RETURN_IF_ERROR(conn_->Exec(fmt::format("TRUNCATE dt_stage_{}", t)));
  *stage_used = true;
  Used(t);
  DT_RETURN_IF_ERROR(conn_->CopyIn(fmt::format("COPY dt_stage_{} ({}) FROM STDIN", t, list), data));
  return conn_->Exec(fmt::format("INSERT INTO {} ({}) SELECT {} FROM dt_stage_{}{}",
                                 spec.target.Quoted(), list, list, t, ConflictClause(spec, cols)));
}

int& Applier::DirectBackoff(uint32_t t) {
  if (direct_backoff_.size() != targets_->size()) direct_backoff_.assign(targets_->size(), 0);
  return direct_backoff_[t];
}

Result<bool> Applier::CopyStraight(const TableSpec& spec, const std::vector<size_t>& cols,
                                   std::span<const std::string_view> pieces) {
  // A savepoint of its own, released either way: a caller's savepoint
  // (WriteMixed) stays the one it rolls back to, and a batch of whole
  // ticks writing several chunks does not nest a subtransaction per chunk.
  DT_RETURN_IF_ERROR(conn_->Exec("SAVEPOINT dt_copy"));
  Status direct = conn_->CopyIn(
      fmt::format("COPY {} ({}) FROM STDIN", spec.target.Quoted(), ColumnList(spec, cols)), pieces);
  if (direct.ok()) {
    DT_RETURN_IF_ERROR(conn_->Exec("RELEASE SAVEPOINT dt_copy"));
    return true;
  }
  if (conn_->last_sqlstate() != "23505") return direct;  // not a row already there
  DT_RETURN_IF_ERROR(conn_->Exec("ROLLBACK TO SAVEPOINT dt_copy; RELEASE SAVEPOINT dt_copy"));
  return false;
}

Status Applier::WriteChunks(std::span<const Change* const> chunks, std::vector<bool>* stage_used) {
  std::vector<std::string_view> pieces;
  for (size_t i = 0; i < chunks.size();) {
    const uint32_t t = chunks[i]->table;
    const TableSpec& spec = (*targets_)[t];
    const std::vector<size_t> cols = ChunkColumns(spec, chunks[i]->row.Get(0));
    // The chunks that follow of the same table and columns go with it.
    size_t end = i + 1;
    while (end < chunks.size() && chunks[end - 1]->row.Get(0).ends_with('\n') &&
           chunks[end]->table == t && ChunkColumns(spec, chunks[end]->row.Get(0)) == cols) {
      ++end;
    }
    failed_table_ = static_cast<int>(t);
    bool whole = false;
    if (end - i > 1 && DirectBackoff(t) == 0) {
      // One COPY for them all: one statement instead of one per message (a
      // tick's chunk comes as one message per partition), whose round trips
      // and per-statement work kept the target's backend from the rows
      // (bench/README.md, snapshot). Each chunk holds a key once, but two
      // of them may hold the same key (a chunk read again after a
      // restart): then the COPY is undone and each chunk goes on its own,
      // in order.
      pieces.clear();
      for (size_t j = i; j < end; ++j) pieces.push_back(chunks[j]->row.Get(0));
      DT_ASSIGN_OR_RETURN(whole, CopyStraight(spec, cols, pieces));
    }
    if (!whole) {
      for (size_t j = i; j < end; ++j) {
        bool used = (*stage_used)[t];
        DT_RETURN_IF_ERROR(WriteRows(t, cols, chunks[j]->row.Get(0), &used));
        (*stage_used)[t] = used;
      }
    }
    i = end;
  }
  return Status::OK();
}

Status Applier::UpdateRows(uint32_t t, const std::vector<size_t>& cols, size_t rows,
                           std::string_view data, bool* stage_used, bool send_ahead) {
  DT_RETURN_IF_ERROR(FinishSent());  // it may join dt_stage_N, emptied below
  const TableSpec& spec = (*targets_)[t];
  const std::string list = ColumnList(spec, cols);
  if (*stage_used) DT_RETURN_IF_ERROR(conn_->Exec(fmt::format("TRUNCATE dt_stage_{}", t)));
  *stage_used = true;
  Used(t);
  DT_RETURN_IF_ERROR(conn_->CopyIn(fmt::format("COPY dt_stage_{} ({}) FROM STDIN", t, list), data));
  // A plain UPDATE joined on the key: INSERT ... ON CONFLICT DO UPDATE
  // probes for the conflict, locks the row (a WAL record of its own) and
  // then updates it, 1.25-1.4x the time (bench/README.md, bigtx). The
  // staging table is not analyzed: estimated from its size, a batch of
  // 20,000 rows probes the key index per row (a hash join with the
  // analyzed rows read the whole target table per batch: 2.7x slower).
  const std::string update =
      fmt::format("UPDATE {} AS t SET {} FROM dt_stage_{} AS s WHERE {}", spec.target.Quoted(),
                  UpdateSet(spec, cols), t, KeyMatch(spec));
  DT_RETURN_IF_ERROR(conn_->Send(update));
  sent_ = Sent{t, cols, rows};
  // Not sent ahead: waited for now, and the keys it missed inserted.
  return send_ahead ? Status::OK() : FinishSent();
}

Status Applier::FinishSent() {
  if (!sent_) return Status::OK();
  const Sent sent = std::move(*sent_);
  sent_.reset();
  failed_table_ = static_cast<int>(sent.table);
  DT_ASSIGN_OR_RETURN(auto result, conn_->TakeSent());
  if (sent.cols.empty() || result.AffectedRows() >= static_cast<int64_t>(sent.rows)) {
    return Status::OK();
  }
  // Keys the target lacks (inserted earlier in the batch, or missing there).
  const TableSpec& spec = (*targets_)[sent.table];
  return conn_->Exec(InsertMissing(spec, sent.cols, fmt::format("dt_stage_{}", sent.table), ""));
}

void Applier::Used(uint32_t table) {
  if (std::find(used_.begin(), used_.end(), table) == used_.end()) used_.push_back(table);
}

void Applier::AddEmptyStaging(std::vector<pg::Statement>* out) {
  if (used_.empty()) return;
  std::string list;
  for (uint32_t t : used_)
    list += fmt::format("{0}dt_stage_{1}, dt_keys_{1}", list.empty() ? "" : ", ", t);
  out->push_back({"TRUNCATE " + list, {}});
  used_.clear();
}

// Rows written by a step: above kPipelinedMaxRows, COPY through a staging table.
size_t Applier::StepRows(const Step& step, const std::vector<TableEffect>& eff) {
  if (step.kind == Step::Kind::kDelete) return eff[step.tables[0]].deletes.size();
  if (step.kind == Step::Kind::kUpsert) return eff[step.tables[0]].upserts.size();
  return 0;  // TRUNCATE and keyless changes: parameter statements
}

Status Applier::ApplyRuns(const std::vector<Run>& runs, std::span<const Advance> advances,
                          std::span<const TruncateArrival> arrivals, const TickMark* tick) {
  // Deletes that go as one array of keys (DeleteKeyArray), not staged.
  const auto by_array = [&](const Step& step, const std::vector<TableEffect>& eff) {
    const TableSpec& spec = (*targets_)[step.tables[0]];
    const std::vector<const Change*>& deletes = eff[step.tables[0]].deletes;
    return step.kind == Step::Kind::kDelete &&
           std::all_of(deletes.begin(), deletes.end(),
                       [&](const Change* c) { return OneKeyColumn(spec, c->row); });
  };
  std::vector<std::vector<Step>> steps(runs.size());
  // The staging tables of the staged steps and of the chunks exist before
  // the transaction begins (created once per session, outside it).
  for (size_t r = 0; r < runs.size(); ++r) {
    for (const Change* c : runs[r].packed) DT_RETURN_IF_ERROR(EnsureStaging(c->table));
    if (!runs[r].packed.empty()) continue;
    steps[r] = Steps(Shapes(runs[r].eff));
    for (const Step& step : steps[r]) {
      if (StepRows(step, runs[r].eff) > kPipelinedMaxRows && !by_array(step, runs[r].eff)) {
        DT_RETURN_IF_ERROR(EnsureStaging(step.tables[0]));
      }
    }
  }
  // Statements not sent yet, and the table each writes (-1: none). A batch
  // with no staged step is one round trip, BEGIN to COMMIT.
  Arena arena;
  std::vector<pg::Statement> pending;
  std::vector<int> table_of;
  Head(advances, tick, &arena, &pending);
  table_of.resize(pending.size(), -1);
  const auto flush = [&]() -> Status {
    if (pending.empty()) return Status::OK();
    Status st = conn_->ExecPipeline(pending);
    if (!st.ok() && conn_->last_failed_statement() < table_of.size()) {
      failed_table_ = table_of[conn_->last_failed_statement()];
    }
    pending.clear();
    table_of.clear();
    return st;
  };
  std::string data;
  std::vector<bool> stage_used(targets_->size(), false);
  for (size_t r = 0; r < runs.size(); ++r) {
    if (!runs[r].packed.empty()) {
      DT_RETURN_IF_ERROR(flush());
      DT_RETURN_IF_ERROR(WriteChunks(runs[r].packed, &stage_used));
      failed_table_ = -1;
      continue;
    }
    const std::vector<TableEffect>& eff = runs[r].eff;
    for (const Step& step : steps[r]) {
      const uint32_t t = step.tables[0];
      const TableSpec& spec = (*targets_)[t];
      if (StepRows(step, eff) <= kPipelinedMaxRows) {
        DT_RETURN_IF_ERROR(AddStatements(step, eff, &pending));
        table_of.resize(pending.size(), static_cast<int>(t));
        continue;
      }
      DT_RETURN_IF_ERROR(flush());
      failed_table_ = static_cast<int>(t);
      if (by_array(step, eff)) {
        DT_RETURN_IF_ERROR(DeleteKeyArray(*conn_, spec, eff[t].deletes));
      } else if (step.kind == Step::Kind::kDelete) {
        data.clear();
        for (const Change* c : eff[t].deletes) {
          for (size_t k = 0; k < spec.key.size(); ++k) {
            if (k) data.push_back('\t');
            if (c->row.HasValue(spec.key[k])) {
              pg::AppendCopyEscaped(c->row.Get(spec.key[k]), &data);
            } else {
              data.append("\\N");
            }
          }
          data.push_back('\n');
        }
        // Filled by an earlier run of this batch: emptied first.
        if (std::find(used_.begin(), used_.end(), t) != used_.end()) {
          DT_RETURN_IF_ERROR(conn_->Exec(fmt::format("TRUNCATE dt_keys_{}", t)));
        }
        Used(t);
        DT_RETURN_IF_ERROR(
            conn_->CopyIn(fmt::format("COPY dt_keys_{} ({}) FROM STDIN", t, KeyList(spec)), data));
        // A temporary table has no statistics: without them the planner may
        // join by scanning the whole target table instead of probing its key
        // index (seen at 200,000 rows: most of the backlog drain's time).
        DT_RETURN_IF_ERROR(conn_->Exec(fmt::format("ANALYZE dt_keys_{}", t)));
        DT_RETURN_IF_ERROR(
            conn_->Exec(fmt::format("DELETE FROM {} AS t USING dt_keys_{} AS k WHERE {}",
                                    spec.target.Quoted(), t, KeyMatch(spec, "k"))));
      } else {
        // Updates (the key's newest change is an UPDATE, so the row is most
        // likely in the target) apart from the rest: UpdateRows.
        std::vector<const Change*> updates, others;
        for (const Change* c : eff[t].upserts) {
          (c->op == Op::kUpdate ? updates : others).push_back(c);
        }
        for (const auto* part : {&updates, &others}) {
          for (const auto& [cols, rows] : GroupByColumns(spec, *part)) {
            data.clear();
            AppendCopyRows(rows, cols, &data);
            bool used = stage_used[t];
            if (part == &updates && !UpdateSet(spec, cols).empty()) {
              DT_RETURN_IF_ERROR(UpdateRows(t, cols, rows.size(), data, &used));
            } else {
              DT_RETURN_IF_ERROR(WriteRows(t, cols, data, &used));
            }
            stage_used[t] = used;
          }
        }
      }
      failed_table_ = -1;
    }
  }
  AddArrivals(arrivals, *targets_, &arena, &pending);  // after the writes they follow
  // The staging tables keep their rows past a commit (ON COMMIT PRESERVE
  // ROWS): the ones this batch filled are emptied in it, and only those.
  AddEmptyStaging(&pending);
  pending.push_back({"COMMIT", {}});
  table_of.resize(pending.size(), -1);
  return flush();
}

Status Applier::EnsureStaging(uint32_t table) {
  if (staged_[table]) return Status::OK();
  const TableSpec& spec = (*targets_)[table];
  // Created without constraints (CREATE TABLE AS), so a row may omit
  // columns. ON COMMIT PRESERVE ROWS, emptied by the batches that fill them:
  // PostgreSQL empties every ON COMMIT DELETE ROWS table of a session at
  // each commit that touched any temporary table, which with 500 tables
  // made each staged batch truncate 1,000 tables.
  DT_RETURN_IF_ERROR(
      conn_->Exec(fmt::format("DROP TABLE IF EXISTS pg_temp.dt_stage_{0}, pg_temp.dt_keys_{0}; "
                              "CREATE TEMP TABLE IF NOT EXISTS dt_stage_{0} AS "
                              "SELECT * FROM {1} WITH NO DATA; "
                              "CREATE TEMP TABLE IF NOT EXISTS dt_keys_{0} AS "
                              "SELECT {2} FROM {1} WITH NO DATA",
                              table, spec.target.Quoted(), KeyList(spec))));
  staged_[table] = true;
  return Status::OK();
}

}  // namespace datatunnel::apply

namespace datatunnel::apply {
namespace {

// The extra columns of a streamed tick's staging table dt_tick_N.
constexpr const char* kTickColumns =
    "\"_dt_op\", \"_dt_epoch\", \"_dt_tick\", \"_dt_seq\", \"_dt_sub\", \"_dt_absent\"";
constexpr const char* kTickOrderDesc =
    "\"_dt_epoch\" DESC, \"_dt_tick\" DESC, \"_dt_seq\" DESC, \"_dt_sub\" DESC";

std::vector<size_t> Writable(const TableSpec& spec) {
  std::vector<size_t> cols;
  for (size_t i = 0; i < spec.columns.size(); ++i) {
    if (!spec.columns[i].generated) cols.push_back(i);
  }
  return cols;
}

// The writable columns a staged change carried: those not listed in its
// "_dt_absent" text (comma-separated column indexes).
std::vector<size_t> Carried(const TableSpec& spec, const std::string& absent) {
  std::vector<size_t> cols;
  for (size_t i : Writable(spec)) {
    if (("," + absent + ",").find("," + std::to_string(i) + ",") == std::string::npos) {
      cols.push_back(i);
    }
  }
  return cols;
}

// Rows of a streamed tick after its last TRUNCATE (`truncated`, zero: none).
std::string AfterTruncate(const Position& truncated) {
  if (truncated == Position{}) return "";
  return fmt::format(
      " AND (\"_dt_epoch\", \"_dt_tick\", \"_dt_seq\", \"_dt_sub\") > ({}, {}, {}, {})",
      truncated.epoch, truncated.tick, truncated.seq, truncated.sub);
}

}  // namespace

Status Applier::EnsureTickStaging(uint32_t table) {
  if (tick_staging_.size() != targets_->size()) tick_staging_.assign(targets_->size(), false);
  if (tick_staging_[table]) return Status::OK();
  const TableSpec& spec = (*targets_)[table];
  if (stream_open_) {
    // The target table got columns in the middle of a streamed tick: so
    // does its staging table, keeping what it holds.
    std::string add;
    for (const Column& c : spec.columns) {
      add += fmt::format("{}ADD COLUMN IF NOT EXISTS {} {}", add.empty() ? "" : ", ",
                         QuoteIdent(c.name), c.type_sql);
    }
    DT_RETURN_IF_ERROR(conn_->Exec(fmt::format("ALTER TABLE dt_tick_{} {}", table, add)));
    tick_staging_[table] = true;
    return Status::OK();
  }
  // Like dt_stage_N (no constraints, ON COMMIT PRESERVE ROWS, emptied by
  // the transaction that fills it), created before the transaction begins.
  DT_RETURN_IF_ERROR(conn_->Exec(fmt::format(
      "DROP TABLE IF EXISTS pg_temp.dt_tick_{0}; "
      "CREATE TEMP TABLE dt_tick_{0} AS SELECT * FROM {1} WITH NO DATA; "
      "ALTER TABLE dt_tick_{0} ADD COLUMN \"_dt_op\" \"char\", ADD COLUMN \"_dt_epoch\" bigint, "
      "ADD COLUMN \"_dt_tick\" bigint, ADD COLUMN \"_dt_seq\" bigint, "
      "ADD COLUMN \"_dt_sub\" integer, ADD COLUMN \"_dt_absent\" text",
      table, spec.target.Quoted())));
  tick_staging_[table] = true;
  return Status::OK();
}

bool Applier::Direct(uint32_t t) const {
  return !(*targets_)[t].key.empty() && !(t < order_.linked.size() && order_.linked[t]);
}

Result<bool> Applier::WriteDirect(uint32_t t, const std::vector<const Change*>& changes) {
  const TableSpec& spec = (*targets_)[t];
  // Only while nothing of the table is staged (what is staged is written
  // at the end, so what goes straight in must precede it), for a keyed table
  // no foreign key links to another tunnel table (no other table's part of
  // the tick can be missing for it).
  if (staged_rows_[t].any || !Direct(t)) return false;
  // What the piece holds of the table: inserts (and snapshot rows) with
  // the same columns, deletes by one key column (not an array: the keys go
  // as one), updates that each carry a column outside the key, or a mix of
  // them (WriteMixed()).
  size_t packed = 0;
  int64_t chunk_rows = 0;
  for (const Change* c : changes) {
    if (c->packed_rows > 0) ++packed;
    chunk_rows += c->packed_rows;
  }
  if (packed > 0) {
    // Snapshot chunks, as Apply() writes them (a COPY straight in, or
    // staged and upserted); mixed with other changes the piece is staged.
    if (packed != changes.size() || !staged_[t]) return false;
    bool used = std::find(used_.begin(), used_.end(), t) != used_.end();
    failed_table_ = static_cast<int>(t);
    for (const Change* c : changes) {
      DT_RETURN_IF_ERROR(WriteRows(t, ChunkColumns(spec, c->row.Get(0)), c->row.Get(0), &used));
    }
    stream_direct_ += chunk_rows;
    return true;
  }
  bool inserts = true, deletes = true, updates = true, mixable = true;
  const Row& first = changes.front()->row;
  for (const Change* c : changes) {
    const bool insert = c->op == Op::kInsert || c->op == Op::kRead;
    inserts = inserts && insert && SameColumns(first, c->row);
    deletes = deletes && c->op == Op::kDelete && OneKeyColumn(spec, c->row);
    updates = updates && c->op == Op::kUpdate;
    mixable = mixable && c->op != Op::kTruncate && c->op != Op::kMarker &&
              (c->op != Op::kDelete || OneKeyColumn(spec, c->row));
  }
  if (updates) {
    for (const auto& [cols, rows] : GroupByColumns(spec, changes)) {
      if (UpdateSet(spec, cols).empty()) updates = false;
    }
  }
  if (!inserts && !deletes && !updates) {
    if (!mixable) return false;
    return WriteMixed(t, changes);
  }
  // A key's changes come in order (one partition, in offset order), so
  // writing this piece's net effect now leaves what writing it at the end
  // would.
  failed_table_ = static_cast<int>(t);
  std::string data;
  if (deletes) {
    // Sent ahead: the target deletes while the next piece is decoded.
    DT_RETURN_IF_ERROR(DeleteKeyArray(*conn_, spec, changes, /*send_ahead=*/true));
    sent_ = Sent{t, {}, 0};
  } else if (updates) {
    // The piece's newest change per key, each an UPDATE joined on the key
    // (UpdateRows; a key the target lacks is inserted): the target works
    // on one piece while the next is read, where staged to the tick's end
    // the UPDATEs all waited for the last piece.
    const TableEffect eff = Collapse(spec, changes);
    if (!staged_[t]) {
      // Created inside the open transaction: gone again if it rolls back.
      DT_RETURN_IF_ERROR(EnsureStaging(t));
      stage_created_.push_back(t);
    }
    // Filled by an earlier piece of this transaction: emptied first.
    bool used = std::find(used_.begin(), used_.end(), t) != used_.end();
    // The UPDATE is sent ahead (FinishSent() waits for it): the target
    // runs it while the consumer decodes the next piece.
    for (const auto& [cols, rows] : GroupByColumns(spec, eff.upserts)) {
      data.clear();
      AppendCopyRows(rows, cols, &data);
      DT_RETURN_IF_ERROR(UpdateRows(t, cols, rows.size(), data, &used, /*send_ahead=*/true));
    }
  } else if (inserts) {
    const std::vector<size_t> cols = WrittenColumns(spec, first);
    AppendCopyRows(changes, cols, &data);
    // A key already in the target (say a snapshot row) undoes the COPY;
    // the table is staged from then on.
    DT_RETURN_IF_ERROR(conn_->Exec("SAVEPOINT dt_direct"));
    Status copied = conn_->CopyIn(
        fmt::format("COPY {} ({}) FROM STDIN", spec.target.Quoted(), ColumnList(spec, cols)), data);
    if (!copied.ok()) {
      if (conn_->last_sqlstate() != "23505") return copied;
      DT_RETURN_IF_ERROR(conn_->Exec("ROLLBACK TO SAVEPOINT dt_direct"));
      return false;
    }
    DT_RETURN_IF_ERROR(conn_->Exec("RELEASE SAVEPOINT dt_direct"));
  }
  stream_direct_ += static_cast<int64_t>(changes.size());
  return true;
}

Result<bool> Applier::WriteMixed(uint32_t t, const std::vector<const Change*>& changes) {
  // dt_stage_N is made before the tick's transaction: not after the
  // table's columns changed inside it (Invalidate()).
  if (!staged_[t]) return false;
  const TableSpec& spec = (*targets_)[t];
  // The piece's net effect per key, as a batch by key has it: each key's
  // changes are in this piece in source order (one partition, offset
  // order; in memory in tick order), so later pieces only add to it.
  std::vector<const Change*> ordered(changes);
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const Change* a, const Change* b) { return a->pos < b->pos; });
  const TableEffect eff = Collapse(spec, ordered);
  failed_table_ = static_cast<int>(t);
  // A row that another unique index of the target still holds (its delete
  // comes in a later piece) undoes the writes: the table is staged from
  // then on, and written at the end as a whole.
  DT_RETURN_IF_ERROR(conn_->Exec("SAVEPOINT dt_direct"));
  const auto undo = [&](const Status& st) -> Result<bool> {
    if (conn_->last_sqlstate() != "23505") return st;
    DT_RETURN_IF_ERROR(conn_->Exec("ROLLBACK TO SAVEPOINT dt_direct"));
    return false;
  };
  if (!eff.deletes.empty()) {
    if (Status st = DeleteKeyArray(*conn_, spec, eff.deletes); !st.ok()) return undo(st);
  }
  // Keys whose newest change is an UPDATE go by UpdateRows (the target's
  // triggers see an UPDATE, as in a batch by key), the rest are upserted.
  // dt_stage_N exists (StagePiece() created it before the transaction); it
  // may hold the rows of an earlier UpdateRows of this transaction.
  bool used = std::find(used_.begin(), used_.end(), t) != used_.end();
  std::vector<const Change*> updates, others;
  for (const Change* c : eff.upserts) (c->op == Op::kUpdate ? updates : others).push_back(c);
  std::string data;
  for (const auto* part : {&updates, &others}) {
    for (const auto& [cols, rows] : GroupByColumns(spec, *part)) {
      data.clear();
      AppendCopyRows(rows, cols, &data);
      Status st;
      if (part == &updates && !UpdateSet(spec, cols).empty()) {
        st = UpdateRows(t, cols, rows.size(), data, &used);
      } else {
        // Mostly keys the target lacks (inserts): one COPY straight in,
        // else staged and upserted (WriteRows). Staged and upserted every
        // time, a 1,000,000-change backlog through the broker (half of it
        // inserts) applied at 0.7x key mode's rate (bench/README.md).
        st = WriteRows(t, cols, data, &used);
      }
      if (!st.ok()) return undo(st);
    }
  }
  DT_RETURN_IF_ERROR(conn_->Exec("RELEASE SAVEPOINT dt_direct"));
  stream_direct_ += static_cast<int64_t>(changes.size());
  return true;
}

Status Applier::StageRows(std::span<const Change* const> changes) {
  std::vector<std::vector<const Change*>> by_table(targets_->size());
  for (const Change* c : changes) {
    if (c->op == Op::kMarker) continue;
    by_table[c->table].push_back(c);
  }
  std::string data;
  for (uint32_t t = 0; t < by_table.size(); ++t) {
    if (by_table[t].empty()) continue;
    const TableSpec& spec = (*targets_)[t];
    DT_ASSIGN_OR_RETURN(bool direct, WriteDirect(t, by_table[t]));
    if (direct) continue;
    const std::vector<size_t> cols = Writable(spec);
    Staged& st = staged_rows_[t];
    st.any = true;
    data.clear();
    for (const Change* c : by_table[t]) {
      if (c->packed_rows > 0) {
        // A chunk is laid out like the target (its leading columns, none
        // generated): its lines as they are, a column added since as
        // absent, each with the tick's columns, positions counted up to
        // the chunk's (as UnpackChunk() counts).
        const std::string_view text = c->row.Get(0);
        const size_t fields = ChunkColumns(spec, text).size();
        std::string pad, absent;
        for (size_t i = fields; i < cols.size(); ++i) {
          pad += "\t\\N";
          absent += fmt::format("{}{}", absent.empty() ? "" : ",", cols[i]);
        }
        int64_t seq = c->pos.seq - (c->packed_rows - 1);
        for (size_t at = 0; at < text.size();) {
          size_t end = text.find('\n', at);
          if (end == std::string_view::npos) end = text.size();
          data.append(text.substr(at, end - at));
          data.append(pad);
          fmt::format_to(std::back_inserter(data), "\t{}\t{}\t{}\t{}\t{}\t{}\n",
                         static_cast<char>(Op::kRead), c->pos.epoch, c->pos.tick, seq++, c->pos.sub,
                         absent);
          at = end + 1;
        }
        st.shape.upserts = true;
        continue;
      }
      std::string absent;
      for (size_t i : cols) {
        if (c->op != Op::kTruncate && i < c->row.size() && c->row.HasValue(i)) {
          pg::AppendCopyEscaped(c->row.Get(i), &data);
        } else {
          if (c->op != Op::kTruncate && (i >= c->row.size() || c->row.IsAbsent(i))) {
            absent += fmt::format("{}{}", absent.empty() ? "" : ",", i);
          }
          data.append("\\N");
        }
        data.push_back('\t');
      }
      fmt::format_to(std::back_inserter(data), "{}\t{}\t{}\t{}\t{}\t{}\n", static_cast<char>(c->op),
                     c->pos.epoch, c->pos.tick, c->pos.seq, c->pos.sub, absent);
      switch (c->op) {
        case Op::kTruncate:
          st.shape.truncate = true;
          st.truncated = std::max(st.truncated, c->pos);
          break;
        case Op::kDelete:
          st.shape.deletes = true;
          break;
        case Op::kUpdate:
          st.updates = true;
          if (spec.key.empty()) {
            return Status::Fatal(fmt::format(
                "target table {} has no key (no primary key, unique index or configured key), "
                "but change {} of {} updates a row by its key: the source table has a key; run "
                "`datatunnel init` (it creates the unique index on the target) or set key = [...]",
                spec.target.ToString(), c->pos.ToString(), spec.source.ToString()));
          }
          st.shape.upserts = true;
          break;
        default:
          st.shape.upserts = true;
          break;
      }
    }
    if (spec.key.empty()) {
      st.shape.in_order = true;
      st.shape.upserts = st.shape.deletes = false;
    }
    failed_table_ = static_cast<int>(t);
    DT_RETURN_IF_ERROR(conn_->CopyIn(
        fmt::format("COPY dt_tick_{} ({}, {}) FROM STDIN", t, ColumnList(spec, cols), kTickColumns),
        data));
  }
  failed_table_ = -1;
  return Status::OK();
}

Status Applier::StreamFailed(Status st) {
  if (conn_->last_sqlstate() == kPositionMovedSqlState) position_moved_ = true;
  AbortStream();
  return st;
}

void Applier::AbortStream() {
  sent_.reset();  // the rollback below waits for it
  used_.clear();  // rolled back: the staging tables are as the last commit left them
  for (uint32_t t : stage_created_) staged_[t] = false;
  stage_created_.clear();
  if (stream_open_) {
    conn_->RollbackQuietly();
    // Columns added to a staging table inside it are gone again.
    tick_staging_.assign(targets_->size(), false);
  }
  stream_open_ = false;
  staged_rows_.clear();
}

Status Applier::StagePiece(std::span<const Change* const> changes,
                           std::span<const Advance> advances) {
  position_moved_ = false;
  failed_table_ = -1;
  // The last piece's write sent ahead: done before this piece's statements.
  if (Status st = FinishSent(); !st.ok()) return StreamFailed(st);
  Arena arena;
  std::vector<pg::Statement> head;
  // Every staging table the tick may need: before the transaction begins,
  // or (new columns) inside it.
  for (uint32_t t = 0; t < targets_->size(); ++t) {
    if (Status st = EnsureTickStaging(t); !st.ok()) return stream_open_ ? StreamFailed(st) : st;
    // A mixed piece written straight in goes through dt_stage_N.
    if (!stream_open_ && Direct(t)) DT_RETURN_IF_ERROR(EnsureStaging(t));
  }
  if (!stream_open_) {
    staged_rows_.assign(targets_->size(), Staged{});
    stream_direct_ = 0;
    Head({}, nullptr, &arena, &head);
    stream_open_ = true;
  }
  AddAdvances(advances, &arena, &head);
  if (!head.empty()) {
    if (Status st = conn_->ExecPipeline(head); !st.ok()) return StreamFailed(st);
  }
  if (Status st = StageRows(changes); !st.ok()) return StreamFailed(st);
  return Status::OK();
}

Status Applier::StreamStep(const Step& step) {
  const uint32_t t = step.tables[0];
  const TableSpec& spec = (*targets_)[t];
  const Staged& st = staged_rows_[t];
  const std::string after = AfterTruncate(st.truncated);
  failed_table_ = static_cast<int>(t);
  if (step.kind == Step::Kind::kTruncate) {
    std::vector<pg::Statement> stmts;
    stmts.push_back({"SELECT pg_catalog.set_config('datatunnel.tunnel_truncate', 'on', true)", {}});
    std::string list;
    for (uint32_t tt : step.tables)
      list += (list.empty() ? "" : ", ") + (*targets_)[tt].target.Quoted();
    stmts.push_back({"TRUNCATE " + list, {}});
    failed_table_ = -1;
    return conn_->ExecPipeline(stmts);
  }
  if (step.kind == Step::Kind::kInOrder) {
    // No key (full-row identity): the target holds the source's multiset,
    // so within the tick every insert can go first (a delete only ever
    // removes a row the source had then), then each delete removes one
    // equal row, compared as text with NULLs equal, absent columns skipped.
    DT_ASSIGN_OR_RETURN(auto groups,
                        conn_->Query(fmt::format("SELECT DISTINCT \"_dt_absent\" FROM dt_tick_{} "
                                                 "WHERE \"_dt_op\" IN ('c', 'r'){}",
                                                 t, after)));
    for (int g = 0; g < groups.rows(); ++g) {
      const std::string absent(groups.Get(g, 0));
      const std::string list = ColumnList(spec, Carried(spec, absent));
      DT_RETURN_IF_ERROR(conn_
                             ->Query(fmt::format("INSERT INTO {} ({}) SELECT {} FROM dt_tick_{} "
                                                 "WHERE \"_dt_op\" IN ('c', 'r') AND "
                                                 "\"_dt_absent\" = $1{}",
                                                 spec.target.Quoted(), list, list, t, after),
                                     {absent})
                             .status());
    }
    if (!st.shape.deletes) return Status::OK();
    std::string match;
    for (size_t i : Writable(spec)) {
      const std::string n = QuoteIdent(spec.columns[i].name);
      match += fmt::format(
          "{}(position(',{},' in ',' || r.\"_dt_absent\" || ',') > 0 OR "
          "x.{}::text IS NOT DISTINCT FROM r.{}::text)",
          match.empty() ? "" : " AND ", i, n, n);
    }
    // One statement per delete, as AddKeyless, run by the server.
    return conn_->Exec(fmt::format(
        "DO $dt$ DECLARE r record; BEGIN FOR r IN SELECT * FROM dt_tick_{0} WHERE "
        "\"_dt_op\" = 'd'{1} LOOP "
        "WITH m AS MATERIALIZED (SELECT x.tableoid AS o, x.ctid AS c FROM {2} x WHERE {3} "
        "LIMIT 1) DELETE FROM {2} WHERE ctid = (SELECT c FROM m) AND tableoid = (SELECT o FROM m); "
        "END LOOP; END $dt$",
        t, after, spec.target.Quoted(), match.empty() ? "true" : match));
  }
  if (step.kind == Step::Kind::kUpsert && !staged_rows_[t].reduced) {
    // Inserts only (InsertsOnly()): while none of their keys is in the
    // target or twice in the tick, a plain INSERT writes them (about half
    // the time of INSERT ... ON CONFLICT, and no reduction per key). A key
    // already there rolls it back to the reduction and the upsert below.
    DT_ASSIGN_OR_RETURN(bool written, InsertStaged(t));
    if (written) return Status::OK();
    DT_RETURN_IF_ERROR(Reduce(t));
  }
  if (step.kind == Step::Kind::kDelete) {
    return conn_->Exec(
        fmt::format("DELETE FROM {} AS t USING dt_{}_{} AS k WHERE k.\"_dt_op\" = 'd' AND {}",
                    spec.target.Quoted(), st.reduced ? "net" : "tick", t, KeyMatch(spec, "k")));
  }
  // Per set of columns carried: its updates, then the rest.
  DT_ASSIGN_OR_RETURN(auto groups,
                      conn_->Query(fmt::format("SELECT \"_dt_absent\", "
                                               "count(*) FILTER (WHERE \"_dt_op\" = 'u'), "
                                               "count(*) FILTER (WHERE \"_dt_op\" <> 'u') "
                                               "FROM dt_net_{} WHERE \"_dt_op\" <> 'd' GROUP BY 1",
                                               t)));
  for (int g = 0; g < groups.rows(); ++g) {
    const std::string absent(groups.Get(g, 0));
    const int64_t updates = groups.GetInt64(g, 1), others = groups.GetInt64(g, 2);
    const std::vector<size_t> cols = Carried(spec, absent);
    const std::string list = ColumnList(spec, cols);
    const std::string set = UpdateSet(spec, cols);
    std::string rest = "\"_dt_op\" <> 'd'";
    if (updates > 0 && !set.empty()) {
      // A key whose newest change is an UPDATE: a plain UPDATE joined on
      // the key (as Applier::UpdateRows), then the keys the target lacks.
      DT_ASSIGN_OR_RETURN(
          auto updated,
          conn_->Query(fmt::format("UPDATE {} AS t SET {} FROM dt_net_{} AS s WHERE "
                                   "s.\"_dt_op\" = 'u' AND s.\"_dt_absent\" = $1 AND {}",
                                   spec.target.Quoted(), set, t, KeyMatch(spec)),
                       {absent}));
      if (updated.AffectedRows() < updates) {
        DT_RETURN_IF_ERROR(
            conn_
                ->Query(InsertMissing(spec, cols, fmt::format("dt_net_{}", t),
                                      "s.\"_dt_op\" = 'u' AND s.\"_dt_absent\" = $1 AND "),
                        {absent})
                .status());
      }
      if (others == 0) continue;
      rest = "\"_dt_op\" NOT IN ('d', 'u')";
    }
    DT_RETURN_IF_ERROR(conn_
                           ->Query(fmt::format("INSERT INTO {} ({}) SELECT {} FROM dt_net_{} "
                                               "WHERE {} AND \"_dt_absent\" = $1{}",
                                               spec.target.Quoted(), list, list, t, rest,
                                               ConflictClause(spec, cols)),
                                   {absent})
                           .status());
  }
  return Status::OK();
}

bool Applier::InsertsOnly(const Staged& st) {
  return st.shape.upserts && !st.shape.deletes && !st.shape.truncate && !st.updates;
}

bool Applier::DeletesOnly(const Staged& st) {
  return st.shape.deletes && !st.shape.upserts && !st.shape.truncate;
}

Status Applier::Reduce(uint32_t t) {
  Staged& st = staged_rows_[t];
  failed_table_ = static_cast<int>(t);
  // As Collapse() does in memory; dropped at COMMIT.
  DT_RETURN_IF_ERROR(conn_->Exec(
      fmt::format("CREATE TEMP TABLE dt_net_{0} ON COMMIT DROP AS SELECT DISTINCT ON ({1}) * FROM "
                  "dt_tick_{0} WHERE \"_dt_op\" <> 't'{2} ORDER BY {1}, {3}; ANALYZE dt_net_{0}",
                  t, KeyList((*targets_)[t]), AfterTruncate(st.truncated), kTickOrderDesc)));
  st.reduced = true;
  return Status::OK();
}

Result<bool> Applier::InsertStaged(uint32_t t) {
  const TableSpec& spec = (*targets_)[t];
  DT_ASSIGN_OR_RETURN(
      auto groups, conn_->Query(fmt::format("SELECT DISTINCT \"_dt_absent\" FROM dt_tick_{}", t)));
  DT_RETURN_IF_ERROR(conn_->Exec("SAVEPOINT dt_plain"));
  for (int g = 0; g < groups.rows(); ++g) {
    const std::string absent(groups.Get(g, 0));
    const std::string list = ColumnList(spec, Carried(spec, absent));
    Status st = conn_
                    ->Query(fmt::format("INSERT INTO {} ({}) SELECT {} FROM dt_tick_{} "
                                        "WHERE \"_dt_absent\" = $1",
                                        spec.target.Quoted(), list, list, t),
                            {absent})
                    .status();
    if (st.ok()) continue;
    if (conn_->last_sqlstate() != "23505") return st;  // not a key already there
    DT_RETURN_IF_ERROR(conn_->Exec("ROLLBACK TO SAVEPOINT dt_plain"));
    return false;
  }
  DT_RETURN_IF_ERROR(conn_->Exec("RELEASE SAVEPOINT dt_plain"));
  return true;
}

Status Applier::FinishStream(std::span<const Change* const> changes,
                             std::span<const Advance> advances, const TickMark* tick) {
  DT_RETURN_IF_ERROR(StagePiece(changes, advances));
  if (Status s = FinishSent(); !s.ok()) return StreamFailed(s);
  position_moved_ = false;
  std::vector<Shape> shapes(targets_->size());
  for (uint32_t t = 0; t < targets_->size(); ++t) shapes[t] = staged_rows_[t].shape;
  // Each keyed table's net effect: its newest change per key after its last
  // TRUNCATE (dt_net_N); a table of inserts only first tries without.
  for (uint32_t t = 0; t < targets_->size(); ++t) {
    const Staged& st = staged_rows_[t];
    const TableSpec& spec = (*targets_)[t];
    if (!st.any || spec.key.empty() || !(st.shape.deletes || st.shape.upserts)) continue;
    if (InsertsOnly(st)) continue;
    Status s;
    if (DeletesOnly(st)) {
      // Deleting a key twice deletes it once: no reduction needed, but
      // statistics for the join (as Reduce() gathers).
      failed_table_ = static_cast<int>(t);
      s = conn_->Exec(fmt::format("ANALYZE dt_tick_{}", t));
    } else {
      s = Reduce(t);
    }
    if (!s.ok()) return StreamFailed(s);
  }
  for (const Step& step : Steps(shapes)) {
    if (Status s = StreamStep(step); !s.ok()) return StreamFailed(s);
  }
  failed_table_ = -1;
  Arena arena;
  std::vector<pg::Statement> tail;
  if (tick) {
    pg::Statement st;
    st.sql = StoreConsistencySql();
    st.params = {
        arena.Keep(tunnel_), arena.Keep(tick->stream), arena.Keep(std::to_string(tick->offset)),
        arena.Keep(std::to_string(tick->end.epoch)), arena.Keep(std::to_string(tick->end.tick))};
    tail.push_back(std::move(st));
  }
  std::string list;
  for (uint32_t t = 0; t < targets_->size(); ++t) {
    if (staged_rows_[t].any) list += fmt::format("{}dt_tick_{}", list.empty() ? "" : ", ", t);
  }
  if (!list.empty()) tail.push_back({"TRUNCATE " + list, {}});
  AddEmptyStaging(&tail);  // dt_stage_N of updates written straight in
  tail.push_back({"COMMIT", {}});
  if (Status s = conn_->ExecPipeline(tail); !s.ok()) return StreamFailed(s);
  stage_created_.clear();
  stream_open_ = false;
  staged_rows_.clear();
  return Status::OK();
}

}  // namespace datatunnel::apply
