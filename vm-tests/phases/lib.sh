# shellcheck shell=bash
# Shared helpers for the VM test phases (vm-tests/phases/*.sh).
#
# A phase is a bash script that sources this file, runs as root on any Linux with the
# ublk driver (the Debian-kernel runner vm-tests/run, the NixOS tests, a bare-metal
# host) and assumes nothing about how it was started. Everything it needs comes from
# the environment, with defaults that work outside the runner:
#   GLIDEFS_BIN     the daemon binary (default: `glidefs` on PATH)
#   RESULTS_DIR     where the verdict and figures go (default: ./vm-results/PHASE)
#   WORK_DIR        scratch space on a real disk, not tmpfs (default: /var/lib/glidefs-test/PHASE)
#   GLIDEFS_TOOLS   shared tools (default: /opt/glidefs-tools)
#   GLIDEFS_S3S_FS  s3s-fs binary (default: $GLIDEFS_TOOLS/bin/s3s-fs, then PATH)
#   GLIDEFS_API_PORT, GLIDEFS_S3_PORT  loopback ports (default 18080, 19000)
#   GLIDEFS_REQUIRE_UBLK=1  a missing /dev/ublk-control fails instead of skipping
#
# Contract with whoever runs the phase:
#   $RESULTS_DIR/result   "pass", "fail" or "skip" (missing = the phase died: fail)
#   $RESULTS_DIR/reason   one line saying why, on fail/skip
#   $RESULTS_DIR/figures  "NAME VALUE [UNIT]" lines (record_figure)
#   $RESULTS_DIR/log      the phase's own output; daemon.N.log per daemon start
# The phase's exit code is 0 only on pass (or skip).
#
# Interface of the daemon these helpers expect:
#   glidefs run --config FILE   (TOML: [store] url/endpoint/region/path_style,
#     [cache] dir/dirty_limit, [api] listen, [ublk] ..., [limits] max_exports;
#     S3 credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
#   PUT /api/exports/NAME {"size":"1G"} -> {"name","size_bytes","device","state"}
#   GET /api/exports, GET|DELETE /api/exports/NAME, POST /api/exports/NAME/drain,
#   GET /health, GET /health/ready (200 once recovery is done), GET /metrics
#   GLIDEFS_BOUNCE_MODE=1 in the daemon's environment selects bounce mode.

set -euo pipefail

PHASE="${PHASE:-$(basename "${0%.sh}")}"
PHASES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PHASES_DIR
GLIDEFS_TOOLS="${GLIDEFS_TOOLS:-/opt/glidefs-tools}"
GLIDEFS_BIN="${GLIDEFS_BIN:-$(command -v glidefs || echo glidefs)}"
RESULTS_DIR="${RESULTS_DIR:-$PWD/vm-results/$PHASE}"
WORK_DIR="${WORK_DIR:-/var/lib/glidefs-test/$PHASE}"
if [ -z "${GLIDEFS_S3S_FS:-}" ]; then
    if [ -x "$GLIDEFS_TOOLS/bin/s3s-fs" ]; then
        GLIDEFS_S3S_FS="$GLIDEFS_TOOLS/bin/s3s-fs"
    else
        GLIDEFS_S3S_FS="$(command -v s3s-fs || echo s3s-fs)"
    fi
fi
API_PORT="${GLIDEFS_API_PORT:-18080}"
API="http://127.0.0.1:$API_PORT"
S3_PORT="${GLIDEFS_S3_PORT:-19000}"
S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
S3_BUCKET="${GLIDEFS_S3_BUCKET:-glidefs-test}"
export GLIDEFS_BIN RESULTS_DIR WORK_DIR GLIDEFS_TOOLS GLIDEFS_S3S_FS

mkdir -p "$RESULTS_DIR" "$WORK_DIR"
# PHASE_KEEP_RESULTS=1: a later boot of a multi-boot phase (powercut) keeps the
# figures of the earlier ones.
if [ "${PHASE_KEEP_RESULTS:-0}" != 1 ]; then
    rm -f "$RESULTS_DIR/result" "$RESULTS_DIR/reason" "$RESULTS_DIR/figures" "$RESULTS_DIR/checks"
