#include "broker/kafka.h"

#include <fmt/format.h>
#include <librdkafka/rdkafka.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string_view>
#include <thread>

#include "core/clock.h"

namespace datatunnel::broker {
namespace {

using Props = std::vector<std::pair<std::string, std::string>>;

// Logs `msg` at most once per 10 s per key, so an outage gives a line, not a flood.
void LogThrottled(spdlog::level::level_enum level, const std::string& key, const std::string& msg) {
  static std::mutex mu;
  static std::map<std::string, int64_t> last;
  const int64_t now = MonotonicMicros();
  {
    std::lock_guard<std::mutex> lock(mu);
    auto [it, inserted] = last.try_emplace(key, now);
    if (!inserted) {
      if (now - it->second < 10'000'000) return;
      it->second = now;
    }
  }
  spdlog::log(level, "{}", msg);
}

void LogCb(const rd_kafka_t* rk, int level, const char* fac, const char* buf) {
  (void)rk;
  auto lvl = level <= 3   ? spdlog::level::err
             : level <= 4 ? spdlog::level::warn
             : level <= 6 ? spdlog::level::debug
                          : spdlog::level::trace;
  // A failed offset commit (typically during a rebalance) is harmless: the
  // committed offsets are only a hint for tools, positions live in the
  // target. librdkafka logs each as a long warning; keep them for debugging.
  if (std::string_view(fac) == "COMMITFAIL") lvl = std::max(lvl, spdlog::level::debug);
  if (lvl >= spdlog::level::debug) {
    spdlog::log(lvl, "kafka {}: {}", fac, buf);
  } else {
    LogThrottled(lvl, std::string(fac), fmt::format("kafka {}: {}", fac, buf));
  }
}

void ErrorCb(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
  (void)opaque;
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char buf[512];
    rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof buf);
    spdlog::error("kafka: fatal client error {}: {}", rd_kafka_err2name(orig), buf);
    return;
  }
  if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
    LogThrottled(spdlog::level::warn, "all-down",
                 fmt::format("kafka: no broker reachable ({}); waiting, nothing is lost", reason));
    return;
  }
  LogThrottled(spdlog::level::warn, rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)),
               fmt::format("kafka: {}: {}",
                           rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)), reason));
}

// `text` with every token equal to `value` (delimited by quotes, spaces or
// the ends) replaced: librdkafka's messages quote the bad value, and a
// property may be a password.
std::string WithoutValue(std::string text, const std::string& value) {
  if (value.empty()) return text;
  const auto delim = [](char c) { return c == '"' || c == ' ' || c == '\''; };
  for (size_t at = text.find(value); at != std::string::npos; at = text.find(value, at)) {
    const size_t end = at + value.size();
    if ((at == 0 || delim(text[at - 1])) && (end == text.size() || delim(text[end]))) {
      text.replace(at, value.size(), "<value not shown>");
      at += 17;
    } else {
      at = end;
    }
  }
  return text;
}

// Sets `props` on `conf`. A refused one names the section it came from:
// `specific` ([kafka.<specific_name>]) wins over `common` ([kafka.properties]).
Status ApplyProps(rd_kafka_conf_t* conf, const Props& props,
                  const std::map<std::string, std::string>& common,
                  const std::map<std::string, std::string>* specific = nullptr,
                  std::string_view specific_name = "") {
  char err[512];
  for (const auto& [k, v] : props) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      std::string where = "datatunnel's own defaults (please report this)";
      if (specific != nullptr && specific->count(k)) {
        where = fmt::format("[kafka.{}]", specific_name);
      } else if (common.count(k)) {
        where = "[kafka.properties]";
      }
      return Status::BadConfig(
          fmt::format("kafka property \"{}\": {}; fix it in {}", k, WithoutValue(err, v), where));
    }
  }
  return Status::OK();
}

Props Merge(Props defaults, const std::map<std::string, std::string>& a,
            const std::map<std::string, std::string>& b) {
  for (const auto* m : {&a, &b}) {
    for (const auto& [k, v] : *m) defaults.emplace_back(k, v);
  }
  return defaults;
}

// The value `props` ends up giving `key` (the last one wins), or "".
std::string Lookup(const Props& props, std::string_view key) {
  std::string value;
  for (const auto& [k, v] : props) {
    if (k == key) value = v;
  }
  return value;
}

// librdkafka's text for a failure, without what only adds noise to our one
// line: its timing suffix ("(after 3ms in state AUTH_REQ)") and its generic
// hint about CA certificates (ours names the setting).
std::string CleanReason(std::string reason) {
  for (const char* noise : {": broker certificate could not be verified", " (after "}) {
    const size_t at = reason.find(noise);
    if (at != std::string::npos) reason.erase(at);
  }
  return reason;
}

}  // namespace

// Remembers the first failure to authenticate or to set up TLS that
// librdkafka reports through the error callback, as a kBadConfig Status
// written for the operator.
// Thread-safety: OnError runs on whichever thread serves the callbacks;
// failure() may be called from any thread.
class SecurityWatch {
 public:
  SecurityWatch(std::string brokers, std::string mechanism)
      : brokers_(std::move(brokers)), mechanism_(std::move(mechanism)) {}

  // Records `err` if it is a security failure; returns whether it was.
  bool OnError(int err, const char* reason) {
    std::string msg;
    switch (static_cast<rd_kafka_resp_err_t>(err)) {
      case RD_KAFKA_RESP_ERR__AUTHENTICATION:
      case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
        msg = fmt::format(
            "the Kafka brokers at {} refused the SASL login ({}); check "
            "sasl.username, sasl.password and sasl.mechanisms in [kafka.properties] (the "
            "brokers must know this user for that mechanism)",
            brokers_, CleanReason(reason));
        if (mechanism_.rfind("SCRAM", 0) == 0 && rd_kafka_version() < 0x020601ff) {
          msg += fmt::format(
              ". Note: librdkafka {} (before 2.6.1) cannot authenticate with SCRAM to Kafka 4.0 "
              "and later brokers, even with the right password (librdkafka issue #4895): "
              "use librdkafka 2.6.1 or later, or \"sasl.mechanisms\" = \"PLAIN\" over SASL_SSL",
              rd_kafka_version_str());
        }
        break;
      case RD_KAFKA_RESP_ERR__SSL:
        msg = fmt::format(
            "the TLS connection to the Kafka brokers at {} failed ({}); check ssl.ca.location "
            "in [kafka.properties]: it must name the PEM file of the CA that signed the "
            "brokers' certificates (and ssl.certificate.location and ssl.key.location when the "
            "brokers require client certificates)",
            brokers_, CleanReason(reason));
        break;
      default:
        return false;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_.ok()) failure_ = Status::BadConfig(std::move(msg));
    return true;
  }

