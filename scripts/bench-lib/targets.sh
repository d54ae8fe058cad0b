# shellcheck shell=bash
# Bringing benchmark targets up and down inside the VM. Every target offers
#   target_up NAME COUNT   -> prints COUNT block device paths, one per line
#   target_down NAME       -> removes what target_up made
#   target_unavailable NAME -> prints a reason when NAME cannot run here
# Targets: null_blk, brd (kernel baselines), rublk-null (the ublk ceiling),
# rublk-loop (a ublk peer doing comparable work: a file beside glidefs' cache),
# glidefs (USER_COPY + pool) and glidefs-bounce (GLIDEFS_BOUNCE_MODE=1): the daemon;
# dp-null, dp-mem and their -bounce twins: glidefs' ublk data plane alone
# (examples/ublk_mem with a null or an in-memory target), which isolates the data
# plane's cost from the volume engine's.
# All ublk targets use the same queues/depth ($BENCH_UBLK_QUEUES/$BENCH_UBLK_DEPTH).

RUBLK_BASE_ID="${BENCH_RUBLK_ID:-900}"
UM_PID=""

# glidefs' data plane without the daemon: examples/ublk_mem (in-memory or --null
# targets behind the same worker pool, USER_COPY + pool or bounce mode).
ublk_mem_bin() {
    local c
    for c in "${BENCH_UBLK_MEM_BIN:-}" "${CARGO_TARGET_DIR:-/nonexistent}/release/examples/ublk_mem" \
        "$BENCH_LIB/../../target/release/examples/ublk_mem"; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}

rublk_bin() {
    local c
    for c in "${RUBLK_BIN:-}" "${GLIDEFS_TOOLS:-/opt/glidefs-tools}/bin/rublk" "$(command -v rublk || true)"; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}

target_unavailable() {
    case "$1" in
        null_blk | brd) modinfo "$1" >/dev/null 2>&1 || echo "module $1 not available" ;;
        cache-file) command -v fallocate >/dev/null || echo "fallocate missing" ;;
        rublk-null | rublk-loop)
            rublk_bin >/dev/null || echo "rublk not installed (scripts/install-bench-tools.sh)"
            ensure_ublk 64 || echo "ublk_drv not available"
            ;;
        glidefs | glidefs-bounce | glidefs-noupload | glidefs-alt)
            ensure_ublk 64 || { echo "ublk_drv not available"; return; }
            glidefs_unavailable
            ;;
        dp-null | dp-null-bounce | dp-mem | dp-mem-bounce)
            ensure_ublk 64 || { echo "ublk_drv not available"; return; }
            ublk_mem_bin >/dev/null \
                || echo "no examples/ublk_mem (cargo build --release --example ublk_mem, or BENCH_UBLK_MEM_BIN)"
            ;;
        *) echo "unknown target $1" ;;
    esac
}

