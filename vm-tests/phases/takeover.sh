#!/usr/bin/env bash
# phase: takeover - a volume changes hands (issue 14): two daemons in one guest, A
# and B (own cache dirs, API ports and hostnames), one moto server on 127.0.0.1.
# A reaches the store through vm-tests/lib/stall-proxy.py (forward / stall / drop),
# B directly. cache.lease_ttl is short (TAKEOVER_TTL, 12s).
#  Round "partition" (vm-1): A serves ext4 with a file tree, freezes it, drains and
#   records the device's and the tree's hashes; B's PUT of vm-1 is refused (409,
#   lease fresh). A writes more files; the proxy stalls at A's first segment PUT
#   after the drain (that PUT is in flight). After the TTL, B's PUT (a cold wake,
#   no force flag) succeeds and B sees exactly the drained image (device hash,
#   e2fsck -f -n, file hashes). A must have self-fenced: no fsync acknowledged
#   after stall+TTL, fsync fails with EIO, GET /api/exports/vm-1 state
#   `lease_expired`, glidefs_exports_by_state{state="lease_expired"} 1. The proxy forwards
#   again: A's held requests land late; A's state becomes `fenced` (metric too).
#   B deletes vm-1 (no purge) and wakes it again: still exactly the drained image,
#   e2fsck clean (the late PUT was ignored). A's DELETE ?purge=true is refused
#   with 409 naming B (hostname or host id), B's objects untouched; A's plain
#   DELETE sets its dirty data aside: GET /api/diverged lists vm-1 with a path in
#   A's cache dir, dirty_bytes > 0, holding what A acknowledged after the drain;
#   `glidefs diverged list` shows it.
#  Round "kill" (vm-2): the same up to the drain; the proxy drops A's store
#   connections (so what A writes next is certainly dirty), A writes, the writer
#   stops (TAKEOVER_KILL_WRITER), kill -9 A, A's mount is detached lazily.
#   B is refused before the TTL, takes over after it and sees exactly the drained
#   image. A restarted: ready, B's devices untouched, vm-2 is `failed` (lease held
#   by B) and its dead device deleted, so nothing stays blocked on it (the lazy
#   umount's teardown ends), its dirty data still in A's cache dir; A's plain DELETE
#   sets it aside (GET /api/diverged).
# Every assertion is recorded in RESULTS_DIR/checks (PASS/FAIL id: expected, seen)
# and the phase goes on after a failed one; it fails at the end naming them all.
# Setup errors (daemon, moto, proxy, mkfs, mount) fail at once.
# ublks_max: 8
# deadline: 2400
# needs: glidefs moto
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SIZE="${TAKEOVER_SIZE:-64M}"
TTL="${TAKEOVER_TTL:-12s}"
ROUNDS="${TAKEOVER_ROUNDS:-partition kill}"
# Round kill: "stopped" ends the writer (and its last dd) before A is killed, so
# nothing but the mount holds A's filesystem and its teardown's I/O waits on the
# dead device; "running" kills A wherever the writer is (it may be in a dd).
KILL_WRITER="${TAKEOVER_KILL_WRITER:-stopped}"
case "$KILL_WRITER" in stopped | running) ;; *) fail "TAKEOVER_KILL_WRITER must be stopped or running, not '$KILL_WRITER'" ;; esac
TREE_FILES="${TAKEOVER_TREE_FILES:-24}"
# The API of the features issue 14 adds (docs/operations.md once they land).
DIVERGED_PATH="${TAKEOVER_DIVERGED_PATH:-/api/diverged}"
# A request to a daemon stuck somewhere is a finding, not a 10-minute wait (drains
# and deletes set their own).
API_TIMEOUT=120
TTL_S="${TTL%s}"
[[ "$TTL_S" =~ ^[0-9]+$ ]] || fail "TAKEOVER_TTL must be whole seconds like 12s, got $TTL"

MOTO_PORT="${GLIDEFS_S3_PORT:-19000}"
PROXY_PORT=$((MOTO_PORT + 1))
PROXY_CTL_PORT=$((MOTO_PORT + 2))
MOTO_URL="http://127.0.0.1:$MOTO_PORT"
STORE_PREFIX=takeover
LIB_DIR="$(cd "$PHASES_DIR/../lib" && pwd)"

declare -A D_PID D_LOG D_API D_CFG D_CACHE D_HOST D_MNT
for n in A B; do
    D_CACHE[$n]="$WORK_DIR/cache-${n,,}"
    D_HOST[$n]="takeover-${n,,}"
    D_MNT[$n]="$WORK_DIR/mnt-${n,,}"
    D_CFG[$n]="$WORK_DIR/${n,,}.toml"
done
D_API[A]="http://127.0.0.1:$API_PORT"
D_API[B]="http://127.0.0.1:$((API_PORT + 1))"

# ---------------------------------------------------------------- processes

