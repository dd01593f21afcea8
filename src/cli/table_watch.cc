#include "cli/table_watch.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <set>

#include "apply/install.h"
#include "apply/tunnel_tables.h"
#include "capture/install.h"
#include "core/clock.h"

namespace datatunnel::cli {
namespace {

std::set<std::string> Sources(const std::vector<TableConfig>& tables) {
  std::set<std::string> out;
  for (const auto& t : tables) out.insert(t.source.ToString());
  return out;
}

}  // namespace

Result<std::unique_ptr<TableWatch>> TableWatch::Open(const Setup& setup) {
  std::unique_ptr<TableWatch> w(new TableWatch(setup));
  DT_RETURN_IF_ERROR(w->Connect());
  return w;
}

Status TableWatch::Connect() {
  DT_ASSIGN_OR_RETURN(conn_, pg::Connection::Open(setup_.source));
  DT_RETURN_IF_ERROR(conn_->Listen(capture::kNotifyChannel));
  check_ = true;
  return Status::OK();
}

bool TableWatch::Changed(const std::vector<TableConfig>& current) {
  if (!conn_ || conn_->IsBroken()) {
    const int64_t now = MonotonicMicros();
    if (now < next_connect_us_) return false;
    next_connect_us_ = now + 5'000'000;
    if (Status st = Connect(); !st.ok()) {
      conn_.reset();
      spdlog::warn("auto_add: cannot watch the source for new tables ({}); retrying", st.message());
      return false;
    }
  }
  auto notes = conn_->WaitForNotifications(0, -1);
  if (!notes.ok()) return false;  // reconnects on the next call
  if (*notes > 0) check_ = true;
  if (!check_) return false;
  std::vector<TableConfig> now;
  if (Status st = Resolve(&now); !st.ok()) {
    spdlog::warn("auto_add: could not read the tunnel's tables: {}", st.message());
    return false;
  }
  check_ = false;
  return Sources(now) != Sources(current);
}

Status TableWatch::Resolve(std::vector<TableConfig>* tables) {
  Config config = setup_.config;
  DT_RETURN_IF_ERROR(ResolveTables(&config, conn_.get(), nullptr, Selection::kCaptured));
  *tables = std::move(config.tables);
  return Status::OK();
}

Status TableWatch::PrepareTarget(pg::Connection& target, const std::vector<TableConfig>& before,
                                 const std::vector<TableConfig>& now) {
  const std::set<std::string> had = Sources(before);
  std::vector<TableConfig> added;
  for (const auto& t : now) {
    if (had.count(t.source.ToString()) == 0) added.push_back(t);
  }
  if (!added.empty()) {
    std::vector<std::string> warnings;
    DT_ASSIGN_OR_RETURN(auto specs, capture::DescribeSourceTables(*conn_, added, &warnings));
    DT_ASSIGN_OR_RETURN(auto types, capture::UserTypes(*conn_, specs));
    std::vector<apply::TypeToCreate> create;
    for (const auto& t : types) create.push_back({t.name, t.schema, t.ddl});
    DT_ASSIGN_OR_RETURN(auto actions, apply::Install(target, specs, create));
    for (const auto& a : actions) spdlog::info("auto_add: target: {}", a);
  }
  std::vector<QualifiedName> sources;
  for (const auto& t : now) sources.push_back(t.source);
  return apply::RecordTunnelTables(target, setup_.config.tunnel.name, sources).status();
}

}  // namespace datatunnel::cli
