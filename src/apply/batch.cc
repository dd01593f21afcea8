#include "apply/batch.h"

#include <bit>
#include <cstring>
#include <functional>

namespace datatunnel::apply {
namespace {

void AppendKeyBytes(const TableSpec& spec, const Row& row, std::string* out) {
  for (size_t k : spec.key) {
    if (!row.HasValue(k)) {
      out->push_back('\0');
      continue;
    }
    std::string_view v = row.Get(k);
    uint32_t n = static_cast<uint32_t>(v.size());
    out->push_back('\1');
    out->append(reinterpret_cast<const char*>(&n), sizeof n);
    out->append(v);
  }
}

}  // namespace

std::string KeyBytes(const TableSpec& spec, const Row& row) {
  std::string out;
  AppendKeyBytes(spec, row, &out);
  return out;
}

TableEffect Collapse(const TableSpec& spec, std::span<const Change* const> changes) {
  TableEffect effect;
  // A TRUNCATE wipes everything before it: only what follows the last one counts.
  size_t begin = 0;
  for (size_t i = 0; i < changes.size(); ++i) {
    if (changes[i]->op == Op::kTruncate) {
      effect.truncate = true;
      begin = i + 1;
    }
  }
  // Every row change's key bytes, back to back in one buffer: a batch costs
  // a few allocations, not one per change (this runs for every applied row).
  std::string keys;
  std::vector<uint32_t> ends;  // where each change's key ends in `keys`
  std::vector<const Change*> rows;
  rows.reserve(changes.size() - begin);
  ends.reserve(changes.size() - begin);
  for (size_t i = begin; i < changes.size(); ++i) {
    const Change* c = changes[i];
    if (c->op == Op::kMarker) continue;
    AppendKeyBytes(spec, c->row, &keys);
    ends.push_back(static_cast<uint32_t>(keys.size()));
    rows.push_back(c);
  }
  auto key_of = [&](size_t i) {
    const uint32_t from = i ? ends[i - 1] : 0;
    return std::string_view(keys).substr(from, ends[i] - from);
  };
  // Distinct keys in first-seen order, each with the last change seen for it,
  // found through an open-addressing table of indexes into `distinct`.
  struct Distinct {
    size_t first;  // the change that introduced the key (for its bytes)
    const Change* last;
  };
  std::vector<Distinct> distinct;
  distinct.reserve(rows.size());
  const size_t slots = std::bit_ceil(std::max<size_t>(16, rows.size() * 2));
  std::vector<uint32_t> table(slots, 0);  // 0: empty, else index + 1 into `distinct`
  const std::hash<std::string_view> hash;
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::string_view key = key_of(i);
    size_t slot = hash(key) & (slots - 1);
    for (;;) {
      const uint32_t at = table[slot];
      if (at == 0) {
        table[slot] = static_cast<uint32_t>(distinct.size() + 1);
        distinct.push_back({i, rows[i]});
        break;
      }
      if (key_of(distinct[at - 1].first) == key) {
        distinct[at - 1].last = rows[i];
        break;
      }
      slot = (slot + 1) & (slots - 1);
    }
  }
  for (const Distinct& d : distinct) {
    (d.last->op == Op::kDelete ? effect.deletes : effect.upserts).push_back(d.last);
  }
  return effect;
}

}  // namespace datatunnel::apply
