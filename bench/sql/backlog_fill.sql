-- :changes changes in transactions of 1,000 (500 inserts, 400 updates and 100
-- deletes, updates and deletes on distinct preloaded rows), so the target's
-- counter of applied row writes ends at exactly :changes.
SELECT set_config('bench.changes', :'changes', false);
DO $$
DECLARE
  n bigint := current_setting('bench.changes')::bigint;
  done bigint := 0;
  row_next bigint := 1;
  ver bigint := 1;
  k int; ni int; nu int; nd int;
BEGIN
  WHILE done < n LOOP
    k := least(1000, n - done);
    ni := k / 2; nu := k * 4 / 10; nd := k - ni - nu;
    INSERT INTO employees (first_name, last_name, dob, city)
      SELECT (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Ken'])[1 + i % 7],
             'v' || (ver + i), DATE '1960-01-01' + (i % 15000),
             (ARRAY['Amsterdam','Berlin','Lisbon','Oslo','Paris','Prague'])[1 + i % 6]
      FROM generate_series(0, ni - 1) AS i;
    ver := ver + ni;
    UPDATE employees SET last_name = 'v' || (ver + emp_id - row_next), city = 'Updated'
      WHERE emp_id >= row_next AND emp_id < row_next + nu;
    ver := ver + nu;
    row_next := row_next + nu;
    DELETE FROM employees WHERE emp_id >= row_next AND emp_id < row_next + nd;
    row_next := row_next + nd;
    done := done + k;
    COMMIT;
  END LOOP;
END $$;
