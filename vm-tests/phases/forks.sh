#!/usr/bin/env bash
# phase: forks - snapshots and copy-on-write forks end to end (issue 16).
# Export `base` (FORKS_SIZE): ext4 with a file tree (FORKS_TREE_MIB, 88 files in
# nested directories), the sha256 of every file, umount, the device's sha256, then
# snapshot s1 (POST .../snapshots: 201; listed by the API and by `glidefs export
# snapshot list`; the same name again: 409). base then changes (a file deleted, one
# overwritten, one added), which no fork may show.
# FORKS_N (16) forks of base@s1 created concurrently (`glidefs export fork`; fork1
# with curl, asking for twice the size): each 201 with a device of its own, at most
# 64 KiB of store objects, a marker beside the snapshot; two forks' devices read
# base's image at the snapshot byte for byte. Each fork is mounted by device path
# (they share the ext4 UUID) and shows exactly the snapshot's tree. The first half
# write their own files and sync; the second half write theirs (dd conv=fsync per
# file) and the daemon is killed (kill -9) while they do. Restart: ready, every
# export back on its device, every writer ends without an error. Then every fork,
# unmounted: e2fsck -fn clean; mounted: exactly the snapshot's tree plus its own
# files (nothing of base's later changes, nothing of another fork).
# DELETE of s1 is refused (409 naming the forks; the CLI exits 3) while forks exist.
# DELETE base?purge=true succeeds with the forks mounted: the snapshot and the
# markers stay in the store, base's name stays taken (PUT: 409), and every fork still
# reads its tree. One fork (FORKS_COLD, the last: written across the kill) is deleted
# without purge (drain, local cache dropped) and PUT again with its size: a cold wake
# from the store of a fork whose parent was purged; e2fsck clean, its tree exact.
# Then every fork is purged (concurrently): nothing of base is left in the store.
# Base images: `glidefs image import` of a 6 MiB + 1 KiB raw image with zero MiBs
# (holes): exit 0, only the 3 MiB that are not zero written and stored, snapshot
# listed, a fork of it reads the image byte for byte; importing into an existing
# name and importing a missing file fail naming them and create nothing; purged.
# SIGTERM: exit 0; no panic in the daemon logs.
# Every assertion is a line in RESULTS_DIR/checks (PASS/FAIL id: what); the phase
# goes on after a failed one and fails at the end naming them all. Setup errors fail
# at once. Figures: snapshot ms, fork creation (N at once: slowest request, all
# devices present), store bytes per fork, recovery, base purge, cold wake, fork purge.
# ublks_max: 32
# deadline: 900
# needs: glidefs
# shellcheck disable=SC2317 # the per-fork jobs run through par, the exit handler as a trap
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${FORKS_N:-16}"
SIZE="${FORKS_SIZE:-64M}"
TREE_MIB="${FORKS_TREE_MIB:-4}"
JOBS="${FORKS_JOBS:-4}"         # forks checked at a time
STORE="${FORKS_STORE:-file}"    # file | s3
COLD="${FORKS_COLD:-fork$((N - 1))}"
API_TIMEOUT=300
[ "$N" -ge 2 ] || fail "FORKS_N must be at least 2"

ST="$WORK_DIR/state"    # per-fork job output and status
SRC="$WORK_DIR/src"     # the files, made on the scratch disk first
WANT="$WORK_DIR/want"   # expected "sha256  ./path" lists, sorted
MNT="$WORK_DIR/mnt"
mkdir -p "$ST" "$SRC" "$WANT" "$MNT"

