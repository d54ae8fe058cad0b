#!/usr/bin/env bash
# phase: outage - the S3 server (s3s-fs) is stopped for OUTAGE_SECONDS
# (60) while fio writes to an export; fio sees no error (the cache absorbs the
# writes), and once the server is back, drain completes and a cold wake (cache dir
# wiped, export reopened from the store) verifies every block fio wrote.
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
rm -rf "$CACHE_DIR"
mkdir -p "$CACHE_DIR"
start_daemon "$DAEMON_CONFIG"
wait_ready 300
export_create outage "$SIZE"
fio_verify_only outage-verify "$EXPORT_DEV" "${job[@]}"
log "cold wake after the outage verified"
pass
