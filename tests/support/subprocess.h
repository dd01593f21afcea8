// Subprocess: runs a program (the datatunnel binary) the way a user would,
// with output captured to files, so tests can kill -9 it, restart it and read
// what it printed.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace datatunnel::testing {

class Subprocess {
 public:
  // Starts `argv` with extra environment variables; stdin is a pipe the test
  // may write to (see Write), stdout/stderr go to files. The process gets
  // SIGKILL if the thread that started it ends (PR_SET_PDEATHSIG), so a test
  // binary that dies mid-test leaves none behind: start processes from the
  // test's main thread.
  Subprocess(std::vector<std::string> argv, std::map<std::string, std::string> env = {});
  ~Subprocess();  // kills it (SIGKILL) if still running
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  bool Running();
  void Signal(int sig);
  // Waits up to `seconds` (scaled) for exit; returns the exit code (128+signal
  // when killed), or nullopt on timeout.
  std::optional<int> Wait(double seconds);
  // Sends SIGTERM and waits; SIGKILL if it does not stop in time.
  std::optional<int> Stop(double seconds = 10);
  // Writes to its stdin; false when it no longer reads it (it exited).
  bool Write(const std::string& text);
  std::string Stdout() const;
  std::string Stderr() const;

 private:
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  std::optional<int> status_;
  std::string out_path_, err_path_;
};

// Runs to completion (up to `seconds`); returns exit code, stdout, stderr.
struct RunResult {
  int code = -1;
  std::string out;
  std::string err;
};
RunResult RunCommand(std::vector<std::string> argv, std::map<std::string, std::string> env = {},
                     double seconds = 60);

}  // namespace datatunnel::testing
