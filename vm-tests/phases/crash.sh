#!/usr/bin/env bash
# phase: crash (with CRASH_ROUNDS>1 it is crash-rounds) -
# CRASH_DEVICES exports (default 4) under fio random writes with crc32c verify
# headers; the daemon is killed with kill -9 while fio is writing (at a random moment,
# CRASH_ROUNDS times, default 1) and started again. Checks: every kill hit running
# fio jobs; after each restart /health/ready answers 200 and every export is back on
# the same /dev/ublkbN; fio (whose in-flight I/O the kernel reissues) ends without an
# error; then fio --verify_only passes on every device (no acknowledged write lost).
# Figures: recovery time per restart (daemon start -> ready), devices, rounds.
# ublks_max: 16
# deadline: 2400
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${CRASH_DEVICES:-4}"
SIZE="${CRASH_SIZE:-256M}"
ROUNDS="${CRASH_ROUNDS:-1}"
STORE="${CRASH_STORE:-file}" # file | s3
KILL_MIN="${CRASH_KILL_MIN_S:-2}"
KILL_MAX="${CRASH_KILL_MAX_S:-6}"

require_ublk
require_daemon

if [ "$STORE" = s3 ]; then
    s3_start
    url="$(s3_url crash)"
else
    mkdir -p "$WORK_DIR/store"
    url="file://$WORK_DIR/store"
fi
write_config "$WORK_DIR/crash.toml" "$url"
start_daemon "$DAEMON_CONFIG"
wait_ready 120

declare -A DEV
for ((i = 0; i < N; i++)); do
    export_create "crash$i" "$SIZE"
    DEV[crash$i]="$EXPORT_DEV"
    log "export crash$i on $EXPORT_DEV"
done

# Same job parameters for the write pass and the verify pass: fio regenerates the
# same random offsets (randrepeat) and checks every header it wrote.
fio_args=(--rw=randwrite --bs=4k --iodepth="${FIO_IODEPTH:-32}" --size="$SIZE"
    --verify=crc32c --verify_fatal=1 --randrepeat=1)
# One pass over each device (so a lost write leaves zeros that --verify_only sees),
# paced with --rate_iops so the pass outlasts every kill and restart.
blocks=$(($(size_bytes "$SIZE") / 4096))
# Budget per round: the kill delay plus CRASH_ROUND_S (60) for the restart, recovery
# and checks (about 40 s measured under TCG on a loaded 2-core host).
rate="${CRASH_RATE_IOPS:-$((blocks / (ROUNDS * (KILL_MAX + ${CRASH_ROUND_S:-60}) + 30)))}"
[ "$rate" -ge 20 ] || rate=20
log "fio: $N x randwrite 4k over $SIZE at $rate IOPS each (~$((blocks / rate)) s)"

declare -A FIO_PID
for name in "${!DEV[@]}"; do
    fio_run "crash-$name" --filename="${DEV[$name]}" "${fio_args[@]}" \
        --rate_iops="$rate" --do_verify=0 &
    FIO_PID[$name]=$!
    BG_PIDS+=("$!")
done

# Writes completed on a device so far (sectors written, from sysfs).
# No forks: under TCG each one costs a good fraction of a second.
written_sectors() {
    local _r _m _s _t w
    read -r _r _m _s _t _ _ w _ <"/sys/block/${1##*/}/stat"
    echo "$w"
}

# Waits (up to 180 s) until every device has completed new writes: fio is running
# and the daemon serves it. Fails the phase otherwise.
wait_writing() {
    local -A start
    local name i moving
    for name in "${!DEV[@]}"; do start[$name]="$(written_sectors "${DEV[$name]}")"; done
    for ((i = 0; i < 1800; i++)); do
        moving=1
        for name in "${!DEV[@]}"; do
            kill -0 "${FIO_PID[$name]}" 2>/dev/null \
                || fail "round $round: fio on $name finished before the kill (lower CRASH_RATE_IOPS)"
            [ "$(written_sectors "${DEV[$name]}")" -gt "${start[$name]}" ] || moving=0
        done
        [ "$moving" = 0 ] || return 0
        sleep 0.1
    done
    fail "round $round: some device saw no completed write in 180 s"
}

total_recovery=0
for ((round = 1; round <= ROUNDS; round++)); do
    wait_writing
    sleep "$(rand_between "$KILL_MIN" "$KILL_MAX")"
    wait_writing
    kill9_daemon
    for name in "${!DEV[@]}"; do
        [ -b "${DEV[$name]}" ] || fail "round $round: ${DEV[$name]} vanished after kill -9 (no USER_RECOVERY?)"
    done
    start_daemon "$DAEMON_CONFIG"
    wait_ready 300
    record_figure "recovery_ms_round$round" "$READY_MS" ms
    total_recovery=$((total_recovery + READY_MS))
    api_ok GET /api/exports
    declare -A GOT=()
    while read -r name got; do
        GOT[$name]="$got"
    done < <(jq -r '(if type == "array" then . else .exports end)[] | "\(.name) \(.device)"' <<<"$API_BODY")
    for name in "${!DEV[@]}"; do
        [ "${GOT[$name]:-}" = "${DEV[$name]}" ] || fail "round $round: $name came back on '${GOT[$name]:-}', was ${DEV[$name]}"
    done
    log "round $round: all $N exports back on the same devices, ready in $READY_MS ms"
done
record_figure recovery_ms_mean "$((total_recovery / ROUNDS))" ms
record_figure devices "$N"
record_figure rounds "$ROUNDS"

for name in "${!DEV[@]}"; do
    rc=0
    wait "${FIO_PID[$name]}" || rc=$?
    [ "$rc" = 0 ] || fio_failed "crash-$name"
    log "fio on $name (${DEV[$name]}) finished without error"
done
BG_PIDS=()

for name in "${!DEV[@]}"; do
    fio_verify_only "crash-$name-verify" "${DEV[$name]}" "${fio_args[@]}"
    log "verify_only passed on $name"
done
pass
