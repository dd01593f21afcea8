// scripts/kafka.sh's admin commands, through Kafka's own AdminClient (kafka.sh
// compiles this file once per source version into its cache; kcat cannot
// create topics).
//
//   KafkaAdmin create-topic BOOTSTRAP TOPIC PARTITIONS [KEY=VALUE]...
//
// Creates TOPIC with PARTITIONS partitions, the brokers' default replication
// factor and the given topic settings, then waits until every partition has
// a leader. Exit 0 on success, 1 with a message on stderr on failure
// (including "the topic exists"), 2 on bad arguments.
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.TopicPartitionInfo;

public class KafkaAdmin {
  private static final long TIMEOUT_MS = 60_000;

  public static void main(String[] args) throws Exception {
    if (args.length < 4 || !args[0].equals("create-topic")) {
      System.err.println("usage: KafkaAdmin create-topic BOOTSTRAP TOPIC PARTITIONS [KEY=VALUE]...");
      System.exit(2);
    }
    String bootstrap = args[1];
    String topic = args[2];
    int partitions;
    try {
      partitions = Integer.parseInt(args[3]);
    } catch (NumberFormatException e) {
      partitions = 0;
    }
    if (partitions < 1) {
      System.err.println("kafka.sh: PARTITIONS must be a positive number, not " + args[3]);
      System.exit(2);
    }
    Map<String, String> configs = new HashMap<>();
    for (int i = 4; i < args.length; i++) {
      int eq = args[i].indexOf('=');
      if (eq <= 0) {
        System.err.println("kafka.sh: topic settings take KEY=VALUE, not " + args[i]);
        System.exit(2);
      }
      configs.put(args[i].substring(0, eq), args[i].substring(eq + 1));
    }
    Properties props = new Properties();
    props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, String.valueOf(TIMEOUT_MS));
    long deadline = System.currentTimeMillis() + TIMEOUT_MS;
    try (Admin admin = Admin.create(props)) {
      NewTopic nt = new NewTopic(topic, Optional.of(partitions), Optional.empty()).configs(configs);
      admin.createTopics(List.of(nt)).all().get(TIMEOUT_MS, TimeUnit.MILLISECONDS);
      // The controller has the topic; wait until the brokers lead every partition.
      while (true) {
        TopicDescription d =
            admin.describeTopics(List.of(topic)).allTopicNames().get(TIMEOUT_MS, TimeUnit.MILLISECONDS)
                .get(topic);
        boolean led = d.partitions().size() == partitions;
        for (TopicPartitionInfo p : d.partitions()) led &= p.leader() != null && !p.leader().isEmpty();
        if (led) break;
        if (System.currentTimeMillis() > deadline) {
          System.err.println("kafka.sh: topic " + topic + " was created but not every partition has a leader after "
              + TIMEOUT_MS / 1000 + " s");
          System.exit(1);
        }
        Thread.sleep(50);
      }
    } catch (ExecutionException e) {
      System.err.println("kafka.sh: creating topic " + topic + " at " + bootstrap + " failed: " + e.getCause());
      System.exit(1);
    } catch (TimeoutException e) {
      System.err.println("kafka.sh: creating topic " + topic + " at " + bootstrap + ": no answer within "
          + TIMEOUT_MS / 1000 + " s");
      System.exit(1);
    }
  }
}
