#!/usr/bin/env bash
# phase: encryption - client-side encryption through ublk, end to end (issue 17).
# A daemon without [store.encryption] makes export `plain` and writes random data A
# (ENCRYPTION_DATA_MIB) through its device. Restarted with master key 1 (a raw
# 32-byte file): `plain` is still live and reads A (plaintext volumes stay so); a new
# export `secret` gets random data B. In the local store's files, byte by byte,
# sampled 32-byte runs of A are found (the scan works) and none of B (nor key 1).
# secret's meta says encrypted with key 1's id. Snapshot s1 of secret, fork `child`
# of it: reads B. Cold read: secret deleted without purge (cache dropped) and PUT
# again: reads B. Wrong key (key 2 only, hex): `secret` and `child` are failed with a
# reason naming the key ids, `plain` is live. Rotation (key 2 current, key 1 old):
# secret reads B and its meta is wrapped by key 2; then key 2 alone serves it.
# Crypto-erase: DELETE secret?purge=true: its meta (kept for the fork) holds no data
# key; child, cold-woken, still reads B. Tamper: one byte of a segment child reads is
# flipped; after a restart, child cold-woken: reading its device is an I/O error and
# glidefs_checksum_errors_total grew. Cleanup: everything purged, the store empty;
# SIGTERM exits 0; no panic in the daemon logs.
# Figures (not asserted; ENCRYPTION_ROUNDS rounds, each plaintext then encrypted):
# cold sequential read time of A and of B from the store after a cold wake (hashed as
# read, and again alone, hashed once cached), and 4k
# random write IOPS (QD16, ENCRYPTION_FIO_SECS) on each; for each cold read also the
# share of the vCPUs that were busy and the daemon's CPU time. scripts/bench-results/
# encryption-*.txt holds a 3-round run.
# Every assertion is a line in RESULTS_DIR/checks; the phase fails at the end naming
# every failed one.
# ublks_max: 16
# deadline: 1500
# needs: glidefs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE="${ENCRYPTION_SIZE:-64M}"
DATA_MIB="${ENCRYPTION_DATA_MIB:-16}"
FIO_SECS="${ENCRYPTION_FIO_SECS:-10}"
ROUNDS="${ENCRYPTION_ROUNDS:-1}" # rounds of the figures (plaintext, then encrypted)

require_ublk
require_cmd jq curl python3 sha256sum dd fio od
require_daemon
PHASE_T0="$(date +%s%N)"

STORE="$WORK_DIR/store"
VOLS="$STORE/volumes"
KEY1="$WORK_DIR/key1" # raw 32 bytes
KEY2="$WORK_DIR/key2" # 64 hex digits
A="$WORK_DIR/a.bin"
B="$WORK_DIR/b.bin"
head -c 32 /dev/urandom >"$KEY1"
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$KEY2"
head -c "$((DATA_MIB << 20))" /dev/urandom >"$A"
head -c "$((DATA_MIB << 20))" /dev/urandom >"$B"
SHA_A="$(sha256sum <"$A" | cut -d' ' -f1)"
SHA_B="$(sha256sum <"$B" | cut -d' ' -f1)"

# config NAME [KEY [OLD_KEY]]: writes $WORK_DIR/NAME.toml (no key: encryption off).
config() {
    local extra=""
    if [ -n "${2:-}" ]; then
        extra="$(printf '[store.encryption]\nkey_file = "%s"\n' "$2")"
        [ -z "${3:-}" ] || extra="$extra$(printf '\nold_key_files = ["%s"]' "$3")"
    fi
    write_config "$WORK_DIR/$1.toml" "file://$STORE" "$extra"
}
restart() { # NAME [KEY [OLD_KEY]]
    stop_daemon
    config "$@"
    start_daemon
    wait_ready
}
# hash_dev DEV: sha256 of the first DATA_MIB of DEV, read around the page cache.
hash_dev() { dd if="$1" bs=1M count="$DATA_MIB" iflag=direct status=none | sha256sum | cut -d' ' -f1; }
state_of() {
    api GET "/api/exports/$1"
    jq -r '.state // empty' <<<"$API_BODY"
}
meta_of() { cat "$VOLS/$1/meta"; }
# cold NAME: delete without purge (drained, cache dropped), PUT again; EXPORT_DEV.
cold() {
    export_delete "$1"
    export_create "$1" "$SIZE"
}
write_data() { # DEV FILE
    dd if="$2" of="$1" bs=1M oflag=direct conv=fsync status=none
}

# ---------------------------------------------------------------- plaintext first
config plain
start_daemon
wait_ready
export_create plain "$SIZE"
check "write A to plain" write_data "$EXPORT_DEV" "$A"
export_drain plain

# ---------------------------------------------------------------- key 1
restart enc1 "$KEY1"
expect plain-live "plain is live under an encrypting daemon" "plain should be live: $(state_of plain)" \
    [ "$(state_of plain)" = live ]