fi
# Everything the phase prints also lands in $RESULTS_DIR/log.
exec > >(tee -a "$RESULTS_DIR/log") 2>&1

DAEMON_PID=""
DAEMON_N=0
DAEMON_LOG=""
DAEMON_CONFIG=""
S3_PID=""
BG_PIDS=()
PHASE_T0="$(date +%s%N)"

# ---------------------------------------------------------------- logging, verdict

log() { echo "[$PHASE $(date +%H:%M:%S)] $*"; }

# ---------------------------------------------------------------- checks
# Phases that go on after a failed assertion: every assertion is a line in
# $RESULTS_DIR/checks (PASS/FAIL id: what); checks_verdict fails the phase at the
# end naming every failed one, or passes it.
CHECKS_FILE="$RESULTS_DIR/checks"
CHECKS_FAILED=()
ok() { # ID MESSAGE
    echo "PASS $1: $2" >>"$CHECKS_FILE"
    log "check PASS $1: $2"
}
bad() { # ID MESSAGE (what was expected, what was seen)
    echo "FAIL $1: $2" >>"$CHECKS_FILE"
    CHECKS_FAILED+=("$1")
    log "check FAIL $1: $2"
}
# expect ID MESSAGE-IF-OK MESSAGE-IF-NOT CMD...
expect() {
    local id="$1" yes="$2" no="$3"
    shift 3
    if "$@"; then ok "$id" "$yes"; else bad "$id" "$no"; fi
}
checks_verdict() {
    local npass
    npass="$(grep -c '^PASS' "$CHECKS_FILE" 2>/dev/null || true)"
    record_figure checks_passed "$npass"
    record_figure checks_failed "${#CHECKS_FAILED[@]}"
    if [ "${#CHECKS_FAILED[@]}" -gt 0 ]; then
        log "failed checks:"
        grep '^FAIL' "$CHECKS_FILE" | sed 's/^/    /'
        fail "${#CHECKS_FAILED[@]} of $((npass + ${#CHECKS_FAILED[@]})) checks failed (RESULTS/checks): ${CHECKS_FAILED[*]}"
    fi
    pass
}

# Milliseconds since the epoch.
now_ms() { echo $(($(date +%s%N) / 1000000)); }

record_figure() { # NAME VALUE [UNIT]
    echo "$1 $2${3:+ $3}" >>"$RESULTS_DIR/figures"
    log "figure: $1 = $2${3:+ $3}"
}

