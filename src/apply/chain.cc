#include "apply/chain.h"

#include <fmt/format.h>

namespace datatunnel::apply {

Link ReadLink(Position* tail, const Position& pos, const std::optional<Position>& prev) {
  if (prev) {
    if (pos <= *prev) return Link::kMalformed;
    if (*prev > *tail) return Link::kGap;
  }
  if (pos > *tail) *tail = pos;
  return Link::kLinked;
}

std::string PositionText(const Position& p) {
  return fmt::format("[{},{},{},{}]", p.epoch, p.tick, p.seq, p.sub);
}

}  // namespace datatunnel::apply
