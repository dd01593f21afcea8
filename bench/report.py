#!/usr/bin/env python3
"""Turns bench/run.sh's raw results into bench/results/<name>.{md,csv} and PNG plots.

  report.py --out bench/work/out --results bench/results --name 2025-01-01

Standard library only; the plots need gnuplot (gnuplot-nox).
"""
import argparse
import csv
import glob
import os
import shutil
import statistics
import subprocess
from collections import defaultdict

VARIANT_NAMES = {
    "kafka": "tunnel, through the broker (run)",
    "split": "tunnel, through the broker (produce + consume)",
    "kafka-tx": "tunnel, through the broker (run), transaction mode",
    "kafka-key": "tunnel, through the broker (run), key mode",
    "none": "tunnel, --broker none",
    "none-tx": "tunnel, --broker none, transaction mode",
    "none-key": "tunnel, --broker none, key mode",
    "ref": "logical replication",
    "debezium": "Debezium (PostgreSQL connector → broker → JDBC sink)",
    "copy": "COPY pipe (psql \\copy | psql \\copy)",
    "sub": "logical replication initial copy",
    "trigger-off": "capture triggers disabled",
    "trigger-on": "capture triggers enabled",
}
STREAM_ORDER = ["kafka", "kafka-key", "kafka-tx", "split", "none", "none-key", "none-tx",
                "debezium", "ref"]


def debezium_targets(r, sc, case, targets, metric, better, factor, what):
    """Issue 21: datatunnel through the broker against Debezium, measured in the same run."""
    dbz = r.median(sc, case, "debezium", metric)
    if dbz is None or dbz == 0:
        return
    for v in BROKER_VARIANTS:
        got = r.median(sc, case, v, metric)
        if got is None:
            continue
        if better == "higher":
            targets.append((f"{what} through the broker ({v}): ≥ {factor:g}× Debezium's",
                            f"datatunnel ÷ Debezium = {got / dbz:.2f}× ({got:,.0f} vs {dbz:,.0f})",
                            got >= factor * dbz))
        else:
            targets.append((f"{what} through the broker ({v}): ≤ 1/{1 / factor:g} of Debezium's",
                            f"datatunnel ÷ Debezium = {got / dbz:.2f}× ({got:.1f} vs {dbz:.1f} ms)",
                            got <= factor * dbz))


def load_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    return meta


def fnum(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


class Results:
    def __init__(self, raw):
        self.values = defaultdict(list)  # (scenario, case, variant, metric) -> [(run, value)]
        with open(raw) as f:
            for row in csv.DictReader(f):
                v = fnum(row["value"])
                if v is None:
                    continue
                self.values[(row["scenario"], row["case"], row["variant"], row["metric"])].append(
                    (int(row["run"]), v))

    def runs(self, sc, case, variant, metric):
        return [v for _, v in sorted(self.values.get((sc, case, variant, metric), []))]

    def median(self, *key):
        vals = self.runs(*key)
        return statistics.median(vals) if vals else None

    def cases(self, sc):
        seen = []
        for (s, c, _, _) in self.values:
            if s == sc and c not in seen:
                seen.append(c)
        return seen

    def variants(self, sc, order=None):
        seen = {v for (s, _, v, _) in self.values if s == sc}
        order = order or STREAM_ORDER
        return [v for v in order if v in seen] + sorted(seen - set(order))


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return f"{v:,.{digits}f}"


def cell(r, *key):
    vals = r.runs(*key)
    if not vals:
        return "–"
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(vals))}–{fmt(max(vals))})"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def rfmt(x):
    return "–" if x is None else f"{x:.2f}×"


BROKER_VARIANTS = ("kafka", "split")


def max_rss(r, sc, variant):
    """Largest peak RSS (MB) of any tunnel process (not the broker) in a scenario."""
    best = None
    for (s, _, v, m), vals in r.values.items():
        if s == sc and v == variant and m.startswith("rss_mb_") and m != "rss_mb_broker":
            for _, x in vals:
                best = x if best is None else max(best, x)
    return best


