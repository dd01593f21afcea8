#!/usr/bin/env bash
# The benchmarks (bench/README.md): datatunnel through a real Apache Kafka
# broker, with --broker none, and PostgreSQL's own logical replication (plus a
# COPY pipe for bulk copy), one after another in the same run, on servers this
# script starts.
#
#   bench/run.sh [--quick] [--only S,...] [--variants V,...] [--runs N] [--name NAME]
#
#   --quick        small sizes, one run each: everything in a few minutes
#   --only         scenarios: source,latency,burst,backlog,snapshot,many,bigtx (default: all)
#   --variants     kafka (run through the Kafka broker), none (run --broker none), both
#                  in the default pipeline.apply_consistency ("transaction"),
#                  kafka-key, none-key (the same with apply_consistency = "key";
#                  latency, burst, backlog and bigtx), kafka-tx, none-tx (with
#                  "transaction" named explicitly: as kafka and none today),
#                  split (separate produce and consume processes through the broker),
#                  ref (logical replication; for the snapshot also the COPY pipe),
#                  copy (the snapshot's COPY pipe alone, for focused snapshot runs),
#                  debezium (Debezium's PostgreSQL connector -> the same broker -> Debezium's
#                  JDBC sink connector in one Kafka Connect worker; latency, burst and backlog;
#                  scripts/debezium.sh; every setting is in debezium_connectors below)
#                  default: kafka,kafka-key,none,ref
#   --runs N       repetitions (default 3; 1 with --quick)
#   --name NAME    results file name (default: the date, "-quick" appended with --quick)
#
# Environment: DATATUNNEL_BIN (default build/datatunnel), LOADGEN_BIN (default
# build/bench/loadgen), BENCH_WORK (bench/work), BENCH_PORT1/BENCH_PORT2
# (25433/25434, outside the ephemeral port range the tests draw from), BENCH_PARTITIONS (8,
# the partitions of each topic), BENCH_BACKLOG_PARTITIONS (BENCH_PARTITIONS: the backlog and
# snapshot scenarios' topics), BENCH_RESULTS (bench/results), BENCH_GIT_REV (the commit the binary was built from),
# BENCH_TUNNEL_ARGS (extra global options for the tunnel processes, for experiments,
# e.g. "--set pipeline.batch_max_wait_ms=5"), BENCH_LAT_RATES / BENCH_LAT_SECONDS (the
# latency scenario's rates and seconds per rate, for experiments: "5000", 20), BENCH_KAFKA_DIR
# (for experiments: the folder of a cluster already started with scripts/kafka.sh, used
# instead of starting one, and left running), BENCH_KAFKA_WARMUP (seconds of traffic
# to a started broker before the first measurement: 120, 20 with --quick; 0 for none).
# The broker: one single-node KRaft cluster (scripts/kafka.sh, data and logs in
# BENCH_WORK/kafka) for the whole invocation, started when a variant first
# needs it; each measured case gets its own topic and consumer group.
# Everything it starts is stopped on exit, also on failure or Ctrl-C.
# DEBEZIUM_HEAP (512m): the Kafka Connect worker's heap (the debezium variant).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

QUICK=0
ONLY="source,latency,burst,backlog,snapshot,many,bigtx"
VARIANTS="kafka,kafka-key,none,ref"
RUNS=""
NAME=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY=$2; shift ;;
    --variants) VARIANTS=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --name) NAME=$2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

DT=$(realpath -m "${DATATUNNEL_BIN:-build/datatunnel}")
LOADGEN=$(realpath -m "${LOADGEN_BIN:-build/bench/loadgen}")
WORK=$(realpath -m "${BENCH_WORK:-bench/work}")
RESULTS=$(realpath -m "${BENCH_RESULTS:-bench/results}")
P1=${BENCH_PORT1:-25433}
P2=${BENCH_PORT2:-25434}
PARTITIONS=${BENCH_PARTITIONS:-8}
# 64 partitions (the mock broker's workaround) doubled the real broker's CPU and
# the snapshot's time against 8 (bench/README.md, findings).
BACKLOG_PARTITIONS=${BENCH_BACKLOG_PARTITIONS:-$PARTITIONS}
KAFKA_DIR=$(realpath -m "${BENCH_KAFKA_DIR:-$WORK/kafka}")
KAFKA_OWNED=1
[[ -n ${BENCH_KAFKA_DIR:-} ]] && KAFKA_OWNED=0
for b in "$DT" "$LOADGEN"; do
  [[ -x "$b" ]] || { echo "run.sh: $b not found: build first (make build, or set DATATUNNEL_BIN / LOADGEN_BIN)" >&2; exit 2; }
done
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
export PATH="$PG_BIN:$PATH"

if [[ $QUICK == 1 ]]; then
  RUNS=${RUNS:-1}
  LAT_RATES=${BENCH_LAT_RATES:-"100 1000 5000"}; LAT_SECONDS=${BENCH_LAT_SECONDS:-2}; LAT_PRELOAD=100000
  BURST=10000; BURST_PRELOAD=100000
  BACKLOG=100000; BACKLOG_PRELOAD=100000
  SNAP_ROWS=100000
  SRC_SECONDS=3; SRC_PAIRS=1; SRC_BULK=100000
  NAME=${NAME:-$(date +%F)-quick}
else
  RUNS=${RUNS:-3}
  LAT_RATES=${BENCH_LAT_RATES:-"100 1000 5000"}; LAT_SECONDS=${BENCH_LAT_SECONDS:-30}; LAT_PRELOAD=100000
  BURST=200000; BURST_PRELOAD=100000
  BACKLOG=1000000; BACKLOG_PRELOAD=1000000
  SNAP_ROWS=1000000
  SRC_SECONDS=10; SRC_PAIRS=3; SRC_BULK=${BENCH_SRC_BULK:-1000000}
  NAME=${NAME:-$(date +%F)}
fi
BURST_WRITERS=8; BURST_TXN=10
# many: one tunnel over 1 and over MANY_TABLES tables (BENCH_MANY_TABLES, 500).
MANY_TABLES=${BENCH_MANY_TABLES:-500}
if [[ $QUICK == 1 ]]; then MANY_IDLE=5; MANY_LAT=5; else MANY_IDLE=10; MANY_LAT=20; fi
MANY_RATE=1000; MANY_PRELOAD=50000
MANY_WARM_TUNNEL=${BENCH_MANY_WARM_TUNNEL:-1}
# bigtx: one transaction of BIGTX rows (BENCH_BIGTX_ROWS) on a caught-up tunnel.
if [[ $QUICK == 1 ]]; then BIGTX=${BENCH_BIGTX_ROWS:-100000}; else BIGTX=${BENCH_BIGTX_ROWS:-1000000}; fi
BIGTX_PRELOAD=100000
METRICS_PORT=${BENCH_METRICS_PORT:-25435}
SRC_CLIENTS=8; SRC_ROWS=100000

has() { [[ ",$1," == *",$2,"* ]]; }
log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

OUT="$WORK/out"      # raw results of this invocation
RUN="$WORK/run"      # the current measurement's scratch files
rm -rf "$OUT" "$RUN"
mkdir -p "$OUT" "$RUN" "$RESULTS"
RAW="$OUT/raw.csv"
echo "scenario,case,variant,run,metric,value" >"$RAW"
emit() { echo "$1,$2,$3,$4,$5,$6" >>"$RAW"; }

# ---- processes and clean-up ---------------------------------------------------

PIDS=()
NOISE_PID=""
cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}" $NOISE_PID; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}" $NOISE_PID; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  scripts/debezium.sh stop --dir "$WORK/connect" >/dev/null 2>&1
  drop_subscription
  [[ $KAFKA_OWNED == 1 ]] && scripts/kafka.sh stop --dir "$KAFKA_DIR" >/dev/null 2>&1
  scripts/pg.sh stop "$WORK/pg1" >/dev/null 2>&1
  scripts/pg.sh stop "$WORK/pg2" >/dev/null 2>&1
  [[ $rc -ne 0 ]] && log "run.sh: stopped (exit $rc); servers and processes cleaned up; logs in $WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a background process; its pid is in $BG.
bg() {
  "$@" &
  BG=$!
  PIDS+=("$BG")
}
# Waits for the sampler; stops it early (failing) if a tunnel process exited.
wait_sampler() {
  local sampler=$1 p
  while kill -0 "$sampler" 2>/dev/null; do
    for p in "${TUNNEL_PIDS[@]}"; do
      if ! kill -0 "$p" 2>/dev/null; then
        kill -TERM "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        return 1
      fi
    done
    sleep 0.2
  done
  wait "$sampler"
}
# Stops a background process gracefully (SIGTERM, then SIGKILL after 20 s).
stop_bg() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=()
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# ---- PostgreSQL ---------------------------------------------------------------

