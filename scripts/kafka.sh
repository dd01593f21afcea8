#!/usr/bin/env bash
# Real Apache Kafka (KRaft) clusters on loopback, for the tests, the fault run,
# the demo and the benchmark.
#
#   scripts/kafka.sh fetch                        download the broker once (Maven Central)
#   scripts/kafka.sh cached                       exit 0 when it is already downloaded
#   scripts/kafka.sh version                      print the Kafka version it runs
#   scripts/kafka.sh start --dir DIR [--nodes N] [--partitions P] [--sasl-ssl]
#                          [--set KEY=VALUE]... [--owner PID] [--quick-start]
#                                                 start N nodes (default 1), wait until the
#                                                 cluster takes acks=all produce requests,
#                                                 print the bootstrap list as the only stdout line
#   scripts/kafka.sh stop --dir DIR               stop every node it started (SIGTERM, then -9)
#   scripts/kafka.sh kill --dir DIR NODE|all      kill -9 one node, or every node at once
#   scripts/kafka.sh restart --dir DIR NODE|all   start it (them) again, killing it first if it
#                                                 runs; returns once started, not ready
#   scripts/kafka.sh ready --dir DIR              wait until every node runs and is registered,
#                                                 the cluster takes acks=all produce requests and
#                                                 no partition lacks an in-sync replica
#   scripts/kafka.sh pause|resume --dir DIR NODE  SIGSTOP / SIGCONT one node
#   scripts/kafka.sh create-topic --dir DIR TOPIC PARTITIONS [--set KEY=VALUE]...
#                                                 create TOPIC with PARTITIONS partitions, the
#                                                 cluster's replication factor and the given
#                                                 topic settings; wait until every partition
#                                                 has a leader (Kafka's AdminClient)
#   scripts/kafka.sh leader --dir DIR TOPIC PARTITION
#                                                 print the node id leading that partition
#   scripts/kafka.sh bootstrap --dir DIR          print the bootstrap list again
#
# Nodes are numbered 1..N; each is a combined broker+controller with a static
# quorum. One node: replication factor 1. Three nodes: topics get replication
# factor 3 and min.insync.replicas=2 by default. Topics are created on first
# use with P partitions (default 4). Each node gets a bounded heap
# (KAFKA_HEAP, default 512m) and logs to DIR/nodeK/server.log (its JVM's GC
# pauses to DIR/nodeK/gc.log). --set adds a
# broker setting to every node's server.properties; --owner stops the cluster
# once process PID is gone (a test binary that crashed leaves nothing behind).
# --quick-start runs the nodes with the C1 JIT only and the serial GC: on a
# busy 2-core machine a node then starts in about half the time (fault tests
# restart nodes dozens of times), at a cost in peak throughput, so not for
# benchmarks. Restarts keep the choice (DIR/jvm.opts).
#
# --sasl-ssl adds a SASL_SSL listener on a second port per node, with a CA and
# certificates made with openssl in DIR/tls; the script then prints
# "BOOTSTRAP SASL_BOOTSTRAP CA_FILE" on its stdout line. The user is
# "datatunnel" with password "datatunnel-secret", for SASL mechanisms
# SCRAM-SHA-512 and PLAIN (librdkafka before 2.6.1 cannot do SCRAM with
# Kafka 4 brokers: librdkafka issue #4895).
#
# The broker's jars are cached in $DATATUNNEL_CACHE/kafka-$KAFKA_VERSION
# (default ~/.cache/datatunnel); after the first fetch nothing is downloaded.
# Needs java (17+), mvn, kcat and openssl: scripts/install-deps.sh installs them.
set -euo pipefail

KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
LOG4J_VERSION=2.24.3
cache=${DATATUNNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/datatunnel}/kafka-$KAFKA_VERSION
heap=${KAFKA_HEAP:-512m}

