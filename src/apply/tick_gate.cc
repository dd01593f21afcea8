#include "apply/tick_gate.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <string>

#include "core/wire.h"

namespace datatunnel::apply {
namespace {

bool ReadPosition(const rapidjson::Value& v, Position* out) {
  if (!v.IsArray() || v.Size() != 4) return false;
  for (rapidjson::SizeType i = 0; i < 4; ++i) {
    if (!v[i].IsInt64()) return false;
  }
  *out = Position{v[0].GetInt64(), v[1].GetInt64(), v[2].GetInt64(),
                  static_cast<int32_t>(v[3].GetInt64())};
  return true;
}

const rapidjson::Value* Member(const rapidjson::Value& obj, std::string_view name) {
  const std::string key(name);
  auto it = obj.FindMember(key.c_str());
  return it == obj.MemberEnd() ? nullptr : &it->value;
}

}  // namespace

Status DecodeTickEnd(std::string_view value, TickEnd* out) {
  rapidjson::Document doc;
  doc.Parse(value.data(), value.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return Status::BadData("an end-of-tick record is not a JSON object");
  }
  const rapidjson::Value* end = Member(doc, wire::kTickEnd);
  const rapidjson::Value* parts = Member(doc, wire::kParts);
  if (!end || !ReadPosition(*end, &out->end) || !parts || !parts->IsArray()) {
    return Status::BadData("an end-of-tick record lacks \"tick_end\" or \"parts\"");
  }
  out->parts.clear();
  for (const auto& p : parts->GetArray()) {
    TickEnd::Part part;
    if (!p.IsArray() || p.Size() != 3 || !p[0].IsString() || !p[1].IsInt() ||
        !ReadPosition(p[2], &part.pos)) {
      return Status::BadData("an end-of-tick record has a malformed entry in \"parts\"");
    }
    part.topic.assign(p[0].GetString(), p[0].GetStringLength());
    part.partition = p[1].GetInt();
    out->parts.push_back(std::move(part));
  }
  out->tunnel.clear();
  out->install.clear();
  if (const rapidjson::Value* src = Member(doc, wire::kSource); src && src->IsObject()) {
    if (const rapidjson::Value* n = Member(*src, wire::kName); n && n->IsString()) {
      out->tunnel.assign(n->GetString(), n->GetStringLength());
    }
    if (const rapidjson::Value* i = Member(*src, wire::kInstall); i && i->IsString()) {
      out->install.assign(i->GetString(), i->GetStringLength());
    }
  }
  return Status::OK();
}

TickGate::Partition& TickGate::PartitionOf(std::string_view stream, int32_t partition) {
  // The key assigned in place, not a string made per item: a topic name
  // longer than 15 bytes is an allocation, and a streamed tick passes a
  // million items through here.
  scratch_.first.assign(stream);
  scratch_.second = partition;
  auto it = parts_.find(scratch_);
  if (it == parts_.end()) it = parts_.emplace(scratch_, Partition{}).first;
  return it->second;
}

void TickGate::Start(std::string_view stream, int32_t partition, const Position& tail) {
  Partition& p = PartitionOf(stream, partition);
  p.reached = std::max(p.reached, tail);
}

void TickGate::Forget(std::string_view stream, int32_t partition) {
  auto it = parts_.find(Key(std::string(stream), partition));
  if (it == parts_.end()) return;
  for (const Item& item : it->second.items) Took(item);
  parts_.erase(it);
}

void TickGate::Add(Item&& item) {
  Partition& p = PartitionOf(item.stream, item.partition);
  p.reached = std::max(p.reached, item.change.pos);
  ++held_;
  if (item.change.packed_rows > 0) held_bytes_ += item.change.row.Get(0).size();
  p.items.push_back(std::move(item));
}

void TickGate::Took(const Item& item) {
  --held_;
  if (item.change.packed_rows > 0) held_bytes_ -= item.change.row.Get(0).size();
}

void TickGate::AddEnd(Item&& item, TickEnd&& end) {
  ends_.push_back(End{std::move(item), std::move(end)});
}

bool TickGate::Complete(const TickEnd& end) const {
  for (const auto& part : end.parts) {
    auto it = parts_.find(Key(part.topic, part.partition));
    if (it == parts_.end() || it->second.reached < part.pos) return false;
  }
  return true;
}

size_t TickGate::Release(std::vector<Item>* out) {
  Position bound;
  size_t ticks = 0;
  std::vector<Item> end_items;
  if (streaming()) {
    // Pieces of a tick went out: release nothing until a tick at or past
    // theirs is complete (the records of the ticks before it are complete
    // then too, in control-topic order).
    size_t n = 0;
    while (n < ends_.size() && Complete(ends_[n].end) && ends_[n].item.change.pos < stream_bound_) {
      ++n;
    }
    if (n == ends_.size() || !Complete(ends_[n].end)) return 0;
    stream_bound_ = Position{};
  }
  while (!ends_.empty() && Complete(ends_.front().end)) {
    bound = std::max(bound, ends_.front().item.change.pos);
    end_items.push_back(std::move(ends_.front().item));
    ends_.pop_front();
    ++ticks;
  }
  if (ticks == 0) return 0;
  for (auto& [key, p] : parts_) {
    // A prefix in offset order: an item of a later tick holds back what
    // follows it (a restarted producer's copies of earlier ticks, which are
    // duplicates, go with the later tick).
    while (!p.items.empty() && p.items.front().change.pos <= bound) {
      Took(p.items.front());
      out->push_back(std::move(p.items.front()));
      p.items.pop_front();
    }
  }
  for (Item& e : end_items) out->push_back(std::move(e));
  released_ = std::max(released_, bound);
  return ticks;
}

size_t TickGate::ReleasePiece(size_t max, std::vector<Item>* out) {
  // The oldest tick held: the lowest tick among the partitions' first items.
  Position oldest;
  bool any = false;
  for (const auto& [key, p] : parts_) {
    if (p.items.empty()) continue;
    const Position& f = p.items.front().change.pos;
    if (!any || f < oldest) oldest = f;
    any = true;
  }
  if (!any) return 0;
  // Up to the end of that tick; or, when the oldest is a marker sent after
  // a tick's end (a producer's schema markers, which precede its first tick
  // in every partition), up to it: else nothing would ever go out.
  const Position bound{oldest.epoch, oldest.tick, Position::kEndOfTick,
                       oldest.seq == Position::kEndOfTick ? oldest.sub : 0};
  stream_bound_ = std::max(stream_bound_, bound);
  out->reserve(out->size() + std::min(max, held_));
  size_t n = 0;
  for (auto& [key, p] : parts_) {
    while (!p.items.empty() && p.items.front().change.pos <= stream_bound_ && n < max) {
      Took(p.items.front());
      out->push_back(std::move(p.items.front()));
      p.items.pop_front();
      ++n;
    }
  }
  return n;
}

void TickGate::Reset() {
  parts_.clear();
  ends_.clear();
  held_ = held_bytes_ = 0;
  stream_bound_ = Position{};
}

}  // namespace datatunnel::apply
