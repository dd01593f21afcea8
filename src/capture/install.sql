-- datatunnel: capture objects on the source database.
--
-- Run by `datatunnel init` (idempotent). Everything lives in the schema
-- `datatunnel`, except each captured table's change table <table>_cdc, which
-- sits beside the table as in the original brief. See docs/architecture.md.

CREATE SCHEMA IF NOT EXISTS datatunnel;
COMMENT ON SCHEMA datatunnel IS 'datatunnel change-data-capture state; removed by datatunnel uninstall';

-- One row: the installation. epoch orders positions across reinstalls.
CREATE TABLE IF NOT EXISTS datatunnel.meta (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  epoch bigint NOT NULL,
  format_version integer NOT NULL,
  installed_at timestamptz NOT NULL DEFAULT now());
INSERT INTO datatunnel.meta (epoch, format_version)
  VALUES ((extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 1)
  ON CONFLICT DO NOTHING;
-- The installation's identity, in every message ("source.install"): a
-- consumer refuses messages of another source installation.
ALTER TABLE datatunnel.meta
  ADD COLUMN IF NOT EXISTS install_id text NOT NULL DEFAULT pg_catalog.gen_random_uuid()::text;

-- Ticks: snapshots that cut the change stream into batches (capture/change_log.h).
-- Each tunnel (`[tunnel] name`) has its own sequence of ticks; its first, tick
-- 0, is recorded by the `init` that registers it.
CREATE TABLE IF NOT EXISTS datatunnel.ticks (
  tunnel text NOT NULL,
  tick bigint NOT NULL,
  snapshot txid_snapshot NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tunnel, tick));

-- One row per captured table: its capture objects, the columns the tunnel
-- has accepted, publishing progress and snapshot state.
CREATE TABLE IF NOT EXISTS datatunnel.tables (
  tunnel text NOT NULL,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  change_table text NOT NULL,
  capture_function text NOT NULL,
  key_columns text[] NOT NULL,
  column_names text[] NOT NULL DEFAULT '{}',
  column_types text[] NOT NULL DEFAULT '{}',
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
-- The tick of the end-of-snapshot marker of the last completed snapshot
-- (snapshot/chunker.h): the target holds the copy once every partition has
-- applied a marker at or after it. Added column, so `init` upgrades.
ALTER TABLE datatunnel.tables ADD COLUMN IF NOT EXISTS snapshot_tick bigint;
-- The producer asks every second which of its tables want a snapshot, an
-- answer that is nearly always none: this index gives it without reading
-- the table, whose rows the progress records rewrite several times a second
-- (over 500 tables a join with every row cost the producer 18 ms a second).
CREATE INDEX IF NOT EXISTS tables_snapshot_wanted ON datatunnel.tables (schema_name, table_name)
  WHERE snapshot_state IN ('requested', 'running');
-- Room on each page for the next versions of its rows, so a progress update
-- stays on the row's page (a HOT update: no index entry, and the old
-- versions are pruned by the next reader instead of waiting for a vacuum).
DO $$
BEGIN
  IF NOT 'fillfactor=50' = ANY (COALESCE((SELECT reloptions FROM pg_catalog.pg_class
      WHERE oid = 'datatunnel.tables'::regclass), '{}')) THEN
    ALTER TABLE datatunnel.tables SET (fillfactor = 50);
  END IF;
END $$;

-- The touch log: each statement's capture trigger, once its change rows are
-- written, adds (its change table, its transaction), so a tick learns which
-- change tables have changes from one small table whatever their number,
-- and deletes the rows it read (capture/change_log.h, RecordTick). Unlogged:
-- no WAL for it, and a crash (or a standby's promotion) empties it. A
-- tunnel's row in touch_guards is written only by a tick that read every
-- change table (a probe), so it says the log has been complete since; it
-- goes with the log, and a tick that finds it gone probes again.
CREATE UNLOGGED TABLE IF NOT EXISTS datatunnel.touches (
  rel oid NOT NULL,
  txid bigint NOT NULL);
CREATE UNLOGGED TABLE IF NOT EXISTS datatunnel.touch_guards (
  tunnel text PRIMARY KEY);

-- Chain heads: per partition of a table's topic, the position of the last
-- message the producer sent there that recorded progress covers (so the
-- broker acknowledged it). Written in the transaction that records progress;
-- a restarted producer links its first message to each partition to it
-- ("source.prev", see docs/architecture.md, The message). Only moves forward.
CREATE TABLE IF NOT EXISTS datatunnel.chain_heads (
  tunnel text NOT NULL,
  topic text NOT NULL,
  partition integer NOT NULL,
  schema_name text NOT NULL,
  table_name text NOT NULL,
  epoch bigint NOT NULL,
  tick bigint NOT NULL,
  seq bigint NOT NULL,
  sub integer NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tunnel, topic, partition));

-- Tunnels (from the version that named them): a table belongs to one tunnel;
-- ticks and chain heads are the tunnel's own. State from an earlier version
-- gets tunnel '' here, and the first `init` that configures a table claims it
-- (with a copy of the ticks its progress refers to).
ALTER TABLE datatunnel.ticks ADD COLUMN IF NOT EXISTS tunnel text NOT NULL DEFAULT '';
ALTER TABLE datatunnel.tables ADD COLUMN IF NOT EXISTS tunnel text NOT NULL DEFAULT '';
ALTER TABLE datatunnel.chain_heads ADD COLUMN IF NOT EXISTS tunnel text NOT NULL DEFAULT '';
DO $upgrade$
BEGIN
  IF (SELECT pg_catalog.array_length(c.conkey, 1) FROM pg_catalog.pg_constraint c
      WHERE c.conrelid = 'datatunnel.ticks'::regclass AND c.contype = 'p') = 1 THEN
    ALTER TABLE datatunnel.ticks DROP CONSTRAINT ticks_pkey;
    ALTER TABLE datatunnel.ticks ADD PRIMARY KEY (tunnel, tick);
  END IF;
  IF (SELECT pg_catalog.array_length(c.conkey, 1) FROM pg_catalog.pg_constraint c
      WHERE c.conrelid = 'datatunnel.chain_heads'::regclass AND c.contype = 'p') = 2 THEN
    ALTER TABLE datatunnel.chain_heads DROP CONSTRAINT chain_heads_pkey;
    ALTER TABLE datatunnel.chain_heads ADD PRIMARY KEY (tunnel, topic, partition);
  END IF;
END $upgrade$;

-- Where the current burst of publishing to the partition began: since_* is
-- the head before it, since_at when it moved away from there. A burst ends
-- when the head stays put for a second. `datatunnel status` uses it for the
-- age of the oldest change not yet applied: a target that has applied
-- since_* lacks only messages published since since_at.
ALTER TABLE datatunnel.chain_heads
  ADD COLUMN IF NOT EXISTS since_epoch bigint NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS since_tick bigint NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS since_seq bigint NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS since_sub integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS since_at timestamptz NOT NULL DEFAULT now();

-- Every change table draws "dt$change_id" from this one sequence (see
-- share_change_id below), so one read of it says whether anything was
-- captured anywhere, whatever the number of tables (ChangeLog::ChangedSince),
-- and a tick records where it stood (ticks.change_seq, read before the
-- tick's transaction takes its xid): a change with a larger id was written
-- after the tick.
CREATE SEQUENCE IF NOT EXISTS datatunnel.change_id_seq AS bigint;
ALTER TABLE datatunnel.ticks ADD COLUMN IF NOT EXISTS change_seq bigint;

-- Progress inside a change row that holds a whole statement's rows (the
-- bulk form, install_capture below): published_sub is the position's sub of
-- the last delivered element (element e, 0-based, is sub (e + 1) << 16), 0
-- for a change row of one row.
ALTER TABLE datatunnel.tables ADD COLUMN IF NOT EXISTS published_sub integer NOT NULL DEFAULT 0;