die() { echo "kafka.sh: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }

# Every fetch of every script holds one lock: test binaries start at once on
# a fresh machine, and two Maven runs must not fill the same folders (or
# Maven's own repository) together. The others wait, then find it complete.
fetch() {
  [[ -f "$cache/complete" ]] && return 0
  mkdir -p "$cache"
  (
    flock 8
    fetch_locked
  ) 8>"${cache%/*}/fetch.lock" || exit 1
}

fetch_locked() {
  [[ -f "$cache/complete" ]] && return 0
  command -v mvn >/dev/null || die "mvn not found; run scripts/install-deps.sh"
  command -v java >/dev/null || die "java not found; run scripts/install-deps.sh"
  echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION from Maven Central into $cache (once)" >&2
  mkdir -p "$cache"
  local work
  work=$(mktemp -d)
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>datatunnel</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  if ! (cd "$work" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$cache/libs.tmp" >"$work/mvn.log" 2>&1); then
    tail -20 "$work/mvn.log" >&2
    die "could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION with Maven (see above)"
  fi
  rm -rf "$cache/libs" && mv "$cache/libs.tmp" "$cache/libs"
  cat >"$cache/log4j2.properties" <<'EOF'
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
  rm -rf "$work"
  touch "$cache/complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# The java command line for a node whose folder is $1 (logs go there).
java_cmd() {
  printf '%s\0' java -Xms128m -Xmx"$heap" "${jvm_opts[@]}" \
    -Djava.awt.headless=true -Dkafka.logs.dir="$1" \
    -Dlog4j2.configurationFile="$cache/log4j2.properties" -cp "$cache/libs/*"
}
run_java() {
  local nd=$1
  shift
  local cmd
  mapfile -d '' cmd < <(java_cmd "$nd")
  "${cmd[@]}" "$@"
}

# The pid of the node whose folder is $1, if that node runs. A pid file left
# behind by a node that died on its own may name another process by now: only
# a java process started with this node's server.properties counts.
node_pid() {
  local p
  p=$(cat "$1/pid" 2>/dev/null) || return 0
  [[ -n "$p" ]] && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$1/server.properties" &&
    echo "$p"
  return 0
}
node_alive() { [[ -n "$(node_pid "$1")" ]]; }

# Starts the node whose folder is $1 unless it runs. A cluster that was
# stopped (no cluster.id) is not started again: `stop` removes cluster.id
# before it stops the nodes, so a restart racing with it (a test binary that
# died mid-restart, and its watchdog) kills its own node or has it killed.
start_node() {
  local nd=$1 cid
  cid=$(dirname "$nd")/cluster.id
  node_alive "$nd" && return 0
  [[ -f "$cid" ]] || die "the cluster in $(dirname "$nd") was stopped; start a new one"
  rm -f "$nd/pid"
  local cmd
  mapfile -d '' cmd < <(java_cmd "$nd")
  # The JVM's GC log (pauses, with wall-clock times to set beside a
  # benchmark's slow changes): DIR/nodeK/gc.log, a few small files at most.
  cmd=("${cmd[0]}" "-Xlog:gc:file=$nd/gc.log:time,uptime,level,tags:filecount=2,filesize=10m" "${cmd[@]:1}")
  # setsid: the node outlives this script and is not hit by the caller's Ctrl-C;
  # the shell writes its own pid, then becomes the broker (exec).
  setsid bash -c 'echo $$ >"$1/pid.tmp" && mv "$1/pid.tmp" "$1/pid"; shift; exec "$@"' _ "$nd" \
    "${cmd[@]}" kafka.Kafka "$nd/server.properties" >"$nd/stdout.log" 2>&1 </dev/null &
  local deadline=$((SECONDS + 10))
  until [[ -f "$nd/pid" ]] || ((SECONDS > deadline)); do sleep 0.02; done
  if [[ ! -f "$cid" ]]; then
    stop_node "$nd" KILL
    die "the cluster in $(dirname "$nd") was stopped while node $nd started"
  fi
}

bootstrap_of() { cat "$1/bootstrap"; }

# Waits until an acks=all produce to a probe topic succeeds (every node of the
# cluster is up: with three nodes the probe topic needs two in sync replicas).
wait_ready() {
  local dir=$1 deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120}))
  local b
  b=$(bootstrap_of "$dir")
  while ((SECONDS < deadline)); do
    for nd in "$dir"/node*; do
      node_alive "$nd" || { tail -30 "$nd/server.log" "$nd/stdout.log" >&2 2>/dev/null; die "node $nd exited while starting (logs above)"; }
    done
    if echo ready | timeout 20 kcat -P -b "$b" -t __datatunnel_probe -X acks=all -X message.timeout.ms=8000 \
         -X topic.metadata.refresh.interval.ms=200 >/dev/null 2>&1 &&
       [[ $(timeout 20 kcat -L -b "$b" -J 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["brokers"]))' 2>/dev/null) == "$(ls -d "$dir"/node* | wc -l)" ]]; then
      return 0
    fi
    sleep 0.3
  done
  die "the cluster in $dir did not accept produce requests within ${KAFKA_START_TIMEOUT:-120} s (see $dir/node*/server.log)"
}

make_tls() {
  local tls=$1 n=$2
  mkdir -p "$tls"
  (
    cd "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=datatunnel-test-ca" \
      -keyout ca.key -out ca.pem >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout broker.key -out broker.csr >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile san.ext -out broker.pem >/dev/null 2>&1
  ) || die "openssl could not make the test certificates in $tls"
}

cmd_start() {
  local dir=$1 nodes=$2 partitions=$3 sasl=$4
  fetch
  command -v kcat >/dev/null || die "kcat not found; run scripts/install-deps.sh"
  mkdir -p "$dir"
  dir=$(realpath "$dir")
  [[ -f "$dir/cluster.id" ]] && die "$dir already holds a cluster; stop it first (kafka.sh stop --dir $dir) or use another --dir"
  jvm_opts=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20)
  [[ $quick == 1 ]] && jvm_opts=(-XX:+UseSerialGC -XX:TieredStopAtLevel=1)
  printf '%s\n' "${jvm_opts[@]}" >"$dir/jvm.opts"
  local rf=$nodes isr=1
  ((nodes >= 3)) && rf=3 isr=2
  local voters="" ports=() cports=() sports=() i
  for ((i = 1; i <= nodes; i++)); do
    ports[i]=$(free_port); cports[i]=$(free_port); sports[i]=$(free_port)
    voters+="${voters:+,}$i@127.0.0.1:${cports[i]}"
  done
  local cid
  cid=$(cd /tmp && run_java "$dir" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
  [[ -n "$cid" ]] || die "kafka.tools.StorageTool random-uuid failed (is java 17 installed?)"
  echo "$cid" >"$dir/cluster.id"
  local bootstrap="" sasl_bootstrap=""
  [[ $sasl == 1 ]] && make_tls "$dir/tls" "$nodes"
  for ((i = 1; i <= nodes; i++)); do
    local nd=$dir/node$i
    mkdir -p "$nd/data"
    local listeners="PLAINTEXT://127.0.0.1:${ports[i]},CONTROLLER://127.0.0.1:${cports[i]}"
    local advertised="PLAINTEXT://127.0.0.1:${ports[i]}"
    local protomap="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if [[ $sasl == 1 ]]; then
      listeners+=",SASL_SSL://127.0.0.1:${sports[i]}"
      advertised+=",SASL_SSL://127.0.0.1:${sports[i]}"
      protomap+=",SASL_SSL:SASL_SSL"
    fi
    cat >"$nd/server.properties" <<EOF
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protomap
log.dirs=$nd/data
num.partitions=$partitions
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
auto.create.topics.enable=true
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
log.retention.check.interval.ms=1000
log.initial.task.delay.ms=1000
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
num.network.threads=2
num.io.threads=4
num.replica.fetchers=1
log.flush.interval.messages=9223372036854775807
EOF
    local kv
    for kv in "${settings[@]}"; do echo "$kv" >>"$nd/server.properties"; done
    if [[ $sasl == 1 ]]; then
      cat >>"$nd/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_datatunnel="datatunnel-secret";
ssl.keystore.type=PEM
ssl.keystore.location=$dir/tls/broker.keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$dir/tls/ca.pem
EOF
      cat "$dir/tls/broker.key" "$dir/tls/broker.pem" >"$dir/tls/broker.keystore.pem"
    fi
    local scram=()
    [[ $sasl == 1 ]] && scram=(--add-scram 'SCRAM-SHA-512=[name=datatunnel,password=datatunnel-secret]')
    (cd /tmp && run_java "$nd" kafka.tools.StorageTool format -t "$cid" -c "$nd/server.properties" "${scram[@]}" \
      >"$nd/format.log" 2>&1) || { cat "$nd/format.log" >&2; die "formatting the storage of node $i failed"; }
    bootstrap+="${bootstrap:+,}127.0.0.1:${ports[i]}"
    sasl_bootstrap+="${sasl_bootstrap:+,}127.0.0.1:${sports[i]}"
  done
  echo "$bootstrap" >"$dir/bootstrap"
  for ((i = 1; i <= nodes; i++)); do start_node "$dir/node$i"; done
  if [[ -n "$owner" ]]; then
    # The watchdog: stop every node once the owner is gone.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [[ -f "$2/cluster.id" ]]; do sleep 1; done
                    [[ -f "$2/cluster.id" ]] && exec "$3" stop --dir "$2"' _ "$owner" "$dir" "$(realpath "$0")" \
      >/dev/null 2>&1 </dev/null &
  fi
  wait_ready "$dir"
  if [[ $sasl == 1 ]]; then
    echo "$bootstrap $sasl_bootstrap $dir/tls/ca.pem"
  else
    echo "$bootstrap"
  fi
}

stop_node() {
  local nd=$1 sig=${2:-TERM} p
  p=$(node_pid "$nd")
  [[ -n "$p" ]] || return 0
  kill -CONT "$p" 2>/dev/null || true
  kill -"$sig" "$p" 2>/dev/null || true
  # Wait for it to go (a clean shutdown moves leadership away first). When
  # every node stops at once, the last ones cannot shut down cleanly (the
  # controller quorum is gone) and wait for this deadline: keep it short,
  # the data is thrown away.
  local deadline=$((SECONDS + 10))
  while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
  rm -f "$nd/pid"
}

cmd_stop() {
  local dir=$1 nd
  [[ -d "$dir" ]] || return 0
  rm -f "$dir/cluster.id"  # first: see start_node
  for nd in "$dir"/node*; do [[ -d "$nd" ]] && stop_node "$nd" TERM & done
  wait
}

node_dir() {
  local dir=$1 node=$2
  [[ -d "$dir/node$node" ]] || die "no node $node in $dir"
  echo "$dir/node$node"
}

# Compiles scripts/KafkaAdmin.java once per source version into the cache
# (javac of the Java runtime's jdk.compiler module: no JDK needed); prints the
# classes' folder.
admin_classes() {
  local src
  src=$(dirname "$(realpath "$0")")/KafkaAdmin.java
  local out
  out=$cache/admin-$(sha1sum "$src" | cut -c1-12)
  if [[ ! -f "$out/KafkaAdmin.class" ]]; then
    local tmp
    tmp=$(mktemp -d "$cache/admin.tmp.XXXXXX")
    local jars
    jars=$(printf '%s:' "$cache"/libs/*.jar)  # javac does not expand "libs/*"
    java -m jdk.compiler/com.sun.tools.javac.Main -nowarn -cp "$jars" -d "$tmp" "$src" >&2 ||
      { rm -rf "$tmp"; die "compiling $src failed"; }
    # Another caller may have won the race: either copy will do.
    mv -T "$tmp" "$out" 2>/dev/null || rm -rf "$tmp"
  fi
  echo "$out"
}

cmd_create_topic() {
  local dir=$1 topic=$2 partitions=$3
  [[ $partitions =~ ^[1-9][0-9]*$ ]] || die "create-topic: PARTITIONS must be a positive number, not $partitions"
  [[ -f "$dir/bootstrap" ]] || die "no cluster in $dir"
  fetch
  local classes
  classes=$(admin_classes)
  # The client logs to DIR/admin/server.log (the nodes' log4j2 configuration).
  mkdir -p "$dir/admin"
  java -Xmx256m -XX:TieredStopAtLevel=1 -Djava.awt.headless=true -Dkafka.logs.dir="$dir/admin" \
    -Dlog4j2.configurationFile="$cache/log4j2.properties" -cp "$cache/libs/*:$classes" \
    KafkaAdmin create-topic "$(bootstrap_of "$dir")" "$topic" "$partitions" "${settings[@]}"
}

# Waits until the cluster is whole again after faults: wait_ready, then no
# partition of any topic has fewer in-sync replicas than replicas.
cmd_ready() {
  local dir=$1 deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120}))
  wait_ready "$dir"
  local b
  b=$(bootstrap_of "$dir")
  while ((SECONDS < deadline)); do
    if timeout 20 kcat -L -b "$b" -J 2>/dev/null | python3 -c '
import json, sys
md = json.load(sys.stdin)
short = [p for t in md["topics"] for p in t.get("partitions", [])
         if len(p.get("isrs", [])) < len(p.get("replicas", []))]
sys.exit(1 if short or not md["topics"] else 0)'; then
      return 0
    fi
    sleep 0.3
  done
  die "partitions of the cluster in $dir still lack in-sync replicas after ${KAFKA_START_TIMEOUT:-120} s (see $dir/node*/server.log)"
}

# The folders of NODE (1..N, or "all") in $1.
nodes_of() {
  local dir=$1 node=$2
  if [[ $node == all ]]; then
    ls -d "$dir"/node*
  else
    node_dir "$dir" "$node"
  fi
}

cmd_kill() {
  local nds nd
  nds=$(nodes_of "$1" "$2")
  for nd in $nds; do stop_node "$nd" KILL & done
  wait
}

cmd_restart() {
  local nds nd
  nds=$(nodes_of "$1" "$2")
  cmd_kill "$1" "$2"
  for nd in $nds; do start_node "$nd"; done
}

cmd_leader() {
  local dir=$1 topic=$2 partition=$3
  timeout 20 kcat -L -b "$(bootstrap_of "$dir")" -t "$topic" -J 2>/dev/null | python3 -c '
import json, sys
md = json.load(sys.stdin)
for t in md["topics"]:
    for p in t.get("partitions", []):
        if p["partition"] == int(sys.argv[1]) and p.get("leader", -1) >= 0:
            print(p["leader"]); sys.exit(0)
sys.exit(1)' "$partition" || die "no leader known for $topic [$partition]"
}

cmd=${1:-}
[[ -n "$cmd" ]] || usage
shift
dir="" nodes=1 partitions=${KAFKA_PARTITIONS:-4} sasl=0 owner="" quick=0 rest=() settings=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir=${2:?--dir needs a folder}; shift 2 ;;
    --nodes) nodes=${2:?--nodes needs a number}; shift 2 ;;
    --partitions) partitions=${2:?--partitions needs a number}; shift 2 ;;
    --sasl-ssl) sasl=1; shift ;;
    --set) [[ ${2:-} == *=* ]] || die "--set takes KEY=VALUE"; settings+=("$2"); shift 2 ;;
    --owner) owner=${2:?--owner needs a pid}; shift 2 ;;
    --quick-start) quick=1; shift ;;
    -h | --help) usage ;;
    *) rest+=("$1"); shift ;;
  esac
