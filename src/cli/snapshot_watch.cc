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

// Whether the target must be emptied to receive a copy (allowed: the
// caller empties every such table at once, EmptyTargets), or an error for
// rows that a snapshot would mix with the source's.
Result<bool> ReadyTarget(pg::Connection& tgt, const Config& config, const RunPlan& plan,
                         const TableSpec& spec, const apply::TargetTableState& state, bool lost) {
  if (plan.truncate_target || config.pipeline.truncate_target || lost) {
    DT_ASSIGN_OR_RETURN(const bool captured, apply::IsCapturedSource(tgt, spec.target));
    if (captured) {
      return Status::BadConfig(fmt::format(
          "target table {} is itself captured by datatunnel (it has the capture trigger): "
          "refusing to empty it for a snapshot; check target.dsn and the table's target, or "
          "empty it yourself if it really is to be overwritten",
          spec.target.ToString()));
    }
    return true;
  }
  const bool from_stream = apply::AppliedCount(state) > 0 && !plan.snapshot_only;
  if (state.has_rows && !from_stream) {
    return Status::BadConfig(fmt::format(
        "target table {} already holds rows; a snapshot would mix them with the source's. "
        "Empty it first, or pass --truncate-target (or set pipeline.truncate_target = true) "
        "to let datatunnel empty it",
        spec.target.ToString()));
  }
  return false;
}

// The source table of the tunnel whose target is `target`, or nullptr.
const TableConfig* TunnelTableOf(const Config& config, const QualifiedName& target) {
  for (const auto& t : config.tables) {
    if (t.target.schema == target.schema && t.target.name == target.name) return &t;
  }
  return nullptr;
}

// Empties `tables` (target tables, with `sources` their source tables) with
// one TRUNCATE and marks everything published so far as superseded by their
// copies. A table another target table references by a foreign key can only
// be emptied with it (PostgreSQL refuses otherwise): when one of those is
// not among them, one line names it and the command that copies them all.
Status EmptyTargets(pg::Connection& src, pg::Connection& tgt, const Config& config,
                    const std::vector<QualifiedName>& tables,
                    const std::vector<std::string>& sources) {
  if (tables.empty()) return Status::OK();
  DT_ASSIGN_OR_RETURN(auto refs, apply::ReferencesFromOutside(tgt, tables));
  if (!refs.empty()) {
    const apply::ForeignReference& f = refs.front();
    const TableConfig* other = TunnelTableOf(config, f.referencing);
    if (!other) {
      return Status::BadConfig(fmt::format(
          "cannot empty target table {} for its snapshot: target table {}, not a table of this "
          "tunnel, references it (foreign key {}); empty it or drop that foreign key on the "
          "target first",
          f.referenced.ToString(), f.referencing.ToString(), f.constraint));
    }
    // Every tunnel table that references them, directly or not: copied together.
    std::vector<QualifiedName> all = tables;
    std::vector<std::string> names = sources;
    for (bool grew = true; grew;) {
      grew = false;
      DT_ASSIGN_OR_RETURN(auto more, apply::ReferencesFromOutside(tgt, all));
      for (const auto& m : more) {
        const TableConfig* t = TunnelTableOf(config, m.referencing);
        if (!t || std::find(names.begin(), names.end(), t->source.ToString()) != names.end()) {
          continue;
        }
        all.push_back(t->target);
        names.push_back(t->source.ToString());
        grew = true;
      }
    }
    std::string args;
    for (const auto& n : names) args += " --table " + n;
    return Status::BadConfig(fmt::format(
        "cannot empty target table {} for its snapshot alone: {} references it (foreign key "
        "{}), and PostgreSQL empties a referenced table only together with the tables "
        "referencing it; re-copy them together: `datatunnel snapshot{} --truncate-target`",
        f.referenced.ToString(), f.referencing.ToString(), f.constraint, args));
  }
  // Everything published so far is superseded by the copies: consumers drop
  // it (and pass a gap in it, which is how a gap is repaired).
  DT_ASSIGN_OR_RETURN(auto upto, capture::NewestRecordedPosition(src, config.tunnel.name));
  return apply::ResyncForSnapshot(tgt, tables, upto);
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
  std::vector<QualifiedName> emptied;  // target tables to empty for their copies
  std::vector<std::string> emptied_sources;
  std::vector<size_t> had_rows, requested;  // indexes into w.specs_
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
      DT_ASSIGN_OR_RETURN(const bool empty, ReadyTarget(*tgt, config, plan, spec, state, lost));
      if (empty) {
        emptied.push_back(spec.target);
        emptied_sources.push_back(spec.source.ToString());
        if (state.has_rows) had_rows.push_back(w.specs_.size());
      }
      requested.push_back(w.specs_.size());
    }
    w.tables_.push_back(t);
    w.specs_.push_back(spec);
    w.baseline_.push_back(marker);
  }
  // Emptied together (foreign keys between them), then requested.
  DT_RETURN_IF_ERROR(EmptyTargets(*src, *tgt, config, emptied, emptied_sources));
  for (size_t i : had_rows) {
    spdlog::info("snapshot of {}: emptied target table {} (--truncate-target)",
                 w.specs_[i].source.ToString(), w.specs_[i].target.ToString());
  }
  for (size_t i : requested) {
    DT_RETURN_IF_ERROR(capture::RequestSnapshot(*src, w.specs_[i], /*restart=*/true));
    spdlog::info("snapshot of {}: requested", w.specs_[i].source.ToString());
  }
  if (!requested.empty()) DT_RETURN_IF_ERROR(src->Exec("NOTIFY datatunnel"));
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
