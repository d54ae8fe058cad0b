#!/usr/bin/env python3
"""The stage profile of glidefs runs (BENCH_STAGES=1): where a request's time goes,
from the daemon's own stage timers (api.stage_timers, src/stage_timers.rs).

  stages.py snap URL > FILE          the stage counters now (stage events seconds)
  stages.py diff BEFORE AFTER TARGET WORKLOAD >> STAGES_TSV
  stages.py report STAGES_TSV RAW_TSV    '#' lines for the IOPS trace
  stages.py ops BEFORE AFTER N STEP      '#' lines: where creating or deleting N
                                         exports spent its time (density sweep)

Per (target, workload) the report gives, medians over rounds, for each stage: events
per request and microseconds per request, and the budget per request: 1e6 / the
run's median IOPS (from RAW_TSV, the IOPS table's rows), what one request may cost
the pipeline at that throughput. Stages nest (read.request holds read.slot, read.copy, read.target; the
target holds the file.* time), so the rows do not add up to the budget: the rest
is the kernel, io_uring and the executor."""
import re
import statistics
import sys
import urllib.request
from collections import defaultdict

from report import aggregate, load_rows

LINE = re.compile(r'^glidefs_stage_(seconds|events)_total\{stage="([^"]+)"\} (\S+)$')
REQUESTS = ("read.request", "write.request", "flush.request", "discard.request")


def snap(url):
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    got = defaultdict(lambda: [0.0, 0.0])
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            got[m.group(2)][0 if m.group(1) == "events" else 1] = float(m.group(3))
    if not got:
        sys.exit("no glidefs_stage_* series: is api.stage_timers on?")
    for stage, (events, secs) in sorted(got.items()):
        print(f"{stage}\t{events:.0f}\t{secs:.9f}")


def load_snap(path):
    out = {}
    with open(path) as f:
        for line in f:
            stage, events, secs = line.split("\t")
            out[stage] = (float(events), float(secs))
    return out


def diff(before, after, target, workload):
    b, a = load_snap(before), load_snap(after)
    for stage, (events, secs) in sorted(a.items()):
        e0, s0 = b.get(stage, (0.0, 0.0))
        print(f"{target}\t{workload}\t{stage}\t{events - e0:.0f}\t{secs - s0:.9f}")


def median_iops(raw):
    """(target, workload) -> median IOPS of RAW_TSV's ok runs (report.py's medians)."""
    return {(a["target"], a["wl"]): a["iops"]
            for a in aggregate(load_rows(raw)) if a["status"] == "ok" and a["iops"]}


def report(path, raw):
    iops = median_iops(raw)
    # (target, workload) -> one dict per round: stage -> (events, secs)
    runs = defaultdict(list)
    with open(path) as f:
        current = {}
        for line in f:
            target, workload, stage, events, secs = line.rstrip("\n").split("\t")
            key = (target, workload)
            rnd = current.get(key)
            if rnd is None or stage in rnd:
                rnd = {}
                runs[key].append(rnd)
                current[key] = rnd
            rnd[stage] = (float(events), float(secs))
    out = ["#", "# Stage profile (BENCH_STAGES=1: the daemon's stage timers, src/stage_timers.rs)",
           "# per request, medians over rounds; budget = 1e6 / median IOPS; stages nest, the",
           "# rest of the budget is the kernel, io_uring and the executor",
           "# target workload stage events_per_req us_per_event us_per_req"]
    for (target, workload), rounds in sorted(runs.items()):
        per_stage = defaultdict(lambda: ([], [], []))
        counted = 0
        for rnd in rounds:
            reqs = sum(rnd.get(s, (0, 0))[0] for s in REQUESTS)
            if reqs <= 0:
                continue
            counted += 1
            for stage, (events, secs) in rnd.items():
                if events <= 0:
                    continue
                epr, upe, upr = per_stage[stage]
                epr.append(events / reqs)
                upe.append(secs / events * 1e6)
                upr.append(secs / reqs * 1e6)
        if not counted:
            out.append(f"# {target} {workload}: no requests counted")
            continue
        rate = iops.get((target, workload))
        budget = f"{1e6 / rate:9.1f}" if rate else "        -"
        out.append(f"# {target:<15} {workload:<14} budget          -      -        "
                   f"{budget}  ({counted} rounds)")
        for stage in sorted(per_stage):
            epr, upe, upr = per_stage[stage]
            out.append(f"# {target:<15} {workload:<14} {stage:<15} {statistics.median(epr):6.2f} "
                       f"{statistics.median(upe):8.1f} {statistics.median(upr):9.1f}")
    return "\n".join(out) + "\n"


# The stages an export's creation or deletion goes through (src/stage_timers.rs), and
# the file stages, which count their fsyncs too.
OPS_PREFIXES = ("create.", "delete.", "device.", "file.")


def ops(before, after, n, step):
    """Per export of the N created or deleted between the two snapshots: each stage's
    events and milliseconds. The *.request stages are the wall time of one operation;
    with operations in parallel their sum exceeds the step's elapsed time."""
    b, a = load_snap(before), load_snap(after)
    n = int(n)
    out = [f"# {step} of N={n}: stage events_per_export ms_per_event ms_per_export"]
    for stage, (events, secs) in sorted(a.items()):
        if not stage.startswith(OPS_PREFIXES):
            continue
        e0, s0 = b.get(stage, (0.0, 0.0))
        events, secs = events - e0, secs - s0
        if events <= 0:
            continue
        out.append(f"#   {n:<6} {step:<7} {stage:<16} {events / n:7.2f} "
                   f"{secs / events * 1e3:9.2f} {secs / n * 1e3:9.2f}")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) == 3 and argv[1] == "snap":
        snap(argv[2])
    elif len(argv) == 6 and argv[1] == "diff":
        diff(*argv[2:6])
    elif len(argv) == 6 and argv[1] == "ops":
        sys.stdout.write(ops(*argv[2:6]))
    elif len(argv) == 4 and argv[1] == "report":
        sys.stdout.write(report(argv[2], argv[3]))
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
