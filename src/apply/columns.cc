#include "apply/columns.h"

namespace datatunnel::apply {

void ColumnLookup::Build(const std::vector<TableSpec>& targets) {
  columns_.clear();
  for (const auto& t : targets) {
    std::unordered_map<std::string, size_t, NameHash, std::equal_to<>> m;
    for (size_t i = 0; i < t.columns.size(); ++i) m.emplace(t.columns[i].name, i);
    columns_.push_back(std::move(m));
  }
}

}  // namespace datatunnel::apply
