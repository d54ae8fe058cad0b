#!/usr/bin/env bash
# Installs what scripts/bench and scripts/plot-bench need, idempotently:
#   - fio and gnuplot-nox from Debian (skipped when the commands exist);
#   - rublk (GPL-2.0-or-later, used only as an external program: the ublk null and
#     loop baselines) from crates.io into ${GLIDEFS_TOOLS:-/opt/glidefs-tools}/bin,
#     skipped when that exact version is already there.
# rublk's build runs bindgen (libublk), so libclang-dev is installed too.
# Usage: scripts/install-bench-tools.sh [--no-rublk] [--no-apt]
set -euo pipefail

RUBLK_VERSION="${RUBLK_VERSION:-0.2.15}"
TOOLS="${GLIDEFS_TOOLS:-/opt/glidefs-tools}"
do_rublk=1
do_apt=1
for arg in "$@"; do
    case "$arg" in
        --no-rublk) do_rublk=0 ;;
        --no-apt) do_apt=0 ;;
        *) echo "install-bench-tools: unknown argument $arg" >&2; exit 2 ;;
    esac
done

log() { echo "install-bench-tools: $*" >&2; }

apt_install() {
    # $@: package names; installs only the ones dpkg does not report as installed.
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        log "not root: cannot install ${missing[*]}"
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update >/dev/null 2>&1
        apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    }
}

if [ "$do_apt" = 1 ]; then
    pkgs=()
    command -v fio >/dev/null || pkgs+=(fio)
    command -v gnuplot >/dev/null || pkgs+=(gnuplot-nox)
    # mkfs.xfs: the VM runner's GLIDEFS_VM_FS=xfs scratch disk.
    command -v mkfs.xfs >/dev/null || pkgs+=(xfsprogs)
    [ "$do_rublk" = 1 ] && pkgs+=(libclang-dev)
    [ "${#pkgs[@]}" -gt 0 ] && apt_install "${pkgs[@]}"
fi

if [ "$do_rublk" = 1 ]; then
    bin="$TOOLS/bin/rublk"
    stamp="$TOOLS/bin/.rublk-version"
    if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$RUBLK_VERSION" ]; then
        log "rublk $RUBLK_VERSION already in $bin"
    else
        command -v cargo >/dev/null || { log "cargo not found: cannot build rublk"; exit 1; }
        mkdir -p "$TOOLS"
        # Default features pull OpenCL (the vram target); null and loop need none.
        # cargo install builds in a temporary folder of its own (not the project's
        # target dir) and removes it afterwards.
        log "cargo install rublk $RUBLK_VERSION into $TOOLS (takes minutes)"
        env -u CARGO_TARGET_DIR cargo install rublk --version "$RUBLK_VERSION" --locked \
            --no-default-features --root "$TOOLS" --force
        echo "$RUBLK_VERSION" >"$stamp"
        log "rublk installed: $("$bin" --version 2>/dev/null || echo "$bin")"
    fi
fi
log "done"
