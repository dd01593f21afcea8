// datatunnel snapshot: copy every current row, then return once applied.
#include <CLI/CLI.hpp>

#include "cli/runner.h"

namespace datatunnel::cli {

void AddSnapshotCommand(CLI::App& app, Globals* g) {
  auto* cmd = app.add_subcommand(
      "snapshot",
      "Copy every current row of the source tables to the target (through the topics, or in "
      "memory with --broker none), consistently with the stream; resumable; exits when the "
      "target holds the copy");
  auto plan = std::make_shared<RunPlan>();
  plan->snapshot_only = true;
  cmd->add_option("--broker", g->brokers, "Kafka bootstrap servers, or none")
      ->option_text("none|HOST:PORT");
  cmd->add_flag("--truncate-target", plan->truncate_target,
                "Empty target tables that already hold rows before copying");
  cmd->add_flag("--restart", plan->restart_snapshot,
                "Start over instead of resuming a snapshot in progress");
  cmd->add_option("--table", plan->only_tables,
                  "Only this source table (schema.table; repeatable)");
  cmd->add_option("--status-interval", plan->status_interval_s,
                  "Seconds between progress lines (default: 1 on a terminal, else 5; 0 = off)");
  cmd->callback([g, plan] { g_exit_code = RunTunnel(*g, *plan); });
}

}  // namespace datatunnel::cli
