#include "tunnel/memory_source.h"

#include <iterator>
#include <utility>

#include "tunnel/target_core.h"

namespace datatunnel::tunnel {

Status MemorySource::Open(TargetCore* core) {
  core_ = core;
  for (const auto& t : core_->targets()) streams_.push_back("memory:" + t.target.ToString());
  return Status::OK();
}

Status MemorySource::MapFor(const SourceSpecs& specs) {
  if (specs == mapped_) return Status::OK();
  // New source specs (a producer session started): make sure the target has
  // their columns, then map source columns to target columns by name.
  for (size_t t = 0; t < specs->size(); ++t) {
    bool changed = false;
    DT_RETURN_IF_ERROR(
        core_->EnsureColumns(static_cast<uint32_t>(t), (*specs)[t].columns, &changed));
  }
  remap_.Build(*specs, core_->targets());
  mapped_ = specs;
  return Status::OK();
}

void MemorySource::Add(Change&& c) {
  apply::Item item;
  item.stream = streams_[c.table];
  item.partition = 0;
  item.broadcast_partitions = 1;
  if (c.op == Op::kMarker && c.marker == Marker::kSchema) item.kind = apply::Item::Kind::kIgnored;
  item.change = std::move(c);
  pending_.push_back(std::move(item));
}

Status MemorySource::Fill(bool* ended) {
  changes_.clear();
  tokens_.clear();
  specs_.clear();
  while (changes_.empty()) {
    if (stop_->stop_requested()) {
      *ended = true;
      return Status::OK();
    }
    channel_->Pop(batch_max_changes_, 100, &changes_, &tokens_, &specs_);
    if (changes_.empty() && channel_->closed()) {
      *ended = true;
      return Status::OK();
    }
  }
  pending_.clear();
  pending_.reserve(changes_.size());
  token_end_.clear();
  for (size_t i = 0; i < changes_.size(); ++i) {
    Change& c = changes_[i];
    DT_RETURN_IF_ERROR(MapFor(specs_[i]));
    if (c.packed_rows > 0 && !remap_.passthrough(c.table)) {
      // The target lays its columns out differently: row by row.
      unpacked_.clear();
      DT_RETURN_IF_ERROR(remap_.Unpack(c, &unpacked_));
      for (Change& u : unpacked_) {
        remap_.Remap(&u);
        Add(std::move(u));
      }
    } else {
      remap_.Remap(&c);
      Add(std::move(c));
    }
    token_end_.push_back(pending_.size());  // tokens_[i] is done once these items are
  }
  pending_size_ = pending_.size();
  next_ = 0;
  acked_ = 0;
  return Status::OK();
}

Status MemorySource::Next(std::vector<apply::Item>* items, bool* ended) {
  *ended = false;
  if (next_ >= pending_size_) {
    DT_RETURN_IF_ERROR(Fill(ended));
    if (*ended || pending_size_ == 0) return Status::OK();  // (empty: acknowledged as is)
  }
  // Packed snapshot chunks apply in transactions of their own (COPY
  // straight into the target), the changes around them as usual.
  const bool packed = pending_[next_].change.packed_rows > 0;
  size_t end = next_ + 1;
  while (end < pending_size_ && (pending_[end].change.packed_rows > 0) == packed) ++end;
  if (next_ == 0 && end == pending_size_) {
    items->swap(pending_);
  } else {
    items->assign(std::make_move_iterator(pending_.begin() + static_cast<ptrdiff_t>(next_)),
                  std::make_move_iterator(pending_.begin() + static_cast<ptrdiff_t>(end)));
  }
  next_ = end;
  return Status::OK();
}

Status MemorySource::Committed(const std::vector<apply::Item>&) {
  done_.clear();
  while (acked_ < tokens_.size() && token_end_[acked_] <= next_) done_.push_back(tokens_[acked_++]);
  channel_->Ack(done_);
  return Status::OK();
}

}  // namespace datatunnel::tunnel
