// The field names of the message envelope on the topic (publish/envelope.h
// describes the format): written by the encoder (publish/) and read by the
// decoder (apply/), so both spell them alike. Changing one changes the wire
// format: consumers of older versions no longer read the field.
#pragma once

#include <string_view>

namespace datatunnel::wire {

// The value's top level.
inline constexpr std::string_view kBefore = "before";
inline constexpr std::string_view kAfter = "after";
inline constexpr std::string_view kOp = "op";
inline constexpr std::string_view kMarker = "marker";
inline constexpr std::string_view kColumns = "columns";
inline constexpr std::string_view kPartitions = "partitions";
inline constexpr std::string_view kTsMs = "ts_ms";  // also in "source": the capture time
inline constexpr std::string_view kSource = "source";

// An entry of "columns".
inline constexpr std::string_view kColumnName = "name";
inline constexpr std::string_view kColumnType = "type";

// Inside "source".
inline constexpr std::string_view kVersion = "version";
inline constexpr std::string_view kConnector = "connector";
inline constexpr std::string_view kName = "name";
inline constexpr std::string_view kInstall = "install";
inline constexpr std::string_view kDb = "db";
inline constexpr std::string_view kSchema = "schema";
inline constexpr std::string_view kTable = "table";
inline constexpr std::string_view kTxId = "txId";
inline constexpr std::string_view kChangeId = "change_id";
inline constexpr std::string_view kSnapshot = "snapshot";
inline constexpr std::string_view kPos = "pos";
inline constexpr std::string_view kPrev = "prev";
// kafka.format = "connect-json" only: {"<column>": text} of the values the
// column's Connect type cannot hold (publish/connect_envelope.h).
inline constexpr std::string_view kRaw = "raw";

// The values of "marker".
inline constexpr std::string_view kMarkerSchema = "schema";
inline constexpr std::string_view kMarkerSnapshotDone = "snapshot_done";

// The end-of-tick record on the control topic (core/message.h, TickEnd):
// {"tick_end": [epoch, tick, seq, sub], "parts": [[topic, partition,
// [epoch, tick, seq, sub]], ...], "ts_ms", "source": {"name", "install"}}.
inline constexpr std::string_view kTickEnd = "tick_end";
inline constexpr std::string_view kParts = "parts";

// A packed snapshot chunk (publish/envelope.h): a one-line JSON header
// whose first field is "chunk" (the chunk format's version), then a newline,
// then the chunk's rows as PostgreSQL COPY text. The header also holds "op"
// ("r"), "rows", "columns" (the source's column names, the COPY text's
// order), "ts_ms" and "source" ("pos" is the last row's position).
inline constexpr std::string_view kChunk = "chunk";
inline constexpr std::string_view kChunkRows = "rows";
inline constexpr std::string_view kChunkPrefix = "{\"chunk\":";
inline constexpr int kChunkVersion = 1;

// "source.connector", and "source.name" of a tunnel without a name.
inline constexpr std::string_view kConnectorName = "datatunnel";

}  // namespace datatunnel::wire
