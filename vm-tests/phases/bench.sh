#!/usr/bin/env bash
# phase: bench - IOPS benchmark (scripts/bench iops) in this VM: fio on
# null_blk, brd, rublk null, rublk loop and glidefs exports (USER_COPY + pool and
# bounce mode), table with IOPS, p50/p99 and ratios to rublk null. The trace
# (iops.txt) lands in the results folder; `scripts/bench` on the host copies it to
# scripts/bench-results/. Fails when a requested target could not be measured.
# Options pass through the environment as BENCH_* (see scripts/bench --help).
# ublks_max: 64
# deadline: 5400
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_ublk
require_cmd fio python3
REPO="$(cd "$PHASES_DIR/../.." && pwd)"
export WORK_DIR GLIDEFS_BIN GLIDEFS_TOOLS
export BENCH_API_PORT="${BENCH_API_PORT:-$API_PORT}" BENCH_LOG_DIR="$RESULTS_DIR/logs"
# rublk is needed unless the targets are chosen and none is a rublk one.
case " ${BENCH_TARGETS:-rublk} " in
    *" rublk"*) needs_rublk=1 ;;
    *) needs_rublk=0 ;;
esac
if [ "$needs_rublk" = 1 ] && [ ! -x "$GLIDEFS_TOOLS/bin/rublk" ] && ! command -v rublk >/dev/null; then
    fail "rublk missing: run scripts/install-bench-tools.sh on the host first"
fi

rc=0
"$REPO/scripts/bench" iops --in-vm --out "$RESULTS_DIR" || rc=$?
[ -f "$RESULTS_DIR/iops.txt" ] || fail "scripts/bench wrote no iops.txt (status $rc)"
# The glidefs ratios and the verdicts as figures.
while read -r target wl iops _ _ _ xnull xloop _; do
    case "$target" in glidefs | glidefs-bounce) ;; *) continue ;; esac
    record_figure "${target}_${wl}_iops" "$iops" IOPS
    record_figure "${target}_${wl}_x_rublk_null" "$xnull"
    record_figure "${target}_${wl}_x_rublk_loop" "$xloop"
done < <(grep -v '^#' "$RESULTS_DIR/iops.txt")
case "$rc" in
    0) pass ;;
    3) fail "some targets were not measured: $(sed -n '/^# Not measured/,/^#$/p' "$RESULTS_DIR/iops.txt" | tr '\n' ' ')" ;;
    *) fail "scripts/bench iops exited with status $rc" ;;
esac
