#include "apply/install.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <set>

#include "pg/catalog.h"

namespace datatunnel::apply {

std::string TargetStateDdl() {
  return R"sql(
CREATE SCHEMA IF NOT EXISTS datatunnel;
COMMENT ON SCHEMA datatunnel IS 'datatunnel apply positions; removed by datatunnel uninstall';
CREATE TABLE IF NOT EXISTS datatunnel.applied (
  stream text NOT NULL,
  partition integer NOT NULL,
  target_schema text NOT NULL,
  target_table text NOT NULL,
  kafka_offset bigint NOT NULL DEFAULT -1,
  epoch bigint NOT NULL DEFAULT 0,
  tick bigint NOT NULL DEFAULT 0,
  seq bigint NOT NULL DEFAULT 0,
  sub integer NOT NULL DEFAULT 0,
  applied_count bigint NOT NULL DEFAULT 0,
  skipped_count bigint NOT NULL DEFAULT 0,
  dead_letter_count bigint NOT NULL DEFAULT 0,
  last_captured_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now(),
  snapshot_epoch bigint,
  snapshot_tick bigint,
  snapshot_partitions integer,
  PRIMARY KEY (stream, partition));
-- The chain check (apply/chain.h): tail_* is the newest position read from
-- the partition, moved with the offset; gap_* says where the chain broke (a
-- message is missing from the partition): the consumer stops there until a
-- snapshot into an emptied table clears it. Added columns, so that `init`
-- upgrades an existing target.
ALTER TABLE datatunnel.applied
  ADD COLUMN IF NOT EXISTS tail_epoch bigint NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS tail_tick bigint NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS tail_seq bigint NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS tail_sub integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS gap_offset bigint,
  ADD COLUMN IF NOT EXISTS gap_expected text,
  ADD COLUMN IF NOT EXISTS gap_found text,
  ADD COLUMN IF NOT EXISTS gap_at timestamptz;
-- The tunnels that apply to this database ([tunnel] name), each with the
-- source installation (datatunnel.meta.install_id) `init` bound it to: a
-- consumer applies only messages of its own tunnel and installation.
CREATE TABLE IF NOT EXISTS datatunnel.tunnels (
  name text PRIMARY KEY,
  source_install text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now());
-- The target table's identity (apply/install.h, TargetTableState): the OID
-- the table had when a partition applied the end-of-snapshot marker, and
-- when the table was last emptied by a TRUNCATE outside the tunnel (the
-- trigger datatunnel_target_truncate). A table dropped and recreated has
-- another OID; either way the copy is lost and the snapshot must be redone.
ALTER TABLE datatunnel.applied
  ADD COLUMN IF NOT EXISTS snapshot_relid oid,
  ADD COLUMN IF NOT EXISTS target_truncated_at timestamptz;
-- Statement-level AFTER TRUNCATE trigger function of every target table. The
-- tunnel's own TRUNCATEs (a replicated TRUNCATE, a snapshot emptying the
-- table) set datatunnel.tunnel_truncate for their transaction and are not
-- recorded. Costs nothing for row writes.
CREATE OR REPLACE FUNCTION datatunnel.on_target_truncate()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  IF COALESCE(pg_catalog.current_setting('datatunnel.tunnel_truncate', true), '') <> 'on' THEN
    UPDATE datatunnel.applied SET target_truncated_at = pg_catalog.now()
      WHERE target_schema = TG_TABLE_SCHEMA AND target_table = TG_TABLE_NAME;
  END IF;
  RETURN NULL;
END $fn$;
-- A snapshot that emptied a target table: every message up to the end of
-- source tick `tick` (of capture epoch `epoch`) is superseded by it, in every
-- stream and partition of the table: neither applied nor chain-checked, and
-- a TRUNCATE barrier there counts as done.
CREATE TABLE IF NOT EXISTS datatunnel.resyncs (
  target_schema text NOT NULL,
  target_table text NOT NULL,
  epoch bigint NOT NULL,
  tick bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (target_schema, target_table));
CREATE TABLE IF NOT EXISTS datatunnel.barriers (
  stream text NOT NULL,
  epoch bigint NOT NULL,
  tick bigint NOT NULL,
  seq bigint NOT NULL,
  sub integer NOT NULL,
  partitions integer NOT NULL,
  arrived integer[] NOT NULL DEFAULT '{}',
  done boolean NOT NULL DEFAULT false,
  target_schema text NOT NULL,
  target_table text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (stream, epoch, tick, seq, sub));
COMMENT ON TABLE datatunnel.barriers IS
  'datatunnel: a TRUNCATE runs once every partition of its topic reached it';
CREATE OR REPLACE FUNCTION datatunnel.truncate_arrive(
    p_stream text, p_epoch bigint, p_tick bigint, p_seq bigint, p_sub integer,
    p_partition integer, p_partitions integer, p_schema text, p_table text)
RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
  b datatunnel.barriers;
BEGIN
  IF EXISTS (SELECT 1 FROM datatunnel.resyncs r
             WHERE r.target_schema = p_schema AND r.target_table = p_table
               AND (p_epoch, p_tick) <= (r.epoch, r.tick)) THEN
    RETURN true;  -- superseded by a snapshot into the emptied table
  END IF;
  INSERT INTO datatunnel.barriers (stream, epoch, tick, seq, sub, partitions, target_schema, target_table)
    VALUES (p_stream, p_epoch, p_tick, p_seq, p_sub, p_partitions, p_schema, p_table)
    ON CONFLICT DO NOTHING;
  SELECT * INTO b FROM datatunnel.barriers
    WHERE stream = p_stream AND epoch = p_epoch AND tick = p_tick AND seq = p_seq AND sub = p_sub
    FOR UPDATE;
  IF b.done THEN
    RETURN true;
  END IF;
  IF NOT p_partition = ANY (b.arrived) THEN
    b.arrived := b.arrived || p_partition;
  END IF;
  IF pg_catalog.cardinality(b.arrived) >= b.partitions THEN
    PERFORM pg_catalog.set_config('datatunnel.tunnel_truncate', 'on', true);
    EXECUTE pg_catalog.format('TRUNCATE %I.%I', p_schema, p_table);
    PERFORM pg_catalog.set_config('datatunnel.tunnel_truncate', '', true);
    b.done := true;
    DELETE FROM datatunnel.barriers WHERE done AND created_at < pg_catalog.now() - interval '1 day';
  END IF;
  UPDATE datatunnel.barriers SET arrived = b.arrived, done = b.done
    WHERE stream = p_stream AND epoch = p_epoch AND tick = p_tick AND seq = p_seq AND sub = p_sub;
  RETURN b.done;
END $fn$;
-- Transaction-consistent apply (apply/consistency.h): per tunnel, the end of
-- the newest tick committed whole, and the control-topic record it came from.
CREATE TABLE IF NOT EXISTS datatunnel.consistency (
  tunnel text PRIMARY KEY,
  stream text NOT NULL,
  kafka_offset bigint NOT NULL DEFAULT -1,
  epoch bigint NOT NULL,
  tick bigint NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now());
-- The version before the chain check had no tail.
DROP FUNCTION IF EXISTS datatunnel.advance(text, integer, bigint, bigint, bigint, bigint, bigint,
  integer, bigint, bigint, bigint, bigint);
CREATE OR REPLACE FUNCTION datatunnel.advance(
    p_stream text, p_partition integer, p_expected bigint, p_offset bigint,
    p_epoch bigint, p_tick bigint, p_seq bigint, p_sub integer,
    p_applied bigint, p_skipped bigint, p_dead bigint, p_captured_us bigint,
    p_tail_epoch bigint, p_tail_tick bigint, p_tail_seq bigint, p_tail_sub integer)
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  UPDATE datatunnel.applied SET
      kafka_offset = p_offset,
      epoch = p_epoch, tick = p_tick, seq = p_seq, sub = p_sub,
      tail_epoch = p_tail_epoch, tail_tick = p_tail_tick, tail_seq = p_tail_seq,
      tail_sub = p_tail_sub,
      applied_count = applied_count + p_applied,
      skipped_count = skipped_count + p_skipped,
      dead_letter_count = dead_letter_count + p_dead,
      last_captured_at = COALESCE(pg_catalog.to_timestamp(p_captured_us / 1000000.0), last_captured_at),
      updated_at = pg_catalog.now()
    WHERE stream = p_stream AND partition = p_partition AND kafka_offset = p_expected;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'datatunnel: the position of % [%] moved (expected offset %)',
      p_stream, p_partition, p_expected USING ERRCODE = 'DT001';
  END IF;
END $fn$;
)sql";
}

