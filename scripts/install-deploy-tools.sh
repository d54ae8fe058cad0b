#!/usr/bin/env bash
# Installs what the deployment checks need (issue 18), idempotently:
#   - Debian packages: mmdebstrap (appliance root file system), syslinux +
#     syslinux-common + mtools + dosfstools (its BIOS boot loader on a FAT boot
#     partition, installed without mounting anything), fdisk (sfdisk),
#     e2fsprogs (mkfs.ext4 -d), qemu-system-x86 + seabios (booting it);
#   - promtool, unpacked from Debian's prometheus package into $GLIDEFS_TOOLS/bin
#     (the package itself would start a Prometheus server);
#   - cargo-deb (cargo install --root ${GLIDEFS_TOOLS:-/opt/glidefs-tools}).
# Nothing is resolved from outside the system dirs, ~/.cargo/bin and $GLIDEFS_TOOLS.
set -euo pipefail
# shellcheck source=lib/tools.sh
source "$(dirname "$0")/lib/tools.sh"
TOOLS="$GLIDEFS_TOOLS"
CARGO_DEB_VERSION="${CARGO_DEB_VERSION:-3.8.0}"
log() { echo "install-deploy-tools: $*" >&2; }

apt_install() {
    local -a need=()
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    [ "${#need[@]}" -gt 0 ] || return 0
    log "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local try
    for try in 1 2 3 4 5 6 7 8 9 10; do
        # dpkg may be locked by another checkout's setup: wait and retry.
        if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; then
            return 0
        fi
        log "apt-get failed (try $try; dpkg lock?), retrying in 30 s"
        sleep 30
    done
    log "FAILED: apt-get install ${need[*]}"
    return 1
}

apt_install mmdebstrap syslinux syslinux-common mtools dosfstools fdisk e2fsprogs qemu-system-x86 seabios \
    python3 jq curl

mkdir -p "$TOOLS/bin"
# promtool only: installing the `prometheus` package would also enable and start a
# Prometheus server on a host with systemd. promtool is one static binary.
if [ -x "$TOOLS/bin/promtool" ] && "$TOOLS/bin/promtool" --version >/dev/null 2>&1; then
    log "promtool already in $TOOLS/bin"
else
    log "promtool from the Debian package prometheus (apt-get download, dpkg -x)"
    dl=$(mktemp -d)
    chmod 755 "$dl"
    (cd "$dl" && apt-get download -q prometheus >&2) || { log "apt-get download prometheus failed"; exit 1; }
    dpkg -x "$dl"/prometheus_*.deb "$dl/x"
    install -m 0755 "$dl/x/usr/bin/promtool" "$TOOLS/bin/promtool"
    rm -rf "$dl"
    "$TOOLS/bin/promtool" --version >&2
fi

if [ -x "$TOOLS/bin/cargo-deb" ] && "$TOOLS/bin/cargo-deb" --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    log "cargo-deb $CARGO_DEB_VERSION already installed"
else
    command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }
    log "cargo install cargo-deb@$CARGO_DEB_VERSION into $TOOLS"
    # A target dir of its own: the shared one holds the project's lock for minutes.
    CARGO_TARGET_DIR="$TOOLS/cargo-target-tools" \
        cargo install --root "$TOOLS" --locked --quiet "cargo-deb@$CARGO_DEB_VERSION"
fi
log "done"
