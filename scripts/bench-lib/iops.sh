# shellcheck shell=bash
# The IOPS suite: every target in $BENCH_TARGETS gets the single-device workloads on
# its first device; targets in $BENCH_MULTI_TARGETS also get the 8-device workloads.
# Rows go to $RAW; targets that cannot run are listed in $WORK/skipped with the
# reason, and report.py prints them, so a missing figure is never silent.

IOPS_WORKLOADS="${BENCH_WORKLOADS:-rr4k-qd1 rr4k-qd32 sr128k-qd8 rw4k-qd32 sw128k-qd8}"
IOPS_MULTI_WORKLOADS="${BENCH_MULTI_WORKLOADS:-rr4k-qd32 rw4k-qd32}"

iops_suite() {
    local t why count devs wl
    : >"$WORK/skipped"
    for t in $BENCH_TARGETS; do
        why=$(target_unavailable "$t")
        if [ -n "$why" ]; then
            log "skip $t: $why"
            printf '%s\t%s\n' "$t" "$why" >>"$WORK/skipped"
            continue
        fi
        count=1
        case " $BENCH_MULTI_TARGETS " in *" $t "*) count="$BENCH_MULTI_DEVICES" ;; esac
        log "target $t: bringing up $count device(s)"
        # Not in $(...): target_up keeps daemon state in this shell.
        if ! target_up "$t" "$count" >"$WORK/devs"; then
            log "target $t failed to come up"
            printf '%s\t%s\n' "$t" "setup failed (see bench log)" >>"$WORK/skipped"
            target_down "$t"
            continue
        fi
        mapfile -t devs <"$WORK/devs"
        log "target $t: ${devs[*]}"
        prefill "${devs[@]}"
        for wl in $IOPS_WORKLOADS; do
            run_fio "$t" "$wl" "${devs[0]}"
        done
        if [ "$count" -gt 1 ]; then
            for wl in $IOPS_MULTI_WORKLOADS; do
                run_fio "$t" "$wl" "${devs[@]}"
            done
        fi
        target_down "$t"
    done
}