# The forks' mounts are detached at exit, in the background: after a failure between
# the kill and the restart their devices have no server, and a umount that waits for
# them must not keep the verdict from being written (seen: the phase never wrote one).
_forks_exit_rc() { return "$1"; }
_forks_exit() {
    local rc=$?
    set +e
    (
        for m in "$MNT"/*; do
            mountpoint -q "$m" 2>/dev/null && umount -l "$m"
        done
    ) </dev/null >/dev/null 2>&1 &
    _forks_exit_rc "$rc"
    _on_exit
}
trap _forks_exit EXIT

# ---------------------------------------------------------------- helpers

# now: NOW = ms since the epoch, without a fork (a fork costs ~0.3 s under TCG).
now() { NOW=$((${EPOCHREALTIME/./} / 1000)); }

# hash_tree DIR: "sha256  ./path" of every file under DIR, sorted by path.
hash_tree() {
    (cd "$1" && find . -path ./lost+found -prune -o -type f -print0 | xargs -0 -r sha256sum) | LC_ALL=C sort -k2
}
# hash_dev DEV BYTES: sha256 of the first BYTES of DEV, read with O_DIRECT.
hash_dev() { dd if="$1" bs=1M count="$(($2 >> 20))" iflag=direct status=none | sha256sum | cut -d' ' -f1; }
# differ WANT GOT: the first lines that differ, on one line.
differ() { diff "$1" "$2" | grep '^[<>]' | head -n 4 | tr '\n' ' '; }

# par STEP FUNC I...: FUNC I for every I, at most JOBS at a time, each in the
# background with its output in $ST/STEP.I.out and its status in $ST/STEP.I.rc.
# PAR_FAILED: the indices whose FUNC failed.
par() {
    local step="$1" fn="$2" i pid p
    shift 2
    local -a running=() keep
    for i in "$@"; do
        while [ "${#running[@]}" -ge "$JOBS" ]; do
            pid=""
            wait -n -p pid "${running[@]}" || true
            keep=()
            for p in "${running[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
            running=("${keep[@]}")
        done
        (
            set +e
            "$fn" "$i" >"$ST/$step.$i.out" 2>&1
            echo $? >"$ST/$step.$i.rc"
        ) &
        running+=("$!")
    done
    [ "${#running[@]}" = 0 ] || wait "${running[@]}" || true
    PAR_FAILED=()
    for i in "$@"; do
        [ "$(cat "$ST/$step.$i.rc" 2>/dev/null)" = 0 ] || PAR_FAILED+=("$i")
    done
}
# par_check ID WHAT STEP I...: one check for a par step (what failed, per fork).
par_check() {
    local id="$1" what="$2" step="$3" i msg=""
    shift 3
    if [ "${#PAR_FAILED[@]}" = 0 ]; then
        ok "$id" "$what: all $# forks"
        return 0
    fi
    for i in "${PAR_FAILED[@]}"; do
        msg+="fork$i: $(tail -n 2 "$ST/$step.$i.out" 2>/dev/null | tr '\n' ' ') "
    done
    bad "$id" "$what should hold for every fork; it did not for ${#PAR_FAILED[@]} of $#: $msg"
}

# store_objects [PATH]: the store's objects under volumes/PATH, one "KEY SIZE" line
# each (key relative to volumes/). The local store's `.glidefs-tmp.*` files, left by
# a put that a kill -9 interrupted, are not objects (never listed; docs: harmless).
store_objects() {
    find "$STORE_ROOT/${1:-}" -type f ! -name '.glidefs*' -printf '%P %s\n' 2>/dev/null \
        | sed "s|^|${1:+$1/}|" || true
}
store_files() { store_objects "$1" | wc -l; }

# ---------------------------------------------------------------- per-fork jobs
# They run in the background (par): they print what went wrong and return 1,
# never `fail`.

# mount_fork I: mounts forkI on $MNT/forkI.
mount_fork() {
    mkdir -p "$MNT/fork$1"
    mount -o noatime "${DEV[$1]}" "$MNT/fork$1" || { echo "mount ${DEV[$1]} failed"; return 1; }
}

# image_fork I: the fork's device reads base's image at the snapshot.
image_fork() {
    local h
    h="$(hash_dev "${DEV[$1]}" "$SIZE_B")" || { echo "reading ${DEV[$1]} failed"; return 1; }
    [ "$h" = "$BASE_IMAGE" ] || { echo "${DEV[$1]} reads sha256 $h, base at s1 was $BASE_IMAGE"; return 1; }
}

# tree_fork I WANT: forkI's mounted tree has exactly the files and hashes of WANT.
tree_fork() {
    hash_tree "$MNT/fork$1" >"$ST/got.$1" || { echo "hashing $MNT/fork$1 failed"; return 1; }
    cmp -s "$2" "$ST/got.$1" || { echo "tree differs from $(basename "$2"): $(differ "$2" "$ST/got.$1")"; return 1; }
}

# mount_check I: mounts forkI, which shows exactly the snapshot's tree.
mount_check() { mount_fork "$1" && tree_fork "$1" "$WANT/base.s1"; }

# own_files I: OWN = forkI's own files in the pool: chunks c(3I) to c(3I+2), which
# keep their names in the fork (own/forkI/cNNN), then nameI (own/forkI/name).
own_files() {
    local k c
    OWN=()
    for ((k = 3 * $1; k < 3 * $1 + 3; k++)); do
        printf -v c 'c%04d' "$k"
        OWN+=("$SRC/pool/$c")
    done
    OWN+=("$SRC/pool/name$1")
}

# write_own I: copies forkI's own files in, syncs.
write_own() {
    local d="$MNT/fork$1/own/fork$1"
    own_files "$1"
    if ! { mkdir -p "$d" && cp "${OWN[@]:0:3}" "$d/" && cp "${OWN[3]}" "$d/name" && sync -f "$d"; }; then
        echo "writing fork$1's files failed"
        return 1
    fi
}

# writer I: forkI's own files, each with dd conv=fsync (the daemon is killed while
# they are written); one line per file done in $ST/written.I.
writer() {
    local f t d="$MNT/fork$1/own/fork$1"
    own_files "$1"
    mkdir -p "$d" || { echo "mkdir $d failed"; return 1; }
    for f in "${OWN[@]}"; do
        t="${f##*/}"
        [[ $t != name* ]] || t=name
        dd if="$f" of="$d/$t" bs=64k conv=fsync status=none || { echo "dd $f failed"; return 1; }
        echo "$t" >>"$ST/written.$1"
    done
    sync -f "$d" || { echo "sync -f $d failed"; return 1; }
}

