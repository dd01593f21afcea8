// auto_add (issue 20, item 1) in the end-to-end tests: a pattern entry
// with auto_add, and tables created while a tunnel runs (schemas_test in
// memory, schema_test with split produce/consume through Kafka).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "support/pg_cluster.h"
#include "support/subprocess.h"
#include "support/test_util.h"

namespace datatunnel::testing {

inline constexpr const char* kAutoTables = R"([[tables]]
source = "public.auto_*"
exclude = ["auto_skip*"]
auto_add = true
)";

// Creates tables while the tunnel runs: auto_x with rows in its creating
// transaction and after, auto_ctas by CREATE TABLE AS (keyless), and tables
// that must not be added; waits until the target has their rows (the
// keyless table is changed only after its copy: a row changed during the
// copy of a table without a key may arrive twice, architecture.md,
// "Guarantees"), then changes both and waits for the changes.
inline void CreateTablesWhileRunning(const std::string& src, const std::string& tgt, Subprocess* p1,
                                     Subprocess* p2) {
  SourceCluster().Exec(
      src,
      "BEGIN;"
      "CREATE TABLE auto_x (id int PRIMARY KEY, v text);"
      "INSERT INTO auto_x SELECT i, 'in create ' || i FROM generate_series(1, 10) i;"
      "CREATE TABLE auto_skip1 (id int PRIMARY KEY);"
      "CREATE TABLE other_t (id int PRIMARY KEY);"
      "CREATE TEMP TABLE auto_tmp (id int PRIMARY KEY);"
      "COMMIT;"
      "CREATE TABLE auto_ctas AS SELECT i AS n, 'c' || i AS label "
      "FROM generate_series(1, 7) i;");
  EXPECT_EQ(SourceCluster().Count(src, "SELECT count(*) FROM datatunnel.tables"), 3);
  EXPECT_EQ(SourceCluster().Count(src,
                                  "SELECT count(*) FROM datatunnel.tables WHERE table_name "
                                  "IN ('auto_x', 'auto_ctas') AND snapshot_state <> 'none'"),
            2);
  const auto logs = [&] {
    return p1->Stderr() + (p2 ? "\n--- second process:\n" + p2->Stderr() : std::string());
  };
  ASSERT_TRUE(WaitUntil(
      [&] {
        return TargetCluster().Count(
                   tgt, "SELECT count(*) FROM pg_class WHERE relname = 'auto_x'") == 1 &&
               TargetCluster().Count(tgt, "SELECT count(*) FROM auto_x") == 10 &&
               TargetCluster().Count(
                   tgt, "SELECT count(*) FROM pg_class WHERE relname = 'auto_ctas'") == 1 &&
               TargetCluster().Count(tgt, "SELECT count(*) FROM auto_ctas") == 7;
      },
      30))
      << logs();
  SourceCluster().Exec(
      src,
      "INSERT INTO auto_x VALUES (11, 'after'), (12, 'after');"
      "UPDATE auto_x SET v = 'changed' WHERE id = 1; DELETE FROM auto_x WHERE id = 2;"
      "INSERT INTO auto_ctas VALUES (8, 'c8')");
  ASSERT_TRUE(WaitUntil(
      [&] {
        return TargetCluster().Count(tgt, "SELECT count(*) FROM auto_x") == 11 &&
               TargetCluster().Count(tgt, "SELECT count(*) FROM auto_x WHERE v = 'changed'") == 1 &&
               TargetCluster().Count(
                   tgt, "SELECT count(*) FROM pg_class WHERE relname = 'auto_ctas'") == 1 &&
               TargetCluster().Count(tgt, "SELECT count(*) FROM auto_ctas") == 8;
      },
      30))
      << logs();
  // Neither the excluded, the non-matching nor the temporary table.
  EXPECT_EQ(TargetCluster().Count(
                tgt,
                "SELECT count(*) FROM pg_class WHERE relname IN ('auto_skip1', 'other_t', "
                "'auto_tmp')"),
            0);
  EXPECT_EQ(SourceCluster().Count(src,
                                  "SELECT count(*) FROM pg_class WHERE relname IN "
                                  "('auto_skip1_cdc', 'other_t_cdc', 'auto_tmp_cdc')"),
            0);
}

}  // namespace datatunnel::testing
