#include "capture/install.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <set>

#include "capture/install_sql.h"
#include "core/change.h"

namespace datatunnel::capture {
std::string OldKeyColumn(size_t n) { return fmt::format("\"dt$old{}\"", n + 1); }
std::string TypedKeysColumn(size_t n) { return fmt::format("\"dt$keys{}\"", n + 1); }

namespace {

constexpr size_t kMaxIdentifier = 63;  // NAMEDATALEN - 1

std::string FunctionName(uint32_t oid) { return fmt::format("capture_{}", oid); }

std::vector<std::optional<std::string>> Names(const std::vector<Column>& cols) {
  std::vector<std::optional<std::string>> out;
  for (const auto& c : cols) out.emplace_back(c.name);
  return out;
}

std::vector<std::optional<std::string>> Types(const std::vector<Column>& cols) {
  std::vector<std::optional<std::string>> out;
  for (const auto& c : cols) out.emplace_back(c.type_sql);
  return out;
}

// Rows of a text[] column of datatunnel.tables, in order.
Result<std::vector<std::string>> ArrayColumn(pg::Connection& source, const TableSpec& spec,
                                             const char* column) {
  DT_ASSIGN_OR_RETURN(auto r, source.Query(fmt::format("SELECT x FROM datatunnel.tables t, "
                                                       "unnest(t.{}) WITH ORDINALITY AS u(x, n) "
                                                       "WHERE schema_name = $1 AND table_name = $2 "
                                                       "ORDER BY n",
                                                       column),
                                           {spec.source.schema, spec.source.name}));
  std::vector<std::string> out;
  for (int i = 0; i < r.rows(); ++i) out.emplace_back(r.Get(i, 0));
  return out;
}

}  // namespace

Result<std::vector<TableSpec>> DescribeSourceTables(pg::Connection& source,
                                                    const std::vector<TableConfig>& tables,
                                                    std::vector<std::string>* warnings) {
  std::vector<TableSpec> specs;
  for (const auto& tc : tables) {
    DT_ASSIGN_OR_RETURN(auto info, pg::LoadTable(source, tc.source));
    if (!info) {
      return Status::BadConfig(fmt::format(
          "source table {} does not exist in the {} (or the role cannot see it); create it or fix "
          "source = \"...\" in [[tables]]",
          tc.source.ToString(), source.description()));
    }
    if (info->relkind != 'r' && info->relkind != 'p') {
      return Status::BadConfig(
          fmt::format("source {} is not a table (relkind '{}'); only tables can be captured",
                      tc.source.ToString(), info->relkind));
    }
    TableSpec spec;
    spec.source = tc.source;
    spec.target = tc.target;
    spec.topic = tc.topic;
    spec.columns = pg::ToColumns(info->columns);
    std::vector<std::string> key = tc.key.empty() ? info->primary_key : tc.key;
    if (key.empty() && !info->unique_keys.empty()) key = info->unique_keys.front();
    if (key.empty() && info->relkind == 'p') {
      return Status::BadConfig(fmt::format(
          "source table {} is partitioned and has no primary key, no unique index and no "
          "configured key; a partitioned table is copied in key order: add key = [\"column\", "
          "...] to its [[tables]] entry, or a primary key",
          tc.source.ToString()));
    }
    if (key.empty()) {
      // Full-row identity, as REPLICA IDENTITY FULL: carried, with a warning.
      if (warnings) {
        warnings->push_back(fmt::format(
            "source table {} has no primary key, no unique index and no configured key: it is "
            "carried with full-row identity (the target holds the same rows, duplicates "
            "included; a delete or update on the target scans the table for an equal row)",
            tc.source.ToString()));
      }
    } else {
      DT_ASSIGN_OR_RETURN(spec.key, pg::ResolveKey(*info, tc.source, key, "source"));
    }
    bool unique = key.empty() || std::any_of(info->unique_keys.begin(), info->unique_keys.end(),
                                             [&](const std::vector<std::string>& k) {
                                               return std::set<std::string>(k.begin(), k.end()) ==
                                                      std::set<std::string>(key.begin(), key.end());
                                             });
    if (!unique && warnings) {
      std::string cols;
      for (const auto& k : key) cols += (cols.empty() ? "" : ", ") + k;
      warnings->push_back(fmt::format(
          "source table {} has no unique index on ({}): datatunnel relies on these columns "
          "identifying a row; two source rows with the same key become one target row",
          tc.source.ToString(), cols));
    }
    std::string cdc = tc.source.name + "_cdc";
    if (cdc.size() > kMaxIdentifier) {
      return Status::BadConfig(fmt::format(
          "table name {} is too long for its change table name {} (PostgreSQL allows {} bytes); "
          "rename the table",
          tc.source.ToString(), cdc, kMaxIdentifier));
    }
    spec.change_table = {tc.source.schema, cdc};
    for (const auto& col : spec.columns) {
      if (col.name.rfind(kReservedPrefix, 0) == 0) {
        return Status::BadConfig(fmt::format(
            "source table {} has a column named \"{}\": names starting with {} are datatunnel's "
            "(its change table {} uses them); rename that column",
            tc.source.ToString(), col.name, kReservedPrefix, spec.change_table.ToString()));
      }
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

Result<std::vector<QualifiedName>> CatalogTables(pg::Connection& source,
                                                 const NamePattern& pattern) {
  DT_ASSIGN_OR_RETURN(
      auto r, source.Query("SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
                           "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                           "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
                           "AND c.relpersistence <> 't' "
                           "AND n.nspname NOT IN ('datatunnel', 'information_schema') "
                           "AND n.nspname NOT LIKE 'pg\\_%' "
                           "AND n.nspname LIKE $1 AND c.relname LIKE $2 "
                           "AND NOT (c.relname LIKE '%\\_cdc' AND EXISTS (SELECT 1 FROM "
                           "pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = "
                           "'dt$change_id' AND NOT a.attisdropped)) "
                           "ORDER BY 1, 2",
                           {pattern.schema, pattern.name}));
  std::vector<QualifiedName> out;
  for (int i = 0; i < r.rows(); ++i) {
    out.push_back({std::string(r.Get(i, 0)), std::string(r.Get(i, 1))});
  }
  return out;
}

Status CheckInstalled(pg::Connection& source, const std::string& tunnel,
                      const std::vector<TableConfig>& tables) {
  DT_ASSIGN_OR_RETURN(auto state,
                      source.Query("SELECT to_regclass('datatunnel.tables') IS NOT NULL"));
  if (!state.GetBool(0, 0)) {
    return Status::BadConfig(
        fmt::format("datatunnel is not set up on the {} (no datatunnel.tables): run "
                    "`datatunnel init` first",
                    source.description()));
  }
  DT_ASSIGN_OR_RETURN(auto named,
                      source.Query("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE "
                                   "attrelid = 'datatunnel.tables'::regclass AND attname = "
                                   "'tunnel' AND NOT attisdropped)"));
  if (!named.GetBool(0, 0)) {
    return Status::BadConfig(fmt::format(
        "the datatunnel state on the {} is from an earlier version (its tunnels have no names): "
        "run `datatunnel init` to upgrade it",
        source.description()));
  }
  for (const auto& t : tables) {
    DT_ASSIGN_OR_RETURN(
        auto r, source.Query("SELECT tunnel, format('%I.%I', schema_name, change_table), EXISTS "
                             "(SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = "
                             "pg_catalog.to_regclass(format('%I.%I', schema_name, change_table)) "
                             "AND attname = 'dt$change_id'), EXISTS (SELECT 1 FROM "
                             // The default's dependency on the shared sequence
                             // (pg_get_expr would lock every table it reads).
                             "pg_catalog.pg_attrdef d JOIN pg_catalog.pg_depend p ON p.classid = "
                             "'pg_catalog.pg_attrdef'::regclass AND p.objid = d.oid AND "
                             "p.refclassid = 'pg_catalog.pg_class'::regclass AND p.refobjid = "
                             "pg_catalog.to_regclass('datatunnel.change_id_seq') WHERE d.adrelid = "
                             "pg_catalog.to_regclass(format('%I.%I', schema_name, change_table))) "
                             "FROM datatunnel.tables WHERE schema_name = $1 AND table_name = $2",
                             {t.source.schema, t.source.name}));
    if (r.rows() == 0) {
      return Status::BadConfig(
          fmt::format("table {} is not captured on the {}: run `datatunnel init` to set it up",
                      t.source.ToString(), source.description()));
    }
    if (r.Get(0, 0).empty()) {
      return Status::BadConfig(fmt::format(
          "table {} on the {} was set up by an earlier version: run `datatunnel init` to "
          "upgrade it to tunnel \"{}\"",
          t.source.ToString(), source.description(), tunnel));
    }
    if (r.Get(0, 0) != tunnel) {
      return Status::BadConfig(
          OtherTunnelMessage(t.source, std::string(r.Get(0, 0)), tunnel, source.description()));
    }
    if (!r.GetBool(0, 2)) {
      return Status::BadConfig(fmt::format(
          "change table {} of {} has the column names of an earlier version (or is missing): run "
          "`datatunnel init` (it renames them in place and keeps the pending changes)",
          r.Get(0, 1), t.source.ToString()));
    }
    if (!r.GetBool(0, 3)) {
      return Status::BadConfig(fmt::format(
          "change table {} of {} draws its change ids from a sequence of its own (an earlier "
          "version): run `datatunnel init` (it moves it onto the shared sequence and keeps the "
          "pending changes)",
          r.Get(0, 1), t.source.ToString()));
    }
  }
  return Status::OK();
}

Status CheckKeysUnchanged(const std::vector<CapturedTable>& captured,
                          const std::vector<TableSpec>& tables) {
  for (const auto& spec : tables) {
    std::vector<std::string> key;
    for (size_t k : spec.key) key.push_back(spec.columns[k].name);
    for (const auto& c : captured) {
      if (c.source != spec.source || c.key == key) continue;
      const std::string name = spec.source.ToString();
      return Status::BadConfig(fmt::format(
          "the key of {} is ({}) in the configuration but the table is captured with key ({}); "
          "changes captured so far identify rows by the old key, so init changed nothing. "
          "Either restore key = [\"{}\"], or re-key the table: stop the tunnel, run "
          "`datatunnel uninstall --yes --table {}`, then `datatunnel init` and `datatunnel "
          "snapshot --table {} --restart --truncate-target` (docs/operations.md: \"Changing a "
          "table's key\")",
          name, fmt::join(key, ", "), fmt::join(c.key, ", "), fmt::join(c.key, "\", \""), name,
          name));
    }
  }
  return Status::OK();
}

Result<std::vector<CapturedTable>> CapturedTables(pg::Connection& source,
                                                  const std::string& tunnel) {
  std::vector<CapturedTable> out;
  DT_ASSIGN_OR_RETURN(
      auto state,
      source.Query("SELECT pg_catalog.to_regclass('datatunnel.tables') IS NOT NULL, EXISTS "
                   "(SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = "
                   "pg_catalog.to_regclass('datatunnel.tables') AND attname = 'tunnel' AND NOT "
                   "attisdropped)"));
  if (!state.GetBool(0, 0)) return out;
  // State of an earlier version has no tunnel names: all of it is anybody's.
  // One row per key column, in key order.
  DT_ASSIGN_OR_RETURN(
      auto r, source.Query(fmt::format("SELECT schema_name, table_name, change_table, {}, u.k "
                                       "FROM datatunnel.tables t LEFT JOIN LATERAL "
                                       "unnest(t.key_columns) WITH ORDINALITY AS u(k, n) ON true "
                                       "ORDER BY 1, 2, u.n",
                                       state.GetBool(0, 1) ? "coalesce(t.tunnel, '')" : "''")));
  for (int i = 0; i < r.rows(); ++i) {
    const QualifiedName name{std::string(r.Get(i, 0)), std::string(r.Get(i, 1))};
    if (out.empty() || out.back().source != name) {
      out.push_back({name, {name.schema, std::string(r.Get(i, 2))}, {}, std::string(r.Get(i, 3))});
    }
    if (!r.IsNull(i, 4)) out.back().key.emplace_back(r.Get(i, 4));
  }
  if (!tunnel.empty()) out = OfTunnel(std::move(out), tunnel);
  return out;
}

std::vector<CapturedTable> OfTunnel(std::vector<CapturedTable> captured,
                                    const std::string& tunnel) {
  std::erase_if(captured,
                [&](const CapturedTable& c) { return !c.tunnel.empty() && c.tunnel != tunnel; });
  return captured;
}

Status CheckOwnership(const std::vector<CapturedTable>& captured, const std::string& tunnel,
                      const std::vector<TableSpec>& tables, const std::string& where) {
  for (const auto& c : captured) {
    if (c.tunnel.empty() || c.tunnel == tunnel) continue;
    for (const auto& t : tables) {
      if (t.source == c.source) {
        return Status::BadConfig(OtherTunnelMessage(c.source, c.tunnel, tunnel, where) +
                                 " (init changed nothing)");
      }
    }
  }
  return Status::OK();
}

std::vector<QualifiedName> NotConfigured(const std::vector<CapturedTable>& captured,
                                         const std::vector<TableConfig>& configured) {
  std::vector<QualifiedName> out;
  for (const auto& c : captured) {
    bool found = std::any_of(configured.begin(), configured.end(),
                             [&](const TableConfig& t) { return t.source == c.source; });
    if (!found) out.push_back(c.source);
  }
  return out;
}

Result<int64_t> CountChanges(pg::Connection& source, const QualifiedName& change_table) {
  DT_ASSIGN_OR_RETURN(auto exists, source.Query("SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                                                {change_table.Quoted()}));
  if (!exists.GetBool(0, 0)) return 0;
  DT_ASSIGN_OR_RETURN(auto r, source.Query("SELECT count(*) FROM " + change_table.Quoted()));
  return r.GetInt64(0, 0);
}

Result<std::vector<std::string>> Leftovers(pg::Connection& source) {
  DT_ASSIGN_OR_RETURN(
      auto r,
      source.Query(
          "SELECT 'schema datatunnel' FROM pg_catalog.pg_namespace WHERE nspname = 'datatunnel' "
          "UNION ALL SELECT 'event trigger ' || evtname FROM pg_catalog.pg_event_trigger "
          "  WHERE evtname IN ('datatunnel_ddl', 'datatunnel_drop', 'datatunnel_add') "
          "UNION ALL SELECT format('trigger %s on %s', t.tgname, t.tgrelid::regclass) "
          "  FROM pg_catalog.pg_trigger t WHERE t.tgname IN ('datatunnel_capture', "
          "  'datatunnel_capture_insert', 'datatunnel_capture_update', "
          "'datatunnel_capture_delete', "
          "  'datatunnel_truncate', 'datatunnel_notify')"));
  std::vector<std::string> out;
  for (int i = 0; i < r.rows(); ++i) out.emplace_back(r.Get(i, 0));
  return out;
}

std::string OtherTunnelMessage(const QualifiedName& table, const std::string& owner,
                               const std::string& tunnel, const std::string& where) {
  return fmt::format(
      "table {} is captured by tunnel \"{}\" on the {}, and this configuration is tunnel "
      "\"{}\"; a table belongs to one tunnel only: remove it from one of the two "
      "configurations (if this tunnel was renamed, set [tunnel] name = \"{}\" to keep its "
      "state)",
      table.ToString(), owner, where, tunnel, owner);
}

Result<std::string> LoadInstallId(pg::Connection& source) {
  auto r = source.Query("SELECT install_id FROM datatunnel.meta");
  if (!r.ok() || r->rows() != 1) {
    if (!r.ok() && r.status().code() != StatusCode::kFatal) return r.status();
    return Status::BadConfig(
        fmt::format("the datatunnel state on the {} has no installation id (datatunnel.meta): run "
                    "`datatunnel init` to upgrade it",
                    source.description()));
  }
  return std::string(r->Get(0, 0));
}

std::string StateSchemaDdl() { return kCaptureInstallSql; }

namespace {

enum class Created { kBefore, kNow, kRefused };

// Creates event trigger `name` with `ddl` unless it exists, inside the open
// transaction: kRefused (the transaction goes on) when the role may not.
Result<Created> CreateEventTriggerIfMissing(pg::Connection& source, const std::string& name,
                                            const char* ddl) {
  DT_ASSIGN_OR_RETURN(
      auto has,
      source.Query("SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = $1", {name}));
  if (has.rows() > 0) return Created::kBefore;
  DT_RETURN_IF_ERROR(source.Exec("SAVEPOINT event_trigger"));
  if (source.Exec(ddl).ok()) return Created::kNow;
  DT_RETURN_IF_ERROR(source.Exec("ROLLBACK TO SAVEPOINT event_trigger"));
  return Created::kRefused;
}

}  // namespace

Result<bool> MayCreateEventTriggers(pg::Connection& source) {
  DT_ASSIGN_OR_RETURN(
      auto r, source.Query("SELECT rolsuper OR EXISTS (SELECT 1 FROM pg_catalog.pg_roles g "
                           "WHERE g.rolname = 'rds_superuser' AND pg_catalog.pg_has_role(r.oid, "
                           "g.oid, 'MEMBER')) FROM pg_catalog.pg_roles r WHERE r.rolname = "
                           "current_user"));
  return r.rows() == 1 && r.GetBool(0, 0);
}

namespace {

// Replaces tunnel `tunnel`'s auto_add patterns by `entries`' and creates
// the event trigger datatunnel_add when there are any, in the open
// transaction.
Status StoreAutoAdd(pg::Connection& source, const std::string& tunnel,
                    const std::vector<TableConfig>& entries, InstallReport* report) {
  DT_ASSIGN_OR_RETURN(auto before,
                      source.Query("SELECT pattern FROM datatunnel.auto_add WHERE tunnel = $1 "
                                   "ORDER BY entry",
                                   {tunnel}));
  std::vector<std::string> old_patterns, new_patterns;
  for (int i = 0; i < before.rows(); ++i) old_patterns.emplace_back(before.Get(i, 0));
  for (const auto& e : entries) new_patterns.push_back(e.pattern_text);
  DT_RETURN_IF_ERROR(
      source.Query("DELETE FROM datatunnel.auto_add WHERE tunnel = $1", {tunnel}).status());
  for (size_t i = 0; i < entries.size(); ++i) {
    const TableConfig& e = entries[i];
    std::vector<std::optional<std::string>> schemas, names;
    for (const auto& x : e.exclude) {
      schemas.emplace_back(x.schema);
      names.emplace_back(x.name);
    }
    DT_RETURN_IF_ERROR(
        source
            .Query("INSERT INTO datatunnel.auto_add (tunnel, entry, pattern, "
                   "schema_like, name_like, exclude_schemas, exclude_names) "
                   "VALUES ($1, $2, $3, $4, $5, $6::text[], $7::text[])",
                   {tunnel, std::to_string(i + 1), e.pattern_text, e.pattern.schema, e.pattern.name,
                    pg::TextArrayLiteral(schemas), pg::TextArrayLiteral(names)})
            .status());
  }
  if (old_patterns != new_patterns) {
    report->actions.push_back(
        entries.empty() ? std::string("removed the auto_add patterns of tunnel \"" + tunnel + "\"")
                        : fmt::format("auto_add: a new table matching {} is captured when it is "
                                      "created",
                                      fmt::join(new_patterns, " or ")));
  }
  if (entries.empty()) return Status::OK();
  DT_ASSIGN_OR_RETURN(auto has, source.Query("SELECT 1 FROM pg_catalog.pg_event_trigger WHERE "
                                             "evtname = 'datatunnel_add'"));
  if (has.rows() > 0) return Status::OK();
  DT_RETURN_IF_ERROR(source.Exec("SAVEPOINT event_trigger"));
  if (Status st = source.Exec(kAddTriggerDdl); !st.ok()) {
    return Status::BadConfig(fmt::format(
        "auto_add = true needs an event trigger, which only a superuser may create ({}); run "
        "`datatunnel init` once as a superuser, or remove auto_add and run `datatunnel init` "
        "after creating tables",
        st.message()));
  }
  report->actions.push_back(
      "created event trigger datatunnel_add (captures new tables matching auto_add patterns)");
  return Status::OK();
}

}  // namespace

Result<InstallReport> Install(pg::Connection& source, const std::string& tunnel,
                              const std::vector<TableSpec>& tables,
                              const std::vector<TableConfig>* auto_add) {
  InstallReport report;
  DT_RETURN_IF_ERROR(source.Exec("BEGIN; SET LOCAL lock_timeout = '30s'"));
  auto fail = [&](Status st) {
    source.RollbackQuietly();
    return st;
  };
  auto had_schema =
      source.Query("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'datatunnel'");
  if (!had_schema.ok()) return fail(had_schema.status());
  if (Status st = source.Exec(kCaptureInstallSql); !st.ok()) return fail(st);
  if (had_schema->rows() == 0) report.actions.push_back("created schema datatunnel (state tables)");

  // Both event triggers need a superuser (or rds_superuser); without them
  // the tunnel still works. Without the drop guard a change table dropped by
  // hand makes the capture trigger fail (its message names the table);
  // without the DDL trigger a schema change needs `datatunnel init`.
  auto guard = CreateEventTriggerIfMissing(source, "datatunnel_drop", kDropGuardDdl);
  if (!guard.ok()) return fail(guard.status());
  if (*guard == Created::kNow) {
    report.actions.push_back(
        "created event trigger datatunnel_drop (refuses to drop a change table by hand)");
  }
  auto ddl = CreateEventTriggerIfMissing(source, "datatunnel_ddl", kDdlTriggerDdl);
  if (!ddl.ok()) return fail(ddl.status());
  if (*ddl == Created::kNow) {
    report.actions.push_back(
        "created event trigger datatunnel_ddl (keeps capture in step with ALTER TABLE)");
  } else if (*ddl == Created::kRefused) {
    report.warnings.push_back(
        "could not create the event trigger datatunnel_ddl (it needs a superuser): after every "
        "ALTER TABLE of a captured table, run `datatunnel init`; until then a dropped column "
        "makes writes to that table fail");
  }

  if (auto_add) {
    if (Status st = StoreAutoAdd(source, tunnel, *auto_add, &report); !st.ok()) return fail(st);
  }

  // Tunnels: a table belongs to one tunnel. State of an earlier version
  // (tunnel '') is claimed by the first tunnel that configures the table,
  // with a copy of the ticks its progress refers to.
  std::vector<std::optional<std::string>> schema_list, name_list;
  for (const auto& spec : tables) {
    schema_list.emplace_back(spec.source.schema);
    name_list.emplace_back(spec.source.name);
  }
  const std::string schemas = pg::TextArrayLiteral(schema_list);
  const std::string names = pg::TextArrayLiteral(name_list);
  auto owners = source.Query(
      "SELECT t.schema_name, t.table_name, t.tunnel FROM datatunnel.tables t "
      "JOIN unnest($1::text[], $2::text[]) AS c(s, n) ON c.s = t.schema_name "
      "AND c.n = t.table_name WHERE t.tunnel <> $3 ORDER BY 1, 2",
      {schemas, names, tunnel});
  if (!owners.ok()) return fail(owners.status());
  bool legacy = false;
  for (int i = 0; i < owners->rows(); ++i) {
    if (owners->Get(i, 2).empty()) {
      legacy = true;
      continue;
    }
    return fail(Status::BadConfig(
        OtherTunnelMessage({std::string(owners->Get(i, 0)), std::string(owners->Get(i, 1))},
                           std::string(owners->Get(i, 2)), tunnel, source.description())));
  }
  auto own_ticks =
      source.Query("SELECT EXISTS (SELECT 1 FROM datatunnel.ticks WHERE tunnel = $1)", {tunnel});
  if (!own_ticks.ok()) return fail(own_ticks.status());
  if (legacy && own_ticks->GetBool(0, 0)) {
    return fail(Status::BadConfig(fmt::format(
        "table {}.{} on the {} was set up by an earlier version under another configuration, and "
        "tunnel \"{}\" already runs on its own state: run `datatunnel init` with the "
        "configuration that captured the table before the upgrade",
        owners->Get(0, 0), owners->Get(0, 1), source.description(), tunnel)));
  }
  if (legacy) {
    const pg::Statement claim[] = {
        {"INSERT INTO datatunnel.ticks (tunnel, tick, snapshot, created_at) "
         "SELECT $1, tick, snapshot, created_at FROM datatunnel.ticks WHERE tunnel = ''",
         {tunnel}},
        {"UPDATE datatunnel.chain_heads h SET tunnel = $1 FROM unnest($2::text[], $3::text[]) "
         "AS c(s, n) WHERE h.tunnel = '' AND h.schema_name = c.s AND h.table_name = c.n",
         {tunnel, schemas, names}},
        {"UPDATE datatunnel.tables t SET tunnel = $1 FROM unnest($2::text[], $3::text[]) "
         "AS c(s, n) WHERE t.tunnel = '' AND t.schema_name = c.s AND t.table_name = c.n",
         {tunnel, schemas, names}},
        {"DELETE FROM datatunnel.ticks WHERE tunnel = '' AND NOT EXISTS "
         "(SELECT 1 FROM datatunnel.tables WHERE tunnel = '')",
         {}},
    };
    if (Status st = source.ExecPipeline(claim); !st.ok()) return fail(st);
    report.actions.push_back(fmt::format(
        "upgraded the state of {} table(s) set up by an earlier version to tunnel \"{}\"",
        owners->rows(), tunnel));
  }
  // The tunnel's first tick: a table registered now starts complete at it.
  auto first = source.Query(
      "INSERT INTO datatunnel.ticks (tunnel, tick, snapshot) "
      "SELECT $1, 0, pg_catalog.txid_current_snapshot() "
      "WHERE NOT EXISTS (SELECT 1 FROM datatunnel.ticks WHERE tunnel = $1) RETURNING 1",
      {tunnel});
  if (!first.ok()) return fail(first.status());
  if (first->rows() == 1) {
    report.actions.push_back(fmt::format("registered tunnel \"{}\"", tunnel));
  }

  for (size_t t = 0; t < tables.size(); ++t) {
    const TableSpec& spec = tables[t];
    const std::string name = spec.source.ToString();
    auto info = pg::LoadTable(source, spec.source);
    if (!info.ok()) return fail(info.status());
    if (!*info) return fail(Status::Fatal("source table " + name + " disappeared during init"));
    const std::string function = FunctionName((*info)->oid);
    std::vector<std::optional<std::string>> key;
    for (size_t k : spec.key) key.emplace_back(spec.columns[k].name);
    const std::string key_array = pg::TextArrayLiteral(key);

    auto before = source.Query(
        "SELECT published_count FROM datatunnel.tables WHERE schema_name = $1 AND table_name = $2",
        {spec.source.schema, spec.source.name});
    if (!before.ok()) return fail(before.status());
    const bool existed = before->rows() == 1;

    auto done = source.Query("SELECT unnest(datatunnel.install_capture($1::regclass, $2::text[]))",
                             {spec.source.Quoted(), key_array});
    if (!done.ok()) return fail(done.status().WithContext("setting up capture of " + name));
    // Change tables of earlier versions move onto the shared sequence.
    auto shared = source.Query("SELECT datatunnel.share_change_id($1::regclass)",
                               {spec.change_table.Quoted()});
    if (!shared.ok()) return fail(shared.status().WithContext("moving " + name + "'s change ids"));
    if (!shared->IsNull(0, 0)) report.actions.emplace_back(shared->Get(0, 0));
    bool added_columns = false;
    for (int i = 0; i < done->rows(); ++i) {
      std::string a(done->Get(i, 0));
      if (a.rfind("added column ", 0) == 0 && a.rfind("added column dt$old", 0) != 0)
        added_columns = true;
      report.actions.push_back(std::move(a));
    }
    // New accepted columns with a DEFAULT: every existing row got a value
    // without a trigger firing, so the target needs a fresh copy too.
    bool new_default = false;
    if (existed) {
      auto d = source.Query(
          "SELECT COALESCE(bool_or(a.atthasdef OR a.atthasmissing), false) "
          "FROM pg_catalog.pg_attribute a, datatunnel.tables t "
          "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped "
          "  AND t.schema_name = $2 AND t.table_name = $3 "
          "  AND cardinality(t.column_names) > 0 AND NOT a.attname = ANY (t.column_names)",
          {spec.source.Quoted(), spec.source.schema, spec.source.name});
      if (!d.ok()) return fail(d.status());
      new_default = d->GetBool(0, 0);
    }
    if (existed && (added_columns || new_default)) report.needs_snapshot.push_back(t);

    // Register the table. A new table's progress starts at the newest tick,
    // complete: every change its trigger records is in a later batch, because
    // no transaction visible in that tick's snapshot could see the trigger.
    auto reg = source.Query(
        "INSERT INTO datatunnel.tables (schema_name, table_name, change_table, capture_function, "
        "  key_columns, column_names, column_types, published_tick, published_seq, tunnel) "
        "SELECT $1, $2, $3, $4, $5::text[], $7::text[], $8::text[], max(tick), $6, $9 "
        "FROM datatunnel.ticks WHERE tunnel = $9 "
        "ON CONFLICT (schema_name, table_name) DO UPDATE SET change_table = EXCLUDED.change_table, "
        "  capture_function = EXCLUDED.capture_function, key_columns = EXCLUDED.key_columns, "
        "  column_names = EXCLUDED.column_names, column_types = EXCLUDED.column_types "
        "  WHERE (datatunnel.tables.change_table, datatunnel.tables.capture_function, "
        "         datatunnel.tables.key_columns, datatunnel.tables.column_names, "
        "         datatunnel.tables.column_types) IS DISTINCT FROM "
        "        (EXCLUDED.change_table, EXCLUDED.capture_function, EXCLUDED.key_columns, "
        "         EXCLUDED.column_names, EXCLUDED.column_types) "
        "RETURNING (xmax = 0)",
        {spec.source.schema, spec.source.name, spec.change_table.name, function, key_array,
         std::to_string(Position::kEndOfTick), pg::TextArrayLiteral(Names(spec.columns)),
         pg::TextArrayLiteral(Types(spec.columns)), tunnel});
    if (!reg.ok()) return fail(reg.status());
    if (reg->rows() == 1 && reg->GetBool(0, 0)) {
      report.actions.push_back("registered " + name + " for capture");
    } else if (reg->rows() == 1) {
      report.actions.push_back("accepted the current columns and key of " + name);
    }
  }
  if (Status st = source.Commit(); !st.ok()) return st;
  return report;
}

std::string SchemaDrift::Describe() const {
  std::string out;
  for (const auto& c : added)
    out += fmt::format("{}column {} ({}) was added", out.empty() ? "" : "; ", c.name, c.type_sql);
  for (const auto& d : dropped)
    out += fmt::format("{}column {} was dropped", out.empty() ? "" : "; ", d);
  for (const auto& r : retyped)
    out += fmt::format("{}column {} changed type", out.empty() ? "" : "; ", r);
  return out;
}

Result<SchemaDrift> CheckSchema(pg::Connection& source, const TableSpec& spec) {
  DT_ASSIGN_OR_RETURN(auto names, ArrayColumn(source, spec, "column_names"));
  DT_ASSIGN_OR_RETURN(auto types, ArrayColumn(source, spec, "column_types"));
  SchemaDrift drift;
  if (names.empty()) return drift;  // nothing accepted yet
  for (const auto& c : spec.columns) {
    auto it = std::find(names.begin(), names.end(), c.name);
    if (it == names.end()) {
      drift.added.push_back(c);
    } else if (types[static_cast<size_t>(it - names.begin())] != c.type_sql) {
      drift.retyped.push_back(fmt::format(
          "{}: {} -> {}", c.name, types[static_cast<size_t>(it - names.begin())], c.type_sql));
    }
  }
  for (const auto& n : names) {
    if (spec.ColumnIndex(n) < 0) drift.dropped.push_back(n);
  }
  return drift;
}

Status AcceptSchema(pg::Connection& source, const TableSpec& spec) {
  DT_ASSIGN_OR_RETURN(
      auto r,
      source.Query("UPDATE datatunnel.tables SET column_names = $3::text[], "
                   "column_types = $4::text[] WHERE schema_name = $1 AND "
                   "table_name = $2",
                   {spec.source.schema, spec.source.name, pg::TextArrayLiteral(Names(spec.columns)),
                    pg::TextArrayLiteral(Types(spec.columns))}));
  (void)r;
  return Status::OK();
}

Result<std::vector<TypeDdl>> UserTypes(pg::Connection& source,
                                       const std::vector<TableSpec>& tables) {
  // The user-defined types of the columns (through arrays and domains),
  // deepest dependency first.
  std::string oids;
  for (const auto& t : tables) {
    for (const auto& c : t.columns) oids += (oids.empty() ? "" : ",") + std::to_string(c.type_oid);
  }
  if (oids.empty()) return std::vector<TypeDdl>();
  DT_ASSIGN_OR_RETURN(
      auto r,
      source.Query(
          "WITH RECURSIVE deps(oid, depth) AS ("
          "  SELECT unnest($1::oid[]), 0"
          "  UNION"
          "  SELECT d.dep, deps.depth + 1 FROM deps JOIN pg_catalog.pg_type t ON t.oid = deps.oid,"
          "  LATERAL (SELECT t.typelem AS dep WHERE t.typelem <> 0"
          "           UNION ALL SELECT t.typbasetype WHERE t.typtype = 'd'"
          "           UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a"
          "             WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0"
          "               AND NOT a.attisdropped) d"
          "  WHERE deps.depth < 10) "
          "SELECT n.nspname, t.typname, t.typtype, "
          "  CASE t.typtype "
          "  WHEN 'e' THEN format('CREATE TYPE %I.%I AS ENUM (%s)', n.nspname, t.typname, "
          "    (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) "
          "     FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid)) "
          "  WHEN 'd' THEN format('CREATE DOMAIN %I.%I AS %s%s%s', n.nspname, t.typname, "
          "    format_type(t.typbasetype, t.typtypmod), CASE WHEN t.typnotnull THEN ' NOT NULL' "
          "    ELSE '' END, COALESCE((SELECT string_agg(' CONSTRAINT ' || quote_ident(c.conname) "
          "    || ' ' || pg_get_constraintdef(c.oid), '') FROM pg_catalog.pg_constraint c "
          "    WHERE c.contypid = t.oid), '')) "
          "  ELSE format('CREATE TYPE %I.%I AS (%s)', n.nspname, t.typname, "
          "    (SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, "
          "a.atttypmod)), "
          "     ', ' ORDER BY a.attnum) FROM pg_catalog.pg_attribute a WHERE a.attrelid = "
          "t.typrelid "
          "     AND a.attnum > 0 AND NOT a.attisdropped)) END "
          "FROM (SELECT oid, max(depth) AS depth FROM deps GROUP BY oid) x "
          "JOIN pg_catalog.pg_type t ON t.oid = x.oid "
          "JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
          "WHERE t.typtype IN ('e', 'd', 'c') AND n.nspname NOT IN ('pg_catalog', "
          "'information_schema') AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_catalog.pg_class "
          "WHERE oid = t.typrelid) = 'c') "
          "ORDER BY x.depth DESC, t.oid",
          {"{" + oids + "}"}));
  std::vector<TypeDdl> out;
  for (int i = 0; i < r.rows(); ++i) {
    TypeDdl d;
    d.schema = std::string(r.Get(i, 0));
    d.name = QuoteIdent(d.schema) + "." + QuoteIdent(std::string(r.Get(i, 1)));
    d.ddl = std::string(r.Get(i, 3));
    out.push_back(std::move(d));
  }
  return out;
}

Result<std::vector<std::string>> Uninstall(pg::Connection& source,
                                           const std::vector<TableSpec>& tables) {
  std::vector<std::string> actions;
  // datatunnel.uninstalling: the drop guard (datatunnel.on_drop) lets these
  // drops of change tables through.
  DT_RETURN_IF_ERROR(source.Exec(
      "BEGIN; SET LOCAL lock_timeout = '30s'; SET LOCAL datatunnel.uninstalling = 'on'"));
  auto fail = [&](Status st) {
    source.RollbackQuietly();
    return st;
  };
  auto has_state = source.Query(
      "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = "
      "c.relnamespace WHERE n.nspname = 'datatunnel' AND c.relname = 'tables'");
  if (!has_state.ok()) return fail(has_state.status());
  // State tables added by later versions: chain heads, the touch log.
  auto added = source.Query(
      "SELECT pg_catalog.to_regclass('datatunnel.chain_heads') IS NOT NULL, "
      "pg_catalog.to_regclass('datatunnel.touches') IS NOT NULL");
  if (!added.ok()) return fail(added.status());
  const bool has_heads = added->GetBool(0, 0), has_touches = added->GetBool(0, 1);
  for (const auto& spec : tables) {
    const std::string name = spec.source.ToString();
    auto info = pg::LoadTable(source, spec.source);
    if (!info.ok()) return fail(info.status());
    std::string function;
    if (has_state->rows()) {
      auto reg = source.Query(
          "SELECT capture_function FROM datatunnel.tables WHERE schema_name = $1 AND table_name = "
          "$2",
          {spec.source.schema, spec.source.name});
      if (!reg.ok()) return fail(reg.status());
      if (reg->rows()) function = std::string(reg->Get(0, 0));
    }
    if (function.empty() && *info) function = FunctionName((**info).oid);
    if (*info) {
      for (const char* trig :
           {"datatunnel_capture", "datatunnel_capture_insert", "datatunnel_capture_update",
            "datatunnel_capture_delete", "datatunnel_truncate", "datatunnel_notify"}) {
        auto q = source.Query(
            "SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1::oid AND tgname = $2",
            {std::to_string((**info).oid), trig});
        if (!q.ok()) return fail(q.status());
        if (q->rows() == 0) continue;
        if (Status st =
                source.Exec(fmt::format("DROP TRIGGER {} ON {}", trig, spec.source.Quoted()));
            !st.ok()) {
          return fail(st);
        }
        actions.push_back(fmt::format("dropped trigger {} on {}", trig, name));
      }
    }
    if (!function.empty()) {
      auto q = source.Query(
          "SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = "
          "p.pronamespace WHERE n.nspname = 'datatunnel' AND p.proname = $1",
          {function});
      if (!q.ok()) return fail(q.status());
      if (q->rows()) {
        if (Status st = source.Exec("DROP FUNCTION datatunnel." + QuoteIdent(function) + "()");
            !st.ok()) {
          return fail(st);
        }
        actions.push_back("dropped function datatunnel." + function + "()");
      }
    }
    auto cdc = pg::LoadTable(source, spec.change_table);
    if (!cdc.ok()) return fail(cdc.status());
    if (*cdc) {
      if (has_touches) {  // its rows in the touch log
        auto q = source.Query("DELETE FROM datatunnel.touches WHERE rel = $1::oid",
                              {std::to_string((**cdc).oid)});
        if (!q.ok()) return fail(q.status());
      }
      if (Status st = source.Exec("DROP TABLE " + spec.change_table.Quoted()); !st.ok()) {
        return fail(st);
      }
      actions.push_back("dropped change table " + spec.change_table.ToString());
    }
    if (has_state->rows()) {
      auto q =
          source.Query("DELETE FROM datatunnel.tables WHERE schema_name = $1 AND table_name = $2",
                       {spec.source.schema, spec.source.name});
      if (!q.ok()) return fail(q.status());
      if (has_heads) {
        q = source.Query(
            "DELETE FROM datatunnel.chain_heads WHERE schema_name = $1 AND table_name = $2",
            {spec.source.schema, spec.source.name});
        if (!q.ok()) return fail(q.status());
      }
    }
  }
  if (has_state->rows()) {
    // auto_add patterns of tunnels left without tables go, and the event
    // trigger with the last of them.
    auto patterns =
        source.Query("SELECT pg_catalog.to_regclass('datatunnel.auto_add') IS NOT NULL");
    if (!patterns.ok()) return fail(patterns.status());
    if (patterns->GetBool(0, 0)) {
      patterns = source.Query(
          "WITH gone AS (DELETE FROM datatunnel.auto_add a WHERE NOT EXISTS (SELECT 1 FROM "
          "datatunnel.tables t WHERE t.tunnel = a.tunnel) RETURNING 1) "
          // The statement's snapshot: the rows the DELETE keeps are those
          // of tunnels with tables. None left: the trigger goes too.
          "SELECT NOT EXISTS (SELECT 1 FROM datatunnel.auto_add a WHERE EXISTS (SELECT 1 FROM "
          "datatunnel.tables t WHERE t.tunnel = a.tunnel)) FROM (SELECT count(*) FROM gone) g");
      if (!patterns.ok()) return fail(patterns.status());
    }
    if (patterns->GetBool(0, 0)) {
      auto has = source.Query(
          "SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'datatunnel_add'");
      if (!has.ok()) return fail(has.status());
      if (has->rows() > 0) {
        if (Status st = source.Exec("DROP EVENT TRIGGER datatunnel_add"); !st.ok()) {
          return fail(
              st.WithContext("dropping event trigger datatunnel_add (run uninstall as the "
                             "superuser who ran init)"));
        }
        actions.push_back("dropped event trigger datatunnel_add (auto_add)");
      }
    }
    auto left = source.Query("SELECT count(*) FROM datatunnel.tables");
    if (!left.ok()) return fail(left.status());
    if (left->GetInt64(0, 0) == 0) {
      if (Status st = source.Exec("DROP SCHEMA datatunnel CASCADE"); !st.ok()) return fail(st);
      actions.push_back("dropped schema datatunnel (state tables)");
    }
  }
  if (Status st = source.Commit(); !st.ok()) return st;
  return actions;
}

std::vector<std::string> RuntimeGrants(const std::vector<TableSpec>& tables,
                                       const std::string& role) {
  const std::string r = QuoteIdent(role);
  std::vector<std::string> out = {
      fmt::format("GRANT USAGE ON SCHEMA datatunnel TO {};", r),
      fmt::format("GRANT SELECT ON datatunnel.meta TO {};", r),
      fmt::format("GRANT SELECT, INSERT, DELETE ON datatunnel.ticks TO {};", r),
      fmt::format("GRANT SELECT, UPDATE ON datatunnel.tables TO {};", r),
      fmt::format("GRANT SELECT, INSERT, UPDATE ON datatunnel.chain_heads TO {};", r),
      fmt::format("GRANT SELECT ON SEQUENCE datatunnel.change_id_seq TO {};", r),
      // The touch log (without these the producer probes every change table).
      fmt::format("GRANT SELECT, DELETE ON datatunnel.touches TO {};", r),
      fmt::format("GRANT SELECT, INSERT ON datatunnel.touch_guards TO {};", r),
  };
  std::set<std::string> schemas;
  for (const auto& t : tables) {
    if (schemas.insert(t.source.schema).second) {
      out.push_back(fmt::format("GRANT USAGE ON SCHEMA {} TO {};", QuoteIdent(t.source.schema), r));
    }
    out.push_back(
        fmt::format("GRANT SELECT ON {} TO {};  -- snapshot reads", t.source.Quoted(), r));
    out.push_back(fmt::format("GRANT SELECT, DELETE ON {} TO {};  -- read and prune changes",
                              t.change_table.Quoted(), r));
  }
  return out;
}

}  // namespace datatunnel::capture
