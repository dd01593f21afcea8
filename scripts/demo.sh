#!/usr/bin/env bash
# `make demo`: watch a change cross from one PostgreSQL database to another
# through Apache Kafka, on this machine, with nothing but Debian's packages
# (no Docker).
#
#   scripts/demo.sh                 start everything, run the tunnel in the
#                                   foreground (live status line); Ctrl-C stops everything
#   scripts/demo.sh --once          scripted workload, verify, print a result, stop;
#                                   exit 0 when source and target are identical
#   scripts/demo.sh --broker none   no broker: the tunnel hands changes over in
#                                   memory inside one process (combines with --once)
#
# What it starts, all on 127.0.0.1 and all under .demo/ in the checkout:
#   db1    PostgreSQL 15 on port 5433, database db1 (the source)
#   db2    PostgreSQL 15 on port 5434, database db2 (the target)
#   kafka  a single-node Apache Kafka (KRaft) by scripts/kafka.sh, on a free
#          port (the broker is fetched from Maven Central on the first run
#          only, then cached); not with --broker none
#   `datatunnel run` with the config it writes to .demo/datatunnel.toml
# Every run starts from scratch: leftovers of an earlier run in .demo/ are
# stopped and removed first.
#
# Environment: DATATUNNEL_BIN (default build/datatunnel), DEMO_DB1_PORT and
# DEMO_DB2_PORT (default 5433 and 5434), DEMO_ROWS (rows seeded, default 1000).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

once=0 broker=kafka
while [[ $# -gt 0 ]]; do
  case "$1" in
    --once) once=1; shift ;;
    --broker) broker=${2:-}; shift $(($# > 1 ? 2 : 1)) ;;
    --broker=*) broker=${1#--broker=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "demo: unknown argument \"$1\" (use --once, --broker none, or nothing)" >&2; exit 2 ;;
  esac
done
case "$broker" in
  kafka | none) ;;
  *) echo "demo: --broker takes \"kafka\" (the default) or \"none\", not \"$broker\"" >&2; exit 2 ;;
esac

# The binary: DATATUNNEL_BIN is taken relative to where you are, the default
# relative to the checkout.
if [[ -n "${DATATUNNEL_BIN:-}" ]]; then
  bin=$(realpath -m "$DATATUNNEL_BIN")
fi
cd "$(dirname "$0")/.."
root=$(pwd)
bin=${bin:-$root/build/datatunnel}
demo=$root/.demo
config=$demo/datatunnel.toml
port1=${DEMO_DB1_PORT:-5433}
port2=${DEMO_DB2_PORT:-5434}
rows=${DEMO_ROWS:-1000}

die() { echo "demo: $*" >&2; exit 1; }
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
[[ -t 1 ]] || say() { printf '==> %s\n' "$*"; }

[[ -x "$bin" ]] || die "$bin not found; build it first with \`make\` (or run \`make demo\`)"
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x "$pgbin/psql" ]] || die "PostgreSQL is not installed; run scripts/install-deps.sh (or \`make demo\`)"

# Settings in the environment would override the demo's config file
# (DATATUNNEL_<SECTION>_<KEY>); the demo only ever talks to its own servers.
for v in $(compgen -e); do
  [[ $v =~ ^DATATUNNEL_(SOURCE|TARGET|KAFKA|PIPELINE|METRICS)_ ]] && unset "$v"
done

dt() { "$bin" -c "$config" "$@"; }
psql1() { "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port1" -U postgres db1 "$@"; }
psql2() { "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port2" -U postgres db2 "$@"; }
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# ---- Stopping -------------------------------------------------------------

