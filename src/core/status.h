// Status and Result<T>: how every stage reports failure across a boundary.
//
// The code says what the caller should do next, not what went wrong:
//   kRetryable  transient (connection lost, broker unreachable, serialization
//               failure): back off and try the same work again.
//   kInDoubt    a COMMIT was sent but its outcome is unknown; safe to retry
//               only because every write we make is idempotent (positions are
//               stored with the data they describe).
//   kFatal      cannot heal by retrying (permission denied, table dropped):
//               stop with the message.
//   kBadConfig  the user's configuration, arguments or environment are wrong.
//   kBadData    one input (a message, a value) cannot be processed; the
//               pipeline may route it aside and go on.
//   kCancelled  a stop was requested.
//
// Messages are written for an operator: what failed, where, how to fix it.
// Thread-safety: values; safe to copy and move between threads.
#pragma once

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace datatunnel {

enum class StatusCode { kOk, kRetryable, kInDoubt, kFatal, kBadConfig, kBadData, kCancelled };

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status OK() { return Status(); }
  static Status Retryable(std::string msg) {
    return Status(StatusCode::kRetryable, std::move(msg));
  }
  static Status InDoubt(std::string msg) { return Status(StatusCode::kInDoubt, std::move(msg)); }
  static Status Fatal(std::string msg) { return Status(StatusCode::kFatal, std::move(msg)); }
  static Status BadConfig(std::string msg) {
    return Status(StatusCode::kBadConfig, std::move(msg));
  }
  static Status BadData(std::string msg) { return Status(StatusCode::kBadData, std::move(msg)); }
  static Status Cancelled(std::string msg = "stop requested") {
    return Status(StatusCode::kCancelled, std::move(msg));
  }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  bool IsRetryable() const {
    return code_ == StatusCode::kRetryable || code_ == StatusCode::kInDoubt;
  }
  bool IsCancelled() const { return code_ == StatusCode::kCancelled; }

  // Returns a copy whose message reads "<context>: <message>".
  Status WithContext(std::string_view context) const;
  // "ok", or the message (the code is implied by the message's wording).
  std::string ToString() const { return ok() ? "ok" : message_; }

 private:
  Status(StatusCode code, std::string msg) : code_(code), message_(std::move(msg)) {}
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!std::get<Status>(v_).ok());
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  // REQUIRES: ok()
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace datatunnel

#define DT_CONCAT_INNER(a, b) a##b
#define DT_CONCAT(a, b) DT_CONCAT_INNER(a, b)

#define DT_RETURN_IF_ERROR(expr)              \
  do {                                        \
    ::datatunnel::Status dt_status_ = (expr); \
    if (!dt_status_.ok()) return dt_status_;  \
  } while (0)

#define DT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

#define DT_ASSIGN_OR_RETURN(lhs, expr) \
  DT_ASSIGN_OR_RETURN_IMPL(DT_CONCAT(dt_result_, __LINE__), lhs, expr)