namespace {

constexpr const char* kTruncateTrigger = "datatunnel_target_truncate";

std::string KeyIndexName(const TableSpec& t) {
  std::string name = t.target.name + "_datatunnel_key";
  if (name.size() > 63) name = name.substr(name.size() - 63);
  return name;
}

}  // namespace

std::string TargetTableDdl(const TableSpec& src) {
  std::string cols;
  for (const auto& c : src.columns) {
    cols += fmt::format("{}\n  {} {}{}", cols.empty() ? "" : ",", QuoteIdent(c.name), c.type_sql,
                        c.not_null ? " NOT NULL" : "");
  }
  return fmt::format("CREATE TABLE {} ({}\n)", src.target.Quoted(), cols);
}

std::string KeyIndexDdl(const TableSpec& src) {
  std::string cols;
  for (size_t k : src.key) cols += (cols.empty() ? "" : ", ") + QuoteIdent(src.columns[k].name);
  return fmt::format("CREATE UNIQUE INDEX {} ON {} ({})", QuoteIdent(KeyIndexName(src)),
                     src.target.Quoted(), cols);
}

std::string TruncateTriggerDdl(const TableSpec& src) {
  return fmt::format(
      "CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION "
      "datatunnel.on_target_truncate()",
      kTruncateTrigger, src.target.Quoted());
}

namespace {

// The length or precision in "character varying(20)" / "numeric(10,2)":
// {20} / {10, 2}; empty when unconstrained.
std::vector<int> TypeModifiers(const std::string& type_sql) {
  std::vector<int> out;
  const size_t open = type_sql.find('(');
  if (open == std::string::npos) return out;
  size_t i = open + 1;
  while (i < type_sql.size() && type_sql[i] != ')') {
    size_t used = 0;
    try {
      out.push_back(std::stoi(type_sql.substr(i), &used));
    } catch (...) {
      return {};
    }
    i += used;
    while (i < type_sql.size() && (type_sql[i] == ',' || type_sql[i] == ' ')) ++i;
  }
  return out;
}

int IntegerRank(const std::string& t) {
  if (t == "int2") return 1;
  if (t == "int4") return 2;
  if (t == "int8") return 3;
  return 0;
}

}  // namespace

