#include "core/change.h"

#include <fmt/format.h>

#include <utility>

namespace datatunnel {

std::string Position::ToString() const {
  if (seq == kEndOfTick) return fmt::format("{}/{}/end", epoch, tick);
  if (seq >= kSnapshotSeqBase)
    return fmt::format("{}/{}/snapshot+{}", epoch, tick, seq - kSnapshotSeqBase);
  return fmt::format("{}/{}/{}.{}", epoch, tick, seq, sub);
}

void Row::Reset(size_t columns) {
  buf_.clear();
  slots_.assign(columns, Slot{});
}

void Row::ResetAbsent(size_t columns) {
  buf_.clear();
  slots_.assign(columns, Slot{0, kAbsent});
}

void Row::Assign(std::string value) {
  slots_.assign(1, Slot{0, static_cast<uint32_t>(value.size())});
  buf_ = std::move(value);
}

void Row::Set(size_t i, std::string_view value) {
  slots_[i] = Slot{static_cast<uint32_t>(buf_.size()), static_cast<uint32_t>(value.size())};
  buf_.append(value);
}

}  // namespace datatunnel
