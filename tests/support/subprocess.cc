#include "support/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "support/test_util.h"

extern char** environ;

namespace datatunnel::testing {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

Subprocess::Subprocess(std::vector<std::string> argv, std::map<std::string, std::string> env) {
  // A child that exited closes its stdin: writing to it then must fail with
  // EPIPE and be reported, not kill the test with SIGPIPE (CI lost a chaos
  // run's output that way).
  signal(SIGPIPE, SIG_IGN);
  char tmpl[] = "/tmp/datatunnel-proc-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  out_path_ = dir + "/stdout";
  err_path_ = dir + "/stderr";
  int in_pipe[2];
  if (pipe(in_pipe) != 0) std::abort();
  const pid_t parent = getpid();
  pid_ = fork();
  if (pid_ == 0) {
    setpgid(0, 0);
    // Dies with the test binary: one killed mid-test (a timeout, kill -9)
    // leaves no tunnel process running. Tests start processes from their
    // main thread, whose exit is what triggers this.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(in_pipe[0], 0);
    close(in_pipe[1]);
    int out = open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(err, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(in_pipe[0]);
  stdin_fd_ = in_pipe[1];
}

Subprocess::~Subprocess() {
  if (Running()) {
    kill(pid_, SIGKILL);
    Wait(10);
  }
  if (stdin_fd_ >= 0) close(stdin_fd_);
}

bool Subprocess::Running() {
  if (status_) return false;
  int st = 0;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  return true;
}

void Subprocess::Signal(int sig) {
  if (Running()) kill(pid_, sig);
}

std::optional<int> Subprocess::Wait(double seconds) {
  WaitUntil([&] { return !Running(); }, seconds);
  return status_;
}

std::optional<int> Subprocess::Stop(double seconds) {
  Signal(SIGTERM);
  auto rc = Wait(seconds);
  if (!rc) {
    Signal(SIGKILL);
    Wait(10);
  }
  return rc;
}

bool Subprocess::Write(const std::string& text) {
  return write(stdin_fd_, text.data(), text.size()) == static_cast<ssize_t>(text.size());
}

std::string Subprocess::Stdout() const { return ReadFile(out_path_); }
std::string Subprocess::Stderr() const { return ReadFile(err_path_); }

RunResult RunCommand(std::vector<std::string> argv, std::map<std::string, std::string> env,
                     double seconds) {
  Subprocess p(std::move(argv), std::move(env));
  RunResult r;
  auto rc = p.Wait(seconds);
  r.code = rc ? *rc : -1;
  r.out = p.Stdout();
  r.err = p.Stderr();
  return r;
}

}  // namespace datatunnel::testing