# cpu_mark / cpu_stop: the machine's busy and total CPU ticks (/proc/stat; busy =
# user, nice, system, irq, softirq) and the daemon's (utime + stime) at the start and
# the end of a window, read with shell builtins only (no process, no subshell), so
# marking costs the window nothing. cpu_record NAME then records NAME_busy_pct (the
# share of all vCPUs busy in the window) and NAME_daemon_cpu_ms (10 ms resolution).
CPU_TICKS=() CPU_MARK=() CPU_STOP=()
_cpu_ticks() {
    local cpu user nice sys idle iowait irq softirq steal rest d=0 f
    read -r cpu user nice sys idle iowait irq softirq steal rest </proc/stat
    if [ -n "$DAEMON_PID" ] && [ -r "/proc/$DAEMON_PID/stat" ]; then
        read -r f <"/proc/$DAEMON_PID/stat"
        # shellcheck disable=SC2206 # the fields after "pid (comm) ", split on purpose
        f=(${f##*) })
        d=$((f[11] + f[12]))
    fi
    CPU_TICKS=("$((user + nice + sys + irq + softirq))"
        "$((user + nice + sys + idle + iowait + irq + softirq + steal))" "$d")
}
cpu_mark() { _cpu_ticks; CPU_MARK=("${CPU_TICKS[@]}"); }
cpu_stop() { _cpu_ticks; CPU_STOP=("${CPU_TICKS[@]}"); }
cpu_record() {
    local hz dt=$((CPU_STOP[1] - CPU_MARK[1]))
    hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
    [ "$dt" -gt 0 ] || return 0
    record_figure "${1}_busy_pct" "$((100 * (CPU_STOP[0] - CPU_MARK[0]) / dt))" "%"
    record_figure "${1}_daemon_cpu_ms" "$((1000 * (CPU_STOP[2] - CPU_MARK[2]) / hz))" ms
}

pass() {
    echo pass >"$RESULTS_DIR/result"
    log "PASS ($(( ($(date +%s%N) - PHASE_T0) / 1000000000 )) s)"
    exit 0
}

fail() { # MESSAGE...
    echo "$*" >"$RESULTS_DIR/reason"
    echo fail >"$RESULTS_DIR/result"
    log "FAIL: $*"
    if [ -n "$DAEMON_LOG" ] && [ -f "$DAEMON_LOG" ]; then
        log "last daemon log lines ($DAEMON_LOG):"
        tail -n 20 "$DAEMON_LOG" | sed 's/^/    /'
    fi
    exit 1
}

skip() { # MESSAGE...
    echo "$*" >"$RESULTS_DIR/reason"
    echo skip >"$RESULTS_DIR/result"
    log "SKIP: $*"
    exit 0
}

# Fails the phase unless the command succeeds: check "what" cmd args...
check() {
    local what="$1"
    shift
    "$@" || fail "$what (command: $*)"
}

_on_exit() {
    local rc=$?
    set +e
    local p
    for p in "${BG_PIDS[@]}"; do
        kill -9 "$p" 2>/dev/null
    done
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null
        _wait_gone "$DAEMON_PID" 20 || kill -9 "$DAEMON_PID" 2>/dev/null
    fi
    if [ -n "$S3_PID" ]; then
        kill -TERM "$S3_PID" 2>/dev/null
        _wait_gone "$S3_PID" 5 || kill -9 "$S3_PID" 2>/dev/null
    fi
    if [ ! -f "$RESULTS_DIR/result" ]; then
        echo "phase script exited with status $rc without a verdict" >"$RESULTS_DIR/reason"
        echo fail >"$RESULTS_DIR/result"
        log "FAIL: exited with status $rc without a verdict"
        rc=1
    fi
    exit "$rc"
}
trap _on_exit EXIT

_wait_gone() { # PID SECONDS: waits for a process to exit; 1 if still alive
    local pid="$1" i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- environment

# Makes sure the ublk driver is there: loads ublk_drv if needed (ublks_max from
# UBLKS_MAX when set), skips the phase without it unless GLIDEFS_REQUIRE_UBLK=1.
require_ublk() {
    if [ ! -e /dev/ublk-control ]; then
        modprobe ublk_drv ${UBLKS_MAX:+ublks_max=$UBLKS_MAX} 2>/dev/null || true
    fi
    if [ ! -e /dev/ublk-control ]; then
        if [ "${GLIDEFS_REQUIRE_UBLK:-0}" = 1 ]; then
            fail "/dev/ublk-control missing (ublk_drv not available) and GLIDEFS_REQUIRE_UBLK=1"
        fi
        skip "/dev/ublk-control missing (no ublk_drv); set GLIDEFS_REQUIRE_UBLK=1 to fail instead"
    fi
    local max
    max="$(cat /sys/module/ublk_drv/parameters/ublks_max 2>/dev/null || echo '?')"
    log "ublk_drv loaded, ublks_max=$max"
}

require_cmd() { # CMD...
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || fail "required command '$c' not found"
    done
}

require_daemon() {
    require_cmd curl jq fio
    [ -x "$GLIDEFS_BIN" ] || GLIDEFS_BIN="$(command -v "$GLIDEFS_BIN" || true)"
    if [ -z "$GLIDEFS_BIN" ] || [ ! -x "$GLIDEFS_BIN" ]; then
        fail "glidefs binary not found (set GLIDEFS_BIN)"
    fi
    log "daemon: $GLIDEFS_BIN ($("$GLIDEFS_BIN" --version 2>&1 | head -n1))"
}

# ---------------------------------------------------------------- config and daemon

# write_config FILE STORE_URL [EXTRA_TOML]
#   STORE_URL: file:///dir or s3://bucket/prefix (then the s3s-fs endpoint is used).
#   Cache dir: $CACHE_DIR (default $WORK_DIR/cache). EXTRA_TOML is appended verbatim
#   (for [ublk] / [limits] tables).
write_config() {
    local file="$1" url="$2" extra="${3:-}"
    CACHE_DIR="${CACHE_DIR:-$WORK_DIR/cache}"
    mkdir -p "$CACHE_DIR"
    {
        echo "[store]"
        echo "url = \"$url\""
        case "$url" in
            s3://*)
                echo "endpoint = \"$S3_ENDPOINT\""
                echo "region = \"us-east-1\""
                echo "path_style = true"
                echo "allow_racy_conditional = true # s3s-fs: single writer only"
                ;;
        esac
        echo
        echo "[cache]"
        echo "dir = \"$CACHE_DIR\""
        echo "dirty_limit = \"${GLIDEFS_DIRTY_LIMIT:-1G}\""
        [ -z "${GLIDEFS_FLUSH_INTERVAL:-}" ] || echo "flush_interval = \"$GLIDEFS_FLUSH_INTERVAL\""
        echo
        echo "[api]"
        echo "listen = \"127.0.0.1:$API_PORT\""
        if [ -n "$extra" ]; then
            echo
            printf '%s\n' "$extra"
        fi
    } >"$file"
    DAEMON_CONFIG="$file"
}

# start_daemon [CONFIG] [ENV=VALUE...]: starts `glidefs run` in the background (its
# own mount namespace, see UBLK-FACTS: libublk-rs #50), log in daemon.N.log.
start_daemon() {
    local cfg="${1:-$DAEMON_CONFIG}"
    shift || true
    [ -f "$cfg" ] || fail "start_daemon: no config file $cfg"
    DAEMON_N=$((DAEMON_N + 1))
    DAEMON_LOG="$RESULTS_DIR/daemon.$DAEMON_N.log"
    local -a ns=()
    if [ "${GLIDEFS_PHASE_UNSHARE:-1}" = 1 ] && command -v unshare >/dev/null; then
        ns=(unshare --mount --propagation private --)
    fi
    log "starting daemon #$DAEMON_N ($*${*:+ }$GLIDEFS_BIN run --config $cfg)"
    env RUST_LOG="${RUST_LOG:-info}" "$@" "${ns[@]}" "$GLIDEFS_BIN" run --config "$cfg" \
        >>"$DAEMON_LOG" 2>&1 &
    DAEMON_PID=$!
    DAEMON_START_MS="$(now_ms)"
}

# wait_ready [SECONDS]: polls /health/ready until 200; fails the phase when the
# daemon exits or the deadline passes. Sets READY_MS (ms since start_daemon).
wait_ready() {
    local deadline=$(($(date +%s) + ${1:-120}))
    while :; do
        if curl -fsS -o /dev/null --max-time 5 "$API/health/ready" 2>/dev/null; then
            READY_MS=$(($(now_ms) - DAEMON_START_MS))
            log "daemon ready after ${READY_MS} ms"
            return 0
        fi
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
            wait "$DAEMON_PID" 2>/dev/null && true
            fail "daemon exited (status $?) before /health/ready answered 200"
        fi
        [ "$(date +%s)" -lt "$deadline" ] || fail "daemon not ready within ${1:-120} s"
        sleep 0.2
    done
}

kill9_daemon() {
    [ -n "$DAEMON_PID" ] || fail "kill9_daemon: no daemon"
    log "kill -9 daemon (pid $DAEMON_PID)"
    kill -9 "$DAEMON_PID" 2>/dev/null || fail "daemon was not running when killed"
    if ! _wait_gone "$DAEMON_PID" 30; then
        dump_stuck "daemon still there 30 s after kill -9"
        fail "daemon did not die after kill -9"
    fi
    DAEMON_PID=""
}

# stop_daemon: SIGTERM, expects a clean exit 0 within 60 s.
stop_daemon() {
    [ -n "$DAEMON_PID" ] || return 0
    log "stopping daemon (SIGTERM, pid $DAEMON_PID)"
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    local rc end=$((SECONDS + 60))
    # $SECONDS, not a count of sleeps: under TCG a fork of `sleep` costs ~0.3 s.
    while [ "$SECONDS" -lt "$end" ]; do
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        dump_stuck "daemon still running 60 s after SIGTERM"
        kill -9 "$DAEMON_PID" 2>/dev/null
        fail "daemon did not exit within 60 s of SIGTERM"
    fi
    rc=0
    wait "$DAEMON_PID" || rc=$?
    DAEMON_PID=""
    [ "$rc" = 0 ] || fail "daemon exited with status $rc after SIGTERM"
}

daemon_rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$DAEMON_PID/status"; }
daemon_vmsize_kb() { awk '/^VmSize:/ {print $2}' "/proc/$DAEMON_PID/status"; }
daemon_threads() { awk '/^Threads:/ {print $2}' "/proc/$DAEMON_PID/status"; }

# wipe_cache: empties $CACHE_DIR (daemon stopped) except this host's identity
# (host-id): the volumes can then only come from the store, and this is still the
# host that holds their leases. A new host id is another host, which has to wait for
# the lease TTL (or a takeover) before it may open them.
wipe_cache() {
    log "wiping the cache dir $CACHE_DIR (keeping host-id)"
    [ -d "$CACHE_DIR" ] && find "$CACHE_DIR" -mindepth 1 -maxdepth 1 ! -name host-id -exec rm -rf {} +
    mkdir -p "$CACHE_DIR"
}

# ---------------------------------------------------------------- HTTP API

# api METHOD PATH [JSON_BODY]: sets API_STATUS (HTTP code, 000 if no answer) and
# API_BODY. Never fails by itself.
api() {
    local method="$1" path="$2" body="${3-}" out
    out="$(mktemp)"
    local -a data=()
    if [ "$#" -ge 3 ]; then
        data=(-H 'Content-Type: application/json' --data-binary "$body")
    fi
    API_STATUS="$(curl -sS --path-as-is -o "$out" -w '%{http_code}' --max-time "${API_TIMEOUT:-600}" \
        -X "$method" "${data[@]}" "$API$path" 2>/dev/null)" || API_STATUS="${API_STATUS:-000}"
    API_BODY="$(cat "$out")"
    rm -f "$out"
    # No answer at all: record where the daemon is stuck before anyone kills it.
    [ "$API_STATUS" != 000 ] || dump_stuck "no answer to $method $path"
}

# dump_stuck WHY: the kernel stack of every daemon thread, blocked tasks (sysrq w)
# and the tail of dmesg, into $RESULTS_DIR/stuck.N.txt (for hangs).
dump_stuck() {
    STUCK_N=$((${STUCK_N:-0} + 1))
    local out="$RESULTS_DIR/stuck.$STUCK_N.txt" t
    log "dumping daemon thread stacks to $out ($1)"
    {
        echo "== $1 ($(date +%T))"
        if [ -n "$DAEMON_PID" ] && [ -d "/proc/$DAEMON_PID" ]; then
            for t in /proc/"$DAEMON_PID"/task/*; do
                echo "-- thread ${t##*/} $(cat "$t/comm" 2>/dev/null) state $(awk '{print $3}' "$t/stat" 2>/dev/null) wchan $(cat "$t/wchan" 2>/dev/null)"
                cat "$t/stack" 2>/dev/null
            done
        fi
        if [ -n "$DAEMON_PID" ] && command -v gdb >/dev/null; then
            echo "== user-space stacks (gdb)"
            timeout 60 gdb -p "$DAEMON_PID" -batch -nx -ex "thread apply all bt" 2>&1 \
                | grep -v "^\[New LWP\|^warning:" | head -n 400
        fi
        echo w >/proc/sysrq-trigger 2>/dev/null || true
        sleep 1
        echo "== dmesg"
        dmesg | tail -n 200
    } >"$out" 2>&1
}

# api_ok METHOD PATH [BODY]: like api, fails the phase unless the status is 2xx.
api_ok() {
    api "$@"
    case "$API_STATUS" in
        2??) ;;
        *) fail "$1 $2 returned $API_STATUS: $API_BODY" ;;
    esac
}

