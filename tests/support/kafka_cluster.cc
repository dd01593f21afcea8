#include "support/kafka_cluster.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <sstream>

#include "support/pg_cluster.h"
#include "support/test_util.h"

namespace datatunnel::testing {

namespace {

// Runs `cmd` with a shell; returns its exit code and (when out) its stdout.
int Capture(const std::string& cmd, std::string* out) {
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return -1;
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  int status = pclose(f);
  if (out) *out = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

struct RdKafkaDeleter {
  void operator()(rd_kafka_t* rk) const { rd_kafka_destroy(rk); }
};
using RdKafkaPtr = std::unique_ptr<rd_kafka_t, RdKafkaDeleter>;

// A client of `bootstrap`; a producer counts failed deliveries in `*failed`.
RdKafkaPtr NewClient(rd_kafka_type_t type, const std::string& bootstrap,
                     const std::vector<std::pair<std::string, std::string>>& settings,
                     std::atomic<int64_t>* failed = nullptr) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  if (failed != nullptr) {
    rd_kafka_conf_set_opaque(conf, failed);
    rd_kafka_conf_set_dr_msg_cb(conf, [](rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
      if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) ++*static_cast<std::atomic<int64_t>*>(opaque);
    });
  }
  if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err) !=
      RD_KAFKA_CONF_OK) {
    ADD_FAILURE() << err;
  }
  for (const auto& [k, v] : settings) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      ADD_FAILURE() << k << ": " << err;
    }
  }
  rd_kafka_t* rk = rd_kafka_new(type, conf, err, sizeof err);
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    ADD_FAILURE() << "rd_kafka_new: " << err;
  }
  return RdKafkaPtr(rk);
}

using TopicResults = const rd_kafka_topic_result_t** (*)(rd_kafka_event_t*, size_t*);

// One topic admin request at `bootstrap`: `send` enqueues it on the queue it
// is given, `results` reads the per-topic results of its answer. Returns the
// brokers' error ("" on success).
std::string TopicAdmin(const std::string& bootstrap,
                       const std::function<void(rd_kafka_t*, rd_kafka_queue_t*)>& send,
                       TopicResults results) {
  RdKafkaPtr rk = NewClient(RD_KAFKA_PRODUCER, bootstrap, {});
  if (!rk) return "no admin client";
  rd_kafka_queue_t* q = rd_kafka_queue_new(rk.get());
  send(rk.get(), q);
  rd_kafka_event_t* ev = rd_kafka_queue_poll(q, static_cast<int>(30000 * TimeoutMultiplier()));
  std::string problem = ev == nullptr ? "no answer within 30 s" : "";
  if (ev != nullptr) {
    if (rd_kafka_event_error(ev)) {
      problem = rd_kafka_event_error_string(ev);
    } else {
      size_t n = 0;
      const rd_kafka_topic_result_t** res = results(ev, &n);
      for (size_t i = 0; i < n; ++i) {
        if (rd_kafka_topic_result_error(res[i]))
          problem = rd_kafka_topic_result_error_string(res[i]);
      }
    }
    rd_kafka_event_destroy(ev);
  }
  rd_kafka_queue_destroy(q);
  return problem;
}

}  // namespace

KafkaCluster::KafkaCluster(const Options& options) : nodes_(options.nodes) {
  char tmpl[] = "/tmp/datatunnel-test-XXXXXX";
  const char* parent = mkdtemp(tmpl);
  dir_ = std::string(parent) + "/kafka";
  std::string out;
  const std::string args =
      fmt::format("start --dir {} --nodes {} --partitions {}{}{} --owner {}", dir_, options.nodes,
                  options.partitions, options.sasl_ssl ? " --sasl-ssl" : "",
                  options.quick_start ? " --quick-start" : "", getpid());
  if (!Script(args, &out)) {
    fmt::print(stderr, "test fixture: could not start Kafka ({}/scripts/kafka.sh {})\n",
               SourceDir(), args);
    std::abort();
  }
  std::istringstream words(Trim(out));
  words >> bootstrap_ >> sasl_bootstrap_ >> ca_file_;
}

