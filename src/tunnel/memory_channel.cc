#include "tunnel/memory_channel.h"

#include <chrono>

#include "core/clock.h"

namespace datatunnel::tunnel {

template <typename C>
bool MemoryChannel::Push(C&& c, uint64_t token, const SourceSpecs& specs) {
  std::lock_guard<std::mutex> lock(mu_);
  // The target asked for a replay: the source worker's session ends at its
  // next health check and publishes this again.
  if (replay_) return true;
  const size_t size = c.row.ByteSize() + sizeof(Change);
  // Always accept one change into an empty queue, however large.
  if (!queue_.empty() && (queue_.size() >= max_changes_ || bytes_ + size > max_bytes_)) {
    return false;
  }
  queue_.push_back(Entry{std::forward<C>(c), token, specs});
  bytes_ += size;
  changes_cv_.notify_one();
  return true;
}

bool MemoryChannel::TryPush(const Change& c, uint64_t token, const SourceSpecs& specs) {
  return Push(c, token, specs);
}

bool MemoryChannel::TryPush(Change&& c, uint64_t token, const SourceSpecs& specs) {
  return Push(std::move(c), token, specs);
}

void MemoryChannel::Pop(size_t max, int timeout_ms, std::vector<Change>* out,
                        std::vector<uint64_t>* tokens, std::vector<SourceSpecs>* specs,
                        size_t max_bytes) {
  std::unique_lock<std::mutex> lock(mu_);
  changes_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                       [&] { return (!queue_.empty() && !replay_) || closed_; });
  if (replay_) return;  // what is queued belongs to the session that ends
  size_t n = 0, taken = 0;
  while (!queue_.empty() && n < max && (n == 0 || taken < max_bytes)) {
    Entry& e = queue_.front();
    const size_t size = e.change.row.ByteSize() + sizeof(Change);
    bytes_ -= size;
    taken += size;
    out->push_back(std::move(e.change));
    tokens->push_back(e.token);
    specs->push_back(std::move(e.specs));
    queue_.pop_front();
    ++n;
  }
}

void MemoryChannel::Ack(const std::vector<uint64_t>& tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  acks_.insert(acks_.end(), tokens.begin(), tokens.end());
  acks_cv_.notify_one();
}

void MemoryChannel::TakeAcks(int timeout_ms, std::vector<uint64_t>* out) {
  std::unique_lock<std::mutex> lock(mu_);
  if (timeout_ms > 0) {
    acks_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                      [&] { return !acks_.empty() || closed_; });
  }
  out->insert(out->end(), acks_.begin(), acks_.end());
  acks_.clear();
}

void MemoryChannel::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  queue_.clear();
  bytes_ = 0;
  acks_.clear();
  replay_ = false;
}

void MemoryChannel::RequestReplay() {
  std::lock_guard<std::mutex> lock(mu_);
  replay_ = true;
  queue_.clear();
  bytes_ = 0;
  acks_cv_.notify_all();
}

bool MemoryChannel::replay_requested() const {
  std::lock_guard<std::mutex> lock(mu_);
  return replay_;
}

void MemoryChannel::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  changes_cv_.notify_all();
  acks_cv_.notify_all();
}

bool MemoryChannel::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

size_t MemoryChannel::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queue_.size();
}

Status MemorySink::Health() const {
  if (channel_->replay_requested()) {
    return Status::Retryable(
        "the target worker rolled back a streamed tick and reads it again; publishing again "
        "from recorded progress");
  }
  return Status::OK();
}

Status MemorySink::Recover() {
  if (channel_->replay_requested()) {
    channel_->Clear();
    outstanding_ = 0;
  }
  return Status::OK();
}

template <typename C>
Status MemorySink::Hand(C&& change, uint64_t token) {
  if (!channel_->TryPush(std::forward<C>(change), token, specs_)) {
    return Status::Retryable("in-memory hand-over full");
  }
  ++outstanding_;
  return Status::OK();
}

Status MemorySink::Send(const Change& change, int32_t, uint64_t token, int32_t* sent_to) {
  *sent_to = -1;  // one stream, handed over in order: no chain to check
  return Hand(change, token);
}

Status MemorySink::SendOwned(Change&& change, int32_t, uint64_t token, int32_t* sent_to) {
  *sent_to = -1;
  return Hand(std::move(change), token);
}

Status MemorySink::SendTickEnd(const Position& end, uint64_t token) {
  Change c;
  c.op = Op::kMarker;
  c.marker = Marker::kTickEnd;
  c.pos = end;
  return Hand(std::move(c), token);
}

void MemorySink::Poll(int timeout_ms) {
  acks_.clear();
  channel_->TakeAcks(timeout_ms, &acks_);
  for (uint64_t t : acks_) {
    --outstanding_;
    on_delivery_(t, Status::OK());
  }
}

int MemorySink::Flush(int timeout_ms) {
  const int64_t deadline = MonotonicMicros() + int64_t{timeout_ms} * 1000;
  while (outstanding_ > 0 && MonotonicMicros() < deadline && !channel_->closed()) Poll(20);
  return static_cast<int>(outstanding_);
}

}  // namespace datatunnel::tunnel
