// TargetWorker: the target loop, the mirror of SourceWorker. It connects to
// the target (TargetCore), then takes batches from its ChangeSource (Kafka,
// or the in-memory hand-over), applies each (TargetCore::ApplyBatch: plan,
// write in one transaction, retry until the target accepts it) and confirms
// it to the source once committed. It holds no policy of its own: what a
// batch does is apply/'s (apply/plan.h), how input arrives the source's.
//
// Thread-safety: Run() on one thread.
#pragma once

#include <memory>
#include <vector>

#include "core/clock.h"
#include "core/stop.h"
#include "metrics/metrics.h"
#include "tunnel/change_source.h"
#include "tunnel/memory_channel.h"
#include "tunnel/target_core.h"

namespace datatunnel::tunnel {

class TargetWorker {
 public:
  TargetWorker(TargetOptions options, metrics::Metrics* metrics, const StopSource* stop,
               std::unique_ptr<ChangeSource> source);
  virtual ~TargetWorker() = default;
  // Runs until a stop is requested or the input ends (OK), or a failure that
  // cannot heal (a bad configuration, a gap, a message it must not skip).
  Status Run();

 private:
  Status Loop();
  // A batch of a streamed tick (TargetCore::StreamPiece); after a rollback,
  // rewinds the source. Sets *stop when a stop was requested.
  Status Stream(std::vector<apply::Item>& items, bool* stop);
  const StopSource* stop_;
  Backoff stream_backoff_{500, 10000};
  TargetCore core_;
  std::unique_ptr<ChangeSource> source_;
};

// The target worker reading the tables' topics (KafkaSource).
class KafkaTargetWorker : public TargetWorker {
 public:
  KafkaTargetWorker(TargetOptions options, metrics::Metrics* metrics, const StopSource* stop);
};

// The target worker reading the in-memory hand-over (MemorySource).
class MemoryTargetWorker : public TargetWorker {
 public:
  MemoryTargetWorker(TargetOptions options, MemoryChannel* channel, metrics::Metrics* metrics,
                     const StopSource* stop);
};

}  // namespace datatunnel::tunnel
