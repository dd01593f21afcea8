// datatunnel consume: apply the topics to the target.
#include <CLI/CLI.hpp>

#include "cli/runner.h"

namespace datatunnel::cli {

void AddConsumeCommand(CLI::App& app, Globals* g) {
  auto* cmd = app.add_subcommand(
      "consume",
      "Apply the tables' topics to the target in batches; several consumers in one group share "
      "the partitions");
  auto plan = std::make_shared<RunPlan>();
  plan->source = false;
  cmd->add_option("--status-interval", plan->status_interval_s,
                  "Seconds between status lines (default: 1 on a terminal, else 5 while busy and "
                  "60 idle; 0 = off)");
  cmd->callback([g, plan] { g_exit_code = RunTunnel(*g, *plan); });
}

}  // namespace datatunnel::cli