PLAIN_DEV="$(export_device plain)"
expect plain-reads "plain reads A" "plain should read A" [ "$(hash_dev "$PLAIN_DEV")" = "$SHA_A" ]
export_create secret "$SIZE"
check "write B to secret" write_data "$EXPORT_DEV" "$B"
export_drain secret
KEY1_ID="$(meta_of secret | jq -r '.keys.key_id // empty')"
expect meta-encrypted "secret's meta: encrypted, wrapped by key id $KEY1_ID" \
    "secret's meta should say encrypted with a key id: $(meta_of secret)" \
    [ "$(meta_of secret | jq -r .encrypted)/${KEY1_ID:+id}" = true/id ]
expect meta-plain "plain's meta is not encrypted" "plain's meta: $(meta_of plain)" \
    [ "$(meta_of plain | jq -r '.encrypted // false')" = false ]

# scan FILE...: for each, how many of 128 sampled 32-byte runs occur in any store file.
scan() {
    python3 - "$STORE" "$@" <<'PY'
import os, random, sys
root, files = sys.argv[1], sys.argv[2:]
blobs = []
for d, _, names in os.walk(root):
    for n in names:
        with open(os.path.join(d, n), "rb") as f:
            blobs.append(f.read())
rnd = random.Random(7)
for path in files:
    data = open(path, "rb").read()
    hits = 0
    for _ in range(128):
        off = rnd.randrange(0, max(1, len(data) - 32))
        needle = data[off:off + 32]
        hits += any(needle in b for b in blobs)
    print(hits)
PY
}
mapfile -t HITS < <(scan "$A" "$B" "$KEY1")
expect scan-control "${HITS[0]:-?} of 128 runs of A found in the store (the scan sees plaintext)" \
    "runs of A found: ${HITS[0]:-?} of 128 (plain's data should be in the store as written)" \
    [ "${HITS[0]:-0}" -ge 120 ]
expect scan-secret "no run of B (secret's data) in any store file" \
    "runs of B found in the store: ${HITS[1]:-?} of 128 (should be 0)" [ "${HITS[1]:-1}" = 0 ]
expect scan-key "the master key is in no store file" "runs of key 1 found: ${HITS[2]:-?}" \
    [ "${HITS[2]:-1}" = 0 ]

api POST /api/exports/secret/snapshots '{"name":"s1"}'
expect snapshot "POST secret/snapshots s1: 201" "snapshot: $API_STATUS $API_BODY" [ "$API_STATUS" = 201 ]
api PUT /api/exports/child '{"from":"secret@s1"}'
CHILD_DEV="$(jq -r '.device // empty' <<<"$API_BODY")"
expect fork "fork child of secret@s1: 201 with a device" "fork: $API_STATUS $API_BODY" \
    [ "$API_STATUS/${CHILD_DEV:+dev}" = 201/dev ]
[ -z "$CHILD_DEV" ] || wait_blockdev "$CHILD_DEV" 60
expect fork-reads "child reads B" "child should read B" [ "$(hash_dev "$CHILD_DEV")" = "$SHA_B" ]
expect child-keys "child's meta holds secret's wrapped key" "child's meta: $(meta_of child)" \
    [ "$(meta_of child | jq '.keys.ancestors | length')" = 1 ]

# Figures: cold sequential read and 4k random writes, plaintext vs encrypted.
for r in $(seq "$ROUNDS"); do
    for v in plain secret; do
        cold "$v"
        t0="$(now_ms)"
        cpu_mark
        h="$(hash_dev "$EXPORT_DEV")"
        cpu_stop
        ms=$(($(now_ms) - t0))
        cpu_record "cold_read_${v}_r${r}"
        want="$SHA_A"
        [ "$v" = plain ] || want="$SHA_B"
        expect "cold-$v-$r" "$v reads its data after a cold wake" "$v after a cold wake: sha256 differs" [ "$h" = "$want" ]
        record_figure "cold_read_${v}_r${r}_ms" "$ms" ms
        # The same cold read without the hashing reader beside it on the guest's CPUs
        # (sha256sum takes as much CPU as the AEAD here); checked once cached.
        cold "$v"
        t0="$(now_ms)"
        cpu_mark
        dd if="$EXPORT_DEV" of=/dev/null bs=1M count="$DATA_MIB" iflag=direct status=none
        cpu_stop
        ms=$(($(now_ms) - t0))
        cpu_record "cold_read_alone_${v}_r${r}"
        expect "cold-alone-$v-$r" "$v reads its data after a second cold wake" "$v after a second cold wake: sha256 differs" \
            [ "$(hash_dev "$EXPORT_DEV")" = "$want" ]
        record_figure "cold_read_alone_${v}_r${r}_ms" "$ms" ms
        fio_run "randwrite-$v-$r" --filename="$EXPORT_DEV" --rw=randwrite --bs=4k --iodepth=16 \
            --size="$((DATA_MIB * 2))M" --offset="$((DATA_MIB))M" --time_based --runtime="$FIO_SECS" ||
            bad "fio-$v-$r" "fio randwrite on $v failed"
        record_figure "randwrite_4k_${v}_r${r}_iops" "$(fio_iops "randwrite-$v-$r" write)"
        export_drain "$v"
    done
