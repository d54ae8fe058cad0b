#!/usr/bin/env bash
# phase: filesystem (issue 5) - ext4 on an export: copy a directory tree of at least
# FS_TREE_MIB (50) MiB, record the sha256 of every file, `sync`, kill -9 the daemon,
# restart: e2fsck -fn is clean and every hash matches; then drain, stop, wipe the
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

# The tree: some of the system's documentation (many small files, symlinks) plus
# random files up to TREE_MIB, made on the scratch disk first.
src="$WORK_DIR/tree"
mkdir -p "$src/doc" "$src/data"
cp -a /usr/share/doc/. "$src/doc/" 2>/dev/null || true
i=0
while [ "$(du -sm "$src" | cut -f1)" -lt "$TREE_MIB" ]; do
    d="$src/data/d$((i % 16))"
    mkdir -p "$d"
    head -c "$((4096 * (1 + RANDOM % 512)))" /dev/urandom >"$d/f$i"
    i=$((i + 1))
done
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

# Cold wake: the store alone must hold the filesystem.
export_drain fs
stop_daemon
rm -rf "$CACHE_DIR"
mkdir -p "$CACHE_DIR"
start_daemon "$DAEMON_CONFIG"
wait_ready 300
export_create fs "$SIZE"
dev="$EXPORT_DEV"
check_fs cold-wake
umount "$mnt"
pass
