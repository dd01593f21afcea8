// The producer loop's session state, shared by its two files:
// source_worker.cc (the session: connect, lock, prepare, step, drain, serve
// deliveries) and source_tick.cc (one tick: take it, read its batch and
// snapshot chunk, send them). Internal to tunnel/.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "capture/batch_reader.h"
#include "capture/change_log.h"
#include "capture/progress_book.h"
#include "capture/schema_watch.h"
#include "capture/ticker.h"
#include "snapshot/chunker.h"
#include "snapshot/driver.h"
#include "tunnel/source_worker.h"

namespace datatunnel::tunnel {

// The batch being published: (lo, hi], and the snapshot chunk read at hi.
struct SourceWorker::Work {
  capture::Tick lo, hi;
  std::vector<capture::ChangeLog::TickRead> reads;  // first reads, done with the tick
  std::optional<capture::BatchReader> batch;
  int chunk_table = -1;
  snapshot::Chunk chunk;
  // Rows a self-referencing table's changes reference, not copied yet
  // (snapshot::Driver::Read), sent before the chunk.
  std::vector<Change> referenced;
  bool replay = false;  // a tick recorded before a restart
};

// What one session of the loop holds; the stages' own state lives in their
// types (the schema watch, the progress book, the snapshot driver).
struct SourceWorker::Session {
  std::unique_ptr<pg::Connection> conn;
  std::vector<TableSpec> specs;
  std::unique_ptr<capture::ChangeLog> log;
  std::optional<capture::SchemaWatch> schema;
  capture::ProgressBook book;
  std::optional<snapshot::Driver> snaps;
  capture::ReadSizer read_sizer;
  std::optional<capture::Ticker> ticker;
  int64_t epoch = 0;
  std::optional<Work> work;
  // Ticks replayed without their end-of-tick record (FinishTick): the next
  // tick sends one, whatever it holds.
  bool tick_end_owed = false;

  int64_t last_record_us = 0;
  int64_t last_pending_us = 0;  // last count of the change tables
  int64_t last_lag_sample_us = 0;
  std::vector<int64_t> oldest_undelivered;  // per table, see ServeDeliveries
  // While the schema markers are not all delivered (the producer is not
  // ready yet): the token after them.
  bool ready_pending = false;
  uint64_t ready_token = 0;
};

}  // namespace datatunnel::tunnel