MOTO_PID=""
PROXY_PID=""
_takeover_exit_rc() { return "$1"; }
_takeover_exit() {
    local rc=$? n
    set +e
    for n in A B; do
        if [ -n "${D_PID[$n]:-}" ] && kill -0 "${D_PID[$n]}" 2>/dev/null; then
            kill -TERM "${D_PID[$n]}" 2>/dev/null
            _wait_gone "${D_PID[$n]}" 20 || kill -9 "${D_PID[$n]}" 2>/dev/null
        fi
    done
    DAEMON_PID=""
    for n in A B; do
        fsfreeze -u "${D_MNT[$n]}" 2>/dev/null
        detach "${D_MNT[$n]}"
    done
    [ -z "$PROXY_PID" ] || kill -9 "$PROXY_PID" 2>/dev/null
    [ -z "$MOTO_PID" ] || kill -9 "$MOTO_PID" 2>/dev/null
    _takeover_exit_rc "$rc"
    _on_exit
}
trap _takeover_exit EXIT

# use NODE: the lib.sh helpers (api, api_ok, metric, wait_ready, dump_stuck) talk to
# daemon NODE (A or B) from now on.
use() {
    API="${D_API[$1]}"
    DAEMON_PID="${D_PID[$1]:-}"
    DAEMON_LOG="${D_LOG[$1]:-}"
}

# start_node NODE [CHECK-ID]: `glidefs run` in its own mount and UTS namespace
# (hostname takeover-a / takeover-b: the lease names the holder's hostname), log
# daemon.N.log. Without CHECK-ID a daemon not ready within 180 s fails the phase;
# with it, that is a failed check (thread stacks in stuck.N.txt) and the phase goes on.
start_node() {
    local n="$1" id="${2:-}"
    DAEMON_N=$((DAEMON_N + 1))
    D_LOG[$n]="$RESULTS_DIR/daemon.$DAEMON_N.log"
    log "starting daemon $n #$DAEMON_N (hostname ${D_HOST[$n]}, config ${D_CFG[$n]})"
    env RUST_LOG="${RUST_LOG:-info}" \
        unshare --uts --mount --propagation private -- \
        /bin/sh -c 'hostname "$1" && shift && exec "$@"' sh "${D_HOST[$n]}" \
        "$GLIDEFS_BIN" run --config "${D_CFG[$n]}" >>"${D_LOG[$n]}" 2>&1 &
    D_PID[$n]=$!
    DAEMON_START_MS="$(now_ms)"
    use "$n"
    [ -n "$id" ] || { wait_ready 180; return 0; }
    local end=$((SECONDS + 180))
    until curl -fsS -o /dev/null --max-time 5 "$API/health/ready" 2>/dev/null; do
        if ! kill -0 "${D_PID[$n]}" 2>/dev/null; then
            bad "$id" "daemon $n should restart and become ready; it exited (${D_LOG[$n]})"
            D_PID[$n]=""
            return 1
        fi
        if [ "$SECONDS" -ge "$end" ]; then
            dump_stuck "daemon $n not ready 180 s after its start"
            bad "$id" "daemon $n should become ready (GET /health/ready 200) within 180 s of its restart; still $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$API/health/ready") (stacks: stuck.$STUCK_N.txt)"
            return 1
        fi
        sleep 0.5
    done
    ok "$id" "daemon $n ready $(($(now_ms) - DAEMON_START_MS)) ms after its restart"
}

kill9_node() {
    local n="$1"
    log "kill -9 daemon $n (pid ${D_PID[$n]})"
    kill -9 "${D_PID[$n]}" || fail "daemon $n was not running when killed"
    _wait_gone "${D_PID[$n]}" 30 || fail "daemon $n did not die after kill -9"
    D_PID[$n]=""
}

# stop_node NODE: SIGTERM; a daemon that does not exit 0 within 60 s is a failed check.
stop_node() {
    local n="$1" rc=0 pid="${D_PID[$1]:-}"
    [ -n "$pid" ] || return 0
    log "stopping daemon $n (SIGTERM, pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local end=$((SECONDS + 60))
    while [ "$SECONDS" -lt "$end" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        use "$n"
        dump_stuck "daemon $n still running 60 s after SIGTERM"
        kill -9 "$pid" 2>/dev/null
        _wait_gone "$pid" 30 || true
        bad "stop-$n" "daemon $n should exit within 60 s of SIGTERM; it did not (killed)"
    else
        wait "$pid" || rc=$?
        expect "stop-$n" "daemon $n exited 0 on SIGTERM" "daemon $n should exit 0 on SIGTERM; exit status $rc" [ "$rc" = 0 ]
    fi
    D_PID[$n]=""
}

write_node_config() { # NODE ENDPOINT
    mkdir -p "${D_CACHE[$1]}"
    cat >"${D_CFG[$1]}" <<EOF
[store]
url = "s3://$S3_BUCKET/$STORE_PREFIX"
endpoint = "$2"
region = "us-east-1"
path_style = true
# store.timeout stays at its default (30 s): the conditional-write probe (16
# concurrent PUTs to the serialized moto) takes longer than 10 s under TCG.

[cache]
dir = "${D_CACHE[$1]}"
dirty_limit = "256M"
lease_ttl = "$TTL"
# Renewals ride on the flusher's cycle: well inside TTL/3.
flush_interval = "2s"

[api]
listen = "${D_API[$1]#http://}"
EOF
}

moto_start() {
    local venv_py
    venv_py="$(dirname "$(readlink -f "${GLIDEFS_MOTO_SERVER:-$GLIDEFS_TOOLS/bin/moto_server}")")/python"
    [ -x "$venv_py" ] || fail "moto's Python not found at $venv_py (scripts/install-test-servers.sh moto)"
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-glidefstest}"
    export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-glidefstestsecret}"
    export AWS_REGION="${AWS_REGION:-us-east-1}"
    log "starting moto on $MOTO_URL (requests serialized: atomic conditional writes)"
    "$venv_py" "$LIB_DIR/moto-serialized.py" "$MOTO_PORT" >>"$RESULTS_DIR/moto.log" 2>&1 &
    MOTO_PID=$!
    local end=$((SECONDS + 120))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$MOTO_URL/" 2>/dev/null)" != 000 ]; do
        kill -0 "$MOTO_PID" 2>/dev/null || fail "moto exited at start (see moto.log)"
        [ "$SECONDS" -lt "$end" ] || fail "moto did not answer within 120 s"
        sleep 0.5
    done
    [ "$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$MOTO_URL/$S3_BUCKET")" = 200 ] \
        || fail "moto: creating bucket $S3_BUCKET failed"
}

