#include "broker/dev_broker.h"

#include <fmt/format.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <sstream>

namespace datatunnel::broker {

Result<std::unique_ptr<DevBroker>> DevBroker::Start(int brokers) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  // The handle only hosts the cluster; keep it quiet.
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  std::unique_ptr<DevBroker> b(new DevBroker());
  b->rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!b->rk_) return Status::Fatal(fmt::format("dev-broker: {}", err));
  b->cluster_ = rd_kafka_mock_cluster_new(b->rk_, brokers);
  if (!b->cluster_) return Status::Fatal("dev-broker: could not start the mock cluster");
  return b;
}

DevBroker::~DevBroker() {
  if (cluster_) rd_kafka_mock_cluster_destroy(cluster_);
  if (rk_) rd_kafka_destroy(rk_);
}

std::string DevBroker::bootstraps() const { return rd_kafka_mock_cluster_bootstraps(cluster_); }

static Status FromErr(rd_kafka_resp_err_t e, const std::string& what) {
  if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return Status::OK();
  return Status::BadConfig(fmt::format("{}: {}", what, rd_kafka_err2str(e)));
}

Status DevBroker::CreateTopic(const std::string& name, int partitions) {
  return FromErr(rd_kafka_mock_topic_create(cluster_, name.c_str(), partitions, 1),
                 "create topic " + name);
}

Status DevBroker::SetBrokerDown(int id) {
  return FromErr(rd_kafka_mock_broker_set_down(cluster_, id), fmt::format("broker {} down", id));
}

Status DevBroker::SetBrokerUp(int id) {
  return FromErr(rd_kafka_mock_broker_set_up(cluster_, id), fmt::format("broker {} up", id));
}

Status DevBroker::SetBrokerRtt(int id, int rtt_ms) {
  return FromErr(rd_kafka_mock_broker_set_rtt(cluster_, id, rtt_ms),
                 fmt::format("broker {} rtt", id));
}

void DevBroker::PushRequestErrors(int api_key, int count, int error) {
  std::vector<rd_kafka_resp_err_t> errs(static_cast<size_t>(count),
                                        static_cast<rd_kafka_resp_err_t>(error));
  rd_kafka_mock_push_request_errors_array(cluster_, static_cast<int16_t>(api_key), errs.size(),
                                          errs.data());
}

Status DevBroker::Command(const std::string& line) {
  std::istringstream in(line);
  std::string cmd;
  in >> cmd;
  if (cmd.empty()) return Status::OK();
  if (cmd == "down" || cmd == "up") {
    int id = 0;
    if (!(in >> id)) return Status::BadConfig("usage: " + cmd + " <broker id>");
    return cmd == "down" ? SetBrokerDown(id) : SetBrokerUp(id);
  }
  if (cmd == "rtt") {
    int id = 0, ms = 0;
    if (!(in >> id >> ms)) return Status::BadConfig("usage: rtt <broker id> <ms>");
    return SetBrokerRtt(id, ms);
  }
  if (cmd == "errors") {
    int api = 0, count = 0, code = 0;
    if (!(in >> api >> count >> code)) {
      return Status::BadConfig("usage: errors <api key> <count> <kafka error code>");
    }
    PushRequestErrors(api, count, code);
    return Status::OK();
  }
  if (cmd == "topic") {
    std::string name;
    int partitions = 0;
    if (!(in >> name >> partitions) || partitions < 1) {
      return Status::BadConfig("usage: topic <name> <partitions>");
    }
    return CreateTopic(name, partitions);
  }
  return Status::BadConfig(
      fmt::format("unknown command \"{}\"; commands: down <id>, up <id>, rtt <id> <ms>, "
                  "errors <api> <count> <code>, topic <name> <partitions>",
                  cmd));
}

}  // namespace datatunnel::broker
