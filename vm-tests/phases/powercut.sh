#!/usr/bin/env bash
# phase: powercut - the cache dir and the local store live on a virtual
# disk that outlives the VM. Two writers run on two exports: a block writer that
# writes 1 MiB chunks with `dd conv=fsync` (a FLUSH) and a file writer on ext4 that
# runs `sync`; after each completed checkpoint they append its sha256 to a log in
# RESULTS_DIR (outside the VM). The runner kills QEMU itself (no shutdown) at a
# random moment, boots a new VM on the same disk, and this script starts glidefs
# there: every checkpointed chunk and file reads back exactly and e2fsck -fn is clean.
# POWERCUT_ROUNDS power cuts (header below; CI uses 2). Outside vm-tests/run, run it
# once per boot with POWERCUT_BOOT=1..N+1 and cut the power when powercut.armed appears.
# ublks_max: 16
# deadline: 900
# powercut: 5
# needs: glidefs
BOOT="${POWERCUT_BOOT:-1}"
ROUNDS="${POWERCUT_ROUNDS:-5}"
[ "$BOOT" -le 1 ] || PHASE_KEEP_RESULTS=1
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE="${POWERCUT_SIZE:-256M}"
CHUNK=$((1 << 20))
CHUNKS_PER_ROUND=$(($(size_bytes "$SIZE") / CHUNK / ROUNDS))
BLOCK_LOG="$RESULTS_DIR/checkpoints.block"
FILE_LOG="$RESULTS_DIR/checkpoints.files"
DAEMON_N=$((BOOT * 10))

require_ublk
require_daemon
require_cmd mkfs.ext4 e2fsck sha256sum dd mount umount

log "boot $BOOT of $((ROUNDS + 1))"
cfg="$WORK_DIR/powercut.toml"
mnt="$WORK_DIR/mnt"
mkdir -p "$mnt"
if [ "$BOOT" = 1 ]; then
    rm -f "$BLOCK_LOG" "$FILE_LOG"
    touch "$BLOCK_LOG" "$FILE_LOG"
    mkdir -p "$WORK_DIR/store"
    write_config "$cfg" "file://$WORK_DIR/store"
    start_daemon "$cfg"
    wait_ready 120
    export_create pcblock "$SIZE"
    export_create pcfs "$SIZE"
    mkfs.ext4 -q -F "$EXPORT_DEV" || fail "mkfs.ext4 failed"
else
    # A new kernel: no ublk device exists; the daemon recreates them from its cache dir.
    DAEMON_CONFIG="$cfg"
    start_daemon "$cfg"
    wait_ready 600
    record_figure "recovery_ms_boot$BOOT" "$READY_MS" ms
fi
blockdev="$(export_device pcblock)"
fsdev="$(export_device pcfs)"
wait_blockdev "$blockdev" 60
wait_blockdev "$fsdev" 60

# ---- verify everything checkpointed before the power cut
if [ "$BOOT" -gt 1 ]; then
    n=0
    while read -r off sha; do
        got="$(dd if="$blockdev" bs="$CHUNK" skip="$((off / CHUNK))" count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
        [ "$got" = "$sha" ] || fail "boot $BOOT: chunk at offset $off differs from checkpoint"
        n=$((n + 1))
    done <"$BLOCK_LOG"
    log "boot $BOOT: all $n checkpointed chunks read back exactly"
    # Mounting replays the ext4 journal; then a full read-only check.
    mount "$fsdev" "$mnt" || fail "boot $BOOT: mount of the ext4 export failed"
    umount "$mnt"
    e2fsck -fn "$fsdev" >"$RESULTS_DIR/e2fsck-boot$BOOT.log" 2>&1 \
        || fail "boot $BOOT: e2fsck -fn found problems (e2fsck-boot$BOOT.log)"
    mount "$fsdev" "$mnt" || fail "boot $BOOT: remount failed"
    n=0
    while read -r path sha; do
        [ -f "$mnt/$path" ] || fail "boot $BOOT: checkpointed file $path is missing"
        [ "$(sha256sum <"$mnt/$path" | cut -d' ' -f1)" = "$sha" ] \
            || fail "boot $BOOT: checkpointed file $path differs"
        n=$((n + 1))
    done <"$FILE_LOG"
    log "boot $BOOT: e2fsck clean, all $n checkpointed files equal"
    record_figure "verified_chunks_boot$BOOT" "$(wc -l <"$BLOCK_LOG")"
    record_figure "verified_files_boot$BOOT" "$n"
    umount "$mnt"
fi

if [ "$BOOT" -gt "$ROUNDS" ]; then
    stop_daemon
    pass
fi

# ---- write until the power is cut (boots 1..ROUNDS)
mount "$fsdev" "$mnt" || fail "mount of the ext4 export failed"
mkdir -p "$mnt/pc"
tmp="$(mktemp -d)"

# shellcheck disable=SC2317 # run through bg
block_writer() {
    local k off
    for ((k = 0; k < CHUNKS_PER_ROUND; k++)); do
        off=$((((BOOT - 1) * CHUNKS_PER_ROUND + k) * CHUNK))
        head -c "$CHUNK" /dev/urandom >"$tmp/chunk"
        dd if="$tmp/chunk" of="$blockdev" bs="$CHUNK" seek="$((off / CHUNK))" count=1 \
            oflag=direct conv=fsync,notrunc status=none || return 1
        echo "$off $(sha256sum <"$tmp/chunk" | cut -d' ' -f1)" >>"$BLOCK_LOG"
    done
    log "block writer: round region full ($CHUNKS_PER_ROUND chunks), idle"
    sleep infinity
}

# shellcheck disable=SC2317 # run through bg
file_writer() {
    local k f
    for ((k = 0; ; k++)); do
        f="pc/b${BOOT}-f$k"
        head -c "$((4096 * (1 + RANDOM % 32)))" /dev/urandom >"$tmp/file"
        cp "$tmp/file" "$mnt/$f"
        sync
        echo "$f $(sha256sum <"$tmp/file" | cut -d' ' -f1)" >>"$FILE_LOG"
    done
}

before_block="$(wc -l <"$BLOCK_LOG")"
before_files="$(wc -l <"$FILE_LOG")"
bg block_writer
bg file_writer
for ((i = 0; i < 600; i++)); do
    if [ "$(wc -l <"$BLOCK_LOG")" -gt "$before_block" ] && [ "$(wc -l <"$FILE_LOG")" -gt "$before_files" ]; then
        break
    fi
    sleep 0.1
done
[ "$(wc -l <"$BLOCK_LOG")" -gt "$before_block" ] || fail "block writer made no checkpoint in 60 s"
log "writers running; arming the power cut"
echo "$BOOT" >"$RESULTS_DIR/powercut.armed"
# If the power cut never comes (run by hand), stop after a while without a verdict.
sleep "${POWERCUT_WAIT_S:-300}"
fail "boot $BOOT: still running $((${POWERCUT_WAIT_S:-300})) s after arming; nobody cut the power"
