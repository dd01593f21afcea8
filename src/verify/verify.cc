#include "verify/verify.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <unordered_map>

#include "apply/install.h"
#include "core/json.h"

namespace datatunnel::verify {
namespace {

struct Plan {
  std::vector<std::string> columns;  // compared, in source order
  std::vector<std::string> key;      // key column names
  std::vector<std::string> key_types;
  std::string row_expr;  // md5 of the compared columns
  std::string key_expr;  // ROW(k...)::text
  std::string key_list;  // "k1", "k2"
};

std::string Join(const std::vector<std::string>& parts, const char* sep, const char* prefix = "") {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += prefix + QuoteIdent(parts[i]);
  }
  return out;
}

// A predicate for lo < key <= hi (either bound may be absent), binding the
// boundary values as parameters starting at $first.
std::string RangePredicate(const Plan& p, const std::optional<std::vector<std::string>>& lo,
                           const std::optional<std::vector<std::string>>& hi,
                           std::vector<std::string>* params) {
  std::string keys = "(" + p.key_list + ")";
  auto bound = [&](const std::vector<std::string>& b) {
    std::string out = "(";
    for (size_t i = 0; i < b.size(); ++i) {
      params->push_back(b[i]);
      out += fmt::format("{}${}::{}", i ? ", " : "", params->size(), p.key_types[i]);
    }
    return out + ")";
  };
  std::string pred;
  if (lo) pred += keys + " > " + bound(*lo);
  if (hi) pred += std::string(pred.empty() ? "" : " AND ") + keys + " <= " + bound(*hi);
  // Rows whose key has a NULL never compare; they are counted in the first range.
  std::string nulls;
  for (const auto& k : p.key) nulls += (nulls.empty() ? "" : " OR ") + QuoteIdent(k) + " IS NULL";
  if (!lo) pred = pred.empty() ? "true" : "(" + pred + ") OR " + nulls;
  return pred.empty() ? "true" : pred;
}

struct Aggregate {
  int64_t rows = 0;
  std::string sum;
};

Result<Aggregate> RangeAggregate(pg::Connection& conn, const QualifiedName& table, const Plan& p,
                                 const std::string& pred, const std::vector<std::string>& params) {
  std::vector<pg::Param> ps(params.begin(), params.end());
  DT_ASSIGN_OR_RETURN(
      auto r, conn.Query(fmt::format("SELECT count(*), COALESCE(sum(('x' || substr({}, 1, 15))"
                                     "::bit(60)::bigint::numeric), 0)::text FROM {} WHERE {}",
                                     p.row_expr, table.Quoted(), pred),
                         ps));
  return Aggregate{r.GetInt64(0, 0), std::string(r.Get(0, 1))};
}

Result<std::unordered_map<std::string, std::string>> RowHashes(
    pg::Connection& conn, const QualifiedName& table, const Plan& p, const std::string& pred,
    const std::vector<std::string>& params) {
  std::vector<pg::Param> ps(params.begin(), params.end());
  DT_ASSIGN_OR_RETURN(auto r, conn.Query(fmt::format("SELECT {}, {} FROM {} WHERE {}", p.key_expr,
                                                     p.row_expr, table.Quoted(), pred),
                                         ps));
  std::unordered_map<std::string, std::string> out;
  out.reserve(static_cast<size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i) out.emplace(r.Get(i, 0), r.Get(i, 1));
  return out;
}

// A table without a key (full-row identity): source and target must hold
// the same multiset of rows. One range, the whole table (row count and the
// sum of row hashes); when they differ, each distinct row's count on both
// sides names the rows missing or extra (a row text, with "×n" for copies).
Result<TableReport> VerifyMultiset(pg::Connection& source, pg::Connection& target,
                                   const TableSpec& s, const TableSpec& t, const Plan& p,
                                   const Options& options, TableReport rep) {
  rep.ranges = 1;
  DT_ASSIGN_OR_RETURN(auto a, RangeAggregate(source, s.source, p, "true", {}));
  DT_ASSIGN_OR_RETURN(auto b, RangeAggregate(target, t.target, p, "true", {}));
  if (a.rows == b.rows && a.sum == b.sum) return rep;
  rep.differing_ranges.push_back({"(all rows: the table has no key)", a.rows, b.rows});
  const std::string select = "SELECT ROW(" + Join(p.columns, ", ") + ")::text, count(*) FROM ";
  DT_ASSIGN_OR_RETURN(auto sr, source.Query(select + s.source.Quoted() + " GROUP BY 1"));
  DT_ASSIGN_OR_RETURN(auto tr, target.Query(select + t.target.Quoted() + " GROUP BY 1"));
  std::map<std::string, int64_t> diff;  // source copies minus target copies, by row text
  for (int i = 0; i < sr.rows(); ++i) diff[std::string(sr.Get(i, 0))] += sr.GetInt64(i, 1);
  for (int i = 0; i < tr.rows(); ++i) diff[std::string(tr.Get(i, 0))] -= tr.GetInt64(i, 1);
  for (const auto& [row, n] : diff) {
    if (n == 0) continue;
    rep.differing_keys += n > 0 ? n : -n;
    if (static_cast<int>(rep.keys.size()) >= options.max_keys) continue;
    rep.keys.push_back({n == 1 || n == -1 ? row : fmt::format("{} ×{}", row, n > 0 ? n : -n),
                        n > 0 ? "missing on target" : "extra on target"});
  }
  return rep;
}

}  // namespace

