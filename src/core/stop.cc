#include "core/stop.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace datatunnel {

StopSource::StopSource() : fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

StopSource::~StopSource() {
  if (fd_ >= 0) close(fd_);
}

void StopSource::RequestStop() {
  stop_.store(true, std::memory_order_release);
  uint64_t one = 1;
  if (fd_ >= 0) {
    [[maybe_unused]] ssize_t n = write(fd_, &one, sizeof one);
  }
}

bool StopSource::SleepFor(int ms) const {
  if (stop_requested()) return true;
  pollfd p{fd_, POLLIN, 0};
  poll(&p, 1, ms);
  return stop_requested();
}

}  // namespace datatunnel
