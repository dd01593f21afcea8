#include "capture/schema_watch.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>

#include "capture/install.h"
#include "capture/snapshot_state.h"
#include "pg/catalog.h"

namespace datatunnel::capture {

namespace {

// A query of one text value standing for every column and type of the
// tables `oids` ("{oid,...}", our own catalog numbers, inlined), and how
// many of them exist: an md5 of them, as every tick evaluates it (with
// hundreds of tables the list itself would be tens of kilobytes a tick).
std::string SignatureQuery(const std::string& oids) {
  return fmt::format(
      "SELECT pg_catalog.md5(COALESCE(string_agg(a.attrelid::text || ':' || a.attname || ':' "
      "|| a.atttypid::text || ':' || a.atttypmod::text, ',' ORDER BY "
      "a.attrelid, a.attnum), '')) || '/' || (SELECT count(*) FROM "
      "pg_catalog.pg_class WHERE oid = ANY ('{0}'::oid[])) "
      "FROM pg_catalog.pg_attribute a WHERE a.attrelid = ANY ('{0}'::oid[]) "
      "AND a.attnum > 0 AND NOT a.attisdropped",
      oids);
}

// A query of one text value: for each table whose number (index into
// `oids`, "{oid,...}", inlined) the int[] SQL expression `tables` lists, in
// its order, an md5 of its columns and types ("-" for a table gone), joined
// by commas.
std::string TableSignatures(const std::string& oids, std::string_view tables) {
  return fmt::format(
      "SELECT COALESCE(string_agg(COALESCE(s.m, '-'), ',' ORDER BY u.o), '') FROM "
      "pg_catalog.unnest({1}) WITH ORDINALITY AS u(i, o) LEFT JOIN LATERAL (SELECT "
      "pg_catalog.md5(string_agg(a.attname || ':' || a.atttypid::text || ':' || "
      "a.atttypmod::text, ',' ORDER BY a.attnum)) AS m FROM pg_catalog.pg_attribute a "
      "WHERE a.attrelid = ('{0}'::oid[])[u.i + 1] AND a.attnum > 0 AND NOT a.attisdropped) s "
      "ON true",
      oids, tables);
}

}  // namespace

SchemaWatch::SchemaWatch(pg::Connection* conn, std::string tunnel,
                         const std::vector<TableSpec>* specs,
                         const std::vector<TableConfig>* tables)
    : conn_(conn), tunnel_(std::move(tunnel)), specs_(specs), tables_(tables) {}

Status SchemaWatch::Reconcile() {
  for (size_t t = 0; t < specs_->size(); ++t) {
    const TableSpec& spec = (*specs_)[t];
    DT_ASSIGN_OR_RETURN(auto drift, CheckSchema(*conn_, spec));
    if (drift.empty()) continue;
    const std::string name = spec.source.ToString();
    if (!drift.retyped.empty()) {
      return Status::Fatal(fmt::format(
          "the schema of source table {} changed ({}). Give the change table {} the new type "
          "(ALTER TABLE {} ALTER COLUMN ... TYPE ...), alter the column of target table {} too, "
          "then run `datatunnel init` and start again (docs/operations.md: \"A dropped, renamed "
          "or retyped column\")",
          name, drift.Describe(), spec.change_table.ToString(), spec.change_table.Quoted(),
          spec.target.ToString()));
    }
    if (!drift.dropped.empty()) {
      return Status::Fatal(fmt::format(
          "the schema of source table {} changed ({}). Changes from now on carry no value for a "
          "dropped column and the new type for a retyped one, while target table {} still has "
          "the old column: decide what the target should have (drop or alter the column there, "
          "or keep it), then run `datatunnel init` to accept the change and start again",
          name, drift.Describe(), spec.target.ToString()));
    }
    if ((*tables_)[t].schema_changes == SchemaChangePolicy::kStop) {
      return Status::Fatal(fmt::format(
          "the schema of source table {} changed ({}) and schema_changes is \"stop\": run "
          "`datatunnel init` to capture the new column(s) and add them to target table {}, then "
          "start again; or set schema_changes = \"evolve\" for this table to do it on the fly",
          name, drift.Describe(), spec.target.ToString()));
    }
    DT_RETURN_IF_ERROR(Evolve(spec, drift.Describe(), drift.added));
  }
  return Status::OK();
}

Status SchemaWatch::Evolve(const TableSpec& spec, const std::string& drift,
                           const std::vector<Column>& added) {
  // Capture the new columns (the event trigger usually already did, within
  // the ALTER TABLE) and accept them. Consumers add them to the target when
  // they see the session's schema marker.
  const std::string name = spec.source.ToString();
  auto report = Install(*conn_, tunnel_, {spec});
  if (!report.ok()) return report.status().WithContext("capturing the new column(s) of " + name);
  // A new column with a DEFAULT gave every existing row a value without
  // any trigger firing: copy the table again so the target gets them.
  std::vector<std::optional<std::string>> names;
  for (const auto& c : added) names.emplace_back(c.name);
  DT_ASSIGN_OR_RETURN(auto defaults,
                      conn_->Query("SELECT COALESCE(bool_or(atthasdef OR atthasmissing), false) "
                                   "FROM pg_catalog.pg_attribute WHERE attrelid = $1::regclass "
                                   "AND attname = ANY ($2::text[])",
                                   {spec.source.Quoted(), pg::TextArrayLiteral(names)}));
  if (!report->needs_snapshot.empty() || defaults.GetBool(0, 0)) {
    // Rows changed between the ALTER TABLE and now lack the new values.
    DT_RETURN_IF_ERROR(RequestSnapshot(*conn_, spec, /*restart=*/true));
    spdlog::warn(
        "schema of {}: {}; copying the table again so the target gets the new column(s)' "
        "values for rows that existed or changed before capture caught up",
        name, drift);
  } else {
    spdlog::info("schema of {}: {}; the target will get the new column(s)", name, drift);
  }
  return Status::OK();
}

Status SchemaWatch::Start() {
  std::string oids;
  for (const auto& spec : *specs_) {
    DT_ASSIGN_OR_RETURN(auto info, pg::LoadTable(*conn_, spec.source));
    if (!info) return Status::Fatal("source table " + spec.source.ToString() + " disappeared");
    oids += (oids.empty() ? "" : ",") + std::to_string(info->oid);
  }
  oids_ = "{" + oids + "}";
  query_ = SignatureQuery(oids_);
  DT_ASSIGN_OR_RETURN(auto r, conn_->Query(query_));
  signature_ = std::string(r.Get(0, 0));
  // Each table's own, for the ticks that check only the tables they read.
  DT_ASSIGN_OR_RETURN(auto each,
                      conn_->Query(TableSignatures(
                          oids_, fmt::format("ARRAY(SELECT pg_catalog.generate_series(0, {}))",
                                             specs_->size() - 1))));
  table_sigs_.clear();
  const std::string_view all = each.Get(0, 0);
  for (size_t i = 0; i <= all.size();) {
    const size_t end = std::min(all.find(',', i), all.size());
    table_sigs_.emplace_back(all.substr(i, end - i));
    i = end + 1;
  }
  if (table_sigs_.size() != specs_->size()) {
    return Status::Fatal("unexpected column signatures from the " + conn_->description());
  }
  tick_check_ = TickCheck{
      query_, [oids = oids_](std::string_view tables) { return TableSignatures(oids, tables); }};
  return Status::OK();
}

Status SchemaWatch::Verify(std::string_view signature, std::span<const size_t> tables) const {
  bool same = false;
  if (tables.empty()) {
    same = signature == signature_;
  } else {
    std::string expected;
    for (size_t t : tables) {
      if (t >= table_sigs_.size()) break;
      if (!expected.empty()) expected += ',';
      expected += table_sigs_[t];
    }
    same = signature == expected;
  }
  if (same) return Status::OK();
  return Status::Retryable("the columns of a captured table changed; describing them again");
}

Status SchemaWatch::VerifyInTick() {
  auto signature = conn_->Query(query_);
  Status st = signature.ok() ? Verify(signature->Get(0, 0)) : signature.status();
  if (!st.ok()) conn_->RollbackQuietly();
  return st;
}

}  // namespace datatunnel::capture
