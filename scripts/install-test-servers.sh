#!/usr/bin/env bash
# Install the S3-compatible servers the test suite starts on 127.0.0.1:
#   - moto_server (PyPI moto[server]) in a Python venv: in-memory, atomic conditional writes;
#   - s3s-fs 0.14.1 (--features binary): persists to a directory, checks signatures.
# Target: ${GLIDEFS_TOOLS:-/opt/glidefs-tools}  (bin/moto_server, bin/s3s-fs).
# Idempotent: whatever is already installed is skipped (CI re-runs this on each clone).
set -euo pipefail

TOOLS="${GLIDEFS_TOOLS:-/opt/glidefs-tools}"
S3S_FS_VERSION="0.14.1"
PYTHON="${PYTHON:-python3}"

mkdir -p "$TOOLS/bin"

log() { echo "install-test-servers: $*" >&2; }

install_moto() {
    if [ -x "$TOOLS/bin/moto_server" ] && "$TOOLS/venv/bin/python" -c 'import moto.server' 2>/dev/null; then
        log "moto_server already installed ($TOOLS/bin/moto_server)"
        return
    fi
    log "installing moto[server] into $TOOLS/venv"
    "$PYTHON" -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]'
    ln -sf "$TOOLS/venv/bin/moto_server" "$TOOLS/bin/moto_server"
}

install_s3s_fs() {
    if [ -x "$TOOLS/bin/s3s-fs" ] && "$TOOLS/bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
        log "s3s-fs $S3S_FS_VERSION already installed ($TOOLS/bin/s3s-fs)"
        return
    fi
    log "installing s3s-fs $S3S_FS_VERSION into $TOOLS (cargo install, takes minutes)"
    # --locked uses the versions the release was tested with; fall back if they no
    # longer build with this toolchain.
    if ! cargo install --root "$TOOLS" --locked --features binary --version "$S3S_FS_VERSION" s3s-fs; then
        log "--locked build failed; retrying without --locked"
        cargo install --root "$TOOLS" --features binary --version "$S3S_FS_VERSION" s3s-fs
    fi
}

case "${1:-all}" in
    moto) install_moto ;;
    s3s-fs) install_s3s_fs ;;
    all) install_moto; install_s3s_fs ;;
    *) echo "usage: $0 [all|moto|s3s-fs]" >&2; exit 2 ;;
esac
log "done: $(ls "$TOOLS/bin" | tr '\n' ' ')"
