// `run` and `snapshot`: which tables to copy before streaming, and when the
// copy has reached the target.
//
// Prepare decides per table whether to start, resume or skip a snapshot (a
// table whose copy the target lost is copied again; a non-empty target is
// refused unless it may be emptied), requests it on the source and records
// each table's newest end marker on the target, so the new one is told apart
// however fast it arrives. Done is then polled by the main loop.
//
// Thread-safety: none; the main thread's.
#pragma once

#include <memory>
#include <vector>

#include "apply/install.h"
#include "cli/runner.h"
#include "pg/connection.h"

namespace datatunnel::cli {

// Every `--table` must name a source table of the config: a typo must not
// turn into "nothing to snapshot".
Status CheckOnlyTables(const Config& config, const RunPlan& plan);

class SnapshotWatch {
 public:
  // Requests the snapshots `plan` asks for (see above).
  static Result<SnapshotWatch> Prepare(const Config& config, const RunPlan& plan,
                                       const pg::ConnectOptions& source,
                                       const pg::ConnectOptions& target);

  // The tables this run waits for (indexes into Config::tables).
  const std::vector<size_t>& tables() const { return tables_; }
  bool empty() const { return tables_.empty(); }

  // Through a broker: every partition of every requested table applied the
  // new end marker. Connection trouble reads as "not yet".
  bool AppliedOnTarget();
  // In memory, while another tunnel holds the producer lock and copies the
  // tables for us: the source records each one done (once applied).
  bool RecordedDoneOnSource();

 private:
  SnapshotWatch(pg::ConnectOptions source, pg::ConnectOptions target)
      : source_options_(std::move(source)), target_options_(std::move(target)) {}
  static pg::Connection* Reopen(std::unique_ptr<pg::Connection>* conn,
                                const pg::ConnectOptions& options);

  pg::ConnectOptions source_options_, target_options_;
  std::vector<size_t> tables_;
  std::vector<TableSpec> specs_;                 // per waited table
  std::vector<apply::SnapshotMarker> baseline_;  // per waited table, before the request
  std::unique_ptr<pg::Connection> source_, target_;
};

}  // namespace datatunnel::cli
