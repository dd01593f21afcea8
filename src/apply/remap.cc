#include "apply/remap.h"

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>

#include "pg/connection.h"

namespace datatunnel::apply {

void Remapper::Build(const std::vector<TableSpec>& sources, const std::vector<TableSpec>& targets) {
  ColumnLookup lookup;
  lookup.Build(targets);
  tables_.assign(sources.size(), {});
  for (size_t t = 0; t < sources.size(); ++t) {
    const TableSpec& src = sources[t];
    const TableSpec& tgt = targets[t];
    Table& m = tables_[t];
    m.target_columns = tgt.columns.size();
    m.identity = src.columns.size() == tgt.columns.size();
    for (size_t s = 0; s < src.columns.size(); ++s) {
      const int i = lookup.Find(static_cast<uint32_t>(t), src.columns[s].name);
      m.to_target.push_back(i);
      m.key.push_back(src.IsKey(s));
      m.identity = m.identity && i == static_cast<int>(s);
    }
    m.passthrough = m.identity && std::none_of(tgt.columns.begin(), tgt.columns.end(),
                                               [](const Column& c) { return c.generated; });
  }
}

void Remapper::Remap(Change* c) const {
  const Table& m = tables_[c->table];
  if (m.identity || c->op == Op::kTruncate || c->op == Op::kMarker) return;
  Row row;
  row.ResetAbsent(m.target_columns);
  for (size_t s = 0; s < m.to_target.size() && s < c->row.size(); ++s) {
    const int i = m.to_target[s];
    if (i < 0) continue;
    if (c->row.HasValue(s)) {
      row.Set(static_cast<size_t>(i), c->row.Get(s));
    } else if (c->row.IsNull(s) && !(c->key_only && !m.key[s])) {
      row.SetNull(static_cast<size_t>(i));  // a key-only row's other columns are not NULL
    }
  }
  c->row = std::move(row);
}

Status Remapper::Unpack(const Change& packed, std::vector<Change>* out) const {
  const std::string_view text = packed.row.Get(0);
  const size_t ncols = tables_[packed.table].to_target.size();
  std::vector<std::optional<std::string>> fields;
  int64_t seq = packed.pos.seq - (packed.packed_rows - 1);
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    if (!pg::SplitCopyLine(text.substr(at, end - at), &fields) || fields.size() != ncols) {
      return Status::Fatal("a snapshot chunk handed over in memory is malformed");
    }
    Change c;
    c.op = Op::kRead;
    c.table = packed.table;
    c.pos = packed.pos;
    c.pos.seq = seq++;
    c.captured_us = packed.captured_us;
    c.row.Reset(ncols);
    for (size_t i = 0; i < ncols; ++i) {
      if (fields[i]) c.row.Set(i, *fields[i]);
    }
    out->push_back(std::move(c));
    at = end + 1;
  }
  return Status::OK();
}

}  // namespace datatunnel::apply