# fsck_check I: forkI unmounted: e2fsck -fn clean; mounted: its whole tree exact.
fsck_check() {
    local rc=0
    e2fsck -fn "${DEV[$1]}" >"$RESULTS_DIR/e2fsck.fork$1.log" 2>&1 || rc=$?
    [ "$rc" = 0 ] || { echo "e2fsck -fn ${DEV[$1]}: status $rc: $(grep -v '^Pass\|^e2fsck\|^$' "$RESULTS_DIR/e2fsck.fork$1.log" | head -n 3 | tr '\n' ' ')"; return 1; }
    mount_fork "$1" && tree_fork "$1" "$WANT/fork$1"
}

# reread I: forkI's mounted tree is still exact.
reread() { tree_fork "$1" "$WANT/fork$1"; }

# ---------------------------------------------------------------- set-up

require_ublk
require_daemon
require_cmd mkfs.ext4 e2fsck sha256sum mount umount mountpoint blockdev split cmp
SIZE_B="$(size_bytes "$SIZE")"
BIG_B=$((SIZE_B * 2))

if [ "$STORE" = s3 ]; then
    s3_start
    url="$(s3_url forks)"
    STORE_ROOT="$S3_ROOT/$S3_BUCKET/forks/volumes"
else
    mkdir -p "$WORK_DIR/store"
    url="file://$WORK_DIR/store"
    STORE_ROOT="$WORK_DIR/store/volumes"
fi
write_config "$WORK_DIR/forks.toml" "$url"
start_daemon "$DAEMON_CONFIG"
wait_ready 120

# The files, made on the scratch disk first with few processes (each costs a good
# fraction of a second under TCG): base's tree (64 small files, then 4 directories of
# larger ones, two of them nested) and a pool of each fork's own files (3 random
# chunks of 64 KiB and a file naming the fork; own_files).
mkdir -p "$SRC/base/tree/small" "$SRC/base/tree/d0" "$SRC/base/tree/d1/x" "$SRC/base/tree/d2" \
    "$SRC/base/tree/d3/x/y" "$SRC/pool"
head -c 65536 /dev/urandom | split -b 1024 -d -a 2 - "$SRC/base/tree/small/s"
per=$((((TREE_MIB << 20) - 65536) / 4))
dirs=(d0 d1/x d2 d3/x/y)
for ((i = 0; i < 4; i++)); do
    head -c "$per" /dev/urandom | split -b "$(((i + 1) * 96 * 1024))" -d -a 3 - "$SRC/base/tree/${dirs[$i]}/f"
done
head -c $((N * 3 * 65536)) /dev/urandom | split -b 64K -d -a 4 - "$SRC/pool/c"
for ((i = 0; i < N; i++)); do echo "fork$i" >"$SRC/pool/name$i"; done
hash_tree "$SRC/base" >"$WANT/base.s1"
# WANT/forkI: forkI's own files (paths ./own/forkI/...), then the snapshot's tree:
# sorted by path, as hash_tree prints it.
(cd "$SRC/pool" && sha256sum -- *) >"$WANT/pool"
awk -v want="$WANT" -v n="$N" '
    NR == FNR { base = base $0 "\n"; next }
    $2 ~ /^c/ { i = int(substr($2, 2) / 3); own[i] = own[i] $1 "  ./own/fork" i "/" $2 "\n"; next }
    { i = substr($2, 5); nm[i] = $1 "  ./own/fork" i "/name\n" }
    END { for (i = 0; i < n; i++) { f = want "/fork" i; printf "%s%s%s", own[i], nm[i], base > f; close(f) } }
' "$WANT/base.s1" "$WANT/pool"
# base after the snapshot: d0/f000 deleted, d1/x/f000 overwritten, a file added.
cp -a "$SRC/base" "$SRC/base-after"
rm "$SRC/base-after/tree/d0/f000"
head -c 100000 /dev/urandom >"$SRC/base-after/tree/d1/x/f000"
echo "written after s1" >"$SRC/base-after/tree/after-s1"
hash_tree "$SRC/base-after" >"$WANT/base.after"
record_figure tree_files "$(wc -l <"$WANT/base.s1")"
record_figure tree_kib "$(du -sk "$SRC/base/tree" | cut -f1)" KiB

# ---------------------------------------------------------------- base and s1

log "==== base: ext4, the tree, snapshot s1"
export_create base "$SIZE"
BASE_DEV="$EXPORT_DEV"
# Few inodes: e2fsck of N forks under TCG reads every inode table.
check "mkfs.ext4 on $BASE_DEV" mkfs.ext4 -q -F -N 2048 -E lazy_itable_init=0,lazy_journal_init=0 "$BASE_DEV"
mkdir -p "$MNT/base"
check "mount $BASE_DEV" mount -o noatime "$BASE_DEV" "$MNT/base"
cp -a "$SRC/base/tree" "$MNT/base/"
sync
hash_tree "$MNT/base" >"$ST/got.base"
cmp -s "$WANT/base.s1" "$ST/got.base" || fail "base's tree reads back differently: $(differ "$WANT/base.s1" "$ST/got.base")"
check "umount base" umount "$MNT/base"
BASE_IMAGE="$(hash_dev "$BASE_DEV" "$SIZE_B")"
log "base: $(wc -l <"$WANT/base.s1") files written, device sha256 $BASE_IMAGE"

