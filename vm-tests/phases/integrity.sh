#!/usr/bin/env bash
# phase: integrity - six fio cases with --verify=crc32c --verify_fatal=1,
# 4k blocks, iodepth 32, on one export (INTEGRITY_SIZE, default 1G) backed by the S3
# store (s3s-fs on 127.0.0.1 inside the guest), in USER_COPY mode and again in
# bounce mode (GLIDEFS_BOUNCE_MODE=1):
#   sequential        write + read back
#   random            randwrite + read back
#   mixed             randrw 70/30 + read back
#   after_cold_wake   write, drain, stop, delete the cache dir, start, PUT, verify
#   cold_wake_stress  INTEGRITY_STRESS_CYCLES (5) x [4 jobs x depth 64 writes, drain,
#                     stop, cache wipe, start, PUT, verify]
#   random_cold_wake  random writes, sequential overwrite, drain, cold restart, verify
# A cold wake reopens the volume from the store alone (the cache dir is gone).
# Every case writes INTEGRITY_IO_SIZE bytes (default: the whole export) from offset
# 0; the export itself is always INTEGRITY_SIZE. CI: INTEGRITY_IO_SIZE=32M.
# Each case gets its own export and none is deleted (DELETE is not what this checks).
# ublks_max: 16
# deadline: 5400
# needs: glidefs s3s-fs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE="${INTEGRITY_SIZE:-1G}"
IO_SIZE="${INTEGRITY_IO_SIZE:-$SIZE}"
CYCLES="${INTEGRITY_STRESS_CYCLES:-5}"
MODES="${INTEGRITY_MODES:-usercopy bounce}"
CASES="${INTEGRITY_CASES:-sequential random mixed after_cold_wake cold_wake_stress random_cold_wake}"
unset GLIDEFS_BOUNCE_MODE

require_ublk
require_daemon
s3_start

MODE_ENV=()
NAME=""
DEV=""

# (Re)starts the daemon with an empty cache dir and opens export $NAME: the data can
# only come from the store.
cold_restart() {
    export_drain "$NAME"
    stop_daemon
    wipe_cache
    start_daemon "$DAEMON_CONFIG" "${MODE_ENV[@]}"
    wait_ready 300
    export_create "$NAME" "$SIZE"
    DEV="$EXPORT_DEV"
    log "cold wake: $NAME reopened on $DEV"
}

base=(--bs=4k --iodepth=32 --size="$IO_SIZE")

run_case() { # MODE CASE
    local m="$1" c="$2" tag="$1-$2"
    log "---- $m / $c"
    case "$c" in
        sequential) fio_verify "$tag" "$DEV" write 4k --iodepth=32 --size="$IO_SIZE" ;;
        random) fio_verify "$tag" "$DEV" randwrite 4k --iodepth=32 --size="$IO_SIZE" ;;
        mixed)
            fio_verify "$tag" "$DEV" randrw 4k --iodepth=32 --size="$IO_SIZE" --rwmixread=70
            ;;
        after_cold_wake)
            fio_run "$tag-write" --filename="$DEV" --rw=write "${base[@]}" \
                --verify=crc32c --do_verify=0 || fio_failed "$tag-write"
            cold_restart
            fio_verify_only "$tag-verify" "$DEV" --rw=write "${base[@]}"
            ;;
        cold_wake_stress)
            local cycle quarter
            quarter=$(($(size_bytes "$IO_SIZE") / 4))
            for ((cycle = 1; cycle <= CYCLES; cycle++)); do
                log "cold_wake_stress cycle $cycle/$CYCLES"
                # Four jobs, each its own quarter; a new seed per cycle so every cycle
                # writes different data over the previous cycle's.
                local jobs=(--rw=randwrite --bs=4k --iodepth=64 --numjobs=4
                    --size="$quarter" --offset_increment="$quarter" --randseed="$cycle")
                fio_run "$tag-$cycle-write" --filename="$DEV" "${jobs[@]}" \
                    --verify=crc32c --do_verify=0 || fio_failed "$tag-$cycle-write"
                cold_restart
                fio_verify_only "$tag-$cycle-verify" "$DEV" "${jobs[@]}"
            done
            ;;
        random_cold_wake)
            fio_run "$tag-random" --filename="$DEV" --rw=randwrite "${base[@]}" \
                --verify=crc32c --do_verify=0 --randseed=7 || fio_failed "$tag-random"
            fio_run "$tag-seq" --filename="$DEV" --rw=write "${base[@]}" \
                --verify=crc32c --do_verify=0 --randseed=8 || fio_failed "$tag-seq"
            cold_restart
            fio_verify_only "$tag-verify" "$DEV" --rw=write "${base[@]}" --randseed=8
            ;;
        *) fail "unknown case $c" ;;
    esac
    # Mean write IOPS over the case's fio runs that wrote (fio may print text before
    # its JSON: keep what starts at the first "{").
    local f iops=()
    for f in "$RESULTS_DIR"/fio-"$tag"*.json; do
        iops+=("$(sed -n '/^{/,$p' "$f" | jq '[.jobs[].write.iops] | add | floor' 2>/dev/null || echo 0)")
    done
    record_figure "${m}_${c}_write_iops" "$(printf '%s\n' "${iops[@]}" \
        | awk '$1 > 0 { s += $1; n++ } END { print n ? int(s / n) : 0 }')" IOPS
    log "---- $m / $c passed"
}

record_figure export_size "$SIZE"
record_figure io_size_per_case "$IO_SIZE"
for mode in $MODES; do
    case "$mode" in
        usercopy) MODE_ENV=() ;;
        bounce) MODE_ENV=(GLIDEFS_BOUNCE_MODE=1) ;;
        *) fail "unknown mode $mode" ;;
    esac
    CACHE_DIR="$WORK_DIR/$mode/cache"
    write_config "$WORK_DIR/$mode.toml" "$(s3_url "integrity-$mode")"
    start_daemon "$DAEMON_CONFIG" "${MODE_ENV[@]}"
    wait_ready 120
    for c in $CASES; do
        # A fresh export per case, so no case sees another's data.
        NAME="int-$mode-${c//_/-}"
        export_create "$NAME" "$SIZE"
        DEV="$EXPORT_DEV"
        run_case "$mode" "$c"
    done
    stop_daemon
done
pass
