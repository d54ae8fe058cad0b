# shellcheck shell=bash
# The density sweep: for each N in $BENCH_DENSITY_N a fresh daemon creates N exports
# of $BENCH_DENSITY_SIZE ($BENCH_DENSITY_JOBS API requests at a time, default 1), then we record its RSS (with and without the buffer pools),
# threads and creation time; then leave it idle for $BENCH_DENSITY_IDLE_S and record
# its CPU use and its exports' store requests (per hour); kill -9 it, start it again and time the recovery until
# every device serves a 4 KiB read; finally delete all N and time that.
# One row per N goes to $DENSITY_RAW (tab separated, see DENSITY_COLS); a failed
# step gives status "fail:<step>" and zeros, never a made-up figure.

DENSITY_COLS="n rss_kib pool_kib per_export_excl_kib per_export_incl_kib marginal_kib threads vmsize_mib create_s create_ms_each recovery_ready_s recovery_io_s delete_s probe_s idle_cpu_pct idle_req_per_h status rss_anon_kib rss_file_kib per_export_anon_excl_kib"

# read_all DEVICES_FILE SECONDS [T0]: one direct 4 KiB read from each device, in one
# process (read_all.py; one `dd` per device cost ~0.15 s of process start-up each
# under TCG, which made the probe, not the daemon, dominate at N=1025); fails if any
# read fails or the whole pass exceeds SECONDS. Prints "# elapsed S" (since T0).
read_all() {
    timeout "$2" "$PY" "$BENCH_LIB/read_all.py" "$1" ${3:+"$3"}
}

# density_idle SECONDS: "cpu_pct requests_per_hour" of the daemon left alone for
# SECONDS: its CPU time (utime + stime, /proc/PID/stat) over the window as a percent
# of one core, and the growth of its exports' glidefs_export_store_requests_total.
# The scrapes fall outside the CPU window.
density_idle() {
    local s="$1" hz c0 c1 r0 r1
    hz=$(getconf CLK_TCK)
    r0=$(density_store_requests) || return 1
    c0=$(awk '{print $14 + $15}' "/proc/$GFS_PID/stat") || return 1
    sleep "$s"
    c1=$(awk '{print $14 + $15}' "/proc/$GFS_PID/stat") || return 1
    r1=$(density_store_requests) || return 1
    awk -v c0="$c0" -v c1="$c1" -v hz="$hz" -v s="$s" -v r0="$r0" -v r1="$r1" \
        'BEGIN {printf "%.2f %.0f\n", (c1 - c0) / hz / s * 100, (r1 - r0) * 3600 / s}'
}

density_store_requests() {
    curl -fsS --max-time 120 "$GFS_URL/metrics" \
        | awk '/^glidefs_export_store_requests_total/ {s += $2} END {printf "%.0f\n", s}'
}

# density_stages_snap NAME / density_stages_ops NAME N STEP: with BENCH_STAGES=1 (the
# daemon's stage timers on), where creating or deleting the N exports spent its time:
# the stage counters' difference since snapshot NAME, per export, appended to
# $WORK/density-stages for the trace. A failed scrape loses the profile, not the row.
density_stages_snap() {
    [ "${BENCH_STAGES:-0}" = 1 ] || return 0
    "$PY" "$BENCH_LIB/stages.py" snap "$GFS_URL" >"$WORK/stages.$1" \
        || log "stage timers unreadable ($1)"
}
density_stages_ops() {
    [ "${BENCH_STAGES:-0}" = 1 ] || return 0
    local after="$WORK/stages.after-$3"
    if "$PY" "$BENCH_LIB/stages.py" snap "$GFS_URL" >"$after" && [ -s "$WORK/stages.$1" ]; then
        "$PY" "$BENCH_LIB/stages.py" ops "$WORK/stages.$1" "$after" "$2" "$3" >>"$WORK/density-stages"
    else
        log "stage timers unreadable around $3"
    fi
}