  Status failure() const {
    std::lock_guard<std::mutex> lock(mu_);
    return failure_;
  }

 private:
  const std::string brokers_;
  const std::string mechanism_;  // sasl.mechanisms
  mutable std::mutex mu_;
  Status failure_;
};

namespace {

std::unique_ptr<SecurityWatch> NewSecurityWatch(const Props& props) {
  std::string mechanism = Lookup(props, "sasl.mechanisms");
  if (mechanism.empty()) mechanism = Lookup(props, "sasl.mechanism");
  return std::make_unique<SecurityWatch>(Lookup(props, "bootstrap.servers"), mechanism);
}

std::vector<TopicPartition> FromList(const rd_kafka_topic_partition_list_t* list) {
  std::vector<TopicPartition> out;
  if (!list) return out;
  for (int i = 0; i < list->cnt; ++i) {
    out.push_back({list->elems[i].topic, list->elems[i].partition, list->elems[i].offset});
  }
  return out;
}

rd_kafka_topic_partition_list_t* ToList(const std::vector<TopicPartition>& parts) {
  auto* list = rd_kafka_topic_partition_list_new(static_cast<int>(parts.size()));
  for (const auto& p : parts) {
    rd_kafka_topic_partition_list_add(list, p.topic.c_str(), p.partition)->offset = p.offset;
  }
  return list;
}

}  // namespace

