#include "capture/install.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

#include "core/change.h"

namespace datatunnel::capture {
namespace {

constexpr size_t kMaxIdentifier = 63;  // NAMEDATALEN - 1

std::string OldKeyColumn(const std::string& key) { return std::string(kOldKeyPrefix) + key; }

std::string FunctionName(uint32_t oid) { return fmt::format("capture_{}", oid); }

// "NEW"."a", "NEW"."b", ... for every column.
std::string RowValues(const TableSpec& spec, const char* record) {
  std::string out;
  for (size_t i = 0; i < spec.columns.size(); ++i) {
    if (i) out += ", ";
    out += fmt::format("{}.{}", record, QuoteIdent(spec.columns[i].name));
  }
  return out;
}

std::string ColumnList(const TableSpec& spec) {
  std::string out;
  for (size_t i = 0; i < spec.columns.size(); ++i) {
    if (i) out += ", ";
    out += QuoteIdent(spec.columns[i].name);
  }
  return out;
}

std::string OldKeyList(const TableSpec& spec) {
  std::string out;
  for (size_t k : spec.key) {
    out += ", " + QuoteIdent(OldKeyColumn(spec.columns[k].name));
  }
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
    if (key.empty()) {
      return Status::BadConfig(fmt::format(
          "source table {} has no primary key and no key is configured; add key = [\"column\", "
          "...] to its [[tables]] entry (columns that identify a row), or add a primary key",
          tc.source.ToString()));
    }
    DT_ASSIGN_OR_RETURN(spec.key, pg::ResolveKey(*info, tc.source, key, "source"));
    bool unique = std::any_of(info->unique_keys.begin(), info->unique_keys.end(),
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
      bool clash = std::find(std::begin(kMetaColumns), std::end(kMetaColumns), col.name) !=
                   std::end(kMetaColumns);
      for (size_t k : spec.key) clash = clash || col.name == OldKeyColumn(spec.columns[k].name);
      if (clash) {
        return Status::BadConfig(fmt::format(
            "source table {} has a column named \"{}\", which its change table {} needs for "
            "itself; rename that column",
            tc.source.ToString(), col.name, spec.change_table.ToString()));
      }
      if (OldKeyColumn(col.name).size() > kMaxIdentifier && spec.IsKey(&col - &spec.columns[0])) {
        return Status::BadConfig(fmt::format("key column name \"{}\" of {} is too long", col.name,
                                             tc.source.ToString()));
      }
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

std::string StateSchemaDdl() {
  return R"sql(
CREATE SCHEMA IF NOT EXISTS datatunnel;
COMMENT ON SCHEMA datatunnel IS 'datatunnel change-data-capture state; removed by datatunnel uninstall';
CREATE TABLE IF NOT EXISTS datatunnel.meta (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  epoch bigint NOT NULL,
  format_version integer NOT NULL,
  installed_at timestamptz NOT NULL DEFAULT now());
INSERT INTO datatunnel.meta (epoch, format_version)
  VALUES ((extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 1)
  ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS datatunnel.ticks (
  tick bigint PRIMARY KEY,
  snapshot txid_snapshot NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO datatunnel.ticks (tick, snapshot) VALUES (0, pg_catalog.txid_current_snapshot())
  ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS datatunnel.tables (
  schema_name text NOT NULL,
  table_name text NOT NULL,
  change_table text NOT NULL,
  capture_function text NOT NULL,
  key_columns text[] NOT NULL,
  published_tick bigint NOT NULL,
  published_seq bigint NOT NULL,
  published_count bigint NOT NULL DEFAULT 0,
  published_at timestamptz,
  snapshot_state text NOT NULL DEFAULT 'none'
    CHECK (snapshot_state IN ('none', 'requested', 'running', 'done')),
  snapshot_cursor text[],
  snapshot_rows bigint NOT NULL DEFAULT 0,
  snapshot_total bigint NOT NULL DEFAULT 0,
  snapshot_chunks bigint NOT NULL DEFAULT 0,
  snapshot_run bigint NOT NULL DEFAULT 0,
  snapshot_started_at timestamptz,
  snapshot_done_at timestamptz,
  installed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (schema_name, table_name));
CREATE OR REPLACE FUNCTION datatunnel.notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM pg_catalog.pg_notify('datatunnel', '');
  RETURN NULL;
END $fn$;
)sql";
}

std::string ChangeTableDdl(const TableSpec& spec) {
  std::string cols;
  for (size_t k : spec.key) {
    cols += fmt::format(",\n  {} {}", QuoteIdent(OldKeyColumn(spec.columns[k].name)),
                        spec.columns[k].type_sql);
  }
  for (const auto& c : spec.columns)
    cols += fmt::format(",\n  {} {}", QuoteIdent(c.name), c.type_sql);
  // Rows are inserted once and deleted once delivered: vacuum it eagerly so
  // its size follows the backlog, not the history.
  return fmt::format(
      "CREATE TABLE {} (\n"
      "  change_id bigserial PRIMARY KEY,\n"
      "  txid bigint NOT NULL,\n"
      "  action text NOT NULL,\n"
      "  captured_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(){}\n"
      ") WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,\n"
      "        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = "
      "10000);\n"
      "COMMENT ON TABLE {} IS {};",
      spec.change_table.Quoted(), cols, spec.change_table.Quoted(),
      QuoteLiteral("datatunnel: changes of " + spec.source.ToString() +
                   " waiting to be published"));
}

std::string CaptureFunctionDdl(const TableSpec& spec, const std::string& function) {
  const std::string cdc = spec.change_table.Quoted();
  const std::string cols = ColumnList(spec);
  std::string key_changed;
  std::string old_keys;
  for (size_t k : spec.key) {
    const std::string c = QuoteIdent(spec.columns[k].name);
    if (!key_changed.empty()) key_changed += " OR ";
    key_changed += fmt::format("NEW.{0} IS DISTINCT FROM OLD.{0}", c);
    old_keys += ", OLD." + c;
  }
  // Fully qualified names throughout: the function is SECURITY DEFINER and
  // runs with the writer's search_path (a SET clause would cost every write).
  return fmt::format(
      R"sql(CREATE OR REPLACE FUNCTION datatunnel.{fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO {cdc} (txid, action, {cols})
      VALUES (pg_catalog.txid_current(), 'INSERT', {new});
  ELSIF TG_OP = 'UPDATE' THEN
    IF {key_changed} THEN
      INSERT INTO {cdc} (txid, action{old_key_cols}, {cols})
        VALUES (pg_catalog.txid_current(), 'UPDATE'{old_keys}, {new});
    ELSE
      INSERT INTO {cdc} (txid, action, {cols})
        VALUES (pg_catalog.txid_current(), 'UPDATE', {new});
    END IF;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO {cdc} (txid, action, {cols})
      VALUES (pg_catalog.txid_current(), 'DELETE', {old});
  ELSE
    INSERT INTO {cdc} (txid, action) VALUES (pg_catalog.txid_current(), 'TRUNCATE');
  END IF;
  RETURN NULL;
END $fn$)sql",
      fmt::arg("fn", QuoteIdent(function)), fmt::arg("cdc", cdc), fmt::arg("cols", cols),
      fmt::arg("new", RowValues(spec, "NEW")), fmt::arg("old", RowValues(spec, "OLD")),
      fmt::arg("key_changed", key_changed), fmt::arg("old_key_cols", OldKeyList(spec)),
      fmt::arg("old_keys", old_keys));
}

Result<std::vector<std::string>> Install(pg::Connection& source,
                                         const std::vector<TableSpec>& tables) {
  std::vector<std::string> actions;
  DT_RETURN_IF_ERROR(source.Exec("BEGIN; SET LOCAL lock_timeout = '30s'"));
  auto fail = [&](Status st) {
    source.RollbackQuietly();
    return st;
  };
  DT_ASSIGN_OR_RETURN(auto had_schema,
                      source.Query("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = "
                                   "'datatunnel'"));
  if (Status st = source.Exec(StateSchemaDdl()); !st.ok()) return fail(st);
  if (had_schema.rows() == 0) actions.push_back("created schema datatunnel (state tables)");

  for (const auto& spec : tables) {
    const std::string name = spec.source.ToString();
    auto info = pg::LoadTable(source, spec.source);
    if (!info.ok()) return fail(info.status());
    if (!*info) return fail(Status::Fatal("source table " + name + " disappeared during init"));
    const std::string function = FunctionName((*info)->oid);

    auto cdc = pg::LoadTable(source, spec.change_table);
    if (!cdc.ok()) return fail(cdc.status());
    if (!*cdc) {
      if (Status st = source.Exec(ChangeTableDdl(spec)); !st.ok()) return fail(st);
      actions.push_back("created change table " + spec.change_table.ToString());
    } else {
      // Bring an existing change table up to date with the source: add what
      // is new; a retyped column is an error (its captured values would not fit).
      for (const auto& c : spec.columns) {
        auto it = std::find_if((*cdc)->columns.begin(), (*cdc)->columns.end(),
                               [&](const pg::CatalogColumn& x) { return x.name == c.name; });
        if (it == (*cdc)->columns.end()) {
          Status st =
              source.Exec(fmt::format("ALTER TABLE {} ADD COLUMN {} {}", spec.change_table.Quoted(),
                                      QuoteIdent(c.name), c.type_sql));
          if (!st.ok()) return fail(st);
          actions.push_back(
              fmt::format("added column {} to {}", c.name, spec.change_table.ToString()));
        } else if (it->type_sql != c.type_sql) {
          return fail(Status::Fatal(fmt::format(
              "column {} of {} changed type from {} to {}; changes already captured with the old "
              "type are waiting in {}: let the tunnel drain them, then run `datatunnel uninstall` "
              "and `datatunnel init` for this table and snapshot it again",
              c.name, name, it->type_sql, c.type_sql, spec.change_table.ToString())));
        }
      }
      for (size_t k : spec.key) {
        const auto& c = spec.columns[k];
        std::string old = OldKeyColumn(c.name);
        bool has = std::any_of((*cdc)->columns.begin(), (*cdc)->columns.end(),
                               [&](const pg::CatalogColumn& x) { return x.name == old; });
        if (!has) {
          Status st =
              source.Exec(fmt::format("ALTER TABLE {} ADD COLUMN {} {}", spec.change_table.Quoted(),
                                      QuoteIdent(old), c.type_sql));
          if (!st.ok()) return fail(st);
          actions.push_back(
              fmt::format("added column {} to {}", old, spec.change_table.ToString()));
        }
      }
    }

    // Replace the function only when its body differs, so a second init
    // reports (and does) nothing.
    std::string ddl = CaptureFunctionDdl(spec, function);
    auto body = source.Query(
        "SELECT p.prosrc FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n "
        "ON n.oid = p.pronamespace WHERE n.nspname = 'datatunnel' AND p.proname = $1",
        {function});
    if (!body.ok()) return fail(body.status());
    auto begin = ddl.find("$fn$") + 4;
    auto end = ddl.rfind("$fn$");
    std::string wanted = ddl.substr(begin, end - begin);
    if (body->rows() == 0 || body->Get(0, 0) != wanted) {
      if (Status st = source.Exec(ddl); !st.ok()) return fail(st);
      if (Status st = source.Exec(
              fmt::format("COMMENT ON FUNCTION datatunnel.{}() IS {}", QuoteIdent(function),
                          QuoteLiteral("datatunnel: captures changes of " + name + " into " +
                                       spec.change_table.ToString())));
          !st.ok()) {
        return fail(st);
      }
      actions.push_back(fmt::format("{} trigger function datatunnel.{}() for {}",
                                    body->rows() ? "updated" : "created", function, name));
    }

    auto triggers = source.Query(
        "SELECT tgname FROM pg_catalog.pg_trigger WHERE tgrelid = $1::oid AND NOT tgisinternal",
        {std::to_string((*info)->oid)});
    if (!triggers.ok()) return fail(triggers.status());
    std::set<std::string> existing;
    for (int r = 0; r < triggers->rows(); ++r) existing.emplace(triggers->Get(r, 0));
    struct Trig {
      const char* name;
      std::string ddl;
    };
    const std::string t = spec.source.Quoted();
    const Trig wanted_triggers[] = {
        {"datatunnel_capture",
         fmt::format("CREATE TRIGGER datatunnel_capture AFTER INSERT OR UPDATE OR DELETE ON {} "
                     "FOR EACH ROW EXECUTE FUNCTION datatunnel.{}()",
                     t, QuoteIdent(function))},
        {"datatunnel_truncate",
         fmt::format("CREATE TRIGGER datatunnel_truncate AFTER TRUNCATE ON {} "
                     "FOR EACH STATEMENT EXECUTE FUNCTION datatunnel.{}()",
                     t, QuoteIdent(function))},
        {"datatunnel_notify",
         fmt::format("CREATE TRIGGER datatunnel_notify AFTER INSERT OR UPDATE OR DELETE OR "
                     "TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION datatunnel.notify()",
                     t)},
    };
    for (const auto& trig : wanted_triggers) {
      if (existing.count(trig.name)) continue;
      if (Status st = source.Exec(trig.ddl); !st.ok()) return fail(st);
      actions.push_back(fmt::format("created trigger {} on {}", trig.name, name));
    }

    // Register the table. A new table's progress starts at the newest tick,
    // complete: every change its trigger records is in a later batch, because
    // no transaction visible in that tick's snapshot could see the trigger.
    std::vector<std::optional<std::string>> key_names;
    for (size_t k : spec.key) key_names.emplace_back(spec.columns[k].name);
    const std::string key_array = pg::TextArrayLiteral(key_names);
    auto reg = source.Query(
        "INSERT INTO datatunnel.tables (schema_name, table_name, change_table, capture_function, "
        "  key_columns, published_tick, published_seq) "
        "SELECT $1, $2, $3, $4, $5::text[], max(tick), $6 FROM datatunnel.ticks "
        "ON CONFLICT (schema_name, table_name) DO UPDATE SET change_table = EXCLUDED.change_table, "
        "  capture_function = EXCLUDED.capture_function, key_columns = EXCLUDED.key_columns "
        "  WHERE (datatunnel.tables.change_table, datatunnel.tables.capture_function, "
        "         datatunnel.tables.key_columns) IS DISTINCT FROM "
        "        (EXCLUDED.change_table, EXCLUDED.capture_function, EXCLUDED.key_columns) "
        "RETURNING (xmax = 0)",
        {spec.source.schema, spec.source.name, spec.change_table.name, function, key_array,
         std::to_string(Position::kEndOfTick)});
    if (!reg.ok()) return fail(reg.status());
    if (reg->rows() == 1 && reg->GetBool(0, 0)) {
      actions.push_back("registered " + name + " for capture");
    } else if (reg->rows() == 1) {
      actions.push_back("updated the registration of " + name);
    }
  }
  if (Status st = source.Commit(); !st.ok()) return st;
  return actions;
}

Result<std::vector<std::string>> Uninstall(pg::Connection& source,
                                           const std::vector<TableSpec>& tables) {
  std::vector<std::string> actions;
  DT_RETURN_IF_ERROR(source.Exec("BEGIN; SET LOCAL lock_timeout = '30s'"));
  auto fail = [&](Status st) {
    source.RollbackQuietly();
    return st;
  };
  auto has_state = source.Query(
      "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = "
      "c.relnamespace WHERE n.nspname = 'datatunnel' AND c.relname = 'tables'");
  if (!has_state.ok()) return fail(has_state.status());
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
      for (const char* trig : {"datatunnel_capture", "datatunnel_truncate", "datatunnel_notify"}) {
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
    }
  }
  if (has_state->rows()) {
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
