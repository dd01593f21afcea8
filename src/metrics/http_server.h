// HttpServer: the metrics endpoint ([metrics] listen = "host:port").
//
//   GET /metrics  200, Prometheus text format 0.0.4 (Metrics::RenderPrometheus)
//   GET /healthz  200 "ok": the process is alive and serving
//   GET /readyz   200 "ready", or 503 with the reason the readiness callback gave
//   anything else 404
//
// Built on cpp-httplib. Requests are served on the server's own threads (one
// acceptor plus a small worker pool), never on the pipeline's: a slow or stuck
// scraper cannot block capture or apply, it only reads atomics.
//
// Thread-safety: Start() and the destructor may run on any thread. `metrics`
// and `readiness` are used from the server's threads until the destructor
// returns, so both must outlive the server and `readiness` must be safe to
// call concurrently with the pipeline (read atomics, not worker state).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "core/status.h"
#include "metrics/metrics.h"

namespace httplib {
class Server;
}

namespace datatunnel::metrics {

// What /readyz reports. `reason` says why not, for the 503 body
// ("not connected to the target"); ignored when ready.
struct Readiness {
  bool ready = false;
  std::string reason;
};

class HttpServer {
 public:
  // Binds `listen` ("host:port"; host a name or an IPv4 address, an IPv6
  // address in brackets ("[::1]:9187"), or empty for every interface
  // (":9187"); port 0 picks a free port) and starts serving. Returns
  // kBadConfig, with a one-line message naming the address, for a malformed
  // address, a host that does not resolve, or a port that cannot be bound
  // (in use, or privileged). The socket is listening when Start returns.
  static Result<std::unique_ptr<HttpServer>> Start(const std::string& listen,
                                                   const Metrics* metrics,
                                                   std::function<Readiness()> readiness);

  // Stops accepting, finishes the requests in progress, joins the threads.
  ~HttpServer();

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port (the one picked when `listen` said port 0).
  int port() const { return port_; }

 private:
  HttpServer(std::unique_ptr<httplib::Server> server, int port);

  std::unique_ptr<httplib::Server> server_;
  int port_;
  std::thread thread_;  // runs the accept loop
};

}  // namespace datatunnel::metrics
