// datatunnel run: capture, publish and apply in one process.
#include <CLI/CLI.hpp>

#include "cli/runner.h"

namespace datatunnel::cli {

void AddRunCommand(CLI::App& app, Globals* g) {
  auto* cmd = app.add_subcommand(
      "run",
      "Capture, publish and apply in one process; snapshots tables never copied, then streams. "
      "With no broker configured (kafka.brokers empty or \"none\", or --broker none) changes are "
      "handed over in memory");
  auto plan = std::make_shared<RunPlan>();
  plan->snapshot_first = true;
  cmd->add_option("--broker", g->brokers, "Kafka bootstrap servers, or none")
      ->option_text("none|HOST:PORT");
  cmd->add_flag("--truncate-target", plan->truncate_target,
                "Allow the first snapshot to empty a target table that already holds rows");
  cmd->add_flag(
      "--no-snapshot", [plan](int64_t) { plan->snapshot_first = false; },
      "Stream only; never start a snapshot");
  cmd->add_option("--status-interval", plan->status_interval_s,
                  "Seconds between status lines (default: 1 on a terminal, else 5 while busy and "
                  "60 idle; 0 = off)");
  cmd->callback([g, plan] { g_exit_code = RunTunnel(*g, *plan); });
}

}  // namespace datatunnel::cli