-- The equality operator to name in generated SQL for values of type p_type,
-- as schema.= for OPERATOR(): the capture trigger functions are SECURITY
-- DEFINER and run with the writer's search_path, where a bare = (or IS
-- DISTINCT FROM, or a bare type name) could resolve to an object of the
-- writer's, run as the functions' owner. Every operator and type name they
-- contain is qualified. The type's own schema's = when it has one for the
-- type (an extension's type, e.g. citext), else pg_catalog's (built-in types,
-- domains over them, enums, arrays, records).
CREATE OR REPLACE FUNCTION datatunnel.equality_operator(p_type oid) RETURNS text
LANGUAGE sql STABLE AS $fn$
  SELECT pg_catalog.format('%I.=', COALESCE(
    (SELECT n.nspname FROM pg_catalog.pg_type t
       JOIN pg_catalog.pg_operator o ON o.oprnamespace OPERATOR(pg_catalog.=) t.typnamespace
         AND o.oprname OPERATOR(pg_catalog.=) '='::pg_catalog.name
         AND o.oprleft OPERATOR(pg_catalog.=) t.oid AND o.oprright OPERATOR(pg_catalog.=) t.oid
       JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace
      WHERE t.oid OPERATOR(pg_catalog.=) (SELECT CASE WHEN d.typtype OPERATOR(pg_catalog.=) 'd'::pg_catalog.char
                                                      THEN d.typbasetype ELSE d.oid END
                                            FROM pg_catalog.pg_type d
                                           WHERE d.oid OPERATOR(pg_catalog.=) p_type)),
    'pg_catalog'))
$fn$;

-- Creates or updates the capture of one table: the change table (adding
-- columns the table gained; a retyped column is an error, SQLSTATE DT002),
-- the trigger function and the triggers. Returns one line per action taken.
-- Used by `datatunnel init` and by the event trigger below.
CREATE OR REPLACE FUNCTION datatunnel.install_capture(p_table regclass, p_key text[])
RETURNS text[] LANGUAGE plpgsql AS $fn$
DECLARE
  v_schema text;
  v_name text;
  v_cdc text;
  v_cdc_oid oid;
  v_fn text := 'capture_' || p_table::oid;
  v_actions text[] := '{}';
  v_defs text;
  v_cols text;
  v_new text;
  v_old text;
  v_keyexpr text;
  v_match text;
  v_keys text;
  v_old_cols text;
  v_either text;
  v_head text;
  v_update text;
  v_body text;
  v_stmt boolean;
  v_current text;
  v_bulk text;
  v_tpl text;
  v_same text;
  v_names text;
  v_row text;
  v_del_names text;
  v_del_row text;
  v_touch text;
  v_head_t text;
  v_typed boolean;
  v_keydefs text;
  v_tk_cols text;
  v_tk_slices text;
  v_tk_arrays text;
  v_del_bulk text;
  r record;
BEGIN
  SELECT n.nspname, c.relname INTO v_schema, v_name
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = p_table;
  v_cdc := pg_catalog.format('%I.%I', v_schema, v_name || '_cdc');
  v_cdc_oid := pg_catalog.to_regclass(v_cdc);
  -- A bulk DELETE of a table whose key columns all have fixed-length types
  -- (integers, uuid, dates, timestamps: not text or numeric) writes its keys
  -- as arrays of their own type, "dt$keys<n>" (see the trigger function).
  SELECT pg_catalog.count(*) > 0 AND pg_catalog.bool_and(t.typlen > 0 AND t.typarray <> 0),
         pg_catalog.string_agg(pg_catalog.format(E',\n  %I %s[]', 'dt$keys' || u.ord,
           pg_catalog.format_type(a.atttypid, a.atttypmod)), '' ORDER BY u.ord)
    INTO v_typed, v_keydefs
    FROM pg_catalog.unnest(p_key) WITH ORDINALITY AS u(k, ord)
    JOIN pg_catalog.pg_attribute a ON a.attrelid = p_table AND a.attname = u.k
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid;

  -- Change tables of earlier versions named their own columns change_id,
  -- txid, action, captured_at and old_<key>, which forbade those names in
  -- captured tables. Rename them in place (catalog only, instant; pending
  -- changes are kept): every name of ours now starts with dt$.
  IF v_cdc_oid IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b WHERE b.attrelid = v_cdc_oid
                     AND b.attname = 'dt$change_id' AND NOT b.attisdropped)
     AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b WHERE b.attrelid = v_cdc_oid
                 AND b.attname = 'change_id' AND NOT b.attisdropped) THEN
    FOR r IN SELECT * FROM (VALUES ('change_id', 'dt$change_id'), ('txid', 'dt$txid'),
                                   ('action', 'dt$action'), ('captured_at', 'dt$captured_at')) v(a, b)
             UNION ALL
             SELECT 'old_' || u.k, 'dt$old' || u.ord
               FROM pg_catalog.unnest(p_key) WITH ORDINALITY AS u(k, ord)
               JOIN pg_catalog.pg_attribute b ON b.attrelid = v_cdc_oid
                 AND b.attname = 'old_' || u.k AND NOT b.attisdropped LOOP
      EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN %I TO %I', v_cdc, r.a, r.b);
    END LOOP;
    v_actions := v_actions || ('renamed the columns of change table ' || v_schema || '.' || v_name
      || '_cdc to the dt$ names (pending changes kept)');
  END IF;

  IF v_cdc_oid IS NULL THEN
    -- dt$old<n>: the value before an UPDATE that changed the key, of the
    -- n-th key column. Every column of ours starts with dt$, so the user's
    -- columns never collide with them (DescribeSourceTables refuses source
    -- column names starting with dt$, datatunnel's namespace).
    SELECT pg_catalog.string_agg(pg_catalog.format(E',\n  %I %s', 'dt$old' || u.ord,
             pg_catalog.format_type(a.atttypid, a.atttypmod)), '' ORDER BY u.ord)
      INTO v_defs
      FROM pg_catalog.unnest(p_key) WITH ORDINALITY AS u(k, ord)
      JOIN pg_catalog.pg_attribute a ON a.attrelid = p_table AND a.attname = u.k;
    SELECT COALESCE(v_defs, '') || pg_catalog.string_agg(pg_catalog.format(E',\n  %I %s',
             a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)), '' ORDER BY a.attnum)
      INTO v_defs
      FROM pg_catalog.pg_attribute a
      WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped;
    -- Rows are inserted once and deleted once delivered: vacuum it eagerly so
    -- its size follows the backlog, not the history.
    EXECUTE pg_catalog.format(
      E'CREATE TABLE %s (\n  "dt$change_id" bigint PRIMARY KEY DEFAULT pg_catalog.nextval(\'datatunnel.change_id_seq\'::regclass),\n  "dt$txid" bigint NOT NULL,\n'
      || E'  "dt$action" text NOT NULL,\n  "dt$captured_at" timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),\n'
      || E'  "dt$cols" text[],\n  "dt$rows" text[]%s%s\n)'
      || ' WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,'
      || ' autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000)',
      v_cdc, CASE WHEN v_typed THEN v_keydefs ELSE '' END, v_defs);
    EXECUTE pg_catalog.format('COMMENT ON TABLE %s IS %L', v_cdc,
      'datatunnel: changes of ' || v_schema || '.' || v_name || ' waiting to be published');
    v_actions := v_actions || ('created change table ' || v_schema || '.' || v_name || '_cdc');
  ELSE
    -- The table's columns (and the dt$old key columns) the change table lacks.
    FOR r IN
      SELECT x.name, x.typ FROM (
        SELECT a.attname::text AS name, pg_catalog.format_type(a.atttypid, a.atttypmod) AS typ,
               a.attnum AS ord
          FROM pg_catalog.pg_attribute a
          WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT 'dt$old' || u.ord, pg_catalog.format_type(a.atttypid, a.atttypmod), u.ord - 100
          FROM pg_catalog.unnest(p_key) WITH ORDINALITY AS u(k, ord)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = p_table AND a.attname = u.k
        UNION ALL
        SELECT 'dt$keys' || u.ord, pg_catalog.format_type(a.atttypid, a.atttypmod) || '[]', u.ord - 200
          FROM pg_catalog.unnest(p_key) WITH ORDINALITY AS u(k, ord)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = p_table AND a.attname = u.k
          WHERE v_typed) x
      LEFT JOIN pg_catalog.pg_attribute b
        ON b.attrelid = v_cdc_oid AND b.attname = x.name AND NOT b.attisdropped
      WHERE b.attname IS NULL OR pg_catalog.format_type(b.atttypid, b.atttypmod) <> x.typ
      ORDER BY x.ord
    LOOP
      IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b
                 WHERE b.attrelid = v_cdc_oid AND b.attname = r.name AND NOT b.attisdropped) THEN
        RAISE EXCEPTION 'column % of %.% changed type to %, but change table % still has the '
          'old type: run ALTER TABLE % ALTER COLUMN % TYPE % on the source, alter the target '
          'column too, then run `datatunnel init` again',
          r.name, v_schema, v_name, r.typ, v_cdc, v_cdc, pg_catalog.quote_ident(r.name), r.typ
          USING ERRCODE = 'DT002';
      END IF;
      EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN %I %s', v_cdc, r.name, r.typ);
      v_actions := v_actions || ('added column ' || r.name || ' to ' || v_schema || '.' || v_name || '_cdc');
    END LOOP;
  END IF;

  -- The bulk form's columns (see the trigger function below), which change
  -- tables of earlier versions lack; "dt$rows" and "dt$keys<n>" compressed
  -- with lz4 where the server has it (PostgreSQL 14 and later, built with
  -- lz4), else with default_toast_compression (pglz unless set).
  v_cdc_oid := pg_catalog.to_regclass(v_cdc);
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b WHERE b.attrelid = v_cdc_oid
                 AND b.attname = 'dt$rows' AND NOT b.attisdropped) THEN
    EXECUTE pg_catalog.format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS "dt$cols" text[], '
      'ADD COLUMN IF NOT EXISTS "dt$rows" text[]', v_cdc);
    v_actions := v_actions || ('added columns dt$cols and dt$rows to ' || v_schema || '.' || v_name
      || '_cdc (statements of many rows are captured as arrays)');
  END IF;
  IF pg_catalog.current_setting('server_version_num')::integer >= 140000
     AND EXISTS (SELECT 1 FROM pg_catalog.pg_settings WHERE name = 'default_toast_compression'
                 AND 'lz4' = ANY (enumvals)) THEN
    FOR r IN EXECUTE 'SELECT attname::text AS name FROM pg_catalog.pg_attribute WHERE attrelid = $1 '
        'AND (attname = ''dt$rows'' OR attname::text ~ ''^dt\$keys[0-9]+$'') AND NOT attisdropped '
        'AND attcompression IS DISTINCT FROM ''l''' USING v_cdc_oid LOOP
      EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET COMPRESSION lz4', v_cdc, r.name);
    END LOOP;
  END IF;

  -- Versions before the touch log gave each change table a touch sequence
  -- (<table>_cdc_touch, owned by its "dt$txid" column), which the trigger
  -- drew from and a tick read for every table. Found here, dropped once the
  -- trigger function no longer draws from it (below), so that a producer of
  -- such a version, still running, fails on it and falls back to probing
  -- every change table, instead of reading values that no longer move.
  SELECT pg_catalog.format('%I.%I', n.nspname, s.relname) INTO v_touch
    FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
    JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
      AND d.refobjid = v_cdc_oid AND d.deptype = 'a' AND a.attname = 'dt$txid';

  -- The trigger function, generated from the catalog, run by three
  -- statement-level triggers with transition tables ("dt$new", "dt$old") and
  -- by the TRUNCATE trigger: each statement adds its change rows with one
  -- set-based INSERT ... SELECT, whatever its number of rows. Names are fully
  -- qualified: it is SECURITY DEFINER and runs with the writer's search_path
  -- (a SET clause would cost every write). Column names are always
  -- double-quoted (quote_ident() leaves PL/pgSQL's own keywords bare).
  --
  -- An UPDATE pairs old and new rows by key: a key in both is an UPDATE
  -- (the new row), a key only in the old rows the DELETE half of a key change,
  -- a key only in the new rows its INSERT half. Most UPDATEs
  -- change no key: when the old and new keys are the same, in the order the
  -- statement wrote them (one comparison of two arrays, a one-time filter of
  -- the INSERT), every new row is an UPDATE and no join is needed; otherwise
  -- the pairing joins the two transition tables (planned for their actual
  -- sizes, by EXECUTE). Within a statement a key is at most once among the
  -- old and once among the new rows, so no key has two change rows.
  -- A table without a key (full-row identity) has no pairing: an UPDATE is
  -- the DELETE of every old row, then the INSERT of every new row.
  SELECT c.relkind = 'r' AND NOT c.relispartition AND NOT EXISTS (
           SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = p_table OR i.inhparent = p_table)
    INTO v_stmt FROM pg_catalog.pg_class c WHERE c.oid = p_table;
  IF v_stmt THEN
    SELECT pg_catalog.string_agg('"' || pg_catalog.replace(a.attname, '"', '""') || '"', ', '
             ORDER BY a.attnum),
           pg_catalog.string_agg('n."' || pg_catalog.replace(a.attname, '"', '""') || '"', ', '
             ORDER BY a.attnum),
           pg_catalog.string_agg('o."' || pg_catalog.replace(a.attname, '"', '""') || '"', ', '
             ORDER BY a.attnum)
      INTO v_cols, v_new, v_old
      FROM pg_catalog.pg_attribute a
      WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped;
    SELECT CASE WHEN pg_catalog.count(*) = 1 THEN pg_catalog.min(x.q)
                ELSE 'ROW(' || pg_catalog.string_agg(x.q, ', ' ORDER BY x.ord) || ')' END,
           pg_catalog.string_agg(pg_catalog.format('n.%1$s OPERATOR(%2$s) o.%1$s', x.q, x.eq), ' AND '
             ORDER BY x.ord),
           pg_catalog.string_agg(', d.' || x.q, '' ORDER BY x.ord),
           pg_catalog.string_agg(pg_catalog.format(', %I', 'dt$old' || x.ord), '' ORDER BY x.ord),
           -- A key of integers (whose text never needs quoting in a record
           -- literal) is written by concatenation, cheaper than record_out.
           CASE WHEN pg_catalog.bool_and(x.typ IN (20, 21, 23)) THEN
             '''('' OPERATOR(pg_catalog.||) ' || pg_catalog.string_agg(pg_catalog.format(
               'COALESCE("dt$r".%s::pg_catalog.text, '''')', x.q),
               ' OPERATOR(pg_catalog.||) '','' OPERATOR(pg_catalog.||) ' ORDER BY x.ord)
               || ' OPERATOR(pg_catalog.||) '')'''
           ELSE 'ROW(' || pg_catalog.string_agg('"dt$r".' || x.q, ', ' ORDER BY x.ord) || ')::pg_catalog.text' END,
           pg_catalog.string_agg(pg_catalog.format(', %I', 'dt$keys' || x.ord), '' ORDER BY x.ord),
           pg_catalog.string_agg(pg_catalog.format(', "dt$k".%I["dt$e":"dt$e" OPERATOR(pg_catalog.+) 9999]', 'dt$a' || x.ord), ''
             ORDER BY x.ord),
           pg_catalog.string_agg(pg_catalog.format('ARRAY(SELECT %s FROM "dt$old" LIMIT 10000000) AS %I', x.q,
             'dt$a' || x.ord), ', ' ORDER BY x.ord)
      INTO v_keyexpr, v_match, v_keys, v_old_cols, v_del_row, v_tk_cols, v_tk_slices, v_tk_arrays
      FROM (SELECT '"' || pg_catalog.replace(u.k, '"', '""') || '"' AS q, u.ord, a.atttypid::integer AS typ,
                   datatunnel.equality_operator(a.atttypid) AS eq
              FROM pg_catalog.unnest(p_key) WITH ORDINALITY AS u(k, ord)
              JOIN pg_catalog.pg_attribute a ON a.attrelid = p_table AND a.attname = u.k) x;
    SELECT pg_catalog.string_agg(pg_catalog.format(
             'CASE WHEN n."dt$rn" IS NULL THEN d.%1$s ELSE n.%1$s END',
             '"' || pg_catalog.replace(a.attname, '"', '""') || '"'), ', ' ORDER BY a.attnum)
      INTO v_either
      FROM pg_catalog.pg_attribute a
      WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped;
    v_head := pg_catalog.format(E'INSERT INTO %s ("dt$txid", "dt$action", %s)\n', v_cdc, v_cols);
    -- The first statement of every branch adds the statement's row to the
    -- touch log in a data-modifying WITH, which runs once whatever the
    -- INSERT it precedes writes: 2,700-2,900 instructions less than a
    -- statement of its own (bench/trigger_cost.sh).
    v_head_t := pg_catalog.format(E'WITH "dt$t" AS (INSERT INTO datatunnel.touches '
      'VALUES (%s, pg_catalog.txid_current()))\n      ', v_cdc_oid) || v_head;
    -- The bulk form: a statement of more than 1,000 rows (or an UPDATE of as
    -- many that changes no key) writes them as arrays, one change row per
    -- 10,000 rows, each row in its text form (a record literal) in "dt$rows"
    -- and the table's column names at the time in "dt$cols". One change row
    -- per changed row costs a heap row, an index entry and their WAL, about
    -- what a bare INSERT of the row costs (197 MB of WAL per 1,000,000 rows);
    -- an array is one row, compressed by TOAST (lz4 where the server has it).
    -- Not the table's row type: a column of that type would make PostgreSQL
    -- refuse ALTER COLUMN ... TYPE and DROP TABLE on the captured table. The
    -- producer reads an array in pieces (capture/change_log.h, BulkRow);
    -- element e is published at sub-position (e + 1) << 16. Below the
    -- threshold a statement writes one change row per row (one query, whose
    -- check reads at most 1,001 rows: EXISTS ... OFFSET 1000, an initplan,
    -- costs a single-row statement less than a count), as do UPDATEs that
    -- change a key (paired below). The threshold and the rows per change row are bench/README.md's
    -- measurements ("source cost"). The rows' text is written with the
    -- settings the producer reads with (pg/connection.cc: DateStyle, TimeZone,
    -- IntervalStyle, extra_float_digits, bytea_output), set for the statement
    -- and then put back: a value's text form must not depend on the writer's
    -- session. So is work_mem, to 64MB: the grouping of a statement's rows
    -- into arrays is a hash aggregate, which at the default 4MB spilled a
    -- 1,000,000-row statement to disk (a fifth of the capture's time).
    -- v_bulk's arguments: the action, the column names, an element, the
    -- rows (a FROM item), a filter, the change table.
    v_bulk := E'      v_env := ARRAY[pg_catalog.current_setting(''DateStyle''), pg_catalog.current_setting(''TimeZone''), '
      || E'pg_catalog.current_setting(''IntervalStyle''), pg_catalog.current_setting(''extra_float_digits''), '
      || E'pg_catalog.current_setting(''bytea_output''), pg_catalog.current_setting(''work_mem'')];\n'
      || E'      PERFORM pg_catalog.set_config(''DateStyle'', ''ISO, YMD'', true), '
      || E'pg_catalog.set_config(''TimeZone'', ''UTC'', true), pg_catalog.set_config(''IntervalStyle'', ''postgres'', true), '
      || E'pg_catalog.set_config(''extra_float_digits'', ''3'', true), pg_catalog.set_config(''bytea_output'', ''hex'', true), '
      || E'pg_catalog.set_config(''work_mem'', ''64MB'', true);\n'
      || E'      INSERT INTO %6$s ("dt$txid", "dt$action", "dt$cols", "dt$rows")\n'
      || E'        SELECT pg_catalog.txid_current(), %1$L, %2$s, pg_catalog.array_agg(x.r)\n'
      || E'        FROM (SELECT %3$s AS r, (pg_catalog.row_number() OVER () OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog./) 10000 AS g '
      || E'FROM %4$s "dt$r") x%5$s\n'
      || E'        GROUP BY x.g ORDER BY x.g;\n'
      || E'      GET DIAGNOSTICS v_rows = ROW_COUNT;\n'
      || E'      PERFORM pg_catalog.set_config(''DateStyle'', v_env[1], true), '
      || E'pg_catalog.set_config(''TimeZone'', v_env[2], true), pg_catalog.set_config(''IntervalStyle'', v_env[3], true), '
      || E'pg_catalog.set_config(''extra_float_digits'', v_env[4], true), pg_catalog.set_config(''bytea_output'', v_env[5], true), '
      || E'pg_catalog.set_config(''work_mem'', v_env[6], true);\n';
    -- A bulk form's elements (v_row) and their column names (v_names): the
    -- whole row, with the table's column names when the statement ran; a
    -- DELETE of a table with a key only the key (v_del_row, v_del_names:
    -- its delete is published and applied by key, docs/architecture.md),
    -- which spares writing every column of every deleted row as text.
    v_names := '(SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY a.attnum) '
      || 'FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) TG_RELID '
      || 'AND a.attnum OPERATOR(pg_catalog.>) 0 '
      || 'AND NOT a.attisdropped)';
    v_row := '"dt$r"::pg_catalog.text';
    v_del_names := CASE WHEN v_keyexpr IS NULL THEN v_names
                        ELSE pg_catalog.quote_literal(p_key::text) || '::pg_catalog.text[]' END;
    v_del_row := COALESCE(v_del_row, v_row);
    -- A branch: its one-row-per-row INSERT (arguments: its head, the
    -- action, the columns, the transition table and its alias, -, a filter),
    -- then, when that wrote nothing, the bulk form (the 9th) and what follows
    -- it (the 8th).
    v_tpl := E'    %1$s      SELECT pg_catalog.txid_current(), %2$L, %3$s FROM %4$I %5$s\n'
      || E'      WHERE NOT EXISTS (SELECT FROM %4$I OFFSET 1000)%7$s;\n'
      || E'    GET DIAGNOSTICS v_rows = ROW_COUNT;\n'
      || E'    IF v_rows OPERATOR(pg_catalog.=) 0 THEN\n'
      || E'%9$s'
      || E'%8$s'
      || E'    END IF;\n';
    -- A bulk DELETE of a table whose key columns all have fixed-length types
    -- (v_typed) writes no text: each key column's values as an array of its
    -- own type in "dt$keys<n>", 10,000 per change row, sliced from one array
    -- of the statement's keys (an array of a fixed-length type is sliced
    -- without walking it; the grouping above costs more than the keys).
    -- The producer reads them as record literals (ROW(...)::text, in its
    -- own session), as if the text form had written them. "dt$rows" holds
    -- '{NULL}': a producer of a version before these columns stops on it
    -- ("not a row") instead of reading deletes without keys. An array holds
    -- at most 10,000,000 of them (memory, and PostgreSQL's 1 GB per value):
    -- the keys after those are written in the text form.
    -- bench/README.md, What was found: 0.59 s → 0.12 s of capture for a
    -- 1,000,000-row DELETE.
    v_del_bulk := pg_catalog.format(v_bulk, 'DELETE', v_del_names, v_del_row, '"dt$old"', '', v_cdc);
    IF v_typed THEN
      v_del_bulk := pg_catalog.format(
        E'      INSERT INTO %1$s ("dt$txid", "dt$action", "dt$cols", "dt$rows"%2$s)\n'
        || E'        SELECT pg_catalog.txid_current(), ''DELETE'', %3$s, ''{NULL}''::pg_catalog.text[]%4$s\n'
        || E'        FROM (SELECT %5$s OFFSET 0) "dt$k",\n'
        || E'          pg_catalog.generate_series(1, pg_catalog.cardinality("dt$k"."dt$a1"), 10000) AS "dt$s"("dt$e");\n'
        || E'      GET DIAGNOSTICS v_rows = ROW_COUNT;\n'
        || E'      IF v_rows OPERATOR(pg_catalog.=) 1000 THEN\n'
        || '%6$s'
        || E'      END IF;\n',
        v_cdc, v_tk_cols, v_del_names, v_tk_slices, v_tk_arrays,
        pg_catalog.format(v_bulk, 'DELETE', v_del_names, v_del_row,
          '(SELECT * FROM "dt$old" OFFSET 10000000)', '', v_cdc));
    END IF;
    IF v_keyexpr IS NULL THEN
      v_update := pg_catalog.format(v_tpl, v_head_t, 'DELETE', v_old, 'dt$old', 'o', '', '', '',
          pg_catalog.format(v_bulk, 'DELETE', v_names, v_row, '"dt$old"', '', v_cdc))
        || pg_catalog.format(v_tpl, v_head, 'INSERT', v_new, 'dt$new', 'n', '', '', '',
          pg_catalog.format(v_bulk, 'INSERT', v_names, v_row, '"dt$new"', '', v_cdc));
    ELSE
      -- The slow path: first the keys in both (UPDATE rows), then each key
      -- change as one row, as the row trigger wrote it: a key only among the
      -- old rows and one only among the new rows, paired in the order the
      -- statement wrote them, make an UPDATE row with the old key in
      -- "dt$old<n>" (published as the delete of the old key, then the insert
      -- of the new row). With a unique key both sides have as many; an unpaired
      -- one (duplicates of a configured key that is not unique) is a DELETE of
      -- the old row or an INSERT of the new one. (v_rows = 0 is tested on
      -- its own: PL/pgSQL evaluates it without a query, which an expression
      -- with EXISTS needs, and most UPDATEs stop there.) A bulk UPDATE that
      -- changes no key takes the bulk form (the second INSERT, whose
      -- one-time filter is the same comparison); one that does takes the
      -- slow path.
      -- The arrays are ARRAY(SELECT ...) sublinks, not array_agg(): an
      -- aggregate is an Agg node, and setting two of them up for every
      -- statement was a fifth of the capture's CPU on a single-row UPDATE
      -- (bench/README.md, What was found). Both compare keys with the key
      -- type's equality, NULL equal to NULL, and are equal for no rows.
      v_same := pg_catalog.format(E'ARRAY(SELECT %1$s FROM "dt$old")\n'
        || E'        OPERATOR(pg_catalog.=) ARRAY(SELECT %1$s FROM "dt$new")', v_keyexpr);
      v_update := pg_catalog.format(v_tpl, v_head_t, 'UPDATE', v_new, 'dt$new', 'n',
        '', E'\n      AND ' || v_same,
        pg_catalog.format(
          E'      IF v_rows OPERATOR(pg_catalog.=) 0 THEN\n'
          || E'        IF EXISTS (SELECT FROM "dt$old") THEN\n'
          || E'          EXECUTE %1$L;\n'
          || E'          EXECUTE %2$L;\n'
          || E'        END IF;\n'
          || E'      END IF;\n',
          v_head || E'  SELECT pg_catalog.txid_current(), ''UPDATE'', ' || v_new
            || E' FROM "dt$new" n\n  WHERE EXISTS (SELECT FROM "dt$old" o WHERE ' || v_match || ')',
          pg_catalog.format(E'INSERT INTO %s ("dt$txid", "dt$action"%s, %s)\n', v_cdc, v_old_cols, v_cols)
            || E'  SELECT pg_catalog.txid_current(), CASE WHEN n."dt$rn" IS NULL THEN ''DELETE'' '
            || E'WHEN d."dt$rn" IS NULL THEN ''INSERT'' ELSE ''UPDATE'' END' || v_keys || ', ' || v_either
            || E'\n  FROM (SELECT n.*, pg_catalog.row_number() OVER () AS "dt$rn" FROM "dt$new" n'
            || E'\n        WHERE NOT EXISTS (SELECT FROM "dt$old" o WHERE ' || v_match || ')) n'
            || E'\n  FULL JOIN (SELECT o.*, pg_catalog.row_number() OVER () AS "dt$rn" FROM "dt$old" o'
            || E'\n        WHERE NOT EXISTS (SELECT FROM "dt$new" n WHERE ' || v_match || ')) d'
            || E'\n  ON n."dt$rn" OPERATOR(pg_catalog.=) d."dt$rn"'),
        pg_catalog.format(v_bulk, 'UPDATE', v_names, v_row, '"dt$new"', E'\n        WHERE ' || v_same, v_cdc));
    END IF;
    v_body := pg_catalog.format(
    E'\nDECLARE\n  v_rows bigint;\n  v_env pg_catalog.text[];\nBEGIN\n'
    || E'  IF TG_OP OPERATOR(pg_catalog.=) ''INSERT'' THEN\n'
    || '%1$s'
    || E'  ELSIF TG_OP OPERATOR(pg_catalog.=) ''UPDATE'' THEN\n'
    || '%3$s'
    || E'  ELSIF TG_OP OPERATOR(pg_catalog.=) ''DELETE'' THEN\n'
    || '%2$s'
    || E'  ELSE\n'
    || E'    INSERT INTO %4$s ("dt$txid", "dt$action") VALUES (pg_catalog.txid_current(), ''TRUNCATE'');\n'
    || E'    INSERT INTO datatunnel.touches VALUES (%5$s, pg_catalog.txid_current());\n'
    || E'  END IF;\n'
    || E'  RETURN NULL;\n'
    || E'END ',
      pg_catalog.format(v_tpl, v_head_t, 'INSERT', v_new, 'dt$new', 'n', '', '', '',
        pg_catalog.format(v_bulk, 'INSERT', v_names, v_row, '"dt$new"', '', v_cdc)),
      pg_catalog.format(v_tpl, v_head_t, 'DELETE', v_old, 'dt$old', 'o', '', '', '', v_del_bulk),
      v_update, v_cdc, v_cdc_oid);
  ELSE
    -- A partitioned table, a partition or a table in an inheritance tree
    -- keeps the row-level trigger: statement triggers of a partition or an
    -- inheritance child do not fire for statements on its parent (its row
    -- triggers do, and a partitioned table's are cloned to new partitions),
    -- and a parent's transition tables hold its children's rows too. NEW and
    -- OLD fields are always double-quoted: quote_ident() leaves PL/pgSQL's
    -- own keywords bare (by, loop, strict, ...), and NEW.by is "record new
    -- has no field by".
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum),
           pg_catalog.string_agg('NEW."' || pg_catalog.replace(a.attname, '"', '""') || '"', ', '
             ORDER BY a.attnum),
           pg_catalog.string_agg('OLD."' || pg_catalog.replace(a.attname, '"', '""') || '"', ', '
             ORDER BY a.attnum)
      INTO v_cols, v_new, v_old
      FROM pg_catalog.pg_attribute a
      WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped;
    -- "IS DISTINCT FROM" would look its = up in the writer's search_path:
    -- the same test with the key type's = named (equality_operator()).
    -- (Each CASE in parentheses: PL/pgSQL's IF reads up to the first THEN
    -- outside them.)
    SELECT pg_catalog.string_agg(pg_catalog.format('(CASE WHEN NEW."%1$s" IS NULL OR OLD."%1$s" IS NULL '
             'THEN (NEW."%1$s" IS NULL) OPERATOR(pg_catalog.<>) (OLD."%1$s" IS NULL) '
             'ELSE NOT (NEW."%1$s" OPERATOR(%2$s) OLD."%1$s") END)',
             pg_catalog.replace(u.k, '"', '""'), datatunnel.equality_operator(a.atttypid)), ' OR '
             ORDER BY u.ord),
           pg_catalog.string_agg(pg_catalog.format(', %I', 'dt$old' || u.ord), '' ORDER BY u.ord),
           pg_catalog.string_agg(pg_catalog.format(', OLD."%s"', pg_catalog.replace(u.k, '"', '""')),
             '' ORDER BY u.ord)
      INTO v_match, v_old_cols, v_keys
      FROM pg_catalog.unnest(p_key) WITH ORDINALITY AS u(k, ord)
      JOIN pg_catalog.pg_attribute a ON a.attrelid = p_table AND a.attname = u.k;
    IF v_match IS NULL THEN
      -- No key (full-row identity): the old row goes, the new one comes.
      v_update := pg_catalog.format(
        E'    INSERT INTO %1$s ("dt$txid", "dt$action", %2$s)\n'
        || E'      VALUES (pg_catalog.txid_current(), ''DELETE'', %4$s);\n'
        || E'    INSERT INTO %1$s ("dt$txid", "dt$action", %2$s)\n'
        || E'      VALUES (pg_catalog.txid_current(), ''INSERT'', %3$s);\n',
        v_cdc, v_cols, v_new, v_old);
    ELSE
      v_update := pg_catalog.format(
        E'    IF %5$s THEN\n'
        || E'      INSERT INTO %1$s ("dt$txid", "dt$action"%6$s, %2$s)\n'
        || E'        VALUES (pg_catalog.txid_current(), ''UPDATE''%7$s, %3$s);\n'
        || E'    ELSE\n'
        || E'      INSERT INTO %1$s ("dt$txid", "dt$action", %2$s)\n'
        || E'        VALUES (pg_catalog.txid_current(), ''UPDATE'', %3$s);\n'
        || E'    END IF;\n',
        v_cdc, v_cols, v_new, v_old, v_match, v_old_cols, v_keys);
    END IF;
    v_body := pg_catalog.format(
    E'\nBEGIN\n'
    || E'  IF TG_OP OPERATOR(pg_catalog.=) ''INSERT'' THEN\n'
    || E'    INSERT INTO %1$s ("dt$txid", "dt$action", %2$s)\n'
    || E'      VALUES (pg_catalog.txid_current(), ''INSERT'', %3$s);\n'
    || E'  ELSIF TG_OP OPERATOR(pg_catalog.=) ''UPDATE'' THEN\n'
    || '%5$s'
    || E'  ELSIF TG_OP OPERATOR(pg_catalog.=) ''DELETE'' THEN\n'
    || E'    INSERT INTO %1$s ("dt$txid", "dt$action", %2$s)\n'
    || E'      VALUES (pg_catalog.txid_current(), ''DELETE'', %4$s);\n'
    || E'  ELSE\n'
    || E'    INSERT INTO %1$s ("dt$txid", "dt$action") VALUES (pg_catalog.txid_current(), ''TRUNCATE'');\n'
    || E'  END IF;\n'
    || E'  INSERT INTO datatunnel.touches VALUES (%6$s, pg_catalog.txid_current());\n'
    || E'  RETURN NULL;\n'
    || E'END ',
      v_cdc, v_cols, v_new, v_old, v_update, v_cdc_oid);
  END IF;
  SELECT p.prosrc INTO v_current FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = 'datatunnel'::regnamespace AND p.proname = v_fn;
  IF v_current IS DISTINCT FROM v_body THEN
    EXECUTE pg_catalog.format(
      'CREATE OR REPLACE FUNCTION datatunnel.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS %L',
      v_fn, v_body);
    EXECUTE pg_catalog.format('COMMENT ON FUNCTION datatunnel.%I() IS %L', v_fn,
      'datatunnel: captures changes of ' || v_schema || '.' || v_name || ' into ' || v_cdc);
    v_actions := v_actions || (CASE WHEN v_current IS NULL THEN 'created' ELSE 'updated' END
      || ' trigger function datatunnel.' || v_fn || '() for ' || v_schema || '.' || v_name);
  END IF;
  IF v_touch IS NOT NULL THEN
    EXECUTE pg_catalog.format('DROP SEQUENCE %s', v_touch);
    v_actions := v_actions || ('dropped sequence ' || v_touch || ' (the touch log, '
      || 'datatunnel.touches, tells a tick which change tables to read)');
  END IF;

  -- Versions before the statement-level capture had one row-level trigger,
  -- datatunnel_capture: replaced in place, in this transaction (the change
  -- table and its pending changes are kept, and no write falls between).
  IF v_stmt AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = p_table AND tgname = 'datatunnel_capture') THEN
    EXECUTE pg_catalog.format('DROP TRIGGER datatunnel_capture ON %s', p_table);
    v_actions := v_actions || ('replaced row trigger datatunnel_capture on ' || v_schema || '.' || v_name
      || ' with statement triggers datatunnel_capture_insert, _update and _delete (pending changes kept)');
  END IF;
  FOR r IN SELECT * FROM (VALUES
             ('datatunnel_capture_insert', 'INSERT', 'NEW TABLE AS "dt$new"'),
             ('datatunnel_capture_update', 'UPDATE', 'OLD TABLE AS "dt$old" NEW TABLE AS "dt$new"'),
             ('datatunnel_capture_delete', 'DELETE', 'OLD TABLE AS "dt$old"')) v(name, event, ref) LOOP
    IF v_stmt AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = p_table AND tgname = r.name) THEN
      EXECUTE pg_catalog.format('CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION datatunnel.%I()', r.name, r.event, p_table, r.ref, v_fn);
      v_actions := v_actions || ('created trigger ' || r.name || ' on ' || v_schema || '.' || v_name);
    ELSIF NOT v_stmt AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = p_table AND tgname = r.name) THEN
      EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', r.name, p_table);
      v_actions := v_actions || ('dropped trigger ' || r.name || ' on ' || v_schema || '.' || v_name
        || ' (it joined a partition or inheritance tree: the row trigger captures it)');
    END IF;
  END LOOP;
  IF NOT v_stmt AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = p_table AND tgname = 'datatunnel_capture') THEN
    EXECUTE pg_catalog.format('CREATE TRIGGER datatunnel_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
      'FOR EACH ROW EXECUTE FUNCTION datatunnel.%I()', p_table, v_fn);
    v_actions := v_actions || ('created trigger datatunnel_capture on ' || v_schema || '.' || v_name);
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = p_table AND tgname = 'datatunnel_truncate') THEN
    EXECUTE pg_catalog.format('CREATE TRIGGER datatunnel_truncate AFTER TRUNCATE ON %s '
      'FOR EACH STATEMENT EXECUTE FUNCTION datatunnel.%I()', p_table, v_fn);
    v_actions := v_actions || ('created trigger datatunnel_truncate on ' || v_schema || '.' || v_name);
  END IF;
  -- Earlier versions woke the producer with a NOTIFY per statement; NOTIFY
  -- serialises every committing writer, so the producer now polls instead.
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = p_table AND tgname = 'datatunnel_notify') THEN
    EXECUTE pg_catalog.format('DROP TRIGGER datatunnel_notify ON %s', p_table);
    v_actions := v_actions || ('dropped trigger datatunnel_notify on ' || v_schema || '.' || v_name
      || ' (NOTIFY serialised writers'' commits; the producer polls instead)');
  END IF;
  RETURN v_actions;
