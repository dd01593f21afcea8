#!/usr/bin/env bash
# Runs a libFuzzer target over a scratch copy of the seed corpus.
#
#   fuzz/run.sh BINARY [extra libFuzzer args]   (make fuzz ARGS="-runs=100000")
#
# Defaults: one million inputs, inputs up to 4 KiB, the envelope dictionary.
# Later arguments override earlier ones, so ARGS can change any default.
# New interesting inputs go to fuzz/corpus-work/ (gitignored); a crashing
# input is written next to BINARY, in crashes/. Exits non-zero on a crash.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: fuzz/run.sh BINARY [libFuzzer args...]" >&2
  exit 2
fi
binary=$1
shift
if [[ ! -x "$binary" ]]; then
  echo "fuzz/run.sh: $binary is not an executable; build it with make fuzz" >&2
  exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work="$here/corpus-work"
crashes="$(cd "$(dirname "$binary")" && pwd)/crashes"
log=$(mktemp "${TMPDIR:-/tmp}/fuzz-log.XXXXXX")
trap 'rm -f "$log"' EXIT
mkdir -p "$work" "$crashes"
cp -n "$here"/corpus/* "$work"/ 2>/dev/null || true

start=$(date +%s)
set +e
"$binary" -runs=1000000 -max_len=4096 -dict="$here/envelope.dict" \
  -artifact_prefix="$crashes/" -print_final_stats=1 "$@" "$work" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
elapsed=$(( $(date +%s) - start ))

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
corpus=$(find "$work" -type f | wc -l)
if [[ $rc -eq 0 ]]; then
  echo "fuzz: OK: ${runs:-?} inputs in ${elapsed}s (${speed:-?} exec/s), no crash; corpus $corpus inputs in $work"
else
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  echo "fuzz: FAILED (exit $rc) after ${runs:-?} inputs in ${elapsed}s; reproduce with: $binary ${artifact:-<crash file>}"
fi
exit "$rc"