def downsample_cdf(vals, points=1500):
    n = len(vals)
    if n == 0:
        return []
    step = max(1, n // points)
    out = [(vals[i], (i + 1) / n) for i in range(0, n, step)]
    if out[-1][1] != 1.0:
        out.append((vals[-1], 1.0))
    return out


def gnuplot(script, png):
    if not shutil.which("gnuplot"):
        return False
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    return os.path.exists(png)


def plot_latency(out, resdir, name, rate, variants):
    series = []
    for v in variants:
        vals = []
        for path in sorted(glob.glob(os.path.join(out, f"lat-{rate}-{v}-*.txt"))):
            with open(path) as f:
                vals.extend(float(x) for x in f if x.strip())
        vals.sort()
        if not vals:
            continue
        data = os.path.join(out, f"cdf-{rate}-{v}.dat")
        with open(data, "w") as f:
            for x, p in downsample_cdf(vals):
                f.write(f"{max(x, 0.01):.3f} {p:.5f}\n")
        series.append((v, data))
    if not series:
        return None
    png = os.path.join(resdir, f"{name}-latency-{rate}.png")
    plots = ", ".join(f"'{d}' using 1:2 with steps lw 2 title '{VARIANT_NAMES.get(v, v)}'"
                      for v, d in series)
    script = f"""set terminal pngcairo size 900,520 font ',10'
set output '{png}'
set title 'Latency, commit on db1 to visible on db2, at {rate} changes/s (all runs pooled)'
set xlabel 'latency (ms, log scale)'
set ylabel 'fraction of changes'
set logscale x
set grid
set key bottom right
set yrange [0:1.02]
plot {plots}
"""
    return png if gnuplot(script, png) else None


def read_series(path):
    rows = []
    with open(path) as f:
        for line in f:
            a, b = line.strip().split(",")
            rows.append((int(a), int(b)))
    return rows


def pick_run(results, sc, case, v):
    """The run whose drain time is the median one (for plotting one curve per variant)."""
    runs = sorted(results.values.get((sc, case, v, "drain_s"), []), key=lambda x: x[1])
    if not runs:
        return 1
    return runs[(len(runs) - 1) // 2][0]


def plot_burst(out, resdir, results, name, case, variants):
    series = []
    for v in variants:
        run = pick_run(results, "burst", case, v)
        cpath = os.path.join(out, f"burst-commits-{v}-{run}.csv")
        ppath = os.path.join(out, f"burst-progress-{v}-{run}.csv")
        spath = os.path.join(out, f"burst-start-{v}-{run}")
        if not (os.path.exists(cpath) and os.path.exists(ppath) and os.path.exists(spath)):
            continue
        start = int(open(spath).read().strip())
        commits = read_series(cpath)
        progress = read_series(ppath)
        data = os.path.join(out, f"lag-{v}.dat")
        with open(data, "w") as f:
            ci, committed = 0, 0
            for t, applied in progress:
                while ci < len(commits) and commits[ci][0] <= t:
                    committed += commits[ci][1]
                    ci += 1
                f.write(f"{(t - start) / 1e6:.3f} {max(0, committed - applied)} {committed} {applied}\n")
        series.append((v, data, run))
    if not series:
        return None
    png = os.path.join(resdir, f"{name}-burst-lag.png")
    plots = ", ".join(
        f"'{d}' using 1:2 with lines lw 2 title '{VARIANT_NAMES.get(v, v)} (run {run})'"
        for v, d, run in series)
    script = f"""set terminal pngcairo size 900,520 font ',10'
set output '{png}'
set title 'Burst of {int(float(case)):,} changes: lag (committed on db1, not yet applied on db2)'
set xlabel 'seconds since the burst started'
set ylabel 'changes behind'
set format y '%.0s%c'
set grid
set key top right
plot {plots}
"""
    return png if gnuplot(script, png) else None


def plot_backlog(out, resdir, results, name, case, variants):
    series = []
    for v in variants:
        run = pick_run(results, "backlog", case, v)
        ppath = os.path.join(out, f"backlog-progress-{v}-{run}.csv")
        spath = os.path.join(out, f"backlog-start-{v}-{run}")
        if not (os.path.exists(ppath) and os.path.exists(spath)):
            continue
        start = int(open(spath).read().strip())
        data = os.path.join(out, f"backlog-{v}.dat")
        with open(data, "w") as f:
            for t, applied in read_series(ppath):
                f.write(f"{(t - start) / 1e6:.3f} {max(0, int(float(case)) - applied)}\n")
        series.append((v, data, run))
    if not series:
        return None
    png = os.path.join(resdir, f"{name}-backlog.png")
    plots = ", ".join(
        f"'{d}' using 1:2 with lines lw 2 title '{VARIANT_NAMES.get(v, v)} (run {run})'"
        for v, d, run in series)
    script = f"""set terminal pngcairo size 900,520 font ',10'
set output '{png}'
set title 'Backlog of {int(float(case)):,} changes: changes still to apply after start'
set xlabel 'seconds since the tunnel (or subscription) started'
set ylabel 'changes left'
set format y '%.0s%c'
set grid
set key top right
plot {plots}
"""
    return png if gnuplot(script, png) else None


def noise_summary(out):
    path = os.path.join(out, "noise.csv")
    if not os.path.exists(path):
        return None
    loads, busy = [], 0
    with open(path) as f:
        for row in csv.DictReader(f):
            loads.append(float(row["load1"]))
            if int(row["compile_or_test_procs"] or 0) > 0:
                busy += 1
    if not loads:
        return None
    return {
        "samples": len(loads),
        "load_mean": statistics.mean(loads),
        "load_max": max(loads),
        "busy_pct": 100.0 * busy / len(loads),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--name", required=True)
    a = ap.parse_args()
    meta = load_meta(os.path.join(a.out, "meta.env"))
    r = Results(os.path.join(a.out, "raw.csv"))
    os.makedirs(a.results, exist_ok=True)
    # Only the plots this report writes: "{name}-*.png" would also match
    # other results whose names start with this one (2026-12-07-key-vs-tx-…
    # for a run named 2026-12-07).
    stale = glob.glob(os.path.join(a.results, f"{a.name}-latency-*.png"))
    stale += [os.path.join(a.results, f"{a.name}-{p}.png") for p in ("burst-lag", "backlog")]
    for old in stale:
        if os.path.exists(old):
            os.remove(old)

    md = []
    add = md.append
    quick = meta.get("quick") == "1"
    add(f"# datatunnel benchmarks: {a.name}")
    add("")
    if quick:
        add("**Quick run** (`bench/run.sh --quick`): small sizes, one run each. It checks that "
            "the harness works; its numbers are not the benchmark.")
        add("")
    version = meta.get("version", "?").replace("datatunnel ", "").replace(" ()", "")
    add(f"- datatunnel {version}, git {meta.get('git', '?')}; PostgreSQL "
        f"{meta.get('postgres', '?')}, {meta.get('os', '?')}, kernel {meta.get('kernel', '?')}")
    add(f"- {meta.get('cores', '?')} cores ({meta.get('cpu', '?')}), {meta.get('mem_gb', '?')} GB; "
        "both servers, the broker, the tunnel and the load generator on the same machine")
    add(f"- {meta.get('runs')} run(s) of each measurement, variants interleaved; cells show the "
        "median and, in brackets, the min–max over runs; ratios are of medians, against the "
        "reference measured in the same invocation")
    if meta.get("kafka_version"):
        parts = f"{meta.get('partitions')} partitions"
        if meta.get("backlog_partitions") not in (None, meta.get("partitions")):
            parts += f" ({meta['backlog_partitions']} in the backlog and snapshot scenarios)"
        broker = (f"a real Apache Kafka {meta['kafka_version']} broker (`scripts/kafka.sh`: KRaft, "
                  "single node, replication factor 1, on this machine), one for the whole "
                  "invocation; every measurement gets a fresh topic and consumer group; topics of "
                  f"{parts}; the tunnel's default Kafka settings")
    else:
        broker = "none started (no variant through the broker)"
    add(f"- broker: {broker}; servers: `scripts/pg.sh` defaults "
        "(fsync on, synchronous_commit on, shared_buffers 128MB) with wal_level=logical on both")
    ns = noise_summary(a.out)
    if ns:
        add(f"- machine noise: 1-minute load average {ns['load_mean']:.2f} on average, "
            f"{ns['load_max']:.2f} at most; other engineers' compilers or tests were running in "
            f"{ns['busy_pct']:.0f}% of {ns['samples']} samples (every 2 s)")
    add(f"- total time: {int(meta.get('duration_s', 0)) // 60} min {int(meta.get('duration_s', 0)) % 60} s. "
        "Method: [bench/README.md](../README.md)")
    add("")

    targets = []  # (target, measured, met)

    # ---- latency
    if r.cases("latency"):
        add("## 1. Latency under steady load")
        add("")
        add(f"Mixed 50% INSERT / 40% UPDATE / 10% DELETE, one change per transaction, "
            f"{meta.get('lat_seconds')} s per rate, {int(meta.get('lat_preload', 0)):,} rows "
            "preloaded. Latency: COMMIT returned on db1 → the applying transaction commits on db2, "
            "per change, in ms.")
        add("")
        add("| rate | variant | achieved/s | p50 ms | p90 ms | p99 ms | max ms | p99 × ref | not arrived |")
        add("|---|---|---|---|---|---|---|---|---|")
        plots = []
        for case in [c for c in r.cases("latency") if any(
                r.runs("latency", c, v, "p50_ms") for v in r.variants("latency"))]:
            variants = r.variants("latency")
            ref99 = r.median("latency", case, "ref", "p99_ms")
            for v in variants:
                p99 = r.median("latency", case, v, "p99_ms")
                add(f"| {case} | {VARIANT_NAMES.get(v, v)} | {cell(r, 'latency', case, v, 'achieved_rate')} | "
                    f"{cell(r, 'latency', case, v, 'p50_ms')} | {cell(r, 'latency', case, v, 'p90_ms')} | "
                    f"{cell(r, 'latency', case, v, 'p99_ms')} | {cell(r, 'latency', case, v, 'max_ms')} | "
                    f"{rfmt(ratio(p99, ref99)) if v != 'ref' else '1.00×'} | "
                    f"{fmt(sum(r.runs('latency', case, v, 'missing')), 0)} |")
            png = plot_latency(a.out, a.results, a.name, case.split("/")[0], variants)
            if png:
                plots.append((case, png))
            rate = case.split("/")[0]
            p99n = r.median("latency", case, "none", "p99_ms")
            def short(v):
                got = r.median("latency", case, v, "achieved_rate")
                if got is not None and got < 0.95 * float(rate):
                    return f" (the source took only {got:,.0f}/s)"
                return ""
            ref50 = r.median("latency", case, "ref", "p50_ms")
            refs = {"p50": ref50, "p99": ref99}
            limits = {"1000": [("p50", 10), ("p99", 25)], "5000": [("p99", 100)]}.get(rate, [])
            for v in BROKER_VARIANTS:
                for pct, limit in limits:
                    got = r.median("latency", case, v, f"{pct}_ms")
                    if got is None:
                        continue
                    vs = (f" = {rfmt(got / refs[pct])} the reference's {refs[pct]:.2f} ms"
                          if refs[pct] and refs[pct] > 0 else "")
                    targets.append((f"latency {int(rate):,}/s through the broker ({v}): "
                                    f"{pct} ≤ {limit} ms", f"{got:.1f} ms{vs}{short(v)}",
                                    got <= limit))
            if rate == "1000":
                debezium_targets(r, "latency", case, targets, "p99_ms", "lower", 0.25,
                                 "latency 1,000/s p99")
            if p99n is not None and ref99:
                targets.append((f"latency {int(rate):,}/s with --broker none: p99 ≤ 3× the reference's",
                                f"{p99n:.1f} ms = {p99n / ref99:.2f}× ({ref99:.1f} ms){short('none')}",
                                p99n <= 3 * ref99))
        add("")
        for case, png in plots:
            add(f"![latency CDF at {case}]({os.path.basename(png)})")
        add("")

    # ---- burst
    for case in r.cases("burst"):
        add("## 2. Burst drain")
        add("")
        add(f"{int(float(case)):,} changes (50/40/10, on distinct rows) committed by "
            f"{meta.get('burst_writers')} writers, {meta.get('burst_txn')} changes per transaction, "
            "as fast as db1 takes them. Drain rate: changes / (last change applied on db2 − first "
            "writer started).")
        add("")
        add("| variant | changes/s drained | × ref | seconds | caught up after the burst, s | source committed/s | peak RSS MB |")
        add("|---|---|---|---|---|---|---|")
        ref = r.median("burst", case, "ref", "changes_per_s")
        for v in r.variants("burst"):
            med = r.median("burst", case, v, "changes_per_s")
            add(f"| {VARIANT_NAMES.get(v, v)} | {cell(r, 'burst', case, v, 'changes_per_s')} | "
                f"{rfmt(ratio(med, ref))} | {cell(r, 'burst', case, v, 'drain_s')} | "
                f"{cell(r, 'burst', case, v, 'catchup_after_s')} | {cell(r, 'burst', case, v, 'source_rate')} | "
                f"{fmt(max_rss(r, 'burst', v))} |")
            if v == "none" and med is not None and ref:
                targets.append((f"burst ({v}): ≥ 1.5× the reference's changes/s",
                                f"{med:,.0f}/s = {med / ref:.2f}×", med >= 1.5 * ref))
        debezium_targets(r, "burst", case, targets, "changes_per_s", "higher", 2, "burst changes/s")
        add("")
        png = plot_burst(a.out, a.results, r, a.name, case, r.variants("burst"))
        if png:
            add(f"![lag during the burst]({os.path.basename(png)})")
            add("")

    # ---- backlog
    for case in r.cases("backlog"):
        add("## 3. Backlog")
        add("")
        add(f"{int(float(case)):,} changes (transactions of 1,000: 500 inserts, 400 updates, 100 "
            "deletes) waiting while the tunnel is stopped (the reference: its subscription "
            "disabled, changes held in its slot); then started. Rate: changes / (caught up − start).")
        add("")
        add("| variant | changes/s, start → caught up | × ref | seconds | of which start-up, s "
            "| changes/s, first applied → caught up | × ref | filling the backlog took, s | peak RSS MB |")
        add("|---|---|---|---|---|---|---|---|---|")
        ref = r.median("backlog", case, "ref", "changes_per_s")
        refa = r.median("backlog", case, "ref", "applying_changes_per_s")
        for v in r.variants("backlog"):
            med = r.median("backlog", case, v, "changes_per_s")
            meda = r.median("backlog", case, v, "applying_changes_per_s")
            add(f"| {VARIANT_NAMES.get(v, v)} | {cell(r, 'backlog', case, v, 'changes_per_s')} | "
                f"{rfmt(ratio(med, ref))} | {cell(r, 'backlog', case, v, 'drain_s')} | "
                f"{cell(r, 'backlog', case, v, 'startup_s')} | "
                f"{cell(r, 'backlog', case, v, 'applying_changes_per_s')} | {rfmt(ratio(meda, refa))} | "
                f"{cell(r, 'backlog', case, v, 'fill_s')} | {fmt(max_rss(r, 'backlog', v))} |")
            if v in BROKER_VARIANTS and med is not None and ref:
                targets.append((f"backlog of {int(float(case)):,} through the broker ({v}): "
                                "≥ 1.0× logical replication's changes/s",
                                f"{med:,.0f}/s = {med / ref:.2f}× ({ref:,.0f}/s)", med >= ref))
            if v == "none" and med is not None:
                if ref:
                    targets.append((f"backlog ({v}): ≥ 1.5× the reference's changes/s",
                                    f"{med:,.0f}/s = {med / ref:.2f}×", med >= 1.5 * ref))
                targets.append((f"backlog ({v}): ≥ 50,000 changes/s", f"{med:,.0f}/s", med >= 50000))
        debezium_targets(r, "backlog", case, targets, "changes_per_s", "higher", 2,
                         "backlog changes/s")
        add("")
        png = plot_backlog(a.out, a.results, r, a.name, case, r.variants("backlog"))
        if png:
            add(f"![backlog drain]({os.path.basename(png)})")
            add("")

    # ---- snapshot
    for case in r.cases("snapshot"):
        add("## 4. Snapshot")
        add("")
        add(f"{int(float(case)):,} rows into an empty target table with a unique index on the key; "
            "wall time of the whole command (the tunnel's `datatunnel snapshot`, the COPY pipe, or "
            "CREATE SUBSCRIPTION until every table is ready; Debezium: from starting the Kafka "
            "Connect worker until the target holds every row of its initial snapshot).")
        add("")
        add("| variant | rows/s | × COPY pipe | × subscription copy | seconds | peak RSS MB |")
        add("|---|---|---|---|---|---|")
        copy = r.median("snapshot", case, "copy", "rows_per_s")
        sub = r.median("snapshot", case, "sub", "rows_per_s")
        for v in r.variants("snapshot", ["kafka", "none", "debezium", "copy", "sub"]):
            med = r.median("snapshot", case, v, "rows_per_s")
            add(f"| {VARIANT_NAMES.get(v, v)} | {cell(r, 'snapshot', case, v, 'rows_per_s')} | "
                f"{rfmt(ratio(med, copy))} | {rfmt(ratio(med, sub))} | "
                f"{cell(r, 'snapshot', case, v, 'seconds')} | {fmt(max_rss(r, 'snapshot', v))} |")
            if med is not None and copy:
                if v == "kafka":
                    targets.append((f"snapshot of {int(float(case)):,} rows through the broker: "
                                    "≥ 0.5× the COPY pipe's rows/s",
                                    f"{med:,.0f} rows/s = {med / copy:.2f}× ({copy:,.0f} rows/s)",
                                    med >= 0.5 * copy))
                if v == "none":
                    targets.append(("snapshot with --broker none: ≥ 0.9× the COPY pipe",
                                    f"{med:,.0f} rows/s = {med / copy:.2f}×", med >= 0.9 * copy))
        debezium_targets(r, "snapshot", case, targets, "rows_per_s", "higher", 2,
                         "snapshot rows/s (Debezium: its initial snapshot)")
        add("")

    # ---- source cost
    if r.cases("source"):
        add("## 5. Source cost")
        add("")
        add(f"pgbench, {meta.get('src_clients')} clients, {meta.get('src_seconds')} s per run, "
            "single-row transactions on db1 with the capture triggers enabled vs disabled "
            f"(ALTER TABLE ... ENABLE/DISABLE TRIGGER), {meta.get('src_pairs')} interleaved "
            "round(s), order rotating; the tunnel is not running.")
        add("")
        add("| transaction | triggers off, tps | triggers on (as `init` installs them), tps | on / off |")
        add("|---|---|---|---|")
        for case in r.cases("source"):
            if case.startswith("bulk-"):
                continue
            off = r.median("source", case, "trigger-off", "tps")
            on = r.median("source", case, "trigger-on", "tps")
            add(f"| single-row {case.upper()} | {cell(r, 'source', case, 'trigger-off', 'tps')} | "
                f"{cell(r, 'source', case, 'trigger-on', 'tps')} | {rfmt(ratio(on, off))} |")
            if on is not None and off:
                targets.append((f"source cost, single-row {case.upper()}: trigger-on ≥ 0.85× trigger-off",
                                f"{on / off:.2f}×", on >= 0.85 * off))
        add("")
        bulk = [c for c in r.cases("source") if c.startswith("bulk-")]
        if bulk:
            add(f"One statement of {meta.get('src_bulk')} rows, seconds (median), triggers "
                "enabled vs disabled, same server; speed on / off = seconds off / seconds on.")
            add("")
            add("| statement | triggers off, s | triggers on, s | speed on / off | WAL off, MB | WAL on, MB |")
            add("|---|---|---|---|---|---|")
            for case in sorted(bulk):
                off = r.median("source", case, "trigger-off", "seconds")
                on = r.median("source", case, "trigger-on", "seconds")
                add(f"| {case[len('bulk-'):].upper()} | {cell(r, 'source', case, 'trigger-off', 'seconds')} | "
                    f"{cell(r, 'source', case, 'trigger-on', 'seconds')} | {rfmt(ratio(off, on))} | "
                    f"{cell(r, 'source', case, 'trigger-off', 'wal_mb')} | "
                    f"{cell(r, 'source', case, 'trigger-on', 'wal_mb')} |")
                if on and off is not None:
                    targets.append((f"source cost, bulk {case[len('bulk-'):].upper()}: ≥ 0.7× the speed "
                                    "without capture", f"{off / on:.2f}×", off >= 0.7 * on))
            add("")

    # ---- many tables
    if r.cases("many"):
        add("## 6. Many tables")
        add("")
        add(f"One tunnel (`run --broker none`) over 1 table and over {meta.get('many_tables')} "
            "tables, all chosen by one `[[tables]]` pattern (`public.emp_*`), "
            f"{meta.get('many_preload')} rows spread over them. Idle: the CPU of the tunnel's "
            "source backends (utime + stime from /proc, in ticks of 10 ms) over "
            f"{meta.get('many_idle_seconds')} s with nothing written, per 10 s. Then "
            f"{meta.get('many_rate')} changes/s for {meta.get('many_lat_seconds')} s spread "
            "over the tables (`loadgen steady --tables N`): latency as in section 1, and the "
            "source backends' CPU meanwhile.")
        add("")
        add("| tables | idle source CPU, ticks per 10 s | latency p50 ms | p90 ms | p99 ms | "
            "not arrived | source CPU under load, % of a core |")
        add("|---|---|---|---|---|---|---|")
        cases = sorted(r.cases("many"), key=lambda c: int(c))
        for case in cases:
            add(f"| {case} | {cell(r, 'many', case, 'none', 'idle_ticks_per_10s')} | "
                f"{cell(r, 'many', case, 'none', 'p50_ms')} | {cell(r, 'many', case, 'none', 'p90_ms')} | "
                f"{cell(r, 'many', case, 'none', 'p99_ms')} | {cell(r, 'many', case, 'none', 'missing')} | "
                f"{cell(r, 'many', case, 'none', 'load_cpu_pct')} |")
        if len(cases) >= 2:
            one, many = cases[0], cases[-1]
            for metric, what in (("idle_ticks_per_10s", "idle source CPU"),
                                 ("p50_ms", "latency p50 at 1,000/s")):
                base = r.median("many", one, "none", metric)
                big = r.median("many", many, "none", metric)
                if base is not None and big is not None and base > 0:
                    targets.append((f"many tables: {what}, {many} tables ≤ 1.5× {one} table",
                                    f"{big:.1f} vs {base:.1f} = {big / base:.2f}×",
                                    big <= 1.5 * base))
        add("")

    # ---- one huge transaction
    if r.cases("bigtx"):
        add("## 7. One huge transaction")
        add("")
        add("A running tunnel, caught up, then one source transaction of each kind over "
            f"{meta.get('bigtx_rows')} rows (INSERT, then UPDATE of them, then DELETE; "
            f"{meta.get('bigtx_preload')} other rows in the table): seconds on the source, "
            "seconds from its commit until the tunnel applied all of it (its own applied "
            "counter from /metrics, polled every 50 ms), rows/s after the commit.")
        add("")
        add("| rows | variant | kind | source s | applied after commit, s | rows/s |")
        add("|---|---|---|---|---|---|")
        for case in sorted(r.cases("bigtx")):
            for v in ("kafka", "kafka-key", "kafka-tx", "split", "none", "none-key", "none-tx"):
                for op in ("insert", "update", "delete"):
                    if r.median("bigtx", case, v, f"source_s_{op}") is None:
                        continue
                    add(f"| {case} | {v} | {op.upper()} | {cell(r, 'bigtx', case, v, f'source_s_{op}')} | "
                        f"{cell(r, 'bigtx', case, v, f'apply_s_{op}')} | "
                        f"{cell(r, 'bigtx', case, v, f'rows_per_s_{op}')} |")
                    med = r.median("bigtx", case, v, f"rows_per_s_{op}")
                    if med is not None:
                        targets.append((f"{int(float(case)):,}-row {op.upper()} ({v}): ≥ 150,000 rows/s "
                                        "after its commit", f"{med:,.0f}/s", med >= 150000))
        add("")
        # The UPDATE's floor (run.sh bigtx_floor): PostgreSQL's own UPDATE of
        # the same rows, without the tunnel, on each server.
        floors = []
        for case in sorted(r.cases("bigtx")):
            for v in ("kafka", "kafka-tx", "split", "none", "none-tx"):
                src = r.median("bigtx", case, v, "floor_s_source_update")
                tgt = r.median("bigtx", case, v, "floor_s_target_update")
                ours = r.median("bigtx", case, v, "apply_s_update")
                if src is None or tgt is None:
                    continue
                n = float(case)
                floors.append(f"| {case} | {v} | {src:.2f} ({n / src:,.0f}/s) | "
                              f"{tgt:.2f} ({n / tgt:,.0f}/s) | "
                              + (f"{ours / tgt:.2f}× |" if ours else "– |"))
        cpus = []
        for case in sorted(r.cases("bigtx")):
            for v in ("kafka", "kafka-tx", "split", "none", "none-tx"):
                for op in ("insert", "update", "delete"):
                    vals = [r.median("bigtx", case, v, f"cpu_s_{w}_{op}")
                            for w in ("source", "tunnel", "target")]
                    if any(x is None for x in vals):
                        continue
                    cpus.append(f"| {case} | {v} | {op.upper()} | {vals[0]:.2f} | {vals[1]:.2f} | "
                                f"{vals[2]:.2f} |")
        if cpus:
            add("CPU seconds from each commit until applied: the tunnel's sessions on the source, "
                "the tunnel's processes, the tunnel's sessions on the target (on a loaded host "
                "wall time follows the load, CPU time much less).")
            add("")
            add("| rows | variant | kind | source | tunnel | target |")
            add("|---|---|---|---|---|---|")
            for line in cpus:
                add(line)
            add("")
        if floors:
            add("The UPDATE's floor, measured after each variant on a copy of the table without "
                "capture (after a CHECKPOINT): the source server's own `UPDATE` of the rows, and "
                "on the target server a plain `UPDATE … FROM` a table holding their after-images "
                "(seconds, rows/s), and the tunnel's apply time after the commit against the "
                "latter.")
            add("")
            add("| rows | variant | source's own UPDATE | target's UPDATE … FROM | tunnel ÷ target's |")
            add("|---|---|---|---|---|")
            for line in floors:
                add(line)
            add("")

    # ---- key against transaction (issue 19 item 7)
    # Since 2026-12-07 the default (kafka, none) is transaction mode and the
    # -key variants name key mode; earlier results named transaction mode -tx.
    def present(v):
        return any(v in r.variants(sc) for sc in ("latency", "burst", "backlog"))
    pairs = [(k, t) for k, t in (("kafka-key", "kafka"), ("none-key", "none"),
                                 ("kafka", "kafka-tx"), ("none", "none-tx"))
             if present(k) and present(t)]
    broker_pair = next(((k, t) for k, t in pairs if k.startswith("kafka")), None)
    if pairs:
        add("## 8. Key against transaction mode")
        add("")
        add('`apply_consistency = "transaction"` (the default; `-tx` in results before '
            '2026-12-07) against `"key"` (the `-key` variants; the default before), both '
            "from the sections above (same run, interleaved). Issue 19 made transaction mode "
            "the default on the condition that, through the broker, its backlog drain rate is "
            "at least 0.8× key mode's and its p99 latency at 1,000 changes/s at most 2× key "
            "mode's.")
        add("")
        add("| measurement | key | transaction | transaction ÷ key |")
        add("|---|---|---|---|")
        rows = []
        for k, t in pairs:
            where = "through the broker" if k.startswith("kafka") else "--broker none"
            for case in r.cases("latency"):
                for pct in ("p50", "p99"):
                    rows.append((f"latency {case} {where}, {pct} ms", "latency", case, k, t,
                                 f"{pct}_ms"))
            for sc in ("burst", "backlog"):
                for case in r.cases(sc):
                    rows.append((f"{sc} of {int(float(case)):,} {where}, changes/s", sc, case, k, t,
                                 "changes_per_s"))
        for what, sc, case, k, t, metric in rows:
            kv_, tv = r.median(sc, case, k, metric), r.median(sc, case, t, metric)
            if kv_ is None and tv is None:
                continue
            add(f"| {what} | {cell(r, sc, case, k, metric)} | {cell(r, sc, case, t, metric)} | "
                f"{rfmt(ratio(tv, kv_))} |")
        add("")
        for case in r.cases("backlog") if broker_pair else []:
            kv_, tv = (r.median("backlog", case, v, "changes_per_s") for v in broker_pair)
            if kv_ and tv is not None:
                targets.append(("transaction mode as the default: backlog drain through the broker "
                                "≥ 0.8× key mode's", f"{tv:,.0f} vs {kv_:,.0f}/s = {tv / kv_:.2f}×",
                                tv >= 0.8 * kv_))
        for case in [c for c in r.cases("latency") if c.startswith("1000/")] if broker_pair else []:
            kv_, tv = (r.median("latency", case, v, "p99_ms") for v in broker_pair)
            if kv_ and tv is not None:
                targets.append(("transaction mode as the default: p99 at 1,000/s through the "
                                "broker ≤ 2× key mode's", f"{tv:.1f} vs {kv_:.1f} ms = {tv / kv_:.2f}×",
                                tv <= 2 * kv_))

    # ---- memory
    mem_rows = []
    for (s, c, v, m), vals in sorted(r.values.items()):
        if m.startswith("rss_mb_"):
            xs = [x for _, x in vals]
            mem_rows.append((s, c, v, m[len("rss_mb_"):], max(xs)))
    if mem_rows:
        add("## Memory: peak RSS of every process (VmHWM at exit, from wait4's ru_maxrss), max over runs")
        add("")
        add("| scenario | case | variant | process | peak RSS MB | CPU s (median) |")
        add("|---|---|---|---|---|---|")
        worst = None
        for s, c, v, proc, mb in mem_rows:
            cpu = r.median(s, c, v, f"cpu_s_{proc}")
            name = proc
            if proc == "broker":
                name = "Kafka broker (JVM, peak since it started; not a tunnel process)"
            elif v == "debezium":
                name = "Kafka Connect worker (Debezium's two connectors; not a tunnel process)"
            add(f"| {s} | {c} | {v} | {name} | {fmt(mb)} | {fmt(cpu)} |")
            if proc != "broker" and v != "debezium" and (worst is None or mb > worst[0]):
                worst = (mb, f"{s} {c}, {v}, `{proc}`")
        add("")
        add("The broker's CPU is what it used during that measurement; its RSS is the JVM's "
            "peak since it started (the same broker serves every measurement).")
        add("")
        if worst is not None:
            targets.append(("memory: every tunnel process < 256 MB peak RSS in every scenario",
                            f"max {worst[0]:.0f} MB ({worst[1]})", worst[0] < 256))

    early = [(s_, c, v, m[len("early_exit_"):], len(vals)) for (s_, c, v, m), vals in
             sorted(r.values.items()) if m.startswith("early_exit_")]
    if early:
        add("## Processes that exited before the end of a measurement")
        add("")
        for s_, c, v, proc, n in early:
            runs = ", ".join(str(run) for run, _ in r.values[(s_, c, v, "early_exit_" + proc)])
            add(f"- {s_} / {c} / {v}: `{proc}` (run {runs}); see bench/work/out/logs")
        add("")

    # ---- targets first
    head = ["## Targets", ""]
    if quick:
        head += ["(Quick-run sizes: indicative only.)", ""]
    head += ["| target | measured (median) | |", "|---|---|---|"]
    for t, m, ok in targets:
        head.append(f"| {t} | {m} | {'met' if ok else '**missed**'} |")
    head.append("")
    insert_at = next(i for i, line in enumerate(md) if line.startswith("- total time")) + 2
    md[insert_at:insert_at] = head

    with open(os.path.join(a.results, f"{a.name}.md"), "w") as f:
        f.write("\n".join(md) + "\n")

    # ---- CSV: every measurement, one row per (scenario, case, variant, metric)
    with open(os.path.join(a.results, f"{a.name}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "case", "variant", "metric", "runs", "median", "min", "max",
                    "ratio_to_reference", "values"])
        for (s, c, v, m), vals in sorted(r.values.items()):
            xs = [x for _, x in sorted(vals)]
            ref_variant = {"snapshot": "copy", "source": "trigger-off"}.get(s, "ref")
            refm = r.median(s, c, ref_variant, m)
            w.writerow([s, c, v, m, len(xs), statistics.median(xs), min(xs), max(xs),
                        "" if refm in (None, 0) else f"{statistics.median(xs) / refm:.4f}",
                        ";".join(f"{x:g}" for x in xs)])


if __name__ == "__main__":
    main()