Result<TableReport> VerifyTable(pg::Connection& source, pg::Connection& target, const TableSpec& s,
                                const TableSpec& t, const Options& options) {
  TableReport rep;
  rep.source = s.source.ToString();
  rep.target = t.target.ToString();
  Plan p;
  for (const auto& c : s.columns) {
    if (t.ColumnIndex(c.name) < 0) {
      rep.schema_problems.push_back(fmt::format("column {} is missing on the target", c.name));
    } else {
      p.columns.push_back(c.name);
      const Column& tc = t.columns[static_cast<size_t>(t.ColumnIndex(c.name))];
      const apply::TypeFit fit = apply::ClassifyTypeChange(c, tc);
      if (fit != apply::TypeFit::kSame) {
        (fit == apply::TypeFit::kLossy ? rep.schema_problems : rep.notes)
            .push_back(fmt::format("column {} is {} on the target but {} on the source{}", c.name,
                                   tc.type_sql, c.type_sql,
                                   fit == apply::TypeFit::kLossy
                                       ? " (values can be refused or changed)"
                                       : " (every value fits)"));
      }
    }
  }
  for (const auto& c : t.columns) {
    if (s.ColumnIndex(c.name) < 0 && !c.generated) {
      rep.schema_problems.push_back(fmt::format("column {} exists only on the target", c.name));
    }
  }
  for (size_t k : s.key) {
    p.key.push_back(s.columns[k].name);
    p.key_types.push_back(s.columns[k].type_sql);
  }
  p.key_list = Join(p.key, ", ");
  p.row_expr = fmt::format("md5(ROW({})::text)", Join(p.columns, ", "));
  p.key_expr = fmt::format("ROW({})::text", p.key_list);

  DT_ASSIGN_OR_RETURN(auto sc, source.Query("SELECT count(*) FROM " + s.source.Quoted()));
  DT_ASSIGN_OR_RETURN(auto tc, target.Query("SELECT count(*) FROM " + t.target.Quoted()));
  rep.source_rows = sc.GetInt64(0, 0);
  rep.target_rows = tc.GetInt64(0, 0);
  const int64_t per_range =
      options.range_rows > 0
          ? options.range_rows
          : std::max<int64_t>(10000, std::max(rep.source_rows, rep.target_rows) / 32);

  if (p.key.empty()) return VerifyMultiset(source, target, s, t, p, options, std::move(rep));
  // Range boundaries from one sorted pass over the source's keys.
  std::vector<std::vector<std::string>> bounds;
  {
    std::string keys_text;
    for (size_t i = 0; i < p.key.size(); ++i) {
      keys_text += fmt::format("{}{}::text", i ? ", " : "", QuoteIdent(p.key[i]));
    }
    DT_ASSIGN_OR_RETURN(auto b, source.Query(fmt::format(
                                    "SELECT {} FROM (SELECT {}, row_number() OVER (ORDER BY {}) "
                                    "AS dt_rn FROM {} WHERE ({}) IS NOT NULL) AS s "
                                    "WHERE dt_rn % {} = 0 ORDER BY dt_rn",
                                    Join(p.key, ", "), p.key_list, p.key_list, s.source.Quoted(),
                                    p.key_list, per_range)));
    for (int i = 0; i < b.rows(); ++i) {
      std::vector<std::string> row;
      for (int c = 0; c < b.columns(); ++c) row.emplace_back(b.Get(i, c));
      bounds.push_back(std::move(row));
    }
  }
  rep.ranges = static_cast<int64_t>(bounds.size()) + 1;
  for (size_t r = 0; r <= bounds.size(); ++r) {
    std::optional<std::vector<std::string>> lo, hi;
    if (r > 0) lo = bounds[r - 1];
    if (r < bounds.size()) hi = bounds[r];
    std::vector<std::string> params;
    const std::string pred = RangePredicate(p, lo, hi, &params);
    DT_ASSIGN_OR_RETURN(auto a, RangeAggregate(source, s.source, p, pred, params));
    DT_ASSIGN_OR_RETURN(auto b, RangeAggregate(target, t.target, p, pred, params));
    if (a.rows == b.rows && a.sum == b.sum) continue;
    auto text = [](const std::optional<std::vector<std::string>>& v) {
      if (!v) return std::string("-inf");
      std::string out = "(";
      for (size_t i = 0; i < v->size(); ++i) out += (i ? "," : "") + (*v)[i];
      return out + ")";
    };
    rep.differing_ranges.push_back(
        {fmt::format("({}, {}]", text(lo), hi ? text(hi) : std::string("+inf")), a.rows, b.rows});
    DT_ASSIGN_OR_RETURN(auto sh, RowHashes(source, s.source, p, pred, params));
    DT_ASSIGN_OR_RETURN(auto th, RowHashes(target, t.target, p, pred, params));
    auto note = [&](const std::string& key, const char* kind) {
      ++rep.differing_keys;
      if (static_cast<int>(rep.keys.size()) < options.max_keys) rep.keys.push_back({key, kind});
    };
    std::vector<std::string> sorted;
    for (const auto& [k, h] : sh) sorted.push_back(k);
    std::sort(sorted.begin(), sorted.end());
    for (const auto& k : sorted) {
      auto it = th.find(k);
      if (it == th.end()) {
        note(k, "missing on target");
      } else if (it->second != sh[k]) {
        note(k, "values differ");
      }
    }
    sorted.clear();
    for (const auto& [k, h] : th) {
      if (!sh.count(k)) sorted.push_back(k);
    }
    std::sort(sorted.begin(), sorted.end());
    for (const auto& k : sorted) note(k, "extra on target");
  }
  return rep;
}

