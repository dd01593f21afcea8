#include "cli/json_log.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <ctime>

#include "core/json.h"

namespace datatunnel::cli {
namespace {

class JsonLogFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    using std::chrono::duration_cast;
    const auto since_epoch = msg.time.time_since_epoch();
    const auto seconds = duration_cast<std::chrono::seconds>(since_epoch);
    const auto micros = duration_cast<std::chrono::microseconds>(since_epoch - seconds).count();
    const std::time_t t = seconds.count();
    std::tm tm{};
    gmtime_r(&t, &tm);
    ts_.clear();
    fmt::format_to(std::back_inserter(ts_), "{:%Y-%m-%dT%H:%M:%S}.{:06}Z", tm, micros);
    const spdlog::string_view_t level = spdlog::level::to_string_view(msg.level);

    buf_.Clear();
    JsonWriter w(buf_);
    w.StartObject();
    w.Key("ts");
    w.String(ts_);
    w.Key("level");
    JsonString(w, std::string_view(level.data(), level.size()));
    w.Key("pid");
    w.Int(static_cast<int>(::getpid()));
    w.Key("msg");
    JsonString(w, std::string_view(msg.payload.data(), msg.payload.size()));
    w.EndObject();
    dest.append(buf_.GetString(), buf_.GetString() + buf_.GetSize());
    dest.push_back('\n');
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonLogFormatter>();
  }

 private:
  std::string ts_;
  rapidjson::StringBuffer buf_;
};

}  // namespace

std::unique_ptr<spdlog::formatter> NewJsonLogFormatter() {
  return std::make_unique<JsonLogFormatter>();
}

}  // namespace datatunnel::cli
