#!/usr/bin/env bash
# phase: profile - where a request's time goes (issue 19), for the workloads whose
# goals are missed. Not in CI: a diagnostic, its output recorded in
# scripts/bench-results/. One export (PROFILE_SIZE), written whole first (so the
# reads are cache hits); then for each workload of PROFILE_WORKLOADS (seqread,
# seqwrite: 128 KiB sequential QD8; fsync: 4 KiB randwrite QD1 with an fsync after
# every write), PROFILE_SECS each (fio io_uring, direct), `perf record -a -g -e
# cpu-clock` samples the whole guest (fio, the kernel's ublk and io_uring paths, the
# daemon) while fio runs. Reports go to RESULTS_DIR/perf-<workload>-{comm,dso,sym,
# glidefs-callers}.txt; fio's figures to the fio JSON and the figures file.
# Needs perf in the guest (the host's /usr/bin/perf, Debian's linux-perf).
# ublks_max: 4
# deadline: 1800
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE="${PROFILE_SIZE:-512M}"
SECS="${PROFILE_SECS:-20}"
FREQ="${PROFILE_FREQ:-499}"

require_ublk
require_cmd fio perf
require_daemon
PHASE_T0="$(date +%s%N)"

write_config "$WORK_DIR/glidefs.toml" "file://$WORK_DIR/store"
start_daemon
wait_ready
export_create prof "$SIZE"
DEV="$EXPORT_DEV"
wait_blockdev "$DEV" 60
log "prefill: $SIZE written 128k sequentially"
fio_run prefill --filename="$DEV" --rw=write --bs=128k --iodepth=8 --size="$SIZE" ||
    fail "prefill failed: $(tail -n 5 "$RESULTS_DIR/fio-prefill.log")"
export_drain prof

for wl in ${PROFILE_WORKLOADS:-seqread seqwrite fsync}; do
    case "$wl" in
        seqread) args=(--rw=read --bs=128k --iodepth=8) dir=read ;;
        seqwrite) args=(--rw=write --bs=128k --iodepth=8) dir=write ;;
        fsync) args=(--rw=randwrite --bs=4k --iodepth=1 --fsync=1) dir=write ;;
        *) fail "unknown workload $wl (PROFILE_WORKLOADS: seqread seqwrite fsync)" ;;
    esac
    log "profile: $wl (${args[*]}) for $SECS s"
    perf record -a -g -e cpu-clock -F "$FREQ" -o "$WORK_DIR/perf-$wl.data" -- sleep "$((SECS + 2))" \
        >"$RESULTS_DIR/perf-$wl-record.log" 2>&1 &
    perf_pid=$!
    sleep 1
    fio_run "$wl" --filename="$DEV" "${args[@]}" --size="$SIZE" --time_based --runtime="$SECS" ||
        fail "fio $wl failed: $(tail -n 5 "$RESULTS_DIR/fio-$wl.log")"
    wait "$perf_pid" || log "perf record exited $?"
    record_figure "${wl}_mib_s" "$(fio_bw_mib "$wl" "$dir")" MiB/s
    record_figure "${wl}_iops" "$(fio_iops "$wl" "$dir")"
    for sort in comm dso,comm sym; do
        perf report -i "$WORK_DIR/perf-$wl.data" --no-children --stdio --sort "$sort" \
            --percent-limit 0.5 -g none >"$RESULTS_DIR/perf-$wl-${sort%%,*}.txt" 2>/dev/null ||
            log "perf report --sort $sort failed"
    done
    perf report -i "$WORK_DIR/perf-$wl.data" --no-children --stdio --pid "$DAEMON_PID" --sort sym \
        --percent-limit 1 -g caller,0.5,callee --max-stack 12 \
        >"$RESULTS_DIR/perf-$wl-glidefs-callers.txt" 2>/dev/null || true
    [ "$wl" = fsync ] || export_drain prof
done

stop_daemon
pass "profiles in $RESULTS_DIR/perf-*.txt"