PSQL=(psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -Atq)
q1() { local db=$1; shift; "${PSQL[@]}" -p "$P1" -d "$db" -c "$*"; }
q2() { local db=$1; shift; "${PSQL[@]}" -p "$P2" -d "$db" -c "$*"; }
qs() { local s=$1; shift; if [[ $s == 1 ]]; then q1 "$@"; else q2 "$@"; fi; }
fs() { local s=$1 db=$2; shift 2; local port=$P1; [[ $s == 2 ]] && port=$P2; "${PSQL[@]}" -p "$port" -d "$db" "$@"; }

start_servers() {
  scripts/pg.sh stop "$WORK/pg1" >/dev/null 2>&1 || true
  scripts/pg.sh stop "$WORK/pg2" >/dev/null 2>&1 || true
  rm -rf "$WORK/pg1" "$WORK/pg2"
  # wal_level=logical on both for every variant, so the comparison is fair.
  PG_WAL_LEVEL=logical scripts/pg.sh start "$WORK/pg1" "$P1"
  PG_WAL_LEVEL=logical scripts/pg.sh start "$WORK/pg2" "$P2"
}

# tpl_<flavor>_<rows>: t = the brief's table (tunnel), r = with a primary key
# (reference). A table with rows gets a unique index on emp_id (t) or has its
# primary key (r): the workload updates and deletes by emp_id.
ensure_template() {
  local s=$1 flavor=$2 rows=$3 db="tpl_$2_$3"
  [[ $(qs "$s" postgres "SELECT count(*) FROM pg_database WHERE datname = '$db'") == 1 ]] && return 0
  log "building template $db on server $s"
  qs "$s" postgres "CREATE DATABASE $db"
  if [[ $flavor == t ]]; then fs "$s" "$db" -f bench/sql/schema_tunnel.sql; else fs "$s" "$db" -f bench/sql/schema_reference.sql; fi
  if [[ $rows -gt 0 ]]; then
    fs "$s" "$db" -v rows="$rows" -f bench/sql/fill_rows.sql
    [[ $flavor == t ]] && qs "$s" "$db" "CREATE UNIQUE INDEX employees_emp_id_key ON employees (emp_id)"
  fi
  qs "$s" "$db" "VACUUM ANALYZE employees"
  qs "$s" postgres "CHECKPOINT"
}

drop_subscription() {
  if [[ $(q2 postgres "SELECT count(*) FROM pg_database WHERE datname = 'b2'" 2>/dev/null) == 1 ]]; then
    q2 b2 "DROP SUBSCRIPTION IF EXISTS bench_sub" >/dev/null 2>&1 || {
      q2 b2 "ALTER SUBSCRIPTION bench_sub DISABLE" >/dev/null 2>&1
      q2 b2 "ALTER SUBSCRIPTION bench_sub SET (slot_name = NONE)" >/dev/null 2>&1
      q2 b2 "DROP SUBSCRIPTION IF EXISTS bench_sub" >/dev/null 2>&1
    }
  fi
  q1 postgres "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active" >/dev/null 2>&1 || true
}

# Fresh b1 (source) and b2 (target) from templates.
fresh_dbs() {
  local src=$1 tgt=$2
  drop_subscription
  q1 postgres "DROP DATABASE IF EXISTS b1 WITH (FORCE)"
  q2 postgres "DROP DATABASE IF EXISTS b2 WITH (FORCE)"
  q1 postgres "CREATE DATABASE b1 TEMPLATE $src"
  q2 postgres "CREATE DATABASE b2 TEMPLATE $tgt"
}

DSN1="postgresql://postgres@127.0.0.1:$P1/b1"
DSN2="postgresql://postgres@127.0.0.1:$P2/b2"
SUB_CONN="host=127.0.0.1 port=$P1 user=postgres dbname=b1 application_name=bench_sub"
progress_query="SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM bench_progress"

# ---- the tunnel ---------------------------------------------------------------

# write_config BROKERS [PREFIX]: the tunnel's configuration; PREFIX names the
# case's topic (PREFIX.public.employees) and consumer group.
write_config() {
  cat >"$RUN/datatunnel.toml" <<EOF
[source]
dsn = "$DSN1"
[target]
dsn = "$DSN2"
[kafka]
brokers = "$1"
topic_prefix = "${2:-datatunnel}"
group_id = "${2:-datatunnel}"
[[tables]]
source = "public.employees"
key = ["emp_id"]
EOF
}

# The invocation's one Kafka broker, started on first use (its JVM takes 10 s
# or more to start here): a single KRaft node, replication factor 1, with
# scripts/kafka.sh's settings. --owner stops it even if this script is killed.
BROKERS=""
BROKER_JVM=""
KAFKA_VERSION=""
ensure_kafka() {
  [[ -n "$BROKERS" ]] && return 0
  if [[ $KAFKA_OWNED == 1 ]]; then
    scripts/kafka.sh stop --dir "$KAFKA_DIR" >/dev/null 2>&1 || true
    rm -rf "$KAFKA_DIR"
    log "starting the Kafka broker (scripts/kafka.sh, one KRaft node) in $KAFKA_DIR"
    BROKERS=$(scripts/kafka.sh start --dir "$KAFKA_DIR" --owner $$ --partitions "$PARTITIONS" \
      2>"$WORK/kafka-start.log") || die "the Kafka broker did not start: $(tail -5 "$WORK/kafka-start.log")"
  else
    BROKERS=$(scripts/kafka.sh bootstrap --dir "$KAFKA_DIR") || die "no cluster in BENCH_KAFKA_DIR=$KAFKA_DIR"
  fi
  BROKER_JVM=$(cat "$KAFKA_DIR/node1/pid")
  kill -0 "$BROKER_JVM" 2>/dev/null || die "the Kafka broker in $KAFKA_DIR does not run"
  KAFKA_VERSION=$(sed -n 's/.*Kafka version: \([^ ]*\).*/\1/p' "$KAFKA_DIR/node1/server.log" | head -1)
  log "broker at $BROKERS (Apache Kafka ${KAFKA_VERSION:-?}, pid $BROKER_JVM)"
  [[ $KAFKA_OWNED == 1 ]] && warm_kafka
  return 0
}

# A broker that has just started runs its code in the JVM's interpreter and
# compiles it as it goes, on the same two cores: the first measurement after
# the start paid for that (bench/README.md, findings). Before the first
# measurement the broker therefore gets BENCH_KAFKA_WARMUP seconds (120, 20
# with --quick; 0: none; its produce round trips kept shrinking for about two
# minutes of traffic) of traffic like the tunnel's: small produce requests (acks=all, idempotent,
# lz4, linger 0) of envelope-sized messages, fetched by a consumer group that
# commits its offsets.
warm_kafka() {
  local secs=${BENCH_KAFKA_WARMUP:-$((QUICK == 1 ? 20 : 120))} topic="bench-$RUN_ID-warmup"
  [[ $secs -gt 0 ]] || return 0
  log "warming the broker up for $secs s"
  scripts/kafka.sh create-topic --dir "$KAFKA_DIR" "$topic" "$PARTITIONS" >"$WORK/kafka-warmup.log" 2>&1 ||
    die "creating the warm-up topic: $(tail -3 "$WORK/kafka-warmup.log")"
  timeout "$((secs + 5))" kcat -C -q -b "$BROKERS" -G "$topic" -X fetch.wait.max.ms=10 \
    -X auto.offset.reset=earliest "$topic" >/dev/null 2>>"$WORK/kafka-warmup.log" &
  local consumer=$!
  PIDS+=("$consumer")
  local pad
  pad=$(printf '%0180d' 0)
  # About 2,000 messages a second in bursts of 10. In the background and
  # waited for, so that Ctrl-C stops the script at once (kcat exits normally
  # on SIGINT, which bash takes for a foreground command that handled it).
  timeout "$secs" bash -c 'for ((i = 0; ; i++)); do
      for j in 0 1 2 3 4 5 6 7 8 9; do echo "{\"op\":\"u\",\"key\":$i$j,\"v\":\"$1\"}"; done
      sleep 0.005
    done' _ "$pad" |
    kcat -P -q -b "$BROKERS" -t "$topic" -X acks=all -X enable.idempotence=true \
      -X compression.codec=lz4 -X linger.ms=0 2>>"$WORK/kafka-warmup.log" &
  local producer=$!
  PIDS+=("$producer")
  wait "$producer" 2>/dev/null || true
  wait "$consumer" 2>/dev/null || true
  stop_bg "$producer"
  stop_bg "$consumer"
}

# The broker JVM's user+system CPU seconds so far (all its threads).
broker_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$BROKER_JVM/stat"
}

