// Verify: compares a source table with its target, row for row, without
// moving the tables out of the databases.
//
// The source is cut into key ranges (one sorted pass finds the boundaries);
// for each range both databases compute count(*) and an order-independent
// checksum: the sum of a 60-bit prefix of md5(row text) over the compared
// columns. Only ranges that differ are compared key by key, and the
// differing keys are listed: missing on the target, extra on the target, or
// with different values. A table without a key (full-row identity) is one
// range compared as a multiset: on a difference, each distinct row's count
// on both sides. Both connections use the same session settings
// (pg/connection.h), so equal values print the same text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::verify {

struct KeyDiff {
  // ROW(key columns)::text, e.g. (42) or (7,abc); for a table without a key
  // the whole row, "×n" appended for n copies.
  std::string key;
  std::string kind;  // "missing on target", "extra on target", "values differ"
};

struct RangeDiff {
  std::string range;  // e.g. "((10000), (20000)]"
  int64_t source_rows = 0;
  int64_t target_rows = 0;
};

struct TableReport {
  std::string source;
  std::string target;
  int64_t source_rows = 0;
  int64_t target_rows = 0;
  int64_t ranges = 0;
  // Columns missing on one side, or of a target type that can refuse or
  // change the source's values (apply::TypeFit::kLossy).
  std::vector<std::string> schema_problems;
  // Type differences every value survives (apply::TypeFit::kSafe): reported,
  // not counted as differences.
  std::vector<std::string> notes;
  std::vector<RangeDiff> differing_ranges;
  std::vector<KeyDiff> keys;  // at most max_keys listed
  int64_t differing_keys = 0;
  // Gaps a consumer recorded (a message missing from a partition: the target
  // is known to miss changes, and the consumer stops there), one line each;
  // filled by the caller, which reads the target's apply state.
  std::vector<std::string> gaps;
  bool equal() const {
    return schema_problems.empty() && differing_ranges.empty() && differing_keys == 0 &&
           gaps.empty();
  }
};

struct Options {
  int64_t range_rows = 0;  // rows per range; 0: about 1/32 of the table, at least 10,000
  int max_keys = 20;       // differing keys listed per table
};

// `source_spec` and `target_spec` describe the same table on each side (the
// key columns by name must exist on both).
Result<TableReport> VerifyTable(pg::Connection& source, pg::Connection& target,
                                const TableSpec& source_spec, const TableSpec& target_spec,
                                const Options& options);

// The reports as one JSON document (`verify --json`, docs/operations.md):
// {"equal", "tables": [{"source", "target", "source_rows", "target_rows",
// "ranges", "differing_ranges", "differing_keys", "keys": [{"key",
// "difference"}], "schema_problems", "notes", "gaps"}]}, and a newline.
std::string ReportsJson(const std::vector<TableReport>& reports);

}  // namespace datatunnel::verify
