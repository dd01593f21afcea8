#include "metrics/http_server.h"

#include <fmt/format.h>
#include <httplib.h>
#include <netdb.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <utility>

namespace datatunnel::metrics {
namespace {

constexpr char kFix[] = "set [metrics] listen to host:port or leave it empty";
constexpr char kPrometheusType[] = "text/plain; version=0.0.4; charset=utf-8";
constexpr char kText[] = "text/plain; charset=utf-8";
// Scrapes are small and rare; a few workers leave room for a keep-alive
// scraper, a health checker and a person with curl at the same time.
constexpr size_t kWorkers = 4;

Status BadListen(const std::string& listen, std::string_view problem, std::string_view fix = kFix) {
  return Status::BadConfig(fmt::format("metrics.listen \"{}\": {}; {}", listen, problem, fix));
}

// Splits "host:port", "[v6]:port" or ":port". Returns false with `problem` set.
bool ParseListen(const std::string& listen, std::string* host, int* port, std::string* problem) {
  std::string_view s = listen;
  std::string_view port_text;
  if (!s.empty() && s.front() == '[') {
    const size_t close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      *problem = "an IPv6 address must be written [address]:port";
      return false;
    }
    *host = std::string(s.substr(1, close - 1));
    port_text = s.substr(close + 2);
    if (host->empty()) {
      *problem = "the address in brackets is empty";
      return false;
    }
  } else {
    const size_t colon = s.rfind(':');
    if (colon == std::string_view::npos) {
      *problem = "not host:port";
      return false;
    }
    *host = std::string(s.substr(0, colon));
    port_text = s.substr(colon + 1);
    if (host->find(':') != std::string::npos) {
      *problem = "an IPv6 address must be written [address]:port";
      return false;
    }
    if (host->empty()) *host = "0.0.0.0";  // ":9187": every interface
  }
  if (port_text.empty() || port_text.size() > 5 ||
      port_text.find_first_not_of("0123456789") != std::string_view::npos) {
    *problem = fmt::format("port \"{}\" is not a number from 0 to 65535", port_text);
    return false;
  }
  *port = std::stoi(std::string(port_text));
  if (*port > 65535) {
    *problem = fmt::format("port {} is not a number from 0 to 65535", *port);
    return false;
  }
  return true;
}

// The host must resolve to an address this machine can listen on; checked up
// front so the message can say which part is wrong.
bool Resolves(const std::string& host, std::string* problem) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* result = nullptr;
  const int rc = getaddrinfo(host.c_str(), "0", &hints, &result);
  if (rc != 0) {
    *problem = fmt::format("cannot resolve host \"{}\" ({})", host, gai_strerror(rc));
    return false;
  }
  freeaddrinfo(result);
  return true;
}

}  // namespace

HttpServer::HttpServer(std::unique_ptr<httplib::Server> server, int port)
    : server_(std::move(server)), port_(port) {}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen,
                                                      const Metrics* metrics,
                                                      std::function<Readiness()> readiness) {
  std::string host, problem;
  int port = 0;
  if (!ParseListen(listen, &host, &port, &problem)) return BadListen(listen, problem);
  if (!Resolves(host, &problem)) return BadListen(listen, problem);

  auto server = std::make_unique<httplib::Server>();
  server->new_task_queue = [] { return new httplib::ThreadPool(kWorkers); };
  // An idle keep-alive connection holds a worker (and delays shutdown) this long.
  server->set_keep_alive_timeout(1);
  // cpp-httplib's default sets SO_REUSEPORT, which would let a second process
  // share the port (and half the scrapes) instead of failing to start.
  server->set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server->Get("/metrics", [metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics->RenderPrometheus(), kPrometheusType);
  });
  server->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", kText);
  });
  server->Get("/readyz", [readiness = std::move(readiness)](const httplib::Request&,
                                                            httplib::Response& res) {
    Readiness r = readiness ? readiness() : Readiness{true, ""};
    if (r.ready) {
      res.set_content("ready\n", kText);
    } else {
      res.status = 503;
      res.set_content((r.reason.empty() ? std::string("not ready") : r.reason) + "\n", kText);
    }
  });
  server->Get(".*", [](const httplib::Request&, httplib::Response& res) {
    res.status = 404;
    res.set_content("not found; try /metrics, /healthz or /readyz\n", kText);
  });
  server->set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        res.status = 500;
        res.set_content(fmt::format("internal error: {}\n", what), kText);
      });

  errno = 0;
  int bound = -1;
  if (port == 0) {
    bound = server->bind_to_any_port(host);
  } else if (server->bind_to_port(host, port)) {
    bound = port;
  }
  if (bound < 0) {
    const int err = errno;
    if (err == EADDRINUSE) {
      return BadListen(listen, "cannot listen there (the port is in use by another process)",
                       "set [metrics] listen to a free host:port or leave it empty");
    }
    return BadListen(listen, err != 0 ? fmt::format("cannot listen there ({})", strerror(err))
                                      : std::string("cannot listen there"));
  }

  std::unique_ptr<HttpServer> self(new HttpServer(std::move(server), bound));
  auto exited = std::make_shared<std::atomic<bool>>(false);
  httplib::Server* s = self->server_.get();
  self->thread_ = std::thread([s, bound, exited] {
    // Returns true when stopped by the destructor, false when accept failed.
    if (!s->listen_after_bind()) {
      spdlog::warn("metrics endpoint on port {} stopped serving: accepting connections failed",
                   bound);
    }
    *exited = true;
  });
  // stop() only takes effect once the accept loop runs: wait for it so the
  // destructor cannot miss it. The loop marks itself running on entry.
  while (!s->is_running() && !*exited) std::this_thread::sleep_for(std::chrono::microseconds(100));
  return self;
}

HttpServer::~HttpServer() {
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace datatunnel::metrics
