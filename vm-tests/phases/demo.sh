#!/usr/bin/env bash
# phase: demo (README's first command on a host without ublk) - shows the daemon
# serving a real device: starts `glidefs run` on the embedded default store (a local
# directory), creates an export through the CLI, makes an ext4 filesystem on it,
# writes and reads back a file, prints a few /metrics lines, drains the export to the
# store and lists the objects that landed there.
# ublks_max: 16
# deadline: 900
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_ublk
require_daemon
require_cmd mkfs.ext4 sha256sum

store="$WORK_DIR/store"
mkdir -p "$store"
write_config "$WORK_DIR/demo.toml" "file://$store"
log "config:"; sed 's/^/    /' "$DAEMON_CONFIG"
start_daemon "$DAEMON_CONFIG"
wait_ready 120
log "daemon ready in ${READY_MS} ms"

"$GLIDEFS_BIN" export create demo --size 256M --api "$API" || fail "export create failed"
dev="$(export_device demo)"
wait_blockdev "$dev" 60
log "export demo is $dev ($(blockdev --getsize64 "$dev") bytes)"

mkfs.ext4 -q -F "$dev" || fail "mkfs.ext4 $dev failed"
mnt="$WORK_DIR/mnt"
mkdir -p "$mnt"
mount "$dev" "$mnt" || fail "mount $dev failed"
head -c 32M /dev/urandom >"$WORK_DIR/payload"
cp "$WORK_DIR/payload" "$mnt/payload"
sync
umount "$mnt"
echo 3 >/proc/sys/vm/drop_caches
mount "$dev" "$mnt" || fail "remount $dev failed"
want="$(sha256sum <"$WORK_DIR/payload")"
got="$(sha256sum <"$mnt/payload")"
umount "$mnt"
[ "$want" = "$got" ] || fail "file read back differs: $got != $want"
log "32 MiB file written through ext4 on $dev and read back: sha256 matches"

log "a few /metrics lines:"
curl -sS "$API/metrics" | grep -E '^glidefs_(exports|build_info|write_io_size_bytes_count|read_io_size_bytes_count|ublk_buffer_pool_acquires_total)' | head -n 12 | sed 's/^/    /'

"$GLIDEFS_BIN" export drain demo --api "$API" || fail "drain failed"
objects="$(find "$store" -type f | wc -l)"
bytes="$(du -sh "$store" | cut -f1)"
log "drained: $objects objects ($bytes) in $store, e.g.:"
find "$store" -type f | sort | head -n 8 | sed 's/^/    /'
record_figure demo_store_objects "$objects"
[ "$objects" -gt 0 ] || fail "no objects landed in $store"
stop_daemon
pass
