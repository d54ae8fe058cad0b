# Sourced (not run) by every entry script (scripts/test, demo, setup.sh, bench,
# appliance, build-deb, vm-tests/run, appliance-run, ...). One home for where the
# project's tools live and for the PATH its scripts run under.
#
# The PATH holds only cargo's bin directory, the project's own tool directory and the
# system's directories, so a tool the project forgot to install fails here exactly as it
# would on a fresh machine, instead of being found in /usr/local/bin, a pyenv shim or an
# earlier session's venv. Tools that the project installs elsewhere are called by their
# full path: virtme-ng through GLIDEFS_VNG_CMD (its venv's bin/ must come first on PATH,
# because vng starts `virtme-run` by name), Nix tools through scripts/check-nix.sh.
#
#   GLIDEFS_TOOLS         where the project installs its tools (default /opt/glidefs-tools)
#   CARGO_HOME            cargo's home (default ~/.cargo); its bin/ is on PATH
#   GLIDEFS_INHERIT_PATH  1 keeps the caller's PATH after the project's directories, for a
#                         developer whose toolchain lives elsewhere (never in CI)

export GLIDEFS_TOOLS="${GLIDEFS_TOOLS:-/opt/glidefs-tools}"
# The directory virtme-ng is installed in (scripts/setup-vm.sh).
export GLIDEFS_VNG_VENV="$GLIDEFS_TOOLS/vng-venv"

glidefs_clean_path() {
    local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
    local path="$cargo_bin:$GLIDEFS_TOOLS/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if [ "${GLIDEFS_INHERIT_PATH:-0}" = 1 ]; then
        path="$path:$PATH"
    fi
    export PATH="$path"
}

glidefs_clean_path
# The command that starts the project's virtme-ng, its venv first on PATH; usable after
# `timeout` or `env` ("${GLIDEFS_VNG_CMD[@]}" --run ...).
GLIDEFS_VNG_CMD=(env "PATH=$GLIDEFS_VNG_VENV/bin:$PATH" "$GLIDEFS_VNG_VENV/bin/vng")