proxy_start() {
    log "starting the store proxy for A: 127.0.0.1:$PROXY_PORT -> $MOTO_PORT (control $PROXY_CTL_PORT)"
    python3 "$LIB_DIR/stall-proxy.py" --listen "$PROXY_PORT" --upstream "$MOTO_PORT" \
        --control "$PROXY_CTL_PORT" --log "$RESULTS_DIR/proxy.log" >>"$RESULTS_DIR/proxy.log" 2>&1 &
    PROXY_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        [ "$(proxy_ctl status 2>/dev/null | jq -r .mode 2>/dev/null)" = forward ] && return 0
        kill -0 "$PROXY_PID" 2>/dev/null || fail "the store proxy exited at start (proxy.log)"
        sleep 0.3
    done
    fail "the store proxy did not answer on its control port"
}

# proxy_ctl COMMAND...: one line to the proxy's control port; prints the answer.
proxy_ctl() {
    local fd reply=""
    exec {fd}<>"/dev/tcp/127.0.0.1/$PROXY_CTL_PORT" || return 1
    printf '%s\n' "$*" >&"$fd"
    IFS= read -r -t 20 reply <&"$fd" || true
    exec {fd}>&-
    printf '%s\n' "$reply"
}
proxy_mode() { # forward|stall|drop
    [ "$(proxy_ctl mode "$1")" = "ok $1" ] || fail "store proxy: switching to $1 failed"
    log "store proxy: $1"
}

# ---------------------------------------------------------------- store view (moto)

# s3_get URL-PATH: a signed GET to moto (objects the daemon wrote are private).
s3_get() {
    curl -fsS --max-time 30 --aws-sigv4 "aws:amz:us-east-1:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$MOTO_URL/$1"
}
# store_lease NAME: the lease object's JSON ({} when absent).
store_lease() {
    s3_get "$S3_BUCKET/$STORE_PREFIX/volumes/$1/lease" 2>/dev/null || echo '{}'
}
# store_keys NAME: the volume's object keys, sorted (the clock probe left out).
store_keys() {
    { s3_get "$S3_BUCKET?list-type=2&max-keys=1000&prefix=$STORE_PREFIX/volumes/$1/" \
        | grep -o '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g' | grep -v '/clock$' | sort; } || true
}

# ---------------------------------------------------------------- data

# hash_dev DEV: sha256 of the whole device, read with O_DIRECT.
hash_dev() { dd if="$1" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1; }
# hash_tree DIR: "sha256  ./path" of every file under DIR, sorted.
hash_tree() { (cd "$1" && find . -path ./lost+found -prune -o -type f -print0 | sort -z | xargs -0 -r sha256sum); }

# make_tree DIR: TREE_FILES files of 4-400 KiB in a few directories.
make_tree() {
    local i d
    for ((i = 0; i < TREE_FILES; i++)); do
        d="$1/tree/d$((i % 4))"
        mkdir -p "$d"
        head -c "$(((4 + RANDOM % 397) * 1024))" /dev/urandom >"$d/f$i"
    done
}

# writer DIR TAG LOG: writes 64 KiB files full of a marker ("glidefs-TAG-N-") with
# O_SYNC-like dd conv=fsync until killed; one line per file in LOG:
# "N START_MS END_MS RC ERROR".
writer() {
    local dir="$1" tag="$2" out="$3" i=0 t0 t1 rc err
    set +e +o pipefail
    mkdir -p "$dir"
    while :; do
        i=$((i + 1))
        t0="$(now_ms)"
        err="$(yes "glidefs-$tag-$i-" | head -c 65536 \
            | dd of="$dir/w$i" bs=64k iflag=fullblock conv=fsync status=none 2>&1)"
        rc=$?
        t1="$(now_ms)"
        echo "$i $t0 $t1 $rc ${err//$'\n'/ }" >>"$out"
        sleep 0.3
    done
}

# fs_setup NODE NAME: export NAME on NODE, ext4, mounted on D_MNT[NODE], a tree
# written and synced. Sets DEV.
fs_setup() {
    local n="$1" name="$2"
    use "$n"
    export_create "$name" "$SIZE"
    DEV="$EXPORT_DEV"
    log "$n: $name on $DEV"
    check "mkfs.ext4 on $DEV" mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$DEV"
    mkdir -p "${D_MNT[$n]}"
    check "mount $DEV" mount -o noatime "$DEV" "${D_MNT[$n]}"
    make_tree "${D_MNT[$n]}"
    sync
}

