// Target columns by name: how a row carried with the source's column names is
// laid out by the target table's columns. The one mapping both inputs use:
// EnvelopeDecoder (a message's fields, through a broker) and Remapper (rows
// handed over in memory, apply/remap.h).
//
// Thread-safety: immutable after Build().
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/table.h"

namespace datatunnel::apply {

class ColumnLookup {
 public:
  // (Re)builds the lookup for `targets` (target-side specs).
  void Build(const std::vector<TableSpec>& targets);
  // The index of column `name` in target table `table`, or -1 when the
  // target table has no such column.
  int Find(uint32_t table, std::string_view name) const {
    auto it = columns_[table].find(name);
    return it == columns_[table].end() ? -1 : static_cast<int>(it->second);
  }

 private:
  // Looked up by the string_view of a field name, without a copy.
  struct NameHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  std::vector<std::unordered_map<std::string, size_t, NameHash, std::equal_to<>>> columns_;
};

}  // namespace datatunnel::apply
