// datatunnel dev-broker: librdkafka's in-memory Kafka-protocol broker, for
// development and tests only.
#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fstream>

#include "broker/dev_broker.h"
#include "cli/common.h"

namespace datatunnel::cli {
namespace {

struct DevBrokerOptions {
  int brokers = 1;
  int partitions = 4;
  int port = 0;
  std::string bootstrap_file;
};

int RunDevBroker(const Globals& g, const DevBrokerOptions& o) {
  SetupLogging(g);
  auto config = LoadConfig(g);
  if (!config.ok()) return Fail(config.status());
  auto broker = broker::DevBroker::Start(o.brokers, o.port);
  if (!broker.ok()) return Fail(broker.status());
  for (const auto& t : config->tables) {
    Status st = (*broker)->CreateTopic(t.topic, o.partitions);
    if (!st.ok()) return Fail(st);
  }
  const std::string bootstrap = (*broker)->bootstraps();
  if (!o.bootstrap_file.empty()) {
    std::string tmp = o.bootstrap_file + ".tmp";
    std::ofstream(tmp) << bootstrap << "\n";
    std::rename(tmp.c_str(), o.bootstrap_file.c_str());
  }
  fmt::print("{}\n", bootstrap);
  std::fflush(stdout);
  fmt::print(
      stderr,
      "datatunnel dev-broker: Kafka protocol on {} ({} broker(s), topics of {} partitions).\n"
      "IN MEMORY, FOR DEVELOPMENT AND TESTS ONLY: data is lost when it exits, and each "
      "partition keeps at most 5 MB.\n"
      "Commands on stdin: down <id>, up <id>, rtt <id> <ms>, errors <api> <count> <code>, "
      "topic <name> <partitions>. Stop with Ctrl-C.\n",
      bootstrap, o.brokers, o.partitions);
  StopSource stop;
  InstallSignalHandlers(&stop);
  std::string buffer;
  bool stdin_open = true;
  while (!stop.stop_requested()) {
    pollfd fds[2] = {{stop.wake_fd(), POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
    poll(fds, stdin_open ? 2 : 1, 1000);
    if (stdin_open && (fds[1].revents & (POLLIN | POLLHUP))) {
      char buf[4096];
      ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
      if (n <= 0) {
        stdin_open = false;  // keep serving; only a signal stops us
        continue;
      }
      buffer.append(buf, static_cast<size_t>(n));
      size_t nl;
      while ((nl = buffer.find('\n')) != std::string::npos) {
        std::string line = buffer.substr(0, nl);
        buffer.erase(0, nl + 1);
        Status st = (*broker)->Command(line);
        if (st.ok()) {
          fmt::print(stderr, "dev-broker: ok: {}\n", line);
        } else {
          fmt::print(stderr, "dev-broker: error: {}\n", st.message());
        }
      }
    }
  }
  return kExitOk;
}

}  // namespace

void AddDevBrokerCommand(CLI::App& app, Globals* g) {
  auto* cmd = app.add_subcommand(
      "dev-broker",
      "Run an in-memory Kafka-protocol broker on 127.0.0.1 (librdkafka's mock cluster; "
      "development and tests only) and print its bootstrap address");
  auto o = std::make_shared<DevBrokerOptions>();
  cmd->add_option("--brokers", o->brokers, "Number of brokers")->check(CLI::Range(1, 9));
  cmd->add_option("--partitions", o->partitions, "Partitions of each configured table's topic")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--port", o->port,
                  "Bootstrap on 127.0.0.1:PORT (default: a free port), so a config can keep the "
                  "same address across restarts")
      ->check(CLI::Range(1, 65535));
  cmd->add_option("--bootstrap-file", o->bootstrap_file,
                  "Also write the bootstrap address to this file");
  cmd->callback([g, o] { g_exit_code = RunDevBroker(*g, *o); });
}

}  // namespace datatunnel::cli