# drain_frozen NODE NAME DEV: freezes the filesystem (ext4 writes back everything and
# marks its journal clean), drains, records DRAINED_DEV_HASH and DRAINED_TREE (file).
# The filesystem stays frozen: the caller thaws it.
drain_frozen() {
    local n="$1" name="$2" dev="$3"
    check "fsfreeze -f ${D_MNT[$n]}" fsfreeze -f "${D_MNT[$n]}"
    use "$n"
    API_TIMEOUT=300 export_drain "$name"
    DRAINED_DEV_HASH="$(hash_dev "$dev")"
    DRAINED_TREE="$RESULTS_DIR/$name.drained.sha256"
    hash_tree "${D_MNT[$n]}" >"$DRAINED_TREE"
    log "$n: $name drained: device sha256 $DRAINED_DEV_HASH, $(wc -l <"$DRAINED_TREE") files"
}

# put_export NODE NAME: PUT /api/exports/NAME {"size": SIZE} on NODE (API_STATUS,
# API_BODY).
put_export() {
    use "$1"
    API_TIMEOUT=300 api PUT "/api/exports/$2" "{\"size\":\"$SIZE\"}"
}

# bounded SECONDS CMD...: runs CMD in the background and waits for it at most
# SECONDS (a write to a device that blocks must not hang the phase). Sets BOUNDED_RC
# (124 when still running, left behind) and BOUNDED_OUT (its output).
bounded() {
    local secs="$1" out pid end
    shift
    out="$(mktemp)"
    "$@" >"$out" 2>&1 &
    pid=$!
    end=$((SECONDS + secs))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$end" ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        BOUNDED_RC=124
        BG_PIDS+=("$pid")
    else
        BOUNDED_RC=0
        wait "$pid" || BOUNDED_RC=$?
    fi
    BOUNDED_OUT="$(tr '\n' ' ' <"$out")"
    rm -f "$out"
}

# takeover_b NAME SINCE_MS ROUND: waits until SINCE_MS + TTL, then PUTs NAME on B
# every 2 s until it is created (cold wake); checks it came within TTL + 120 s (an
# open costs ~40 s under TCG: the conditional-write probe against moto).
# Sets DEV_B.
takeover_b() {
    local name="$1" since="$2" r="$3" wait_ms status deadline
    wait_ms=$((since + TTL_S * 1000 - $(now_ms)))
    [ "$wait_ms" -le 0 ] || sleep "$((wait_ms / 1000)).$(printf '%03d' $((wait_ms % 1000)))"
    deadline=$((since + (TTL_S + 120) * 1000))
    while :; do
        put_export B "$name"
        status="$API_STATUS"
        case "$status" in 2??) break ;; esac
        if [ "$(now_ms)" -gt "$deadline" ]; then
            bad "$r.b-takes-over" "B's PUT $name should succeed once A's lease is older than the TTL ($TTL, no force flag); still $status $API_BODY $(( ($(now_ms) - since) / 1000 )) s after A lost the store"
            return 1
        fi
        log "B: PUT $name -> $status (waiting for A's lease to go stale)"
        sleep 2
    done
    local took=$(($(now_ms) - since))
    record_figure "${r}_takeover_after_ms" "$took" ms
    ok "$r.b-takes-over" "B's PUT $name returned $status $(jq -c '{state,device}' <<<"$API_BODY") ${took} ms after A lost the store (TTL $TTL)"
    DEV_B="$(jq -r '.device // empty' <<<"$API_BODY")"
    [ -n "$DEV_B" ] || fail "B's PUT $name: no device in $API_BODY"
    wait_blockdev "$DEV_B" 60
    return 0
}

# check_b_sees_drained ROUND NAME LABEL: B's device equals the drained image (hash),
# e2fsck -f -n is clean, and the mounted tree has exactly the drained files.
check_b_sees_drained() {
    local r="$1" name="$2" label="$3" h out rc=0
    h="$(hash_dev "$DEV_B")" || h="(read error)"
    expect "$r.$label-image" "B's $name equals the drained image (sha256 $h)" \
        "B's $name should equal the drained image (sha256 $DRAINED_DEV_HASH); B reads sha256 $h" \
        [ "$h" = "$DRAINED_DEV_HASH" ]
    out="$(e2fsck -f -n "$DEV_B" 2>&1)" || rc=$?
    echo "$out" >"$RESULTS_DIR/$name.$label.e2fsck.txt"
    expect "$r.$label-e2fsck" "e2fsck -f -n on B's $name is clean" \
        "e2fsck -f -n on B's $name should be clean; exit status $rc: $(tail -n 4 <<<"$out" | tr '\n' ' ')" \
        [ "$rc" = 0 ]
    mkdir -p "${D_MNT[B]}"
    if ! mount -o ro,noload "$DEV_B" "${D_MNT[B]}" 2>"$RESULTS_DIR/mount-b.err"; then
        bad "$r.$label-tree" "B's $name should mount read-only; mount failed: $(cat "$RESULTS_DIR/mount-b.err")"
        return
    fi
    hash_tree "${D_MNT[B]}" >"$RESULTS_DIR/$name.$label.sha256"
    umount "${D_MNT[B]}" || fail "umount of B's $name failed"
    if cmp -s "$DRAINED_TREE" "$RESULTS_DIR/$name.$label.sha256"; then
        ok "$r.$label-tree" "B's $name holds exactly the drained tree ($(wc -l <"$DRAINED_TREE") files, hashes equal)"
    else
        bad "$r.$label-tree" "B's $name should hold exactly the drained tree; differences (< drained, > B): $(diff "$DRAINED_TREE" "$RESULTS_DIR/$name.$label.sha256" | grep '^[<>]' | head -n 5 | tr '\n' ' ')"
    fi
}