# Stops a process of ours: SIGTERM (a graceful stop), then SIGKILL after $2 s.
# SIGTERM rather than SIGINT: a background process of a script starts with
# SIGINT ignored until datatunnel installs its handlers, so an early SIGINT
# would be lost; an early SIGTERM ends it, which is what we want then.
stop_pid() {
  local pid=$1 grace=$2 i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  echo "demo: process $pid did not stop within ${grace}s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

# A pid file of an earlier run, if its process is still a datatunnel.
stale_pid() {
  local file=$1 pid
  [[ -f "$file" ]] || return 1
  pid=$(<"$file")
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && grep -qa datatunnel "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

tunnel_pid="" tunnel_started="" started_kafka=0 kafka_start_pid="" started_pg=0 own_pidfile=0
cleanup() {
  local rc=$? stopped=()
  trap - INT TERM HUP
  set +e
  # Flow order: the tunnel (it flushes what it sent), the broker, the databases.
  if alive "$tunnel_pid"; then stop_pid "$tunnel_pid" 30; fi
  [[ -n "$tunnel_started" ]] && stopped+=("the tunnel")
  if ((started_kafka)); then
    if alive "$kafka_start_pid"; then kill -TERM "$kafka_start_pid" 2>/dev/null; wait "$kafka_start_pid"; fi
    scripts/kafka.sh stop --dir "$demo/kafka"
    stopped+=("Kafka")
  fi
  if ((started_pg)); then
    scripts/pg.sh stop "$demo/db1"
    scripts/pg.sh stop "$demo/db2"
    stopped+=("both PostgreSQL servers")
  fi
  if ((own_pidfile)); then rm -f "$demo/tunnel.pid" "$demo/demo.pid"; fi
  case ${#stopped[@]} in
    1) echo "demo: stopped ${stopped[0]}" >&2 ;;
    2) echo "demo: stopped ${stopped[0]} and ${stopped[1]}" >&2 ;;
    3) echo "demo: stopped ${stopped[0]}, ${stopped[1]} and ${stopped[2]}" >&2 ;;
  esac
  exit "$rc"
}

# In the interactive mode, a signal while the tunnel runs is passed on to it
# (the first one stops it gracefully; like a second Ctrl-C on datatunnel
# itself, a second one makes it exit at once) and the script carries on to
# stop the rest. Otherwise the script exits, and cleanup stops it all.
signalled=0
on_signal() {
  if ((!once)) && alive "$tunnel_pid"; then
    signalled=1
    kill -TERM "$tunnel_pid" 2>/dev/null || true
  else
    exit 130
  fi
}
trap cleanup EXIT
trap on_signal INT TERM HUP

# ---- Leftovers of an earlier run --------------------------------------------

mkdir -p "$demo"
if [[ -f "$demo/demo.pid" ]]; then
  other=$(<"$demo/demo.pid")
  if [[ "$other" =~ ^[0-9]+$ && "$other" != "$$" ]] && alive "$other" &&
    grep -qa demo.sh "/proc/$other/cmdline" 2>/dev/null; then
    die "another demo is running from this checkout (pid $other); stop it with Ctrl-C first"
  fi
fi
echo $$ >"$demo/demo.pid"
own_pidfile=1

if pid=$(stale_pid "$demo/tunnel.pid"); then stop_pid "$pid" 30; fi
# (broker.pid: the development broker earlier versions of this script ran.)
if pid=$(stale_pid "$demo/broker.pid"); then stop_pid "$pid" 10; fi
[[ -d "$demo/kafka" ]] && scripts/kafka.sh stop --dir "$demo/kafka"
for d in db1 db2; do
  [[ -f "$demo/$d/data/postmaster.pid" ]] && scripts/pg.sh stop "$demo/$d"