bool IsRetryableKafkaError(int e) {
  // Every code of librdkafka 2.0.2's rd_kafka_resp_err_t is listed on one
  // side or the other and there is no `default:`, so -Wswitch names any code
  // a newer librdkafka header adds (a warning, not an error: the build still
  // works). A value the compiled header does not know (a newer librdkafka.so
  // at run time, or a code that fell between the lists) is retryable below
  // the switch: waiting can only cost a duplicate, which consumers drop by
  // position, while a wrong "fatal" stops the tunnel.
  if (e < RD_KAFKA_RESP_ERR__BEGIN || e >= RD_KAFKA_RESP_ERR_END_ALL) return true;
  switch (static_cast<rd_kafka_resp_err_t>(e)) {
    // Cannot heal by waiting: configuration, authorization, data that will
    // never fit, or data the broker no longer has.
    case RD_KAFKA_RESP_ERR__FATAL:  // the producer instance is unusable; FatalError() refines
    case RD_KAFKA_RESP_ERR__SSL:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:   // a partition the topic does not have
    case RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET:   // auto.offset.reset=error hit: data is gone
    case RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE:  // removed by retention before we read it
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:  // invalid topic name
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS:  // the acks property
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_SASL_MECHANISM:  // sasl.mechanisms vs the broker's
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION:
    case RD_KAFKA_RESP_ERR_INVALID_CONFIG:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
    case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
    case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_COMPRESSION_TYPE:  // compression.type vs the broker
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:                // the broker rejects the record itself
    case RD_KAFKA_RESP_ERR_UNACCEPTABLE_CREDENTIAL:
      return false;

    // Wait and retry: transport, leader and coordinator changes, timeouts,
    // an unknown topic while it is being created, throttling, purges we asked
    // for, group membership churn, producer fencing (a new producer id heals
    // it), and codes this client never meets (admin, delegation tokens,
    // quorum, serializers): for those, retrying is the harmless choice.
    case RD_KAFKA_RESP_ERR__BEGIN:  // sentinels, never returned
    case RD_KAFKA_RESP_ERR__END:
    case RD_KAFKA_RESP_ERR_END_ALL:
    case RD_KAFKA_RESP_ERR_NO_ERROR:  // callers pass it as "no answer yet"
    case RD_KAFKA_RESP_ERR_UNKNOWN:
    case RD_KAFKA_RESP_ERR__BAD_MSG:
    case RD_KAFKA_RESP_ERR__BAD_COMPRESSION:
    case RD_KAFKA_RESP_ERR__DESTROY:
    case RD_KAFKA_RESP_ERR__FAIL:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__CRIT_SYS_RESOURCE:  // memory or file handles may free up
    case RD_KAFKA_RESP_ERR__RESOLVE:            // DNS may heal
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:      // message.timeout.ms passed; sending again heals
    case RD_KAFKA_RESP_ERR__PARTITION_EOF:      // not a failure
    case RD_KAFKA_RESP_ERR__FS:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:     // auto-creation or an operator may create it
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:  // the brokers may come back
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
    case RD_KAFKA_RESP_ERR__ISR_INSUFF:
    case RD_KAFKA_RESP_ERR__NODE_UPDATE:
    case RD_KAFKA_RESP_ERR__WAIT_COORD:
    case RD_KAFKA_RESP_ERR__UNKNOWN_GROUP:
    case RD_KAFKA_RESP_ERR__IN_PROGRESS:
    case RD_KAFKA_RESP_ERR__PREV_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR__EXISTING_SUBSCRIPTION:
    case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
    case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
    case RD_KAFKA_RESP_ERR__CONFLICT:
    case RD_KAFKA_RESP_ERR__STATE:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PROTOCOL:
    case RD_KAFKA_RESP_ERR__NOT_IMPLEMENTED:
    case RD_KAFKA_RESP_ERR__NO_OFFSET:
    case RD_KAFKA_RESP_ERR__OUTDATED:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
    case RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE:
    case RD_KAFKA_RESP_ERR__WAIT_CACHE:
    case RD_KAFKA_RESP_ERR__INTR:
    case RD_KAFKA_RESP_ERR__KEY_SERIALIZATION:
    case RD_KAFKA_RESP_ERR__VALUE_SERIALIZATION:
    case RD_KAFKA_RESP_ERR__KEY_DESERIALIZATION:
    case RD_KAFKA_RESP_ERR__VALUE_DESERIALIZATION:
    case RD_KAFKA_RESP_ERR__PARTIAL:
    case RD_KAFKA_RESP_ERR__READ_ONLY:
    case RD_KAFKA_RESP_ERR__NOENT:
    case RD_KAFKA_RESP_ERR__UNDERFLOW:
    case RD_KAFKA_RESP_ERR__INVALID_TYPE:
    case RD_KAFKA_RESP_ERR__RETRY:
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:     // our own Purge() before a new session
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:  // same
    case RD_KAFKA_RESP_ERR__INCONSISTENT:
    case RD_KAFKA_RESP_ERR__GAPLESS_GUARANTEE:
    case RD_KAFKA_RESP_ERR__MAX_POLL_EXCEEDED:
    case RD_KAFKA_RESP_ERR__UNKNOWN_BROKER:
    case RD_KAFKA_RESP_ERR__NOT_CONFIGURED:
    case RD_KAFKA_RESP_ERR__FENCED:  // a newer producer instance; a new session re-sends
    case RD_KAFKA_RESP_ERR__APPLICATION:
    case RD_KAFKA_RESP_ERR__ASSIGNMENT_LOST:
    case RD_KAFKA_RESP_ERR__NOOP:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:  // same, seen by the broker
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_REPLICA_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_STALE_CTRL_EPOCH:
    case RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
    case RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_COORDINATOR:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
    case RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION:
    case RD_KAFKA_RESP_ERR_INCONSISTENT_GROUP_PROTOCOL:
    case RD_KAFKA_RESP_ERR_INVALID_GROUP_ID:
    case RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID:
    case RD_KAFKA_RESP_ERR_INVALID_SESSION_TIMEOUT:
    case RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR_INVALID_COMMIT_OFFSET_SIZE:
    case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
    case RD_KAFKA_RESP_ERR_ILLEGAL_SASL_STATE:
    case RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS:
    case RD_KAFKA_RESP_ERR_INVALID_PARTITIONS:
    case RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR:
    case RD_KAFKA_RESP_ERR_INVALID_REPLICA_ASSIGNMENT:
    case RD_KAFKA_RESP_ERR_NOT_CONTROLLER:
    case RD_KAFKA_RESP_ERR_INVALID_REQUEST:
    case RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER:  // idempotence resets the sequence
    case RD_KAFKA_RESP_ERR_DUPLICATE_SEQUENCE_NUMBER:
    case RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH:
    case RD_KAFKA_RESP_ERR_INVALID_TXN_STATE:
    case RD_KAFKA_RESP_ERR_INVALID_PRODUCER_ID_MAPPING:
    case RD_KAFKA_RESP_ERR_INVALID_TRANSACTION_TIMEOUT:
    case RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS:
    case RD_KAFKA_RESP_ERR_TRANSACTION_COORDINATOR_FENCED:
    case RD_KAFKA_RESP_ERR_SECURITY_DISABLED:
    case RD_KAFKA_RESP_ERR_OPERATION_NOT_ATTEMPTED:
    case RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR:  // a broker disk; the leader moves
    case RD_KAFKA_RESP_ERR_LOG_DIR_NOT_FOUND:
    case RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID:
    case RD_KAFKA_RESP_ERR_REASSIGNMENT_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_AUTH_DISABLED:
    case RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_NOT_FOUND:
    case RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_OWNER_MISMATCH:
    case RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_REQUEST_NOT_ALLOWED:
    case RD_KAFKA_RESP_ERR_DELEGATION_TOKEN_EXPIRED:
    case RD_KAFKA_RESP_ERR_INVALID_PRINCIPAL_TYPE:
    case RD_KAFKA_RESP_ERR_NON_EMPTY_GROUP:
    case RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND:
    case RD_KAFKA_RESP_ERR_FETCH_SESSION_ID_NOT_FOUND:
    case RD_KAFKA_RESP_ERR_INVALID_FETCH_SESSION_EPOCH:
    case RD_KAFKA_RESP_ERR_LISTENER_NOT_FOUND:
    case RD_KAFKA_RESP_ERR_TOPIC_DELETION_DISABLED:
    case RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH:
    case RD_KAFKA_RESP_ERR_UNKNOWN_LEADER_EPOCH:
    case RD_KAFKA_RESP_ERR_STALE_BROKER_EPOCH:
    case RD_KAFKA_RESP_ERR_OFFSET_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_MEMBER_ID_REQUIRED:
    case RD_KAFKA_RESP_ERR_PREFERRED_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_GROUP_MAX_SIZE_REACHED:
    case RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID:
    case RD_KAFKA_RESP_ERR_ELIGIBLE_LEADERS_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_ELECTION_NOT_NEEDED:
    case RD_KAFKA_RESP_ERR_NO_REASSIGNMENT_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR_GROUP_SUBSCRIBED_TO_TOPIC:
    case RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT:
    case RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED:
    case RD_KAFKA_RESP_ERR_PRODUCER_FENCED:  // same
    case RD_KAFKA_RESP_ERR_RESOURCE_NOT_FOUND:
    case RD_KAFKA_RESP_ERR_DUPLICATE_RESOURCE:
    case RD_KAFKA_RESP_ERR_INCONSISTENT_VOTER_SET:
    case RD_KAFKA_RESP_ERR_INVALID_UPDATE_VERSION:
    case RD_KAFKA_RESP_ERR_FEATURE_UPDATE_FAILED:
    case RD_KAFKA_RESP_ERR_PRINCIPAL_DESERIALIZATION_FAILURE:
      return true;
  }
  return true;  // a value inside the range that names no code
}

std::string KafkaErrorText(int err) {
  return rd_kafka_err2str(static_cast<rd_kafka_resp_err_t>(err));
}

int32_t KeyPartition(std::string_view key, int32_t partitions) {
  // A non-null key never reaches the topic handle (only the random fallback
  // for a null key looks at partition availability).
  static const char kEmpty = '\0';
  return rd_kafka_msg_partitioner_murmur2_random(nullptr, key.empty() ? &kEmpty : key.data(),
                                                 key.size(), partitions, nullptr, nullptr);
}