# get_state NODE NAME: STATE = the export's state ("absent" on 404), API_BODY its JSON.
get_state() {
    use "$1"
    api GET "/api/exports/$2"
    case "$API_STATUS" in
        200) STATE="$(jq -r '.state // "none"' <<<"$API_BODY")" ;;
        404) STATE=absent ;;
        *) STATE="http-$API_STATUS" ;;
    esac
}

# wait_state ID NODE NAME STATE SECONDS: checks that the export reaches STATE.
wait_state() {
    local id="$1" n="$2" name="$3" want="$4" end=$((SECONDS + $5))
    while :; do
        get_state "$n" "$name"
        [ "$STATE" != "$want" ] || break
        if [ "$SECONDS" -ge "$end" ]; then
            bad "$id" "$n's GET /api/exports/$name should show state \"$want\" within $5 s; it shows \"$STATE\": $API_BODY"
            return 1
        fi
        sleep 1
    done
    ok "$id" "$n's GET /api/exports/$name shows state \"$want\""
}

# check_state_metric ID NODE STATE: glidefs_exports_by_state{state="STATE"} is 1 on NODE.
check_state_metric() {
    local id="$1" n="$2" want="$3" text line
    use "$n"
    text="$(curl -fsS --max-time 30 "$API/metrics")" || { bad "$id" "GET /metrics on $n failed"; return; }
    line="$(grep -E "^glidefs_exports_by_state\{([^}]*,)?state=\"$want\"(,[^}]*)?\} " <<<"$text" | head -n1)" || true
    expect "$id" "$n's /metrics has $line" \
        "$n's /metrics should have glidefs_exports_by_state{state=\"$want\"} 1; its glidefs_exports_by_state lines: $(grep '^glidefs_exports_by_state' <<<"$text" | tr '\n' ' ')" \
        [ "${line##* }" = 1 ]
}

