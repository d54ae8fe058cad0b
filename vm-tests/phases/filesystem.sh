#!/usr/bin/env bash
# phase: filesystem (issue 5) - ext4 on an export: copy a directory tree of at least
# FS_TREE_MIB (50) MiB, record the sha256 of every file, `sync`, kill -9 the daemon,
# restart: e2fsck -fn is clean and every hash matches; then drain, kill, wipe the
# cache dir, start, reopen the export (cold wake from the store): clean and equal again.
# ublks_max: 16
# deadline: 2400
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE="${FS_SIZE:-512M}"
TREE_MIB="${FS_TREE_MIB:-50}"
STORE="${FS_STORE:-file}" # file | s3

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

check_fs() { # LABEL: unmounted e2fsck -fn, then mount and compare every hash
    log "$1: e2fsck -fn $dev"
    e2fsck -fn "$dev" >"$RESULTS_DIR/e2fsck-$1.log" 2>&1 \
        || { tail -n 20 "$RESULTS_DIR/e2fsck-$1.log"; fail "$1: e2fsck -fn found problems"; }
    mount "$dev" "$mnt" || fail "$1: mount failed"
    hashes "$mnt/tree" >"$WORK_DIR/hashes.$1"
    cmp -s "$WORK_DIR/hashes.want" "$WORK_DIR/hashes.$1" || {
        diff "$WORK_DIR/hashes.want" "$WORK_DIR/hashes.$1" | head -n 10
        fail "$1: file hashes differ from what was written"
    }
    log "$1: e2fsck clean, all $files hashes equal"
}

mkfs.ext4 -q -F "$dev" || fail "mkfs.ext4 $dev failed"
mount "$dev" "$mnt" || fail "mount $dev failed"
t0="$(now_ms)"
cp -a "$src" "$mnt/tree"
sync
record_figure copy_ms "$(($(now_ms) - t0))" ms

# kill -9 with the filesystem mounted: the kernel holds the device QUIESCED.
kill9_daemon
start_daemon "$DAEMON_CONFIG"
wait_ready 300
record_figure recovery_ms "$READY_MS" ms
[ "$(export_device fs)" = "$dev" ] || fail "export fs came back on another device"
umount "$mnt" || fail "umount after recovery failed"
check_fs after-kill
umount "$mnt"

# Cold wake: the store alone must hold the filesystem. The daemon is killed, not
# stopped: after a kill -9 recovery, SIGTERM has been seen to log "stopped" and then
# never exit (docs/testing.md, known bugs); the drain already put everything in the store.
export_drain fs
kill9_daemon
rm -rf "$CACHE_DIR"
mkdir -p "$CACHE_DIR"
start_daemon "$DAEMON_CONFIG"
wait_ready 300
export_create fs "$SIZE"
dev="$EXPORT_DEV"
check_fs cold-wake
umount "$mnt"
pass
