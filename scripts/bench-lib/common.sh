# shellcheck shell=bash
# Shared helpers for scripts/bench: logging, environment facts for the traces, kernel
# module setup, waiting for block devices, and one fio run -> one result row.
#
# Invariants:
#   - every fio run appends exactly one row to $RAW (tab separated:
#     target workload iops p50_us p99_us bw_mib status), so report.py never has to
#     guess which runs happened; a failed run is recorded with status "fail".
#   - nothing here writes outside $WORK and $OUT.

BENCH_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The system interpreter, not a version-manager shim: under TCG a shim (a shell
# script that execs another program) costs tens of seconds per call.
PY=/usr/bin/python3
[ -x "$PY" ] || PY="$(command -v python3)"

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# Facts that go at the top of every trace file.
env_facts() {
    local mem
    mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
    echo "# kernel: $(uname -r)"
    echo "# vcpus: $(nproc)"
    # Under TCG a guest whose watchdog marked the TSC unstable reads the emulated HPET
    # for every clock read (vm-tests/run boots guests with tsc=reliable against that).
    echo "# clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown)" \
        "$(grep -o 'tsc=[a-z]*' /proc/cmdline 2>/dev/null || true)"
    # Expedited RCU grace periods speed up the kernel's teardown of a killed daemon's
    # devices (docs/operations.md, "Recovering many devices faster").
    echo "# rcu_expedited: $(cat /sys/kernel/rcu_expedited 2>/dev/null || echo unknown)"
    echo "# memory: $mem"
    echo "# cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "# machine: $(cat /sys/devices/virtual/dmi/id/sys_vendor 2>/dev/null || echo unknown)" \
        "$(cat /sys/devices/virtual/dmi/id/product_name 2>/dev/null)"
    echo "# fio: $(fio --version 2>/dev/null)"
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# git: ${BENCH_GIT_REV:-$(git -C "$BENCH_LIB/../.." describe --always --dirty 2>/dev/null || echo unknown)}"
}

# Loads a module with the given parameters, unloading it first if already loaded
# (parameters only apply at load time).
reload_module() {
    local mod="$1"
    shift
    if [ -d "/sys/module/$mod" ]; then
        rmmod "$mod" 2>/dev/null || log "cannot unload $mod (in use?); keeping it"
    fi
    [ -d "/sys/module/$mod" ] || modprobe "$mod" "$@"
}

# ublk_drv may have been loaded by the VM runner; only load it if missing. ublks_max
# is writable at runtime since 6.7, so raise it in place when needed.
ensure_ublk() {
    local want="${1:-64}"
    [ -e /dev/ublk-control ] || modprobe ublk_drv "ublks_max=$want" || return 1
    local cur
    cur=$(cat /sys/module/ublk_drv/parameters/ublks_max 2>/dev/null || echo 0)
    if [ "$cur" -lt "$want" ]; then
        echo "$want" >/sys/module/ublk_drv/parameters/ublks_max \
            || log "cannot raise ublks_max from $cur to $want"
    fi
    [ -e /dev/ublk-control ]
}

# wait_block DEV [SECONDS]: waits until DEV is a block device that answers a read.
wait_block() {
    local dev="$1" secs="${2:-30}" i=0
    while [ $i -lt $((secs * 10)) ]; do
        if [ -b "$dev" ] && dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null; then
            return 0
        fi
        sleep 0.1
        i=$((i + 1))
    done
    log "device $dev did not come up in ${secs}s"
    return 1
}

# Workload table: name -> "rw bs iodepth". 8-device variants reuse the base name.
workload_args() {
    case "$1" in
        rr4k-qd1) echo "randread 4k 1" ;;
        rr4k-qd32) echo "randread 4k 32" ;;
        rw4k-qd32) echo "randwrite 4k 32" ;;
        sr128k-qd8) echo "read 128k 8" ;;
        sw128k-qd8) echo "write 128k 8" ;;
        # A FLUSH-heavy writer (a database's commit): fsync after every write.
        fsw4k-qd1) echo "randwrite 4k 1 --fsync=1" ;;
        *) return 1 ;;
    esac
}

# run_fio TARGET WORKLOAD DEV...: one fio run (one job per device, aggregated);
# appends the row to $RAW. Several devices make the workload name "<w>-<n>dev".
run_fio() {
    local target="$1" wl="$2"
    shift 2
    local devs=("$@") rw bs qd extra name json
    read -r rw bs qd extra < <(workload_args "$wl") || die "unknown workload $wl"
    name="$wl"
    [ "${#devs[@]}" -gt 1 ] && name="$wl-${#devs[@]}dev"
    json="$WORK/fio/$target.$name.json"
    mkdir -p "$WORK/fio"
    local args=(--output-format=json --output="$json" --ioengine=io_uring --direct=1
        --rw="$rw" --bs="$bs" --iodepth="$qd" --size="$BENCH_WS"
        --time_based --runtime="$BENCH_RUNTIME" --ramp_time="$BENCH_RAMP"
        --group_reporting --randrepeat=0 --norandommap)
    # shellcheck disable=SC2206 # extra options are words on purpose
    [ -n "$extra" ] && args+=($extra)
    local i=0
    for d in "${devs[@]}"; do
        args+=(--name="j$i" --filename="$d")
        i=$((i + 1))
    done
    log "fio $target $name (${devs[*]})"
    local row
    if timeout $((BENCH_RUNTIME + BENCH_RAMP + 60)) fio "${args[@]}" >"$WORK/fio/$target.$name.log" 2>&1 \
        && row=$("$PY" "$BENCH_LIB/fio_json.py" "$json"); then
        printf '%s\t%s\t%s\tok\n' "$target" "$name" "$row" >>"$RAW"
        log "  -> $row"
    else
        printf '%s\t%s\t0\t0\t0\t0\tfail\n' "$target" "$name" >>"$RAW"
        log "  -> FAILED (see $WORK/fio/$target.$name.log)"
        tail -5 "$WORK/fio/$target.$name.log" >&2 || true
    fi
}

# prefill DEV...: writes the working set once and reads it back (warm-up), so reads
# measure cache hits and brd/loop have their pages allocated.
prefill() {
    local args=(--ioengine=io_uring --direct=1 --bs=128k --iodepth=8 --size="$BENCH_WS"
        --group_reporting --output=/dev/null)
    local i=0 d
    for d in "$@"; do
        args+=(--name="p$i" --filename="$d")
        i=$((i + 1))
    done
    fio --rw=write "${args[@]}" >/dev/null 2>&1 || log "prefill write failed on $*"
    fio --rw=read "${args[@]}" >/dev/null 2>&1 || log "warm-up read failed on $*"
}
