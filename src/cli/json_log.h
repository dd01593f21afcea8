// `--log-format json`: each log line one JSON object,
// {"ts":"2026-11-24T13:37:28.301171Z","level":"info","pid":3307,"msg":"…"}
// (docs/operations.md, "Logs"), written with rapidjson (core/json.h), so any
// message (quotes, backslashes, newlines, control characters) stays valid JSON.
#pragma once

#include <spdlog/formatter.h>

#include <memory>

namespace datatunnel::cli {

// A formatter for spdlog that writes those lines. `ts` is UTC with
// microseconds, `level` spdlog's name of the level ("info", "warning", ...).
// Thread-safety: as every spdlog formatter, used by one sink under its lock.
std::unique_ptr<spdlog::formatter> NewJsonLogFormatter();

}  // namespace datatunnel::cli