Status CheckReachable(const KafkaConfig& config, int timeout_ms) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  // log_level 0: librdkafka's own lines would repeat what the Status says.
  Props props =
      Merge({{"bootstrap.servers", config.brokers}, {"log_level", "0"}}, config.properties, {});
  if (Status st = ApplyProps(conf, props, config.properties); !st.ok()) {
    rd_kafka_conf_destroy(conf);
    return st;
  }
  std::unique_ptr<SecurityWatch> security = NewSecurityWatch(props);
  rd_kafka_conf_set_opaque(conf, security.get());
  rd_kafka_conf_set_error_cb(conf, [](rd_kafka_t*, int err, const char* reason, void* opaque) {
    static_cast<SecurityWatch*>(opaque)->OnError(err, reason);
  });
  char err[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk) return Status::BadConfig(fmt::format("kafka: {}; fix [kafka.properties]", err));
  // Ask in slices, serving the error callback in between: a refused
  // password or an untrusted certificate is then reported at once rather
  // than after the whole timeout (librdkafka keeps retrying those). Each
  // slice is a new request and the answer to the one before is dropped, so
  // slices grow (200 ms, 400, 800, then 1.6 s): a broker slow to answer (a
  // loaded host, a collection pause) still gets time to, where a fixed
  // 200 ms turned 10 s of patience into 200 ms per request.
  const int64_t deadline = MonotonicMicros() + int64_t{timeout_ms} * 1000;
  rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__TIMED_OUT;
  Status failure;
  for (int64_t slice_ms = 200;; slice_ms = std::min<int64_t>(slice_ms * 2, 1600)) {
    const int64_t left_ms = (deadline - MonotonicMicros()) / 1000;
    const rd_kafka_metadata_t* md = nullptr;
    e = rd_kafka_metadata(rk, 0, nullptr, &md,
                          static_cast<int>(std::clamp<int64_t>(left_ms, 1, slice_ms)));
    if (md) rd_kafka_metadata_destroy(md);
    rd_kafka_poll(rk, 0);
    failure = security->failure();
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR || !failure.ok() || MonotonicMicros() >= deadline) break;
  }
  rd_kafka_destroy(rk);
  if (!failure.ok()) return failure;
  if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return Status::OK();
  return Status::Retryable(fmt::format(
      "cannot reach the Kafka brokers at {} ({}); check kafka.brokers (or --brokers), that the "
      "brokers run, and the security settings in [kafka.properties] (security.protocol must "
      "match the brokers' listener)",
      config.brokers, rd_kafka_err2str(e)));
}

// ---- Producer --------------------------------------------------------------

Result<std::unique_ptr<Producer>> Producer::Create(const KafkaConfig& config,
                                                   DeliveryFn on_delivery,
                                                   const std::string& client_id, Role role) {
  Props props = Merge(
      {
          {"bootstrap.servers", config.brokers},
          {"client.id", client_id},
          {"enable.idempotence", "true"},
          {"acks", "all"},
          {"message.timeout.ms", "0"},
          {"linger.ms", "0"},  // a tick's changes are produced at once: they batch anyway
          {"batch.num.messages", "10000"},
          {"compression.type", "lz4"},
          {"queue.buffering.max.kbytes", "65536"},
          {"queue.buffering.max.messages", "200000"},
          {"message.max.bytes", "67108864"},
          {"partitioner", "murmur2_random"},
          {"socket.keepalive.enable", "true"},
          {"reconnect.backoff.max.ms", "2000"},
      },
      config.properties, config.producer_properties);
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  if (Status st = ApplyProps(conf, props, config.properties, &config.producer_properties,
                             "producer_properties");
      !st.ok()) {
    rd_kafka_conf_destroy(conf);
    return st;
  }
  std::unique_ptr<Producer> p(new Producer());
  p->on_delivery_ = std::move(on_delivery);
  p->security_ = NewSecurityWatch(props);
  rd_kafka_conf_set_opaque(conf, p.get());
  rd_kafka_conf_set_log_cb(conf, LogCb);
  rd_kafka_conf_set_error_cb(conf, [](rd_kafka_t* rk, int err, const char* reason, void* opaque) {
    if (!static_cast<Producer*>(opaque)->security_->OnError(err, reason)) {
      ErrorCb(rk, err, reason, opaque);
    }
  });
  rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
    auto* self = static_cast<Producer*>(opaque);
    uint64_t token = reinterpret_cast<uintptr_t>(m->_private);
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      self->on_delivery_(token, Status::OK());
      return;
    }
    if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
      Status fatal = self->FatalError();
      if (!fatal.ok()) {
        self->on_delivery_(token, fatal);
        return;
      }
    }
    std::string msg = fmt::format("delivery to {} [{}] failed: {}", rd_kafka_topic_name(m->rkt),
                                  m->partition, rd_kafka_err2str(m->err));
    self->on_delivery_(token,
                       IsRetryableKafkaError(m->err) ? Status::Retryable(msg) : Status::Fatal(msg));
  });
  char err[512];
  p->rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!p->rk_) {
    return Status::BadConfig(fmt::format("cannot create the Kafka producer: {}", err));
  }
  if (const char* lose = std::getenv(kFaultLoseMessageEnv);
      role == Role::kChanges && lose && std::atoll(lose) > 0) {
    p->lose_at_ = std::atoll(lose);
    spdlog::warn("kafka: fault injection: message {} of {} will be acknowledged but never sent",
                 p->lose_at_, client_id);
  }
  return p;
}

Producer::Producer() = default;

Producer::~Producer() {
  if (rk_) rd_kafka_destroy(rk_);
}

Status Producer::Send(const std::string& topic, int32_t partition, std::string_view key,
                      std::string_view value, uint64_t token, const std::vector<Header>* headers) {
  if (lose_at_ > 0 && sent_ + 1 == lose_at_) {
    ++sent_;
    faked_.push_back(token);
    spdlog::warn("kafka: fault injection: message {} to {} [{}] acknowledged, not sent", sent_,
                 topic, partition);
    return Status::OK();
  }
  rd_kafka_headers_t* hdrs = nullptr;
  if (headers && !headers->empty()) {
    hdrs = rd_kafka_headers_new(headers->size());
    for (const auto& [k, v] : *headers) {
      rd_kafka_header_add(hdrs, k.data(), static_cast<ssize_t>(k.size()), v.data(),
                          static_cast<ssize_t>(v.size()));
    }
  }
  rd_kafka_resp_err_t err;
  if (hdrs) {
    err = rd_kafka_producev(
        rk_, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY(key.empty() ? nullptr : const_cast<char*>(key.data()), key.size()),
        RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
        RD_KAFKA_V_OPAQUE(reinterpret_cast<void*>(static_cast<uintptr_t>(token))),
        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END);
  } else {
    err = rd_kafka_producev(
        rk_, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY(key.empty() ? nullptr : const_cast<char*>(key.data()), key.size()),
        RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
        RD_KAFKA_V_OPAQUE(reinterpret_cast<void*>(static_cast<uintptr_t>(token))), RD_KAFKA_V_END);
  }
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    ++sent_;
    return Status::OK();
  }
  if (hdrs) rd_kafka_headers_destroy(hdrs);  // ownership passes only on success
  if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) return Status::Retryable("producer queue full");
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    if (Status fatal = FatalError(); !fatal.ok()) return fatal;
  }
  std::string msg = fmt::format("cannot publish to topic {}: {}", topic, rd_kafka_err2str(err));
  if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
    msg += fmt::format(
        " ({} bytes); raise message.max.bytes in [kafka.producer_properties] and "
        "the topic's max.message.bytes on the brokers",
        value.size());
  }
  return IsRetryableKafkaError(err) ? Status::Retryable(msg) : Status::Fatal(msg);
}

