// `--log-format json` (cli/json_log.h): every log line is one valid JSON
// object, whatever the message holds, with the fields docs/operations.md
// names.
#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "cli/json_log.h"

namespace datatunnel::cli {
namespace {

std::string Format(spdlog::formatter& f, std::chrono::system_clock::time_point time,
                   spdlog::level::level_enum level, std::string_view message) {
  spdlog::details::log_msg msg(time, spdlog::source_loc{}, "datatunnel", level,
                               spdlog::string_view_t(message.data(), message.size()));
  spdlog::memory_buf_t out;
  f.format(msg, out);
  return std::string(out.data(), out.size());
}

TEST(JsonLog, WritesTheDocumentedFields) {
  auto f = NewJsonLogFormatter();
  // 2026-11-24T13:37:28.301171Z
  const auto time = std::chrono::system_clock::time_point(
      std::chrono::microseconds(int64_t{1795527448} * 1'000'000 + 301171));
  EXPECT_EQ(Format(*f, time, spdlog::level::err, "it \"failed\""),
            fmt::format(R"({{"ts":"2026-11-24T13:37:28.301171Z","level":"error","pid":{},)"
                        R"("msg":"it \"failed\""}})"
                        "\n",
                        getpid()));
  // The first microsecond of a second keeps its leading zeros.
  const auto early = std::chrono::system_clock::time_point(
      std::chrono::microseconds(int64_t{1795527448} * 1'000'000 + 7));
  EXPECT_TRUE(
      Format(*f, early, spdlog::level::info, "x").find(R"("ts":"2026-11-24T13:37:28.000007Z")") !=
      std::string::npos);
  EXPECT_TRUE(Format(*f->clone(), time, spdlog::level::warn, "y").find(R"("level":"warning")") !=
              std::string::npos);
}

// Through a logger, as SetupLogging uses it: one line per message, each a
// JSON object whose "msg" is the message unchanged.
TEST(JsonLog, AnyMessageIsOneValidLine) {
  const std::vector<std::string> messages = {
      "plain",
      R"(table "we\ird"."Tab ""q""" is not in the configuration)",
      "two\nlines,\r\ta tab",
      std::string("a NUL \0 and \x01\x1f\x7f", 15),
      "UTF-8: K\xc3\xa4se \xe2\x9c\x93",
      R"(\u0041 is not an escape here; nor is \n)",
      "",
  };
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(out);
  spdlog::logger logger("datatunnel", sink);
  logger.set_formatter(NewJsonLogFormatter());
  for (const auto& m : messages) logger.info("{}", m);

  std::istringstream lines(out.str());
  std::string line;
  size_t n = 0;
  static const std::regex kTs(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)");
  while (std::getline(lines, line)) {
    ASSERT_LT(n, messages.size()) << out.str();
    rapidjson::Document d;
    d.Parse(line.c_str(), line.size());
    ASSERT_FALSE(d.HasParseError()) << line;
    ASSERT_TRUE(d.IsObject()) << line;
    EXPECT_EQ(d.MemberCount(), 4u) << line;
    EXPECT_TRUE(std::regex_match(std::string(d["ts"].GetString()), kTs)) << line;
    EXPECT_EQ(std::string(d["level"].GetString()), "info") << line;
    EXPECT_EQ(d["pid"].GetInt(), getpid()) << line;
    EXPECT_EQ(std::string(d["msg"].GetString(), d["msg"].GetStringLength()), messages[n]) << line;
    ++n;
  }
  EXPECT_EQ(n, messages.size()) << out.str();
}

}  // namespace
}  // namespace datatunnel::cli
