#!/usr/bin/env bash
# phase: bench-store - store-traffic benchmark (scripts/bench store) in this VM: one
# export on a local file store; store bytes per client byte for sparse 4 KiB writes,
# PUTs per GiB for dense writes, stored bytes per live byte after random overwrites,
# store requests per hour when idle. The trace (store-traffic.txt) lands in the
# results folder; `scripts/bench store` on the host copies it to
# scripts/bench-results/. Fails when a step could not be measured. Not part of CI
# (minutes of fio and a 10-minute idle window): a benchmark, not a test.
# Options pass through the environment as BENCH_* (see scripts/bench --help).
# ublks_max: 8
# deadline: 7200
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_ublk
require_cmd fio python3 curl
REPO="$(cd "$PHASES_DIR/../.." && pwd)"
export WORK_DIR GLIDEFS_BIN GLIDEFS_TOOLS
export BENCH_API_PORT="${BENCH_API_PORT:-$API_PORT}" BENCH_LOG_DIR="$RESULTS_DIR/logs"

rc=0
"$REPO/scripts/bench" store --in-vm --out "$RESULTS_DIR" || rc=$?
[ -f "$RESULTS_DIR/store-traffic.txt" ] || fail "scripts/bench wrote no store-traffic.txt (status $rc)"
while read -r step _ _ _ _ _ figure unit status; do
    [ "$status" = ok ] && record_figure "store_${step//-/_}_${unit%%(*}" "$figure"
done < <(grep -v '^#' "$RESULTS_DIR/store-traffic.txt")
[ "$rc" = 0 ] && pass
fail "scripts/bench store exited with status $rc"
