#!/usr/bin/env bash
# phase: teardown - DELETE /api/exports/NAME must return, and the device must be gone,
# in every state a device can be deleted from (the "DELETE hang" regression):
#   after-io        fio 4k randwrite, drain, delete (what `smoke` does)
#   no-drain        fio, delete without an explicit drain (delete drains itself)
#   after-recovery  fio, kill -9 the daemon mid-write, restart, delete once ready
#   bounce          after-io with GLIDEFS_BOUNCE_MODE=1
#   busy            delete while fio is still writing (fio sees errors; DELETE returns
#                   once fio has closed the device)
#   stop-recovered  fio, kill -9, restart (the device is recovered), drain, then
#                   SIGTERM: the daemon must exit 0 within 60 s leaving the device for
#                   the next one, which recovers it again and deletes it
#   stop-idle-recovered  fio, drain, kill -9 with no I/O in flight, restart, SIGTERM
#   stop-busy       fio, SIGTERM mid-write (a graceful restart, as `systemctl restart`
#                   does): the daemon exits 0, the next one recovers the device, and
#                   fio finishes without an error within 120 s (the appliance's
#                   restart under fio once hung until CI's timeout)
#   stop-mounted-recovered  ext4 on the device, sync, kill -9 with it mounted, restart,
#                   umount, SIGTERM (how `filesystem` ends; the recovered daemon once
#                   did not exit there)
# TEARDOWN_ROUNDS (3) rounds of each. A DELETE that does not answer within
# TEARDOWN_TIMEOUT_S (120) seconds fails the phase, after dump_stuck has saved every
# daemon thread's kernel stack to stuck.N.txt.
# ublks_max: 16
# deadline: 2400
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE="${TEARDOWN_SIZE:-64M}"
ROUNDS="${TEARDOWN_ROUNDS:-3}"
CASES="${TEARDOWN_CASES:-after-io no-drain after-recovery bounce busy stop-recovered stop-idle-recovered stop-busy stop-mounted-recovered}"
API_TIMEOUT="${TEARDOWN_TIMEOUT_S:-120}"
IO_SECONDS="${TEARDOWN_IO_S:-6}"

unset GLIDEFS_BOUNCE_MODE
require_ublk
require_daemon

mkdir -p "$WORK_DIR/store"
mnt="$WORK_DIR/mnt"
mkdir -p "$mnt"
write_config "$WORK_DIR/teardown.toml" "file://$WORK_DIR/store"

# write_load NAME DEV: fio 4k randwrite QD32 for IO_SECONDS, in the background.
write_load() {
    bg fio_run "$1" --filename="$2" --rw=randwrite --bs=4k --iodepth=32 \
        --size="$SIZE" --time_based --runtime="$IO_SECONDS"
}

# kill9_and_recover: kill -9 the daemon, start a new one, wait until it recovered.
kill9_and_recover() {
    kill9_daemon
    start_daemon "$DAEMON_CONFIG"
    wait_ready 120
}

# stop_and_restart: SIGTERM (must exit 0), start a new daemon, wait until ready.
stop_and_restart() {
    stop_daemon
    start_daemon "$DAEMON_CONFIG"
    wait_ready 120
}

# timed_delete NAME DEV: DELETE must answer 2xx within API_TIMEOUT and remove DEV.
timed_delete() {
    local t0 i
    t0="$(now_ms)"
    api DELETE "/api/exports/$1"
    case "$API_STATUS" in
        2??) ;;
        000) fail "DELETE /api/exports/$1 did not answer within $API_TIMEOUT s (stacks in stuck.*.txt)" ;;
        *) fail "DELETE /api/exports/$1 returned $API_STATUS: $API_BODY" ;;
    esac
    for ((i = 0; i < 300; i++)); do
        [ -b "$2" ] || break
        sleep 0.1
    done
    [ ! -b "$2" ] || fail "$2 still exists 30 s after DELETE returned"
    log "deleted $1 ($2) in $(($(now_ms) - t0)) ms"
    DELETE_MS=$(($(now_ms) - t0))
}

max_delete=0
deletes=0
note_delete() {
    deletes=$((deletes + 1))
    [ "$DELETE_MS" -le "$max_delete" ] || max_delete="$DELETE_MS"
}

for ((round = 1; round <= ROUNDS; round++)); do
    for case in $CASES; do
        name="td-$case-$round"
        env_mode=()
        [ "$case" != bounce ] || env_mode=(GLIDEFS_BOUNCE_MODE=1)
        start_daemon "$DAEMON_CONFIG" "${env_mode[@]}"
        wait_ready 120
        export_create "$name" "$SIZE"
        dev="$EXPORT_DEV"
        log "round $round case $case: $name on $dev"
        write_load "$name" "$dev"
        case "$case" in
            after-io | bounce)
                wait "$BG_PID" || fio_failed "$name"
                export_drain "$name"
                ;;
            no-drain)
                wait "$BG_PID" || fio_failed "$name"
                ;;
            after-recovery)
                sleep "$(rand_between 2 "$IO_SECONDS")"
                kill9_and_recover
                wait "$BG_PID" || fio_failed "$name"
                ;;
            stop-recovered)
                sleep "$(rand_between 2 "$IO_SECONDS")"
                kill9_and_recover
                wait "$BG_PID" || fio_failed "$name"
                export_drain "$name"
                stop_daemon
                [ -b "$dev" ] || fail "$dev vanished after SIGTERM of a recovered daemon"
                start_daemon "$DAEMON_CONFIG"
                wait_ready 120
                ;;
            stop-idle-recovered)
                wait "$BG_PID" || fio_failed "$name"
                export_drain "$name"
                kill9_and_recover
                stop_and_restart
                ;;
            stop-busy)
                sleep "$(rand_between 2 "$IO_SECONDS")"
                kill -0 "$BG_PID" 2>/dev/null || fail "fio ended before the SIGTERM"
                stop_and_restart
                end=$((SECONDS + 120))
                while [ "$SECONDS" -lt "$end" ] && kill -0 "$BG_PID" 2>/dev/null; do sleep 0.2; done
                if kill -0 "$BG_PID" 2>/dev/null; then
                    dump_stuck "fio still running 120 s after the restart"
                    fail "fio on $dev hangs after a SIGTERM restart under I/O"
                fi
                wait "$BG_PID" || fio_failed "$name"
                ;;
            stop-mounted-recovered)
                wait "$BG_PID" || fio_failed "$name"
                mkfs.ext4 -q -F "$dev" || fail "mkfs.ext4 $dev failed"
                mount "$dev" "$mnt" || fail "mount $dev failed"
                head -c 8M /dev/urandom >"$mnt/data"
                sync
                kill9_and_recover
                umount "$mnt" || fail "umount of $dev after recovery failed"
                stop_and_restart
                ;;
            busy)
                sleep 2
                kill -0 "$BG_PID" 2>/dev/null || fail "fio ended before the busy delete"
                ;;
            *) fail "unknown case $case" ;;
        esac
        timed_delete "$name" "$dev"
        note_delete
        # fio on a deleted device ends with an error; it only has to end.
        [ "$case" != busy ] || wait "$BG_PID" || true
        BG_PIDS=()
        stop_daemon
    done
done
record_figure deletes "$deletes"
record_figure delete_ms_max "$max_delete" ms
pass