# density_dump_threads N STEP: every daemon thread's name, wait channel and kernel
# stack (a step that hung: what each thread waits for), to the log folder.
density_dump_threads() {
    [ -n "${BENCH_LOG_DIR:-}" ] && [ -n "${GFS_PID:-}" ] || return 0
    mkdir -p "$BENCH_LOG_DIR"
    local t out="$BENCH_LOG_DIR/density-$1-$2-threads.txt"
    for t in /proc/"$GFS_PID"/task/*; do
        echo "== $t $(cat "$t/comm" 2>/dev/null) wchan=$(cat "$t/wchan" 2>/dev/null)"
        cat "$t/stack" 2>/dev/null
    done >"$out"
    log "density N=$1: $2 failed; daemon threads in $out"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }

density_one() {
    local n="$1" dir="$BENCH_DATA_DIR/density-$n" status=ok
    local rss0=0 thr0=0 vm0=0 pool0=0 rss=0 thr=0 vm=0 pool=0 npool=0 anon=0 file=0
    local t_create=0 t_ready=0 t_io=0 t_delete=0 t_probe=0 t0 idle_cpu=0 idle_req=0
    rm -rf "$dir"
    glidefs_config "$dir"
    # Room for this N and for devices a previous N may have left behind.
    ensure_ublk $((2 * n + 1100)) || { echo "fail:ublks_max"; return; }
    fail() { status="fail:$1"; log "density N=$n: $1 failed"; }

    if glidefs_start "$dir" usercopy; then
        read -r rss0 thr0 vm0 _ _ < <(glidefs_proc_facts)
        read -r pool0 _ < <(glidefs_pool_kib)
        density_stages_snap before-create
        if BENCH_API_JOBS="${BENCH_DENSITY_JOBS:-1}" glidefs_create dens "$n" "$BENCH_DENSITY_SIZE" >"$dir/devices"; then
            t_create=$(cat "$WORK/last-elapsed")
            density_stages_ops before-create "$n" create
            # One read per device first, so every worker that serves a device has
            # initialised its pool: "pool included" then counts the whole pool.
            read_all "$dir/devices" 600 >/dev/null || fail read-before-kill
            # A daemon in service is scraped: its RSS is measured after a scrape (a
            # scrape's allocations stay in the render thread's malloc arena).
            curl -fsS --max-time 120 "$GFS_URL/metrics" >/dev/null || log "density N=$n: /metrics scrape failed"
            sleep 1
            read -r rss thr vm anon file < <(glidefs_proc_facts)
            read -r pool npool < <(glidefs_pool_kib)
            log "density N=$n: created in ${t_create}s, RSS ${rss} KiB (pool $pool KiB, $npool pools), $thr threads"
            if [ "${BENCH_DENSITY_IDLE_S:-0}" -gt 0 ]; then
                if read -r idle_cpu idle_req < <(density_idle "$BENCH_DENSITY_IDLE_S"); then
                    log "density N=$n: idle ${BENCH_DENSITY_IDLE_S}s: CPU ${idle_cpu}% of a core, $idle_req store requests/h"
                else
                    fail idle
                fi
            fi
            # What the probe itself costs (start-up of the poller against a daemon
            # that is already ready): part of recovery_ready, not the daemon's.
            t0=$(now)
            "$PY" "$BENCH_LIB/api.py" "$GFS_URL" wait-ready 60 || fail probe
            t_probe=$(elapsed "$t0")
            glidefs_kill
            # The reader starts before the daemon: each read waits in the kernel
            # (device QUIESCED) until its device is recovered, so it ends when the
            # last device serves I/O again, and its start-up overlaps the daemon's.
            t0=$(now)
            read_all "$dir/devices" "${BENCH_RECOVERY_TIMEOUT:-900}" "$t0" >"$dir/read-all.out" 2>&1 &
            local reader=$!
            if glidefs_start "$dir" usercopy; then
                t_ready=$(elapsed "$t0")
                if wait "$reader"; then
                    t_io=$(awk '/^# elapsed/ {print $3}' "$dir/read-all.out")
                    log "density N=$n: recovered, API ready ${t_ready}s, all devices serving ${t_io}s"
                else
                    cat "$dir/read-all.out" >&2
                    fail recovery-io
                fi
                density_stages_snap before-delete
                if BENCH_API_JOBS="${BENCH_DENSITY_JOBS:-1}" glidefs_delete dens "$n"; then
                    t_delete=$(cat "$WORK/last-elapsed")
                    density_stages_ops before-delete "$n" delete
                else
                    fail delete
                    density_dump_threads "$n" delete
                fi
            else
                kill "$reader" 2>/dev/null
                wait "$reader" 2>/dev/null
                fail restart
            fi
        else
            fail create
        fi
        glidefs_stop
    else
        fail start
    fi
    # The daemon's log outlives the run's data: it says what a failed step waited for.
    if [ -n "${BENCH_LOG_DIR:-}" ] && [ -f "$dir/daemon.log" ]; then
        mkdir -p "$BENCH_LOG_DIR" && cp "$dir/daemon.log" "$BENCH_LOG_DIR/density-$n-daemon.log"
    fi
    rm -rf "$dir"
    awk -v n="$n" -v rss="$rss" -v pool="$pool" -v rss0="$rss0" -v pool0="$pool0" -v anon="$anon" -v file="$file" \
        -v thr="$thr" -v vm="$vm" -v tc="$t_create" -v tr="$t_ready" -v ti="$t_io" \
        -v td="$t_delete" -v tp="$t_probe" -v ic="$idle_cpu" -v ir="$idle_req" -v st="$status" 'BEGIN {
            ex = (rss - pool) / n; inc = rss / n; mg = ((rss - pool) - (rss0 - pool0)) / n
            printf "%d\t%d\t%d\t%.1f\t%.1f\t%.1f\t%d\t%.1f\t%.3f\t%.2f\t%.3f\t%.3f\t%.3f\t%.3f\t%.2f\t%.0f\t%s\t%d\t%d\t%.1f\n",
                n, rss, pool, ex, inc, mg, thr, vm / 1024, tc, tc * 1000 / n, tr, ti, td, tp, ic, ir, st,
                anon, file, (anon - pool) / n }'
}

density_sweep() {
    ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true
    local why n
    why=$(target_unavailable glidefs)
    if [ -n "$why" ]; then
        log "density sweep needs the glidefs daemon: $why"
        printf 'glidefs\t%s\n' "$why" >>"$WORK/skipped"
        return 1
    fi
    for n in $BENCH_DENSITY_N; do
        log "density N=$n"
        density_one "$n" >>"$DENSITY_RAW"
        # The trace so far, so a sweep cut short still leaves its figures.
        [ -n "${DENSITY_PARTIAL:-}" ] && "$DENSITY_PARTIAL"
    done
}

# density_report HEADER RAW: the trace, with an aligned table the plots read.
density_report() {
    cat "$1"
    echo "#"
    echo "# RSS per export: excl = (RSS - resident pool) / N; incl = RSS / N; marginal ="
    echo "# ((RSS - pool) at N - (RSS - pool) with no export) / N. recovery_ready = kill -9"
    echo "# to API ready; recovery_io = kill -9 to every device having served a 4 KiB read;"
    echo "# probe = what the ready probe costs on a daemon already up (in recovery_ready)."
    echo "# idle_cpu_pct / idle_req_per_h: the daemon left alone for ${BENCH_DENSITY_IDLE_S:-0} s after"
    echo "# creation (0 s: not measured): CPU time as % of one core; its exports' store requests."
    echo "# rss_anon_kib / rss_file_kib: RssAnon (+ RssShmem) and RssFile of that RSS; RssFile is"
    echo "# mostly cache-file pages that mapped READs touched (page cache, shared, reclaimable);"
    echo "# per_export_anon_excl_kib = (RssAnon - pool) / N: the daemon's own memory per export."
    echo "# RSS is read after one /metrics scrape (since 2026-12-04; earlier traces: before any)."
    # shellcheck disable=SC2086
    echo "# density: exports of $BENCH_DENSITY_SIZE each, N = $BENCH_DENSITY_N, daemon in USER_COPY mode,"
    echo "# created and deleted ${BENCH_DENSITY_JOBS:-1} request(s) at a time (BENCH_DENSITY_JOBS)"
    { echo "$DENSITY_COLS" | tr ' ' '\t'; cat "$2"; } | column -t -s $'\t' | sed '1s/^/# /; 1!s/^/  /'
    if [ -s "$WORK/density-stages" ]; then
        echo "#"
        echo "# Stage profile (BENCH_STAGES=1: the daemon's stage timers, src/stage_timers.rs)."
        echo "# create.request / delete.request: one export's whole operation in the router;"
        echo "# the other stages nest inside them (docs/operations.md, stage_timers)."
        cat "$WORK/density-stages"
    fi
    echo "#"
    echo "# Targets (issue 7):"
    awk '!/^#/ && $1 == 1025 {
        printf "#   RSS per export at N=1025, pool excluded  <= 200 KB  measured %s KiB  %s\n", $4, ($4 <= 195.3 ? "PASS" : "MISS")
        printf "#   recovery of 1025 devices                 <= 30 s    measured %s s  %s\n", $12, ($12 <= 30 && $12 > 0 ? "PASS" : "MISS")
        if (NF >= 17 && $15 > 0)
            printf "#   idle CPU at N=1025 (issue 19)            <= 1%%      measured %s %%  %s\n", $15, ($15 <= 1 ? "PASS" : "MISS")
        seen = 1 }
        END { if (!seen) print "#   N=1025 not measured in this run" }' "$2"
}
