#include "support/pg_cluster.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "support/test_util.h"

namespace datatunnel::testing {

std::string UniqueName(const std::string& prefix) {
  static std::atomic<int> counter{0};
  return fmt::format("{}_{}_{}", prefix, getpid(), counter++);
}

std::string SourceDir() { return DATATUNNEL_SOURCE_DIR; }
std::string BinaryPath() { return DATATUNNEL_BINARY; }

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

namespace {

int Shell(const std::string& cmd) { return std::system(cmd.c_str()); }

}  // namespace

PgCluster::PgCluster(const std::string& name) {
  char tmpl[] = "/tmp/datatunnel-test-XXXXXX";
  const char* parent = mkdtemp(tmpl);
  chmod(parent, 0755);  // the server runs as the postgres user when we are root
  dir_ = std::string(parent) + "/" + name;
  const std::string template_dir = std::string(DATATUNNEL_BUILD_DIR) + "/test-pg-template";
  // PG_OWNER (here and in Start): the server goes with this process, however
  // it ends (a timeout's kill -9 included).
  for (int attempt = 0; attempt < 5; ++attempt) {
    port_ = FreePort();
    int rc =
        Shell(fmt::format("PG_FSYNC=off PG_TEMPLATE={} PG_OWNER={} {}/scripts/pg.sh start {} {} "
                          ">/dev/null",
                          template_dir, getpid(), SourceDir(), dir_, port_));
    if (rc == 0) return;
  }
  fmt::print(stderr, "test fixture: could not start PostgreSQL in {} (see {}/server.log)\n", dir_,
             dir_);
  std::abort();
}

PgCluster::~PgCluster() {
  Stop();
  std::error_code ec;
  std::filesystem::remove_all(std::filesystem::path(dir_).parent_path(), ec);
}

std::string PgCluster::Dsn(const std::string& db) const {
  return fmt::format("postgresql://postgres@127.0.0.1:{}/{}", port_, db);
}

std::string PgCluster::CreateDatabase(const std::string& prefix) {
  std::string db = UniqueName(prefix);
  Exec("postgres", "CREATE DATABASE " + db);
  return db;
}

std::unique_ptr<pg::Connection> PgCluster::Connect(const std::string& db) const {
  pg::ConnectOptions o;
  o.dsn = Dsn(db);
  o.role = "test";
  auto c = pg::Connection::Open(o);
  if (!c.ok()) {
    ADD_FAILURE() << c.status().message();
    return nullptr;
  }
  return std::move(*c);
}

void PgCluster::Exec(const std::string& db, const std::string& sql) const {
  auto c = Connect(db);
  if (!c) return;
  Status st = c->Exec(sql);
  EXPECT_TRUE(st.ok()) << st.message() << "\nSQL: " << sql;
}

std::optional<std::string> PgCluster::Scalar(const std::string& db, const std::string& sql) const {
  auto c = Connect(db);
  if (!c) return std::nullopt;
  auto r = c->Query(sql);
  EXPECT_TRUE(r.ok()) << r.status().message() << "\nSQL: " << sql;
  if (!r.ok() || r->rows() == 0 || r->IsNull(0, 0)) return std::nullopt;
  return std::string(r->Get(0, 0));
}

int64_t PgCluster::Count(const std::string& db, const std::string& sql) const {
  auto v = Scalar(db, sql);
  return v ? std::strtoll(v->c_str(), nullptr, 10) : -1;
}

void PgCluster::CreatePasswordRole(const std::string& role, const std::string& password) {
  Exec("postgres", "CREATE ROLE " + role + " LOGIN SUPERUSER PASSWORD '" + password + "'");
  const std::string hba = dir_ + "/data/pg_hba.conf";
  std::string rules;
  {
    std::ifstream in(hba);
    std::stringstream ss;
    ss << in.rdbuf();
    rules = ss.str();
  }
  std::ofstream(hba) << "host all " << role << " 127.0.0.1/32 scram-sha-256\n" << rules;
  Exec("postgres", "SELECT pg_reload_conf()");
}

void PgCluster::Stop() {
  Shell(fmt::format("{}/scripts/pg.sh stop {} >/dev/null", SourceDir(), dir_));
}

void PgCluster::Start() {
  Shell(fmt::format("PG_FSYNC=off PG_OWNER={} {}/scripts/pg.sh start {} {} >/dev/null", getpid(),
                    SourceDir(), dir_, port_));
}

void PgCluster::CrashAndStart() {
  Shell(fmt::format("{}/scripts/pg.sh crash {} >/dev/null", SourceDir(), dir_));
  Start();
}

void PgCluster::Restart() {
  Shell(fmt::format("{}/scripts/pg.sh restart {} >/dev/null", SourceDir(), dir_));
}

namespace {

// Starts both servers before the first test and stops them after the last.
class PgEnvironment : public ::testing::Environment {
 public:
  static PgEnvironment* instance;
  void TearDown() override {
    source.reset();
    target.reset();
  }
  std::unique_ptr<PgCluster> source, target;
};
PgEnvironment* PgEnvironment::instance =
    static_cast<PgEnvironment*>(::testing::AddGlobalTestEnvironment(new PgEnvironment));

}  // namespace

PgCluster& SourceCluster() {
  auto& env = *PgEnvironment::instance;
  if (!env.source) env.source = std::make_unique<PgCluster>("source");
  return *env.source;
}

PgCluster& TargetCluster() {
  auto& env = *PgEnvironment::instance;
  if (!env.target) env.target = std::make_unique<PgCluster>("target");
  return *env.target;
}

}  // namespace datatunnel::testing
