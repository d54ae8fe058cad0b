#!/usr/bin/env bash
# Install what the VM tests (vm-tests/run) need, idempotently:
#   - Debian packages: qemu-system-x86, kmod, fio, e2fsprogs, busybox, file, curl, jq,
#     python3-venv (each installed only when missing; apt-get update at most once);
#   - virtme-ng (PyPI) in a venv: $GLIDEFS_TOOLS/vng-venv/bin/vng (its programs call
#     each other by name, so callers put that bin/ first on PATH: GLIDEFS_VNG_CMD in
#     scripts/lib/tools.sh);
#   - Debian's own 6.12 kernel (newest linux-image-6.12.*+deb12-amd64 in the apt
#     sources), fetched with `apt-get download`, unpacked with `dpkg -x` into
#     $GLIDEFS_TOOLS/kernel/VERSION/{boot,lib/modules} and indexed with `depmod -b`.
#     vng hides /var/tmp, /var/cache and /var/log behind tmpfs in the guest, so the
#     kernel must live elsewhere (default GLIDEFS_TOOLS=/opt/glidefs-tools).
# GLIDEFS_VM_KERNEL=/path/to/vmlinuz-VERSION skips the kernel download (modules must be
# beside it as vng expects: ../lib/modules/VERSION relative to the image's boot/ dir).
# GLIDEFS_VM_KERNEL_REFRESH=1 looks in the apt sources for a newer 6.12 kernel even when
# one is already unpacked.
# Output: human-readable progress on stderr; on stdout, KEY=VALUE lines
# (GLIDEFS_TOOLS, GLIDEFS_VM_KERNEL, GLIDEFS_VM_KVER) for vm-tests/run.
set -euo pipefail
# shellcheck source=lib/tools.sh
source "$(dirname "$0")/lib/tools.sh"

TOOLS="$GLIDEFS_TOOLS"
VNG_VERSION="${GLIDEFS_VNG_VERSION:-1.42}"
KERNEL_ROOT="$TOOLS/kernel"
LOCK="$TOOLS/.kernel.lock"
# busybox: either busybox or busybox-static satisfies it (they conflict).
APT_PACKAGES=(qemu-system-x86 kmod fio e2fsprogs busybox-static file curl jq python3-venv
    util-linux procps)

log() { echo "setup-vm: $*" >&2; }
die() { echo "setup-vm: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, /opt)"
mkdir -p "$TOOLS" "$KERNEL_ROOT"

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >&2
        APT_UPDATED=1
    fi
}

install_apt_packages() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        if [ "$p" = busybox-static ] && command -v busybox >/dev/null; then
            continue
        fi
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" = 0 ]; then
        log "apt packages present: ${APT_PACKAGES[*]}"
        return
    fi
    apt_update_once
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
}

install_vng() {
    local venv="$GLIDEFS_VNG_VENV"
    if [ -x "$venv/bin/vng" ] && [ -x "$venv/bin/virtme-run" ] && "$venv/bin/vng" --version 2>/dev/null | grep -q "$VNG_VERSION"; then
        log "virtme-ng $VNG_VERSION present ($venv/bin/vng)"
        return
    fi
    log "installing virtme-ng $VNG_VERSION into $venv"
    # The system interpreter (python3-venv from apt), not whatever python3 is first on
    # PATH: the venv must keep working for later sessions.
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "virtme-ng==$VNG_VERSION" >&2
    "$venv/bin/vng" --version >&2
    [ -x "$venv/bin/virtme-run" ] || die "virtme-ng installed without $venv/bin/virtme-run"
}

# Prints the vmlinuz of an unpacked kernel under $KERNEL_ROOT (newest first), if any
# is complete (marker written after depmod succeeded).
find_unpacked_kernel() {
    local d
    for d in $(find "$KERNEL_ROOT" -mindepth 1 -maxdepth 1 -type d -name '6.12.*+deb12-amd64' | sort -rV); do
        local v; v="$(basename "$d")"
        if [ -f "$d/.complete" ] && [ -f "$d/boot/vmlinuz-$v" ] \
            && [ -f "$d/lib/modules/$v/modules.dep" ]; then
            echo "$d/boot/vmlinuz-$v"
            return 0
        fi
    done
    return 1
}

