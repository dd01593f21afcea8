// Apply, input without a broker: rows handed over in memory (`run --broker
// none`) carry the source table's columns, in the source's order. Remapper
// lays them out by the target table's columns, matched by name through the
// same ColumnLookup as EnvelopeDecoder (apply/columns.h): a target column the
// source lacks stays absent (its value is left alone), a source column the
// target lacks is left out (the caller adds it to the target first).
//
// Thread-safety: immutable after Build().
#pragma once

#include <cstdint>
#include <vector>

#include "apply/columns.h"
#include "core/change.h"
#include "core/status.h"
#include "core/table.h"

namespace datatunnel::apply {

class Remapper {
 public:
  // Maps rows read with `sources`' columns (source-side specs) to `targets`'
  // (target-side specs, the same tables in the same order).
  void Build(const std::vector<TableSpec>& sources, const std::vector<TableSpec>& targets);

  // Whether a packed snapshot chunk (Change::packed_rows, COPY text in the
  // source's column order) of table `table` goes into the target as it is:
  // the columns line up and none is generated (COPY cannot write those).
  bool passthrough(uint32_t table) const { return tables_[table].passthrough; }

  // Lays `c`'s row out by the target's columns. Truncates, markers and rows
  // whose columns already line up are left as they are.
  void Remap(Change* c) const;

  // Appends a packed snapshot chunk as one change per row (source column
  // order, positions counted up to the chunk's). kFatal when it is malformed.
  Status Unpack(const Change& packed, std::vector<Change>* out) const;

 private:
  struct Table {
    std::vector<int> to_target;  // per source column: target column, or -1
    std::vector<bool> key;       // per source column: part of the key
    size_t target_columns = 0;
    bool identity = false;  // same columns, same order
    bool passthrough = false;
  };
  std::vector<Table> tables_;
};

}  // namespace datatunnel::apply