# start_broker [PARTITIONS]: a fresh topic (PARTITIONS partitions, default
# BENCH_PARTITIONS) and consumer group on the broker for one measured case,
# so that no case sees another's messages or committed offsets; writes the
# configuration naming them.
BROKER_CASES=0
RUN_ID=$(date +%s)  # topic names stay unique on a broker shared across invocations
IN_BROKER_CASE=0
BROKER_CPU0=0
start_broker() {
  local partitions=${1:-$PARTITIONS}
  ensure_kafka
  BROKER_CASES=$((BROKER_CASES + 1))
  local prefix="bench-$RUN_ID-$BROKER_CASES"
  scripts/kafka.sh create-topic --dir "$KAFKA_DIR" "$prefix.public.employees" "$partitions" \
    >"$RUN/create-topic.log" 2>&1 || die "creating topic $prefix.public.employees: $(tail -3 "$RUN/create-topic.log")"
  write_config "$BROKERS" "$prefix"
  BROKER_PREFIX=$prefix
  BROKER_CPU0=$(broker_cpu)
  IN_BROKER_CASE=1
}

# stop_broker SCENARIO CASE VARIANT RUN: ends the case on the broker (which
# keeps running); emits the broker's CPU seconds during the case and its peak
# RSS so far (a JVM's; not a tunnel process, so outside the memory target).
stop_broker() {
  [[ $IN_BROKER_CASE == 1 ]] || return 0
  IN_BROKER_CASE=0
  local sc=$1 case=$2 v=$3 run=$4
  if ! kill -0 "$BROKER_JVM" 2>/dev/null; then
    emit "$sc" "$case" "$v" "$run" early_exit_broker 1
    die "the Kafka broker exited during the measurement (logs in $KAFKA_DIR/node1)"
  fi
  local kb
  kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$BROKER_JVM/status")
  emit "$sc" "$case" "$v" "$run" rss_mb_broker "$(awk -v k="$kb" 'BEGIN{printf "%.1f", k/1024}')"
  emit "$sc" "$case" "$v" "$run" cpu_s_broker \
    "$(awk -v a="$BROKER_CPU0" -v b="$(broker_cpu)" 'BEGIN{printf "%.2f", b-a}')"
}

dt() { "$DT" -c "$RUN/datatunnel.toml" "$@"; }

TUNNEL_PIDS=()
TUNNEL_NAMES=()
# Starts the tunnel processes of a variant (start_broker first for kafka and split).
start_tunnel() {
  local v=$1
  TUNNEL_PIDS=(); TUNNEL_NAMES=()
  local cmds=() extra="${BENCH_TUNNEL_ARGS:-} ${TUNNEL_EXTRA:-}"
  case "$v" in
    kafka | kafka-tx | kafka-key) cmds=("run:run --no-snapshot") ;;
    none | none-tx | none-key) cmds=("run:run --no-snapshot --broker none") ;;
    split) cmds=("consume:consume" "produce:produce") ;;
  esac
  [[ $v == *-tx ]] && extra+=" --set pipeline.apply_consistency=transaction"
  [[ $v == *-key ]] && extra+=" --set pipeline.apply_consistency=key"
  for c in "${cmds[@]}"; do
    local name=${c%%:*} args=${c#*:}
    rm -f "$RUN/rusage-$name"
    # shellcheck disable=SC2086
    bg "$LOADGEN" wrap --report "$RUN/rusage-$name" -- "$DT" -c "$RUN/datatunnel.toml" $extra $args \
      >>"$RUN/tunnel-$name.log" 2>&1 </dev/null
    TUNNEL_PIDS+=("$BG"); TUNNEL_NAMES+=("$name")
  done
}

# Stops the tunnel processes; emits each one's peak RSS and CPU seconds.
stop_tunnel() {
  local sc=$1 case=$2 v=$3 run=$4 i max=0
  for i in "${!TUNNEL_PIDS[@]}"; do
    local name=${TUNNEL_NAMES[$i]}
    if ! kill -0 "${TUNNEL_PIDS[$i]}" 2>/dev/null; then
      log "tunnel process $name had already exited: $(tail -3 "$RUN/tunnel-$name.log")"
      emit "$sc" "$case" "$v" "$run" "early_exit_$name" 1
    fi
    stop_bg "${TUNNEL_PIDS[$i]}"
    report_rusage "$sc" "$case" "$v" "$run" "$name"
  done
  TUNNEL_PIDS=(); TUNNEL_NAMES=()
}

# Emits the peak RSS (MB) and CPU seconds of a wrapped process.
report_rusage() {
  local sc=$1 case=$2 v=$3 run=$4 name=$5 f="$RUN/rusage-$5"
  [[ -s $f ]] || { log "no resource report for $name"; return 0; }
  local kb cpu
  kb=$(sed -n 's/.*maxrss_kb=\([0-9]*\).*/\1/p' "$f")
  cpu=$(awk '{for(i=1;i<=NF;i++){split($i,a,"=");v[a[1]]=a[2]}} END{printf "%.2f", v["user_s"]+v["sys_s"]}' "$f")
  emit "$sc" "$case" "$v" "$run" "rss_mb_$name" "$(awk -v k="$kb" 'BEGIN{printf "%.1f", k/1024}')"
  emit "$sc" "$case" "$v" "$run" "cpu_s_$name" "$cpu"
}

# ---- Debezium (the debezium variant) ------------------------------------------

# The variant's two connectors for the case's topic ($BROKER_PREFIX.public.employees,
# created by start_broker), tuned for throughput as Debezium's documentation
# advises; each setting with its reason.
debezium_connectors() {
  cat >"$RUN/dbz-source.properties" <<EOF
name=bench-source
connector.class=io.debezium.connector.postgresql.PostgresConnector
# One task: the PostgreSQL connector reads its one slot with one task.
tasks.max=1
database.hostname=127.0.0.1
database.port=$P1
database.user=postgres
database.password=unused
database.dbname=b1
topic.prefix=$BROKER_PREFIX
table.include.list=public.employees
# pgoutput: PostgreSQL's built-in decoding plugin (no extension).
plugin.name=pgoutput
slot.name=bench_dbz
publication.name=bench_dbz
publication.autocreate.mode=filtered
# Stream scenarios: both sides start with the same rows (as logical
# replication's copy_data = false). The snapshot scenario: Debezium's initial
# snapshot of the table, then the stream (DBZ_SNAPSHOT=1).
snapshot.mode=$([[ ${DBZ_SNAPSHOT:-0} == 1 ]] && echo initial || echo no_data)
# The snapshot reads the table with a cursor of 10,240 rows a fetch (Debezium's
# default, kept: larger fetches did not pay in Debezium's own tuning advice,
# the queue below is what bounds it); one table, so one snapshot thread
# (snapshot.max.threads only splits work between tables).
snapshot.fetch.size=10240
snapshot.max.threads=1
# Larger batches and queue than the defaults (2048 and 8192), Debezium's advice
# for throughput; the queue is polled every 50 ms instead of 500 ms, so that a
# quiet stream is not held back (the latency scenario).
max.batch.size=8192
max.queue.size=32768
poll.interval.ms=50
# The producer batches and compresses like datatunnel's (lz4), with a short linger.
producer.override.linger.ms=5
producer.override.batch.size=1048576
producer.override.compression.type=lz4
EOF
  cat >"$RUN/dbz-sink.properties" <<EOF
name=bench-sink
connector.class=io.debezium.connector.jdbc.JdbcSinkConnector
# One task, as datatunnel runs one consumer.
tasks.max=1
topics=$BROKER_PREFIX.public.employees
connection.url=jdbc:postgresql://127.0.0.1:$P2/b2
connection.username=postgres
connection.password=unused
# Debezium's default pool: Hibernate's C3P0 provider (the 3.5 sink; see scripts/debezium.sh).
# Upserts (INSERT ... ON CONFLICT DO UPDATE), deletes applied, the key from the record key.
insert.mode=upsert
delete.enabled=true
primary.key.mode=record_key
primary.key.fields=emp_id
# The table exists on the target and is named like the source table.
schema.evolution=none
collection.name.format=\${source.table}
# Batching: up to 4096 records per batch (default 500), polled as many at a
# time, and the reduction buffer (one write per key per batch, as datatunnel's
# batches collapse per key).
batch.size=4096
use.reduction.buffer=true
consumer.override.max.poll.records=4096
consumer.override.fetch.max.bytes=52428800
EOF
}