newest_apt_kernel() {
    local list
    list="$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' 2>/dev/null \
        | awk '{print $1}' | sed 's/^linux-image-//' | sort -V | tail -n1)"
    if [ -z "$list" ]; then
        apt_update_once
        list="$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' \
            | awk '{print $1}' | sed 's/^linux-image-//' | sort -V | tail -n1)"
    fi
    [ -n "$list" ] || die "no linux-image-6.12.*+deb12-amd64 package in the apt sources"
    echo "$list"
}

unpack_kernel() {
    local ver="$1" dest="$KERNEL_ROOT/$1" tmp
    tmp="$(mktemp -d "$KERNEL_ROOT/.download.XXXXXX")"
    chmod 0777 "$tmp" # apt-get download drops privileges to _apt when it can
    log "fetching linux-image-$ver (apt-get download) into $dest"
    (cd "$tmp" && apt-get download -qq "linux-image-$ver" >&2)
    rm -rf "$dest"
    mkdir -p "$dest"
    dpkg -x "$tmp"/linux-image-"$ver"_*.deb "$dest"
    rm -rf "$tmp"
    # Debian bookworm packages put modules under /lib; newer ones under /usr/lib.
    if [ ! -d "$dest/lib/modules/$ver" ] && [ -d "$dest/usr/lib/modules/$ver" ]; then
        mkdir -p "$dest/lib/modules"
        mv "$dest/usr/lib/modules/$ver" "$dest/lib/modules/$ver"
    fi
    [ -f "$dest/boot/vmlinuz-$ver" ] || die "package has no boot/vmlinuz-$ver"
    [ -f "$(find "$dest/lib/modules/$ver" -name 'ublk_drv.ko*' | head -n1)" ] \
        || die "kernel $ver has no ublk_drv module"
    depmod -b "$dest" "$ver"
    touch "$dest/.complete"
}

acquire_kernel_lock() {
    local waited=0
    until mkdir "$LOCK" 2>/dev/null; do
        if [ "$waited" = 0 ]; then
            log "waiting for $LOCK (another installer is fetching the kernel)"
        fi
        # A lock older than 30 minutes is left over from a killed installer.
        if [ -n "$(find "$LOCK" -maxdepth 0 -mmin +30 2>/dev/null)" ]; then
            log "removing stale $LOCK"
            rmdir "$LOCK" 2>/dev/null || true
            continue
        fi
        sleep 5
        waited=$((waited + 5))
        [ "$waited" -lt 1800 ] || die "gave up waiting for $LOCK"
    done
    trap 'rmdir "$LOCK" 2>/dev/null || true' EXIT
}

install_kernel() {
    if [ -n "${GLIDEFS_VM_KERNEL:-}" ]; then
        [ -f "$GLIDEFS_VM_KERNEL" ] || die "GLIDEFS_VM_KERNEL=$GLIDEFS_VM_KERNEL does not exist"
        log "kernel from GLIDEFS_VM_KERNEL: $GLIDEFS_VM_KERNEL"
        KERNEL="$GLIDEFS_VM_KERNEL"
        return
    fi
    if [ "${GLIDEFS_VM_KERNEL_REFRESH:-0}" != 1 ] && KERNEL="$(find_unpacked_kernel)"; then
        log "kernel present: $KERNEL"
        return
    fi
    acquire_kernel_lock
    local ver
    ver="$(newest_apt_kernel)"
    if [ -f "$KERNEL_ROOT/$ver/.complete" ]; then
        log "kernel $ver already unpacked"
    else
        unpack_kernel "$ver"
    fi
    rmdir "$LOCK" 2>/dev/null || true
    trap - EXIT
    KERNEL="$KERNEL_ROOT/$ver/boot/vmlinuz-$ver"
    log "kernel ready: $KERNEL"
}

install_apt_packages
install_vng
install_kernel

KVER="$(basename "$KERNEL" | sed 's/^vmlinuz-//')"
echo "GLIDEFS_TOOLS=$TOOLS"
echo "GLIDEFS_VM_KERNEL=$KERNEL"
echo "GLIDEFS_VM_KVER=$KVER"