std::string ReportsJson(const std::vector<TableReport>& reports) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  auto strings = [&w](const char* key, const std::vector<std::string>& list) {
    w.Key(key);
    w.StartArray();
    for (const auto& s : list) w.String(s);
    w.EndArray();
  };
  w.StartObject();
  w.Key("equal");
  w.Bool(std::all_of(reports.begin(), reports.end(), [](const auto& r) { return r.equal(); }));
  w.Key("tables");
  w.StartArray();
  for (const auto& r : reports) {
    w.StartObject();
    w.Key("source");
    w.String(r.source);
    w.Key("target");
    w.String(r.target);
    w.Key("source_rows");
    w.Int64(r.source_rows);
    w.Key("target_rows");
    w.Int64(r.target_rows);
    w.Key("ranges");
    w.Int64(r.ranges);
    w.Key("differing_ranges");
    w.Uint64(r.differing_ranges.size());
    w.Key("differing_keys");
    w.Int64(r.differing_keys);
    w.Key("keys");
    w.StartArray();
    for (const auto& k : r.keys) {
      w.StartObject();
      w.Key("key");
      w.String(k.key);
      w.Key("difference");
      w.String(k.kind);
      w.EndObject();
    }
    w.EndArray();
    strings("schema_problems", r.schema_problems);
    strings("notes", r.notes);
    strings("gaps", r.gaps);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return JsonText(buf) + "\n";
}

}  // namespace datatunnel::verify
