#include "apply/batch.h"

#include <cstring>
#include <unordered_map>

namespace datatunnel::apply {

std::string KeyBytes(const TableSpec& spec, const Row& row) {
  std::string out;
  for (size_t k : spec.key) {
    if (!row.HasValue(k)) {
      out.push_back('\0');
      continue;
    }
    std::string_view v = row.Get(k);
    uint32_t n = static_cast<uint32_t>(v.size());
    out.push_back('\1');
    out.append(reinterpret_cast<const char*>(&n), sizeof n);
    out.append(v);
  }
  return out;
}

TableEffect Collapse(const TableSpec& spec, std::span<const Change* const> changes) {
  TableEffect effect;
  // key -> the last change seen for it
  std::unordered_map<std::string, const Change*> last;
  std::vector<std::string> order;  // keys in first-seen order, for a stable output
  last.reserve(changes.size());
  for (const Change* c : changes) {
    switch (c->op) {
      case Op::kTruncate:
        effect.truncate = true;
        last.clear();
        order.clear();
        continue;
      case Op::kMarker:
        continue;
      case Op::kInsert:
      case Op::kUpdate:
      case Op::kRead:
      case Op::kDelete:
        break;
    }
    std::string key = KeyBytes(spec, c->row);
    auto [it, inserted] = last.try_emplace(key, c);
    if (inserted) {
      order.push_back(std::move(key));
    } else {
      it->second = c;
    }
  }
  for (const auto& key : order) {
    const Change* c = last[key];
    (c->op == Op::kDelete ? effect.deletes : effect.upserts).push_back(c);
  }
  return effect;
}

}  // namespace datatunnel::apply