TypeFit ClassifyTypeChange(const Column& source, const Column& target) {
  if (source.type_sql == target.type_sql) return TypeFit::kSame;
  const std::string& from = source.typname;
  const std::string& to = target.typname;
  const bool from_array = !from.empty() && from[0] == '_';
  const bool to_array = !to.empty() && to[0] == '_';
  if (to == "text") return TypeFit::kSafe;  // any value's text form
  if (from_array != to_array) return TypeFit::kLossy;
  if (from_array) {
    Column f = source, t = target;
    f.typname = from.substr(1);
    t.typname = to.substr(1);
    f.type_sql = f.type_sql.substr(0, f.type_sql.rfind('['));
    t.type_sql = t.type_sql.substr(0, t.type_sql.rfind('['));
    return ClassifyTypeChange(f, t) == TypeFit::kLossy ? TypeFit::kLossy : TypeFit::kSafe;
  }
  const std::vector<int> fm = TypeModifiers(source.type_sql), tm = TypeModifiers(target.type_sql);
  const int fr = IntegerRank(from), tr = IntegerRank(to);
  if (fr && tr) return fr <= tr ? TypeFit::kSafe : TypeFit::kLossy;
  if (to == "numeric") {
    if (tm.empty() && (fr || from == "numeric")) return TypeFit::kSafe;
    if (from == "numeric" && fm.size() == 2 && tm.size() == 2 && tm[1] >= fm[1] &&
        tm[0] - tm[1] >= fm[0] - fm[1]) {
      return TypeFit::kSafe;
    }
    return TypeFit::kLossy;
  }
  if (to == "float8" && (from == "float4" || from == "int2" || from == "int4"))
    return TypeFit::kSafe;
  if (to == "float4" && from == "int2") return TypeFit::kSafe;
  const bool from_chars = from == "varchar" || from == "bpchar" || from == "text";
  if (to == "varchar" && from_chars) {
    if (tm.empty()) return TypeFit::kSafe;
    return from != "text" && fm.size() == 1 && fm[0] <= tm[0] ? TypeFit::kSafe : TypeFit::kLossy;
  }
  if (to == "timestamptz" && from == "timestamp") return TypeFit::kSafe;
  if (to == "jsonb" && from == "json") return TypeFit::kSafe;
  if (to == from && from == "varbit" && (tm.empty() || (fm.size() == 1 && fm[0] <= tm[0])))
    return TypeFit::kSafe;
  return TypeFit::kLossy;
}

