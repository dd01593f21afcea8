INSERT INTO employees (first_name, last_name, dob, city) VALUES ('Grace', 'Hopper', '1906-12-09', 'New York');
