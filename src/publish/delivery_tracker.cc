#include "publish/delivery_tracker.h"

#include <algorithm>
#include <map>

namespace datatunnel::publish {

uint64_t DeliveryTracker::Add(uint32_t table, const Position& pos, Kind kind, bool delivered,
                              int64_t captured_us, uint32_t rows, int32_t partition) {
  entries_.push_back(Entry{table, kind, delivered, rows, partition, pos, captured_us});
  return base_ + entries_.size() - 1;
}

void DeliveryTracker::OldestUndelivered(std::vector<int64_t>* per_table) const {
  std::fill(per_table->begin(), per_table->end(), 0);
  size_t found = 0;
  for (const Entry& e : entries_) {
    if (found == per_table->size()) break;
    if (e.delivered || e.captured_us <= 0 || e.table >= per_table->size()) continue;
    int64_t& oldest = (*per_table)[e.table];
    if (oldest == 0) {
      oldest = e.captured_us;
      ++found;
    }
  }
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
    if (e.partition >= 0) {
      if (unconfirmed_.size() <= e.table) unconfirmed_.resize(e.table + 1);
      Unconfirmed& u = unconfirmed_[e.table];
      const auto p = static_cast<size_t>(e.partition);
      if (u.last.size() <= p) u.last.resize(p + 1);
      if (u.last[p] == Position{}) u.dirty.push_back(e.partition);
      u.last[p] = e.pos;
    }
    const bool progress_point = e.kind != Kind::kPart && e.kind != Kind::kSnapshotRow;
    if (progress_point && e.table < unconfirmed_.size()) {
      Unconfirmed& u = unconfirmed_[e.table];
      for (int32_t p : u.dirty) {
        a.heads[p] = u.last[static_cast<size_t>(p)];
        u.last[static_cast<size_t>(p)] = Position{};
      }
      u.dirty.clear();
    }
    switch (e.kind) {
      case Kind::kChange:
        a.pos = e.pos;
        ++a.delivered;
        if (e.pos.seq > a.max_change_id) a.max_change_id = e.pos.seq;
        break;
      case Kind::kPart:
        break;
      case Kind::kSnapshotRow:
        a.snapshot_rows += e.rows;
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
  unconfirmed_.clear();
  failure_ = Status::OK();
}

}  // namespace datatunnel::publish
