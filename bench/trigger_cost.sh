#!/usr/bin/env bash
# What the capture trigger costs one single-row statement, in instructions:
# deterministic where wall time and /proc CPU swing 2x on a loaded host.
#
#   bench/trigger_cost.sh [--statements N] [NAME=INSTALL_SQL ...]
#
# Builds a scratch cluster (scripts/pg.sh, port BENCH_PORT1 or 25433, in
# BENCH_WORK/trigger-cost) with the benchmark's `employees` (100,000 rows,
# unique index on emp_id, key emp_id) in one database per variant: `off`
# (triggers disabled), `new` (src/capture/install.sql) and NAME for each
# NAME=FILE given (e.g. `git show main:src/capture/install.sql >/tmp/base.sql`,
# then base=/tmp/base.sql). Then,
# with the server stopped, runs `postgres --single` under callgrind for each
# variant and statement kind (a single-row INSERT, the UPDATE of
# bench/pgbench/update.sql by a random key, a single-row DELETE), 20 and 20+N
# statements (N = 200), each its own transaction. Per statement: the whole
# statement ((Ir(20+N) - Ir(20)) / N inside PostgresMain) and the trigger's
# share (AfterTriggerEndQuery, inclusive). Needs valgrind; ~20 s per run.
set -euo pipefail
cd "$(dirname "$0")/.."
N=200
if [[ ${1:-} == --statements ]]; then N=$2; shift 2; fi
declare -A SQL=([new]=src/capture/install.sql)
NAMES=(off new)
for a in "$@"; do
  SQL[${a%%=*}]=$(realpath "${a#*=}")
  NAMES+=("${a%%=*}")
done
command -v valgrind >/dev/null || { echo "trigger_cost.sh: valgrind not found" >&2; exit 2; }
WORK=$(realpath -m "${BENCH_WORK:-bench/work}/trigger-cost")
PORT=${BENCH_PORT1:-25433}
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
scripts/pg.sh stop "$WORK/pg" >/dev/null 2>&1 || true
rm -rf "$WORK" && mkdir -p "$WORK/out"
[[ $(id -u) -eq 0 ]] && chown postgres: "$WORK" "$WORK/out"
trap 'scripts/pg.sh stop "$WORK/pg" >/dev/null 2>&1 || true' EXIT
scripts/pg.sh start "$WORK/pg" "$PORT" >/dev/null
P=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${P[@]}" -d postgres -c "CREATE DATABASE tpl"
"${P[@]}" -d tpl -f bench/sql/schema_tunnel.sql
"${P[@]}" -d tpl -v rows=100000 -f bench/sql/fill_rows.sql
"${P[@]}" -d tpl -c "CREATE UNIQUE INDEX employees_emp_id_key ON employees (emp_id)"
for v in "${NAMES[@]}"; do
  "${P[@]}" -d postgres -c "CREATE DATABASE $v TEMPLATE tpl"
  # off: the current capture, its triggers disabled.
  "${P[@]}" -d "$v" -f "${SQL[$v]:-${SQL[new]}}" 2>/dev/null
  "${P[@]}" -d "$v" -c "SELECT datatunnel.install_capture('employees', '{emp_id}')" >/dev/null
  [[ $v == off ]] && "${P[@]}" -d "$v" -c "ALTER TABLE employees DISABLE TRIGGER USER"
  "${P[@]}" -d "$v" -c "VACUUM ANALYZE employees"
done
"${P[@]}" -d postgres -c "CHECKPOINT"
scripts/pg.sh stop "$WORK/pg"
trap - EXIT

statements() {  # KIND COUNT
  python3 - "$1" "$2" <<'EOF'
import random, sys
kind, n = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
for _ in range(n):
    if kind == 'insert':
        print("INSERT INTO employees (first_name, last_name, dob, city) "
              "VALUES ('Grace', 'Hopper', '1906-12-09', 'New York');")
    elif kind == 'update':
        k = r.randint(1, 100000)
        print(f"UPDATE employees SET city = 'Arlington', last_name = 'u' || {k} WHERE emp_id = {k};")
    else:
        print("DELETE FROM employees WHERE emp_id = (SELECT max(emp_id) FROM employees);")
EOF
}
ir() {  # DB KIND COUNT -> callgrind output file
  local f="$WORK/out/$1-$2-$3"
  statements "$2" "$3" >"$f.sql"
  as_pg valgrind --tool=callgrind --toggle-collect=PostgresMain --callgrind-out-file="$f.out" \
    "$bindir/postgres" --single -D "$WORK/pg/data" -c fsync=off -c synchronous_commit=off "$1" \
    <"$f.sql" >"$f.log" 2>&1 || { echo "trigger_cost.sh: see $f.log" >&2; exit 1; }
  echo "$f.out"
}
inclusive() {  # OUT FUNCTION -> inclusive Ir
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
    awk -v fn="$2" '{ s = $0; gsub(/,/, "", $1) } s ~ (":" fn " ") && v == "" { v = $1 } END { print v + 0 }'
}
printf '%-8s %-7s %12s %12s\n' variant kind statement trigger
for kind in insert update delete; do
  for v in "${NAMES[@]}"; do
    a=$(ir "$v" "$kind" 20); b=$(ir "$v" "$kind" $((20 + N)))
    t=$(( ($(inclusive "$b" PostgresMain) - $(inclusive "$a" PostgresMain)) / N ))
    g=$(( ($(inclusive "$b" AfterTriggerEndQuery) - $(inclusive "$a" AfterTriggerEndQuery)) / N ))
    printf '%-8s %-7s %12d %12d\n' "$v" "$kind" "$t" "$g"
  done
done
