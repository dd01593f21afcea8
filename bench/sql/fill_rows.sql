-- :rows deterministic rows (emp_id 1..:rows, version v0): the same on every
-- server, so a source and a target built from it start identical.
INSERT INTO employees (first_name, last_name, dob, city)
SELECT (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Ken','Leslie','Niklaus',
              'Frances','John','Margaret','Dennis','Radia'])[1 + i % 14],
       'v0',
       DATE '1950-01-01' + (i::bigint * 7919 % 18000)::int,
       (ARRAY['Amsterdam','Berlin','Lisbon','Oslo','Paris','Prague','Reykjavik','Rome',
              'Tallinn','Vienna','Warsaw','Zurich'])[1 + i % 12]
FROM generate_series(1, :rows) AS i;