# export_create NAME SIZE: PUT /api/exports/NAME, waits for the block device.
# Sets EXPORT_DEV (/dev/ublkbN).
export_create() {
    api_ok PUT "/api/exports/$1" "{\"size\":\"$2\"}"
    EXPORT_DEV="$(jq -r '.device // empty' <<<"$API_BODY")"
    [ -n "$EXPORT_DEV" ] || fail "PUT /api/exports/$1: no device in $API_BODY"
    [ "$(jq -r .name <<<"$API_BODY")" = "$1" ] || fail "PUT /api/exports/$1: wrong name in $API_BODY"
    wait_blockdev "$EXPORT_DEV" 60
}

export_delete() { api_ok DELETE "/api/exports/$1"; }
export_drain() { api_ok POST "/api/exports/$1/drain"; }

# export_device NAME: prints the device of an existing export.
export_device() {
    api_ok GET "/api/exports/$1"
    jq -r '.device' <<<"$API_BODY"
}

wait_blockdev() { # DEV SECONDS
    local i
    for ((i = 0; i < ${2:-30} * 10; i++)); do
        [ -b "$1" ] && return 0
        sleep 0.1
    done
    log "no $1: /dev has $(echo /dev/ublk*); /sys/block has $(echo /sys/block/ublk*)"
    grep ublk /proc/partitions | sed 's/^/    partitions: /' || true
    fail "block device $1 did not appear within ${2:-30} s"
}

