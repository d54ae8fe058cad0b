# shellcheck shell=bash
# Boots a QEMU/TCG VM (virtme-ng on the host's root filesystem, read-only except the
# folders handed over with --rwdir) and runs scripts/bench inside it.
#
# The guest sees the repository read-only, so the results folder and a log folder are
# passed with --rwdir; the guest's /tmp is an overlay held in guest memory, which is
# where the devices' backing files and glidefs' cache live. vng's exit code is not
# reliable, so the guest writes "$LOGDIR/status" (the bench exit code) and the host
# reads that.

vm_kernel() {
    if [ -n "${GLIDEFS_VM_KERNEL:-}" ]; then
        echo "$GLIDEFS_VM_KERNEL"
        return
    fi
    ls -d "${GLIDEFS_TOOLS:-/opt/glidefs-tools}"/kernel/*/boot/vmlinuz-* 2>/dev/null | sort -V | tail -1
}

# vm_run REPO OUT ARGS...: runs "scripts/bench ARGS --in-vm --out OUT" in a VM.
vm_run() {
    local repo="$1" out="$2"
    shift 2
    local kernel logdir
    kernel=$(vm_kernel)
    [ -n "$kernel" ] && [ -f "$kernel" ] \
        || die "no VM kernel under ${GLIDEFS_TOOLS:-/opt/glidefs-tools}/kernel (vm-tests/run installs it) and GLIDEFS_VM_KERNEL unset"
    [ -x "${GLIDEFS_VNG_CMD[-1]}" ] || die "virtme-ng not found at ${GLIDEFS_VNG_CMD[-1]} (scripts/setup-vm.sh installs it)"
    mkdir -p "$out"
    logdir=$(mktemp -d /tmp/glidefs-bench-vm.XXXXXX)
    # Everything the guest needs is in one script, visible to the guest through the
    # read-only host root.
    {
        echo "#!/bin/bash"
        echo "exec >$logdir/guest.log 2>&1"
        echo "cd '$repo' || exit 1"
        local v
        for v in $(compgen -e | grep -E '^(BENCH_|GLIDEFS_|RUBLK_|RUST_LOG$|CARGO_TARGET_DIR$)'); do
            printf 'export %s=%q\n' "$v" "${!v}"
        done
        printf 'export BENCH_COMMAND=%q\n' "${BENCH_COMMAND:-scripts/bench}"
        printf 'export BENCH_LOG_DIR=%q\n' "$logdir/logs"
        printf 'export PATH=%q\n' "$PATH"
        # The scratch disk (ext4 image, the only virtio disk) holds WORK_DIR, as in
        # vm-tests/run, so file-backed targets measure a real block device.
        # (vng attaches it as virtio-scsi: found by its label, not by name).
        echo 'modprobe -a virtio_scsi sd_mod virtio_blk 2>/dev/null'
        echo 'for i in $(seq 100); do dev=$(blkid -L bench-work 2>/dev/null) && break; sleep 0.1; done'
        echo 'mkdir -p /run/bench-work && mount -o noatime "$dev" /run/bench-work && export WORK_DIR=/run/bench-work'
        echo 'echo "scratch disk ${dev:-none} on ${WORK_DIR:-nothing}"'
        printf 'scripts/bench --in-vm --out %q' "$out"
        printf ' %q' "$@"
        echo
        echo "echo \$? >$logdir/status"
    } >"$logdir/guest.sh"
    chmod +x "$logdir/guest.sh"
    rm -f "$logdir/scratch.img"
    truncate -s "${BENCH_VM_DISK:-16G}" "$logdir/scratch.img"
    mkfs.ext4 -q -F -L bench-work -i 262144 -E lazy_itable_init=0,lazy_journal_init=0 "$logdir/scratch.img" \
        || die "mkfs.ext4 of the scratch image failed"
    log "booting VM: $kernel, ${BENCH_VM_CPUS:-2} vCPUs, ${BENCH_VM_MEMORY:-4G}; guest log $logdir/guest.log"
    timeout "${BENCH_VM_TIMEOUT:-5400}" "${GLIDEFS_VNG_CMD[@]}" --run "$kernel" --disable-kvm \
        --cpus "${BENCH_VM_CPUS:-2}" --memory "${BENCH_VM_MEMORY:-4G}" \
        --rwdir "$out" --rwdir "$logdir" --disk "$logdir/scratch.img" --exec "$logdir/guest.sh" \
        </dev/null >"$logdir/vng.log" 2>&1 || true
    cat "$logdir/guest.log" >&2 2>/dev/null || true
    local status
    status=$(cat "$logdir/status" 2>/dev/null || echo "none")
    rm -f "$logdir/scratch.img"
    case "$status" in
        0) rm -rf "$logdir" ;;
        3) log "some targets could not be measured (see the trace)"; return 3 ;;
        *)
            log "VM run failed (guest status: $status); vng log: $logdir/vng.log"
            tail -20 "$logdir/vng.log" >&2
            return 1
            ;;
    esac
}

# runner_run REPO OUT MODE: runs the bench phases with the project's VM runner
# (vm-tests/run) and copies their traces to OUT. The runner passes BENCH_* to the
# `bench` phase and DENSITY_SWEEP_* to `density-sweep`.
runner_run() {
    local repo="$1" out="$2" mode="$3" phases=() vmout rc=0
    case "$mode" in
        iops) phases=(bench) ;;
        density) phases=(density-sweep) ;;
        store) phases=(bench-store) ;;
        all) phases=(bench density-sweep) ;;
    esac
    vmout=$(mktemp -d /tmp/glidefs-bench-runner.XXXXXX)
    export DENSITY_SWEEP_N="$BENCH_DENSITY_N" DENSITY_SWEEP_SIZE="$BENCH_DENSITY_SIZE"
    export DENSITY_SWEEP_COMMAND="$BENCH_COMMAND" DENSITY_SWEEP_IDLE_S="$BENCH_DENSITY_IDLE_S"
    export GLIDEFS_VM_CPUS="${BENCH_VM_CPUS:-${GLIDEFS_VM_CPUS:-2}}"
    export GLIDEFS_VM_MEMORY="${BENCH_VM_MEMORY:-${GLIDEFS_VM_MEMORY:-4G}}"
    log "vm-tests/run ${phases[*]} (results in $vmout)"
    GLIDEFS_VM_OUT="$vmout" "$repo/vm-tests/run" "${phases[@]}" || rc=$?
    mkdir -p "$out"
    local f
    for f in "$vmout/bench/iops.txt" "$vmout/density-sweep/density-sweep.txt" \
        "$vmout/bench-store/store-traffic.txt"; do
        if [ -f "$f" ]; then
            cp "$f" "$out/"
            log "copied $(basename "$f") to $out"
        fi
    done
    [ "$rc" = 0 ] && rm -rf "$vmout"
    return "$rc"
}
