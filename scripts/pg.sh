#!/usr/bin/env bash
# Throwaway PostgreSQL clusters for the demo, tests and benchmarks.
#
#   scripts/pg.sh start DIR PORT [DB ...]   initdb DIR if needed, start on 127.0.0.1:PORT, create DBs
#   scripts/pg.sh stop DIR                  stop the cluster (fast shutdown)
#   scripts/pg.sh restart DIR               restart it (same port)
#   scripts/pg.sh crash DIR                 stop it as a crash would (immediate shutdown)
#
# Listens on loopback only, trusts local connections (user postgres), keeps
# its socket and log inside DIR. initdb refuses to run as root, so as root the
# server runs as the `postgres` user Debian's package creates.
# PG_FSYNC=off makes it faster for tests (never for real data).
# PG_EXTRA_OPTS: more server options, for experiments (e.g. "-c
# shared_preload_libraries=pg_stat_statements").
# PG_OWNER=PID (tests): once process PID is gone, stop the cluster and delete
# DIR (and its parent, if that is then empty), so a test binary killed mid-run
# (timeout, kill -9) leaves no server.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x "$bindir/initdb" ]] || { echo "pg.sh: PostgreSQL server binaries not found; run scripts/install-deps.sh" >&2; exit 1; }

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cmd=${1:-}; dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: pg.sh start|stop|restart|crash DIR [PORT [DB...]]" >&2; exit 2; }
dir=$(realpath -m "$dir")

case "$cmd" in
  start)
    port=${3:?usage: pg.sh start DIR PORT [DB ...]}
    shift 3
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
      if [[ -n "${PG_TEMPLATE:-}" ]]; then
        # initdb once into a template, then copy it: much faster for tests.
        mkdir -p "$PG_TEMPLATE"
        [[ $(id -u) -eq 0 ]] && chown postgres: "$PG_TEMPLATE"
        (
          flock 9
          if [[ ! -f "$PG_TEMPLATE/data/PG_VERSION" ]]; then
            as_pg "$bindir/initdb" -D "$PG_TEMPLATE/data.tmp" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
              >"$PG_TEMPLATE/initdb.log" 2>&1 || { echo "pg.sh: initdb failed, see $PG_TEMPLATE/initdb.log" >&2; exit 1; }
            mv "$PG_TEMPLATE/data.tmp" "$PG_TEMPLATE/data"
          fi
        ) 9>"$PG_TEMPLATE.lock"
        as_pg cp -a "$PG_TEMPLATE/data" "$dir/data"
      else
        as_pg "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
          { echo "pg.sh: initdb failed, see $dir/initdb.log" >&2; exit 1; }
      fi
    fi
    as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=${PG_FSYNC:-on} \
          -c synchronous_commit=${PG_SYNC_COMMIT:-on} -c full_page_writes=${PG_FSYNC:-on} \
          -c max_connections=200 -c shared_buffers=${PG_SHARED_BUFFERS:-128MB} \
          -c wal_level=${PG_WAL_LEVEL:-replica} -c max_wal_size=2GB -c log_min_messages=warning ${PG_EXTRA_OPTS:-}" \
      start >/dev/null
    if [[ -n "${PG_OWNER:-}" ]]; then
      # The watchdog: while the owner lives and the cluster is there, wait.
      setsid bash -c 'while kill -0 "$1" 2>/dev/null && [[ -f "$2/data/PG_VERSION" ]]; do sleep 1; done
                      [[ -f "$2/data/PG_VERSION" ]] && "$3" stop "$2" && rm -rf "$2" && rmdir "${2%/*}"' \
        _ "$PG_OWNER" "$dir" "$(realpath "$0")" >/dev/null 2>&1 </dev/null &
    fi
    for db in "$@"; do
      if ! "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc \
           "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
        "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db"
      fi
    done
    ;;
  stop)
    [[ -f "$dir/data/postmaster.pid" ]] && as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    ;;
  restart)
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w restart >/dev/null
    ;;
  crash)
    # As a crash would (tests): no shutdown checkpoint, the next start
    # recovers from the WAL and empties unlogged tables.
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
  *) echo "pg.sh: unknown command $cmd" >&2; exit 2 ;;
esac
