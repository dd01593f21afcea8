// Batching: the net effect of a run of changes to one table.
//
// Changes arrive in per-key order. Within one batch only the last change of
// each key matters: an upsert of its row image, or a delete of its key. A
// TRUNCATE wipes everything before it, so it clears what was collected and
// is applied first. The result has at most one action per key, so the whole
// batch can be written with set-based statements.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "core/change.h"
#include "core/table.h"

namespace datatunnel::apply {

struct TableEffect {
  bool truncate = false;               // TRUNCATE the table before the rest
  std::vector<const Change*> deletes;  // keys to delete
  std::vector<const Change*> upserts;  // full rows to insert or update
  // A table without a key (full-row identity) is not collapsed: every
  // change, in order, applied one by one (the applier's AddKeyless).
  std::vector<const Change*> in_order;
};

// REQUIRES: every change belongs to `spec`'s table, in commit order per key.
TableEffect Collapse(const TableSpec& spec, std::span<const Change* const> changes);

// The key columns of `row` as bytes that compare equal exactly when the key
// values' text does (length-prefixed, NULL distinct from "").
std::string KeyBytes(const TableSpec& spec, const Row& row);

}  // namespace datatunnel::apply
