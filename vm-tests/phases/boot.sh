#!/usr/bin/env bash
# phase: boot - the VM itself works: ublk_drv loads and /dev/ublk-control exists,
# prints the kernel and ublk facts, and measures the kernel's null_blk with fio
# (4k randread, QD32, 10 s) as the baseline the daemon's figures are compared with.
# ublks_max: 64
# deadline: 300
# needs:
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_cmd fio jq modprobe
log "kernel: $(uname -r) ($(uname -v))"
log "cpus: $(nproc), memory: $(awk '/^MemTotal:/ {print $2 " kB"}' /proc/meminfo)"
record_figure kernel "$(uname -r)"

require_ublk
[ -c /dev/ublk-control ] || fail "/dev/ublk-control is not a character device"
max="$(cat /sys/module/ublk_drv/parameters/ublks_max)"
record_figure ublks_max "$max"
if [ -n "${UBLKS_MAX:-}" ] && [ "$max" != "$UBLKS_MAX" ]; then
    fail "ublks_max is $max, the runner asked for $UBLKS_MAX"
fi
# The kernel's ublk feature bits (UBLK_U_CMD_GET_FEATURES) need an ioctl; rublk or
# the daemon print them. Here: what the module's build says.
if command -v modinfo >/dev/null; then
    log "ublk_drv: $(modinfo -F version ublk_drv 2>/dev/null || true) $(modinfo -F filename ublk_drv 2>/dev/null || echo built-in)"
fi
if command -v rublk >/dev/null; then
    log "rublk features: $(rublk features 2>&1 | tr '\n' ' ')"
fi

# null_blk baseline: the fastest a block device can be in this (virtual) machine.
if [ ! -b /dev/nullb0 ]; then
    modprobe null_blk nr_devices=1 || fail "modprobe null_blk failed"
fi
i=0
until [ -b /dev/nullb0 ]; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || fail "/dev/nullb0 did not appear"
    sleep 0.1
done
runtime="${BOOT_FIO_RUNTIME:-10}"
log "fio on null_blk: 4k randread QD32 ${runtime} s"
fio_run nullblk-randread-4k --filename=/dev/nullb0 --rw=randread --bs=4k --iodepth=32 \
    --time_based --runtime="$runtime" || fio_failed nullblk-randread-4k
iops="$(fio_iops nullblk-randread-4k read)"
[ "${iops:-0}" -gt 0 ] || fail "null_blk fio reported 0 IOPS"
record_figure nullblk_randread_4k_qd32_iops "$iops" IOPS
pass
