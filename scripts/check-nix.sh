#!/usr/bin/env bash
# scripts/check-nix.sh - the Nix checks that run on a machine without Nix (CI here).
#
#   1. every .nix file parses         nix-instantiate --store dummy:// --parse
#   2. formatting                     nixfmt --check   (crate nixfmt_rs)
#   3. no dead code                   deadnix --fail   (crate deadnix)
#   4. module evaluation test         nix-instantiate --eval --strict nixos/eval-test
#      (nixos/module.nix with the real nixpkgs lib, from the vendored nixpkgs-lib
#      tarball, and the stand-in NixOS options/pkgs in nixos/eval-test: rendered
#      systemd unit, TOML, modprobe config, assertions), plus a TOML round trip
#      through Python's tomllib and, with GLIDEFS_BIN set, `glidefs check-config`
#      on the rendered file
#   4d. the unit the module renders equals packaging/systemd/glidefs.service
#      directive by directive, but for the differences docs/nixos.md lists
#      (scripts/compare-unit.py), and the unit file's LoadCredential= IDs are the
#      ones that list names; mutated copies of the unit file must fail this
#   5. the evaluation test catches broken modules: mutated copies of module.nix
#      must each fail it
#   6. the phase scripts the NixOS tests run exist and their headers evaluate
#
# `check-nix.sh --tools` only installs the tools and prints one line per tool:
# NAME<TAB>PATH<TAB>VERSION (scripts/setup.sh and scripts/report-tools use it).
#
# What it cannot check (no nixpkgs beyond lib, no store, no KVM here): building the
# package, the image or the VM tests, and the NixOS options outside lib; see
# docs/nixos.md for `nix flake check` on a Nix host.
#   GLIDEFS_NIXPKGS_LIB   the nixpkgs-lib tarball (default: ../shared/vendor/
#                         nixpkgs-lib-26.11pre.tar.gz beside the repository)
#
# Tools go to ${GLIDEFS_TOOLS:-/opt/glidefs-tools}: Debian's nix-bin (installed, or
# unpacked under nix/ when installing it would upgrade base packages), and
# nixfmt/deadnix via `cargo install --root`. Idempotent; any failure exits non-zero.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${GLIDEFS_TOOLS:-/opt/glidefs-tools}"
NIXFMT_VERSION="0.5.3"
DEADNIX_VERSION="1.3.1"
# Phase scripts the flake's NixOS tests run: NIXOS_PHASES of the phase contract
# (vm-tests/contract.env, which nixos/tests/default.nix reads too).
read -r -a VM_PHASES <<<"$(sed -n 's/^NIXOS_PHASES="\(.*\)"$/\1/p' "$REPO/vm-tests/contract.env")"