done
rm -rf "$demo/db1" "$demo/db2" "$demo/kafka" "$demo"/*.log "$demo/kafka.out" "$demo/bootstrap" "$demo/broker.pid" "$config"

# PostgreSQL refuses to run as root, so pg.sh runs it as `postgres`, which must
# be able to reach .demo/ (a checkout under /root is private to root).
if [[ $(id -u) -eq 0 ]] && ! runuser -u postgres -- test -x "$demo"; then
  die "the postgres user cannot reach $demo (a parent folder is private); clone the repository where the postgres user can read it (e.g. under /opt or /srv)"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$port1" "$port2"; do
  if port_busy "$p"; then
    who=$(ss -Hltnp "sport = :$p" 2>/dev/null | grep -o 'users:(("[^"]*"' | head -1 | cut -d'"' -f2 || true)
    die "port $p on 127.0.0.1 is already in use${who:+ by $who}; stop that server (or set DEMO_DB1_PORT/DEMO_DB2_PORT) and try again"
  fi
done

# ---- Databases ----------------------------------------------------------------

say "Starting PostgreSQL: db1 on 127.0.0.1:$port1 and db2 on 127.0.0.1:$port2 (data in .demo/)"
started_pg=1
scripts/pg.sh start "$demo/db1" "$port1" db1
scripts/pg.sh start "$demo/db2" "$port2" db2

employees_ddl="CREATE TABLE employees(
emp_id SERIAL,
first_name VARCHAR(100),
last_name VARCHAR(100),
dob DATE,
city VARCHAR(100)
);"
psql1 -c "$employees_ddl"
psql2 -c "$employees_ddl"

say "Seeding $rows employees on db1"
psql1 -c "INSERT INTO employees(first_name, last_name, dob, city)
  SELECT (ARRAY['Ada','Alan','Grace','Edsger','Barbara','Donald','Frances','Ken'])[1 + i % 8],
         'Employee ' || i,
         DATE '1960-01-01' + (i * 37) % 15000,
         (ARRAY['Paris','Lisbon','Oslo','Tokyo','Lima','Accra'])[1 + i % 6]
  FROM generate_series(1, $rows) AS i"

# ---- Broker and config ------------------------------------------------------------

write_config() {
  cat >"$config" <<EOF
# Written by scripts/demo.sh for this run (the broker's port changes every time;
# "none": no broker, changes are handed over in memory).
# Every key is described in docs/configuration.md.
[source]
dsn = "postgresql://postgres@127.0.0.1:$port1/db1"

[target]
dsn = "postgresql://postgres@127.0.0.1:$port2/db2"

[kafka]
brokers = "$1"

[[tables]]
source = "public.employees"
key = ["emp_id"]
EOF
}

if [[ $broker == kafka ]]; then
  if ! scripts/kafka.sh cached; then
    say "Fetching Apache Kafka $(scripts/kafka.sh version) from Maven Central (first run only; about 45 MB, kept for later runs)"
    scripts/kafka.sh fetch
  fi
  say "Starting Apache Kafka $(scripts/kafka.sh version): one node in KRaft mode on 127.0.0.1 (data in .demo/kafka/; 20-60 s)"
  started_kafka=1
  # --owner: should this script die without its cleanup (kill -9), the broker
  # stops too. Its nodes run in their own session: a Ctrl-C in this terminal
  # reaches only this script, which then stops everything in order. Started
  # in the background and waited for, so that a signal is handled at once,
  # not once Kafka is up.
  scripts/kafka.sh start --dir "$demo/kafka" --partitions 4 --owner $$ >"$demo/kafka.out" &
  kafka_start_pid=$!
  wait "$kafka_start_pid" || die "Kafka did not start; see $demo/kafka/node1/server.log"
  kafka_start_pid=""
  brokers=$(<"$demo/kafka.out")
  write_config "$brokers"
  echo "Kafka at $brokers; config written to .demo/datatunnel.toml"
else
  brokers=none
  write_config none
  echo "no broker (--broker none): changes are handed over in memory; config written to .demo/datatunnel.toml"
fi

say "datatunnel init (change table and triggers on db1, state and unique key index on db2)"
dt init

# ---- Run ----------------------------------------------------------------------

# Starts `datatunnel run`; its output goes to the terminal (interactive) or to
# .demo/tunnel.log (--once).
start_tunnel() {
  if ((once)); then
    setsid "$bin" -c "$config" run </dev/null >"$demo/tunnel.log" 2>&1 &
  else
    setsid "$bin" -c "$config" run </dev/null &
  fi
  tunnel_pid=$!
  tunnel_started=1
  echo "$tunnel_pid" >"$demo/tunnel.pid"
}

# Waits for the tunnel to exit (a signal to this script interrupts `wait`;
# keep waiting until the process is really gone) and returns its exit code.
wait_tunnel() {
  local rc=0
  while true; do
    wait "$tunnel_pid" && rc=0 || rc=$?
    alive "$tunnel_pid" || break
  done
  tunnel_pid=""
  return "$rc"
}

rel_bin=$bin
[[ $bin == "$root"/* ]] && rel_bin=${bin#"$root"/}

if ((!once)); then
  cat <<EOF

$(say "Ready. In another terminal (from $root), make a change on db1:")
  psql -h 127.0.0.1 -p $port1 -U postgres db1 -c "INSERT INTO employees(first_name, last_name, dob, city) VALUES ('Linus', 'O''Neil', '1969-12-28', 'Helsinki')"
  psql -h 127.0.0.1 -p $port1 -U postgres db1 -c "UPDATE employees SET city = 'Zürich' WHERE emp_id = 1"
  psql -h 127.0.0.1 -p $port1 -U postgres db1 -c "DELETE FROM employees WHERE emp_id = 2"
and see it on db2:
  psql -h 127.0.0.1 -p $port2 -U postgres db2 -c "SELECT * FROM employees ORDER BY emp_id DESC LIMIT 5"
  psql -h 127.0.0.1 -p $port2 -U postgres db2 -c "SELECT * FROM employees WHERE emp_id IN (1, 2)"
More:
  $rel_bin -c .demo/datatunnel.toml status     # captured / published / applied / lag
  $rel_bin -c .demo/datatunnel.toml verify     # compare db1 and db2 row by row
$([[ $broker == kafka ]] && echo "  kcat -q -b $brokers -C -t datatunnel.db1.public.employees -o -2 -e -f '%k %s\n'   # the Kafka messages")

$(say "Running the tunnel: the first $rows rows arrive as a snapshot, then every change streams. Ctrl-C stops everything.")
EOF
  start_tunnel
  rc=0
  wait_tunnel || rc=$?
  echo
  if ((signalled && (rc == 0 || rc == 143))); then exit 0; fi
  ((rc == 0)) || echo "demo: datatunnel run exited with code $rc" >&2
  exit "$rc"
fi

# ---- --once: a scripted workload -------------------------------------------------

say "Running the tunnel in the background (log: .demo/tunnel.log); waiting for the snapshot to reach db2"
start_tunnel
# The snapshot copies the seeded rows first (changes made meanwhile would be
# carried correctly too, but are easier to tell apart once it is done).
for ((i = 0; ; i++)); do
  alive "$tunnel_pid" || die "datatunnel run exited early: $(tail -3 "$demo/tunnel.log")"
  dt verify >/dev/null 2>&1 && break
  ((i < 120)) || die "the snapshot did not reach db2 within 60s; see .demo/tunnel.log"
  sleep 0.5
done
dt status

say "Workload on db1: inserts, updates, deletes, a key change, quotes/unicode/NULL"
psql1 <<'SQL'
-- Values that must cross over exactly: NULL vs '', quotes, backslashes, unicode.
INSERT INTO employees(first_name, last_name, dob, city) VALUES
  ('', NULL, NULL, ''),
  ('O''Brien', 'back\slash "quoted"', '1900-01-01', E'tab\there\nnewline'),
  ('Zoë', '日本語 テキスト', '2024-02-29', 'Reykjavík 🚀'),
  (repeat('x', 100), repeat('é', 100), '0001-01-01', NULL);
-- Many changes in one transaction.
BEGIN;
INSERT INTO employees(first_name, last_name, city)
  SELECT 'Batch', 'Row ' || i, 'Nairobi' FROM generate_series(1, 200) AS i;
UPDATE employees SET city = 'Berlin' WHERE emp_id % 10 = 0;
COMMIT;
-- Several changes to the same row, in separate transactions.
UPDATE employees SET last_name = 'first' WHERE emp_id = 3;
UPDATE employees SET last_name = 'second' WHERE emp_id = 3;
UPDATE employees SET last_name = NULL, dob = NULL WHERE emp_id = 4;
DELETE FROM employees WHERE emp_id BETWEEN 11 AND 20;
-- A key change: the row leaves emp_id 5 and appears as 100005.
UPDATE employees SET emp_id = emp_id + 100000 WHERE emp_id = 5;
-- Delete a row and insert it again under the same key.
DELETE FROM employees WHERE emp_id = 6;
INSERT INTO employees(emp_id, first_name, city) VALUES (6, 'Reborn', 'Quito');
SQL

say "Waiting until db2 matches db1 (datatunnel verify --wait 30)"
verify_rc=0
verify_out=$(dt verify --wait 30 2>&1) || verify_rc=$?
echo "$verify_out"

# An independent check: the full contents of both tables, as text.
table_text() {
  "$1" -At -c "SELECT md5(COALESCE(string_agg(format('%s|%s|%s|%s|%s', emp_id,
    quote_nullable(first_name), quote_nullable(last_name), dob, quote_nullable(city)),
    E'\n' ORDER BY emp_id), '')) FROM employees"
}
sum1=$(table_text psql1)
sum2=$(table_text psql2)
rows1=$(psql1 -At -c "SELECT count(*) FROM employees")
rows2=$(psql2 -At -c "SELECT count(*) FROM employees")

status_out=$(dt status 2>&1) || true
tunnel_ok=1
alive "$tunnel_pid" || tunnel_ok=0

say "Stopping the tunnel"
kill -TERM "$tunnel_pid" 2>/dev/null || true
run_rc=0
wait_tunnel || run_rc=$?

echo
say "Result"
echo "rows: db1 $rows1, db2 $rows2 (contents md5: db1 $sum1, db2 $sum2)"
echo "$status_out"
ok=1
if ((verify_rc != 0)); then echo "FAIL: datatunnel verify exited with $verify_rc"; ok=0; fi
if [[ "$sum1" != "$sum2" ]]; then echo "FAIL: the tables differ"; ok=0; fi
if ((!tunnel_ok || run_rc != 0)); then echo "FAIL: datatunnel run exited with $run_rc"; ok=0; fi
if ((ok)); then
  echo "OK: db2.employees is identical to db1.employees"
  exit 0
fi
echo "--- last lines of .demo/tunnel.log:"
tail -20 "$demo/tunnel.log"
exit 1