target_up() {
    local name="$1" count="$2" i
    case "$name" in
        null_blk)
            reload_module null_blk nr_devices="$count" gb=$((BENCH_DEV_MIB / 1024 + 1)) || return 1
            for ((i = 0; i < count; i++)); do echo "/dev/nullb$i"; done
            ;;
        brd)
            reload_module brd rd_nr="$count" rd_size=$((BENCH_DEV_MIB * 1024)) || return 1
            for ((i = 0; i < count; i++)); do echo "/dev/ram$i"; done
            ;;
        cache-file)
            # Regular files on the file system the glidefs cache lives on: what the
            # cache disk itself gives (the reference of the FLUSH-heavy workload).
            mkdir -p "$BENCH_DATA_DIR/cache-file" || return 1
            for ((i = 0; i < count; i++)); do
                fallocate -l "${BENCH_DEV_MIB}M" "$BENCH_DATA_DIR/cache-file/disk$i.img" || return 1
                echo "$BENCH_DATA_DIR/cache-file/disk$i.img"
            done
            ;;
        rublk-null | rublk-loop)
            local bin id args
            bin=$(rublk_bin) || return 1
            for ((i = 0; i < count; i++)); do
                id=$((RUBLK_BASE_ID + i))
                args=(-n "$id" -q "$BENCH_UBLK_QUEUES" -d "$BENCH_UBLK_DEPTH" --quiet)
                if [ "$name" = rublk-loop ]; then
                    mkdir -p "$BENCH_DATA_DIR"
                    truncate -s "${BENCH_DEV_MIB}M" "$BENCH_DATA_DIR/rublk-loop$i.img"
                    args+=(-f "$BENCH_DATA_DIR/rublk-loop$i.img" $BENCH_RUBLK_LOOP_ARGS)
                    "$bin" add loop "${args[@]}" >>"$WORK/rublk.log" 2>&1 || return 1
                else
                    "$bin" add null "${args[@]}" >>"$WORK/rublk.log" 2>&1 || return 1
                fi
                wait_block "/dev/ublkb$id" 30 || return 1
                echo "/dev/ublkb$id"
            done
            ;;
        glidefs | glidefs-bounce | glidefs-noupload | glidefs-alt)
            local mode=usercopy
            [ "$name" = glidefs-bounce ] && mode=bounce
            GFS_DIR="$BENCH_DATA_DIR/$name"
            rm -rf "$GFS_DIR"
            # glidefs-noupload: a diagnostic, not a product setting - the flusher's
            # interval is longer than the run, so no upload competes for the CPU.
            GFS_FLUSH_INTERVAL=""
            [ "$name" = glidefs-noupload ] && GFS_FLUSH_INTERVAL=1h
            # glidefs-alt: USER_COPY like glidefs, another build ($BENCH_GLIDEFS_ALT_BIN),
            # to compare two builds in one run.
            GFS_BIN_OVERRIDE=""
            [ "$name" = glidefs-alt ] && GFS_BIN_OVERRIDE="${BENCH_GLIDEFS_ALT_BIN:-}"
            glidefs_config "$GFS_DIR"
            glidefs_start "$GFS_DIR" "$mode" || return 1
            local devs d
            devs=$(glidefs_create bench "$count" "${BENCH_DEV_MIB}M") || return 1
            GFS_COUNT="$count"
            for d in $devs; do wait_block "$d" 30 || return 1; done
            echo "$devs"
            ;;
        dp-null | dp-null-bounce | dp-mem | dp-mem-bounce)
            local bin envs=() args i=0
            bin=$(ublk_mem_bin) || return 1
            args=(--devices "$count" --size-mib "$BENCH_DEV_MIB" --queues "$BENCH_UBLK_QUEUES"
                --depth "$BENCH_UBLK_DEPTH" --workers "${BENCH_WORKERS:-$(nproc)}")
            case "$name" in dp-null*) args+=(--null) ;; esac
            case "$name" in *-bounce) envs+=(GLIDEFS_BOUNCE_MODE=1) ;; esac
            rm -f "$WORK/ublk_mem.out"
            : >"$WORK/ublk_mem.out"
            env "${envs[@]}" "$bin" "${args[@]}" >>"$WORK/ublk_mem.out" 2>>"$WORK/ublk_mem.log" &
            UM_PID=$!
            local deadline=$(($(date +%s) + 120))
            until grep -q '^READY' "$WORK/ublk_mem.out"; do
                if ! kill -0 "$UM_PID" 2>/dev/null || [ "$(date +%s)" -ge $deadline ]; then
                    log "ublk_mem did not become ready; its log:"
                    tail -20 "$WORK/ublk_mem.log" >&2
                    return 1
                fi
                sleep 0.1
                i=$((i + 1))
            done
            local d
            for d in $(awk '/^DEVICE/ {print $3}' "$WORK/ublk_mem.out"); do
                wait_block "$d" 30 || return 1
                echo "$d"
            done
            ;;
        *) return 1 ;;
    esac
}

target_down() {
    local name="$1"
    case "$name" in
        null_blk | brd) rmmod "$name" 2>/dev/null || true ;;
        cache-file) rm -rf "$BENCH_DATA_DIR/cache-file" ;;
        rublk-null | rublk-loop)
            local bin id
            bin=$(rublk_bin) || return 0
            for id in $(ls /dev/ublkb* 2>/dev/null | sed 's#/dev/ublkb##'); do
                [ "$id" -ge "$RUBLK_BASE_ID" ] && "$bin" del -n "$id" >>"$WORK/rublk.log" 2>&1
            done
            rm -f "$BENCH_DATA_DIR"/rublk-loop*.img
            ;;
        dp-null | dp-null-bounce | dp-mem | dp-mem-bounce)
            [ -n "$UM_PID" ] || return 0
            kill -TERM "$UM_PID" 2>/dev/null || true
            local deadline=$(($(date +%s) + 60))
            while kill -0 "$UM_PID" 2>/dev/null && [ "$(date +%s)" -lt $deadline ]; do
                sleep 0.2
            done
            kill -0 "$UM_PID" 2>/dev/null && log "ublk_mem still running 60 s after SIGTERM: SIGKILL"
            kill -KILL "$UM_PID" 2>/dev/null || true
            wait "$UM_PID" 2>/dev/null || true
            UM_PID=""
            ;;
        glidefs | glidefs-bounce | glidefs-noupload | glidefs-alt)
            [ -n "$GFS_PID" ] && [ "${GFS_COUNT:-0}" -gt 0 ] \
                && { glidefs_delete bench "$GFS_COUNT" || log "deleting glidefs exports failed"; }
            GFS_COUNT=0
            glidefs_stop
            # Unset outside the iops suite (density, store): set -u would end the
            # EXIT trap here and turn a complete run into status 1.
            [ -z "${GFS_DIR:-}" ] || rm -rf "$GFS_DIR"
            ;;
    esac
    return 0
}