# check_diverged ID NAME MARKER: A's GET $DIVERGED_PATH lists NAME with a path in A's
# cache dir and dirty_bytes > 0, and the data A acknowledged after the drain (MARKER)
# is in that path; `glidefs diverged list` names it.
check_diverged() {
    local id="$1" name="$2" marker="$3" entry path dirty out
    use A
    api GET "$DIVERGED_PATH"
    echo "$API_BODY" >"$RESULTS_DIR/diverged.$name.json"
    if [ "$API_STATUS" != 200 ]; then
        bad "$id-listed" "A's GET $DIVERGED_PATH should list $name; it returned $API_STATUS $API_BODY"
    else
        entry="$(jq -c --arg n "$name" '(if type == "array" then . else (.diverged // []) end)
            | map(select((.name // .export) == $n)) | last // empty' <<<"$API_BODY" 2>/dev/null)" || entry=""
        path="$(jq -r '.path // empty' <<<"${entry:-null}" 2>/dev/null)" || path=""
        dirty="$(jq -r '.dirty_bytes // 0' <<<"${entry:-null}" 2>/dev/null)" || dirty=0
        if [ -n "$entry" ] && [[ "$path" == "${D_CACHE[A]}"/* ]] && [ "${dirty:-0}" -gt 0 ] 2>/dev/null; then
            ok "$id-listed" "A's $DIVERGED_PATH lists $entry"
        else
            bad "$id-listed" "A's $DIVERGED_PATH should list {name: $name, path under ${D_CACHE[A]}/, dirty_bytes > 0}; it returned $API_BODY"
        fi
        if [ -n "$path" ] && [ -e "$path" ] && grep -rqaF "$marker" "$path" 2>/dev/null; then
            ok "$id-data" "the set-aside path $path holds the data A acknowledged after the drain ($marker)"
        else
            bad "$id-data" "the set-aside path (${path:-none}) should hold the data A acknowledged after the drain (marker $marker); $( [ -e "${path:-/nonexistent}" ] && echo "marker not found in it" || echo "path absent"); $name's data in A's cache dir: $(grep -rlaF "$marker" "${D_CACHE[A]}" 2>/dev/null | head -n 3 | tr '\n' ' ')"
        fi
    fi
    out="$(timeout 60 "$GLIDEFS_BIN" diverged list --api "${D_API[A]}" 2>&1)" || true
    echo "$out" >"$RESULTS_DIR/cli-diverged.$name.txt"
    expect "$id-cli" "glidefs diverged list names $name" \
        "glidefs diverged list --api ${D_API[A]} should name $name; it printed: $(head -n 3 <<<"$out" | tr '\n' ' ')" \
        grep -qw -- "$name" <<<"$out"
}

# last_acked WRITER_LOG: "N END_MS" of the last file whose write+fsync succeeded.
last_acked() { awk '$4 == 0 { n = $1; t = $3 } END { if (n) print n, t }' "$1"; }

# detach MOUNT: lazy umount, in the background. When nothing else holds the mount,
# umount(2) itself drops the last reference and writes the superblock; on a device
# with no server (QUIESCED after kill -9) that write waits until the device is
# recovered or deleted. Seen: the phase hung until its deadline in a foreground
# `umount -l` when A was killed while the writer was between files.
# DETACH_PID: the umount's pid.
detach() {
    umount -l "$1" </dev/null >/dev/null 2>&1 &
    DETACH_PID=$!
}

# writer_dds: "PID COMMAND" of every writer dd still writing into A's mount.
writer_dds() { pgrep -af "of=${D_MNT[A]}/after/" || true; }

stop_writer() { # PID
    kill -9 "$1" 2>/dev/null || true
    # A writer stuck in the kernel (a quiesced device) dies when its I/O ends.
    _wait_gone "$1" 10 || log "note: writer $1 still in the kernel"
}

# ---------------------------------------------------------------- set-up

require_ublk
require_daemon
require_cmd mkfs.ext4 e2fsck fsfreeze unshare python3 sha256sum
moto_start
proxy_start
write_node_config A "http://127.0.0.1:$PROXY_PORT"
write_node_config B "$MOTO_URL"
start_node A
start_node B

# ---------------------------------------------------------------- round 1: partition

round_partition() {
    local r=r1 name=vm-1 wlog="$RESULTS_DIR/writer-r1.log" wpid t_stall st status trig
    log "==== round 1 (partition): $name"
    fs_setup A "$name"
    local dev_a="$DEV"
    drain_frozen A "$name" "$dev_a"
    local lease_a
    lease_a="$(store_lease "$name")"
    log "lease of $name after A's drain: $lease_a"

    put_export B "$name"
    status="$API_STATUS"
    expect "$r.b-refused-before-ttl" "B's PUT $name while A holds a fresh lease: 409 ($API_BODY)" \
        "B's PUT $name while A holds a fresh lease should be 409; it returned $status $API_BODY" \
        [ "$status" = 409 ]

    # The partition begins with A's first segment PUT after the drain in flight.
    [ "$(proxy_ctl arm '^PUT [^ ]*/volumes/'"$name"'/seg/')" = "ok arm" ] || fail "store proxy: arm failed"
    check "fsfreeze -u" fsfreeze -u "${D_MNT[A]}"
    bg writer "${D_MNT[A]}/after" r1 "$wlog"
    wpid="$BG_PID"
    local end=$((SECONDS + 90))
    until [ "$(proxy_ctl status | jq -r .mode)" = stall ]; do
        [ "$SECONDS" -lt "$end" ] || fail "A sent no segment PUT within 90 s of writing after the drain (proxy.log)"
        sleep 0.5
    done
    trig="$(proxy_ctl status)"
    t_stall="$(jq -r .trigger_ms <<<"$trig")"
    log "A partitioned from the store at its segment PUT: $(jq -r .trigger <<<"$trig")"

    takeover_b "$name" "$t_stall" "$r" || true
    [ -n "${DEV_B:-}" ] && check_b_sees_drained "$r" "$name" takeover
    local lease_b
    lease_b="$(store_lease "$name")"
    log "lease of $name after B's takeover: $lease_b"

    # A must have stopped acknowledging: nothing after stall + TTL, an EIO seen.
    wait_state "$r.a-lease-expired" A "$name" lease_expired 30 || true
    check_state_metric "$r.a-metric-lease-expired" A lease_expired
    bounded 60 dd if=/dev/zero of="${D_MNT[A]}/probe" bs=4k count=4 conv=fsync status=none
    if [ "$BOUNDED_RC" = 124 ]; then
        bad "$r.a-probe-fails" "a write+fsync on A's mount after the takeover should fail (EIO); it hung for 60 s"
    else
        expect "$r.a-probe-fails" "a write+fsync on A's mount after the takeover failed: $BOUNDED_OUT" \
            "a write+fsync on A's mount after the takeover should fail (EIO); it succeeded" [ "$BOUNDED_RC" != 0 ]
    fi
    stop_writer "$wpid"
    cp "$wlog" "$RESULTS_DIR/writer-r1.final.log" 2>/dev/null || true
    local fence_ms=$((t_stall + TTL_S * 1000)) late_acks eio acked
    late_acks="$(awk -v t="$fence_ms" '$4 == 0 && $3 > t' "$wlog" | wc -l)"
    acked="$(awk '$4 == 0' "$wlog" | wc -l)"
    record_figure r1_writes_acked "$acked"
    expect "$r.a-no-ack-after-ttl" "A acknowledged no fsync later than the TTL after the partition ($acked acknowledged before)" \
        "A should acknowledge no write+fsync later than $TTL after losing the store; it acknowledged $late_acks (the last $(( ($(awk '$4 == 0 {t = $3} END {printf "%.0f", t}' "$wlog") - t_stall) / 1000 )) s after)" \
        [ "$late_acks" = 0 ]
    eio="$(awk '$4 != 0' "$wlog" | grep -c 'Input/output error' || true)"
    expect "$r.a-eio" "A's writes failed with EIO ($eio times; first: $(awk '$4 != 0' "$wlog" | head -n1))" \
        "A's writes/fsyncs should fail with EIO once self-fenced; failures seen: $(awk '$4 != 0' "$wlog" | wc -l) ($(awk '$4 != 0' "$wlog" | head -n1))" \
        [ "$eio" -gt 0 ]
    local marker
    read -r marker _ < <(last_acked "$wlog") || true
    marker="glidefs-r1-${marker:-1}-"

    # The partition ends: A's held requests land late.
    proxy_mode forward
    # Wait for the held segment PUT itself to be delivered: a held request whose
    # client has gone no longer counts in held_conns, so held_conns == 0 alone
    # ended the wait before its delivery (seen: delivered 0.2 s after the snapshot).
    local late_seg=""
    end=$((SECONDS + 120))
    while [ "$SECONDS" -lt "$end" ]; do
        st="$(proxy_ctl status)"
        late_seg="$(jq -r '[.late[] | select(.request | test("^PUT .*/seg/")) | "\(.request) -> \(.status)"] | join("; ")' <<<"$st")"
        [ -n "$late_seg" ] && [ "$(jq -r .held_conns <<<"$st")" = 0 ] && break
        sleep 1
    done
    echo "$st" | jq . >"$RESULTS_DIR/proxy-r1.json"
    [ -n "$late_seg" ] || fail "round 1 did not exercise a late PUT: no held segment PUT was delivered after the partition (proxy-r1.json)"
    log "late segment PUTs delivered: $late_seg"
    record_figure r1_late_requests "$(jq '.late | length' <<<"$st")"
    wait_state "$r.a-fenced" A "$name" fenced 90 || true
    check_state_metric "$r.a-metric-fenced" A fenced

    # B wakes vm-1 again from the store: A's late PUT must not show.
    use B
    API_TIMEOUT=600 api DELETE "/api/exports/$name"
    expect "$r.b-delete" "B's DELETE $name (no purge) returned $API_STATUS" \
        "B's DELETE $name (drain, keep the store) should succeed; it returned $API_STATUS $API_BODY" \
        [ "${API_STATUS:0:1}" = 2 ]
    DEV_B=""
    put_export B "$name"
    status="$API_STATUS"
    case "$status" in
        2??)
            DEV_B="$(jq -r .device <<<"$API_BODY")"
            wait_blockdev "$DEV_B" 60
            check_b_sees_drained "$r" "$name" rewake
            ;;
        *) bad "$r.rewake" "B's second cold wake of $name should succeed; PUT returned $status $API_BODY" ;;
    esac

    # A's purge must be refused, naming B; B's objects stay.
    bounded 60 umount "${D_MNT[A]}"
    [ "$BOUNDED_RC" = 0 ] || { log "umount of A's $name: status $BOUNDED_RC $BOUNDED_OUT; detaching it lazily"; detach "${D_MNT[A]}"; }
    local keys_before keys_after owner_b
    keys_before="$(store_keys "$name")"
    owner_b="$(jq -r '.owner // empty' <<<"$lease_b")"
    use A
    API_TIMEOUT=120 api DELETE "/api/exports/$name?purge=true"
    if [ "$API_STATUS" = 409 ] && { grep -qF -- "${D_HOST[B]}" <<<"$API_BODY" \
        || { [ -n "$owner_b" ] && grep -qF -- "$owner_b" <<<"$API_BODY"; }; }; then
        ok "$r.a-purge-refused" "A's DELETE $name?purge=true: 409 $API_BODY"
    else
        bad "$r.a-purge-refused" "A's DELETE $name?purge=true should be 409 naming the holder (${D_HOST[B]} or host id ${owner_b:-?}); it returned $API_STATUS $API_BODY"
    fi
    keys_after="$(store_keys "$name")"
    expect "$r.b-objects-intact" "$name's objects in the store unchanged by A's purge ($(wc -l <<<"$keys_after") keys)" \
        "A's purge should leave $name's objects alone; before $(wc -l <<<"$keys_before") keys, after $(grep -c . <<<"$keys_after"); gone: $(comm -23 <(echo "$keys_before") <(echo "$keys_after") | head -n 3 | tr '\n' ' ')" \
        [ "$keys_before" = "$keys_after" ]
    local lease_now
    lease_now="$(store_lease "$name")"
    expect "$r.b-lease-intact" "B still holds $name's lease ($lease_now)" \
        "B should still hold $name's lease ($lease_b); the store has $lease_now" \
        [ "${owner_b:-none}" = "$(jq -r .owner <<<"$lease_now")" ]
    get_state B "$name"
    expect "$r.b-still-live" "B's $name is still live" "B's $name should stay live after A's purge attempt; state $STATE: $API_BODY" [ "$STATE" = live ]

    # A's plain delete sets its dirty data aside.
    use A
    API_TIMEOUT=120 api DELETE "/api/exports/$name"
    expect "$r.a-delete" "A's DELETE $name (no purge) of its fenced export: $API_STATUS" \
        "A's DELETE $name (no purge) of its fenced export should succeed (setting its dirty data aside); it returned $API_STATUS $API_BODY" \
        [ "${API_STATUS:0:1}" = 2 ]
    check_diverged "$r.a-diverged" "$name" "$marker"
}

# ---------------------------------------------------------------- round 2: kill -9

round_kill() {
    local r=r2 name=vm-2 wlog="$RESULTS_DIR/writer-r2.log" wpid t_kill status st
    log "==== round 2 (kill -9): $name"
    fs_setup A "$name"
    local dev_a="$DEV"
    drain_frozen A "$name" "$dev_a"
    put_export B "$name"
    status="$API_STATUS"
    expect "$r.b-refused-before-ttl" "B's PUT $name while A holds a fresh lease: 409 ($API_BODY)" \
        "B's PUT $name while A holds a fresh lease should be 409; it returned $status $API_BODY" \
        [ "$status" = 409 ]
    # What A writes from now on must be dirty (not in the store) when it dies.
    proxy_mode drop
    check "fsfreeze -u" fsfreeze -u "${D_MNT[A]}"
    bg writer "${D_MNT[A]}/after" r2 "$wlog"
    wpid="$BG_PID"
    local end=$((SECONDS + 30))
    while [ "$(awk '$4 == 0' "$wlog" 2>/dev/null | wc -l)" -lt 2 ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.3; done
    [ "$(awk '$4 == 0' "$wlog" 2>/dev/null | wc -l)" -ge 1 ] || fail "A acknowledged no write after the drain within 30 s"
    if [ "$KILL_WRITER" = stopped ]; then
        stop_writer "$wpid"
        end=$((SECONDS + 30))
        while [ -n "$(writer_dds)" ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.2; done
    fi
    kill9_node A
    t_kill="$(now_ms)"
    local marker
    read -r marker _ < <(last_acked "$wlog") || true
    marker="glidefs-r2-${marker:-1}-"
    record_figure r2_writes_acked "$(awk '$4 == 0' "$wlog" | wc -l)"
    # A's filesystem sits on a quiesced device now; detach it, let the writer go.
    detach "${D_MNT[A]}"
    local umount_pid="$DETACH_PID"
    stop_writer "$wpid"
    proxy_mode forward

    DEV_B=""
    takeover_b "$name" "$t_kill" "$r" || true
    [ -n "${DEV_B:-}" ] && check_b_sees_drained "$r" "$name" takeover
    local lease_b
    lease_b="$(store_lease "$name")"
    log "lease of $name after B's takeover: $lease_b"

    start_node A "$r.a-restart-ready" || true
    # Restarted A deletes its dead device (B holds the lease), which ends the I/O
    # queued on it: the detached mount's teardown and the writer's last dd finish.
    local stuck end=$((SECONDS + 60))
    while :; do
        stuck=""
        kill -0 "$umount_pid" 2>/dev/null && stuck="umount -l (pid $umount_pid) "
        stuck+="$(writer_dds | tr '\n' ' ')"
        [ -n "${stuck// /}" ] && [ "$SECONDS" -lt "$end" ] || break
        sleep 0.5
    done
    expect "$r.a-dead-device-released" "nothing waits on A's dead $name device 60 s after A's restart (lazy umount and writer ended)" \
        "processes should not stay blocked on A's dead $name device once restarted A has deleted it; still there 60 s after the restart: $stuck" \
        [ -z "${stuck// /}" ]
    # A's restart must not touch B's devices (another daemon's, not orphans).
    bounded 120 hash_dev "$DEV_B"
    expect "$r.b-survives-a-restart" "B's $name device $DEV_B still reads the drained image after A's restart" \
        "B's $name device $DEV_B should still read the drained image after A's restart (A's recovery must leave another daemon's devices alone); read status $BOUNDED_RC, sha256 ${BOUNDED_OUT:-none}, device $( [ -b "$DEV_B" ] && echo present || echo gone)" \
        [ "$BOUNDED_RC:${BOUNDED_OUT// /}" = "0:$DRAINED_DEV_HASH" ]
    get_state A "$name"
    expect "$r.a-failed" "restarted A shows $name failed: $(jq -c '{state,error}' <<<"$API_BODY")" \
        "restarted A should show $name as \"failed\" (lease held by B); it shows $STATE: $API_BODY" \
        [ "$STATE" = failed ]
    if grep -rqaF "$marker" "${D_CACHE[A]}" 2>/dev/null; then
        ok "$r.a-dirty-kept" "A's dirty data (marker $marker) is still in its cache dir after the restart"
    else
        bad "$r.a-dirty-kept" "A's dirty data written after the drain (marker $marker) should still be in ${D_CACHE[A]} after the restart; not found"
    fi
    use A
    API_TIMEOUT=120 api DELETE "/api/exports/$name"
    expect "$r.a-delete" "A's DELETE $name (no purge) of its failed export: $API_STATUS" \
        "A's DELETE $name (no purge) should succeed (setting its dirty data aside); it returned $API_STATUS $API_BODY" \
        [ "${API_STATUS:0:1}" = 2 ]
    check_diverged "$r.a-diverged" "$name" "$marker"
    get_state B "$name"
    expect "$r.b-still-live" "B's $name is still live" "B's $name should stay live; state $STATE: $API_BODY" [ "$STATE" = live ]
}

for round in $ROUNDS; do
    case "$round" in
        partition) round_partition ;;
        kill) round_kill ;;
        *) fail "unknown TAKEOVER_ROUNDS entry '$round' (partition, kill)" ;;
    esac
done

stop_node A
stop_node B
checks_verdict