KafkaCluster::~KafkaCluster() {
  if (!owned_) return;
  Script(fmt::format("stop --dir {}", dir_));
  std::error_code ec;
  std::filesystem::remove_all(std::filesystem::path(dir_).parent_path(), ec);
}

bool KafkaCluster::Script(const std::string& args, std::string* out) {
  return Capture(fmt::format("{}/scripts/kafka.sh {}", SourceDir(), args), out) == 0;
}

void KafkaCluster::Kill(int node) {
  EXPECT_TRUE(Script(fmt::format("kill --dir {} {}", dir_, node))) << "kill node " << node;
}
void KafkaCluster::Restart(int node) {
  EXPECT_TRUE(Script(fmt::format("restart --dir {} {}", dir_, node))) << "restart node " << node;
}
void KafkaCluster::Pause(int node) {
  EXPECT_TRUE(Script(fmt::format("pause --dir {} {}", dir_, node))) << "pause node " << node;
}
void KafkaCluster::Resume(int node) {
  EXPECT_TRUE(Script(fmt::format("resume --dir {} {}", dir_, node))) << "resume node " << node;
}

void KafkaCluster::KillAll() {
  EXPECT_TRUE(Script(fmt::format("kill --dir {} all", dir_))) << "kill every node";
}
void KafkaCluster::RestartAll() {
  EXPECT_TRUE(Script(fmt::format("restart --dir {} all", dir_))) << "restart every node";
}
bool KafkaCluster::WaitReady() {
  const int seconds = static_cast<int>(180 * TimeoutMultiplier());
  return Capture(fmt::format("KAFKA_START_TIMEOUT={} {}/scripts/kafka.sh ready --dir {}", seconds,
                             SourceDir(), dir_),
                 nullptr) == 0;
}

void KafkaCluster::CreateTopic(const std::string& topic, int partitions,
                               const std::vector<std::pair<std::string, std::string>>& configs) {
  ASSERT_EQ(TryCreateTopic(topic, partitions, configs), "") << "creating topic " << topic;
}

std::string KafkaCluster::TryCreateTopic(
    const std::string& topic, int partitions,
    const std::vector<std::pair<std::string, std::string>>& configs) {
  char err[512];
  rd_kafka_NewTopic_t* nt =
      rd_kafka_NewTopic_new(topic.c_str(), partitions, nodes_ >= 3 ? 3 : nodes_, err, sizeof err);
  if (nt == nullptr) return err;
  for (const auto& [k, v] : configs) rd_kafka_NewTopic_set_config(nt, k.c_str(), v.c_str());
  std::string problem = TopicAdmin(
      bootstrap_,
      [&](rd_kafka_t* rk, rd_kafka_queue_t* q) { rd_kafka_CreateTopics(rk, &nt, 1, nullptr, q); },
      [](rd_kafka_event_t* ev, size_t* n) {
        return rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), n);
      });
  rd_kafka_NewTopic_destroy(nt);
  return problem;
}

bool KafkaCluster::DeleteTopic(const std::string& topic) {
  rd_kafka_DeleteTopic_t* dt = rd_kafka_DeleteTopic_new(topic.c_str());
  std::string problem = TopicAdmin(
      bootstrap_,
      [&](rd_kafka_t* rk, rd_kafka_queue_t* q) { rd_kafka_DeleteTopics(rk, &dt, 1, nullptr, q); },
      [](rd_kafka_event_t* ev, size_t* n) {
        return rd_kafka_DeleteTopics_result_topics(rd_kafka_event_DeleteTopics_result(ev), n);
      });
  rd_kafka_DeleteTopic_destroy(dt);
  if (!problem.empty()) ADD_FAILURE() << "deleting topic " << topic << ": " << problem;
  return problem.empty();
}

