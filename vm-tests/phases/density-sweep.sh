#!/usr/bin/env bash
# phase: density-sweep - density sweep (scripts/bench density): for N = 1,
# 64, 256, 1025 exports (DENSITY_SWEEP_N overrides), daemon RSS, RSS per export with
# and without the buffer pool, threads, time to create, recovery time after kill -9
# and delete time, and with the daemon's stage timers where creating and deleting
# spent that time. The trace (density-sweep.txt) lands in the results folder;
# `scripts/bench density` on the host copies it to scripts/bench-results/.
# Knobs: DENSITY_SWEEP_N, _SIZE, _IDLE_S, _JOBS, _STAGES, _COMMAND, _CONFIG (a daemon
# config template), _RCU_EXPEDITED=1 (expedited RCU grace periods for the sweep).
# ublks_max: 1100
# deadline: 5400
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_ublk
require_cmd python3 dd
REPO="$(cd "$PHASES_DIR/../.." && pwd)"
export WORK_DIR GLIDEFS_BIN GLIDEFS_TOOLS
export BENCH_API_PORT="${BENCH_API_PORT:-$API_PORT}" BENCH_LOG_DIR="$RESULTS_DIR/logs"
export BENCH_DENSITY_N="${DENSITY_SWEEP_N:-1 64 256 1025}"
export BENCH_DENSITY_SIZE="${DENSITY_SWEEP_SIZE:-64M}"
export BENCH_DENSITY_IDLE_S="${DENSITY_SWEEP_IDLE_S:-120}"
# API requests in flight while creating and deleting (1: one after another).
export BENCH_DENSITY_JOBS="${DENSITY_SWEEP_JOBS:-1}"
# The daemon's stage timers: where creation and deletion spend their time (0: off).
export BENCH_STAGES="${DENSITY_SWEEP_STAGES:-1}"
[ -n "${DENSITY_SWEEP_COMMAND:-}" ] && export BENCH_COMMAND="$DENSITY_SWEEP_COMMAND"
# DENSITY_SWEEP_RCU_EXPEDITED=1: expedited RCU grace periods for the whole sweep (the
# host setting of docs/operations.md, "Recovering many devices faster").
if [ "${DENSITY_SWEEP_RCU_EXPEDITED:-}" = 1 ]; then
    echo 1 >/sys/kernel/rcu_expedited || fail "cannot write /sys/kernel/rcu_expedited"
fi
# A config template for the daemon instead of the bench's own (@DIR@ and @PORT@
# replaced; scripts/bench-lib/glidefs.sh), e.g. to try other [limits].
if [ -n "${DENSITY_SWEEP_CONFIG:-}" ]; then
    [ -r "$DENSITY_SWEEP_CONFIG" ] || fail "DENSITY_SWEEP_CONFIG=$DENSITY_SWEEP_CONFIG is not a readable file"
    export BENCH_GLIDEFS_CONFIG="$DENSITY_SWEEP_CONFIG"
fi

rc=0
"$REPO/scripts/bench" density --in-vm --out "$RESULTS_DIR" || rc=$?
[ -f "$RESULTS_DIR/density-sweep.txt" ] || fail "scripts/bench wrote no density-sweep.txt (status $rc)"
while read -r n rss _ excl incl _ threads _ create _ ready io _ _ idle_cpu idle_req status _ _ anon_excl; do
    record_figure "density_n${n}_rss" "$rss" KiB
    record_figure "density_n${n}_rss_per_export_excl_pool" "$excl" KiB
    record_figure "density_n${n}_rss_per_export_incl_pool" "$incl" KiB
    record_figure "density_n${n}_anon_per_export_excl_pool" "${anon_excl:-0}" KiB
    record_figure "density_n${n}_threads" "$threads"
    record_figure "density_n${n}_create" "$create" s
    record_figure "density_n${n}_recovery_ready" "$ready" s
    record_figure "density_n${n}_recovery_io" "$io" s
    record_figure "density_n${n}_idle_cpu" "$idle_cpu" "% of a core"
    record_figure "density_n${n}_idle_store_requests" "$idle_req" "per hour"
    [ "$status" = ok ] || rc=1
done < <(grep -v '^#' "$RESULTS_DIR/density-sweep.txt")
[ "$rc" = 0 ] && pass
fail "scripts/bench density: status $rc (see the status column of density-sweep.txt)"
