#include "broker/dev_broker.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <thread>

namespace datatunnel::broker {

// Listens on a chosen loopback port and pipes each connection to the first
// mock broker that accepts one. Only the bootstrap goes through it: the
// brokers' metadata names their own (random) ports, which clients use next.
class DevBroker::Forwarder {
 public:
  static Result<std::unique_ptr<Forwarder>> Listen(int port, std::vector<int> upstream) {
    std::unique_ptr<Forwarder> f(new Forwarder());
    f->upstream_ = std::move(upstream);
    f->listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int on = 1;
    setsockopt(f->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    sockaddr_in addr = Loopback(port);
    if (f->listen_fd_ < 0 ||
        bind(f->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        listen(f->listen_fd_, 64) != 0) {
      return Status::BadConfig(fmt::format(
          "dev-broker: cannot listen on 127.0.0.1:{} ({}); choose another --port or stop what uses "
          "it",
          port, std::strerror(errno)));
    }
    if (pipe2(f->wake_, O_CLOEXEC) != 0) {
      return Status::Fatal(fmt::format("dev-broker: pipe: {}", std::strerror(errno)));
    }
    f->acceptor_ = std::thread([p = f.get()] { p->Accept(); });
    return f;
  }

  ~Forwarder() {
    if (wake_[1] >= 0) {
      (void)!write(wake_[1], "x", 1);
      if (acceptor_.joinable()) acceptor_.join();
      for (auto& t : pipes_) t.join();
      close(wake_[0]);
      close(wake_[1]);
    }
    if (listen_fd_ >= 0) close(listen_fd_);
  }

 private:
  Forwarder() = default;

  static sockaddr_in Loopback(int port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return addr;
  }

  void Accept() {
    while (true) {
      pollfd fds[2] = {{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
      if (poll(fds, 2, -1) < 0 && errno != EINTR) return;
      if (fds[0].revents) return;
      if (!(fds[1].revents & POLLIN)) continue;
      const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      pipes_.emplace_back([this, client] { Pipe(client); });
    }
  }

  void Pipe(int client) {
    int server = -1;
    for (int port : upstream_) {
      server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in addr = Loopback(port);
      if (connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) break;
      close(server);
      server = -1;
    }
    char buf[65536];
    while (server >= 0) {
      pollfd fds[3] = {{wake_[0], POLLIN, 0}, {client, POLLIN, 0}, {server, POLLIN, 0}};
      if (poll(fds, 3, -1) < 0 && errno != EINTR) break;
      if (fds[0].revents) break;
      if (!Copy(fds[1], server, buf, sizeof buf) || !Copy(fds[2], client, buf, sizeof buf)) break;
    }
    if (server >= 0) close(server);
    close(client);
  }

  // Moves what `from` has to `to`; false once either side is gone.
  static bool Copy(const pollfd& from, int to, char* buf, size_t size) {
    if (!from.revents) return true;
    const ssize_t n = read(from.fd, buf, size);
    if (n <= 0) return false;
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = write(to, buf + done, static_cast<size_t>(n - done));
      if (w <= 0) return false;
      done += w;
    }
    return true;
  }

  std::vector<int> upstream_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::thread acceptor_;
  std::vector<std::thread> pipes_;  // touched by the acceptor only, joined after it
};

Result<std::unique_ptr<DevBroker>> DevBroker::Start(int brokers, int port) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  // The handle only hosts the cluster; keep it quiet.
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  std::unique_ptr<DevBroker> b(new DevBroker());
  b->rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!b->rk_) return Status::Fatal(fmt::format("dev-broker: {}", err));
  b->cluster_ = rd_kafka_mock_cluster_new(b->rk_, brokers);
  if (!b->cluster_) return Status::Fatal("dev-broker: could not start the mock cluster");
  if (port > 0) {
    std::vector<int> upstream;
    std::stringstream list(rd_kafka_mock_cluster_bootstraps(b->cluster_));
    for (std::string hostport; std::getline(list, hostport, ',');) {
      upstream.push_back(std::stoi(hostport.substr(hostport.rfind(':') + 1)));
    }
    DT_ASSIGN_OR_RETURN(b->forwarder_, Forwarder::Listen(port, std::move(upstream)));
    b->port_ = port;
  }
  return b;
}

DevBroker::~DevBroker() {
  forwarder_.reset();
  if (cluster_) rd_kafka_mock_cluster_destroy(cluster_);
  if (rk_) rd_kafka_destroy(rk_);
}

std::string DevBroker::bootstraps() const {
  if (port_ > 0) return fmt::format("127.0.0.1:{}", port_);
  return rd_kafka_mock_cluster_bootstraps(cluster_);
}

static Status FromErr(rd_kafka_resp_err_t e, const std::string& what) {
  if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return Status::OK();
  return Status::BadConfig(fmt::format("{}: {}", what, rd_kafka_err2str(e)));
}

Status DevBroker::CreateTopic(const std::string& name, int partitions) {
  return FromErr(rd_kafka_mock_topic_create(cluster_, name.c_str(), partitions, 1),
                 "create topic " + name);
}

Status DevBroker::SetBrokerDown(int id) {
  return FromErr(rd_kafka_mock_broker_set_down(cluster_, id), fmt::format("broker {} down", id));
}

Status DevBroker::SetBrokerUp(int id) {
  return FromErr(rd_kafka_mock_broker_set_up(cluster_, id), fmt::format("broker {} up", id));
}

Status DevBroker::SetBrokerRtt(int id, int rtt_ms) {
  return FromErr(rd_kafka_mock_broker_set_rtt(cluster_, id, rtt_ms),
                 fmt::format("broker {} rtt", id));
}

void DevBroker::PushRequestErrors(int api_key, int count, int error) {
  std::vector<rd_kafka_resp_err_t> errs(static_cast<size_t>(count),
                                        static_cast<rd_kafka_resp_err_t>(error));
  rd_kafka_mock_push_request_errors_array(cluster_, static_cast<int16_t>(api_key), errs.size(),
                                          errs.data());
}

Status DevBroker::Command(const std::string& line) {
  std::istringstream in(line);
  std::string cmd;
  in >> cmd;
  if (cmd.empty()) return Status::OK();
  if (cmd == "down" || cmd == "up") {
    int id = 0;
    if (!(in >> id)) return Status::BadConfig("usage: " + cmd + " <broker id>");
    return cmd == "down" ? SetBrokerDown(id) : SetBrokerUp(id);
  }
  if (cmd == "rtt") {
    int id = 0, ms = 0;
    if (!(in >> id >> ms)) return Status::BadConfig("usage: rtt <broker id> <ms>");
    return SetBrokerRtt(id, ms);
  }
  if (cmd == "errors") {
    int api = 0, count = 0, code = 0;
    if (!(in >> api >> count >> code)) {
      return Status::BadConfig("usage: errors <api key> <count> <kafka error code>");
    }
    PushRequestErrors(api, count, code);
    return Status::OK();
  }
  if (cmd == "topic") {
    std::string name;
    int partitions = 0;
    if (!(in >> name >> partitions) || partitions < 1) {
      return Status::BadConfig("usage: topic <name> <partitions>");
    }
    return CreateTopic(name, partitions);
  }
  return Status::BadConfig(
      fmt::format("unknown command \"{}\"; commands: down <id>, up <id>, rtt <id> <ms>, "
                  "errors <api> <count> <code>, topic <name> <partitions>",
                  cmd));
}

}  // namespace datatunnel::broker
