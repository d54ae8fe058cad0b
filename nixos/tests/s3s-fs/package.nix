# s3s-fs, the S3-compatible server on a directory that the VM test phases start on
# 127.0.0.1 (vm-tests/phases/lib.sh `s3_start`), the same version that
# scripts/install-test-servers.sh installs for vm-tests/run. Cargo.lock beside this
# file is the one shipped in the crate (copied to avoid import-from-derivation).
{
  lib,
  rustPlatform,
  fetchCrate,
}:
rustPlatform.buildRustPackage rec {
  pname = "s3s-fs";
  version = "0.14.1";

  src = fetchCrate {
    inherit pname version;
    # NAR hash of the unpacked crate tarball (sha256 of the .crate file:
    # aa2cc3c6802533066591b45ace771fbc30fa33fd393d5909f9a7efd2a75cb15b).
    hash = "sha256-sCNMLBR7rGcKvm9bnXhBPdVSRxbBaWef/5SRsBQd4Y8=";
  };

  cargoLock.lockFile = ./Cargo.lock;
  buildFeatures = [ "binary" ];
  # Its tests start servers and are not what we are testing.
  doCheck = false;

  meta = {
    description = "S3-compatible server backed by a directory (test fixture)";
    license = lib.licenses.asl20;
    mainProgram = "s3s-fs";
  };
}
