#!/usr/bin/env bash
# Debezium on Kafka Connect (standalone), for the interop test and the
# benchmark: Debezium's PostgreSQL connector writes a source database's changes
# to a real Kafka cluster (scripts/kafka.sh), as Debezium users run it.
#
#   scripts/debezium.sh fetch                    download Kafka Connect and Debezium once (Maven Central)
#   scripts/debezium.sh cached                   exit 0 when they are already downloaded
#   scripts/debezium.sh version                  print the Debezium and Kafka Connect versions
#   scripts/debezium.sh start --dir DIR --bootstrap B [--schemas true|false] [--set KEY=VALUE]...
#                        [--owner PID] [--quick-start] CONNECTOR.properties...
#                                                start one Kafka Connect worker (ConnectStandalone)
#                                                with the given connectors, wait until every
#                                                connector and its tasks run, print the worker's
#                                                REST address (http://127.0.0.1:PORT) as the only
#                                                stdout line
#   scripts/debezium.sh status --dir DIR         print each connector's and task's state
#   scripts/debezium.sh stop --dir DIR           stop the worker (SIGTERM, then -9 after 15 s)
#   scripts/debezium.sh kill --dir DIR           kill -9 the worker
#
# The worker converts keys and values with Kafka Connect's JsonConverter,
# with schemas (`--schemas true`, the default, Connect's own default) or
# without (`--schemas false`: value.converter.schemas.enable=false); --set
# adds or overrides a worker setting. Offsets are kept in DIR/offsets
# (flushed every second), so a stopped worker resumes where it was. The JVM
# gets a bounded heap (DEBEZIUM_HEAP, default 512m) and logs to
# DIR/connect.log. --owner stops the worker once process PID is gone;
# --quick-start runs it with the C1 JIT only and the serial GC (faster start
# on a busy 2-core machine; not for benchmarks).
#
# Connector files are Kafka Connect properties files (name=...,
# connector.class=..., the connector's settings); the PostgreSQL connector is
# io.debezium.connector.postgresql.PostgresConnector (needs wal_level =
# logical on the source). What is fetched: org.apache.kafka:connect-runtime and
# connect-json $CONNECT_VERSION (the Kafka version Debezium $DEBEZIUM_VERSION is
# built against; it talks to our 4.1 brokers), and
# io.debezium:debezium-connector-postgres $DEBEZIUM_VERSION as a Connect plugin
# (its own folder and class loader), and Debezium's JDBC sink connector,
# io.debezium:debezium-connector-jdbc $DEBEZIUM_JDBC_VERSION, as a second plugin
# (io.debezium.connector.jdbc.JdbcSinkConnector; it brings Hibernate 7.1 with
# its C3P0 pool and the PostgreSQL JDBC driver). The sink is older than the
# source connector because newer ones do not run from the Maven Central reached
# here: 3.6.1.Final and 3.5.2.Final, 3.4.3.Final, 3.3.2.Final and older are not
# served (or their debezium-sink is not), and 3.6.0.Final cannot create its
# connector without org.hibernate.orm:hibernate-agroal 7.2.6.Final, which is not
# served (docs/debezium.md). Each plugin has its own class loader, so the two
# Debezium versions do not mix.
#
# Everything is cached in $DATATUNNEL_CACHE/debezium-$DEBEZIUM_VERSION (default
# ~/.cache/datatunnel); after the first fetch nothing is downloaded. Needs java
# (17+), mvn and python3: scripts/install-deps.sh installs them.
set -euo pipefail

DEBEZIUM_VERSION=${DEBEZIUM_VERSION:-3.6.1.Final}
CONNECT_VERSION=${CONNECT_VERSION:-4.3.0}
DEBEZIUM_JDBC_VERSION=${DEBEZIUM_JDBC_VERSION:-3.5.0.Final}
LOG4J_VERSION=2.24.3
cache=${DATATUNNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/datatunnel}/debezium-$DEBEZIUM_VERSION
heap=${DEBEZIUM_HEAP:-512m}