Result<TargetCheck> CheckTarget(pg::Connection& target, const std::vector<TableSpec>& sources) {
  TargetCheck check;
  for (const auto& src : sources) {
    const std::string name = src.target.ToString();
    DT_ASSIGN_OR_RETURN(auto info, pg::LoadTable(target, src.target));
    if (!info) {
      DT_ASSIGN_OR_RETURN(auto other, target.Query("SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                                                   {src.target.Quoted()}));
      if (other.GetBool(0, 0)) {
        check.errors.push_back(fmt::format(
            "target {} exists but is not a table; drop or rename it, or set target = \"...\" "
            "to another name",
            name));
      }
      continue;  // init creates it from the source's columns
    }
    if (info->relkind != 'r' && info->relkind != 'p') {
      check.errors.push_back(
          fmt::format("target {} is not a table (relkind '{}'); set target = \"...\" to a table",
                      name, info->relkind));
      continue;
    }
    std::vector<std::string> key;
    bool key_ok = true;
    for (size_t k : src.key) {
      const std::string& col = src.columns[k].name;
      key.push_back(col);
      bool has = std::any_of(info->columns.begin(), info->columns.end(),
                             [&](const pg::CatalogColumn& c) { return c.name == col; });
      if (!has) {
        key_ok = false;
        check.errors.push_back(fmt::format(
            "target table {} has no column \"{}\", which is part of the key; add the column "
            "(ALTER TABLE {} ADD COLUMN {} {}) or fix target = \"...\"",
            name, col, src.target.Quoted(), QuoteIdent(col), src.columns[k].type_sql));
      }
    }
    for (const auto& sc : src.columns) {
      auto it = std::find_if(info->columns.begin(), info->columns.end(),
                             [&](const pg::CatalogColumn& c) { return c.name == sc.name; });
      if (it == info->columns.end()) continue;  // init adds it
      switch (ClassifyTypeChange(sc, *it)) {
        case TypeFit::kSame:
          break;
        case TypeFit::kSafe:
          check.warnings.push_back(fmt::format(
              "target column {}.{} is {} and the source's is {}: every value fits, but the types "
              "differ (to match: ALTER TABLE {} ALTER COLUMN {} TYPE {})",
              name, sc.name, it->type_sql, sc.type_sql, src.target.Quoted(), QuoteIdent(sc.name),
              sc.type_sql));
          break;
        case TypeFit::kLossy:
          check.errors.push_back(fmt::format(
              "target column {}.{} is {} but the source's is {}: values would be refused or "
              "changed; fix: ALTER TABLE {} ALTER COLUMN {} TYPE {} on the target, then run "
              "`datatunnel init` again",
              name, sc.name, it->type_sql, sc.type_sql, src.target.Quoted(), QuoteIdent(sc.name),
              sc.type_sql));
          break;
      }
    }
    if (!key_ok) continue;
    const std::set<std::string> want(key.begin(), key.end());
    // A source without a key (full-row identity) needs no unique index.
    bool unique =
        key.empty() || std::any_of(info->unique_keys.begin(), info->unique_keys.end(),
                                   [&](const std::vector<std::string>& u) {
                                     return std::set<std::string>(u.begin(), u.end()) == want;
                                   });
    if (unique) continue;
    const QualifiedName index{src.target.schema, KeyIndexName(src)};
    // An index of that name on this table is ours, on an earlier key: init
    // replaces it.
    DT_ASSIGN_OR_RETURN(auto taken,
                        target.Query("SELECT pg_catalog.to_regclass($1) IS NOT NULL AND NOT "
                                     "EXISTS (SELECT 1 FROM pg_catalog.pg_index WHERE indexrelid "
                                     "= pg_catalog.to_regclass($1) AND indrelid = $2::regclass)",
                                     {index.Quoted(), src.target.Quoted()}));
    if (taken.GetBool(0, 0)) {
      check.errors.push_back(fmt::format(
          "target table {} needs a unique index on its key, but the name {} is taken by another "
          "relation; rename that relation",
          name, index.ToString()));
      continue;
    }
    std::string cols;
    for (const auto& k : key) cols += (cols.empty() ? "" : ", ") + QuoteIdent(k);
    DT_ASSIGN_OR_RETURN(auto dup,
                        target.Query(fmt::format("SELECT count(*) OVER (), ROW({0})::text FROM {1} "
                                                 "WHERE ({0}) IS NOT NULL GROUP BY {0} "
                                                 "HAVING count(*) > 1 LIMIT 1",
                                                 cols, src.target.Quoted())));
    if (dup.rows() > 0) {
      check.errors.push_back(fmt::format(
          "target table {} holds duplicate keys (e.g. ({}) = {}), so init cannot create the "
          "unique index the tunnel needs on ({}); remove the duplicates or empty the table "
          "(the snapshot copies every row), then run `datatunnel init` again",
          name, fmt::join(key, ", "), dup.Get(0, 1), fmt::join(key, ", ")));
    }
  }
  return check;
}

Result<std::vector<std::string>> AddColumns(pg::Connection& target, const TableSpec& spec,
                                            const std::vector<Column>& columns) {
  std::vector<std::string> added;
  std::string alter;
  for (const auto& c : columns) {
    if (spec.ColumnIndex(c.name) >= 0) continue;
    alter += fmt::format("{}ADD COLUMN IF NOT EXISTS {} {}", alter.empty() ? "" : ", ",
                         QuoteIdent(c.name), c.type_sql);
    added.push_back(c.name);
  }
  if (!alter.empty()) {
    Status st = target.Exec(fmt::format("ALTER TABLE {} {}", spec.target.Quoted(), alter));
    if (!st.ok()) {
      return st.WithContext(fmt::format(
          "adding column(s) to target table {} (if a type is missing on the target, create it "
          "there first)",
          spec.target.ToString()));
    }
  }
  return added;
}

Status CheckInstalled(pg::Connection& target) {
  DT_ASSIGN_OR_RETURN(auto r, target.Query("SELECT to_regclass('datatunnel.applied') IS NOT NULL"));
  if (!r.GetBool(0, 0)) {
    return Status::BadConfig(
        fmt::format("datatunnel is not set up on the {} (no datatunnel.applied): run "
                    "`datatunnel init` first",
                    target.description()));
  }
  return Status::OK();
}

Status CheckStateCurrent(pg::Connection& target) {
  auto check = target.Query("SELECT 1 FROM datatunnel.applied LIMIT 0");
  // A lost connection (the target restarting) is retried, not "run init".
  if (!check.ok() && check.status().code() != StatusCode::kFatal) return check.status();
  if (!check.ok()) {
    return Status::Fatal(fmt::format(
        "the {} has no datatunnel state (datatunnel.applied): run `datatunnel init` first",
        target.description()));
  }
  check = target.Query(
      "SELECT a.tail_epoch, a.gap_offset, r.tick FROM datatunnel.applied a, datatunnel.resyncs r "
      "LIMIT 0");
  if (!check.ok() && check.status().code() != StatusCode::kFatal) return check.status();
  if (!check.ok()) {
    return Status::Fatal(fmt::format(
        "the datatunnel state on the {} is from an older version (no chain check columns): run "
        "`datatunnel init` to upgrade it, then start again",
        target.description()));
  }
  return Status::OK();
}

Result<std::string> BoundSource(pg::Connection& target, const std::string& tunnel) {
  DT_ASSIGN_OR_RETURN(auto has,
                      target.Query("SELECT to_regclass('datatunnel.tunnels') IS NOT NULL"));
  if (has.GetBool(0, 0)) {
    DT_ASSIGN_OR_RETURN(auto r, target.Query("SELECT source_install FROM datatunnel.tunnels "
                                             "WHERE name = $1",
                                             {tunnel}));
    if (r.rows() == 1) return std::string(r.Get(0, 0));
  }
  return Status::BadConfig(fmt::format(
      "tunnel \"{}\" is not set up on the {}{}: run `datatunnel init` with this configuration",
      tunnel, target.description(),
      has.GetBool(0, 0) ? "" : " (its datatunnel state is from an earlier version)"));
}

Result<std::string> BindTunnel(pg::Connection& target, const std::string& tunnel,
                               const std::string& install) {
  DT_ASSIGN_OR_RETURN(
      auto r, target.Query("INSERT INTO datatunnel.tunnels AS t (name, source_install) "
                           "VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET source_install = "
                           "EXCLUDED.source_install, updated_at = now() "
                           "WHERE t.source_install <> EXCLUDED.source_install "
                           "RETURNING (xmax = 0)",
                           {tunnel, install}));
  if (r.rows() == 0) return std::string();
  return fmt::format("{} tunnel \"{}\" to source installation {}",
                     r.GetBool(0, 0) ? "registered" : "re-bound", tunnel, install);
}

Result<bool> IsCapturedSource(pg::Connection& target, const QualifiedName& name) {
  DT_ASSIGN_OR_RETURN(auto r, target.Query("SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid "
                                           "= to_regclass($1) AND tgname IN ('datatunnel_capture', "
                                           "'datatunnel_capture_insert'))",
                                           {name.Quoted()}));
  return r.GetBool(0, 0);
}

Result<std::vector<std::string>> Install(pg::Connection& target,
                                         const std::vector<TableSpec>& sources,
                                         const std::vector<TypeToCreate>& types) {
  std::vector<std::string> actions;
  DT_RETURN_IF_ERROR(target.Exec("BEGIN; SET LOCAL lock_timeout = '30s'"));
  auto fail = [&](Status st) {
    target.RollbackQuietly();
    return st;
  };
  auto had = target.Query("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'datatunnel'");
  if (!had.ok()) return fail(had.status());
  if (Status st = target.Exec(TargetStateDdl()); !st.ok()) return fail(st);
  if (had->rows() == 0)
    actions.push_back("created schema datatunnel (apply positions) on the target");
  for (const auto& t : types) {
    auto exists = target.Query("SELECT pg_catalog.to_regtype($1) IS NOT NULL", {t.name});
    if (!exists.ok()) return fail(exists.status());
    if (exists->GetBool(0, 0)) continue;
    Status st = target.Exec("CREATE SCHEMA IF NOT EXISTS " + QuoteIdent(t.schema) + "; " + t.ddl);
    if (!st.ok()) return fail(st.WithContext("creating type " + t.name + " on the target"));
    actions.push_back("created type " + t.name + " (as on the source)");
  }

  for (const auto& src : sources) {
    const std::string name = src.target.ToString();
    auto info = pg::LoadTable(target, src.target);
    if (!info.ok()) return fail(info.status());
    if (!*info) {
      if (Status st = target.Exec("CREATE SCHEMA IF NOT EXISTS " + QuoteIdent(src.target.schema));
          !st.ok()) {
        return fail(st);
      }
      Status st = target.Exec(TargetTableDdl(src));
      if (!st.ok()) {
        return fail(st.WithContext(fmt::format(
            "creating target table {} from the source's columns (if a type is missing on the "
            "target, create it there first)",
            name)));
      }
      actions.push_back(fmt::format("created target table {} ({} columns, from the source)", name,
                                    src.columns.size()));
      info = pg::LoadTable(target, src.target);
      if (!info.ok()) return fail(info.status());
    }
    {
      TableSpec existing;
      existing.target = src.target;
      existing.columns = pg::ToColumns((*info)->columns);
      auto added = AddColumns(target, existing, src.columns);
      if (!added.ok()) return fail(added.status());
      for (const auto& a : *added) {
        actions.push_back(fmt::format("added column {} to target table {}", a, name));
      }
    }
    std::vector<std::string> key;
    for (size_t k : src.key) key.push_back(src.columns[k].name);
    for (const auto& k : key) {
      bool has = std::any_of((*info)->columns.begin(), (*info)->columns.end(),
                             [&](const pg::CatalogColumn& c) { return c.name == k; });
      if (!has) {
        return fail(Status::BadConfig(fmt::format(
            "target table {} has no column \"{}\", which is part of the key; add the column or "
            "fix target = \"...\"",
            name, k)));
      }
    }
    const std::set<std::string> want(key.begin(), key.end());
    bool unique =
        key.empty() || std::any_of((*info)->unique_keys.begin(), (*info)->unique_keys.end(),
                                   [&](const std::vector<std::string>& u) {
                                     return std::set<std::string>(u.begin(), u.end()) == want;
                                   });
    if (!unique) {
      std::string cols;
      for (const auto& k : key) cols += (cols.empty() ? "" : ", ") + QuoteIdent(k);
      // Ours, on the table's earlier key (the key was changed): replaced.
      const QualifiedName index{src.target.schema, KeyIndexName(src)};
      auto old_index = target.Query(
          "SELECT pg_catalog.pg_get_indexdef(indexrelid) FROM pg_catalog.pg_index WHERE "
          "indexrelid = pg_catalog.to_regclass($1) AND indrelid = $2::regclass",
          {index.Quoted(), src.target.Quoted()});
      if (!old_index.ok()) return fail(old_index.status());
      if (old_index->rows() == 1) {
        if (Status st = target.Exec("DROP INDEX " + index.Quoted()); !st.ok()) return fail(st);
        actions.push_back(fmt::format("dropped {} (an earlier key's: {})", index.ToString(),
                                      old_index->Get(0, 0)));
      }
      Status st = target.Exec(KeyIndexDdl(src));
      if (!st.ok()) {
        return fail(st.WithContext(fmt::format(
            "creating a unique index on the key of target table {} (if it holds duplicate keys, "
            "remove them or empty the table)",
            name)));
      }
      actions.push_back(
          fmt::format("created unique index {} on {} ({})", KeyIndexName(src), name, cols));
    }
    auto trig = target.Query(fmt::format("SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = "
                                         "$1::regclass AND tgname = '{}'",
                                         kTruncateTrigger),
                             {src.target.Quoted()});
    if (!trig.ok()) return fail(trig.status());
    if (trig->rows() == 0) {
      Status st = target.Exec(TruncateTriggerDdl(src));
      if (!st.ok()) return fail(st.WithContext("creating the TRUNCATE trigger of " + name));
      actions.push_back(
          fmt::format("created trigger {} on {} (notices a TRUNCATE outside the tunnel)",
                      kTruncateTrigger, name));
    }
  }
  if (Status st = target.Commit(); !st.ok()) return st;
  return actions;
}

Result<std::vector<TableSpec>> DescribeTargetTables(pg::Connection& target,
                                                    const std::vector<TableConfig>& tables) {
  std::vector<TableSpec> out;
  for (const auto& tc : tables) {
    DT_ASSIGN_OR_RETURN(auto info, pg::LoadTable(target, tc.target));
    if (!info) {
      return Status::BadConfig(fmt::format(
          "target table {} does not exist in the {}: run `datatunnel init` to create it",
          tc.target.ToString(), target.description()));
    }
    TableSpec spec;
    spec.source = tc.source;
    spec.target = tc.target;
    spec.topic = tc.topic;
    spec.columns = pg::ToColumns(info->columns);
    std::vector<std::string> key = tc.key;
    if (key.empty()) key = info->primary_key;
    if (key.empty() && !info->unique_keys.empty()) key = info->unique_keys.front();
    // No key: full-row identity (a keyless source table; `init` gives the
    // target of a keyed one a unique index on its key).
    if (!key.empty()) {
      DT_ASSIGN_OR_RETURN(spec.key, pg::ResolveKey(*info, tc.target, key, "target"));
    }
    out.push_back(std::move(spec));
  }
  return out;
}

Result<std::vector<std::string>> Uninstall(pg::Connection& target,
                                           const std::vector<TableSpec>& tables) {
  // The positions of the configured tables only; the schema goes with the
  // last table (another tunnel may apply other tables to this database).
  std::vector<std::string> actions;
  DT_ASSIGN_OR_RETURN(auto had,
                      target.Query("SELECT 1 FROM pg_catalog.pg_class c JOIN "
                                   "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE "
                                   "n.nspname = 'datatunnel' AND c.relname = 'applied'"));
  if (had.rows() == 0) return actions;
  DT_RETURN_IF_ERROR(target.Exec("BEGIN; SET LOCAL lock_timeout = '30s'"));
  auto fail = [&](Status st) {
    target.RollbackQuietly();
    return st;
  };
  for (const auto& spec : tables) {
    int64_t removed = 0;
    for (const char* state : {"applied", "barriers", "resyncs"}) {
      auto q = target.Query(fmt::format("WITH d AS (DELETE FROM datatunnel.{} WHERE target_schema "
                                        "= $1 AND target_table = $2 RETURNING 1) "
                                        "SELECT count(*) FROM d",
                                        state),
                            {spec.target.schema, spec.target.name});
      if (!q.ok()) return fail(q.status());
      removed += q->GetInt64(0, 0);
    }
    if (removed > 0) actions.push_back("removed the apply positions of " + spec.target.ToString());
    auto trig = target.Query(fmt::format("SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = "
                                         "pg_catalog.to_regclass($1) AND tgname = '{}'",
                                         kTruncateTrigger),
                             {spec.target.Quoted()});
    if (!trig.ok()) return fail(trig.status());
    if (trig->rows() > 0) {
      Status st =
          target.Exec(fmt::format("DROP TRIGGER {} ON {}", kTruncateTrigger, spec.target.Quoted()));
      if (!st.ok()) return fail(st);
      actions.push_back(
          fmt::format("dropped trigger {} on {}", kTruncateTrigger, spec.target.ToString()));
    }
  }
  auto left = target.Query(
      "SELECT (SELECT count(*) FROM datatunnel.applied) + (SELECT count(*) FROM "
      "datatunnel.barriers) + (SELECT count(*) FROM datatunnel.resyncs)");
  if (!left.ok()) return fail(left.status());
  if (left->GetInt64(0, 0) == 0) {
    if (Status st = target.Exec("DROP SCHEMA datatunnel CASCADE"); !st.ok()) return fail(st);
    actions.push_back("dropped schema datatunnel (apply positions) on the target");
  }
  DT_RETURN_IF_ERROR(target.Commit());
  return actions;
}

std::vector<std::string> RuntimeGrants(const std::vector<TableSpec>& targets,
                                       const std::string& role, const std::string& database) {
  const std::string r = QuoteIdent(role);
  std::vector<std::string> out = {
      fmt::format("GRANT TEMPORARY ON DATABASE {} TO {};  -- staging tables for batches",
                  QuoteIdent(database), r),
      fmt::format("GRANT USAGE ON SCHEMA datatunnel TO {};", r),
      fmt::format("GRANT SELECT, INSERT, UPDATE ON datatunnel.applied TO {};", r),
      fmt::format("GRANT SELECT ON datatunnel.tunnels TO {};  -- the tunnel's source", r),
      fmt::format("GRANT SELECT ON datatunnel.tunnel_tables TO {};  -- the tunnel's tables", r),
      fmt::format("GRANT SELECT, INSERT, UPDATE ON datatunnel.consistency TO {};", r),
      fmt::format("GRANT SELECT, INSERT, UPDATE, DELETE ON datatunnel.barriers TO {};", r),
      fmt::format("GRANT SELECT, INSERT, UPDATE ON datatunnel.resyncs TO {};  -- snapshot", r),
      fmt::format("GRANT EXECUTE ON FUNCTION datatunnel.truncate_arrive(text, bigint, bigint, "
                  "bigint, integer, integer, integer, text, text) TO {};",
                  r),
      fmt::format("GRANT EXECUTE ON FUNCTION datatunnel.advance(text, integer, bigint, bigint, "
                  "bigint, bigint, bigint, integer, bigint, bigint, bigint, bigint, bigint, "
                  "bigint, bigint, integer) TO {};",
                  r),
  };
  std::set<std::string> schemas;
  for (const auto& t : targets) {
    if (schemas.insert(t.target.schema).second) {
      out.push_back(fmt::format("GRANT USAGE ON SCHEMA {} TO {};", QuoteIdent(t.target.schema), r));
    }
    out.push_back(fmt::format("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {} TO {};",
                              t.target.Quoted(), r));
  }
  return out;
}

Position ResyncPosition(int64_t epoch, int64_t tick) {
  return Position{epoch, tick, Position::kEndOfTick, std::numeric_limits<int32_t>::max()};
}

namespace {

// ResyncForSnapshot() of one table, inside its transaction (after the
// TRUNCATE).
Status RecordResync(pg::Connection& target, const QualifiedName& table, const Position& upto) {
  const std::string epoch = std::to_string(upto.epoch), tick = std::to_string(upto.tick);
  const pg::Param p[] = {table.schema, table.name, epoch, tick};
  auto q = target.Query(
      "INSERT INTO datatunnel.resyncs AS r (target_schema, target_table, epoch, tick) "
      "VALUES ($1, $2, $3, $4) ON CONFLICT (target_schema, target_table) DO UPDATE SET "
      "epoch = EXCLUDED.epoch, tick = EXCLUDED.tick, created_at = now() "
      "WHERE (r.epoch, r.tick) < (EXCLUDED.epoch, EXCLUDED.tick)",
      std::span<const pg::Param>(p));
  if (!q.ok()) return q.status();
  // Partitions waiting at a TRUNCATE the snapshot supersedes go on.
  q = target.Query(
      "UPDATE datatunnel.barriers SET done = true WHERE target_schema = $1 AND target_table = $2 "
      "AND NOT done AND (epoch, tick) <= ($3::bigint, $4::bigint)",
      std::span<const pg::Param>(p));
  if (!q.ok()) return q.status();
  q = target.Query(
      "UPDATE datatunnel.applied SET gap_offset = NULL, gap_expected = NULL, gap_found = NULL, "
      "gap_at = NULL, target_truncated_at = NULL WHERE target_schema = $1 AND target_table = $2 "
      "AND (gap_offset IS NOT NULL OR target_truncated_at IS NOT NULL)",
      {table.schema, table.name});
  if (!q.ok()) return q.status();
  return Status::OK();
}

}  // namespace

Result<std::vector<ForeignReference>> ReferencesFromOutside(pg::Connection& target,
                                                            std::span<const QualifiedName> tables) {
  std::vector<ForeignReference> out;
  if (tables.empty()) return out;
  std::vector<std::string> names;  // the parameters point into them
  for (const QualifiedName& t : tables) names.push_back(t.Quoted());
  std::vector<pg::Param> params;
  std::string in;
  for (const std::string& n : names) {
    params.push_back(n);
    in += fmt::format("{}${}::regclass", in.empty() ? "" : ", ", params.size());
  }
  DT_ASSIGN_OR_RETURN(
      auto r,
      target.Query(fmt::format("SELECT fn.nspname, fr.relname, pn.nspname, pr.relname, c.conname "
                               "FROM pg_catalog.pg_constraint c "
                               "JOIN pg_catalog.pg_class fr ON fr.oid = c.conrelid "
                               "JOIN pg_catalog.pg_namespace fn ON fn.oid = fr.relnamespace "
                               "JOIN pg_catalog.pg_class pr ON pr.oid = c.confrelid "
                               "JOIN pg_catalog.pg_namespace pn ON pn.oid = pr.relnamespace "
                               "WHERE c.contype = 'f' AND c.conparentid = 0 "
                               "AND c.confrelid IN ({0}) AND c.conrelid NOT IN ({0}) "
                               "ORDER BY 1, 2, 5",
                               in),
                   params));
  for (int i = 0; i < r.rows(); ++i) {
    ForeignReference f;
    f.referencing = {std::string(r.Get(i, 0)), std::string(r.Get(i, 1))};
    f.referenced = {std::string(r.Get(i, 2)), std::string(r.Get(i, 3))};
    f.constraint = std::string(r.Get(i, 4));
    out.push_back(std::move(f));
  }
  return out;
}

Status ResyncForSnapshot(pg::Connection& target, std::span<const QualifiedName> tables,
                         const Position& upto) {
  if (tables.empty()) return Status::OK();
  DT_RETURN_IF_ERROR(target.Exec("BEGIN; SET LOCAL lock_timeout = '30s'"));
  auto fail = [&](Status st) {
    target.RollbackQuietly();
    return st;
  };
  std::string list;
  for (const QualifiedName& t : tables) list += (list.empty() ? "" : ", ") + t.Quoted();
  if (Status st = target.Exec("SET LOCAL datatunnel.tunnel_truncate = 'on'; TRUNCATE " + list +
                              "; SET LOCAL datatunnel.tunnel_truncate = ''");
      !st.ok()) {
    return fail(st);
  }
  for (const QualifiedName& table : tables) {
    if (Status st = RecordResync(target, table, upto); !st.ok()) return fail(st);
  }
  return target.Commit();
}

Result<std::vector<RecordedGap>> LoadGaps(pg::Connection& target, const QualifiedName& table) {
  DT_ASSIGN_OR_RETURN(
      auto r, target.Query("SELECT stream, partition, gap_offset, gap_expected, gap_found, "
                           "COALESCE(to_char(gap_at AT TIME ZONE 'UTC', "
                           "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '') "
                           "FROM datatunnel.applied WHERE target_schema = $1 AND target_table = $2 "
                           "AND gap_offset IS NOT NULL ORDER BY gap_at, stream, partition",
                           {table.schema, table.name}));
  std::vector<RecordedGap> out;
  for (int i = 0; i < r.rows(); ++i) {
    RecordedGap g;
    g.stream = std::string(r.Get(i, 0));
    g.partition = static_cast<int32_t>(r.GetInt64(i, 1));
    g.offset = r.GetInt64(i, 2);
    g.expected = std::string(r.Get(i, 3));
    g.found = std::string(r.Get(i, 4));
    g.detected_at = std::string(r.Get(i, 5));
    out.push_back(std::move(g));
  }
  return out;
}

std::string RecordedGap::Describe(const std::string& source_table,
                                  const std::string& target_table) const {
  return fmt::format(
      "{} [{}] offset {}: a message is missing from the topic before this offset (the message "
      "there links to position {}, the newest read from the partition is {}), so target table {} "
      "is missing changes of {}; the consumer stops there, every time, until the table is copied "
      "again. Fix: `datatunnel snapshot --table {} --restart --truncate-target` (docs/"
      "operations.md: \"A gap in a partition\")",
      stream, partition, offset, found, expected, target_table, source_table, source_table);
}

Result<TargetTableState> LoadTargetState(pg::Connection& target, const QualifiedName& table) {
  TargetTableState out;
  DT_ASSIGN_OR_RETURN(
      auto rel, target.Query("SELECT pg_catalog.to_regclass($1)::oid::bigint", {table.Quoted()}));
  out.exists = !rel.IsNull(0, 0);
  if (out.exists) {
    out.relid = rel.GetInt64(0, 0);
    DT_ASSIGN_OR_RETURN(auto rows,
                        target.Query("SELECT EXISTS (SELECT 1 FROM " + table.Quoted() + ")"));
    out.has_rows = rows.GetBool(0, 0);
  }
  DT_ASSIGN_OR_RETURN(auto rs, target.Query("SELECT epoch, tick FROM datatunnel.resyncs WHERE "
                                            "target_schema = $1 AND target_table = $2",
                                            {table.schema, table.name}));
  if (rs.rows() == 1) out.resync = ResyncPosition(rs.GetInt64(0, 0), rs.GetInt64(0, 1));
  DT_ASSIGN_OR_RETURN(
      auto r,
      target.Query(
          "SELECT stream, partition, "
          "  CASE WHEN (tail_epoch, tail_tick, tail_seq, tail_sub) > (epoch, tick, seq, sub) "
          "    THEN ARRAY[tail_epoch, tail_tick, tail_seq, tail_sub] "
          "    ELSE ARRAY[epoch, tick, seq, sub] END, "
          "  applied_count, dead_letter_count, "
          "  COALESCE(GREATEST(extract(epoch FROM now() - last_captured_at), 0), -1)::float8, "
          "  COALESCE(to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
          "    ''), "
          "  COALESCE(snapshot_epoch, 0), COALESCE(snapshot_tick, 0), "
          "  COALESCE(snapshot_partitions, 0), COALESCE(snapshot_relid::bigint, 0), "
          "  target_truncated_at IS NOT NULL "
          "FROM datatunnel.applied WHERE target_schema = $1 AND target_table = $2 "
          "ORDER BY stream, partition",
          {table.schema, table.name}));
  for (int i = 0; i < r.rows(); ++i) {
    TargetTableState::Partition p;
    p.stream = std::string(r.Get(i, 0));
    p.partition = static_cast<int32_t>(r.GetInt64(i, 1));
    int64_t v[4] = {0, 0, 0, 0};
    std::string arr(r.Get(i, 2));  // {e,t,s,u}
    if (arr.size() > 2) {
      arr = arr.substr(1, arr.size() - 2);
      size_t k = 0, start = 0;
      while (k < 4 && start <= arr.size()) {
        const size_t comma = arr.find(',', start);
        v[k++] = std::strtoll(arr.substr(start, comma - start).c_str(), nullptr, 10);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    }
    p.done = Position{v[0], v[1], v[2], static_cast<int32_t>(v[3])};
    p.applied_count = r.GetInt64(i, 3);
    p.dead_letters = r.GetInt64(i, 4);
    p.since_applied = std::strtod(std::string(r.Get(i, 5)).c_str(), nullptr);
    p.updated_at = std::string(r.Get(i, 6));
    p.snapshot_epoch = r.GetInt64(i, 7);
    p.snapshot_tick = r.GetInt64(i, 8);
    p.snapshot_partitions = static_cast<int>(r.GetInt64(i, 9));
    p.snapshot_relid = r.GetInt64(i, 10);
    p.truncated = r.GetBool(i, 11);
    out.partitions.push_back(std::move(p));
  }
  return out;
}

SnapshotMarker NewestSnapshotMarker(const TargetTableState& target) {
  SnapshotMarker m;
  int applied = 0, published_on = 0;
  for (const auto& p : target.partitions) {
    if (p.snapshot_tick == 0 || p.snapshot_tick < m.tick) continue;
    if (p.snapshot_tick > m.tick) {
      m.tick = p.snapshot_tick;
      applied = 0;
      published_on = 0;
    }
    ++applied;
    published_on = std::max(published_on, p.snapshot_partitions);
  }
  m.complete = m.tick > 0 && applied >= published_on;
  return m;
}

int64_t AppliedCount(const TargetTableState& target) {
  int64_t n = 0;
  for (const auto& p : target.partitions) n += p.applied_count;
  return n;
}

CopyJudgement JudgeCopy(const TargetTableState& target, int64_t epoch, int64_t marker_tick) {
  CopyJudgement j;
  if (!target.exists) {
    j.state = CopyState::kLost;
    j.why = "the target table does not exist";
    return j;
  }
  // The partitions that applied this snapshot's end marker (or a later one).
  int with_marker = 0, expected = 0;
  bool recreated = false, truncated = false;
  for (const auto& p : target.partitions) {
    if (p.snapshot_tick == 0) continue;
    if (std::make_pair(p.snapshot_epoch, p.snapshot_tick) < std::make_pair(epoch, marker_tick)) {
      continue;
    }
    ++with_marker;
    expected = std::max(expected, p.snapshot_partitions);
    if (p.snapshot_relid != 0 && p.snapshot_relid != target.relid) recreated = true;
    if (p.truncated) truncated = true;
  }
  for (const auto& p : target.partitions) truncated = truncated || p.truncated;
  if (with_marker == 0 || with_marker < expected) {
    j.state = CopyState::kNotApplied;
    j.why = fmt::format("the copy is published, but {} of {} partition(s) applied it", with_marker,
                        std::max(expected, 1));
    return j;
  }
  if (recreated) {
    j.state = CopyState::kLost;
    j.why = "the target table was dropped and created again since the snapshot";
  } else if (truncated) {
    j.state = CopyState::kLost;
    j.why = "the target table was emptied (TRUNCATE) outside the tunnel since the snapshot";
  } else {
    j.state = CopyState::kApplied;
  }
  return j;
}

}  // namespace datatunnel::apply
