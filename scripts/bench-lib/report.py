#!/usr/bin/env python3
"""Turns the raw rows of one scripts/bench run into the IOPS trace (iops.txt).

  report.py iops RAW_TSV SKIPPED_TSV HEADER_FILE > iops.txt

RAW_TSV rows: target workload iops p50_us p99_us mib_s status (status ok|fail).
The trace has '#' comment lines (facts, notes, the comparison sections) and exactly
one uncommented table, which scripts/plot-bench reads:
  target workload iops p50_us p99_us mib_s x_rublk_null x_rublk_loop x_1dev
Ratios are '-' where a figure is missing; failed runs keep their row with iops 0."""
import re
import statistics
import sys

# (what, target, workload, reference workload or target, threshold)
TARGETS = [
    ("cache-hit 4k randread QD32 vs ublk null", "glidefs", "rr4k-qd32", "rublk-null", 0.8),
    ("cache-hit 4k randread QD1 vs ublk null", "glidefs", "rr4k-qd1", "rublk-null", 0.8),
    ("4k randwrite QD32 vs ublk null", "glidefs", "rw4k-qd32", "rublk-null", 0.7),
    ("cache-hit 4k randread QD32 vs rublk loop", "glidefs", "rr4k-qd32", "rublk-loop", 1.0),
    ("cache-hit 4k randread QD1 vs rublk loop", "glidefs", "rr4k-qd1", "rublk-loop", 1.0),
    ("4k randwrite QD32 vs rublk loop", "glidefs", "rw4k-qd32", "rublk-loop", 1.0),
    # Issue 19: a FLUSH-heavy writer against the cache's own file system.
    ("4k randwrite+fsync QD1 vs the cache disk", "glidefs", "fsw4k-qd1", "cache-file", 0.5),
]
# (USER_COPY target, bounce twin, what they are) for the bounce comparison.
BOUNCE_PAIRS = [
    ("glidefs", "glidefs-bounce", "the daemon"),
    ("dp-mem", "dp-mem-bounce", "data plane, in-memory target"),
    ("dp-null", "dp-null-bounce", "data plane, null target"),
]
# Issue 7's reference figures (2 vCPU TCG, kernel 6.12), to place this VM.
REFERENCE = [
    ("null_blk", "rr4k-qd32", 64000),
    ("rublk-null", "rr4k-qd32", 14800),
    ("rublk-null", "rw4k-qd32", 11700),
    ("rublk-null", "rr4k-qd1", 3700),
]


def load_rows(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) < 7:
                continue
            rows.append({"target": p[0], "wl": p[1], "iops": float(p[2]),
                         "p50": float(p[3]), "p99": float(p[4]), "mib": float(p[5]),
                         "status": p[6]})
    return rows


def aggregate(rows):
    """One row per (target, workload), in first-seen order: the median of each
    figure over the ok runs, the number of runs, and the spread of IOPS
    ((max - min) / median) when there was more than one ok run."""
    groups = {}
    for r in rows:
        groups.setdefault((r["target"], r["wl"]), []).append(r)
    out = []
    for (target, wl), runs in groups.items():
        ok = [r for r in runs if r["status"] == "ok"]
        agg = {"target": target, "wl": wl, "runs": len(runs), "failed": len(runs) - len(ok)}
        if ok:
            for k in ("iops", "p50", "p99", "mib"):
                agg[k] = statistics.median(r[k] for r in ok)
            agg["status"] = "ok"
            vals = [r["iops"] for r in ok]
            agg["spread"] = (max(vals) - min(vals)) / agg["iops"] if len(ok) > 1 and agg["iops"] else None
        else:
            agg.update(iops=0, p50=0, p99=0, mib=0, status="fail", spread=None)
        out.append(agg)
    return out


def ratio(a, b):
    if not a or not b:
        return None
    return a / b


def fmt(r):
    return "-" if r is None else f"{r:.2f}"


