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
  if (c.op == Op::kMarker && c.marker == Marker::kTickEnd) {
    item.kind = apply::Item::Kind::kTickEnd;
    item.stream = tick_stream_;
  }
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

Status MemorySource::NextWholeTicks(std::vector<apply::Item>* items, bool* ended) {
  piece_ = false;
  if (!whole_ticks_streaming_) batch_tokens_.clear();
  for (;;) {
    size_t cut = 0;  // just past the last end of a tick held
    for (size_t i = held_.size(); i > 0; --i) {
      if (held_[i - 1].kind == apply::Item::Kind::kTickEnd) {
        cut = i;
        break;
      }
    }
    // A tick too large to hold whole: what is held goes out as a piece
    // (its tokens are acknowledged with the batch that ends the tick).
    if (cut == 0 && held_.size() >= stream_changes_) {
      cut = held_.size();
      piece_ = true;
    }
    if (cut > 0) {
      whole_ticks_streaming_ = piece_;
      for (size_t i = 0; i < cut; ++i) {
        items->push_back(std::move(held_.front()));
        held_.pop_front();
        if (held_tokens_.front() != kNoToken) batch_tokens_.push_back(held_tokens_.front());
        held_tokens_.pop_front();
      }
      return Status::OK();
    }
    DT_RETURN_IF_ERROR(Fill(ended));
    if (*ended) return Status::OK();
    // Each token is acknowledged with the last item made of its change.
    size_t begin = 0;
    for (size_t i = 0; i < tokens_.size(); ++i) {
      for (size_t j = begin; j < token_end_[i]; ++j) {
        held_.push_back(std::move(pending_[j]));
        held_tokens_.push_back(j + 1 == token_end_[i] ? tokens_[i] : kNoToken);
      }
      begin = token_end_[i];
    }
    pending_.clear();
    pending_size_ = next_ = 0;
  }
}

Status MemorySource::Next(std::vector<apply::Item>* items, bool* ended) {
  *ended = false;
  if (whole_ticks_) return NextWholeTicks(items, ended);
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

Status MemorySource::Rewind() {
  channel_->RequestReplay();
  held_.clear();
  held_tokens_.clear();
  batch_tokens_.clear();
  pending_.clear();
  pending_size_ = next_ = 0;
  whole_ticks_streaming_ = piece_ = false;
  return Status::OK();
}

Status MemorySource::Committed(const std::vector<apply::Item>&) {
  if (whole_ticks_) {
    channel_->Ack(batch_tokens_);
    batch_tokens_.clear();
    return Status::OK();
  }
  done_.clear();
  while (acked_ < tokens_.size() && token_end_[acked_] <= next_) done_.push_back(tokens_[acked_++]);
  channel_->Ack(done_);
  return Status::OK();
}

}  // namespace datatunnel::tunnel