# metric NAME: sums every sample of a metric from /metrics (0 if absent; prints
# "absent" when no line matches so callers can tell).
metric() {
    local text
    text="$(curl -fsS --max-time 30 "$API/metrics")" || fail "GET /metrics failed"
    awk -v m="$1" '
        $1 == m || index($1, m "{") == 1 { s += $NF; found = 1 }
        END { if (found) printf "%.0f\n", s; else print "absent" }' <<<"$text"
}

# ---------------------------------------------------------------- fio

FIO_ENGINE="${FIO_ENGINE:-io_uring}"

# fio_run NAME ARGS...: runs fio with JSON output in $RESULTS_DIR/fio-NAME.json and
# its text log in fio-NAME.log; returns fio's status (does not fail the phase).
fio_run() {
    local name="$1"
    shift
    # --allow_file_create=0: a vanished /dev/ublkbN must be an error, not a regular
    # file fio lays out in /dev (which then hides the next device node of that name).
    fio --name="$name" --ioengine="$FIO_ENGINE" --direct=1 --allow_file_create=0 \
        --output-format=json --output="$RESULTS_DIR/fio-$name.json" "$@" \
        >"$RESULTS_DIR/fio-$name.log" 2>&1
}

# fio_verify NAME DEV RW BS [ARGS...]: writes with crc32c verify headers, reads back
# and verifies (--verify_fatal=1); fails the phase on any error.
fio_verify() {
    local name="$1" dev="$2" rw="$3" bs="$4"
    shift 4
    log "fio $name: $rw bs=$bs on $dev (verify crc32c) $*"
    fio_run "$name" --filename="$dev" --rw="$rw" --bs="$bs" \
        --iodepth="${FIO_IODEPTH:-32}" --verify=crc32c --verify_fatal=1 --do_verify=1 \
        "$@" || fio_failed "$name"
    fio_summary "$name"
}

