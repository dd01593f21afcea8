// The Kafka adapters (broker/kafka.h) against a real Kafka broker.
#include "broker/kafka.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "broker/dev_broker.h"
#include "support/kafka_cluster.h"
#include "support/test_util.h"

namespace datatunnel::broker {
namespace {

using datatunnel::testing::TimeoutMultiplier;
using datatunnel::testing::WaitUntil;

class FromStart : public Consumer::Listener {
 public:
  void OnAssigned(std::vector<TopicPartition>* partitions) override {
    for (auto& p : *partitions) p.offset = kOffsetBeginning;
  }
  void OnRevoked(const std::vector<TopicPartition>&) override {}
};

// A refused property names the section it came from and never echoes the
// value (it may be a password).
TEST(ClientTest, ABadPropertyNamesItsSectionNotItsValue) {
  KafkaConfig config;
  config.brokers = "127.0.0.1:1";
  config.group_id = "unused";
  config.producer_properties = {{"enable.idempotence", "hunter2"}};
  auto producer = Producer::Create(config, [](uint64_t, const Status&) {});
  ASSERT_FALSE(producer.ok());
  const std::string p = producer.status().message();
  EXPECT_NE(p.find("kafka property \"enable.idempotence\""), std::string::npos) << p;
  EXPECT_NE(p.find("[kafka.producer_properties]"), std::string::npos) << p;
  EXPECT_EQ(p.find("hunter2"), std::string::npos) << p;

  config.producer_properties.clear();
  config.consumer_properties = {{"session.timeout.ms", "notanumber1"}};
  FromStart listener;
  auto consumer = Consumer::Create(config, {"t"}, &listener);
  ASSERT_FALSE(consumer.ok());
  const std::string c = consumer.status().message();
  EXPECT_NE(c.find("[kafka.consumer_properties]"), std::string::npos) << c;
  EXPECT_EQ(c.find("notanumber1"), std::string::npos) << c;

  config.consumer_properties.clear();
  config.properties = {{"security.protocol", "s3cr3t"}};
  consumer = Consumer::Create(config, {"t"}, &listener);
  ASSERT_FALSE(consumer.ok());
  EXPECT_NE(consumer.status().message().find("[kafka.properties]"), std::string::npos)
      << consumer.status().message();
}

// A consumer that reads slower than it fetches fills its queue to the
// queue limits, and librdkafka then stops fetching until its broker thread
// wakes up again (up to a second later, before librdkafka 2.2). Catching up
// must not wait for that: with a limit of 100 queued messages, batches of 100
// and 20 ms to apply each, a consumer that did not wake its fetchers read
// 1,300 of 6,000 messages (60 message sets) in 8 s; one that does reads them
// all in under 2 s. Every message arrives once, in order.
TEST(ConsumerTest, FetchingResumesAsSoonAsTheQueueDrains) {
  auto& kafka = datatunnel::testing::SharedKafka();
  const std::string topic = datatunnel::testing::TestTopicPrefix() + ".fetch_resume";
  kafka.CreateTopic(topic, 1);

  KafkaConfig config;
  config.brokers = kafka.bootstrap();
  config.group_id = topic;
  // One message set per fetch (a set is returned whole even when larger).
  config.consumer_properties = {{"queued.min.messages", "100"},
                                {"max.partition.fetch.bytes", "1024"},
                                {"fetch.wait.max.ms", "10"}};

  constexpr int kSets = 60, kPerSet = 100;
  int delivered = 0;
  auto producer = Producer::Create(config, [&](uint64_t, const Status& st) {
    if (st.ok()) ++delivered;
  });
  ASSERT_TRUE(producer.ok()) << producer.status().message();
  const std::string value(200, 'v');
  for (int s = 0; s < kSets; ++s) {
    // One flush per set: each set is one message set on the broker.
    for (int i = 0; i < kPerSet; ++i) {
      ASSERT_TRUE((*producer)->Send(topic, 0, std::to_string(s * kPerSet + i), value, 0).ok());
    }
    ASSERT_EQ((*producer)->Flush(10000), 0);
  }
  (*producer)->Poll(0);
  ASSERT_EQ(delivered, kSets * kPerSet);

  FromStart listener;
  auto consumer = Consumer::Create(config, {topic}, &listener);
  ASSERT_TRUE(consumer.ok()) << consumer.status().message();
  // The clock starts at the first message, after the group join.
  std::vector<Message> msgs;
  Status polled;
  ASSERT_TRUE(WaitUntil(
      [&] {
        polled = (*consumer)->Poll(kPerSet, 100, 0, &msgs);
        return !polled.ok() || !msgs.empty();
      },
      30))
      << "no message within 30 s";
  ASSERT_TRUE(polled.ok()) << polled.message();
  const auto start = std::chrono::steady_clock::now();
  const auto deadline =
      start + std::chrono::milliseconds(static_cast<int64_t>(8000 * TimeoutMultiplier()));
  while (msgs.size() < static_cast<size_t>(kSets * kPerSet) &&
         std::chrono::steady_clock::now() < deadline) {
    // Applying a batch: meanwhile the fetcher fills the queue to its limit.
    // (Not a wait for anything: the slow reader is the point of the test.)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_TRUE((*consumer)->Poll(kPerSet, 100, 0, &msgs).ok());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(msgs.size(), static_cast<size_t>(kSets * kPerSet))
      << "only " << msgs.size() << " messages after " << seconds << " s";
  for (size_t i = 0; i < msgs.size(); ++i) {
    ASSERT_EQ(msgs[i].view().offset, static_cast<int64_t>(i));
  }
  ASSERT_TRUE((*consumer)->Close().ok());
}

// A poll cut short by its limit asks for the fetchers to be woken (before
// librdkafka 2.2) but does not wait for it: waking them takes a broker's
// answer, and the applier waited for it at every batch (2-4 s of a
// 1,000,000-row transaction). With the broker stopped (SIGSTOP), polls of
// messages already fetched return at once; waiting, each took the lookup's
// 100 ms timeout.
TEST(ConsumerTest, APollCutShortDoesNotWaitForTheFetchersWakeUp) {
  auto& kafka = datatunnel::testing::SharedKafka();
  const std::string topic = datatunnel::testing::TestTopicPrefix() + ".wake_async";
  kafka.CreateTopic(topic, 1);
  KafkaConfig config;
  config.brokers = kafka.bootstrap();
  config.group_id = topic;
  constexpr int kMessages = 2000, kPolls = 20, kPerPoll = 10;
  int delivered = 0;
  auto producer = Producer::Create(config, [&](uint64_t, const Status& st) {
    if (st.ok()) ++delivered;
  });
  ASSERT_TRUE(producer.ok()) << producer.status().message();
  for (int i = 0; i < kMessages; ++i) {
    ASSERT_TRUE((*producer)->Send(topic, 0, std::to_string(i), "v", 0).ok());
  }
  ASSERT_EQ((*producer)->Flush(10000), 0);
  (*producer)->Poll(0);
  ASSERT_EQ(delivered, kMessages);

  FromStart listener;
  auto consumer = Consumer::Create(config, {topic}, &listener);
  ASSERT_TRUE(consumer.ok()) << consumer.status().message();
  std::vector<Message> msgs;
  // Until the whole topic is fetched (held locally): one message a poll,
  // each poll cut short by its limit.
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::vector<Message> one;
        if (!(*consumer)->Poll(1, 100, 0, &one).ok()) return true;
        for (auto& m : one) msgs.push_back(std::move(m));
        return !msgs.empty();
      },
      30));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let the fetch land
  kafka.Pause(1);
  const auto start = std::chrono::steady_clock::now();
  for (int p = 0; p < kPolls; ++p) {
    ASSERT_TRUE((*consumer)->Poll(kPerPoll, 100, 0, &msgs).ok());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  kafka.Resume(1);
  EXPECT_EQ(msgs.size(), static_cast<size_t>(1 + kPolls * kPerPoll));
  // Waiting, 20 polls took at least 20 x 100 ms.
  EXPECT_LT(seconds, 1.0 * TimeoutMultiplier()) << kPolls << " polls took " << seconds << " s";
  ASSERT_TRUE((*consumer)->Close().ok());
}

// librdkafka keeps an application's pause on a partition across its
// revocation and reassignment (Kafka's Java consumer does not); a consumer
// that paused a partition (a TRUNCATE barrier) and got it back from a
// rebalance would never read it again. A new assignment starts unpaused.
class Counting : public FromStart {
 public:
  void OnAssigned(std::vector<TopicPartition>* partitions) override {
    FromStart::OnAssigned(partitions);
    ++assignments;
  }
  int assignments = 0;
};

TEST(ConsumerTest, APausedPartitionAssignedAgainIsRead) {
  auto& kafka = datatunnel::testing::SharedKafka();
  const std::string topic = datatunnel::testing::TestTopicPrefix() + ".paused";
  const std::string other = topic + "_other";
  kafka.CreateTopic(topic, 1);
  kafka.CreateTopic(other, 1);
  KafkaConfig config;
  config.brokers = kafka.bootstrap();
  config.group_id = topic;
  auto producer = Producer::Create(config, [](uint64_t, const Status&) {});
  ASSERT_TRUE(producer.ok()) << producer.status().message();
  ASSERT_TRUE((*producer)->Send(topic, 0, "k", "first", 0).ok());
  ASSERT_EQ((*producer)->Flush(10000), 0);

  Counting listener;
  auto consumer = Consumer::Create(config, {topic}, &listener);
  ASSERT_TRUE(consumer.ok()) << consumer.status().message();
  std::vector<Message> msgs;
  ASSERT_TRUE(
      WaitUntil([&] { return (*consumer)->Poll(10, 100, 0, &msgs).ok() && !msgs.empty(); }, 30));
  (*consumer)->Pause({{topic, 0, -1}});

  // A member reading another topic joins the group: the group rebalances,
  // and `topic`, revoked, comes back to the same consumer.
  FromStart other_listener;
  auto joined = Consumer::Create(config, {other}, &other_listener);
  ASSERT_TRUE(joined.ok()) << joined.status().message();
  ASSERT_TRUE(WaitUntil(
      [&] {
        (void)(*joined)->Poll(10, 10, 0, &msgs);
        (void)(*consumer)->Poll(10, 10, 0, &msgs);
        return listener.assignments >= 2;
      },
      30))
      << "no rebalance";

  msgs.clear();
  ASSERT_TRUE((*producer)->Send(topic, 0, "k", "second", 0).ok());
  ASSERT_EQ((*producer)->Flush(10000), 0);
  auto has_second = [&] {
    for (const auto& m : msgs) {
      if (m.view().value == "second") return true;
    }
    return false;
  };
  EXPECT_TRUE(WaitUntil(
      [&] {
        (void)(*joined)->Poll(10, 10, 0, &msgs);
        return (*consumer)->Poll(10, 100, 0, &msgs).ok() && has_second();
      },
      20))
      << "the partition paused before the rebalance was never read again";
  EXPECT_TRUE((*joined)->Close().ok());
  EXPECT_TRUE((*consumer)->Close().ok());
}

// A partition assigned from a logical offset (the beginning) needs an offset
// lookup first. librdkafka 2.0.2 gives up on the first lookup that fails —
// even "Unknown topic or partition" from a broker that has not yet heard of
// a just-created topic — and reports __AUTO_OFFSET_RESET, which a consumer
// with auto.offset.reset=error must not read as retention (nothing was
// removed: no concrete offset was ever asked for). The consumer looks again
// and reads the partition. The one thing a real broker cannot be made to do
// on cue is fail that one lookup, so this test injects it with librdkafka's
// mock cluster (manual assignment: no group coordinator involved).
TEST(ConsumerTest, AFailedLookupOfTheBeginningIsRetriedNotReportedAsRetention) {
  auto mock = DevBroker::Start(1);
  ASSERT_TRUE(mock.ok()) << mock.status().message();
  const std::string topic = "lookup_retry";
  ASSERT_TRUE((*mock)->CreateTopic(topic, 1).ok());

  KafkaConfig config;
  config.brokers = (*mock)->bootstraps();
  config.group_id = topic;
  auto producer = Producer::Create(config, [](uint64_t, const Status&) {});
  ASSERT_TRUE(producer.ok()) << producer.status().message();
  ASSERT_TRUE((*producer)->Send(topic, 0, "k", "v", 0).ok());
  ASSERT_EQ((*producer)->Flush(10000), 0);

  // The next ListOffsets requests (API key 2) answer UNKNOWN_TOPIC_OR_PART (3).
  (*mock)->PushRequestErrors(2, 3, 3);
  FromStart listener;
  auto consumer = Consumer::Create(
      config, {topic}, &listener, [] { return false; },
      /*assign_all=*/true);
  ASSERT_TRUE(consumer.ok()) << consumer.status().message();
  std::vector<Message> msgs;
  Status polled;
  ASSERT_TRUE(WaitUntil(
      [&] {
        polled = (*consumer)->Poll(10, 100, 0, &msgs);
        return !polled.ok() || !msgs.empty();
      },
      30))
      << "the message was never read";
  ASSERT_TRUE(polled.ok()) << polled.message();
  ASSERT_EQ(msgs.size(), 1u);
  EXPECT_EQ(msgs[0].view().offset, 0);
  EXPECT_TRUE((*consumer)->Ready());
  ASSERT_TRUE((*consumer)->Close().ok());
}

// The start-up check asks for metadata in slices (to report a refused
// password at once); each slice is a new request. A broker that answers,
// but slower than the first slice (a loaded host, a collection pause), must
// still be found reachable: with a fixed 200 ms slice, a broker answering
// in 500 ms never was, and `produce`/`consume` exited at start. The mock's
// added round-trip time stands in for the slow broker.
TEST(ClientTest, ABrokerSlowerThanTheFirstSliceIsReachable) {
  auto mock = DevBroker::Start(1);
  ASSERT_TRUE(mock.ok()) << mock.status().message();
  ASSERT_TRUE((*mock)->SetBrokerRtt(1, 500).ok());
  KafkaConfig config;
  config.brokers = (*mock)->bootstraps();
  config.group_id = "unused";
  const Status st = CheckReachable(config, 10000);
  EXPECT_TRUE(st.ok()) << st.message();
}

}  // namespace
}  // namespace datatunnel::broker
