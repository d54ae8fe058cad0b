# The glidefs daemon, built from this checkout with the versions in Cargo.lock.
# libublk's build runs bindgen, hence bindgenHook (libclang + the C headers).
# Only the host-side unit tests run in the sandbox (`cargo test --lib`): the
# integration tests in tests/ drive a real binary against ublk and S3 servers and
# belong to the VM tests (flake checks vm-*), which boot a kernel with ublk_drv.
{
  lib,
  rustPlatform,
  gitRev ? null,
  gitDirty ? false,
}:
let
  cargoToml = lib.importTOML ../Cargo.toml;
  root = ../.;
in
rustPlatform.buildRustPackage {
  pname = "glidefs";
  inherit (cargoToml.package) version;

  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../build.rs
      ../src
      ../crates
      (lib.fileset.maybeMissing ../tests)
      (lib.fileset.maybeMissing ../benches)
      (lib.fileset.maybeMissing ../examples)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [ rustPlatform.bindgenHook ];

  # build.rs (vergen) asks git, which the sandbox lacks: vergen takes these
  # variables as overrides (else it emits placeholders).
  env = lib.optionalAttrs (gitRev != null) {
    VERGEN_GIT_SHA = gitRev;
    VERGEN_GIT_DIRTY = lib.boolToString gitDirty;
  };

  cargoTestFlags = [ "--lib" ];
  # Unit tests that need /dev/ublk-control skip themselves without it; make sure no
  # test insists on it here (GLIDEFS_REQUIRE_UBLK is for the VM tests).
  preCheck = ''
    unset GLIDEFS_REQUIRE_UBLK
  '';

  meta = {
    inherit (cargoToml.package) description;
    license = lib.licenses.asl20;
    mainProgram = "glidefs";
    platforms = lib.platforms.linux;
  };
}