void Producer::Poll(int timeout_ms) {
  rd_kafka_poll(rk_, timeout_ms);
  DeliverFaked();
}

int Producer::Flush(int timeout_ms) {
  rd_kafka_flush(rk_, timeout_ms);
  DeliverFaked();
  return rd_kafka_outq_len(rk_);
}

void Producer::DeliverFaked() {
  if (faked_.empty()) return;
  std::vector<uint64_t> tokens;
  tokens.swap(faked_);
  for (uint64_t token : tokens) on_delivery_(token, Status::OK());
}

void Producer::Purge() {
  rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  rd_kafka_poll(rk_, 0);
}

int Producer::OutQueueLength() const { return rd_kafka_outq_len(rk_); }

Result<int> Producer::PartitionCount(const std::string& topic, int timeout_ms) {
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk_, topic.c_str(), nullptr);
  const int64_t deadline = MonotonicMicros() + int64_t{timeout_ms} * 1000;
  rd_kafka_resp_err_t last = RD_KAFKA_RESP_ERR_NO_ERROR;
  int count = 0;
  while (true) {
    const rd_kafka_metadata_t* md = nullptr;
    last = rd_kafka_metadata(rk_, 0, rkt, &md, 2000);
    if (last == RD_KAFKA_RESP_ERR_NO_ERROR && md) {
      if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        count = md->topics[0].partition_cnt;
      } else if (md->topic_cnt == 1) {
        last = md->topics[0].err;
      }
      rd_kafka_metadata_destroy(md);
    }
    if (count > 0 || MonotonicMicros() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  rd_kafka_topic_destroy(rkt);
  if (count > 0) return count;
  std::string msg = fmt::format("cannot read the partitions of topic {} from the brokers ({}): {}",
                                topic, "bootstrap.servers", rd_kafka_err2str(last));
  return IsRetryableKafkaError(last) ? Status::Retryable(msg) : Status::Fatal(msg);
}

Status Producer::FatalError() const {
  if (Status security = security_->failure(); !security.ok()) return security;
  char buf[512];
  rd_kafka_resp_err_t err = rd_kafka_fatal_error(rk_, buf, sizeof buf);
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return Status::OK();
  // librdkafka's producer cannot recover from a fatal error, but a new one
  // can: it gets a new producer id, and progress is recorded only for
  // delivered changes, so publishing again from there loses nothing.
  const std::string msg =
      fmt::format("the Kafka producer hit a fatal error ({}: {})", rd_kafka_err2name(err), buf);
  if (IsRetryableKafkaError(err)) return Status::Retryable(msg);
  return Status::Fatal(msg + "; fix the cause and start the process again");
}

void Producer::InjectFatalError(int err, const std::string& reason) {
  rd_kafka_test_fatal_error(rk_, static_cast<rd_kafka_resp_err_t>(err), reason.c_str());
}

// ---- Consumer --------------------------------------------------------------

Message::~Message() {
  if (m_) rd_kafka_message_destroy(m_);
}

InboundMessage Message::view() const {
  InboundMessage v;
  v.topic = rd_kafka_topic_name(m_->rkt);
  v.partition = m_->partition;
  v.offset = m_->offset;
  v.key = std::string_view(static_cast<const char*>(m_->key), m_->key_len);
  v.value = std::string_view(static_cast<const char*>(m_->payload), m_->len);
  v.null_value = m_->payload == nullptr;
  return v;
}

size_t Message::size() const { return m_->len + m_->key_len; }

std::optional<std::string_view> Message::Header(const char* name) const {
  rd_kafka_headers_t* hdrs = nullptr;
  if (rd_kafka_message_headers(m_, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR) return std::nullopt;
  const void* val = nullptr;
  size_t size = 0;
  if (rd_kafka_header_get_last(hdrs, name, &val, &size) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return std::nullopt;
  }
  return std::string_view(static_cast<const char*>(val), size);
}

void Consumer::RebalanceCb(rd_kafka_s* rk, int err, void* partitions, void* opaque) {
  auto* self = static_cast<Consumer*>(opaque);
  auto* list = static_cast<rd_kafka_topic_partition_list_t*>(partitions);
  const bool cooperative = std::strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    std::vector<TopicPartition> parts = FromList(list);
    for (auto& p : parts) p.offset = kOffsetStored;
    self->listener_->OnAssigned(&parts);
    self->ResolveLogicalOffsets(&parts);
    for (size_t i = 0; i < parts.size(); ++i) list->elems[i].offset = parts[i].offset;
    self->assigned_ = true;
    for (const auto& p : parts) self->unpositioned_.emplace(p.topic, p.partition);
    if (cooperative) {
      rd_kafka_error_t* e = rd_kafka_incremental_assign(rk, list);
      if (e) rd_kafka_error_destroy(e);
    } else {
      rd_kafka_assign(rk, list);
    }
    // librdkafka keeps a pause made before (while the partition was
    // assigned earlier, or since): a new assignment starts unpaused.
    std::vector<TopicPartition> paused;
    for (const auto& p : parts) {
      if (self->paused_.count({p.topic, p.partition})) paused.push_back(p);
    }
    if (!paused.empty()) self->Resume(paused);
  } else {
    const std::vector<TopicPartition> parts = FromList(list);
    self->listener_->OnRevoked(parts);
    if (cooperative) {
      for (const auto& p : parts) self->unpositioned_.erase({p.topic, p.partition});
      rd_kafka_error_t* e = rd_kafka_incremental_unassign(rk, list);
      if (e) rd_kafka_error_destroy(e);
    } else {
      self->assigned_ = false;  // until the assignment that follows
      self->unpositioned_.clear();
      rd_kafka_assign(rk, nullptr);
    }
  }
}