# fio_verify_only NAME DEV JOB_ARGS...: re-reads what a job with the same name and
# JOB_ARGS (--rw, --bs, --size, offsets, seed) wrote earlier and checks every crc32c
# header: a block never written (zeros), torn or from elsewhere fails.
fio_verify_only() {
    local name="$1" dev="$2"
    shift 2
    log "fio $name: verify_only on $dev $*"
    fio_run "$name" --filename="$dev" --verify=crc32c --verify_fatal=1 --verify_only \
        "$@" || fio_failed "$name"
}

fio_failed() {
    log "fio $1 failed; its log:"
    tail -n 30 "$RESULTS_DIR/fio-$1.log" | sed 's/^/    /'
    [ -s "$RESULTS_DIR/fio-$1.json" ] && jq -c '[.jobs[] | {jobname, error}]' \
        "$RESULTS_DIR/fio-$1.json" 2>/dev/null | sed 's/^/    /'
    fail "fio $1 reported an error"
}

# fio_iops NAME read|write: total IOPS of a finished fio_run.
fio_iops() {
    sed -n '/^{/,$p' "$RESULTS_DIR/fio-$1.json" \
        | jq -r "[.jobs[].$2.iops] | add | floor"
}

# fio_bw_mib NAME read|write: total bandwidth in MiB/s.
fio_bw_mib() {
    sed -n '/^{/,$p' "$RESULTS_DIR/fio-$1.json" \
        | jq -r "[.jobs[].$2.bw_bytes] | add / 1048576 | floor"
}

