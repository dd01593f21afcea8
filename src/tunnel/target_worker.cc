#include "tunnel/target_worker.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "tunnel/kafka_source.h"
#include "tunnel/memory_source.h"

namespace datatunnel::tunnel {

TargetWorker::TargetWorker(TargetOptions options, metrics::Metrics* metrics, const StopSource* stop,
                           std::unique_ptr<ChangeSource> source)
    : stop_(stop), core_(std::move(options), metrics, stop), source_(std::move(source)) {}

Status TargetWorker::Run() {
  Status connected = core_.Connect();
  if (connected.IsCancelled()) return Status::OK();
  DT_RETURN_IF_ERROR(connected);
  Status opened = source_->Open(&core_);
  if (opened.IsCancelled()) return Status::OK();
  DT_RETURN_IF_ERROR(opened);
  Status result = Loop();
  source_->Close();
  return result;
}

Status TargetWorker::Loop() {
  std::vector<apply::Item> items;
  while (!stop_->stop_requested()) {
    items.clear();
    bool ended = false;
    DT_RETURN_IF_ERROR(source_->Next(&items, &ended));
    if (ended) break;
    if (source_->piece() || core_.streaming()) {
      bool done = false;
      DT_RETURN_IF_ERROR(Stream(items, &done));
      if (done) break;
      continue;
    }
    Status st = core_.ApplyBatch(items, [this] { source_->KeepAlive(); });
    if (st.IsCancelled()) break;
    DT_RETURN_IF_ERROR(st);
    DT_RETURN_IF_ERROR(source_->Committed(items));
  }
  return Status::OK();
}

Status TargetWorker::Stream(std::vector<apply::Item>& items, bool* stop) {
  // A piece of a tick too large to hold, or a batch while one streams: the
  // batch that ends it (with its end-of-tick item) commits the whole.
  bool ends_tick = false;
  for (const auto& it : items) ends_tick = ends_tick || it.kind == apply::Item::Kind::kTickEnd;
  if (!ends_tick && items.empty()) return Status::OK();
  Status st = ends_tick && !source_->piece() ? core_.FinishStream(items) : core_.StreamPiece(items);
  if (st.IsCancelled()) {
    *stop = true;
    return Status::OK();
  }
  if (st.ok()) {
    stream_backoff_.Reset();
    return ends_tick && !source_->piece() ? source_->Committed(items) : Status::OK();
  }
  if (!st.IsRetryable()) return st;
  // Rolled back: nothing of the tick is on the target. Read it again from
  // the positions the target stored, after a pause.
  for (;;) {
    const int delay = stream_backoff_.NextDelayMs();
    spdlog::warn("consumer: {} (a streamed tick was rolled back; reading it again in {} ms)",
                 st.message(), delay);
    for (int waited = 0; waited < delay; waited += 200) {
      if (stop_->SleepFor(std::min(200, delay - waited))) {
        *stop = true;
        return Status::OK();
      }
      source_->KeepAlive();
    }
    st = source_->Rewind();
    if (st.ok()) return Status::OK();
    if (!st.IsRetryable()) return st;
  }
}

KafkaTargetWorker::KafkaTargetWorker(TargetOptions options, metrics::Metrics* metrics,
                                     const StopSource* stop)
    : TargetWorker(options, metrics, stop, std::make_unique<KafkaSource>(options, metrics, stop)) {}

MemoryTargetWorker::MemoryTargetWorker(TargetOptions options, MemoryChannel* channel,
                                       metrics::Metrics* metrics, const StopSource* stop)
    : TargetWorker(options, metrics, stop,
                   std::make_unique<MemorySource>(
                       channel,
                       static_cast<size_t>(options.pipeline.transactional()
                                               ? std::min(options.pipeline.batch_max_changes,
                                                          options.pipeline.tick_stream_changes)
                                               : options.pipeline.batch_max_changes),
                       stop, options.pipeline.transactional(),
                       static_cast<size_t>(options.pipeline.tick_stream_changes))) {}

}  // namespace datatunnel::tunnel
