// InboundMessage: one record as the apply stage sees it, whatever carried it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/change.h"

namespace datatunnel {

struct InboundMessage {
  std::string_view topic;
  int32_t partition = 0;
  int64_t offset = 0;
  std::string_view key;
  std::string_view value;
  bool null_value = false;  // a tombstone (no value at all)
};

// One partition of a topic, with an offset where relevant.
struct TopicPartition {
  std::string topic;
  int32_t partition = 0;
  int64_t offset = -1;  // kOffsetBeginning etc. below, or a real offset
};

// The end-of-tick record (apply_consistency = "transaction"), one per tick
// that sent anything, on the tunnel's control topic: `end` is the tick's
// end position {epoch, tick, Position::kEndOfTick, 0}; `parts` lists each
// topic partition the producer sent to since its previous end-of-tick
// record (since its session started, for the first one) with the position
// of the last message it sent there. A consumer holds all of the tick's
// messages once it has read, in every listed partition, a message at or
// above the listed position (apply/tick_gate.h).
struct TickEnd {
  struct Part {
    std::string topic;
    int32_t partition = 0;
    Position pos;
  };
  Position end;
  std::vector<Part> parts;
  std::string tunnel;   // "source.name" (the tunnel's name)
  std::string install;  // "source.install"
};

inline constexpr int64_t kOffsetBeginning = -2;  // RD_KAFKA_OFFSET_BEGINNING
inline constexpr int64_t kOffsetEnd = -1;        // RD_KAFKA_OFFSET_END
inline constexpr int64_t kOffsetStored = -1000;  // RD_KAFKA_OFFSET_STORED: the group's commit

}  // namespace datatunnel