END $fn$;

-- After ALTER TABLE on a captured table, bring its capture up to date in the
-- same transaction, so a new column is captured from its first write and a
-- dropped column never breaks writes. It never fails the user's statement:
-- a problem becomes a warning, and the producer stops to explain it.
CREATE OR REPLACE FUNCTION datatunnel.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  r record;
  t record;
BEGIN
  FOR r IN SELECT DISTINCT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
           WHERE c.object_type = 'table' LOOP
    FOR t IN SELECT key_columns FROM datatunnel.tables WHERE capture_function = 'capture_' || r.objid LOOP
      BEGIN
        PERFORM datatunnel.install_capture(r.objid::regclass, t.key_columns);
      EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'datatunnel: could not update the capture of %: % (run `datatunnel init`)',
          r.objid::regclass, SQLERRM;
      END;
    END LOOP;
  END LOOP;
END $fn$;

-- A change table dropped by hand makes every write to its table fail (the
-- capture trigger has nowhere to write). With a superuser at `init`, an event
-- trigger refuses such a DROP in the statement itself; `datatunnel uninstall`
-- sets datatunnel.uninstalling for its own drops.
CREATE OR REPLACE FUNCTION datatunnel.on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
  r record;
BEGIN
  IF pg_catalog.current_setting('datatunnel.uninstalling', true) = 'on'
     OR pg_catalog.to_regclass('datatunnel.tables') IS NULL THEN
    RETURN;
  END IF;
  FOR r IN SELECT t.schema_name, t.table_name, t.change_table
             FROM pg_catalog.pg_event_trigger_dropped_objects() d
             JOIN datatunnel.tables t
               ON t.schema_name = d.schema_name AND t.change_table = d.object_name
            WHERE d.object_type = 'table' LOOP
    RAISE EXCEPTION 'datatunnel: %.% is the change table of captured table %.%: without it every write to %.% fails',
      pg_catalog.quote_ident(r.schema_name), pg_catalog.quote_ident(r.change_table),
      pg_catalog.quote_ident(r.schema_name), pg_catalog.quote_ident(r.table_name),
      pg_catalog.quote_ident(r.schema_name), pg_catalog.quote_ident(r.table_name)
      USING HINT = 'To stop capturing the table, remove it with `datatunnel uninstall` (it drops the change table and the triggers together).';
  END LOOP;