log() { echo "check-nix: $*" >&2; }
die() {
    echo "check-nix: FAILED: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- tools

NIX_ROOT="$TOOLS/nix"
NIXPKGS_LIB_TARBALL="${GLIDEFS_NIXPKGS_LIB:-$REPO/../shared/vendor/nixpkgs-lib-26.11pre.tar.gz}"
NIXPKGS_LIB=""
NIX_INSTANTIATE=""
NIX_LD_PATH=""
tmp=""

nix_instantiate() {
    env ${NIX_LD_PATH:+LD_LIBRARY_PATH="$NIX_LD_PATH"} NIX_CONF_DIR="$NIX_ROOT/etc" \
        "$NIX_INSTANTIATE" --store dummy:// "$@"
}

# Library packages nix-bin needs that are not installed, recursively.
missing_deps() {
    local -A seen=()
    local -a queue=(nix-bin) out=()
    local p d
    while [ "${#queue[@]}" -gt 0 ]; do
        p="${queue[0]}"
        queue=("${queue[@]:1}")
        [ -z "${seen[$p]:-}" ] || continue
        seen[$p]=1
        for d in $(apt-cache depends "$p" 2>/dev/null | awk '$1 == "Depends:" && $2 !~ /^</ {print $2}'); do
            [ -z "${seen[$d]:-}" ] || continue
            if [[ "$(dpkg-query -W -f='${Status}' "$d" 2>/dev/null || true)" != *"ok installed"* ]]; then
                out+=("$d")
                queue+=("$d")
            fi
        done
    done
    printf '%s\n' "${out[@]}" | sort -u
}

ensure_nix() {
    mkdir -p "$NIX_ROOT/etc"
    # A Nix installed on the host (or Debian's nix-bin) is used as it is.
    if command -v nix-instantiate >/dev/null; then
        NIX_INSTANTIATE="$(command -v nix-instantiate)"
    elif [ -x "$NIX_ROOT/usr/bin/nix-instantiate" ]; then
        NIX_INSTANTIATE="$NIX_ROOT/usr/bin/nix-instantiate"
    else
        command -v apt-get >/dev/null || die "no nix-instantiate and no apt-get to install nix-bin"
        local policy
        policy="$(apt-cache policy nix-bin 2>/dev/null || true)"
        if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
            log "apt-get update (no candidate for nix-bin yet)"
            apt-get update -qq >&2
        fi
        local sim
        sim="$(apt-get install --simulate --no-install-recommends nix-bin 2>&1)" \
            || die "apt-get install --simulate nix-bin failed: $sim"
        if grep -qE '^Inst [^ ]+ \[' <<<"$sim"; then
            # "Inst pkg [installed-version] (new-version ...)" is an upgrade.
            log "installing nix-bin would upgrade: $(grep -E '^Inst [^ ]+ \[' <<<"$sim" | awk '{print $2}' | tr '\n' ' ')"
            log "so unpacking nix-bin and its missing libraries into $NIX_ROOT instead"
            local dl
            dl="$(mktemp -d)"
            chmod 755 "$dl"
            local -a pkgs
            mapfile -t pkgs < <(echo nix-bin; missing_deps | grep -E '^lib' | grep -v -- '-perl$' || true)
            log "apt-get download ${pkgs[*]}"
            (cd "$dl" && apt-get download "${pkgs[@]}" >&2) || die "apt-get download ${pkgs[*]} failed"
            local deb
            for deb in "$dl"/*.deb; do
                dpkg -x "$deb" "$NIX_ROOT" || die "dpkg -x $deb failed"
            done
            rm -rf "$dl"
            NIX_INSTANTIATE="$NIX_ROOT/usr/bin/nix-instantiate"
        else
            log "apt-get install --no-install-recommends nix-bin"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nix-bin >&2 \
                || die "apt-get install nix-bin failed"
            NIX_INSTANTIATE="$(command -v nix-instantiate)" || die "nix-instantiate missing after install"
        fi
    fi
    if [[ "$NIX_INSTANTIATE" == "$NIX_ROOT"/* ]]; then
        NIX_LD_PATH="$NIX_ROOT/usr/lib/nix:$NIX_ROOT/usr/lib/x86_64-linux-gnu:$NIX_ROOT/usr/lib/$(uname -m)-linux-gnu"
        local missing
        missing="$(LD_LIBRARY_PATH="$NIX_LD_PATH" ldd "$NIX_ROOT/usr/bin/nix" | grep 'not found' || true)"
        [ -z "$missing" ] || die "unpacked nix lacks libraries: $missing"
    fi
    local v
    v="$(nix_instantiate --version 2>&1)" || die "$NIX_INSTANTIATE does not run: $v"
    log "using $NIX_INSTANTIATE ($v)"
}

# Unpacks the nixpkgs-lib tarball (read-only source) into $TOOLS/nixpkgs-lib/<sha>.
ensure_nixpkgs_lib() {
    [ -f "$NIXPKGS_LIB_TARBALL" ] || die "no nixpkgs-lib tarball at $NIXPKGS_LIB_TARBALL (set GLIDEFS_NIXPKGS_LIB)"
    local sha dest
    sha="$(sha256sum "$NIXPKGS_LIB_TARBALL" | cut -c1-16)"
    dest="$TOOLS/nixpkgs-lib/$sha"
    if [ ! -f "$dest/nixpkgs-lib/lib/default.nix" ]; then
        rm -rf "$dest.tmp"
        mkdir -p "$dest.tmp"
        tar -xzf "$NIXPKGS_LIB_TARBALL" -C "$dest.tmp" || die "cannot unpack $NIXPKGS_LIB_TARBALL"
        [ -f "$dest.tmp/nixpkgs-lib/lib/default.nix" ] || die "$NIXPKGS_LIB_TARBALL has no nixpkgs-lib/lib/default.nix"
        rm -rf "$dest"
        mv "$dest.tmp" "$dest"
    fi
    NIXPKGS_LIB="$dest/nixpkgs-lib"
    log "nixpkgs lib $(cat "$NIXPKGS_LIB/lib/.version") from $NIXPKGS_LIB_TARBALL"
}

ensure_cargo_tool() { # BINARY CRATE VERSION
    local bin="$1" crate="$2" version="$3"
    if [ -x "$TOOLS/bin/$bin" ] && [[ "$("$TOOLS/bin/$bin" --version 2>/dev/null || true)" == *"$version"* ]]; then
        return 0
    fi
    command -v cargo >/dev/null || die "cargo is needed to install $crate"
    log "cargo install $crate@$version into $TOOLS (a few minutes)"
    cargo install --locked --quiet --root "$TOOLS" "$crate@$version" >&2 \
        || die "cargo install $crate@$version failed"
    [[ "$("$TOOLS/bin/$bin" --version 2>/dev/null || true)" == *"$version"* ]] \
        || die "$TOOLS/bin/$bin is not version $version after install"
}

# ---------------------------------------------------------------- checks

PASSED=0
FAILED=0
ok() {
    PASSED=$((PASSED + 1))
    echo "ok   $*"
}
not_ok() {
    FAILED=$((FAILED + 1))
    echo "FAIL $*"
}

# Prints one line per eval-test case from the JSON on stdin; exit 1 if any failed.
report_eval() {
    python3 -c '
import json, sys
d = json.load(sys.stdin)
bad = 0
for c in d["checks"]:
    if c["ok"]:
        print("ok   eval: " + c["name"])
    else:
        bad += 1
        print("FAIL eval: " + c["name"] + ": " + c["detail"])
n = len(d["checks"])
print(f"eval: {n - bad} passed, {bad} failed", file=sys.stderr)
sys.exit(1 if bad else 0)
'
}

# json_text FILE KEY...: the string at that key path of a JSON file, on stdout.
json_text() {
    python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v[k]
print(v, end="")
' "$@"
}

# unit_credentials UNIT DOC: the LoadCredential= IDs of the unit file (repeated
# lines, any order) are exactly those named in backquotes in the unit-file column
# of DOC's `Service.LoadCredential` row; prints them. compare-unit.py accepts any
# value of a listed difference, so without this a lost credential line (S3 keys,
# master key) would pass.
unit_credentials() {
    # shellcheck disable=SC2016 # Python source: the backquotes are Markdown's
    python3 -c '
import re, sys
unit, doc = sys.argv[1:3]
ids = sorted(
    v
    for line in open(unit)
    if line.startswith("LoadCredential=")
    for v in line.split("=", 1)[1].split()
)
row = re.search(r"^\| `Service\.LoadCredential` \|([^|]*)\|", open(doc).read(), re.M)
if not row:
    sys.exit(f"{doc} has no `Service.LoadCredential` row")
named = sorted(re.findall(r"`([^`]+)`", row.group(1)))
if not named or ids != named:
    sys.exit(f"LoadCredential IDs: {unit} has {ids}, {doc} names {named}")
print(" ".join(ids))
' "$@"
}

# Evaluates nixos/eval-test under DIR (a checkout's nixos/ folder) into FILE.
run_eval() { # NIXOS_DIR OUT_JSON ERR_FILE
    nix_instantiate -I nixpkgs-lib="$NIXPKGS_LIB" --eval --strict --json "$1/eval-test" >"$2" 2>"$3"
}

ensure_tools() {
    ensure_nix
    ensure_nixpkgs_lib
    ensure_cargo_tool nixfmt nixfmt_rs "$NIXFMT_VERSION"
    ensure_cargo_tool deadnix deadnix "$DEADNIX_VERSION"
}

main() {
    cd "$REPO"
    if [ "${1:-}" = --tools ]; then
        ensure_tools
        printf 'nix-instantiate\t%s\t%s\n' "$NIX_INSTANTIATE" "$(nix_instantiate --version 2>&1 | head -n1)"
        local t
        for t in nixfmt deadnix; do
            printf '%s\t%s\t%s\n' "$t" "$TOOLS/bin/$t" "$("$TOOLS/bin/$t" --version 2>&1 | head -n1)"
        done
        return 0
    fi
    ensure_tools

    local -a files
    mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.nix' | sort)
    [ "${#files[@]}" -gt 0 ] || die "no .nix files found in $REPO"
    log "${#files[@]} .nix files"

    # 1. parse
    local f err
    for f in "${files[@]}"; do
        if err="$(nix_instantiate --parse "$f" 2>&1 >/dev/null)"; then
            ok "parse $f"
        else
            not_ok "parse $f: $err"
        fi
    done

    # 2. nixfmt
    if err="$("$TOOLS/bin/nixfmt" --check "${files[@]}" 2>&1)"; then
        ok "nixfmt --check (${#files[@]} files)"
    else
        not_ok "nixfmt --check: $err (run: $TOOLS/bin/nixfmt FILE...)"
    fi

    # 3. deadnix
    if err="$("$TOOLS/bin/deadnix" --fail "${files[@]}" 2>&1)"; then
        ok "deadnix --fail (${#files[@]} files)"
    else
        not_ok "deadnix --fail: $err"
    fi

    # 4. evaluation test of the module
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    if run_eval nixos "$tmp/eval.json" "$tmp/eval.err"; then
        local out rc=0
        out="$(report_eval <"$tmp/eval.json")" || rc=$?
        echo "$out"
        PASSED=$((PASSED + $(grep -c '^ok ' <<<"$out" || true)))
        FAILED=$((FAILED + $(grep -c '^FAIL ' <<<"$out" || true)))
        [ "$rc" = 0 ] || [ "$(grep -c '^FAIL ' <<<"$out" || true)" -gt 0 ] || not_ok "eval: report failed"
    else
        not_ok "eval: nix-instantiate --eval nixos/eval-test failed: $(cat "$tmp/eval.err")"
    fi

    # 4b. the rendered TOML parses back to the settings (tomllib, Python >= 3.11)
    if [ -s "$tmp/eval.json" ]; then
        if err="$(python3 -c '
import json, sys, tomllib
d = json.load(open(sys.argv[1]))["roundTrip"]
parsed = tomllib.loads(d["toml"])
settings = d["settings"]
if parsed != settings:
    sys.exit(f"TOML text parses to {parsed!r}, settings are {settings!r}")
' "$tmp/eval.json" 2>&1)"; then
            ok "TOML round trip (tomllib)"
        else
            not_ok "TOML round trip: $err"
        fi
        # 4c. the daemon accepts it (only when a binary is given)
        if [ -n "${GLIDEFS_BIN:-}" ]; then
            json_text "$tmp/eval.json" roundTrip toml >"$tmp/glidefs.toml"
            # As the module's build-time check: the key files exist only at run time.
            if err="$("$GLIDEFS_BIN" check-config --skip-key-files "$tmp/glidefs.toml" 2>&1)"; then
                ok "glidefs check-config accepts the rendered sample"
            else
                not_ok "glidefs check-config on the rendered sample: $err"
            fi
        else
            log "GLIDEFS_BIN not set: not running glidefs check-config on the rendered sample"
        fi
    fi

    # 4d. the module renders the unit file's directives
    local unit=packaging/systemd/glidefs.service
    if [ -s "$tmp/eval.json" ]; then
        json_text "$tmp/eval.json" unit defaults >"$tmp/rendered.service"
        if err="$(python3 scripts/compare-unit.py "$unit" "$tmp/rendered.service" docs/nixos.md 2>&1)"; then
            ok "module renders $unit (${err##*compare-unit: })"
        else
            not_ok "module and $unit differ: $err"
        fi
        if err="$(unit_credentials "$unit" docs/nixos.md 2>&1)"; then
            ok "$unit loads the credentials docs/nixos.md names ($err)"
        else
            not_ok "$unit credentials: $err"
        fi
        # ... and the comparison can fail: mutated unit files must not pass it.
        local -a unit_mutations=(
            '/^KillMode=mixed$/d'
            's/^ProtectSystem=strict$/ProtectSystem=full/'
            's/^SystemCallFilter=@system-service umount2$/SystemCallFilter=@system-service/'
            's/^DeviceAllow=char-ublk-char rw$/DeviceAllow=char-ublk-char r/'
            '$a PrivateUsers=true'
            '/^LoadCredential=glidefs-master-key$/d'
        )
        local um
        for um in "${unit_mutations[@]}"; do
            sed "$um" "$unit" >"$tmp/mut.service"
            if cmp -s "$unit" "$tmp/mut.service"; then
                not_ok "unit mutation ($um) did not apply: update the list in scripts/check-nix.sh"
            elif python3 scripts/compare-unit.py "$tmp/mut.service" "$tmp/rendered.service" docs/nixos.md >/dev/null 2>&1 \
                && unit_credentials "$tmp/mut.service" docs/nixos.md >/dev/null 2>&1; then
                not_ok "unit mutation ($um) is not caught by compare-unit.py or unit_credentials"
            else
                ok "unit mutation caught: $um"
            fi
        done
    fi

    # 5. mutations of the module must fail the evaluation test
    # shellcheck disable=SC2016 # sed scripts: the ${...} are Nix, not shell
    local -a mutations=(
        's/Type = "notify";/Type = "simple";/'
        's/KillMode = "mixed";/KillMode = "process";/'
        's/Restart = "always";/Restart = "on-failure";/'
        's/boot.kernelModules = \[ "ublk_drv" \];/boot.kernelModules = [ ];/'
        's/ublks_max=\${toString cfg.maxDevices}/ublks_max=64/'
        's/assertion = lib.versionAtLeast kernelVersion "6.5";/assertion = true;/'
        's/"CAP_SYS_ADMIN"/"CAP_SYS_ADMIN" "CAP_SYS_PTRACE"/'
        's/PrivateDevices = false;/PrivateDevices = true;/'
        's/ExecStart = "\${cfg.package}\/bin\/glidefs run --config \${configFile}";/ExecStart = "${cfg.package}\/bin\/glidefs run";/'
        's/glidefs check-config --skip-key-files "\$configFile"/true/'
        's/lib.optional (cfg.encryptionKeyFile != null) "master-key:/lib.optional false "master-key:/'
        '/^    "encryptionKeyFile"$/d'
        's/++ lib.zipListsWith (id: file: "${id}:${file}") oldKeyIds cfg.oldEncryptionKeyFiles;/;/'
        's/old_key_files = lib.mkIf (oldKeyPaths != \[ \]) oldKeyPaths;/old_key_files = lib.mkIf (oldKeyPaths != [ ]) (lib.mkDefault oldKeyPaths);/'
        's/assertion = cfg.oldEncryptionKeyFiles == \[ \] || cfg.encryptionKeyFile != null;/assertion = true;/'
        '/^    "oldEncryptionKeyFiles"$/d'
    )
    local m n=0
    for m in "${mutations[@]}"; do
        n=$((n + 1))
        rm -rf "$tmp/mut"
        mkdir -p "$tmp/mut"
        cp -r nixos flake.nix Cargo.toml Cargo.lock "$tmp/mut/"
        # The NixOS tests read the phase contract and the phase scripts beside nixos/.
        mkdir -p "$tmp/mut/vm-tests"
        cp -r vm-tests/contract.env vm-tests/phases "$tmp/mut/vm-tests/"
        sed -i "$m" "$tmp/mut/nixos/module.nix"
        if cmp -s nixos/module.nix "$tmp/mut/nixos/module.nix"; then
            not_ok "mutation $n ($m) did not apply: update the list in scripts/check-nix.sh"
            continue
        fi
        local caught=0
        if ! run_eval "$tmp/mut/nixos" "$tmp/mut.json" "$tmp/mut.err"; then
            # The checks must catch it, not an evaluation that breaks down.
            not_ok "mutation $n ($m): the evaluation test did not run: $(head -c 600 "$tmp/mut.err")"
            continue
        fi
        caught="$(python3 -c 'import json,sys; print(sum(1 for c in json.load(open(sys.argv[1]))["checks"] if not c["ok"]))' "$tmp/mut.json")"
        if [ "$caught" = 0 ]; then
            not_ok "mutation $n ($m) is not caught by the evaluation test"
        else
            ok "mutation $n caught ($caught): $m"
        fi
    done

    # 6. the phase scripts of the NixOS tests
    local p
    for p in "${VM_PHASES[@]}"; do
        if [ ! -f "vm-tests/phases/$p.sh" ]; then
            # Not this script's failure: the phase is not written yet, and the flake
            # check vm-$p fails on a Nix host until it is.
            echo "SKIP vm-tests/phases/$p.sh does not exist yet (flake check vm-$p fails until it does)"
        elif err="$(nix_instantiate --eval --strict --json \
            -E "import $REPO/nixos/tests/phase-headers.nix $REPO/vm-tests/phases/$p.sh" 2>&1)"; then
            ok "phase $p headers: $err"
        else
            not_ok "phase $p headers: $err"
        fi
    done

    echo "check-nix: $PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ] || die "$FAILED check(s) failed"
}

main "$@"
