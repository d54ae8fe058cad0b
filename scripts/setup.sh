#!/usr/bin/env bash
# Installs everything glidefs' build, tests and VM checks need, idempotently.
# Safe to re-run: each step skips what is already in place.
#   GLIDEFS_TOOLS (default /opt/glidefs-tools): where test servers, the VM kernel,
#   virtme-ng and Nix tools go. scripts/report-tools lists what ended up where.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/tools.sh
source "$here/lib/tools.sh"
mkdir -p "$GLIDEFS_TOOLS"

need_apt=()
for pkg in libclang-dev clang pkg-config curl python3-venv kmod fio e2fsprogs qemu-system-x86 jq gnuplot-nox; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi

command -v cargo >/dev/null || {
  echo "setup: cargo not found on PATH=$PATH: install Rust with rustup (~/.cargo/bin)," \
    "set CARGO_HOME to where it is, or GLIDEFS_INHERIT_PATH=1 to keep your own PATH" >&2
  exit 1
}

for step in install-test-servers.sh setup-vm.sh install-deploy-tools.sh; do
  echo "setup: $step"
  "$here/$step" >/dev/null
done
echo "setup: Nix checkers (check-nix.sh --tools)"
"$here/check-nix.sh" --tools >/dev/null
echo "setup: done (tools in $GLIDEFS_TOOLS)"