now
t0=$NOW
api POST /api/exports/base/snapshots '{"name":"s1"}'
now
record_figure snapshot_ms "$((NOW - t0))" ms
expect snapshot-create "POST base/snapshots s1: 201 $API_BODY" \
    "POST /api/exports/base/snapshots {\"name\":\"s1\"} should be 201 with name s1 and size $SIZE_B; it returned $API_STATUS $API_BODY" \
    [ "$API_STATUS:$(jq -r '"\(.name) \(.size_bytes)"' <<<"$API_BODY" 2>/dev/null)" = "201:s1 $SIZE_B" ]
[ "$API_STATUS" = 201 ] || fail "no snapshot, no forks: POST base/snapshots returned $API_STATUS $API_BODY"
api GET /api/exports/base/snapshots
expect snapshot-list "GET base/snapshots lists s1" \
    "GET /api/exports/base/snapshots should be 200 listing s1; it returned $API_STATUS $API_BODY" \
    [ "$API_STATUS:$(jq -r '[.[].name] | join(",")' <<<"$API_BODY" 2>/dev/null)" = "200:s1" ]
out="$("$GLIDEFS_BIN" export snapshot list base --api "$API" 2>&1)" || true
expect snapshot-list-cli "glidefs export snapshot list base names s1" \
    "glidefs export snapshot list base should name s1; it printed: $(tr '\n' ' ' <<<"$out")" \
    grep -q '^s1 ' <<<"$out"
api POST /api/exports/base/snapshots '{"name":"s1"}'
expect snapshot-name-taken "a second snapshot s1: 409" \
    "a second POST of snapshot s1 should be 409; it returned $API_STATUS $API_BODY" [ "$API_STATUS" = 409 ]

# base moves on after s1: no fork may see it.
check "mount $BASE_DEV" mount -o noatime "$BASE_DEV" "$MNT/base"
rm "$MNT/base/tree/d0/f000"
cp "$SRC/base-after/tree/d1/x/f000" "$MNT/base/tree/d1/x/f000"
cp "$SRC/base-after/tree/after-s1" "$MNT/base/tree/after-s1"
sync
check "umount base" umount "$MNT/base"
echo 3 >/proc/sys/vm/drop_caches
check "mount $BASE_DEV" mount -o noatime "$BASE_DEV" "$MNT/base"
hash_tree "$MNT/base" >"$ST/got.base"
expect base-changed "base shows its changes after s1" \
    "base should show its own changes after s1: $(differ "$WANT/base.after" "$ST/got.base")" \
    cmp -s "$WANT/base.after" "$ST/got.base"
check "umount base" umount "$MNT/base"

# ---------------------------------------------------------------- N forks at once

