// datatunnel verify: compare source and target tables; exit 1 on differences.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <thread>

#include "apply/install.h"
#include "capture/install.h"
#include "cli/common.h"
#include "core/clock.h"
#include "verify/verify.h"

namespace datatunnel::cli {
namespace {

struct VerifyOptions {
  int64_t range_rows = 0;
  int max_keys = 20;
  double wait_s = 0;
  bool json = false;
};

int RunVerify(const Globals& g, const VerifyOptions& o) {
  auto setup = LoadSetup(g, "datatunnel verify");
  if (!setup.ok()) return Fail(setup.status());
  auto db = OpenDatabases(*setup);
  if (!db.ok()) return Fail(db.status());
  if (Status st =
          ResolveTables(&setup->config, db->source.get(), db->target.get(), Selection::kCaptured);
      !st.ok()) {
    return Fail(st);
  }
  const Config& config = setup->config;
  pg::Connection &source = *db->source, &target = *db->target;
  verify::Options vo;
  vo.range_rows = o.range_rows;
  vo.max_keys = o.max_keys;
  // With --wait, keep comparing until equal or the time is up: for checking
  // a live tunnel has caught up.
  const int64_t deadline = MonotonicMicros() + static_cast<int64_t>(o.wait_s * 1e6);
  std::vector<verify::TableReport> reports;
  for (;;) {
    reports.clear();
    // Described on every round: a live tunnel may be adding columns.
    auto sspecs = capture::DescribeSourceTables(source, config.tables, nullptr);
    if (!sspecs.ok()) return Fail(sspecs.status());
    auto tspecs = apply::DescribeTargetTables(target, config.tables);
    if (!tspecs.ok()) return Fail(tspecs.status());
    bool equal = true;
    for (size_t i = 0; i < sspecs->size(); ++i) {
      auto rep = verify::VerifyTable(source, target, (*sspecs)[i], (*tspecs)[i], vo);
      if (!rep.ok())
        return Fail(rep.status().WithContext("verify " + (*sspecs)[i].source.ToString()));
      auto gaps = apply::LoadGaps(target, (*tspecs)[i].target);
      if (!gaps.ok()) return Fail(gaps.status());
      for (const auto& gap : *gaps) {
        rep->gaps.push_back(gap.Describe(rep->source, rep->target));
      }
      equal = equal && rep->equal();
      reports.push_back(std::move(*rep));
    }
    if (equal || MonotonicMicros() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  bool equal = true;
  int64_t total_rows = 0, total_diffs = 0;
  for (const auto& r : reports) {
    equal = equal && r.equal();
    total_rows += r.source_rows;
    total_diffs += r.differing_keys + static_cast<int64_t>(r.schema_problems.size()) +
                   static_cast<int64_t>(r.gaps.size());
  }
  if (o.json) {
    fmt::print("{}", verify::ReportsJson(reports));
  } else {
    for (const auto& r : reports) {
      if (r.equal()) {
        fmt::print("{} -> {}: {} rows, identical ({} ranges compared)\n", r.source, r.target,
                   r.source_rows, r.ranges);
        for (const auto& n : r.notes) fmt::print("  note: {}\n", n);
        continue;
      }
      fmt::print("{} -> {}: {} rows on the source, {} on the target: {} difference(s)\n", r.source,
                 r.target, r.source_rows, r.target_rows,
                 r.differing_keys + static_cast<int64_t>(r.schema_problems.size()) +
                     static_cast<int64_t>(r.gaps.size()));
      for (const auto& gap : r.gaps) fmt::print("  gap: {}\n", gap);
      for (const auto& p : r.schema_problems) fmt::print("  schema: {}\n", p);
      for (const auto& n : r.notes) fmt::print("  note: {}\n", n);
      for (const auto& d : r.differing_ranges) {
        fmt::print("  key range {}: {} rows on the source, {} on the target\n", d.range,
                   d.source_rows, d.target_rows);
      }
      for (const auto& k : r.keys) fmt::print("    key {}: {}\n", k.key, k.kind);
      if (r.differing_keys > static_cast<int64_t>(r.keys.size())) {
        fmt::print("    ... and {} more\n", r.differing_keys - static_cast<int64_t>(r.keys.size()));
      }
    }
    fmt::print("verified {} rows in {} table(s): {}\n", total_rows, reports.size(),
               equal ? "no differences" : fmt::format("{} difference(s)", total_diffs));
  }
  return equal ? kExitOk : kExitDifferences;
}

}  // namespace

void AddVerifyCommand(CLI::App& app, Globals* g) {
  auto* cmd = app.add_subcommand(
      "verify",
      "Compare each table on source and target (counts and checksums per key range, computed in "
      "the databases); list differing ranges and keys; exit 1 on any difference");
  auto o = std::make_shared<VerifyOptions>();
  cmd->add_option("--range-rows", o->range_rows,
                  "Rows per compared key range (default: automatic)");
  cmd->add_option("--max-keys", o->max_keys, "Differing keys listed per table");
  cmd->add_option("--wait", o->wait_s,
                  "Keep comparing for up to this many seconds until there is no difference");
  cmd->add_flag("--json", o->json, "Print the report as JSON");
  cmd->callback([g, o] { g_exit_code = RunVerify(*g, *o); });
}

}  // namespace datatunnel::cli
