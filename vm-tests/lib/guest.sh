#!/usr/bin/env bash
# Runs inside the VM that vm-tests/run boots (vng --exec), as root, on the host's own
# root filesystem (read-only 9p with tmpfs overlays). $1 is the env file the runner
# wrote into the phase's results folder (a --rwdir, so it is the same path here).
# Prepares the guest (ublk_drv with the phase's ublks_max, the scratch disk mounted
# on WORK_DIR), runs the phase under its deadline and leaves guest.log, exit_code,
# dmesg.txt (and the phase's own result/figures/log) in the results folder.
set -u
# shellcheck disable=SC1090
source "$1"
exec >>"$RESULTS_DIR/guest.log" 2>&1
GUEST_T0_MS=$(($(date +%s%N) / 1000000))
echo "guest: script started, uptime $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)"
echo "$(cut -d' ' -f1 /proc/uptime) $GUEST_T0_MS" >"$RESULTS_DIR/guest_start"

note_fail() {
    echo "$*" >"$RESULTS_DIR/reason"
    echo fail >"$RESULTS_DIR/result"
    echo "guest: FAIL: $*"
}

# env.sh set the runner's PATH (system, cargo's and the project's tool directories).
export PATH="$PATH:$GLIDEFS_TOOLS/bin"
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 || true

if ! modprobe ublk_drv "ublks_max=$UBLKS_MAX"; then
    note_fail "modprobe ublk_drv ublks_max=$UBLKS_MAX failed"
fi

# Scratch disk: the runner attaches one ext4 image as the only virtio-blk disk.
if [ -n "${SCRATCH_IMAGE:-}" ]; then
    modprobe virtio_blk 2>/dev/null || true
    dev=""
    for _ in $(seq 100); do
        dev="$(find /dev -maxdepth 1 -name 'vd?' -type b | sort | head -n1)"
        [ -n "$dev" ] && break
        sleep 0.1
    done
    mkdir -p "$WORK_DIR"
    if [ -z "$dev" ] || ! mount -o noatime "$dev" "$WORK_DIR"; then
        note_fail "could not mount the scratch disk (${dev:-none}) on $WORK_DIR"
    else
        echo "guest: scratch disk $dev mounted on $WORK_DIR ($(df -h --output=size "$WORK_DIR" | tail -n1 | tr -d ' '))"
    fi
fi

# GLIDEFS_VM_MONITOR=SECONDS: every so often, dump processes, blocked tasks' kernel
# stacks and new kernel messages to monitor.log (for phases that hang).
if [ -n "${GLIDEFS_VM_MONITOR:-}" ]; then
    (
        while sleep "$GLIDEFS_VM_MONITOR"; do
            echo "==== $(date +%T) uptime $(cut -d' ' -f1 /proc/uptime)"
            # shellcheck disable=SC2009 # all processes, kernel threads filtered out
            ps -eo pid,ppid,stat,wchan:32,etime,args | grep -v ' \[' | cut -c1-200
            for s in /proc/[0-9]*/stat; do
                pid="${s#/proc/}"; pid="${pid%/stat}"
                if [ "$(awk '{print $3}' "$s" 2>/dev/null)" = D ]; then
                    echo "-- D state: $pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-100)"
                    cat "/proc/$pid/stack" 2>/dev/null
                fi
            done
            dmesg | tail -n 20
        done
    ) >>"$RESULTS_DIR/monitor.log" 2>&1 &
fi

rc=125
if [ ! -f "$RESULTS_DIR/result" ]; then
    echo "guest: running $PHASE_SCRIPT (deadline ${PHASE_DEADLINE} s, ublks_max $UBLKS_MAX)"
    cd "$WORK_DIR" || true
    # stdin from /dev/null: timeout runs the phase outside the console's foreground
    # process group, where reading the terminal would stop it (SIGTTIN).
    timeout --kill-after=30 "$PHASE_DEADLINE" bash "$PHASE_SCRIPT" </dev/null
    rc=$?
    echo "guest: phase exited with status $rc"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        note_fail "deadline of ${PHASE_DEADLINE} s exceeded (timeout status $rc)"
    fi
fi
echo "$rc" >"$RESULTS_DIR/exit_code"
dmesg >"$RESULTS_DIR/dmesg.txt" 2>&1 || true
echo "guest: done after $(( $(date +%s%N) / 1000000 - GUEST_T0_MS )) ms"