END $fn$;

-- Change tables of earlier versions drew "dt$change_id" from a sequence of
-- their own (bigserial). Moves one onto the shared sequence, keeping its
-- pending changes: the shared sequence is first moved past every id the
-- table's own sequence gave out (ids of a table keep growing, so change_id
-- order stays commit order for each row), then the column's default
-- changes and the old sequence is dropped. Returns the action taken, or
-- NULL when the table already uses the shared sequence.
CREATE OR REPLACE FUNCTION datatunnel.share_change_id(p_cdc regclass)
RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
  v_seq text;
  v_old bigint;
  v_max bigint;
  v_cur bigint;
BEGIN
  v_seq := pg_catalog.pg_get_serial_sequence(p_cdc::text, 'dt$change_id');
  IF v_seq IS NULL OR v_seq = 'datatunnel.change_id_seq' THEN
    RETURN NULL;
  END IF;
  -- Waits for the table's writers; none can take an old id after this.
  EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN "dt$change_id" SET DEFAULT '
    'pg_catalog.nextval(''datatunnel.change_id_seq''::regclass)', p_cdc);
  -- Blocks nextval() on the shared sequence until commit, so moving it
  -- forward cannot race with writers of tables already moved.
  ALTER SEQUENCE datatunnel.change_id_seq NO CYCLE;
  EXECUTE pg_catalog.format('SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM %s', v_seq)
    INTO v_old;
  EXECUTE pg_catalog.format('SELECT max("dt$change_id") FROM %s', p_cdc) INTO v_max;
  SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO v_cur FROM datatunnel.change_id_seq;
  IF GREATEST(v_old, v_max, 0) > v_cur THEN
    PERFORM pg_catalog.setval('datatunnel.change_id_seq', GREATEST(v_old, v_max));
  END IF;
  EXECUTE pg_catalog.format('DROP SEQUENCE %s', v_seq);
  RETURN 'moved change table ' || p_cdc::text || ' onto the shared change_id sequence (pending changes kept)';
