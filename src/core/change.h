// Change: one row-level event travelling capture -> publish -> broker -> apply.
//
// Values are carried in PostgreSQL's text form (as the server prints them with
// the session settings pg/ fixes: DateStyle ISO, TimeZone UTC,
// extra_float_digits 3, bytea_output hex). The text form is exact for every
// type and is what the target's input functions parse, so a value is never
// reinterpreted in C++ on the way through.
#pragma once

#include <compare>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace datatunnel {

// The Debezium operation codes, plus our own control marker.
enum class Op : char {
  kInsert = 'c',
  kUpdate = 'u',
  kDelete = 'd',
  kRead = 'r',      // a snapshot row
  kTruncate = 't',  // the whole table was emptied
  kMarker = 'm',    // control, see Marker
};

// What an Op::kMarker says.
enum class Marker : uint8_t {
  kNone,
  kSnapshotDone,  // every row of a snapshot precedes this, on every partition
  kSchema,        // the source table's columns (sent when a producer starts)
  // Every change of a tick was sent (apply_consistency = "transaction"): in
  // memory a change of its own; through Kafka a record on the control topic
  // (TickEnd, core/message.h).
  kTickEnd,
};

// Where a change stands in the source's commit order. Positions are totally
// ordered; within one Kafka partition they strictly increase (the producer
// republishes the same changes with the same positions after a crash, so a
// consumer drops anything at or below what it has applied).
struct Position {
  // Identifies one installation of capture on the source (its install time in
  // microseconds): a reinstall starts a larger epoch, so old positions sort first.
  int64_t epoch = 0;
  // The batch: changes whose transaction became visible between the snapshots
  // of tick-1 and tick. Ticks are persisted before their batch is published.
  int64_t tick = 0;
  // change_id inside the batch; snapshot rows read at this tick come after
  // every change of the batch, at kSnapshotSeqBase + their row number.
  int64_t seq = 0;
  // Bits 0-15, the part: 0, or 1 for the insert half of an update that
  // changed the key (2 and up: schema markers, ProgressBook). Bits 16-30,
  // the element: 0 for a change row of one row; e + 1 for element e of a
  // change row that holds a statement's rows (capture/change_log.h, BulkRow).
  int32_t sub = 0;

  static constexpr int kElementShift = 16;
  static constexpr int32_t kPartMask = (1 << kElementShift) - 1;
  int32_t part() const { return sub & kPartMask; }
  int32_t element() const { return sub >> kElementShift; }
  // The same change (both halves of a key change are).
  bool SameChange(const Position& o) const {
    return epoch == o.epoch && tick == o.tick && seq == o.seq && element() == o.element();
  }

  static constexpr int64_t kSnapshotSeqBase = int64_t{1} << 62;
  // seq value meaning "every change of this tick".
  static constexpr int64_t kEndOfTick = std::numeric_limits<int64_t>::max();

  auto operator<=>(const Position&) const = default;
  std::string ToString() const;
};

// A row image: one slot per column of a TableSpec, each NULL, a text value,
// or absent (not carried by the message: leave the target's value alone).
// Stored in one buffer so building a row costs two allocations, not one per value.
class Row {
 public:
  // All slots NULL.
  void Reset(size_t columns);
  // All slots absent.
  void ResetAbsent(size_t columns);
  // Room for `bytes` of values, so that setting them allocates once.
  void Reserve(size_t bytes) { buf_.reserve(bytes); }
  size_t size() const { return slots_.size(); }
  void Set(size_t i, std::string_view value);
  // One slot holding `value`, taken without a copy.
  void Assign(std::string value);
  void SetNull(size_t i) { slots_[i] = Slot{0, kNull}; }
  bool IsNull(size_t i) const { return slots_[i].len == kNull; }
  bool IsAbsent(size_t i) const { return slots_[i].len == kAbsent; }
  bool HasValue(size_t i) const { return slots_[i].len < kAbsent; }
  // REQUIRES: HasValue(i)
  std::string_view Get(size_t i) const { return {buf_.data() + slots_[i].off, slots_[i].len}; }
  size_t ByteSize() const { return buf_.size() + slots_.size() * sizeof(Slot); }

 private:
  static constexpr uint32_t kNull = std::numeric_limits<uint32_t>::max();
  static constexpr uint32_t kAbsent = kNull - 1;
  struct Slot {
    uint32_t off = 0;
    uint32_t len = kNull;
  };
  std::string buf_;
  std::vector<Slot> slots_;
};

struct Change {
  Op op = Op::kInsert;
  uint32_t table = 0;             // index into the tunnel's table list
  bool key_only = false;          // `row` holds only the key columns (others NULL)
  Marker marker = Marker::kNone;  // for Op::kMarker
  Position pos;
  int64_t txid = 0;         // the writing transaction (0 for snapshot rows)
  int64_t captured_us = 0;  // when the trigger (or snapshot read) ran, source clock
  // > 0: a whole snapshot chunk of this many rows (op kRead, in-memory
  // hand-over only), as PostgreSQL's COPY text in row slot 0, columns in the
  // source's order; `pos` is its last row's position.
  int64_t packed_rows = 0;
  // The after-image for c/u/r, the before-image for d, unused for t/m.
  Row row;
};

}  // namespace datatunnel
