#!/usr/bin/env python3
"""Reads one fio JSON output (group_reporting) and prints one tab-separated row:
iops p50_us p99_us bw_mib  (read + write summed; latency is completion latency of
the direction that did the I/O, or the read side when both did).

Exits non-zero when the file has no job or no I/O, so a broken run is never
reported as a figure."""
import json
import sys


def pct(side, key):
    p = side.get("clat_ns", {}).get("percentile", {})
    v = p.get(key)
    return (v or 0) / 1000.0


def main(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    # fio may print warnings before the JSON object.
    start = text.find("{")
    if start < 0:
        sys.exit(f"{path}: no JSON")
    data = json.loads(text[start:])
    jobs = data.get("jobs") or []
    if not jobs:
        sys.exit(f"{path}: no jobs")
    job = jobs[0]
    if job.get("error"):
        sys.exit(f"{path}: job error {job['error']}")
    rd, wr = job.get("read", {}), job.get("write", {})
    iops = rd.get("iops", 0) + wr.get("iops", 0)
    bw = (rd.get("bw_bytes", 0) + wr.get("bw_bytes", 0)) / 1048576.0
    if iops <= 0:
        sys.exit(f"{path}: no I/O completed")
    side = rd if rd.get("iops", 0) > 0 else wr
    print(f"{iops:.0f}\t{pct(side, '50.000000'):.1f}\t{pct(side, '99.000000'):.1f}\t{bw:.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
