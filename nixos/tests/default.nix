# The NixOS VM tests of the flake's checks: one per vm-tests phase (the same
# scripts vm-tests/run runs under the Debian kernel) plus the module's own test.
{
  pkgs,
  glidefsModule,
}:
let
  s3s-fs = pkgs.callPackage ./s3s-fs/package.nix { };
  phases = builtins.path {
    name = "glidefs-vm-phases";
    path = ../../vm-tests/phases;
  };
  common = import ./common.nix { inherit glidefsModule s3s-fs phases; };
  phaseTest =
    phase:
    pkgs.testers.runNixOSTest {
      imports = [
        common
        (import ./phase.nix { inherit phase phases; })
      ];
    };
in
{
  vm-integrity = phaseTest "integrity";
  vm-crash = phaseTest "crash";
  vm-density = phaseTest "density";
  vm-service = pkgs.testers.runNixOSTest {
    imports = [
      common
      ./service.nix
    ];
  };
}
