#include "tunnel/target_worker.h"

#include <utility>
#include <vector>

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
    Status st = core_.ApplyBatch(items, [this] { source_->KeepAlive(); });
    if (st.IsCancelled()) break;
    DT_RETURN_IF_ERROR(st);
    DT_RETURN_IF_ERROR(source_->Committed(items));
  }
  return Status::OK();
}

KafkaTargetWorker::KafkaTargetWorker(TargetOptions options, metrics::Metrics* metrics,
                                     const StopSource* stop)
    : TargetWorker(options, metrics, stop, std::make_unique<KafkaSource>(options, metrics, stop)) {}

MemoryTargetWorker::MemoryTargetWorker(TargetOptions options, MemoryChannel* channel,
                                       metrics::Metrics* metrics, const StopSource* stop)
    : TargetWorker(options, metrics, stop,
                   std::make_unique<MemorySource>(
                       channel, static_cast<size_t>(options.pipeline.batch_max_changes), stop,
                       options.pipeline.transactional())) {}

}  // namespace datatunnel::tunnel
