#include "publish/delivery_tracker.h"

#include <map>

namespace datatunnel::publish {

uint64_t DeliveryTracker::Add(uint32_t table, const Position& pos, Kind kind, bool delivered) {
  entries_.push_back(Entry{table, kind, delivered, pos});
  return base_ + entries_.size() - 1;
}

void DeliveryTracker::MarkDelivered(uint64_t token) {
  if (token < base_ || token >= base_ + entries_.size()) return;  // from before a Reset()
  entries_[token - base_].delivered = true;
}

void DeliveryTracker::MarkFailed(uint64_t token, Status why) {
  if (token < base_ || token >= base_ + entries_.size()) return;
  if (failure_.ok()) failure_ = std::move(why);
}

std::vector<TableAdvance> DeliveryTracker::TakeAdvances() {
  std::map<uint32_t, TableAdvance> adv;
  while (!entries_.empty() && entries_.front().delivered) {
    const Entry& e = entries_.front();
    TableAdvance& a = adv[e.table];
    a.table = e.table;
    switch (e.kind) {
      case Kind::kChange:
        a.pos = e.pos;
        ++a.delivered;
        if (e.pos.seq > a.max_change_id) a.max_change_id = e.pos.seq;
        break;
      case Kind::kPart:
        break;
      case Kind::kSnapshotRow:
        ++a.snapshot_rows;
        break;
      case Kind::kChunkEnd:
        ++a.chunks_done;
        a.pos = e.pos;
        break;
      case Kind::kMarker:
        a.marker_done = true;
        a.pos = e.pos;
        break;
      case Kind::kTickEnd:
        a.pos = e.pos;
        break;
    }
    entries_.pop_front();
    ++base_;
  }
  std::vector<TableAdvance> out;
  for (auto& [t, a] : adv) out.push_back(a);
  return out;
}

void DeliveryTracker::Reset() {
  base_ += entries_.size();
  entries_.clear();
  failure_ = Status::OK();
}

}  // namespace datatunnel::publish
