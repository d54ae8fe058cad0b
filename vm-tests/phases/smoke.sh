#!/usr/bin/env bash
# phase: smoke - one export on the local directory store; fio writes with
# crc32c verify headers and reads them back (4k randwrite over the whole device, then
# 128k sequential), first in USER_COPY mode, then again with GLIDEFS_BOUNCE_MODE=1.
# Also: the export's size matches the API, drain puts objects in the store, delete
# removes the device, SIGTERM exits 0, and the buffer pool counts acquires only in
# USER_COPY mode. Figures: 4k randread/randwrite IOPS of the export and of the
# kernel's null_blk in the same VM (QD32, SMOKE_PERF_RUNTIME s).
# ublks_max: 16
# deadline: 1500
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE="${SMOKE_SIZE:-256M}"
RUNTIME="${SMOKE_PERF_RUNTIME:-10}"
MODES="${SMOKE_MODES:-usercopy bounce}"

# The mode is chosen per daemon start below, never inherited.
unset GLIDEFS_BOUNCE_MODE
require_ublk
require_daemon
require_cmd blockdev

perf_pair() { # LABEL DEV: 4k randread and randwrite, QD32, time based
    fio_run "$1-randread-4k" --filename="$2" --rw=randread --bs=4k --iodepth=32 \
        --time_based --runtime="$RUNTIME" || fio_failed "$1-randread-4k"
    record_figure "$1_randread_4k_qd32_iops" "$(fio_iops "$1-randread-4k" read)" IOPS
    fio_run "$1-randwrite-4k" --filename="$2" --rw=randwrite --bs=4k --iodepth=32 \
        --time_based --runtime="$RUNTIME" || fio_failed "$1-randwrite-4k"
    record_figure "$1_randwrite_4k_qd32_iops" "$(fio_iops "$1-randwrite-4k" write)" IOPS
}

# Baseline in the same VM: the kernel's null_blk.
if modprobe null_blk nr_devices=1 2>/dev/null && wait_blockdev /dev/nullb0 10; then
    perf_pair nullblk /dev/nullb0
else
    log "null_blk not available: no baseline"
fi

for mode in $MODES; do
    log "==== mode $mode"
    mode_env=()
    case "$mode" in
        usercopy) ;;
        bounce) mode_env=(GLIDEFS_BOUNCE_MODE=1) ;;
        *) fail "unknown mode $mode" ;;
    esac
    CACHE_DIR="$WORK_DIR/$mode/cache"
    store="$WORK_DIR/$mode/store"
    mkdir -p "$store"
    write_config "$WORK_DIR/$mode.toml" "file://$store"
    start_daemon "$WORK_DIR/$mode.toml" "${mode_env[@]}"
    wait_ready 120

    export_create smoke "$SIZE"
    dev="$EXPORT_DEV"
    want="$(jq -r .size_bytes <<<"$API_BODY")"
    got="$(blockdev --getsize64 "$dev")"
    [ "$got" = "$want" ] || fail "$dev has $got bytes, the API said $want"
    log "export smoke on $dev ($got bytes)"

    fio_verify "$mode-randwrite-4k-verify" "$dev" randwrite 4k --size="$SIZE"
    fio_verify "$mode-seq-128k-verify" "$dev" write 128k --size="$SIZE"
    record_figure "${mode}_seq_write_128k_verify_mib_s" "$(fio_bw_mib "$mode-seq-128k-verify" write)" MiB/s
    perf_pair "$mode" "$dev"

    acquires="$(metric glidefs_ublk_buffer_pool_acquires_total)"
    log "glidefs_ublk_buffer_pool_acquires_total = $acquires"
    case "$mode" in
        usercopy)
            [ "$acquires" != absent ] || fail "/metrics has no glidefs_ublk_buffer_pool_acquires_total"
            [ "$acquires" -gt 0 ] || fail "USER_COPY mode but the buffer pool saw no acquire"
            ;;
        bounce)
            [ "$acquires" = absent ] || [ "$acquires" = 0 ] \
                || fail "bounce mode but the buffer pool saw $acquires acquires (kill switch ignored?)"
            ;;
    esac

    export_drain smoke
    objects="$(find "$store" -type f | wc -l)"
    [ "$objects" -gt 0 ] || fail "drain returned but the store $store holds no object"
    log "store holds $objects objects after drain"

    export_delete smoke
    for ((i = 0; i < 300; i++)); do
        [ -b "$dev" ] || break
        sleep 0.1
    done
    [ ! -b "$dev" ] || fail "$dev still exists 30 s after DELETE"
    api GET /api/exports/smoke
    [ "$API_STATUS" = 404 ] || fail "GET of a deleted export returned $API_STATUS"
    stop_daemon
done
pass
