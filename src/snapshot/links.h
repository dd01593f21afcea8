// Snapshot: the foreign keys between the tunnel's source tables, which
// order the copies with apply_consistency = "transaction".
//
// A copy reaches the target a chunk per tick, so a referencing row must not
// arrive before the row it references (the target keeps its foreign keys
// on). The driver (snapshot/driver.h) reads them to copy referenced tables
// first and to send a referencing table's changes before its copy as
// deletes; the chunker (snapshot/chunker.h) to copy, with a chunk of a
// self-referencing table, the rows its rows reference.
//
// Thread-safety: functions of their arguments.
#pragma once

#include <cstddef>
#include <vector>

#include "core/status.h"
#include "core/table.h"
#include "pg/connection.h"

namespace datatunnel::snapshot {

struct Links {
  // Per table: the tunnel tables it references, directly or through others,
  // outside its own cycle (their copies must end before its copy starts).
  std::vector<std::vector<size_t>> after;
  // Per table: it references a tunnel table (itself included).
  std::vector<bool> referencing;
  // Per table: the other tunnel tables that reference it directly.
  std::vector<std::vector<size_t>> referrers;
  // Per table: its foreign keys to itself that reference its key columns,
  // each as the column indexes (into TableSpec::columns) matching spec.key.
  std::vector<std::vector<std::vector<size_t>>> self;
};

// Reads the foreign keys between `specs`' source tables from `source`'s catalog.
Result<Links> LoadLinks(pg::Connection& source, const std::vector<TableSpec>& specs);

}  // namespace datatunnel::snapshot
