// The one place that wires the stages together: builds the source worker,
// the sink (Kafka or in-memory), the target worker, runs them on threads and
// stops them in order (source first, so what it sent can still be applied).
#pragma once

#include "cli/common.h"

namespace datatunnel::cli {

struct RunPlan {
  bool source = true;                    // capture and publish
  bool target = true;                    // consume and apply
  bool snapshot_first = false;           // `run`: snapshot tables never snapshotted
  bool snapshot_only = false;            // `snapshot`: request, then exit once applied
  bool truncate_target = false;          // allow emptying a non-empty target for a snapshot
  bool restart_snapshot = false;         // start snapshots over
  std::vector<std::string> only_tables;  // `snapshot --table`
  int status_interval_s = -1;            // -1: every second on a terminal, else off
};

int RunTunnel(const Globals& g, const RunPlan& plan);

}  // namespace datatunnel::cli