done

# ---------------------------------------------------------------- wrong key
restart wrong "$KEY2"
KEY2_ID="$(grep -o 'master_key_id=[0-9a-f]*' "$DAEMON_LOG" | tail -n1 | cut -d= -f2)"
api GET /api/exports/secret
why="$(jq -r '.error // empty' <<<"$API_BODY")"
names=no
if [ -n "$KEY1_ID" ] && [ -n "$KEY2_ID" ] && [[ "$why" == *"$KEY1_ID"* && "$why" == *"$KEY2_ID"* ]]; then
    names=yes
fi
expect wrong-key "secret is failed under key 2, naming both key ids" \
    "secret under the wrong key should be failed with a reason naming $KEY1_ID and $KEY2_ID: $API_BODY" \
    [ "$(jq -r .state <<<"$API_BODY")/$names" = failed/yes ]
expect wrong-key-child "child is failed too" "child: $(state_of child)" [ "$(state_of child)" = failed ]
expect wrong-key-plain "plain is live" "plain: $(state_of plain)" [ "$(state_of plain)" = live ]

# ---------------------------------------------------------------- rotation
restart rotate "$KEY2" "$KEY1"
expect rotate-live "secret is live with key 2 current, key 1 old" "secret: $(state_of secret)" \
    [ "$(state_of secret)" = live ]
expect rotate-reads "secret reads B" "secret should read B" [ "$(hash_dev "$(export_device secret)")" = "$SHA_B" ]
expect rotate-meta "secret's data keys are wrapped by key 2 ($KEY2_ID)" \
    "secret's key id should be $KEY2_ID: $(meta_of secret | jq -c .keys.key_id)" \
    [ "$(meta_of secret | jq -r .keys.key_id)" = "$KEY2_ID" ]
restart key2 "$KEY2"
expect rotated-live "key 2 alone serves secret and child" \
    "secret: $(state_of secret), child: $(state_of child)" \
    [ "$(state_of secret)/$(state_of child)" = live/live ]

# ---------------------------------------------------------------- crypto-erase
api DELETE "/api/exports/secret?purge=true"
expect erase "DELETE secret?purge=true: 200" "purge: $API_STATUS $API_BODY" [ "$API_STATUS" = 200 ]
expect erase-key "secret's meta (kept for the fork) holds no data key" "secret's meta: $(meta_of secret 2>&1)" \
    [ "$(meta_of secret | jq -r '.keys == null and .encrypted')" = true ]
cold child
expect erase-fork "child, cold-woken, still reads B" "child should read B" [ "$(hash_dev "$EXPORT_DEV")" = "$SHA_B" ]

# ---------------------------------------------------------------- tamper
seg="$(find "$VOLS/secret/seg" -type f ! -name '.glidefs*' -size +64k | head -n 1)"
if [ -n "$seg" ]; then
    sz="$(stat -c %s "$seg")"
    off=$((sz - 5))
    byte="$(od -An -tu1 -j "$off" -N1 "$seg" | tr -d ' ')"
    # shellcheck disable=SC2059 # the format is the octal escape of the new byte
    printf "$(printf '\\%03o' $(((byte ^ 1) & 255)))" | dd of="$seg" bs=1 seek="$off" conv=notrunc status=none
    # A restart: the host's shared cache (which serves child's reads of secret's
    # extents) starts empty, so the flipped extent is fetched again.
    restart key2b "$KEY2"
    errs0="$(metric glidefs_checksum_errors_total)"
    cold child
    rc=0
    dd if="$EXPORT_DEV" of=/dev/null bs=1M count="$DATA_MIB" iflag=direct status=none 2>/dev/null || rc=$?
    errs1="$(metric glidefs_checksum_errors_total)"
    expect tamper-io "a flipped byte in $seg is an I/O error" "reading child after the flip should fail; dd: $rc" \
        [ "$rc" != 0 ]
    expect tamper-counter "glidefs_checksum_errors_total grew ($errs0 -> $errs1)" \
        "the counter should grow: $errs0 -> $errs1" [ "${errs1/absent/0}" -gt "${errs0/absent/0}" ]
else
    bad tamper "no segment of secret over 64 KiB to tamper with: $(find "$VOLS/secret" -type f | head)"
fi

# ---------------------------------------------------------------- cleanup
for v in child plain; do
    api DELETE "/api/exports/$v?purge=true"
    expect "purge-$v" "DELETE $v?purge=true: 200" "purge $v: $API_STATUS $API_BODY" [ "$API_STATUS" = 200 ]
done
left="$(find "$VOLS" -type f ! -name '.glidefs*' 2>/dev/null | head -n 5 | tr '\n' ' ')" || true
expect store-empty "nothing left in the store" "left: $left" [ -z "$left" ]
stop_daemon
panics="$(grep -l 'panicked' "$RESULTS_DIR"/daemon.*.log 2>/dev/null | tr '\n' ' ')" || true
expect no-panic "no panic in the daemon logs" "the daemon logs should hold no panic; see $panics" [ -z "$panics" ]
checks_verdict
