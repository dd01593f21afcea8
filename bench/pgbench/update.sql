\set id random(1, :rows)
UPDATE employees SET city = 'Arlington', last_name = 'u' || :id WHERE emp_id = :id;