die() { echo "debezium.sh: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }

# Copies the runtime dependencies of one artifact into $2 with Maven
# (`dependency:copy-dependencies` of a one-dependency pom), leaving out the
# group ids in $3 (comma-separated; "" for none).
copy_deps() {
  local deps=$1 out=$2 exclude=$3 work
  work=$(mktemp -d)
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>datatunnel</groupId><artifactId>debezium-fetch</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
$deps
  </dependencies>
</project>
EOF
  local args=(-q -B dependency:copy-dependencies -DoutputDirectory="$out" -DincludeScope=runtime)
  [[ -n "$exclude" ]] && args+=(-DexcludeGroupIds="$exclude")
  if ! (cd "$work" && mvn "${args[@]}" >"$work/mvn.log" 2>&1); then
    tail -20 "$work/mvn.log" >&2
    rm -rf "$work"
    return 1
  fi
  rm -rf "$work"
}

dep() { echo "    <dependency><groupId>$1</groupId><artifactId>$2</artifactId><version>$3</version></dependency>"; }

# Debezium's JDBC sink connector as its own plugin folder (added to a cache
# fetched before it was).
jackson_version() {
  local j
  j=$(cd "$cache/libs" && ls jackson-databind-*.jar) || die "no jackson-databind in $cache/libs"
  j=${j#jackson-databind-}
  echo "${j%.jar}"
}

fetch_jdbc_sink() {
  local dir=$cache/plugins/debezium-connector-jdbc
  [[ -f "$dir/.complete-$DEBEZIUM_JDBC_VERSION" ]] && return 0
  echo "debezium.sh: fetching Debezium's JDBC sink $DEBEZIUM_JDBC_VERSION from Maven Central into $dir (once)" >&2
  rm -rf "$dir" "$dir.tmp"
  # Jackson's core comes from the worker (2.21, which Hibernate's JSON support
  # then finds with its modules): a plugin's own jackson-databind cannot load
  # the worker's jackson-module-blackbird, which Jackson's module lookup finds
  # through the parent class loader ("BlackbirdModule not a subtype" when the
  # sink task starts). The JSR-310 module is taken at the worker's version.
  copy_deps "$(dep io.debezium debezium-connector-jdbc "$DEBEZIUM_JDBC_VERSION")
$(dep com.fasterxml.jackson.datatype jackson-datatype-jsr310 "$(jackson_version)")" "$dir.tmp" \
    "org.apache.kafka,org.slf4j,com.fasterxml.jackson.core" ||
    die "could not fetch io.debezium:debezium-connector-jdbc:$DEBEZIUM_JDBC_VERSION with Maven (see above)"
  touch "$dir.tmp/.complete-$DEBEZIUM_JDBC_VERSION"
  mv "$dir.tmp" "$dir"
}

# One lock for every fetch of every script (scripts/kafka.sh): test binaries
# start at once on a fresh machine, and two Maven runs must not fill the same
# folders (or Maven's own repository) together.
fetch() {
  [[ -f "$cache/complete" && -f "$cache/plugins/debezium-connector-jdbc/.complete-$DEBEZIUM_JDBC_VERSION" ]] &&
    return 0
  mkdir -p "$cache"
  (
    flock 8
    fetch_locked
  ) 8>"${cache%/*}/fetch.lock" || exit 1
}

fetch_locked() {
  [[ -f "$cache/complete" ]] && { fetch_jdbc_sink; return 0; }
  command -v mvn >/dev/null || die "mvn not found; run scripts/install-deps.sh"
  command -v java >/dev/null || die "java not found; run scripts/install-deps.sh"
  echo "debezium.sh: fetching Kafka Connect $CONNECT_VERSION and Debezium $DEBEZIUM_VERSION from Maven Central into $cache (once)" >&2
  mkdir -p "$cache"
  rm -rf "$cache/libs.tmp" "$cache/plugins.tmp"
  copy_deps "$(dep org.apache.kafka connect-runtime "$CONNECT_VERSION")
$(dep org.apache.kafka connect-json "$CONNECT_VERSION")
$(dep org.apache.logging.log4j log4j-api "$LOG4J_VERSION")
$(dep org.apache.logging.log4j log4j-core "$LOG4J_VERSION")
$(dep org.apache.logging.log4j log4j-slf4j-impl "$LOG4J_VERSION")" "$cache/libs.tmp" "" ||
    die "could not fetch org.apache.kafka:connect-runtime:$CONNECT_VERSION with Maven (see above)"
  # A plugin folder holds the connector and what it needs beyond Connect's
  # own API (Kafka's and SLF4J's classes come from the worker).
  copy_deps "$(dep io.debezium debezium-connector-postgres "$DEBEZIUM_VERSION")" \
    "$cache/plugins.tmp/debezium-connector-postgres" "org.apache.kafka,org.slf4j" ||
    die "could not fetch io.debezium:debezium-connector-postgres:$DEBEZIUM_VERSION with Maven (see above)"
  rm -rf "$cache/libs" "$cache/plugins"
  mv "$cache/libs.tmp" "$cache/libs"
  mv "$cache/plugins.tmp" "$cache/plugins"
  cat >"$cache/log4j2.properties" <<'EOF'
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:connect.logs.dir}/connect.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
logger.kafka.name = org.apache.kafka.clients
logger.kafka.level = WARN
EOF
  touch "$cache/complete"
  fetch_jdbc_sink
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# The worker's pid, if it runs (a stale pid file may name another process by
# now: only a java process started with this folder's worker.properties counts).
worker_pid() {
  local p
  p=$(cat "$1/pid" 2>/dev/null) || return 0
  [[ -n "$p" ]] && { tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | grep -qF "$1/worker.properties" &&
    echo "$p"
  return 0
}

# Prints "NAME STATE TASK-STATES..." per connector; exit 0 when every
# connector and at least one task of each runs, 1 when not yet, 2 when one
# failed (its trace goes to stderr).
connect_status() {
  local url=$1
  shift
  python3 - "$url" "$@" <<'EOF'
import json, sys, urllib.request
url, names = sys.argv[1], sys.argv[2:]
code = 0
for n in names:
    try:
        with urllib.request.urlopen(f"{url}/connectors/{n}/status", timeout=5) as r:
            st = json.load(r)
    except Exception as e:
        print(f"{n} UNREACHABLE")
        code = max(code, 1)
        continue
    tasks = st.get("tasks", [])
    states = [t["state"] for t in tasks]
    print(n, st["connector"]["state"], *states)
    for t in [st["connector"]] + tasks:
        if t.get("state") == "FAILED":
            print(f"connector {n}: {t.get('trace', '')[:3000]}", file=sys.stderr)
            code = 2
    if code < 2 and (st["connector"]["state"] != "RUNNING" or not tasks or
                     any(s != "RUNNING" for s in states)):
        code = max(code, 1)
sys.exit(code)
EOF
}

connector_names() {
  local f
  for f in "$1"/connectors/*.properties; do
    [[ -f "$f" ]] && sed -n 's/^[[:space:]]*name[[:space:]]*=[[:space:]]*//p' "$f" | head -1
  done
}

cmd_start() {
  local dir=$1
  shift
  fetch
  [[ -n "$bootstrap" ]] || die "start needs --bootstrap HOST:PORT[,...]"
  [[ $# -ge 1 ]] || die "start needs at least one connector properties file"
  mkdir -p "$dir"
  dir=$(realpath "$dir")
  [[ -n "$(worker_pid "$dir")" ]] && die "a worker already runs in $dir; stop it first (debezium.sh stop --dir $dir)"
  rm -rf "$dir/connectors"
  mkdir -p "$dir/connectors"
  local f names=()
  for f in "$@"; do
    [[ -f "$f" ]] || die "no connector file $f"
    local n
    n=$(sed -n 's/^[[:space:]]*name[[:space:]]*=[[:space:]]*//p' "$f" | head -1)
    [[ -n "$n" ]] || die "connector file $f has no name=..."
    cp "$f" "$dir/connectors/$n.properties"
    names+=("$n")
  done
  local port
  port=$(free_port)
  cat >"$dir/worker.properties" <<EOF
bootstrap.servers=$bootstrap
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=$schemas
value.converter.schemas.enable=$schemas
offset.storage.file.filename=$dir/offsets
offset.flush.interval.ms=1000
plugin.path=$cache/plugins
plugin.discovery=service_load
listeners=http://127.0.0.1:$port
rest.advertised.host.name=127.0.0.1
EOF
  local kv
  for kv in "${settings[@]}"; do echo "$kv" >>"$dir/worker.properties"; done
  echo "http://127.0.0.1:$port" >"$dir/url"
  local jvm=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20)
  [[ $quick == 1 ]] && jvm=(-XX:+UseSerialGC -XX:TieredStopAtLevel=1)
  rm -f "$dir/pid"
  local files=()
  for n in "${names[@]}"; do files+=("$dir/connectors/$n.properties"); done
  setsid bash -c 'echo $$ >"$1/pid.tmp" && mv "$1/pid.tmp" "$1/pid"; shift; exec "$@"' _ "$dir" \
    java -Xms128m -Xmx"$heap" "${jvm[@]}" -Djava.awt.headless=true -Dconnect.logs.dir="$dir" \
    -Dlog4j2.configurationFile="$cache/log4j2.properties" -cp "$cache/libs/*" \
    org.apache.kafka.connect.cli.ConnectStandalone "$dir/worker.properties" "${files[@]}" \
    >"$dir/stdout.log" 2>&1 </dev/null &
  local deadline=$((SECONDS + 10))
  until [[ -f "$dir/pid" ]] || ((SECONDS > deadline)); do sleep 0.02; done
  if [[ -n "$owner" ]]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [[ -f "$2/pid" ]]; do sleep 1; done
                    [[ -f "$2/pid" ]] && exec "$3" stop --dir "$2"' _ "$owner" "$dir" "$(realpath "$0")" \
      >/dev/null 2>&1 </dev/null &
  fi
  deadline=$((SECONDS + ${DEBEZIUM_START_TIMEOUT:-180}))
  local rc
  while ((SECONDS < deadline)); do
    [[ -n "$(worker_pid "$dir")" ]] ||
      { tail -30 "$dir/connect.log" "$dir/stdout.log" >&2 2>/dev/null; die "the Kafka Connect worker in $dir exited while starting (logs above)"; }
    rc=0
    connect_status "http://127.0.0.1:$port" "${names[@]}" >/dev/null || rc=$?
    if ((rc == 0)); then
      echo "http://127.0.0.1:$port"
      return 0
    fi
    ((rc == 2)) && die "a connector failed to start (trace above; worker log $dir/connect.log)"
    sleep 0.5
  done
  die "the connectors in $dir did not run within ${DEBEZIUM_START_TIMEOUT:-180} s (see $dir/connect.log)"
}

cmd_stop() {
  local dir=$1 sig=${2:-TERM} p
  [[ -d "$dir" ]] || return 0
  p=$(worker_pid "$dir")
  rm -f "$dir/pid"  # first: the --owner watchdog ends
  [[ -n "$p" ]] || return 0
  kill -"$sig" "$p" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
}

cmd=${1:-}
[[ -n "$cmd" ]] || usage
shift
dir="" bootstrap="" schemas=true owner="" quick=0 rest=() settings=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir=${2:?--dir needs a folder}; shift 2 ;;
    --bootstrap) bootstrap=${2:?--bootstrap needs HOST:PORT}; shift 2 ;;
    --schemas)
      schemas=${2:?--schemas needs true or false}
      [[ $schemas == true || $schemas == false ]] || die "--schemas takes true or false"
      shift 2 ;;
    --set) [[ ${2:-} == *=* ]] || die "--set takes KEY=VALUE"; settings+=("$2"); shift 2 ;;
    --owner) owner=${2:?--owner needs a pid}; shift 2 ;;
    --quick-start) quick=1; shift ;;
    -h | --help) usage ;;
    *) rest+=("$1"); shift ;;
  esac
done
[[ -n "$dir" ]] && dir=$(realpath -m "$dir")

case "$cmd" in
  fetch) fetch ;;
  cached) [[ -f "$cache/complete" && -f "$cache/plugins/debezium-connector-jdbc/.complete-$DEBEZIUM_JDBC_VERSION" ]] ;;
  version) echo "debezium $DEBEZIUM_VERSION, debezium-connector-jdbc $DEBEZIUM_JDBC_VERSION, kafka-connect $CONNECT_VERSION" ;;
  start) [[ -n "$dir" ]] || usage; cmd_start "$dir" "${rest[@]}" ;;
  status)
    [[ -n "$dir" && -f "$dir/url" ]] || die "no worker in ${dir:-?}"
    mapfile -t names < <(connector_names "$dir")
    connect_status "$(cat "$dir/url")" "${names[@]}" || true
    ;;
  stop) [[ -n "$dir" ]] || usage; cmd_stop "$dir" TERM ;;
  kill) [[ -n "$dir" ]] || usage; cmd_stop "$dir" KILL ;;
  *) echo "debezium.sh: unknown command \"$cmd\"" >&2; usage ;;
esac
