#include "cli/snapshot_watch.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "capture/change_log.h"
#include "capture/install.h"
#include "capture/snapshot_state.h"

namespace datatunnel::cli {
namespace {

bool Wanted(const RunPlan& plan, const TableConfig& t) {
  if (plan.only_tables.empty()) return true;
  return std::find(plan.only_tables.begin(), plan.only_tables.end(), t.source.ToString()) !=
         plan.only_tables.end();
}

// A table whose copy is done: stream only, or copy it again when the target
// lost it (recreated or truncated by hand). Sets `*lost` in that case.
Status CheckCopyKept(pg::Connection& src, const Config& config, const RunPlan& plan,
                     const TableSpec& spec, const apply::TargetTableState& state,
                     int64_t marker_tick, bool* lost) {
  DT_ASSIGN_OR_RETURN(auto epoch, capture::NewestRecordedPosition(src, config.tunnel.name));
  const apply::CopyJudgement j = apply::JudgeCopy(state, epoch.epoch, marker_tick);
  if (j.state != apply::CopyState::kLost) return Status::OK();
  *lost = true;
  if (state.has_rows && !plan.truncate_target && !config.pipeline.truncate_target) {
    return Status::BadConfig(fmt::format(
        "target table {} no longer holds the snapshot of {} ({}) and already holds rows "
        "again; copy it again with `datatunnel snapshot --table {} --restart "
        "--truncate-target` (or set pipeline.truncate_target = true)",
        spec.target.ToString(), spec.source.ToString(), j.why, spec.source.ToString()));
  }
  spdlog::warn("snapshot of {}: {}; copying it again", spec.source.ToString(), j.why);
  return Status::OK();
}

// Makes the target ready to receive a copy: empties it when allowed (and
// marks everything published so far as superseded), or refuses rows that a
// snapshot would mix with the source's.
Status ReadyTarget(pg::Connection& src, pg::Connection& tgt, const Config& config,
                   const RunPlan& plan, const TableSpec& spec, const apply::TargetTableState& state,
                   bool lost) {
  if (plan.truncate_target || config.pipeline.truncate_target || lost) {
    DT_ASSIGN_OR_RETURN(const bool captured, apply::IsCapturedSource(tgt, spec.target));
    if (captured) {
      return Status::BadConfig(fmt::format(
          "target table {} is itself captured by datatunnel (it has the capture trigger): "
          "refusing to empty it for a snapshot; check target.dsn and the table's target, or "
          "empty it yourself if it really is to be overwritten",
          spec.target.ToString()));
    }
    // Everything published so far is superseded by the copy: consumers drop
    // it (and pass a gap in it, which is how a gap is repaired).
    DT_ASSIGN_OR_RETURN(auto upto, capture::NewestRecordedPosition(src, config.tunnel.name));
    DT_RETURN_IF_ERROR(apply::ResyncForSnapshot(tgt, spec.target, upto));
    if (state.has_rows) {
      spdlog::info("snapshot of {}: emptied target table {} (--truncate-target)",
                   spec.source.ToString(), spec.target.ToString());
    }
    return Status::OK();
  }
  const bool from_stream = apply::AppliedCount(state) > 0 && !plan.snapshot_only;
  if (state.has_rows && !from_stream) {
    return Status::BadConfig(fmt::format(
        "target table {} already holds rows; a snapshot would mix them with the source's. "
        "Empty it first, or pass --truncate-target (or set pipeline.truncate_target = true) "
        "to let datatunnel empty it",
        spec.target.ToString()));
  }
  return Status::OK();
}

}  // namespace

Status CheckOnlyTables(const Config& config, const RunPlan& plan) {
  for (const auto& name : plan.only_tables) {
    bool found = false;
    std::string hint, all;
    for (const auto& t : config.tables) {
      const std::string source = t.source.ToString();
      found = found || source == name;
      if (name == t.source.name || name == t.target.ToString() || name == t.target.name) {
        hint = fmt::format(" (did you mean {}?)", source);
      }
      all += (all.empty() ? "" : ", ") + source;
    }
    if (!found) {
      return Status::BadConfig(fmt::format(
          "--table {}: not a source table of this configuration{}; give schema.table as in "
          "[[tables]] source: {}",
          name, hint, all));
    }
  }
  return Status::OK();
}

Result<SnapshotWatch> SnapshotWatch::Prepare(const Config& config, const RunPlan& plan,
                                             const pg::ConnectOptions& so,
                                             const pg::ConnectOptions& to) {
  SnapshotWatch w(so, to);
  DT_ASSIGN_OR_RETURN(auto src, pg::Connection::Open(so));
  DT_ASSIGN_OR_RETURN(auto tgt, pg::Connection::Open(to));
  std::vector<std::string> warnings;
  DT_ASSIGN_OR_RETURN(auto specs, capture::DescribeSourceTables(*src, config.tables, &warnings));
  for (size_t t = 0; t < specs.size(); ++t) {
    if (!Wanted(plan, config.tables[t])) continue;
    const TableSpec& spec = specs[t];
    DT_ASSIGN_OR_RETURN(auto prog, capture::LoadSnapshotProgress(*src, spec));
    DT_ASSIGN_OR_RETURN(auto state, apply::LoadTargetState(*tgt, spec.target));
    const apply::SnapshotMarker marker = apply::NewestSnapshotMarker(state);
    const bool in_progress = prog.state == capture::SnapshotState::kRequested ||
                             prog.state == capture::SnapshotState::kRunning;
    if (in_progress && !plan.restart_snapshot) {
      spdlog::info("snapshot of {}: resuming ({} of about {} rows done)", spec.source.ToString(),
                   prog.rows, prog.total);
    } else {
      bool lost = false;
      if (!plan.snapshot_only && prog.state == capture::SnapshotState::kDone &&
          !plan.restart_snapshot) {
        DT_RETURN_IF_ERROR(CheckCopyKept(*src, config, plan, spec, state, prog.marker_tick, &lost));
        if (!lost) continue;  // already copied: stream only
      }
      DT_RETURN_IF_ERROR(ReadyTarget(*src, *tgt, config, plan, spec, state, lost));
      DT_RETURN_IF_ERROR(capture::RequestSnapshot(*src, spec, /*restart=*/true));
      DT_RETURN_IF_ERROR(src->Exec("NOTIFY datatunnel"));
      spdlog::info("snapshot of {}: requested", spec.source.ToString());
    }
    w.tables_.push_back(t);
    w.specs_.push_back(spec);
    w.baseline_.push_back(marker);
  }
  return w;
}

pg::Connection* SnapshotWatch::Reopen(std::unique_ptr<pg::Connection>* conn,
                                      const pg::ConnectOptions& options) {
  if (!*conn || (*conn)->IsBroken()) {
    auto c = pg::Connection::Open(options);
    if (c.ok()) *conn = std::move(*c);
  }
  return conn->get();
}

bool SnapshotWatch::AppliedOnTarget() {
  pg::Connection* tgt = Reopen(&target_, target_options_);
  if (!tgt) return false;
  for (size_t i = 0; i < specs_.size(); ++i) {
    auto state = apply::LoadTargetState(*tgt, specs_[i].target);
    if (!state.ok()) return false;
    const apply::SnapshotMarker m = apply::NewestSnapshotMarker(*state);
    if (m.tick <= baseline_[i].tick || !m.complete) return false;
  }
  return true;
}

bool SnapshotWatch::RecordedDoneOnSource() {
  pg::Connection* src = Reopen(&source_, source_options_);
  if (!src) return false;
  for (const auto& spec : specs_) {
    auto prog = capture::LoadSnapshotProgress(*src, spec);
    if (!prog.ok() || prog->state != capture::SnapshotState::kDone) return false;
  }
  return true;
}

}  // namespace datatunnel::cli
