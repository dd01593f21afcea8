// InboundMessage: one record as the apply stage sees it, whatever carried it.
#pragma once

#include <cstdint>
#include <string_view>

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

inline constexpr int64_t kOffsetBeginning = -2;  // RD_KAFKA_OFFSET_BEGINNING
inline constexpr int64_t kOffsetEnd = -1;        // RD_KAFKA_OFFSET_END
inline constexpr int64_t kOffsetStored = -1000;  // RD_KAFKA_OFFSET_STORED: the group's commit

}  // namespace datatunnel
