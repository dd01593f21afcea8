// datatunnel produce: capture and publish to Kafka.
#include <CLI/CLI.hpp>

#include "cli/runner.h"

namespace datatunnel::cli {

void AddProduceCommand(CLI::App& app, Globals* g) {
  auto* cmd = app.add_subcommand(
      "produce",
      "Publish every change of the source tables to their Kafka topics, in commit order; a second "
      "producer waits as a hot standby");
  auto plan = std::make_shared<RunPlan>();
  plan->target = false;
  cmd->add_option("--status-interval", plan->status_interval_s,
                  "Seconds between status lines (default: 1 on a terminal, else 5 while busy and "
                  "60 idle; 0 = off)");
  cmd->callback([g, plan] { g_exit_code = RunTunnel(*g, *plan); });
}

}  // namespace datatunnel::cli