Result<std::unique_ptr<Consumer>> Consumer::Create(const KafkaConfig& config,
                                                   const std::vector<std::string>& topics,
                                                   Listener* listener,
                                                   const std::function<bool()>& cancelled,
                                                   bool assign_all) {
  Props props = Merge(
      {
          {"bootstrap.servers", config.brokers},
          {"group.id", config.group_id},
          {"client.id", "datatunnel-consumer"},
          {"enable.auto.commit", "false"},
          {"enable.auto.offset.store", "false"},
          {"auto.offset.reset", "error"},
          {"fetch.wait.max.ms", "10"},
          {"fetch.error.backoff.ms", "50"},
          // The prefetch bound (see below and docs/configuration.md): a fetch
          // brings up to max.partition.fetch.bytes per partition, compressed,
          // several times that once decompressed.
          {"queued.min.messages", "20000"},
          {"queued.max.messages.kbytes", "16384"},
          {"max.partition.fetch.bytes", "262144"},
          {"fetch.max.bytes", "8388608"},
          {"receive.message.max.bytes", "134217728"},
          {"session.timeout.ms", "10000"},
          {"heartbeat.interval.ms", "1000"},
          {"allow.auto.create.topics", "true"},
          {"enable.partition.eof", "true"},
          {"socket.keepalive.enable", "true"},
          {"reconnect.backoff.max.ms", "2000"},
      },
      config.properties, config.consumer_properties);
  // A partition whose prefetched messages exceed queued.min.messages or
  // queued.max.messages.kbytes is not fetched again until its broker thread
  // looks again: after fetch.queue.backoff.ms (librdkafka 2.2 and later,
  // 1 s by default) or, before 2.2, when something wakes that thread (up to
  // a second when nothing does). Catching up, the applier empties a full
  // queue in a fraction of that and then waits for the fetcher: a
  // 1,000,000-row snapshot through the broker spent 3.6 s of 11.5 s so.
  // From 2.2 on, a short backoff; before, Poll() wakes the fetchers itself.
  const bool backoff_setting = rd_kafka_version() >= 0x020200ff;
  if (backoff_setting) props.insert(props.begin(), {"fetch.queue.backoff.ms", "10"});
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  if (Status st = ApplyProps(conf, props, config.properties, &config.consumer_properties,
                             "consumer_properties");
      !st.ok()) {
    rd_kafka_conf_destroy(conf);
    return st;
  }
  std::unique_ptr<Consumer> c(new Consumer());
  c->listener_ = listener;
  c->wake_fetchers_ = !backoff_setting;
  c->security_ = NewSecurityWatch(props);
  rd_kafka_conf_set_opaque(conf, c.get());
  rd_kafka_conf_set_log_cb(conf, LogCb);
  rd_kafka_conf_set_error_cb(conf, [](rd_kafka_t* rk, int err, const char* reason, void* opaque) {
    if (!static_cast<Consumer*>(opaque)->security_->OnError(err, reason)) {
      ErrorCb(rk, err, reason, opaque);
    }
  });
  rd_kafka_conf_set_rebalance_cb(
      conf, [](rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts,
               void* opaque) { RebalanceCb(rk, err, parts, opaque); });
  char err[512];
  c->rk_ = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (!c->rk_) return Status::BadConfig(fmt::format("cannot create the Kafka consumer: {}", err));
  rd_kafka_poll_set_consumer(c->rk_);
  DT_RETURN_IF_ERROR(c->AwaitTopics(topics, cancelled));
  if (assign_all) {
    // Every partition of every topic, without the group's assignment: the
    // listener says where each one starts.
    std::vector<TopicPartition> parts;
    for (const auto& t : topics) {
      for (int32_t p = 0; p < c->partition_counts_[t]; ++p) parts.push_back({t, p, kOffsetStored});
    }
    listener->OnAssigned(&parts);
    c->ResolveLogicalOffsets(&parts);
    auto* all = ToList(parts);
    rd_kafka_resp_err_t e = rd_kafka_assign(c->rk_, all);
    rd_kafka_topic_partition_list_destroy(all);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return Status::Retryable(
          fmt::format("cannot assign the topics' partitions: {}", rd_kafka_err2str(e)));
    }
    c->assigned_ = true;
    for (const auto& p : parts) c->unpositioned_.emplace(p.topic, p.partition);
    return c;
  }
  auto* list = rd_kafka_topic_partition_list_new(static_cast<int>(topics.size()));
  for (const auto& t : topics)
    rd_kafka_topic_partition_list_add(list, t.c_str(), RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t e = rd_kafka_subscribe(c->rk_, list);
  rd_kafka_topic_partition_list_destroy(list);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Status::BadConfig(
        fmt::format("cannot subscribe to the topics: {}", rd_kafka_err2str(e)));
  }
  return c;
}