CONNECT_PID=""
CONNECT_CPU0=0
jvm_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"; }
start_debezium() {
  scripts/debezium.sh start --dir "$WORK/connect" --bootstrap "$BROKERS" --owner $$ \
    --set connector.client.config.override.policy=All \
    "$RUN/dbz-source.properties" "$RUN/dbz-sink.properties" >/dev/null 2>"$RUN/debezium-start.log" ||
    die "Debezium did not start: $(tail -5 "$RUN/debezium-start.log"; tail -5 "$WORK/connect/connect.log")"
  CONNECT_PID=$(cat "$WORK/connect/pid")
  CONNECT_CPU0=$(jvm_cpu "$CONNECT_PID")
  TUNNEL_PIDS=("$CONNECT_PID"); TUNNEL_NAMES=(connect)
}

# stop_debezium [SCENARIO CASE VARIANT RUN]: stops the worker; with a case,
# emits its peak RSS (rss_mb_connect) and CPU seconds since start_debezium.
stop_debezium() {
  if [[ $# -ge 4 && -n "$CONNECT_PID" ]] && kill -0 "$CONNECT_PID" 2>/dev/null; then
    local kb
    kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$CONNECT_PID/status")
    emit "$1" "$2" "$3" "$4" rss_mb_connect "$(awk -v k="$kb" 'BEGIN{printf "%.1f", k/1024}')"
    emit "$1" "$2" "$3" "$4" cpu_s_connect \
      "$(awk -v a="$CONNECT_CPU0" -v b="$(jvm_cpu "$CONNECT_PID")" 'BEGIN{printf "%.2f", b-a}')"
  fi
  cp "$WORK/connect/connect.log" "$RUN/connect.log" 2>/dev/null || true
  scripts/debezium.sh stop --dir "$WORK/connect" >/dev/null 2>&1 || true
  CONNECT_PID=""
  TUNNEL_PIDS=(); TUNNEL_NAMES=()
}

# ---- one variant's stream: set up, warm up, tear down --------------------------

# Waits until a probe row written on the source is visible on the target.
warmup() {
  local id
  id=$(q1 b1 "INSERT INTO employees (first_name, last_name) VALUES ('probe', 'probe') RETURNING emp_id")
  for _ in $(seq 1 1200); do
    [[ $(q2 b2 "SELECT count(*) FROM employees WHERE emp_id = $id") == 1 ]] && return 0
    sleep 0.05
  done
  die "warm-up: probe row $id never reached the target ($(tail -3 "$RUN"/tunnel-*.log 2>/dev/null))"
}

# setup_stream VARIANT ROWS PROBE(log|progress|none) START(1|0): fresh databases with
# ROWS identical rows on both sides, the target probe, and the tunnel or the
# subscription (started when START is 1).
setup_stream() {
  local v=$1 rows=$2 probe=$3 start=${4:-1}
  rm -f "$RUN"/*
  if [[ $v == ref || $v == debezium ]]; then
    fresh_dbs "tpl_r_$rows" "tpl_r_$rows"
  else
    fresh_dbs "tpl_t_$rows" "tpl_t_$rows"
  fi
  [[ $probe == none ]] || fs 2 b2 -f "bench/sql/target_$probe.sql"
  if [[ $v == ref ]]; then
    q1 b1 "CREATE PUBLICATION bench_pub FOR TABLE employees"
    q2 b2 "CREATE SUBSCRIPTION bench_sub CONNECTION '$SUB_CONN' PUBLICATION bench_pub WITH (copy_data = false)"
    warmup
    if [[ $start == 0 ]]; then
      q2 b2 "ALTER SUBSCRIPTION bench_sub DISABLE"
      for _ in $(seq 1 200); do
        [[ $(q1 postgres "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bench_sub' AND active") == 0 ]] && break
        sleep 0.05
      done
    fi
  elif [[ $v == debezium ]]; then
    scripts/debezium.sh stop --dir "$WORK/connect" >/dev/null 2>&1 || true
    rm -rf "$WORK/connect"  # no offsets of an earlier case
    start_broker
    debezium_connectors
    start_debezium
    warmup
    # A stopped worker keeps its slot (on the source) and offsets (DIR/offsets).
    if [[ $start == 0 ]]; then stop_debezium; fi
  else
    write_config none
    dt init >"$RUN/init.log" 2>&1 || die "datatunnel init: $(cat "$RUN/init.log")"
    if [[ $start == 1 ]]; then
      [[ $v != none* ]] && start_broker
      start_tunnel "$v"
      warmup
    fi
  fi
}

teardown_stream() {
  local sc=$1 case=$2 v=$3 run=$4
  if [[ $v == ref ]]; then
    drop_subscription
  elif [[ $v == debezium ]]; then
    stop_debezium "$sc" "$case" "$v" "$run"
    stop_broker "$sc" "$case" "$v" "$run"
    drop_subscription  # drops the connector's slot
  else
    stop_tunnel "$sc" "$case" "$v" "$run"
    stop_broker "$sc" "$case" "$v" "$run"
  fi
}

save_logs() { mkdir -p "$OUT/logs/$1"; cp "$RUN"/*.log "$OUT/logs/$1/" 2>/dev/null || true; }

kv() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }

# ---- scenarios ----------------------------------------------------------------

scenario_latency() {
  local run v rate i
  for run in $(seq 1 "$RUNS"); do
    for v in ${STREAM_VARIANTS}; do
      i=0
      local nrates; nrates=$(wc -w <<<"$LAT_RATES")
      local span=$((LAT_PRELOAD / nrates))
      # Every rate starts afresh (databases, topic, consumer group, tunnel),
      # so that no rate inherits the previous one's change-table bloat or
      # lag. --quick runs 2 s per rate: one setup for all.
      local fresh=1
      [[ $QUICK == 1 ]] && fresh=0
      for rate in $LAT_RATES; do
        if [[ $fresh == 1 || $i == 0 ]]; then
          log "latency: $v, run $run$([[ $fresh == 1 ]] && echo ", $rate/s")"
          setup_stream "$v" "$LAT_PRELOAD" log 1
        fi
        q2 b2 "TRUNCATE bench_log"
        emit latency "$rate/s" "$v" "$run" loadavg "$(cut -d' ' -f1 /proc/loadavg)"
        local out
        out=$("$LOADGEN" steady --dsn "$DSN1" --rate "$rate" --seconds "$LAT_SECONDS" --preload "$LAT_PRELOAD" \
          --id-from $((i * span + 1)) --id-to $(((i + 1) * span)) --seed "$run" --out "$RUN/changes-$rate.csv")
        emit latency "$rate/s" "$v" "$run" achieved_rate "$(kv achieved_rate "$out")"
        emit latency "$rate/s" "$v" "$run" writers "$(kv writers "$out")"
        local h
        h=$("$LOADGEN" harvest --dsn "$DSN2" --changes "$RUN/changes-$rate.csv" --timeout 120 \
          --out "$OUT/lat-$rate-$v-$run.txt") || log "latency $rate/s $v: not every change arrived: $h"
        for m in p50_ms p90_ms p99_ms max_ms missing count; do
          emit latency "$rate/s" "$v" "$run" "$m" "$(kv "$m" "$h")"
        done
        log "  $rate/s: $(kv achieved_rate "$out")/s achieved; $h"
        i=$((i + 1))
        if [[ $fresh == 1 ]]; then
          teardown_stream latency "$rate/s" "$v" "$run"
          save_logs "latency-$v-$run-$rate"
        fi
      done
      if [[ $fresh == 0 ]]; then
        teardown_stream latency all "$v" "$run"
        save_logs "latency-$v-$run"
      fi
    done
  done
}

scenario_burst() {
  local run v
  for run in $(seq 1 "$RUNS"); do
    for v in ${STREAM_VARIANTS}; do
      log "burst: $v, run $run"
      setup_stream "$v" "$BURST_PRELOAD" progress 1
      q2 b2 "SELECT setval('bench_progress', 1, false)" >/dev/null
      emit burst "$BURST" "$v" "$run" loadavg "$(cut -d' ' -f1 /proc/loadavg)"
      bg "$LOADGEN" sample --dsn "$DSN2" --query "$progress_query" --until "$BURST" --interval-ms 50 \
        --timeout 900 --out "$OUT/burst-progress-$v-$run.csv" >"$RUN/sample.out"
      local sampler=$BG out
      out=$("$LOADGEN" burst --dsn "$DSN1" --changes "$BURST" --writers "$BURST_WRITERS" --txn "$BURST_TXN" \
        --preload "$BURST_PRELOAD" --out "$OUT/burst-commits-$v-$run.csv")
      wait_sampler "$sampler" || log "burst $v: the target did not catch up: $(cat "$RUN/sample.out")"
      PIDS=("${PIDS[@]/$sampler}")
      local s; s=$(cat "$RUN/sample.out")
      local start end reached
      start=$(kv start_us "$out"); end=$(kv end_us "$out"); reached=$(kv reached_us "$s")
      emit burst "$BURST" "$v" "$run" source_rate "$(kv commit_rate "$out")"
      if [[ $reached -gt 0 ]]; then
        local drain=$(( reached - start ))
        emit burst "$BURST" "$v" "$run" drain_s "$(awk -v d=$drain 'BEGIN{printf "%.3f", d/1e6}')"
        emit burst "$BURST" "$v" "$run" changes_per_s "$(awk -v d=$drain -v n="$BURST" 'BEGIN{printf "%.0f", n/(d/1e6)}')"
        emit burst "$BURST" "$v" "$run" catchup_after_s "$(awk -v d=$((reached - end)) 'BEGIN{printf "%.3f", d/1e6}')"
      fi
      echo "$start" >"$OUT/burst-start-$v-$run"
      log "  source committed at $(kv commit_rate "$out")/s; caught up $(awk -v d=$((reached - end)) 'BEGIN{printf "%.2f", d/1e6}') s after the burst; $(kv value "$s") applied"
      teardown_stream burst "$BURST" "$v" "$run"
      save_logs "burst-$v-$run"
    done
  done
}

scenario_backlog() {
  local run v
  for run in $(seq 1 "$RUNS"); do
    for v in ${STREAM_VARIANTS}; do
      log "backlog: $v, run $run"
      setup_stream "$v" "$BACKLOG_PRELOAD" progress 0
      local t0 t1
      t0=$(date +%s.%N)
      fs 1 b1 -v changes="$BACKLOG" -f bench/sql/backlog_fill.sql >/dev/null
      t1=$(date +%s.%N)
      emit backlog "$BACKLOG" "$v" "$run" fill_s "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')"
      if [[ $v != ref && $v != debezium ]]; then
        local waiting; waiting=$(q1 b1 "SELECT count(*) FROM employees_cdc")
        [[ $waiting == "$BACKLOG" ]] || log "backlog: $waiting changes in the change table, expected $BACKLOG"
      fi
      q2 b2 "SELECT setval('bench_progress', 1, false)" >/dev/null
      q1 postgres "CHECKPOINT"; q2 postgres "CHECKPOINT"
      emit backlog "$BACKLOG" "$v" "$run" loadavg "$(cut -d' ' -f1 /proc/loadavg)"
      [[ $v == kafka* || $v == split ]] && start_broker "$BACKLOG_PARTITIONS"
      bg "$LOADGEN" sample --dsn "$DSN2" --query "$progress_query" --until "$BACKLOG" --interval-ms 50 \
        --timeout 1800 --out "$OUT/backlog-progress-$v-$run.csv" >"$RUN/sample.out"
      local sampler=$BG start
      start=$(date +%s%6N)
      if [[ $v == ref ]]; then
        q2 b2 "ALTER SUBSCRIPTION bench_sub ENABLE"
      elif [[ $v == debezium ]]; then
        start_debezium
      else
        start_tunnel "$v"
      fi
      wait_sampler "$sampler" || log "backlog $v: the target did not catch up: $(cat "$RUN/sample.out")"
      PIDS=("${PIDS[@]/$sampler}")
      local reached; reached=$(kv reached_us "$(cat "$RUN/sample.out")")
      echo "$start" >"$OUT/backlog-start-$v-$run"
      if [[ $reached -gt 0 ]]; then
        local d=$((reached - start))
        emit backlog "$BACKLOG" "$v" "$run" drain_s "$(awk -v d=$d 'BEGIN{printf "%.3f", d/1e6}')"
        emit backlog "$BACKLOG" "$v" "$run" changes_per_s "$(awk -v d=$d -v n="$BACKLOG" 'BEGIN{printf "%.0f", n/(d/1e6)}')"
        # Start-up (connecting, joining the consumer group, the launcher
        # starting the apply worker) apart from the applying itself.
        local first
        first=$(awk -F, '$2 > 0 {print $1; exit}' "$OUT/backlog-progress-$v-$run.csv")
        emit backlog "$BACKLOG" "$v" "$run" startup_s "$(awk -v d=$((first - start)) 'BEGIN{printf "%.3f", d/1e6}')"
        emit backlog "$BACKLOG" "$v" "$run" applying_changes_per_s "$(awk -v d=$((reached - first)) -v n="$BACKLOG" 'BEGIN{printf "%.0f", n/(d/1e6)}')"
        log "  drained $BACKLOG in $(awk -v d=$d 'BEGIN{printf "%.2f", d/1e6}') s (first change applied after $(awk -v d=$((first - start)) 'BEGIN{printf "%.2f", d/1e6}') s)"
      fi
      teardown_stream backlog "$BACKLOG" "$v" "$run"
      save_logs "backlog-$v-$run"
    done
  done
}

scenario_snapshot() {
  local run v vs=""
  for v in ${STREAM_VARIANTS}; do
    if [[ $v == ref ]]; then vs+=" copy sub"; elif [[ $v == kafka || $v == none || $v == debezium ]]; then vs+=" $v"; fi
  done
  if has "$VARIANTS" copy && ! has "$VARIANTS" ref; then vs+=" copy"; fi
  for run in $(seq 1 "$RUNS"); do
    for v in $vs; do
      log "snapshot: $v, run $run"
      rm -f "$RUN"/*
      local t0 t1
      emit snapshot "$SNAP_ROWS" "$v" "$run" loadavg "$(cut -d' ' -f1 /proc/loadavg)"
      case "$v" in
        kafka|none)
          fresh_dbs "tpl_t_$SNAP_ROWS" tpl_t_0
          write_config none
          dt init >"$RUN/init.log" 2>&1 || die "datatunnel init: $(cat "$RUN/init.log")"
          local broker=none
          if [[ $v == kafka ]]; then start_broker "$BACKLOG_PARTITIONS"; broker=$BROKERS; fi
          t0=$(date +%s%6N)
          "$LOADGEN" wrap --report "$RUN/rusage-snapshot" -- "$DT" -c "$RUN/datatunnel.toml" snapshot \
            --broker "$broker" >"$RUN/tunnel-snapshot.log" 2>&1 || die "snapshot $v: $(tail -3 "$RUN/tunnel-snapshot.log")"
          t1=$(date +%s%6N)
          report_rusage snapshot "$SNAP_ROWS" "$v" "$run" snapshot
          [[ $v == kafka ]] && stop_broker snapshot "$SNAP_ROWS" "$v" "$run"
          ;;
        copy)
          fresh_dbs "tpl_t_$SNAP_ROWS" tpl_t_0
          q2 b2 "CREATE UNIQUE INDEX employees_emp_id_key ON employees (emp_id)"
          t0=$(date +%s%6N)
          "${PSQL[@]}" -p "$P1" -d b1 -c "\copy employees to stdout" |
            "${PSQL[@]}" -p "$P2" -d b2 -c "\copy employees from stdin"
          t1=$(date +%s%6N)
          ;;
        debezium)
          # Debezium's initial snapshot (snapshot.mode = initial): its
          # PostgreSQL connector reads the table (the slot is created first)
          # -> the same broker and partitions as datatunnel's -> its JDBC sink
          # (upserts, batches of 4,096) -> the empty target table (with its
          # primary key, which the sink's upserts need). Timed from the
          # worker's start (the JVM's start is part of it, as the tunnel
          # process's start is of datatunnel's) until the target holds every row.
          fresh_dbs "tpl_r_$SNAP_ROWS" tpl_r_0
          scripts/debezium.sh stop --dir "$WORK/connect" >/dev/null 2>&1 || true
          rm -rf "$WORK/connect"  # no offsets of an earlier case
          start_broker "$BACKLOG_PARTITIONS"
          DBZ_SNAPSHOT=1 debezium_connectors
          bg "$LOADGEN" sample --dsn "$DSN2" --query "SELECT count(*) FROM employees" --until "$SNAP_ROWS" \
            --interval-ms 250 --timeout 3600 --out "$OUT/snapshot-progress-$v-$run.csv" >"$RUN/sample.out"
          local sampler=$BG
          t0=$(date +%s%6N)
          start_debezium
          wait_sampler "$sampler" || log "snapshot $v: the target did not get every row: $(cat "$RUN/sample.out")"
          PIDS=("${PIDS[@]/$sampler}")
          t1=$(kv reached_us "$(cat "$RUN/sample.out")")
          [[ -n $t1 && $t1 -gt 0 ]] || t1=$(date +%s%6N)
          # Start-up (the JVM, the connectors, the first batch through the
          # sink) apart from the copying itself, as the backlog scenario does.
          local first
          first=$(awk -F, '$2 > 0 {print $1; exit}' "$OUT/snapshot-progress-$v-$run.csv")
          if [[ -n $first ]]; then
            emit snapshot "$SNAP_ROWS" "$v" "$run" startup_s "$(awk -v d=$((first - t0)) 'BEGIN{printf "%.3f", d/1e6}')"
            emit snapshot "$SNAP_ROWS" "$v" "$run" applying_rows_per_s \
              "$(awk -v d=$((t1 - first)) -v n="$SNAP_ROWS" 'BEGIN{printf "%.0f", n/(d/1e6)}')"
          fi
          stop_debezium snapshot "$SNAP_ROWS" "$v" "$run"
          stop_broker snapshot "$SNAP_ROWS" "$v" "$run"
          drop_subscription  # drops the connector's slot
          ;;
        sub)
          fresh_dbs "tpl_r_$SNAP_ROWS" tpl_r_0
          q1 b1 "CREATE PUBLICATION bench_pub FOR TABLE employees"
          t0=$(date +%s%6N)
          q2 b2 "CREATE SUBSCRIPTION bench_sub CONNECTION '$SUB_CONN' PUBLICATION bench_pub WITH (copy_data = true)"
          for _ in $(seq 1 36000); do
            [[ $(q2 b2 "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'") == 0 ]] && break
            sleep 0.05
          done
          t1=$(date +%s%6N)
          drop_subscription
          ;;
      esac
      local n; n=$(q2 b2 "SELECT count(*) FROM employees")
      [[ $n == "$SNAP_ROWS" ]] || log "snapshot $v: the target holds $n rows, expected $SNAP_ROWS"
      local d=$((t1 - t0))
      emit snapshot "$SNAP_ROWS" "$v" "$run" seconds "$(awk -v d=$d 'BEGIN{printf "%.3f", d/1e6}')"
      emit snapshot "$SNAP_ROWS" "$v" "$run" rows_per_s "$(awk -v d=$d -v n="$SNAP_ROWS" 'BEGIN{printf "%.0f", n/(d/1e6)}')"
      log "  $SNAP_ROWS rows in $(awk -v d=$d 'BEGIN{printf "%.2f", d/1e6}') s"
      save_logs "snapshot-$v-$run"
    done
  done
}

# pgbench with the capture triggers enabled and disabled, interleaved.
scenario_source() {
  log "source cost: pgbench, $SRC_CLIENTS clients, ${SRC_SECONDS}s per run, $SRC_PAIRS interleaved pair(s)"
  rm -f "$RUN"/*
  fresh_dbs "tpl_t_$SRC_ROWS" tpl_t_0
  write_config none
  dt init >"$RUN/init.log" 2>&1 || die "datatunnel init: $(cat "$RUN/init.log")"
  local pair op state
  for pair in $(seq 1 "$SRC_PAIRS"); do
    # off: no capture; on: the capture triggers as init installs them.
    local order="off on"
    [[ $((pair % 2)) == 0 ]] && order="on off"
    for op in insert update; do
      for state in $order; do
        local cap=DISABLE
        [[ $state == on ]] && cap=ENABLE
        q1 b1 "ALTER TABLE employees $cap TRIGGER USER"
        q1 b1 "VACUUM employees" ; q1 postgres "CHECKPOINT"
        emit source "$op" "trigger-$state" "$pair" loadavg "$(cut -d' ' -f1 /proc/loadavg)"
        local out tps
        out=$(pgbench -n -h 127.0.0.1 -p "$P1" -U postgres -c "$SRC_CLIENTS" -j 2 -T "$SRC_SECONDS" \
          -D rows="$SRC_ROWS" -f "bench/pgbench/$op.sql" b1 2>&1) || die "pgbench: $out"
        tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -1)
        emit source "$op" "trigger-$state" "$pair" tps "$tps"
        log "  $op, trigger $state: $tps tps"
      done
    done
    # Bulk statements: one INSERT, UPDATE and DELETE of $SRC_BULK rows each
    # (rows beyond the $SRC_ROWS the single-row runs use), seconds per statement.
    q1 b1 "ALTER TABLE employees DISABLE TRIGGER USER"
    q1 b1 "DELETE FROM employees WHERE emp_id > $SRC_ROWS"  # the single-row INSERTs' rows
    q1 b1 "TRUNCATE employees_cdc"
    for state in $order; do
      local cap=DISABLE
      [[ $state == on ]] && cap=ENABLE
      q1 b1 "ALTER TABLE employees $cap TRIGGER USER"
      for op in insert update delete; do
        local sql
        case "$op" in
          insert) sql="INSERT INTO employees (first_name, last_name, dob, city) SELECT 'Bulk', 'b' || g, '2000-01-01', 'Oslo' FROM generate_series(1, $SRC_BULK) g" ;;
          update) sql="UPDATE employees SET city = 'Bergen', last_name = last_name || 'u' WHERE emp_id > $SRC_ROWS" ;;
          delete) sql="DELETE FROM employees WHERE emp_id > $SRC_ROWS" ;;
        esac
        q1 b1 "VACUUM employees" ; q1 postgres "CHECKPOINT"
        emit source "bulk-$op" "trigger-$state" "$pair" loadavg "$(cut -d' ' -f1 /proc/loadavg)"
        local t0 t1 l0 wal
        l0=$(q1 b1 "SELECT pg_current_wal_insert_lsn()")
        t0=$(date +%s%6N)
        q1 b1 "$sql"
        t1=$(date +%s%6N)
        # WAL the statement wrote (MB): unlike its seconds, not noise.
        wal=$(q1 b1 "SELECT round(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$l0') / 1e6, 1)")
        emit source "bulk-$op" "trigger-$state" "$pair" seconds "$(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.3f", d/1e6}')"
        emit source "bulk-$op" "trigger-$state" "$pair" wal_mb "$wal"
        log "  bulk $op of $SRC_BULK rows, trigger $state: $(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.2f", d/1e6}') s, $wal MB of WAL"
      done
      # The next state starts from the same change table: empty.
      q1 b1 "TRUNCATE employees_cdc"
    done
  done
  q1 b1 "ALTER TABLE employees ENABLE TRIGGER USER"
  q1 b1 "SELECT count(*) FROM employees_cdc" >"$OUT/source-cdc-rows"
}

# many: whole schemas. Templates tpl_m_<n>: tables emp_1 .. emp_<n> (the
# brief's columns, emp_id a primary key drawn from one sequence, so ids are
# unique across tables), MANY_PRELOAD rows spread over them (row i in
# emp_<1 + i % n>); one [[tables]] pattern selects them all.
ensure_many_template() {
  local n=$1 db="tpl_m_$1"
  [[ $(q1 postgres "SELECT count(*) FROM pg_database WHERE datname = '$db'") == 1 ]] && return 0
  log "building template $db on server 1"
  q1 postgres "CREATE DATABASE $db"
  q1 "$db" "CREATE SEQUENCE emp_ids"
  q1 "$db" "DO \$\$ BEGIN FOR k IN 1..$n LOOP EXECUTE format('CREATE TABLE emp_%s (emp_id int PRIMARY KEY DEFAULT nextval(''emp_ids''), first_name varchar(100), last_name varchar(100), dob date, city varchar(100))', k); END LOOP; END \$\$"
  q1 "$db" "DO \$\$ BEGIN FOR k IN 1..$n LOOP EXECUTE format('INSERT INTO emp_%s SELECT i, ''Ada'', ''v0'', DATE ''1960-01-01'' + mod(i, 15000), ''Oslo'' FROM generate_series(%s, $MANY_PRELOAD, $n) i WHERE i >= 1', k, k - 1); END LOOP; END \$\$"
  q1 "$db" "SELECT setval('emp_ids', $MANY_PRELOAD)" >/dev/null
  q1 "$db" "VACUUM ANALYZE"
  q1 postgres "CHECKPOINT"
}

# pid_ticks PID...: the CPU ticks (utime + stime, 1/CLK_TCK s) used so far
# by those processes (the ones gone are left out).
pid_ticks() {
  local total=0 p
  for p in "$@"; do
    [[ -r /proc/$p/stat ]] || continue
    total=$((total + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat")))
  done
  echo "$total"
}

# The CPU ticks used so far by the source backends of the tunnel's sessions
# (application_name datatunnel:b1).
source_backend_ticks() {
  # shellcheck disable=SC2046  # one pid per word
  pid_ticks $(q1 b1 "SELECT pid FROM pg_stat_activity WHERE application_name = 'datatunnel:b1'")
}

# One tunnel (run --broker none) over 1, then over MANY_TABLES tables, all
# chosen by one pattern: the source's CPU for the tunnel's sessions while
# nothing is written, then the latency of MANY_RATE changes/s spread over the
# tables (and the source's CPU meanwhile).
scenario_many() {
  local run n
  for run in $(seq 1 "$RUNS"); do
    for n in 1 "$MANY_TABLES"; do
      log "many: $n table(s), run $run"
      rm -f "$RUN"/*
      fresh_dbs "tpl_m_$n" tpl_t_0
      printf '[source]\ndsn = "%s"\n[target]\ndsn = "%s"\n[kafka]\nbrokers = "none"\n[[tables]]\nsource = "public.emp_*"\n' \
        "$DSN1" "$DSN2" >"$RUN/datatunnel.toml"
      dt init >"$RUN/init.log" 2>&1 || die "datatunnel init: $(tail -3 "$RUN/init.log")"
      dt snapshot --broker none >"$RUN/snapshot.log" 2>&1 || die "datatunnel snapshot: $(tail -3 "$RUN/snapshot.log")"
      # The latency probe on every target table.
      fs 2 b2 -f bench/sql/target_log.sql
      q2 b2 "DO \$\$ BEGIN FOR k IN 1..$n LOOP EXECUTE format('CREATE CONSTRAINT TRIGGER bench_log AFTER INSERT OR UPDATE OR DELETE ON emp_%s DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bench_log_fn(); ALTER TABLE emp_%s ENABLE ALWAYS TRIGGER bench_log', k, k); END LOOP; END \$\$"
      start_tunnel none
      local id
      id=$(q1 b1 "INSERT INTO emp_1 (first_name, last_name) VALUES ('probe', 'probe') RETURNING emp_id")
      for _ in $(seq 1 1200); do
        [[ $(q2 b2 "SELECT count(*) FROM emp_1 WHERE emp_id = $id") == 1 ]] && break
        sleep 0.05
      done
      if [[ $MANY_WARM_TUNNEL == 1 ]]; then
        # The tunnel's sessions warm too, as the writers' are (--warm below)
        # and as a tunnel that has run a while is: a row inserted, updated
        # and deleted in every table (one transaction each), each applied
        # before the next. Cold, the target session's first write to each
        # table (its statements parsed, the relation and its triggers
        # loaded, the probe's trigger function compiled for it) falls
        # inside the measured window over 500 tables, and before it over
        # one (the probe above).
        local op sql want=1
        for op in insert update delete; do
          case $op in
            insert) sql="INSERT INTO emp_%s (first_name, last_name) VALUES (''warm'', ''warm'')" ;;
            update) sql="UPDATE emp_%s SET city = ''warm'' WHERE first_name = ''warm''" ;;
            delete) sql="DELETE FROM emp_%s WHERE first_name = ''warm''" ;;
          esac
          q1 b1 "DO \$\$ BEGIN FOR k IN 1..$n LOOP EXECUTE format('$sql', k); END LOOP; END \$\$"
          want=$((want + n))
          for _ in $(seq 1 1200); do
            [[ $(q2 b2 "SELECT count(*) FROM bench_log") -ge $want ]] && break
            sleep 0.05
          done
        done
      fi
      sleep 2
      emit many "$n" none "$run" loadavg "$(cut -d' ' -f1 /proc/loadavg)"
      local t0 t1 idle out h
      t0=$(source_backend_ticks); sleep "$MANY_IDLE"; t1=$(source_backend_ticks)
      idle=$(awk -v a="$t0" -v b="$t1" -v s="$MANY_IDLE" 'BEGIN{printf "%.1f", (b - a) * 10 / s}')
      emit many "$n" none "$run" idle_ticks_per_10s "$idle"
      q2 b2 "TRUNCATE bench_log"
      t0=$(source_backend_ticks)
      # --warm: the writers' connections have run their statements on every
      # table (rolled back) before the clock starts, as pooled connections
      # of an application would have: cold, they used 3-4 s of the source's
      # CPU in the first 5 s over 500 tables (0.6 s over one), competing
      # with the tunnel's sessions for the two cores.
      out=$("$LOADGEN" steady --dsn "$DSN1" --rate "$MANY_RATE" --seconds "$MANY_LAT" --preload "$MANY_PRELOAD" \
        --tables "$n" --seed "$run" --warm 1 --out "$RUN/changes.csv")
      t1=$(source_backend_ticks)
      emit many "$n" none "$run" load_cpu_pct "$(awk -v a="$t0" -v b="$t1" -v s="$MANY_LAT" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.1f", (b - a) * 100 / hz / s}')"
      emit many "$n" none "$run" achieved_rate "$(kv achieved_rate "$out")"
      h=$("$LOADGEN" harvest --dsn "$DSN2" --changes "$RUN/changes.csv" --timeout 120 \
        --out "$OUT/many-$n-$run.txt") || log "many $n: not every change arrived: $h"
      for m in p50_ms p90_ms p99_ms max_ms missing; do emit many "$n" none "$run" "$m" "$(kv "$m" "$h")"; done
      log "  $n table(s): idle source CPU $idle ticks/10 s; $(kv achieved_rate "$out")/s: $h"
      stop_tunnel many "$n" none "$run"
      save_logs "many-$n-$run"
    done
  done
}

# The tunnel's own count of changes applied to the target (its /metrics,
# summed over tables); 0 while the endpoint does not answer.
applied_total() {
  curl -s --max-time 2 "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
    awk '/^datatunnel_changes_applied_total/ {s += $NF} END {printf "%d", s}'
}

# bigtx: on a running tunnel that is caught up, one INSERT of BIGTX rows,
# then an UPDATE of them, then a DELETE, each one source transaction: the
# seconds from each commit until the tunnel has applied all of it (its
# applied counter, polled every 50 ms from /metrics: no probe on the target
# table, whose per-row cost would be measured too), rows/s, and each tunnel
# process's peak RSS over the three.
# CPU ticks (utime + stime, 1/CLK_TCK s) used so far by the tunnel's
# sessions on server $1 (database $2) and by the tunnel's processes: on
# this shared host wall time follows the load, CPU time much less.
tunnel_backend_ticks() {
  local s=$1 db=$2
  # shellcheck disable=SC2046  # one pid per word
  pid_ticks $(qs "$s" "$db" "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'datatunnel%'")
}
tunnel_process_ticks() {
  # shellcheck disable=SC2046  # one pid per word
  pid_ticks "${TUNNEL_PIDS[@]}" $(for w in "${TUNNEL_PIDS[@]}"; do pgrep -P "$w"; done)
}
pipeline_ticks() { echo "$(tunnel_backend_ticks 1 b1) $(tunnel_process_ticks) $(tunnel_backend_ticks 2 b2)"; }

# The UPDATE's floor, in the same invocation: on a copy of the table
# without capture (bench_floor, the preload plus BIGTX new rows, after a
# CHECKPOINT) the source's own UPDATE on server 1 (floor_s_source_update),
# and on server 2 a plain UPDATE ... FROM a staging table holding the
# after-images (floor_s_target_update): what PostgreSQL itself takes for
# the rows the tunnel applies.
bigtx_floor() {
  local v=$1 run=$2 base=$3 s t0 t1 sql
  for s in 1 2; do
    qs "$s" "b$s" "DROP TABLE IF EXISTS bench_floor, bench_floor_stage"
    qs "$s" "b$s" "CREATE TABLE bench_floor AS SELECT * FROM employees"
    qs "$s" "b$s" "CREATE UNIQUE INDEX ON bench_floor (emp_id)"
    qs "$s" "b$s" "INSERT INTO bench_floor SELECT g, 'Bulk', 'b' || g, DATE '2000-01-01' + g % 9000, 'Oslo' FROM generate_series($base + 1, $base + $BIGTX) g"
    if [[ $s == 1 ]]; then
      sql="UPDATE bench_floor SET city = 'Bergen', last_name = last_name || 'u' WHERE emp_id > $base"
    else
      qs 2 b2 "CREATE UNLOGGED TABLE bench_floor_stage AS SELECT emp_id, first_name, last_name || 'u' AS last_name, dob, 'Bergen'::varchar(100) AS city FROM bench_floor WHERE emp_id > $base"
      sql="UPDATE bench_floor t SET first_name = s.first_name, last_name = s.last_name, dob = s.dob, city = s.city FROM bench_floor_stage s WHERE t.emp_id = s.emp_id"
    fi
    qs "$s" postgres "CHECKPOINT"
    t0=$(date +%s%6N)
    qs "$s" "b$s" "$sql" >/dev/null
    t1=$(date +%s%6N)
    local what; [[ $s == 1 ]] && what=source || what=target
    emit bigtx "$BIGTX" "$v" "$run" "floor_s_${what}_update" "$(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.3f", d/1e6}')"
    log "  floor, the $what server's own UPDATE of $BIGTX rows: $(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.2f", d/1e6}') s ($(awk -v d=$((t1 - t0)) -v n="$BIGTX" 'BEGIN{printf "%.0f", n/(d/1e6)}') rows/s)"
    qs "$s" "b$s" "DROP TABLE IF EXISTS bench_floor, bench_floor_stage"
  done
}

scenario_bigtx() {
  local run v op
  for run in $(seq 1 "$RUNS"); do
    for v in ${STREAM_VARIANTS}; do
      [[ $v == kafka* || $v == none* || $v == split ]] || continue
      log "bigtx: $v, run $run"
      TUNNEL_EXTRA="--set metrics.listen=127.0.0.1:$METRICS_PORT"
      setup_stream "$v" "$BIGTX_PRELOAD" none 1
      TUNNEL_EXTRA=""
      local base
      base=$(q1 b1 "SELECT coalesce(max(emp_id), 0) + 1000 FROM employees")
      emit bigtx "$BIGTX" "$v" "$run" loadavg "$(cut -d' ' -f1 /proc/loadavg)"
      for op in insert update delete; do
        local sql
        case "$op" in
          insert) sql="INSERT INTO employees (emp_id, first_name, last_name, dob, city) SELECT g, 'Bulk', 'b' || g, DATE '2000-01-01' + g % 9000, 'Oslo' FROM generate_series($base + 1, $base + $BIGTX) g" ;;
          update) sql="UPDATE employees SET city = 'Bergen', last_name = last_name || 'u' WHERE emp_id > $base" ;;
          delete) sql="DELETE FROM employees WHERE emp_id > $base" ;;
        esac
        q1 postgres "CHECKPOINT"; q2 postgres "CHECKPOINT"
        local a0 t0 t1 t2="" a c0 c1
        a0=$(applied_total)
        t0=$(date +%s%6N)
        q1 b1 "$sql"
        t1=$(date +%s%6N)
        read -r -a c0 <<<"$(pipeline_ticks)"
        for _ in $(seq 1 12000); do
          a=$(applied_total)
          if [[ $a -ge $((a0 + BIGTX)) ]]; then t2=$(date +%s%6N); break; fi
          sleep 0.05
        done
        emit bigtx "$BIGTX" "$v" "$run" "source_s_$op" "$(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.3f", d/1e6}')"
        if [[ -z $t2 ]]; then
          log "  $op: not applied within 600 s ($((a - a0)) of $BIGTX)"
          continue
        fi
        emit bigtx "$BIGTX" "$v" "$run" "apply_s_$op" "$(awk -v d=$((t2 - t1)) 'BEGIN{printf "%.3f", d/1e6}')"
        # The CPU seconds of the source's sessions, the tunnel and the
        # target's sessions from the commit until applied.
        read -r -a c1 <<<"$(pipeline_ticks)"
        local hz i names=(source tunnel target) cpu=""
        hz=$(getconf CLK_TCK)
        for i in 0 1 2; do
          local sec; sec=$(awk -v d=$((c1[i] - c0[i])) -v hz="$hz" 'BEGIN{printf "%.2f", d/hz}')
          emit bigtx "$BIGTX" "$v" "$run" "cpu_s_${names[$i]}_$op" "$sec"
          cpu+="${names[$i]} $sec s, "
        done
        log "  $op: CPU after its commit: ${cpu%, }"
        emit bigtx "$BIGTX" "$v" "$run" "rows_per_s_$op" "$(awk -v d=$((t2 - t1)) -v n="$BIGTX" 'BEGIN{printf "%.0f", n/(d/1e6)}')"
        log "  $op of $BIGTX rows: $(awk -v d=$((t1 - t0)) 'BEGIN{printf "%.2f", d/1e6}') s on the source, applied $(awk -v d=$((t2 - t1)) 'BEGIN{printf "%.2f", d/1e6}') s after its commit ($(awk -v d=$((t2 - t1)) -v n="$BIGTX" 'BEGIN{printf "%.0f", n/(d/1e6)}') rows/s)"
      done
      local n; n=$(q2 b2 "SELECT count(*) FROM employees WHERE emp_id > $base")
      [[ $n == 0 ]] || log "bigtx $v: the target still holds $n of the deleted rows"
      bigtx_floor "$v" "$run" "$base"
      teardown_stream bigtx "$BIGTX" "$v" "$run"
      save_logs "bigtx-$v-$run"
    done
  done
}

# ---- main ---------------------------------------------------------------------

STREAM_VARIANTS=""
for v in kafka kafka-key kafka-tx split none none-key none-tx debezium ref; do has "$VARIANTS" "$v" && STREAM_VARIANTS+=" $v"; done

# Machine noise: load average and concurrent compiler/test processes, every 2 s.
noise_monitor() {
  while :; do
    echo "$(date +%s),$(cut -d' ' -f1 /proc/loadavg),$(pgrep -c -f 'cc1plus|ctest|_test|ld.gold|collect2' || true),$(pgrep -c postgres || true)"
    sleep 2
  done
}

log "bench: $NAME (quick=$QUICK, runs=$RUNS, scenarios=$ONLY, variants=$VARIANTS)"
log "binaries: $DT ($("$DT" --version 2>/dev/null | head -1)), $LOADGEN"
echo "epoch,load1,compile_or_test_procs,postgres_procs" >"$OUT/noise.csv"
noise_monitor >>"$OUT/noise.csv" &
NOISE_PID=$!
start_servers
BENCH_START=$(date +%s)

need_rows=()
has "$ONLY" source && need_rows+=("t:$SRC_ROWS" "t2:0")
has "$ONLY" latency && need_rows+=("t:$LAT_PRELOAD" "r:$LAT_PRELOAD")
has "$ONLY" burst && need_rows+=("t:$BURST_PRELOAD" "r:$BURST_PRELOAD")
has "$ONLY" backlog && need_rows+=("t:$BACKLOG_PRELOAD" "r:$BACKLOG_PRELOAD")
has "$ONLY" snapshot && need_rows+=("t:$SNAP_ROWS" "r:$SNAP_ROWS" "t2:0" "r2:0")
has "$ONLY" many && need_rows+=("t2:0" "m:1" "m:$MANY_TABLES")
has "$ONLY" bigtx && need_rows+=("t:$BIGTX_PRELOAD")
for spec in $(printf '%s\n' "${need_rows[@]}" | sort -u); do
  flavor=${spec%%:*} rows=${spec#*:}
  case "$flavor" in
    t|r) ensure_template 1 "$flavor" "$rows"; ensure_template 2 "$flavor" "$rows" ;;
    t2) ensure_template 2 t "$rows" ;;
    r2) ensure_template 2 r "$rows" ;;
    m) ensure_many_template "$rows" ;;
  esac
done

for sc in source latency burst backlog snapshot many bigtx; do
  if has "$ONLY" "$sc"; then
    t=$(date +%s)
    "scenario_$sc"
    log "$sc: done in $(( $(date +%s) - t )) s"
  fi
done
BENCH_END=$(date +%s)

cat >"$OUT/meta.env" <<EOF
name=$NAME
quick=$QUICK
runs=$RUNS
scenarios=$ONLY
variants=$VARIANTS
partitions=$PARTITIONS
backlog_partitions=$BACKLOG_PARTITIONS
kafka_version=${KAFKA_VERSION:-}
lat_rates=$LAT_RATES
lat_seconds=$LAT_SECONDS
lat_preload=$LAT_PRELOAD
burst=$BURST
burst_writers=$BURST_WRITERS
burst_txn=$BURST_TXN
burst_preload=$BURST_PRELOAD
backlog=$BACKLOG
backlog_preload=$BACKLOG_PRELOAD
snap_rows=$SNAP_ROWS
src_seconds=$SRC_SECONDS
src_pairs=$SRC_PAIRS
src_clients=$SRC_CLIENTS
src_rows=$SRC_ROWS
src_bulk=$SRC_BULK
many_tables=$MANY_TABLES
many_idle_seconds=$MANY_IDLE
many_lat_seconds=$MANY_LAT
many_rate=$MANY_RATE
many_preload=$MANY_PRELOAD
bigtx_rows=$BIGTX
bigtx_preload=$BIGTX_PRELOAD
duration_s=$((BENCH_END - BENCH_START))
git=${BENCH_GIT_REV:-$(git describe --always --dirty 2>/dev/null || echo unknown)}
version=$("$DT" --version 2>/dev/null | head -1)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
cores=$(nproc)
mem_gb=$(awk '/MemTotal/{printf "%.0f", $2/1048576}' /proc/meminfo)
kernel=$(uname -r)
os=$(. /etc/os-release && echo "$PRETTY_NAME")
postgres=$(postgres --version | awk '{print $3}')
EOF
python3 bench/report.py --out "$OUT" --results "$RESULTS" --name "$NAME"
log "bench: results in $RESULTS/$NAME.md"
