// Helpers shared by the tests: deadlines instead of sleeps, unique names.
#pragma once

#include <chrono>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace datatunnel::testing {

// Slower builds (sanitizers) scale every deadline: DATATUNNEL_TIMEOUT_MULTIPLIER.
inline double TimeoutMultiplier() {
  const char* m = std::getenv("DATATUNNEL_TIMEOUT_MULTIPLIER");
  double v = m ? std::atof(m) : 1.0;
  return v > 0 ? v : 1.0;
}

// Polls `condition` every 20 ms until it holds (true) or `seconds` (scaled)
// pass (false). Never a fixed sleep: it returns as soon as the condition holds.
inline bool WaitUntil(const std::function<bool()>& condition, double seconds) {
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000 * TimeoutMultiplier()));
  while (true) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// A name unique within this process run, for tables and databases.
std::string UniqueName(const std::string& prefix);

// Whether `haystack` contains `needle` (for output checks).
inline bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The lines of `text`, without their newlines.
inline std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// The error lines of a tunnel process's stderr (from "datatunnel: error: "
// to the end of its line).
inline std::vector<std::string> ErrorLines(const std::string& err) {
  std::vector<std::string> out;
  for (const auto& l : Lines(err)) {
    const size_t at = l.find("datatunnel: error: ");
    if (at != std::string::npos) out.push_back(l.substr(at));
  }
  return out;
}

}  // namespace datatunnel::testing
