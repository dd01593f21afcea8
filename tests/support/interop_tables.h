// The tables both interop tests (debezium_test, connect_json_test) carry
// between datatunnel and Debezium's connectors: employees, and an all-types
// table whose rows hold each type's edge values; and the employees workload
// both run while the tunnel applies.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>

#include "support/pg_cluster.h"

namespace datatunnel::testing {

// The enum type `mood`, `employees` and `alltypes`.
inline constexpr const char* kInteropDdl = R"sql(
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE employees (emp_id integer PRIMARY KEY, first_name varchar(100), last_name text,
                        dob date, city varchar(100), salary numeric(12,2));
CREATE TABLE alltypes (
  id integer PRIMARY KEY,
  i2 smallint, i8 bigint, n numeric(20,5), nv numeric, f4 real, f8 double precision,
  bo boolean, tx text, vc varchar(20), ch char(4), by bytea,
  d date, tm time, tm3 time(3), ts timestamp, ts3 timestamp(3), tstz timestamptz,
  iv interval, u uuid, js json, jb jsonb, ip inet,
  ai integer[], at text[], mo mood);
)sql";

// One row per theme, then an all-NULL row, at ids base + 1, 2, 3 and 9.
inline std::string AllTypesRows(int base) {
  static constexpr const char* kRows = R"sql(
INSERT INTO alltypes VALUES
({}, -32768, -9223372036854775808, '-123456789012345.12345',
 '-123456789012345678901234567890.123456789', '0.1', '-1.5e-10', false,
 E'it''s "quoted" \\ back\\slash\ttab\nnewline Zoë 日本語 🚀', '', 'ab', '\x0001ff00',
 '1900-02-28', '00:00:00', '23:59:59.999', '1969-12-31 23:59:59.5', '2024-02-29 23:59:59.999',
 '2024-06-01 12:34:56.789012+05:45', '02:03:04.5', '00000000-0000-0000-0000-000000000000',
 '{{"a": [1, 2.50, null],  "esc": "\u00e9 \" \\ "}}', '{{"nested": {{"deep": [1, {{"x": "q"}}]}}}}',
 '192.168.0.1/24', '{{1,NULL,3}}', '{{"",NULL,"NULL","a,b","q\"uote","back\\slash"," spaced "}}',
 'happy'),
({}, 32767, 9223372036854775807, '99999999999999.99999', '0', '3.4028235e+38',
 '1.7976931348623157e+308', true, '', 'abcdefghijklmnopqrst', 'abcd', '\x', '2024-02-29',
 '23:59:59.999999', '12:34:56.789', '2024-02-29 23:59:59.999999', '1970-01-01 00:00:00',
 '1999-12-31 23:59:59.999999-12', '-00:00:00.000001', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
 '[]', '{{}}', '::1', '{{}}', '{{}}', 'sad'),
({}, 0, 0, '0.00001', '1e-20', '-0.25', '0.1', true, 'x', 'y', 'z', '\xdeadbeef', '1970-01-01',
 '12:00:00', '00:00:00.001', '1950-06-15 01:02:03.000004', '2038-01-19 03:14:08.123',
 '1970-01-01 00:00:00+00', '838:59:59', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
 '"just a string"', 'null', '2001:db8::1/64', '{{-2147483648,2147483647}}', '{{"\\N"}}', 'ok'),
({}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
)sql";
  return fmt::format(kRows, base + 1, base + 2, base + 3, base + 9);
}

// One workload transaction on employees: five of inserts (at *next_id, then
// incremented), updates of a random row and its moved twin, a delete of the
// newest insert, and key changes (emp_id + 100000), drawn from `rng`.
inline std::string EmployeesTransaction(std::mt19937& rng, int* next_id) {
  std::string sql = "BEGIN;";
  for (int i = 0; i < 5; ++i) {
    const int id = 1 + static_cast<int>(rng() % 300);
    switch (rng() % 5) {
      case 0:
        sql += fmt::format(
            "INSERT INTO employees VALUES ({0}, 'new {0}', 'n', '2001-01-01', 'x', 1.5);",
            (*next_id)++);
        break;
      case 1:
      case 2:
        sql += fmt::format(
            "UPDATE employees SET city = 'moved ' || {1}, salary = salary + 1 WHERE emp_id "
            "IN ({0}, {0} + 100000);",
            id, rng() % 1000);
        break;
      case 3:
        sql += fmt::format("DELETE FROM employees WHERE emp_id = {};", *next_id - 1);
        break;
      case 4:  // a key change: a delete of the old key and a create of the new on the topic
        sql += fmt::format("UPDATE employees SET emp_id = emp_id + 100000 WHERE emp_id = {};", id);
        break;
    }
  }
  return sql + "COMMIT;";
}

// Commits EmployeesTransaction in a loop, on its own connection to `db` of
// `cluster`, 5 ms apart, until Stop() (or destruction); a failed
// transaction fails the test and ends the loop.
class EmployeesWriter {
 public:
  EmployeesWriter(const PgCluster& cluster, const std::string& db, unsigned seed)
      : thread_([this, &cluster, db, seed] {
          auto conn = cluster.Connect(db);
          if (!conn) return;
          std::mt19937 rng(seed);
          int next_id = 1000;
          while (!stop_) {
            Status st = conn->Exec(EmployeesTransaction(rng, &next_id));
            if (!st.ok()) {
              ADD_FAILURE() << st.message();
              return;
            }
            ++transactions_;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
          }
        }) {}
  ~EmployeesWriter() { Stop(); }
  EmployeesWriter(const EmployeesWriter&) = delete;
  EmployeesWriter& operator=(const EmployeesWriter&) = delete;

  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int transactions() const { return transactions_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> transactions_{0};
  std::thread thread_;  // last: starts once the flags above exist
};

}  // namespace datatunnel::testing
