#!/usr/bin/env bash
# phase: filesystem - ext4 on an export: copy a directory tree of at least
# FS_TREE_MIB (50) MiB, record the sha256 of every file, `sync`; drain, stop, wipe the
# cache dir, start, reopen the export (cold wake from the store): e2fsck -fn clean and
# every hash equal; then copy the tree again, `sync`, kill -9 the daemon, restart:
# clean and both copies equal. (The issue lists the kill first; it runs last here
# because a daemon that recovered a device cannot be stopped yet, see known bugs.)
# ublks_max: 16
# deadline: 2400
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE="${FS_SIZE:-512M}"
TREE_MIB="${FS_TREE_MIB:-50}"
STORE="${FS_STORE:-file}" # file | s3
# Dirty data stays in the cache (and its journal) until the drain: the kill -9 then
# tests the journal, not a flusher that happened to run first.
GLIDEFS_FLUSH_INTERVAL="${GLIDEFS_FLUSH_INTERVAL:-1h}"

require_ublk
require_daemon
require_cmd mkfs.ext4 e2fsck sha256sum mount umount

if [ "$STORE" = s3 ]; then
    s3_start
    url="$(s3_url filesystem)"
else
    mkdir -p "$WORK_DIR/store"
    url="file://$WORK_DIR/store"
fi
write_config "$WORK_DIR/fs.toml" "$url"
start_daemon "$DAEMON_CONFIG"
wait_ready 120
export_create fs "$SIZE"
dev="$EXPORT_DEV"
mnt="$WORK_DIR/mnt"
mkdir -p "$mnt"

# The tree, made on the scratch disk first (few processes: forks are slow under TCG):
# 10 directories of 100 small files (1-10 KiB, one size per directory), symlinks,
# then random files of 3 MiB up to TREE_MIB in all.
src="$WORK_DIR/tree"
mkdir -p "$src/big"
bytes=0
for ((i = 0; i < 10; i++)); do
    mkdir -p "$src/small/s$i/t"
    n=$(((i + 1) << 10))
    head -c "$((n * 100))" /dev/urandom | split -b "$n" -d -a 3 - "$src/small/s$i/t/f"
    bytes=$((bytes + n * 100))
    ln -s "small/s$i" "$src/link$i"
done
rest=$(((TREE_MIB << 20) - bytes))
[ "$rest" -le 0 ] || head -c "$rest" /dev/urandom | split -b 3M -d -a 3 - "$src/big/m"
tree_mib="$(du -sm "$src" | cut -f1)"
files="$(find "$src" -type f | wc -l)"
record_figure tree_mib "$tree_mib" MiB
record_figure tree_files "$files"

hashes() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
hashes "$src" >"$WORK_DIR/hashes.want"

check_fs() { # LABEL DIR...: unmounted e2fsck -fn, then mount and compare every hash
    local label="$1" d
    shift
    # Read from the daemon, not from what the kernel still caches for the device.
    blockdev --flushbufs "$dev" 2>/dev/null || true
    echo 3 >/proc/sys/vm/drop_caches
    log "$label: e2fsck -fn $dev"
    e2fsck -fn "$dev" >"$RESULTS_DIR/e2fsck-$label.log" 2>&1 \
        || { tail -n 20 "$RESULTS_DIR/e2fsck-$label.log"; fail "$label: e2fsck -fn found problems"; }
    mount "$dev" "$mnt" || fail "$label: mount failed"
    for d in "$@"; do
        hashes "$mnt/$d" >"$WORK_DIR/hashes.$label.$d"
        cmp -s "$WORK_DIR/hashes.want" "$WORK_DIR/hashes.$label.$d" || {
            diff "$WORK_DIR/hashes.want" "$WORK_DIR/hashes.$label.$d" | head -n 10 || true
            fail "$label: file hashes in $d differ from what was written"
        }
    done
    log "$label: e2fsck clean, all $files hashes equal in $*"
}

mkfs.ext4 -q -F "$dev" || fail "mkfs.ext4 $dev failed"
mount "$dev" "$mnt" || fail "mount $dev failed"
t0="$(now_ms)"
cp -a "$src" "$mnt/tree"
sync
record_figure copy_ms "$(($(now_ms) - t0))" ms
umount "$mnt"

# Cold wake: the store alone must hold the filesystem.
export_drain fs
stop_daemon
wipe_cache
start_daemon "$DAEMON_CONFIG"
wait_ready 300
export_create fs "$SIZE"
dev="$EXPORT_DEV"
check_fs cold-wake tree

# A second copy of the tree, `sync`, then kill -9 with the filesystem mounted (the
# kernel holds the device QUIESCED); restart: both copies intact. The new daemon's
# mount namespace is a copy taken while ext4 was mounted: it must drop that mount, or
# after our umount it holds the last reference and its exit hangs for good syncing
# a filesystem only it could serve (docs/testing.md, "Fixed: the stuck recovered
# daemon"), so the phase ends with a SIGTERM that must exit 0.
cp -a "$src" "$mnt/tree2"
sync
kill9_daemon
start_daemon "$DAEMON_CONFIG"
wait_ready 300
record_figure recovery_ms "$READY_MS" ms
[ "$(export_device fs)" = "$dev" ] || fail "export fs came back on another device"
umount "$mnt" || fail "umount after recovery failed"
check_fs after-kill tree tree2
umount "$mnt"
stop_daemon
pass