END $fn$;

-- auto_add (a [[tables]] pattern entry with auto_add = true): the patterns
-- `init` stores for the event trigger datatunnel_add, one row per entry, in
-- the configuration's order. Each part is an SQL LIKE pattern (config.h,
-- NamePattern), as are the exclude lists (pairs of schema and name).
CREATE TABLE IF NOT EXISTS datatunnel.auto_add (
  tunnel text NOT NULL,
  entry integer NOT NULL,
  pattern text NOT NULL,
  schema_like text NOT NULL,
  name_like text NOT NULL,
  exclude_schemas text[] NOT NULL DEFAULT '{}',
  exclude_names text[] NOT NULL DEFAULT '{}',
  PRIMARY KEY (tunnel, entry));

-- After CREATE TABLE, CREATE TABLE AS or SELECT INTO: captures a new table
-- that an auto_add pattern selects, in the transaction that creates it, as
-- `init` would (same catalog rules as CatalogTables: ordinary and
-- partitioned tables, not partitions, not temporary tables, not change
-- tables), and registers it with its snapshot requested: a running tunnel
-- notices (NOTIFY datatunnel, 'tables') and copies it, then streams it. Its
-- key is the primary key, else the first unique index, as the table has them
-- when the statement ends; without either it is carried with full-row
-- identity (a partitioned table without one is not added). It never fails
-- the user's statement: a table it cannot add gets a WARNING saying why.
-- datatunnel.adding guards against firing again for the change table
-- install_capture creates. The shared advisory lock ("DTNA", tunnel) keeps
-- the producer from pruning the tick the new table starts at until this
-- transaction ends (ChangeLog::RecordProgress).
--
-- It runs for every CREATE TABLE, by anyone, as its owner (SECURITY
-- DEFINER): its SQL runs with search_path pg_catalog, so that no operator or
-- type of the creating session's schemas is used, except the column types it
-- records, written by format_type() as that session names them (as `init`
-- does); the session's search_path is put back before it returns. (Not a SET
-- clause on the function: that would hide the session's search_path.)
CREATE OR REPLACE FUNCTION datatunnel.on_create() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
DECLARE
  r record;
  a record;
  v_key pg_catalog.text[];
  v_why pg_catalog.text;
  v_types pg_catalog.text[];
  v_oids pg_catalog.oid[];
  v_mods pg_catalog.int4[];
  v_path pg_catalog.text := pg_catalog.current_setting('search_path');
