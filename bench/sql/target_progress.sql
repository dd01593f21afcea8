-- Throughput probe on the target: a counter of applied row writes, cheap
-- enough not to slow the apply (no per-row insert), read by polling.
CREATE SEQUENCE bench_progress;
CREATE FUNCTION bench_progress_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.nextval('public.bench_progress');
  RETURN NULL;
END $$;
CREATE TRIGGER bench_progress AFTER INSERT OR UPDATE OR DELETE ON employees
  FOR EACH ROW EXECUTE FUNCTION bench_progress_fn();
ALTER TABLE employees ENABLE ALWAYS TRIGGER bench_progress;