Status Consumer::AwaitTopics(const std::vector<std::string>& topics,
                             const std::function<bool()>& cancelled) {
  std::vector<std::string> missing = topics;
  const int64_t start = MonotonicMicros();
  int64_t next_log = start + 5'000'000;
  while (true) {
    std::vector<std::string> still;
    rd_kafka_resp_err_t last = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (const auto& topic : missing) {
      // A request naming the topic: the brokers create it when they
      // auto-create topics (allow.auto.create.topics, set above).
      rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk_, topic.c_str(), nullptr);
      const rd_kafka_metadata_t* md = nullptr;
      rd_kafka_resp_err_t e = rd_kafka_metadata(rk_, 0, rkt, &md, 1000);
      bool exists = false;
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR && md && md->topic_cnt == 1) {
        const rd_kafka_metadata_topic_t& t = md->topics[0];
        e = t.err;
        exists = t.err == RD_KAFKA_RESP_ERR_NO_ERROR && t.partition_cnt > 0;
        if (exists) partition_counts_[topic] = t.partition_cnt;
      }
      if (md) rd_kafka_metadata_destroy(md);
      rd_kafka_topic_destroy(rkt);
      if (!exists) {
        still.push_back(topic);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) last = e;
      }
    }
    // Serves the error callback (security failures). Nothing is subscribed
    // yet, so nothing else comes back.
    if (rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, 0)) rd_kafka_message_destroy(m);
    if (Status security = security_->failure(); !security.ok()) return security;
    if (still.empty()) return Status::OK();
    if (!IsRetryableKafkaError(last)) {
      return Status::Fatal(fmt::format(
          "the consumer cannot read topic {}: {}; grant the consumer's user the right to "
          "describe and read it (and to read its consumer group)",
          still.front(), rd_kafka_err2str(last)));
    }
    if (MonotonicMicros() >= next_log) {
      std::string names;
      for (const auto& t : still) names += (names.empty() ? "" : ", ") + t;
      spdlog::warn(
          "consumer: waiting for topic(s) {} to exist on the brokers ({}); the producer creates "
          "them when the brokers auto-create topics (auto.create.topics.enable), otherwise "
          "create them",
          names, last == RD_KAFKA_RESP_ERR_NO_ERROR ? "no answer" : rd_kafka_err2str(last));
      next_log = MonotonicMicros() + 30'000'000;
    }
    missing = std::move(still);
    for (int i = 0; i < 5; ++i) {
      if (cancelled()) return Status::Cancelled();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

Consumer::Consumer() = default;

Consumer::~Consumer() {
  StopWaker();
  if (!rk_) return;
  if (!closed_) (void)Close();
  if (rd_kafka_consumer_closed(rk_)) {
    rd_kafka_destroy(rk_);
    return;
  }
  // The close did not finish (the group coordinator does not answer), and
  // rd_kafka_destroy() would wait for it without a limit. It finishes in the
  // background instead, once the coordinator answers, or ends with the
  // process: nothing depends on it (positions live in the target).
  std::thread([rk = rk_] { rd_kafka_destroy(rk); }).detach();
}

Status Consumer::Poll(size_t max, int timeout_ms, int linger_ms, std::vector<Message>* out,
                      size_t max_bytes) {
  const size_t start = out->size();
  size_t bytes = 0;
  // Wait up to timeout_ms for the first message, then up to linger_ms more.
  int64_t deadline = MonotonicMicros() + int64_t{timeout_ms} * 1000;
  bool got_first = false;
  while (out->size() - start < max && bytes < max_bytes) {
    const int wait = static_cast<int>(std::max<int64_t>(0, (deadline - MonotonicMicros()) / 1000));
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, wait);
    if (!m) break;
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      // The end of a partition: its fetch answered, so it is positioned.
      if (!unpositioned_.empty() && m->rkt) {
        unpositioned_.erase({rd_kafka_topic_name(m->rkt), m->partition});
      }
      rd_kafka_message_destroy(m);
      continue;
    }
    if (m->err) {
      const rd_kafka_resp_err_t err = m->err;
      const std::string where =
          m->rkt ? fmt::format("{} [{}]", rd_kafka_topic_name(m->rkt), m->partition)
                 : std::string("the consumer");
      const std::string text = rd_kafka_message_errstr(m);
      const std::string topic_name = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
      const int32_t partition = m->partition;
      const int64_t offset = m->offset;
      rd_kafka_message_destroy(m);
      if (err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET &&
          (offset == RD_KAFKA_OFFSET_BEGINNING || offset == RD_KAFKA_OFFSET_END)) {
        // Not retention, which only removes a concrete offset: the lookup of
        // where the partition begins or ends failed (ResolveLogicalOffsets
        // could not do it either), and librdkafka before 2.1 does not try
        // again.
        return Status::Fatal(fmt::format(
            "{}: could not look up its {} offset ({}); check that the topic exists and that "
            "its partition has a leader (kafka-topics.sh --describe), then start the consumer "
            "again",
            where, offset == RD_KAFKA_OFFSET_BEGINNING ? "first" : "end", text));
      }
      if (err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
          err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
        // Past the end is not retention: the partition was emptied (the topic
        // deleted and created again, or a broker that lost its data, as a
        // restarted dev-broker does).
        int64_t low = -1, high = -1;
        if (!topic_name.empty() &&
            rd_kafka_query_watermark_offsets(rk_, topic_name.c_str(), partition, &low, &high,
                                             5000) == RD_KAFKA_RESP_ERR_NO_ERROR &&
            offset > high) {
          return Status::Fatal(fmt::format(
              "{}: offset {} is past the end of the partition (offsets {} to {} are on the "
              "broker): the topic was deleted and created again, or the broker lost its data, "
              "so changes not yet applied may be gone; re-sync the table (docs/operations.md: "
              "\"A consumer fell behind Kafka retention\")",
              where, offset, low, high));
        }
        return Status::Fatal(fmt::format(
            "{}: offset {} is no longer on the broker ({}): changes were removed by retention "
            "before they were applied, so the target is missing them; raise the topic's "
            "retention and re-sync the table (docs/operations.md: \"A consumer fell behind "
            "Kafka retention\")",
            where, offset, text));
      }
      if (!IsRetryableKafkaError(err)) {
        return Status::Fatal(fmt::format("kafka consumer, {}: {}", where, text));
      }
      LogThrottled(spdlog::level::warn, rd_kafka_err2name(err),
                   fmt::format("kafka consumer, {}: {} (retrying)", where, text));
      continue;
    }
    if (!unpositioned_.empty()) unpositioned_.erase({rd_kafka_topic_name(m->rkt), m->partition});
    bytes += m->len + m->key_len;
    out->emplace_back(m);
    if (!got_first) {
      got_first = true;
      deadline = MonotonicMicros() + int64_t{linger_ms} * 1000;
    }
  }
  // Served from rd_kafka_consumer_poll: the error callback saw a refused
  // password or an untrusted certificate.
  if (Status security = security_->failure(); !security.ok()) return security;
  // Cut short by max or max_bytes: the fetcher is ahead and may have parked
  // its partitions at the queue limits (see Create).
  if (wake_fetchers_ && (out->size() - start >= max || bytes >= max_bytes)) RequestWake();
  return Status::OK();
}