BEGIN
  PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
  IF pg_catalog.current_setting('datatunnel.adding', true) = 'on'
     OR pg_catalog.to_regclass('datatunnel.auto_add') IS NULL THEN
    PERFORM pg_catalog.set_config('search_path', v_path, true);
    RETURN;
  END IF;
  FOR r IN SELECT DISTINCT c.objid, n.nspname::text AS nspname, k.relname::text AS relname,
                  k.relkind
             FROM pg_catalog.pg_event_trigger_ddl_commands() c
             JOIN pg_catalog.pg_class k ON k.oid = c.objid
             JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace
            WHERE c.classid = 'pg_catalog.pg_class'::regclass AND c.objsubid = 0
              AND c.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
              AND k.relkind IN ('r', 'p') AND NOT k.relispartition AND k.relpersistence <> 't'
              AND n.nspname NOT IN ('datatunnel', 'information_schema')
              AND n.nspname NOT LIKE 'pg\_%'
              AND NOT (k.relname LIKE '%\_cdc' AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b
                       WHERE b.attrelid = k.oid AND b.attname = 'dt$change_id' AND NOT b.attisdropped))
              AND NOT EXISTS (SELECT 1 FROM datatunnel.tables t
                              WHERE t.schema_name = n.nspname AND t.table_name = k.relname) LOOP
    BEGIN  -- an error in the checks is a WARNING too (below)
      SELECT x.* INTO a FROM datatunnel.auto_add x
       WHERE r.nspname LIKE x.schema_like AND r.relname LIKE x.name_like
         AND NOT EXISTS (SELECT 1 FROM unnest(x.exclude_schemas, x.exclude_names) e(s, t)
                         WHERE r.nspname LIKE e.s AND r.relname LIKE e.t)
       ORDER BY x.tunnel, x.entry LIMIT 1;
      -- (The multi-argument unnest above is the FROM clause's own form,
      -- which cannot be schema-qualified.)
      CONTINUE WHEN NOT FOUND;
      v_key := NULL;
      SELECT pg_catalog.array_agg(a2.attname::text ORDER BY u.ord) INTO v_key
        FROM (SELECT i.indexrelid, i.indkey FROM pg_catalog.pg_index i
               WHERE i.indrelid = r.objid AND i.indisunique AND i.indisvalid
                 AND i.indpred IS NULL AND i.indexprs IS NULL
               ORDER BY i.indisprimary DESC, i.indexrelid LIMIT 1) i
        CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS u(attnum, ord)
        JOIN pg_catalog.pg_attribute a2 ON a2.attrelid = r.objid AND a2.attnum = u.attnum;
      v_why := CASE
        WHEN pg_catalog.octet_length(r.relname || '_cdc') > 63 THEN
          'its change table name ' || r.relname || '_cdc would be too long'
        WHEN pg_catalog.to_regclass(pg_catalog.format('%I.%I', r.nspname, r.relname || '_cdc')) IS NOT NULL THEN
          'a table named ' || r.relname || '_cdc, the name of its change table, exists already'
        WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute b WHERE b.attrelid = r.objid
                     AND b.attnum > 0 AND NOT b.attisdropped AND b.attname LIKE 'dt$%') THEN
          'it has a column whose name starts with dt$ (datatunnel''s)'
        WHEN v_key IS NULL AND r.relkind = 'p' THEN
          'it is partitioned and has no primary key or unique index'
        END;
      IF v_why IS NOT NULL THEN
        RAISE WARNING 'datatunnel: new table %.% matches auto_add pattern "%" of tunnel "%" but is not captured: %; fix that and run `datatunnel init`',
          pg_catalog.quote_ident(r.nspname), pg_catalog.quote_ident(r.relname), a.pattern, a.tunnel, v_why;
        CONTINUE;
      END IF;
      BEGIN
        PERFORM pg_catalog.pg_advisory_xact_lock_shared(1146375745, pg_catalog.hashtext(a.tunnel));
        PERFORM pg_catalog.set_config('datatunnel.adding', 'on', true);
        PERFORM datatunnel.install_capture(r.objid::regclass, COALESCE(v_key, '{}'));
        PERFORM pg_catalog.set_config('datatunnel.adding', 'off', true);
        SELECT pg_catalog.array_agg(b.atttypid ORDER BY b.attnum),
               pg_catalog.array_agg(b.atttypmod ORDER BY b.attnum) INTO v_oids, v_mods
          FROM pg_catalog.pg_attribute b
         WHERE b.attrelid = r.objid AND b.attnum > 0 AND NOT b.attisdropped;
        PERFORM pg_catalog.set_config('search_path', v_path, true);
        v_types := ARRAY(SELECT pg_catalog.format_type(u.t, u.m)
                           FROM ROWS FROM (pg_catalog.unnest(v_oids), pg_catalog.unnest(v_mods))
                                WITH ORDINALITY AS u(t, m, o) ORDER BY u.o);
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        INSERT INTO datatunnel.tables (tunnel, schema_name, table_name, change_table,
            capture_function, key_columns, column_names, column_types, published_tick,
            published_seq, snapshot_state, snapshot_run, snapshot_started_at)
          SELECT a.tunnel, r.nspname, r.relname, r.relname || '_cdc', 'capture_' || r.objid,
                 COALESCE(v_key, '{}'),
                 (SELECT pg_catalog.array_agg(b.attname::text ORDER BY b.attnum)
                    FROM pg_catalog.pg_attribute b
                   WHERE b.attrelid = r.objid AND b.attnum > 0 AND NOT b.attisdropped),
                 v_types,
                 pg_catalog.max(t.tick), 9223372036854775807, 'requested', 1, pg_catalog.now()
            FROM datatunnel.ticks t WHERE t.tunnel = a.tunnel
          HAVING pg_catalog.max(t.tick) IS NOT NULL;
        IF NOT FOUND THEN
          RAISE EXCEPTION 'tunnel "%" has no tick: run `datatunnel init`', a.tunnel;
        END IF;
        PERFORM pg_catalog.pg_notify('datatunnel', 'tables');
        RAISE NOTICE 'datatunnel: captured new table %.% for tunnel "%" (auto_add pattern "%"%); a running tunnel copies it, then streams it',
          pg_catalog.quote_ident(r.nspname), pg_catalog.quote_ident(r.relname), a.tunnel, a.pattern,
          CASE WHEN v_key IS NULL THEN ', no key: full-row identity'
               ELSE ', key (' || pg_catalog.array_to_string(v_key, ', ') || ')' END;
      EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'datatunnel: could not capture new table %.% (auto_add pattern "%" of tunnel "%"): %; run `datatunnel init`',
          pg_catalog.quote_ident(r.nspname), pg_catalog.quote_ident(r.relname), a.pattern, a.tunnel, SQLERRM;
      END;
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'datatunnel: could not check new table %.% against the auto_add patterns: %; run `datatunnel init` if it should be captured',
        pg_catalog.quote_ident(r.nspname), pg_catalog.quote_ident(r.relname), SQLERRM;
    END;
  END LOOP;
  PERFORM pg_catalog.set_config('search_path', v_path, true);
END $fn$;