int64_t KafkaCluster::LowWatermark(const std::string& topic, int partition) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap_.c_str(), err, sizeof err);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (rk == nullptr) return -1;
  int64_t low = -1, high = -1;
  if (rd_kafka_query_watermark_offsets(rk, topic.c_str(), partition, &low, &high, 10000) !=
      RD_KAFKA_RESP_ERR_NO_ERROR) {
    low = -1;
  }
  rd_kafka_destroy(rk);
  return low;
}

int KafkaCluster::Leader(const std::string& topic, int partition) {
  std::string out;
  if (!Script(fmt::format("leader --dir {} {} {} 2>/dev/null", dir_, topic, partition), &out)) {
    return -1;
  }
  return std::atoi(out.c_str());
}

KafkaCluster& SharedKafka() {
  // Destroyed at exit (static storage), which stops the cluster.
  static std::unique_ptr<KafkaCluster> cluster = [] {
    const char* existing = std::getenv("DATATUNNEL_TEST_BROKERS");
    return existing && *existing ? std::make_unique<KafkaCluster>(std::string(existing))
                                 : std::make_unique<KafkaCluster>(KafkaCluster::Options{});
  }();
  return *cluster;
}

std::string TestTopicPrefix() { return UniqueName("dt") + "_" + std::to_string(time(nullptr)); }

int64_t CopyTopic(const std::string& from, const std::string& to, const std::string& topic,
                  int partitions) {
  // The simple (legacy) consumer: reads a partition with no group at all.
  RdKafkaPtr in = NewClient(RD_KAFKA_CONSUMER, from, {{"enable.partition.eof", "true"}});
  std::atomic<int64_t> failed{0};
  RdKafkaPtr out = NewClient(RD_KAFKA_PRODUCER, to, {{"enable.idempotence", "true"}}, &failed);
  if (!in || !out) return -1;
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(in.get(), topic.c_str(), nullptr);
  int64_t copied = 0;
  bool ok = true;
  for (int p = 0; ok && p < partitions; ++p) {
    if (rd_kafka_consume_start(rkt, p, RD_KAFKA_OFFSET_BEGINNING) != 0) {
      ADD_FAILURE() << "reading " << topic << " [" << p
                    << "]: " << rd_kafka_err2str(rd_kafka_last_error());
      ok = false;
      break;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    for (bool eof = false; ok && !eof;) {
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "copying " << topic << " [" << p << "]: no end after 120 s";
        ok = false;
        break;
      }
      rd_kafka_message_t* m = rd_kafka_consume(rkt, p, 200);
      if (m == nullptr) continue;
      if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        eof = true;
      } else if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        ADD_FAILURE() << "reading " << topic << " [" << p << "]: " << rd_kafka_message_errstr(m);
        ok = false;
      } else {
        rd_kafka_headers_t* headers = nullptr;
        rd_kafka_message_detach_headers(m, &headers);
        rd_kafka_timestamp_type_t ts_type;
        const int64_t ts = rd_kafka_message_timestamp(m, &ts_type);
        rd_kafka_resp_err_t err;
        while ((err = rd_kafka_producev(
                    out.get(), RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_PARTITION(p),
                    RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->payload, m->len),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_TIMESTAMP(ts > 0 ? ts : 0),
                    RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_END)) ==
               RD_KAFKA_RESP_ERR__QUEUE_FULL) {
          rd_kafka_poll(out.get(), 100);
        }
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
          if (headers) rd_kafka_headers_destroy(headers);
          ADD_FAILURE() << "copying to " << topic << ": " << rd_kafka_err2str(err);
          ok = false;
        } else {
          ++copied;
        }
      }
      rd_kafka_message_destroy(m);
      rd_kafka_poll(out.get(), 0);
    }
    rd_kafka_consume_stop(rkt, p);
  }
  rd_kafka_topic_destroy(rkt);
  if (!ok) return -1;
  if (rd_kafka_flush(out.get(), 60000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
    ADD_FAILURE() << "copying " << topic << ": the copy was not acknowledged in 60 s";
    return -1;
  }
  if (failed > 0) {
    ADD_FAILURE() << "copying " << topic << ": " << failed << " message(s) not delivered";
    return -1;
  }
  return copied;
}

}  // namespace datatunnel::testing