def iops_report(raw, skipped, header):
    rows = aggregate(load_rows(raw))
    by = {(r["target"], r["wl"]): r["iops"] for r in rows if r["status"] == "ok"}
    out = []
    with open(header, encoding="utf-8") as f:
        out.extend(line.rstrip("\n") for line in f)
    out.append("#")
    out.append("# Table: IOPS, completion latency p50/p99 (us), MiB/s, and ratios of IOPS to")
    out.append("# rublk null (the ublk ceiling), rublk loop (a peer on a file) and, for")
    out.append("# N-device rows, to the same target's single-device figure.")
    out.append("# With several runs per figure (BENCH_ROUNDS): medians; runs = ok/total runs,")
    out.append("# spread = (max - min) / median of the IOPS.")
    cols = ["target", "workload", "iops", "p50_us", "p99_us", "mib_s",
            "x_rublk_null", "x_rublk_loop", "x_1dev", "runs", "spread"]
    table = []
    for r in rows:
        m = re.match(r"(.*)-\d+dev$", r["wl"])
        base = m.group(1) if m else None
        iops = r["iops"] if r["status"] == "ok" else 0
        table.append([
            r["target"], r["wl"] + ("" if r["status"] == "ok" else "(FAILED)"),
            f"{iops:.0f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['mib']:.1f}",
            fmt(ratio(iops, by.get(("rublk-null", r["wl"])))),
            fmt(ratio(iops, by.get(("rublk-loop", r["wl"])))),
            fmt(ratio(iops, by.get((r["target"], base)))) if base else "-",
            f"{r['runs'] - r['failed']}/{r['runs']}",
            "-" if r["spread"] is None else f"{100 * r['spread']:.0f}%",
        ])
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c)
              for i, c in enumerate(cols)]
    out.append("# " + "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    for t in table:
        out.append("  " + "  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())

    skips = []
    try:
        with open(skipped, encoding="utf-8") as f:
            skips = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    except FileNotFoundError:
        pass
    if skips:
        out.append("#")
        out.append("# Not measured in this run:")
        for s in skips:
            out.append(f"#   {s[0]}: {s[1] if len(s) > 1 else '?'}")

    for uc_t, bo_t, what in BOUNCE_PAIRS:
        wls = [r["wl"] for r in rows if r["target"] == uc_t]
        if not wls or not any(r["target"] == bo_t for r in rows):
            continue
        out.append("#")
        out.append(f"# USER_COPY + pool ({uc_t}) vs bounce mode ({bo_t}), {what}, IOPS:")
        out.append("#   workload        usercopy  bounce  usercopy/bounce  uc/rublk_null  bounce/rublk_null")
        for wl in wls:
            uc, bo, nu = by.get((uc_t, wl)), by.get((bo_t, wl)), by.get(("rublk-null", wl))
            out.append(f"#   {wl:<15} {uc or 0:>8.0f}  {bo or 0:>6.0f}  {fmt(ratio(uc, bo)):>15}"
                       f"  {fmt(ratio(uc, nu)):>13}  {fmt(ratio(bo, nu)):>17}")

    for subject, label in (("glidefs", "the daemon"), ("dp-mem", "data plane only, examples/ublk_mem")):
        if subject == "dp-mem" and not any(r["target"] == "dp-mem" for r in rows):
            continue
        out.append("#")
        out.append(f"# Targets (issue 7) for {subject} ({label}):")
        for what, _, wl, ref, thr in TARGETS:
            r = ratio(by.get((subject, wl)), by.get((ref, wl)))
            verdict = "n/a (not measured)" if r is None else ("PASS" if r >= thr else "MISS")
            out.append(f"#   {what:<42} >= {thr:.1f}x  measured {fmt(r):>5}  {verdict}")
        multi = [r["wl"] for r in rows if r["target"] == subject and re.match(r".*-\d+dev$", r["wl"])]
        for wl in multi or ["rr4k-qd32-8dev", "rw4k-qd32-8dev"]:
            base, n = re.match(r"(.*)-(\d+)dev$", wl).groups()
            r = ratio(by.get((subject, wl)), by.get((subject, base)))
            verdict = "n/a (not measured)" if r is None else ("PASS" if r >= 1.0 else "MISS")
            what = f"{n}-device aggregate vs 1 device, {base}"
            out.append(f"#   {what:<42} >= 1.0x  measured {fmt(r):>5}  {verdict}")

    out.append("#")
    out.append("# This VM against issue 7's reference machine (2 vCPU TCG, 6.12):")
    for tgt, wl, ref in REFERENCE:
        got = by.get((tgt, wl))
        out.append(f"#   {tgt:<10} {wl:<10} reference {ref:>6}  here {got or 0:>6.0f}  ({fmt(ratio(got, ref))}x)")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) == 5 and argv[1] == "iops":
        sys.stdout.write(iops_report(argv[2], argv[3], argv[4]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
