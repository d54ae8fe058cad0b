# shellcheck shell=bash
# The IOPS suite: every target in $BENCH_TARGETS gets the single-device workloads on
# its first device; targets in $BENCH_MULTI_TARGETS also get the 8-device workloads.
# Rows go to $RAW; targets that cannot run are listed in $WORK/skipped with the
# reason, and report.py prints them, so a missing figure is never silent.
# BENCH_ROUNDS > 1 repeats the whole pass (targets in turn, so slow drifts of a
# shared host hit every target alike); report.py takes the median per figure.

IOPS_WORKLOADS="${BENCH_WORKLOADS:-rr4k-qd1 rr4k-qd32 sr128k-qd8 rw4k-qd32 sw128k-qd8 fsw4k-qd1}"
IOPS_MULTI_WORKLOADS="${BENCH_MULTI_WORKLOADS:-rr4k-qd32 rw4k-qd32}"

iops_suite() {
    local round t sampler=""
    : >"$WORK/skipped"
    : >"$WORK/cpu.tag"
    if [ "${BENCH_CPU_PROFILE:-0}" = 1 ]; then
        "$PY" "$BENCH_LIB/cpu_profile.py" sample "$WORK/cpu.tag" "$WORK/cpu.samples" &
        sampler=$!
    fi
    for ((round = 1; round <= ${BENCH_ROUNDS:-1}; round++)); do
        log "round $round of ${BENCH_ROUNDS:-1}"
        for t in $BENCH_TARGETS; do
            iops_target "$t" "$round"
        done
    done
    if [ -n "$sampler" ]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
    fi
}

# settle TARGET: every run starts from the same state. For glidefs: wait until the
# data written so far (the prefill, an earlier write run) is in the store, so one
# run's uploads do not land in the next run's measurement (the working set stays
# cached; uploads caused by the measured run itself still count). BENCH_SETTLE=0
# turns it off.
settle() {
    [ "${BENCH_SETTLE:-1}" = 1 ] || return 0
    case "$1" in
        glidefs*)
            if glidefs_drain bench "${GFS_COUNT:-1}"; then
                log "  settled: drained in $(cat "$WORK/last-elapsed") s"
            else
                log "  drain failed (measuring anyway)"
            fi
            ;;
    esac
}

# iops_target TARGET ROUND: all workloads on one target (skip noted in round 1 only).
iops_target() {
    local t="$1" round="$2" why count devs wl
    why=$(target_unavailable "$t")
    if [ -n "$why" ]; then
        log "skip $t: $why"
        [ "$round" = 1 ] && printf '%s\t%s\n' "$t" "$why" >>"$WORK/skipped"
        return 0
    fi
    count=1
    case " $BENCH_MULTI_TARGETS " in *" $t "*) count="$BENCH_MULTI_DEVICES" ;; esac
    log "target $t: bringing up $count device(s)"
    # Not in $(...): target_up keeps daemon state in this shell.
    if ! target_up "$t" "$count" >"$WORK/devs"; then
        log "target $t failed to come up"
        printf '%s\t%s\n' "$t" "setup failed in round $round (see bench log)" >>"$WORK/skipped"
        target_down "$t"
        return 0
    fi
    mapfile -t devs <"$WORK/devs"
    if [ "${#devs[@]}" -lt "$count" ] || [ -z "${devs[0]}" ]; then
        log "target $t came up with ${#devs[@]} of $count devices"
        printf '%s\t%s\n' "$t" "came up without its devices in round $round" >>"$WORK/skipped"
        target_down "$t"
        return 0
    fi
    log "target $t: ${devs[*]}"
    prefill "${devs[@]}"
    for wl in $IOPS_WORKLOADS; do
        settle "$t"
        run_profiled "$t" "$wl" "${devs[0]}"
    done
    if [ "$count" -gt 1 ]; then
        for wl in $IOPS_MULTI_WORKLOADS; do
            settle "$t"
            run_profiled "$t" "$wl" "${devs[@]}"
        done
    fi
    target_down "$t"
}

# run_profiled TARGET WORKLOAD DEV...: run_fio, and with BENCH_STAGES=1 on a glidefs
# target, the difference of the daemon's stage timers across the run goes to
# $WORK/stages (stages.py; the report appends the stage profile to the trace).
# The run's name is in $WORK/cpu.tag while fio runs (the CPU sampler's window).
run_profiled() {
    local t="$1" wl="$2" name="$2"
    [ $# -gt 3 ] && name="$wl-$(($# - 2))dev"
    case "$t:${BENCH_STAGES:-0}" in
        glidefs*:1) ;;
        *)
            tagged_fio "$t $name" "$@"
            return
            ;;
    esac
    "$PY" "$BENCH_LIB/stages.py" snap "$GFS_URL" >"$WORK/stages.before" \
        || log "  stage timers unreadable before $t $name"
    tagged_fio "$t $name" "$@"
    if "$PY" "$BENCH_LIB/stages.py" snap "$GFS_URL" >"$WORK/stages.after"; then
        "$PY" "$BENCH_LIB/stages.py" diff "$WORK/stages.before" "$WORK/stages.after" \
            "$t" "$name" >>"$WORK/stages"
    else
        log "  stage timers unreadable after $t $name"
    fi
}

# tagged_fio TAG TARGET WORKLOAD DEV...: run_fio with TAG in $WORK/cpu.tag meanwhile.
tagged_fio() {
    echo "$1" >"$WORK/cpu.tag"
    shift
    run_fio "$@"
    : >"$WORK/cpu.tag"
}
