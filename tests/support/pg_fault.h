// StatementFault: a pg::FaultHook for tests. It injects one fault into the
// first statement(s) of a connection role whose text matches, then lets
// everything through again. ScopedFaultHook installs a hook for a scope.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

#include "pg/connection.h"

namespace datatunnel::testing {

class StatementFault : public pg::FaultHook {
 public:
  // Injects `fault` into the first `times` statements on connections of
  // `role` ("source", "target") whose text satisfies `match`. `on_fire`
  // (optional) runs on the connection's thread each time it fires, before the
  // fault takes effect.
  StatementFault(std::string role, std::function<bool(std::string_view)> match, pg::Fault fault,
                 int times = 1, std::function<void()> on_fire = nullptr)
      : role_(std::move(role)),
        match_(std::move(match)),
        fault_(fault),
        left_(times),
        on_fire_(std::move(on_fire)) {}

  pg::Fault OnStatement(const pg::StatementInfo& s) override {
    if (s.role != role_ || !match_(s.sql)) return pg::Fault::kNone;
    int left = left_.load();
    do {
      if (left <= 0) return pg::Fault::kNone;
    } while (!left_.compare_exchange_weak(left, left - 1));
    ++fired_;
    if (on_fire_) on_fire_();
    return fault_;
  }

  int fired() const { return fired_.load(); }

 private:
  const std::string role_;
  const std::function<bool(std::string_view)> match_;
  const pg::Fault fault_;
  std::atomic<int> left_;
  std::atomic<int> fired_{0};
  const std::function<void()> on_fire_;
};

// Installs `hook` process-wide for its lifetime.
class ScopedFaultHook {
 public:
  explicit ScopedFaultHook(pg::FaultHook* hook) { pg::SetFaultHook(hook); }
  ~ScopedFaultHook() { pg::SetFaultHook(nullptr); }
  ScopedFaultHook(const ScopedFaultHook&) = delete;
  ScopedFaultHook& operator=(const ScopedFaultHook&) = delete;
};

}  // namespace datatunnel::testing
