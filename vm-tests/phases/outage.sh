#!/usr/bin/env bash
# phase: outage - the S3 server (s3s-fs) is stopped for OUTAGE_SECONDS
# (60) while fio writes to an export; fio sees no error (the cache absorbs the
# writes), and once the server is back, drain completes and a cold wake (cache dir
# wiped, export reopened from the store) verifies every block fio wrote.
# Then a restart during an outage: new data written (not drained), kill -9 the
# daemon, stop the store, start the daemon: the device still exists (quiesced) and
# a read of it waits instead of failing; start the store: the daemon re-attaches the
# same device by itself, the waiting read completes, and the whole device reads
# back as before the kill.
# ublks_max: 16
# deadline: 2400
# needs: glidefs s3s-fs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE="${OUTAGE_SIZE:-256M}"
OUTAGE="${OUTAGE_SECONDS:-60}"

require_ublk
require_daemon
s3_start
# The dirty limit must hold everything written during the outage.
GLIDEFS_DIRTY_LIMIT="${GLIDEFS_DIRTY_LIMIT:-2G}"
write_config "$WORK_DIR/outage.toml" "$(s3_url outage)"
start_daemon "$DAEMON_CONFIG"
wait_ready 120
export_create outage "$SIZE"
dev="$EXPORT_DEV"

# Paced so the write pass lasts longer than the outage.
blocks=$(($(size_bytes "$SIZE") / 4096))
rate="${OUTAGE_RATE_IOPS:-$((blocks / (OUTAGE + 40)))}"
[ "$rate" -ge 20 ] || rate=20
job=(--rw=randwrite --bs=4k --iodepth=32 --size="$SIZE" --verify=crc32c --randrepeat=1)
log "fio: randwrite 4k over $SIZE at $rate IOPS (~$((blocks / rate)) s)"
fio_run outage-write --filename="$dev" "${job[@]}" --rate_iops="$rate" --do_verify=0 &
fio_pid=$!
BG_PIDS+=("$fio_pid")

sleep 10
kill -0 "$fio_pid" 2>/dev/null || fail "fio finished before the outage (lower OUTAGE_RATE_IOPS)"
objects_before="$(s3_object_count)"
s3_stop
log "S3 server down for $OUTAGE s (store held $objects_before objects)"
sleep "$OUTAGE"
kill -0 "$fio_pid" 2>/dev/null || log "note: fio finished during the outage"
s3_start
log "S3 server back"

rc=0
wait "$fio_pid" || rc=$?
BG_PIDS=()
[ "$rc" = 0 ] || fio_failed outage-write
log "fio finished without error across the outage"

t0="$(now_ms)"
API_TIMEOUT=900 export_drain outage
record_figure drain_after_outage_ms "$(($(now_ms) - t0))" ms
[ "$(s3_object_count)" -gt "$objects_before" ] || fail "drain returned but no new object reached the store"

stop_daemon
wipe_cache
start_daemon "$DAEMON_CONFIG"
wait_ready 300
export_create outage "$SIZE"
fio_verify_only outage-verify "$EXPORT_DEV" "${job[@]}"
log "cold wake after the outage verified"

# ---- kill -9 and a restart while the store is down (issue 14, item 9)
dev="$EXPORT_DEV"
marker="$WORK_DIR/marker.bin"
head -c 1048576 /dev/urandom >"$marker"
# 1 MiB in the middle: acknowledged, in the cache and journal only (no drain).
mid=$(($(size_bytes "$SIZE") / 1048576 / 2))
dd if="$marker" of="$dev" bs=1M seek="$mid" oflag=direct conv=notrunc status=none \
    || fail "writing the marker to $dev failed"
device_sum() { dd if="$1" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1; }
sum_before="$(device_sum "$dev")"
kill9_daemon
s3_stop
[ -b "$dev" ] || fail "$dev vanished after kill -9"
start_daemon "$DAEMON_CONFIG"
# Volumes cannot open: the daemon still becomes ready, the export waits.
wait_ready 300
[ -b "$dev" ] || fail "$dev was deleted by a restart during a store outage"
api_ok GET /api/exports/outage
state="$(jq -r .state <<<"$API_BODY")"
err="$(jq -r '.error // ""' <<<"$API_BODY")"
[ "$state" = failed ] && [[ "$err" == *"waiting for the store"* ]] \
    || fail "export during the outage: state $state, error '$err' (want failed, waiting for the store)"
log "restart during the outage: $dev kept, export waiting ($err)"
# A read of the quiesced device waits (it must not fail).
pending="$WORK_DIR/pending.bin"
dd if="$dev" of="$pending" bs=1M skip="$mid" count=1 iflag=direct status=none &
dd_pid=$!
BG_PIDS+=("$dd_pid")
sleep 5
kill -0 "$dd_pid" 2>/dev/null || {
    rc=0
    wait "$dd_pid" || rc=$?
    fail "a read of the waiting device returned (status $rc) while the store was down"
}
t0="$(now_ms)"
s3_start
log "S3 server back; waiting for the daemon to re-attach $dev"
deadline=$((SECONDS + 300))
while :; do
    api GET /api/exports/outage
    [ "$API_STATUS" = 200 ] && [ "$(jq -r .state <<<"$API_BODY")" = live ] && break
    [ "$SECONDS" -lt "$deadline" ] || fail "export not live 300 s after the store came back: $API_BODY"
    sleep 0.5
done
record_figure reattach_after_store_back_ms "$(($(now_ms) - t0))" ms
[ "$(jq -r .device <<<"$API_BODY")" = "$dev" ] || fail "export came back on $(jq -r .device <<<"$API_BODY"), was $dev"
rc=0
wait "$dd_pid" || rc=$?
BG_PIDS=()
[ "$rc" = 0 ] || fail "the read that waited through the outage failed (status $rc)"
cmp -s "$pending" "$marker" || fail "the read that waited through the outage returned other data"
[ "$(device_sum "$dev")" = "$sum_before" ] || fail "$dev reads differently after the outage restart"
log "store back: $dev re-attached in place, same data"
stop_daemon
pass
