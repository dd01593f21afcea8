// The chain check: how a consumer notices a message missing from a partition.
//
// Every message the producer sends to a partition carries, as "source.prev",
// the "source.pos" of the message it sent to the same partition before it
// (publish/envelope.h; null, read as the zero Position, for the first one
// ever). A consumer keeps per partition the tail: the newest position it has
// read there (stored in datatunnel.applied with the offset, apply/install.h).
//
//   - prev <= tail: the message links. It follows the last message read, or a
//     restarted producer sends again what it sent before (it links to
//     something read already). The tail becomes max(tail, pos).
//   - prev > tail: a GAP. The message names a predecessor the consumer never
//     read, so a message the producer sent is not on the topic although the
//     broker acknowledged it (else the producer would have sent it again
//     before this one). Applying on would skip its change for good: the
//     consumer applies nothing of the partition from this message on.
//   - pos <= prev: malformed (positions only grow along a partition); treated
//     as a bad message.
//   - no prev (older versions, other writers): not checked; moves the tail.
//
// Thread-safety: functions of their arguments.
#pragma once

#include <optional>
#include <string>

#include "core/change.h"

namespace datatunnel::apply {

enum class Link { kLinked, kGap, kMalformed };

// Reads one message of a partition whose tail is *tail. kLinked moves *tail
// to max(*tail, pos); kGap and kMalformed leave it.
Link ReadLink(Position* tail, const Position& pos, const std::optional<Position>& prev);

// "[epoch,tick,seq,sub]", as "source.pos" is written on the topic.
std::string PositionText(const Position& p);

}  // namespace datatunnel::apply