done
[[ $nodes =~ ^[1-9]$ ]] || die "--nodes takes 1 to 9, not $nodes"
# One spelling of the folder, the one the nodes' command lines use (node_pid).
[[ -n "$dir" ]] && dir=$(realpath -m "$dir")
# The JVM options the cluster was started with (see --quick-start).
jvm_opts=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20)
[[ -n "$dir" && -f "$dir/jvm.opts" ]] && mapfile -t jvm_opts <"$dir/jvm.opts"

case "$cmd" in
  fetch) fetch ;;
  cached) [[ -f "$cache/complete" ]] ;;
  version) echo "$KAFKA_VERSION" ;;
  start) [[ -n "$dir" ]] || usage; cmd_start "$dir" "$nodes" "$partitions" "$sasl" ;;
  stop) [[ -n "$dir" ]] || usage; cmd_stop "$dir" ;;
  bootstrap) [[ -n "$dir" ]] || usage; bootstrap_of "$dir" ;;
  kill) [[ -n "$dir" && ${#rest[@]} -eq 1 ]] || usage; cmd_kill "$dir" "${rest[0]}" ;;
  restart) [[ -n "$dir" && ${#rest[@]} -eq 1 ]] || usage; cmd_restart "$dir" "${rest[0]}" ;;
  ready) [[ -n "$dir" ]] || usage; cmd_ready "$dir" ;;
  pause | resume)
    [[ -n "$dir" && ${#rest[@]} -eq 1 ]] || usage
    p=$(node_pid "$(node_dir "$dir" "${rest[0]}")")
    [[ -n "$p" ]] || die "node ${rest[0]} is not running"
    kill -"$([[ $cmd == pause ]] && echo STOP || echo CONT)" "$p"
    ;;
  leader) [[ -n "$dir" && ${#rest[@]} -eq 2 ]] || usage; cmd_leader "$dir" "${rest[0]}" "${rest[1]}" ;;
  create-topic)
    [[ -n "$dir" && ${#rest[@]} -eq 2 ]] || usage
    cmd_create_topic "$(realpath -m "$dir")" "${rest[0]}" "${rest[1]}"
    ;;
  *) echo "kafka.sh: unknown command \"$cmd\"" >&2; usage ;;
esac