log "==== $N forks of base@s1, created concurrently"
# create_fork I: with `glidefs export fork`, fork1 with curl and twice the size (curl
# is the slower client to start under TCG: the CLI brings the requests closer
# together), then waits for the device node; writes "STATUS MS DEVICE SIZE_BYTES DEVICE_MS" (ms since
# T0) to $ST/create.I.res and the answer to $ST/create.I.json.
create_fork() {
    local i="$1" t code rc=0 body='{"from":"base@s1"}' json="" dev=- sz=- k
    now
    t=$NOW
    if [ "$i" != 1 ]; then
        "$GLIDEFS_BIN" export fork "fork$i" --from base@s1 --api "$API" >"$ST/create.$i.json" 2>&1 || rc=$?
        code="cli-exit-$rc"
        [ "$rc" != 0 ] || code=201
    else
        body="{\"from\":\"base@s1\",\"size_bytes\":$BIG_B}"
        code="$(curl -sS -o "$ST/create.$i.json" -w '%{http_code}' --max-time 300 -X PUT \
            -H 'Content-Type: application/json' --data-binary "$body" "$API/api/exports/fork$i" 2>&1)" || true
    fi
    now
    t=$((NOW - t))
    IFS= read -r -d '' json <"$ST/create.$i.json" || true
    [[ ! $json =~ \"device\":[[:space:]]*\"(/dev/[^\"]+)\" ]] || dev="${BASH_REMATCH[1]}"
    [[ ! $json =~ \"size_bytes\":[[:space:]]*([0-9]+) ]] || sz="${BASH_REMATCH[1]}"
    for ((k = 0; k < 600; k++)); do
        [ "$dev" = - ] || [ -b "$dev" ] && break
        sleep 0.1
    done
    now
    echo "${code:-none} $t $dev $sz $((NOW - T0))" >"$ST/create.$i.res"
}
store_before="$(store_objects | wc -l)"
declare -a DEV SIZEB
# fork1 (curl) first: its client takes longest to start.
order=(1)
for ((i = 0; i < N; i++)); do [ "$i" = 1 ] || order+=("$i"); done
now
T0=$NOW
pids=()
for i in "${order[@]}"; do
    create_fork "$i" &
    pids+=("$!")
done
wait "${pids[@]}" || true
slowest=0
devs_ms=0
bad_creates=""
for ((i = 0; i < N; i++)); do
    code=none took=0 dev=- sz=- dms=0
    read -r code took dev sz dms <"$ST/create.$i.res" || true
    [ "$took" -le "$slowest" ] || slowest="$took"
    [ "$dms" -le "$devs_ms" ] || devs_ms="$dms"
    want_size="$SIZE_B"
    [ "$i" != 1 ] || want_size="$BIG_B"
    DEV[i]="$dev"
    SIZEB[i]="$sz"
    if [ "$code" != 201 ] || [ "$dev" = - ] || [ "$sz" != "$want_size" ]; then
        bad_creates+="fork$i: $code $(tr '\n' ' ' <"$ST/create.$i.json" | head -c 300); "
    fi
done
create_wall="$slowest"
record_figure forks_created "$N"
record_figure fork_create_slowest_ms "$slowest" ms
record_figure fork_devices_present_ms "$devs_ms" ms
expect forks-created "$N forks created concurrently (201, a device, fork1 twice the size), the slowest in $create_wall ms" \
    "every concurrent fork should be created (201 with a device and its size); not: $bad_creates" \
    [ -z "$bad_creates" ]
[ -z "$bad_creates" ] || fail "not every fork was created: $bad_creates"
dups="$(printf '%s\n' "${DEV[@]}" | sort | uniq -d | tr '\n' ' ')"
expect fork-devices-distinct "every fork has a device of its own" \
    "every fork should have a device of its own; shared: $dups" [ -z "$dups" ]
for ((i = 0; i < N; i++)); do wait_blockdev "${DEV[i]}" 1; done
got="$(blockdev --getsize64 "${DEV[1]}")"
expect fork-size "fork1's device has the size it asked for ($BIG_B bytes)" \
    "fork1 (size_bytes $BIG_B) should have a device of $BIG_B bytes; it has $got" [ "$got" = "$BIG_B" ]

# Copy-on-write: a fork costs a marker and its meta (plus its lease), not a copy.
store_after="$(store_objects | wc -l)"
fat=""
max_bytes=0
seen=0
while read -r dir bytes; do
    seen=$((seen + 1))
    [ "$bytes" -le "$max_bytes" ] || max_bytes="$bytes"
    [ "$bytes" -le 65536 ] || fat+="$dir: $bytes bytes; "
done < <(store_objects | awk '
    { split($1, p, "/"); if (p[1] ~ /^fork[0-9]+$/) s[p[1]] += $2 }
    END { for (d in s) print d, s[d] }')
record_figure fork_store_bytes_max "$max_bytes" bytes
record_figure fork_store_objects_added "$((store_after - store_before))"
expect fork-store-small "each of the $N forks added at most 64 KiB to the store (largest: $max_bytes bytes; $((store_after - store_before)) objects in all)" \
    "each of the $N forks should have objects in the store, at most 64 KiB; $seen have, $fat" [ "$seen:$fat" = "$N:" ]
markers="$(store_files base/forks/s1)"
expect fork-markers "$markers markers beside s1 (base/forks/s1/)" \
    "the store should hold one marker per fork under volumes/base/forks/s1/ ($N); it holds $markers" [ "$markers" = "$N" ]

FORKS=()
MNTS=()
for ((i = 0; i < N; i++)); do
    FORKS+=("$i")
    MNTS+=("$MNT/fork$i")
done
# Whole images of two forks (1 GiB for all 16 is ~50 s under TCG); every fork's
# filesystem is checked below.
IMAGED=(0 "$((N - 1))")
par image image_fork "${IMAGED[@]}"
par_check fork-image "the device reads base's image at s1 (sha256 of the first $SIZE)" image "${IMAGED[@]}"
par mount mount_check "${FORKS[@]}"
par_check fork-tree-s1 "mounted, the fork shows exactly the snapshot's tree" mount "${FORKS[@]}"
for i in "${PAR_FAILED[@]}"; do
    mountpoint -q "$MNT/fork$i" || fail "fork$i could not be mounted: $(tail -n 1 "$ST/mount.$i.out")"
done

# ---------------------------------------------------------------- writes, kill -9

H=$((N / 2))
FIRST=("${FORKS[@]:0:H}")
SECOND=("${FORKS[@]:H}")
log "==== forks 0-$((H - 1)) write their files; then forks $H-$((N - 1)) write while the daemon is killed"
now
t0=$NOW
par own write_own "${FIRST[@]}"
now
record_figure own_write_first_half_ms "$((NOW - t0))" ms
par_check own-written "its own files written and synced" own "${FIRST[@]}"

for i in "${SECOND[@]}"; do
    rm -f "$ST/written.$i"
    (
        set +e
        writer "$i" >"$ST/writer.$i.out" 2>&1
        echo $? >"$ST/writer.$i.rc"
    ) &
    BG_PIDS+=("$!")
done
# Kill once a first file is acknowledged: the other writers are mid-way.
end=$((SECONDS + 120))
until compgen -G "$ST/written.*" >/dev/null; do
    [ "$SECONDS" -lt "$end" ] || fail "no writer acknowledged a file within 120 s"
    sleep 0.1
done
# (A writer is done when its status file exists: kill -0 also succeeds on a child
# bash has not reaped yet.)
writing=0
for i in "${SECOND[@]}"; do [ -f "$ST/writer.$i.rc" ] || writing=$((writing + 1)); done
done_files="$(cat "$ST"/written.* | wc -l)"
kill9_daemon
now
t_kill=$NOW
own_files 0
total_files=$((${#SECOND[@]} * ${#OWN[@]}))
record_figure files_acked_at_kill "$done_files"
record_figure files_written_across_kill "$total_files"
expect kill-mid-write "killed with $writing of ${#SECOND[@]} writers still writing ($done_files of $total_files files acknowledged)" \
    "the kill should hit writers mid-way; $writing still running, $done_files of $total_files files acknowledged" \
    [ "$writing" -gt 0 ]
for i in "${FORKS[@]}"; do
    [ -b "${DEV[i]}" ] || fail "${DEV[i]} (fork$i) vanished after kill -9"
done

start_daemon "$DAEMON_CONFIG"
wait_ready 300
record_figure recovery_ms "$READY_MS" ms
api_ok GET /api/exports
declare -A GOT=()
while read -r name dev state; do
    GOT[$name]="$dev $state"
done < <(jq -r '(if type == "array" then . else .exports end)[] | "\(.name) \(.device) \(.state)"' <<<"$API_BODY")
moved=""
[ "${GOT[base]:-}" = "$BASE_DEV live" ] || moved+="base: ${GOT[base]:-absent} (was $BASE_DEV); "
for i in "${FORKS[@]}"; do
    [ "${GOT[fork$i]:-}" = "${DEV[i]} live" ] || moved+="fork$i: ${GOT[fork$i]:-absent} (was ${DEV[i]}); "
done
expect recovered "base and all $N forks live on their devices after the restart ($READY_MS ms)" \
    "every export should be live on its device after the restart; $moved" [ -z "$moved" ]

# The writers' I/O waited on the quiesced devices; it must complete without error.
end=$((SECONDS + 300))
for i in "${SECOND[@]}"; do
    while [ ! -f "$ST/writer.$i.rc" ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.2; done
done
now
record_figure writers_done_after_kill_ms "$((NOW - t_kill))" ms
failed_w=""
for i in "${SECOND[@]}"; do
    if [ ! -f "$ST/writer.$i.rc" ]; then
        failed_w+="fork$i: still writing 300 s after the kill; "
    elif [ "$(cat "$ST/writer.$i.rc" 2>/dev/null)" != 0 ]; then
        failed_w+="fork$i: $(tr '\n' ' ' <"$ST/writer.$i.out"); "
    fi
done
expect writers-done "the ${#SECOND[@]} writers interrupted by the kill ended without an error" \
    "every writer should end without an error after the restart; $failed_w" [ -z "$failed_w" ]
[ -z "$failed_w" ] || dump_stuck "writers not done after the restart"

log "==== every fork: e2fsck -fn unmounted, then its whole tree mounted"
umount "${MNTS[@]}" || fail "umount of the forks after the restart failed"
blockdev --flushbufs "${DEV[@]}" 2>/dev/null || true
echo 3 >/proc/sys/vm/drop_caches
now
t0=$NOW
par fsck fsck_check "${FORKS[@]}"
now
record_figure fsck_and_verify_all_ms "$((NOW - t0))" ms
par_check fork-fsck-tree "e2fsck -fn clean; exactly the snapshot's tree plus its own files" fsck "${FORKS[@]}"
for i in "${PAR_FAILED[@]}"; do
    mountpoint -q "$MNT/fork$i" || mount_fork "$i" >/dev/null 2>&1 || true
done

# ---------------------------------------------------------------- purge of base

log "==== snapshot delete refused, then base purged under its live forks"
refused_naming_fork() { [ "$API_STATUS" = 409 ] && grep -q fork <<<"$API_BODY"; }
api DELETE /api/exports/base/snapshots/s1
expect snapshot-delete-refused "DELETE base/snapshots/s1 with forks: 409 $API_BODY" \
    "DELETE /api/exports/base/snapshots/s1 should be 409 naming a fork while $N forks exist; it returned $API_STATUS $API_BODY" \
    refused_naming_fork
rc=0
out="$("$GLIDEFS_BIN" export snapshot delete base s1 --api "$API" 2>&1)" || rc=$?
expect snapshot-delete-refused-cli "glidefs export snapshot delete base s1 with forks: exit 3" \
    "glidefs export snapshot delete base s1 should exit 3 (409) while forks exist; exit $rc: $out" [ "$rc" = 3 ]
now
t0=$NOW
api DELETE "/api/exports/base?purge=true"
now
record_figure purge_base_ms "$((NOW - t0))" ms
expect purge-base "DELETE base?purge=true with $N live forks: 200 $API_BODY" \
    "DELETE /api/exports/base?purge=true should succeed while forks live; it returned $API_STATUS $API_BODY" \
    [ "$API_STATUS:$(jq -r .purged <<<"$API_BODY" 2>/dev/null)" = "200:true" ]
api GET /api/exports/base
expect base-gone "GET base after the purge: 404" "GET /api/exports/base after the purge should be 404; it returned $API_STATUS $API_BODY" [ "$API_STATUS" = 404 ]
api PUT /api/exports/base "{\"size\":\"$SIZE\"}"
expect base-name-taken "PUT base after the purge while forks read it: 409" \
    "PUT /api/exports/base after its purge should be 409 while forks read its snapshot (the name stays taken); it returned $API_STATUS $API_BODY" \
    [ "$API_STATUS" = 409 ]
kept="$(store_files base/snap/s1):$(store_files base/forks/s1)"
expect purge-keeps-snapshot "the store still holds base/snap/s1 and the $N markers" \
    "after base's purge the store should still hold volumes/base/snap/s1 and $N markers; snap:markers = $kept" \
    [ "$kept" = "1:$N" ]
echo 3 >/proc/sys/vm/drop_caches
par reread reread "${FORKS[@]}"
par_check forks-read-after-purge "after base's purge the fork still reads its whole tree" reread "${FORKS[@]}"

# ---------------------------------------------------------------- cold wake of a fork

c="${COLD#fork}"
log "==== cold wake of $COLD (parent purged, local cache dropped)"
check "umount $COLD" umount "$MNT/$COLD"
had_cache=0
[ ! -e "$CACHE_DIR/volumes/$COLD" ] || had_cache=1
API_TIMEOUT=600 api DELETE "/api/exports/$COLD"
expect cold-delete "DELETE $COLD (no purge): 200 $API_BODY" \
    "DELETE /api/exports/$COLD (drain, keep the store) should be 200 purged false; it returned $API_STATUS $API_BODY" \
    [ "$API_STATUS:$(jq -r .purged <<<"$API_BODY" 2>/dev/null)" = "200:false" ]
if [ "$had_cache" = 1 ]; then
    expect cold-cache-dropped "$COLD's cache dir removed by the delete" \
        "DELETE $COLD should remove $CACHE_DIR/volumes/$COLD; it is still there" [ ! -e "$CACHE_DIR/volumes/$COLD" ]
fi
now
t0=$NOW
api PUT "/api/exports/$COLD" "{\"size_bytes\":${SIZEB[c]}}"
now
record_figure cold_wake_ms "$((NOW - t0))" ms
expect cold-wake "PUT $COLD with its size: 201 (cold wake) in $((NOW - t0)) ms" \
    "PUT /api/exports/$COLD {size_bytes: ${SIZEB[c]}} should cold-wake it (201); it returned $API_STATUS $API_BODY" \
    [ "$API_STATUS" = 201 ]
if [ "$API_STATUS" = 201 ]; then
    DEV[c]="$(jq -r '.device // empty' <<<"$API_BODY")"
    [ -n "${DEV[c]}" ] || fail "PUT $COLD: no device in $API_BODY"
    wait_blockdev "${DEV[c]}" 60
    par cold fsck_check "$c"
    par_check cold-fsck-tree "after the cold wake: e2fsck -fn clean, its whole tree exact" cold "$c"
fi

# ---------------------------------------------------------------- purge of the forks

log "==== every fork purged: then nothing of base is left"
umount "${MNTS[@]}" || log "note: not every fork was mounted"
purge_fork() {
    local code
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 600 -X DELETE "$API/api/exports/fork$1?purge=true" 2>&1)" || true
    [ "$code" = 200 ] || { echo "DELETE fork$1?purge=true: $code"; return 1; }
}
JOBS="$N"
now
t0=$NOW
par purge purge_fork "${FORKS[@]}"
now
record_figure purge_forks_ms "$((NOW - t0))" ms
par_check forks-purged "DELETE ?purge=true (all at once): 200" purge "${FORKS[@]}"
left="$(store_objects | grep -E '^(base|fork[0-9]+)/' | head -n 5 | tr '\n' ' ')" || true
expect store-empty "nothing of base or the forks left in the store" \
    "after the last fork's purge nothing of base (its snapshot, markers, segments) or of the forks should be left; left: $left" \
    [ -z "$left" ]
api GET /api/exports
expect exports-empty "no export left" "no export should be left; GET /api/exports: $API_BODY" \
    [ "$(jq '(if type == "array" then . else .exports end) | length' <<<"$API_BODY")" = 0 ]

# ---------------------------------------------------------------- base image import

log "==== glidefs image import: a raw image with holes, then a fork of it"
IMG="$WORK_DIR/golden.img"
IMG_LEN=$((6 * 1048576 + 1024)) # not 4 KiB aligned: the export is rounded up
IMG_SIZE=$(((IMG_LEN + 4095) / 4096 * 4096))
truncate -s "$IMG_LEN" "$IMG"
for m in 0 2 5; do # MiBs 0, 2 and 5 random, the others zero (holes)
    dd if=/dev/urandom of="$IMG" bs=1M seek="$m" count=1 conv=notrunc status=none
done
IMG_SHA="$({ cat "$IMG"; head -c $((IMG_SIZE - IMG_LEN)) /dev/zero; } | sha256sum | cut -d' ' -f1)"
rc=0
out="$("$GLIDEFS_BIN" image import "$IMG" golden --snapshot gold --api "$API" 2>&1)" || rc=$?
expect image-import "glidefs image import golden: exit 0, 3 MiB of 6 written ($out)" \
    "glidefs image import $IMG golden should exit 0 and write only the 3 MiB that are not zero; exit $rc: $out" \
    [ "$rc/$(grep -c "($IMG_LEN bytes, 3145728 not zero)" <<<"$out")" = 0/1 ]
api GET /api/exports/golden
expect image-export "golden: live, $IMG_SIZE bytes" "GET /api/exports/golden: $API_STATUS $API_BODY" \
    [ "$API_STATUS/$(jq -r '"\(.state) \(.size_bytes)"' <<<"$API_BODY" 2>/dev/null)" = "200/live $IMG_SIZE" ]
api GET /api/exports/golden/snapshots
expect image-snapshot "golden@gold listed" "GET golden/snapshots should list gold: $API_STATUS $API_BODY" \
    [ "$API_STATUS:$(jq -r '[.[].name] | join(",")' <<<"$API_BODY" 2>/dev/null)" = "200:gold" ]
seg_bytes="$(store_objects golden | awk '$1 ~ /\/seg\// { s += $2 } END { print s + 0 }')"
sparse=no
[ "$seg_bytes" -lt 3145728 ] || [ "$seg_bytes" -ge 4194304 ] || sparse=yes
expect image-sparse "golden's segments: $seg_bytes bytes for 3 MiB of data (holes not stored)" \
    "golden's segments should hold about the 3 MiB that are not zero, not the 6 MiB image; they hold $seg_bytes bytes" \
    [ "$sparse" = yes ]
api PUT /api/exports/gfork '{"from":"golden@gold"}'
GDEV="$(jq -r '.device // empty' <<<"$API_BODY" 2>/dev/null)"
expect image-fork "fork gfork of golden@gold: 201 with a device" "PUT gfork from golden@gold: $API_STATUS $API_BODY" \
    [ "$API_STATUS/${GDEV:+dev}" = 201/dev ]
if [ -n "$GDEV" ] && wait_blockdev "$GDEV" 60; then
    got="$(dd if="$GDEV" bs=4096 count=$((IMG_SIZE / 4096)) iflag=direct status=none | sha256sum | cut -d' ' -f1)"
    expect image-fork-reads "gfork reads the image byte for byte (holes as zeros)" \
        "gfork's first $IMG_SIZE bytes should be the image padded with zeros: sha256 $got, want $IMG_SHA" [ "$got" = "$IMG_SHA" ]
fi
rc=0
out="$("$GLIDEFS_BIN" image import "$IMG" golden --api "$API" 2>&1)" || rc=$?
expect image-name-taken "a second import into golden is refused naming it" \
    "image import into the existing export golden should fail naming it; exit $rc: $out" \
    [ "$rc/$(grep -c 'export "golden" exists' <<<"$out")" = 1/1 ]
rc=0
out="$("$GLIDEFS_BIN" image import "$WORK_DIR/missing.img" nothing --api "$API" 2>&1)" || rc=$?
api GET /api/exports/nothing
expect image-missing-file "import of a missing file: exit 1 naming it, no export made" \
    "image import of a missing file should exit 1 naming it and create nothing; exit $rc: $out; GET nothing: $API_STATUS" \
    [ "$rc/$(grep -c 'missing.img' <<<"$out")/$API_STATUS" = 1/1/404 ]
api DELETE "/api/exports/gfork?purge=true"
api DELETE "/api/exports/golden?purge=true"
left="$(store_objects | grep -E '^(golden|gfork)/' | head -n 5 | tr '\n' ' ')" || true
expect image-purged "golden and gfork purged: nothing of them left in the store" \
    "after purging gfork and golden nothing of them should be left; left: $left" [ -z "$left" ]

stop_daemon
panics="$(grep -l 'panicked' "$RESULTS_DIR"/daemon.*.log 2>/dev/null | tr '\n' ' ')" || true
expect no-panic "no panic in the daemon logs" "the daemon logs should hold no panic; see $panics" [ -z "$panics" ]

checks_verdict