void Consumer::ResolveLogicalOffsets(std::vector<TopicPartition>* parts) {
  // ListOffsets with the timestamps -2 (earliest) and -1 (latest) answers
  // the first and end offsets: rd_kafka_offsets_for_times asks every
  // partition's leader at once.
  const int64_t deadline = MonotonicMicros() + kResolveMicros;
  std::string last_error;
  for (bool first = true;; first = false) {
    std::vector<size_t> logical;
    for (size_t i = 0; i < parts->size(); ++i) {
      const int64_t o = (*parts)[i].offset;
      if (o == RD_KAFKA_OFFSET_BEGINNING || o == RD_KAFKA_OFFSET_END) logical.push_back(i);
    }
    if (logical.empty()) return;
    if (MonotonicMicros() > deadline) {
      spdlog::warn(
          "kafka consumer: could not look up where {} partition(s) begin or end ({}); leaving "
          "it to the client",
          logical.size(), last_error);
      return;
    }
    if (!first) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::vector<TopicPartition> ask;
    for (size_t i : logical) ask.push_back((*parts)[i]);
    auto* list = ToList(ask);
    const rd_kafka_resp_err_t e = rd_kafka_offsets_for_times(rk_, list, 5000);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) last_error = rd_kafka_err2str(e);
    for (int j = 0; j < list->cnt; ++j) {
      const auto& el = list->elems[j];
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR && el.err == RD_KAFKA_RESP_ERR_NO_ERROR &&
          el.offset >= 0) {
        (*parts)[logical[static_cast<size_t>(j)]].offset = el.offset;
      } else if (el.err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        last_error = fmt::format("{} [{}]: {}", el.topic, el.partition, rd_kafka_err2str(el.err));
      }
    }
    rd_kafka_topic_partition_list_destroy(list);
  }
}

void Consumer::WakeFetchers() {
  // Nothing public wakes a broker thread without a request; the cheapest is
  // ListOffsets (the end offsets of the assigned partitions), which goes to
  // each partition's leader, the broker thread that fetches it. The answer
  // itself is not needed: a failure or a timeout only means no wake-up.
  rd_kafka_topic_partition_list_t* list = nullptr;
  if (rd_kafka_assignment(rk_, &list) != RD_KAFKA_RESP_ERR_NO_ERROR || !list) return;
  for (int i = 0; i < list->cnt; ++i) list->elems[i].offset = RD_KAFKA_OFFSET_END;
  if (list->cnt > 0) rd_kafka_offsets_for_times(rk_, list, 100);
  rd_kafka_topic_partition_list_destroy(list);
}

void Consumer::RequestWake() {
  std::lock_guard<std::mutex> lock(waker_mu_);
  if (waker_stop_) return;
  wake_wanted_ = true;
  if (waker_.joinable()) {
    waker_cv_.notify_one();
    return;
  }
  waker_ = std::thread([this] {
    std::unique_lock<std::mutex> held(waker_mu_);
    for (;;) {
      waker_cv_.wait(held, [this] { return wake_wanted_ || waker_stop_; });
      if (waker_stop_) return;
      wake_wanted_ = false;
      held.unlock();
      WakeFetchers();
      held.lock();
    }
  });
}

void Consumer::StopWaker() {
  {
    std::lock_guard<std::mutex> lock(waker_mu_);
    waker_stop_ = true;
  }
  waker_cv_.notify_one();
  if (waker_.joinable()) waker_.join();
}

void Consumer::Pause(const std::vector<TopicPartition>& parts) {
  for (const auto& p : parts) paused_.emplace(p.topic, p.partition);
  auto* list = ToList(parts);
  rd_kafka_pause_partitions(rk_, list);
  rd_kafka_topic_partition_list_destroy(list);
}

void Consumer::Resume(const std::vector<TopicPartition>& parts) {
  for (const auto& p : parts) paused_.erase({p.topic, p.partition});
  auto* list = ToList(parts);
  rd_kafka_resume_partitions(rk_, list);
  rd_kafka_topic_partition_list_destroy(list);
}

Status Consumer::Seek(const TopicPartition& tp) {
  auto* list = ToList({tp});
  rd_kafka_error_t* e = rd_kafka_seek_partitions(rk_, list, 5000);
  Status st;
  if (e) {
    st = Status::Retryable(fmt::format("seek {} [{}] to {}: {}", tp.topic, tp.partition, tp.offset,
                                       rd_kafka_error_string(e)));
    rd_kafka_error_destroy(e);
  } else if (list->elems[0].err) {
    st = Status::Retryable(fmt::format("seek {} [{}] to {}: {}", tp.topic, tp.partition, tp.offset,
                                       rd_kafka_err2str(list->elems[0].err)));
  }
  rd_kafka_topic_partition_list_destroy(list);
  return st;
}

void Consumer::CommitAsync(const std::vector<TopicPartition>& offsets) {
  if (offsets.empty()) return;
  auto* list = ToList(offsets);
  rd_kafka_commit(rk_, list, 1);
  rd_kafka_topic_partition_list_destroy(list);
}

Status Consumer::Close(int timeout_ms) {
  if (closed_) return Status::OK();
  closed_ = true;
  StopWaker();  // no wake-up request while the consumer closes
  // rd_kafka_consumer_close() waits for the group coordinator without a
  // limit: with the broker unreachable a graceful stop would never end. The
  // asynchronous close is served here (rebalance events included) until it
  // finishes or the deadline passes; positions live in the target, so an
  // unfinished close loses nothing (the group notices at its session timeout).
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk_);
  if (rd_kafka_error_t* e = rd_kafka_consumer_close_queue(rk_, queue)) {
    std::string what = rd_kafka_error_string(e);
    rd_kafka_error_destroy(e);
    rd_kafka_queue_destroy(queue);
    return Status::Retryable(fmt::format("closing the consumer: {}", what));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!rd_kafka_consumer_closed(rk_) && std::chrono::steady_clock::now() < deadline) {
    // The queue delivers events, not callbacks: a revocation is served here
    // as the rebalance callback would (other events, such as offset commit
    // results, need nothing).
    rd_kafka_event_t* ev = rd_kafka_queue_poll(queue, 50);
    if (!ev) continue;
    if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE) {
      RebalanceCb(rk_, rd_kafka_event_error(ev), rd_kafka_event_topic_partition_list(ev), this);
    }
    rd_kafka_event_destroy(ev);
  }
  rd_kafka_queue_destroy(queue);
  if (!rd_kafka_consumer_closed(rk_)) {
    return Status::Retryable(fmt::format(
        "the consumer did not leave group within {} ms (broker unreachable?); the group will "
        "reassign its partitions after its session timeout",
        timeout_ms));
  }
  return Status::OK();
}

std::vector<TopicPartition> Consumer::Assignment() const {
  rd_kafka_topic_partition_list_t* list = nullptr;
  std::vector<TopicPartition> out;
  if (rd_kafka_assignment(rk_, &list) == RD_KAFKA_RESP_ERR_NO_ERROR && list) {
    out = FromList(list);
    rd_kafka_topic_partition_list_destroy(list);
  }
  return out;
}

}  // namespace datatunnel::broker
