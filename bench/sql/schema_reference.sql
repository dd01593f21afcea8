-- The same table with a primary key: logical replication needs a replica
-- identity for UPDATE and DELETE.
CREATE TABLE employees(emp_id SERIAL PRIMARY KEY, first_name VARCHAR(100), last_name VARCHAR(100), dob DATE, city VARCHAR(100));
