#!/usr/bin/env python3
"""Where the vCPUs go during each fio run of `scripts/bench iops` (BENCH_CPU_PROFILE=1).

Under TCG perf samples only the idle loop (docs/performance.md), so this reads what the
kernel already counts: every thread's /proc/PID/task/TID/schedstat (nanoseconds on a
CPU, nanoseconds runnable but waiting for one) and the first line of /proc/stat.

  cpu_profile.py sample TAGFILE OUT [INTERVAL]
      Until killed: every INTERVAL seconds (default 1) while TAGFILE names a run
      ("target workload"), appends one JSON line to OUT. One process, no forks, so
      its own cost is small and shows up in the report (group python3).
  cpu_profile.py report OUT RAW SKIP_S
      For each run: the samples of its window minus the first SKIP_S seconds (fio's
      ramp) and the last sample; per thread group the share of one vCPU on a CPU and
      waiting for one, and CPU microseconds per request (IOPS from RAW, the bench's
      raw rows). A thread that started inside the window counts from zero; one that
      ended inside it is missing (fio's job processes live for the whole run).

Invariants: samples are only taken while a run is tagged; the report compares only
samples of the same tag and the same window (a new window starts whenever the tag
changes), and adds the windows of one tag (several rounds) together.
"""

import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict

STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def snapshot():
    """{"pid/tid": [comm, run_ns, wait_ns]} of every thread, and /proc/stat's cpu line."""
    threads = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            comm = read(f"/proc/{pid}/task/{tid}/comm")
            sched = read(f"/proc/{pid}/task/{tid}/schedstat")
            if comm is None or sched is None:
                continue
            run_ns, wait_ns, _ = sched.split()
            threads[f"{pid}/{tid}"] = [comm.strip(), int(run_ns), int(wait_ns)]
    cpu = read("/proc/stat").splitlines()[0].split()[1 : 1 + len(STAT_FIELDS)]
    return threads, [int(x) for x in cpu]


def sample(tagfile, out, interval):
    with open(out, "a") as f:
        while True:
            tag = (read(tagfile) or "").strip()
            if tag:
                threads, cpu = snapshot()
                f.write(json.dumps({"t": time.time(), "tag": tag, "cpu": cpu, "threads": threads}))
                f.write("\n")
                f.flush()
            time.sleep(interval)


def group(comm):
    """Threads of one kind under one name: kworker/u8:3 -> kworker, ublk-w0 -> ublk-w,
    blocking-12 -> blocking, iou-wrk-731 -> iou-wrk."""
    if comm.startswith("kworker"):
        return "kworker"
    return re.sub(r"[-/:_]*\d+$", "", comm) or comm


def windows(samples):
    """Lists of consecutive samples with the same tag."""
    out = []
    for s in samples:
        if out and out[-1][-1]["tag"] == s["tag"] and s["t"] - out[-1][-1]["t"] < 5:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def iops_by_run(raw):
    """Median IOPS of the ok rows per "target workload"."""
    got = defaultdict(list)
    with open(raw) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) >= 3 and p[-1] == "ok":
                got[f"{p[0]} {p[1]}"].append(float(p[2]))
    return {k: statistics.median(v) for k, v in got.items()}


def report(out, raw, skip_s):
    samples = []
    with open(out) as f:
        for line in f:
            try:
                samples.append(json.loads(line))
            except ValueError:
                continue  # a line cut short when the sampler was killed
    iops = iops_by_run(raw)
    # tag -> totals over its windows
    secs = defaultdict(float)
    cpu = defaultdict(lambda: [0] * len(STAT_FIELDS))
    run = defaultdict(lambda: defaultdict(int))
    wait = defaultdict(lambda: defaultdict(int))
    for w in windows(samples):
        first = next((s for s in w if s["t"] >= w[0]["t"] + skip_s), None)
        last = w[-2] if len(w) >= 2 else None
        if first is None or last is None or last["t"] - first["t"] < 2:
            continue
        tag = first["tag"]
        secs[tag] += last["t"] - first["t"]
        for i, (a, b) in enumerate(zip(first["cpu"], last["cpu"])):
            cpu[tag][i] += b - a
        for k, (comm, r1, w1) in last["threads"].items():
            _, r0, w0 = first["threads"].get(k, (comm, 0, 0))
            run[tag][group(comm)] += r1 - r0
            wait[tag][group(comm)] += w1 - w0
    print("#")
    print("# CPU profile (BENCH_CPU_PROFILE=1, scripts/bench-lib/cpu_profile.py): during each")
    print(f"# fio run (its first {skip_s:g} s and last second left out), the machine's time split")
    print("# (busy = user+nice+system+irq+softirq; iowait and idle = a vCPU with nothing to run)")
    print("# and per thread group: % of one vCPU spent on a CPU (run) and runnable but waiting")
    print("# for one (runq), and CPU microseconds per request (run / IOPS). Groups under 1 % of")
    print("# a vCPU are left out; 'python' includes this sampler.")
    print("# target workload group run_pct runq_pct cpu_us_per_req")
    for tag in sorted(secs):
        dt = secs[tag]
        c = dict(zip(STAT_FIELDS, cpu[tag]))
        tot = sum(cpu[tag]) or 1
        busy = tot - c["idle"] - c["iowait"] - c["steal"]
        rate = iops.get(tag)
        print(
            f"# {tag:<28} machine  busy {100 * busy / tot:.0f}%  iowait {100 * c['iowait'] / tot:.0f}%"
            f"  idle {100 * c['idle'] / tot:.0f}%  ({dt:.1f} s, {f'IOPS {rate:.0f}' if rate else 'no IOPS'})"
        )
        total_us = 0.0
        for g, r in sorted(run[tag].items(), key=lambda x: -x[1]):
            share = r / dt / 1e9
            if share < 0.01:
                continue
            per_req = r / 1e3 / (rate * dt) if rate else float("nan")
            total_us += per_req
            print(
                f"# {tag:<28} {g:<16} {100 * share:6.1f} {100 * wait[tag][g] / dt / 1e9:6.1f}"
                f" {per_req:9.1f}"
            )
        if rate:
            print(f"# {tag:<28} {'(all groups)':<16} {'':6} {'':6} {total_us:9.1f}")


def main(argv):
    if len(argv) >= 3 and argv[0] == "sample":
        sample(argv[1], argv[2], float(argv[3]) if len(argv) > 3 else 1.0)
    elif len(argv) == 4 and argv[0] == "report":
        report(argv[1], argv[2], float(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