fio_summary() {
    log "fio $1: write $(fio_iops "$1" write) IOPS $(fio_bw_mib "$1" write) MiB/s," \
        "read $(fio_iops "$1" read) IOPS $(fio_bw_mib "$1" read) MiB/s"
}

# ---------------------------------------------------------------- S3 server

# s3_start: starts s3s-fs on 127.0.0.1:$S3_PORT serving $WORK_DIR/s3 (bucket
# $S3_BUCKET = a directory), exports AWS_* credentials for the daemon.
s3_start() {
    [ -x "$GLIDEFS_S3S_FS" ] || fail "s3s-fs not found at $GLIDEFS_S3S_FS (scripts/install-test-servers.sh installs it)"
    S3_ROOT="${S3_ROOT:-$WORK_DIR/s3}"
    mkdir -p "$S3_ROOT/$S3_BUCKET"
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-glidefstest}"
    export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-glidefstestsecret}"
    export AWS_REGION="${AWS_REGION:-us-east-1}"
    log "starting s3s-fs on $S3_ENDPOINT (root $S3_ROOT)"
    "$GLIDEFS_S3S_FS" --host 127.0.0.1 --port "$S3_PORT" \
        --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
        "$S3_ROOT" >>"$RESULTS_DIR/s3s-fs.log" 2>&1 &
    S3_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        # Any HTTP answer (even 403) means it listens.
        if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$S3_ENDPOINT/" 2>/dev/null)" != 000 ]; then
            return 0
        fi
        kill -0 "$S3_PID" 2>/dev/null || fail "s3s-fs exited at start (see s3s-fs.log)"
        sleep 0.1
    done
    fail "s3s-fs did not answer within 30 s"
}

s3_stop() {
    [ -n "$S3_PID" ] || return 0
    log "stopping s3s-fs"
    kill -TERM "$S3_PID" 2>/dev/null || true
    _wait_gone "$S3_PID" 10 || kill -9 "$S3_PID" 2>/dev/null || true
    S3_PID=""
}

s3_url() { echo "s3://$S3_BUCKET/${1:-$PHASE}"; }

# Number of objects the store holds under the bucket (s3s-fs keeps them as files).
s3_object_count() { find "$S3_ROOT/$S3_BUCKET" -type f | wc -l; }

# ---------------------------------------------------------------- misc

# bg CMD...: runs a command in the background, remembered for cleanup; sets BG_PID.
bg() {
    "$@" &
    BG_PID=$!
    BG_PIDS+=("$BG_PID")
}

# size_bytes 256M -> 268435456 (IEC suffixes, as fio and the API read them)
size_bytes() { numfmt --from=iec "${1%B}"; }

# rand_between LO HI
rand_between() { echo $(($1 + RANDOM % ($2 - $1 + 1))); }
