-- Latency probe on the target: every applied row write is logged with the
-- time its transaction commits (a deferred constraint trigger fires at
-- COMMIT). ENABLE ALWAYS: logical replication's apply worker runs with
-- session_replication_role = replica and fires only such triggers; it also
-- runs with an empty search_path, hence the schema-qualified names.
CREATE UNLOGGED TABLE bench_log (emp_id integer, op "char", version bigint, at timestamptz);
CREATE FUNCTION bench_log_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO public.bench_log VALUES (OLD.emp_id, 'D', NULL, pg_catalog.clock_timestamp());
  ELSE
    INSERT INTO public.bench_log VALUES (NEW.emp_id, 'W',
      CASE WHEN NEW.last_name ~ '^v[0-9]+$' THEN pg_catalog.substr(NEW.last_name, 2)::bigint END,
      pg_catalog.clock_timestamp());
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER bench_log AFTER INSERT OR UPDATE OR DELETE ON employees
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bench_log_fn();
ALTER TABLE employees ENABLE ALWAYS TRIGGER bench_log;
