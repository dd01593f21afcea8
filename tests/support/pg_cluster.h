// PgCluster: a real, throwaway PostgreSQL server for tests (never mocked).
//
// Started from Debian's binaries by scripts/pg.sh in a temporary folder, on a
// free loopback port, copied from an initdb template cached in the build
// folder. PgEnvironment starts two (source and target) once per test binary;
// tests create their own databases so they never see each other's objects.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "pg/connection.h"

namespace datatunnel::testing {

// A loopback TCP port free right now (the kernel's choice).
int FreePort();

class PgCluster {
 public:
  // Starts a cluster; aborts the test binary with a clear message on failure.
  explicit PgCluster(const std::string& name);
  ~PgCluster();

  int port() const { return port_; }
  std::string Dsn(const std::string& db) const;
  // Creates a database (a fresh, empty one per call with a unique name).
  std::string CreateDatabase(const std::string& prefix);
  std::unique_ptr<pg::Connection> Connect(const std::string& db) const;
  // Runs SQL in `db`; fails the current test on error.
  void Exec(const std::string& db, const std::string& sql) const;
  // First column of the first row as text (nullopt for NULL or no row).
  std::optional<std::string> Scalar(const std::string& db, const std::string& sql) const;
  int64_t Count(const std::string& db, const std::string& sql) const;

  // Creates a login role that must authenticate with `password` over TCP
  // (the cluster otherwise trusts local connections).
  void CreatePasswordRole(const std::string& role, const std::string& password);

  void Stop();
  void Start();
  void Restart();
  // Stops the server as a crash would (no shutdown checkpoint) and starts
  // it again: it recovers from the WAL, and its unlogged tables are empty.
  void CrashAndStart();

 private:
  std::string dir_;
  int port_ = 0;
};

// The two servers every integration test binary uses.
PgCluster& SourceCluster();
PgCluster& TargetCluster();

// The project's source folder (for scripts) and the built binary.
std::string SourceDir();
std::string BinaryPath();

}  // namespace datatunnel::testing
