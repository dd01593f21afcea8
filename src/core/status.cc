#include "core/status.h"

namespace datatunnel {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kRetryable:
      return "retryable";
    case StatusCode::kInDoubt:
      return "in-doubt";
    case StatusCode::kFatal:
      return "fatal";
    case StatusCode::kBadConfig:
      return "bad-config";
    case StatusCode::kBadData:
      return "bad-data";
    case StatusCode::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string msg;
  msg.reserve(context.size() + 2 + message_.size());
  msg.append(context).append(": ").append(message_);
  return Status(code_, std::move(msg));
}

}  // namespace datatunnel
