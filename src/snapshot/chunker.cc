#include "snapshot/chunker.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "capture/change_log.h"
#include "core/clock.h"
#include "pg/catalog.h"

namespace datatunnel::snapshot {

Result<Chunker> Chunker::Create(pg::Connection& source, const TableSpec& spec, uint32_t table,
                                int max_rows, int64_t max_bytes,
                                std::vector<std::vector<size_t>> self_refs) {
  DT_ASSIGN_OR_RETURN(auto info, pg::LoadTable(source, spec.source));
  if (!info) {
    return Status::Fatal(fmt::format("source table {} no longer exists", spec.source.ToString()));
  }
  Chunker c;
  c.spec_ = &spec;
  c.table_ = table;
  c.max_rows_ = max_rows;
  c.max_bytes_ = max_bytes;
  std::set<std::string> key;
  for (size_t k : spec.key) key.insert(spec.columns[k].name);
  for (const auto& u : info->unique_keys) {
    if (std::set<std::string>(u.begin(), u.end()) == key) c.key_ordered_ = c.unique_key_ = true;
  }
  if (!c.key_ordered_ && info->relkind == 'p') {
    // A partitioned table has no pages of its own to read by ctid: read it
    // in key order (correct, but each chunk sorts what is left to read).
    c.key_ordered_ = true;
    spdlog::warn(
        "snapshot of {}: partitioned table without a unique index on its key ({}): reading it "
        "in key order without an index is slow; add a primary key or unique index on the key",
        spec.source.ToString(), fmt::join(key, ", "));
  }
  if (c.key_ordered_) {
    c.self_refs_ = std::move(self_refs);
  } else if (!self_refs.empty()) {
    spdlog::warn(
        "snapshot of {}: it references itself but is read in physical order (no unique index "
        "on its key): a chunk may reference rows not copied yet; add a primary key",
        spec.source.ToString());
  }
  for (size_t i = 0; i < spec.columns.size(); ++i) {
    if (i) c.select_list_ += ", ";
    c.select_list_ += QuoteIdent(spec.columns[i].name);
  }
  DT_ASSIGN_OR_RETURN(auto est,
                      source.Query("SELECT c.reltuples, c.relpages, "
                                   "  c.relpages::bigint * current_setting('block_size')::bigint "
                                   "FROM pg_catalog.pg_class c WHERE c.oid = $1::oid",
                                   {std::to_string(info->oid)}));
  double tuples = std::strtod(std::string(est.Get(0, 0)).c_str(), nullptr);
  double pages = static_cast<double>(est.GetInt64(0, 1));
  double bytes = static_cast<double>(est.GetInt64(0, 2));
  if (tuples > 0 && pages > 0) c.rows_per_page_ = std::max(1.0, tuples / pages);
  if (tuples > 0 && bytes > 0) c.avg_row_bytes_ = std::max(16.0, bytes / tuples);
  return c;
}

Result<Chunk> Chunker::Read(pg::Connection& source, const Cursor& cursor, int64_t epoch,
                            int64_t tick, bool packed) {
  const TableSpec& spec = *spec_;
  // Bound the chunk by rows and (estimated) bytes: it is held in memory until
  // the batch before it is published.
  // The first chunks are small and grow fourfold up to the bound, so the
  // first rows reach the target while later ones are still being read.
  int64_t limit = std::clamp<int64_t>(static_cast<int64_t>(max_bytes_ / avg_row_bytes_), 1,
                                      std::min<int64_t>(max_rows_, ramp_rows_));
  ramp_rows_ = std::min<int64_t>(ramp_rows_ * 4, max_rows_);
  Chunk chunk;
  // Packed: COPY (SELECT ...) TO STDOUT, which takes no parameters, so the
  // values go in as literals. The last row's fields, for the key cursor.
  std::vector<std::optional<std::string>> last_fields;
  std::vector<pg::Param> params;
  // A value for the query: a parameter, or packed a literal.
  auto arg = [&](const pg::Param& v) -> std::string {
    if (packed) return v ? QuoteLiteral(*v) : std::string("NULL");
    params.push_back(v);
    return fmt::format("${}", params.size());
  };
  auto read = [&](const std::string& select) -> Status {
    chunk.rows.clear();
    chunk.copy_text.clear();
    chunk.count = 0;
    if (packed) {
      size_t last_line = 0;
      DT_RETURN_IF_ERROR(
          source.CopyOut(fmt::format("COPY ({}) TO STDOUT", select), [&](std::string_view line) {
            last_line = chunk.copy_text.size();
            chunk.copy_text.append(line);
            chunk.copy_text.push_back('\n');
            ++chunk.count;
            return Status::OK();
          }));
      chunk.bytes = static_cast<int64_t>(chunk.copy_text.size());
      if (chunk.count > 0 &&
          !pg::SplitCopyLine(std::string_view(chunk.copy_text)
                                 .substr(last_line, chunk.copy_text.size() - last_line - 1),
                             &last_fields)) {
        return Status::Fatal(
            fmt::format("snapshot of {}: cannot read a row the server sent in "
                        "COPY text format",
                        spec.source.ToString()));
      }
      return Status::OK();
    }
    DT_ASSIGN_OR_RETURN(auto rows, source.Query(select, params));
    const int n = rows.rows();
    const size_t ncols = spec.columns.size();
    const int64_t now = NowMicros();
    chunk.rows.reserve(static_cast<size_t>(n));
    chunk.bytes = 0;
    for (int i = 0; i < n; ++i) {
      Change c;
      c.op = Op::kRead;
      c.table = table_;
      c.pos = Position{epoch, tick, Position::kSnapshotSeqBase + i, 0};
      c.captured_us = now;
      rows.ReadRow(i, 0, ncols, &c.row);
      chunk.bytes += static_cast<int64_t>(c.row.ByteSize());
      chunk.rows.push_back(std::move(c));
    }
    chunk.count = n;
    return Status::OK();
  };
  if (key_ordered_) {
    std::string order, lhs;
    for (size_t i = 0; i < spec.key.size(); ++i) {
      const Column& col = spec.columns[spec.key[i]];
      if (i) {
        order += ", ";
        lhs += ", ";
      }
      order += QuoteIdent(col.name);
      lhs += QuoteIdent(col.name);
    }
    std::string where;
    if (!cursor.empty()) {
      if (cursor.size() != spec.key.size() + 1 || cursor[0] != "key") {
        return Status::Fatal(fmt::format(
            "the snapshot cursor of {} does not match its key; restart the snapshot with "
            "`datatunnel snapshot --restart`",
            spec.source.ToString()));
      }
      std::string rhs;
      for (size_t i = 0; i < spec.key.size(); ++i) {
        rhs += fmt::format("{}{}::{}", i ? ", " : "",
                           arg(cursor[i + 1] ? pg::Param(*cursor[i + 1]) : pg::Param()),
                           spec.columns[spec.key[i]].type_sql);
      }
      where = fmt::format(" WHERE ({}) > ({})", lhs, rhs);
    }
    const std::string limit_s = std::to_string(limit);
    const std::string limit_arg = arg(limit_s);
    DT_RETURN_IF_ERROR(
        read(fmt::format("SELECT {} FROM {}{} ORDER BY {} LIMIT {}::bigint", select_list_,
                         spec.source.Quoted(), where, order, limit_arg)));
    chunk.last = chunk.count < limit;
    if (chunk.count > 0) {
      chunk.next = {std::string("key")};
      for (size_t k : spec.key) {
        if (packed) {
          chunk.next.push_back(k < last_fields.size() ? last_fields[k] : std::nullopt);
        } else {
          const Row& lastrow = chunk.rows.back().row;
          chunk.next.push_back(lastrow.IsNull(k) ? std::nullopt
                                                 : std::optional<std::string>(lastrow.Get(k)));
        }
      }
    } else {
      chunk.next = cursor;
    }
    if (chunk.count > 0 && !self_refs_.empty()) {
      // The rows the chunk's rows reference through a self-reference,
      // directly or through others, that lie outside the chunk (UNION
      // stops at a cycle).
      params.clear();
      auto tuple = [&](const Cursor& c) {
        std::string out;
        for (size_t i = 0; i < spec.key.size(); ++i) {
          out += fmt::format("{}{}::{}", i ? ", " : "",
                             arg(c[i + 1] ? pg::Param(*c[i + 1]) : pg::Param()),
                             spec.columns[spec.key[i]].type_sql);
        }
        return out;
      };
      std::string range = fmt::format("({}) <= ({})", lhs, tuple(chunk.next));
      if (!cursor.empty()) range = fmt::format("({}) > ({}) AND {}", lhs, tuple(cursor), range);
      std::string need, values, not_null, join;
      for (size_t i = 0; i < spec.key.size(); ++i) {
        const std::string n = QuoteIdent(fmt::format("dt$n{}", i));
        need += (i ? ", " : "") + n;
        not_null += fmt::format("{}v.{} IS NOT NULL", i ? " AND " : "", n);
        join += fmt::format("{}s.{} = d.{}", i ? " AND " : "",
                            QuoteIdent(spec.columns[spec.key[i]].name), n);
      }
      for (size_t f = 0; f < self_refs_.size(); ++f) {
        values += f ? ", (" : "(";
        for (size_t i = 0; i < self_refs_[f].size(); ++i) {
          values += (i ? ", s." : "s.") + QuoteIdent(spec.columns[self_refs_[f][i]].name);
        }
        values += ")";
      }
      const std::string refs = fmt::format("CROSS JOIN LATERAL (VALUES {}) v({})", values, need);
      const std::string closure = fmt::format(
          "WITH RECURSIVE dt_need({0}) AS ("
          "SELECT v.* FROM {1} s {2} WHERE {3} AND {4} "
          "UNION SELECT v.* FROM {1} s JOIN dt_need d ON {5} {2} WHERE {4}) "
          "SELECT {6} FROM {1} WHERE ({7}) IN (SELECT {0} FROM dt_need) AND NOT ({3})",
          need, spec.source.Quoted(), refs, range, not_null, join, select_list_, lhs);
      const int64_t own = chunk.count;
      if (packed) {
        DT_RETURN_IF_ERROR(
            source.CopyOut(fmt::format("COPY ({}) TO STDOUT", closure), [&](std::string_view line) {
              chunk.copy_text.append(line);
              chunk.copy_text.push_back('\n');
              ++chunk.count;
              return Status::OK();
            }));
        chunk.bytes = static_cast<int64_t>(chunk.copy_text.size());
      } else {
        DT_ASSIGN_OR_RETURN(auto rows, source.Query(closure, params));
        const int64_t now = NowMicros();
        for (int i = 0; i < rows.rows(); ++i) {
          Change c;
          c.op = Op::kRead;
          c.table = table_;
          c.pos = Position{epoch, tick, Position::kSnapshotSeqBase + chunk.count, 0};
          c.captured_us = now;
          rows.ReadRow(i, 0, spec.columns.size(), &c.row);
          chunk.bytes += static_cast<int64_t>(c.row.ByteSize());
          chunk.rows.push_back(std::move(c));
          ++chunk.count;
        }
      }
      if (chunk.count > own) {
        spdlog::debug("snapshot of {}: {} referenced row(s) copied with a chunk of {}",
                      spec.source.ToString(), chunk.count - own, own);
      }
    }
  } else {
    // {"page", n, file}: `file` is the relation file the pages were counted
    // in. VACUUM FULL, CLUSTER, TRUNCATE and rewriting ALTER TABLEs write the
    // rows into a new file, in another order: rows not copied yet may then
    // sit below n. So a new file means copying again from page 0 (rows
    // already copied are overwritten with the same or a later image).
    int64_t page = 0;
    std::string file;
    if (!cursor.empty()) {
      if ((cursor.size() != 2 && cursor.size() != 3) || cursor[0] != "page" || !cursor[1]) {
        return Status::Fatal(
            fmt::format("the snapshot cursor of {} is not a page cursor; restart the snapshot with "
                        "`datatunnel snapshot --restart`",
                        spec.source.ToString()));
      }
      page = std::strtoll(cursor[1]->c_str(), nullptr, 10);
      if (cursor.size() == 3 && cursor[2]) file = *cursor[2];
    }
    const int64_t pages = std::max<int64_t>(1, static_cast<int64_t>(limit / rows_per_page_));
    for (;;) {
      params.clear();
      const std::string lo = fmt::format("({},0)", page), hi = fmt::format("({},0)", page + pages);
      const std::string lo_arg = arg(lo), hi_arg = arg(hi);
      DT_RETURN_IF_ERROR(
          read(fmt::format("SELECT {} FROM {} WHERE ctid >= {}::tid AND ctid < {}::tid",
                           select_list_, spec.source.Quoted(), lo_arg, hi_arg)));
      // After the read, which holds the table's lock until the tick commits:
      // the file and size are those of the rows just read.
      DT_ASSIGN_OR_RETURN(auto rel, source.Query(fmt::format(
                                        "SELECT pg_catalog.pg_relation_filenode('{0}'::regclass), "
                                        "pg_catalog.pg_relation_size('{0}'::regclass) / "
                                        "current_setting('block_size')::bigint",
                                        spec.source.Quoted())));
      const std::string current(rel.Get(0, 0));
      if (page == 0 || file == current) {
        chunk.next = {std::string("page"), std::to_string(page + pages), current};
        chunk.last = page + pages >= rel.GetInt64(0, 1);
        break;
      }
      if (file.empty()) {
        // Recorded by a datatunnel that did not note the file: unknown, so
        // start over to be safe.
        spdlog::warn(
            "snapshot of {}: the snapshot cursor does not name the table's file (recorded by an "
            "older datatunnel); copying the table again from the first page",
            spec.source.ToString());
      } else {
        spdlog::warn(
            "snapshot of {}: the table was rewritten since page {} was reached (VACUUM FULL, "
            "CLUSTER, TRUNCATE or ALTER TABLE), so its rows moved; copying it again from the "
            "first page",
            spec.source.ToString(), page);
      }
      page = 0;
    }
  }
  if (chunk.count > 0) {
    avg_row_bytes_ = std::max(16.0, static_cast<double>(chunk.bytes) / chunk.count);
  }
  return chunk;
}

namespace {

// The rows of a query for referenced rows, as reads at tick `tick`, after
// those `out` holds (kReferencedSeqBase onwards).
void AppendReferenced(const pg::QueryResult& rows, uint32_t table, size_t columns, int64_t epoch,
                      int64_t tick, std::vector<Change>* out) {
  const int64_t now = NowMicros();
  for (int i = 0; i < rows.rows(); ++i) {
    Change c;
    c.op = Op::kRead;
    c.table = table;
    c.pos = Position{epoch, tick, kReferencedSeqBase + static_cast<int64_t>(out->size()), 0};
    c.captured_us = now;
    rows.ReadRow(i, 0, columns, &c.row);
    out->push_back(std::move(c));
  }
}

// The referencing columns of each self-reference of a row `s`, as rows of
// a VALUES list: "(s.a), (s.b, s.c)".
std::string SelfRefValues(const TableSpec& spec, const std::vector<std::vector<size_t>>& refs) {
  std::string values;
  for (size_t f = 0; f < refs.size(); ++f) {
    values += f ? ", (" : "(";
    for (size_t i = 0; i < refs[f].size(); ++i) {
      values += (i ? ", s." : "s.") + QuoteIdent(spec.columns[refs[f][i]].name);
    }
    values += ")";
  }
  return values;
}

}  // namespace

Status Chunker::ReadReferencedByTick(pg::Connection& source, const Cursor& cursor,
                                     const std::string& lo_snapshot, int64_t epoch, int64_t tick,
                                     std::vector<Change>* out) {
  const TableSpec& spec = *spec_;
  // An empty cursor: nothing copied yet (the session's catch-up ran first).
  const bool after = !cursor.empty();
  if (self_refs_.empty() ||
      (after && (cursor.size() != spec.key.size() + 1 || cursor[0] != "key"))) {
    return Status::OK();
  }
  std::vector<pg::Param> params = {lo_snapshot};
  std::string copied, need, vneed, not_null, join, key;
  for (size_t i = 0; i < spec.key.size(); ++i) {
    const Column& col = spec.columns[spec.key[i]];
    if (after) {
      params.push_back(cursor[i + 1] ? pg::Param(*cursor[i + 1]) : pg::Param());
      copied += fmt::format("{}${}::{}", i ? ", " : "", params.size(), col.type_sql);
    }
    const std::string n = QuoteIdent(fmt::format("dt$n{}", i));
    need += (i ? ", " : "") + n;
    vneed += (i ? ", v." : "v.") + n;
    not_null += fmt::format("{}v.{} IS NOT NULL", i ? " AND " : "", n);
    join += fmt::format("{}s.{} = d.{}", i ? " AND " : "", QuoteIdent(col.name), n);
    key += (i ? ", " : "") + QuoteIdent(col.name);
  }
  const std::string values = SelfRefValues(spec, self_refs_);
  // Rows copied already are on the target, and so is what they reference.
  std::string refs =
      fmt::format("CROSS JOIN LATERAL (VALUES {}) v({}) WHERE {}", values, need, not_null);
  if (after) refs += fmt::format(" AND ({}) > ({})", vneed, copied);
  const std::string sql = fmt::format(
      "WITH RECURSIVE dt_w AS ({0}), dt_need({1}) AS ("
      "SELECT v.* FROM dt_w s {2} "
      "UNION SELECT v.* FROM {3} s JOIN dt_need d ON {4} {2}) "
      "SELECT {5} FROM {3} WHERE ({6}) IN (SELECT {1} FROM dt_need)",
      capture::TickWritesQuery(spec), need, refs, spec.source.Quoted(), join, select_list_, key);
  DT_ASSIGN_OR_RETURN(auto rows, source.Query(sql, params));
  AppendReferenced(rows, table_, spec.columns.size(), epoch, tick, out);
  return Status::OK();
}

Status Chunker::ReadAllReferenced(pg::Connection& source, const Cursor& cursor, int64_t epoch,
                                  int64_t tick, std::vector<Change>* out) {
  const TableSpec& spec = *spec_;
  if (self_refs_.empty()) return Status::OK();
  const bool after = !cursor.empty();
  if (after && (cursor.size() != spec.key.size() + 1 || cursor[0] != "key")) return Status::OK();
  std::vector<pg::Param> params;
  std::string copied, need, not_null, key;
  for (size_t i = 0; i < spec.key.size(); ++i) {
    const Column& col = spec.columns[spec.key[i]];
    if (after) {
      params.push_back(cursor[i + 1] ? pg::Param(*cursor[i + 1]) : pg::Param());
      copied += fmt::format("{}${}::{}", i ? ", " : "", params.size(), col.type_sql);
    }
    const std::string n = QuoteIdent(fmt::format("dt$n{}", i));
    need += (i ? ", v." : "v.") + n;
    not_null += fmt::format("{}v.{} IS NOT NULL", i ? " AND " : "", n);
    key += (i ? ", " : "") + QuoteIdent(col.name);
  }
  std::string names;
  for (size_t i = 0; i < spec.key.size(); ++i) {
    names += (i ? ", " : "") + QuoteIdent(fmt::format("dt$n{}", i));
  }
  const std::string values = SelfRefValues(spec, self_refs_);
  // Closed under references: a row it brings that references another row
  // after the cursor brings that one too.
  std::string sql = fmt::format(
      "SELECT {0} FROM {1} WHERE ({2}) IN (SELECT {3} FROM {1} s CROSS JOIN LATERAL (VALUES "
      "{4}) v({5}) WHERE {6})",
      select_list_, spec.source.Quoted(), key, need, values, names, not_null);
  if (after) sql += fmt::format(" AND ({}) > ({})", key, copied);
  DT_ASSIGN_OR_RETURN(auto rows, source.Query(sql, params));
  AppendReferenced(rows, table_, spec.columns.size(), epoch, tick, out);
  if (rows.rows() > 0) {
    spdlog::info("snapshot of {}: {} row(s) not copied yet that others reference sent again",
                 spec.source.ToString(), rows.rows());
  }
  return Status::OK();
}

Change PackedChange(Chunk* chunk, uint32_t table, int64_t epoch, int64_t tick) {
  Change packed;
  packed.op = Op::kRead;
  packed.table = table;
  packed.pos = Position{epoch, tick, Position::kSnapshotSeqBase + chunk->count - 1, 0};
  packed.captured_us = NowMicros();
  packed.packed_rows = chunk->count;
  packed.row.Assign(std::move(chunk->copy_text));
  return packed;
}

Change EndMarker(uint32_t table, int64_t epoch, int64_t tick, int64_t rows) {
  Change marker;
  marker.op = Op::kMarker;
  marker.marker = Marker::kSnapshotDone;
  marker.table = table;
  marker.pos = Position{epoch, tick, Position::kSnapshotSeqBase + rows, 1};
  marker.captured_us = NowMicros();
  return marker;
}

}  // namespace datatunnel::snapshot
