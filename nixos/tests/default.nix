# The NixOS VM tests of the flake's checks: one per phase listed in NIXOS_PHASES of
# vm-tests/contract.env (the same scripts vm-tests/run runs under the Debian kernel)
# plus the module's own test.
# A phase whose script is not in vm-tests/phases yet gets a check that fails and
# says so, rather than silently running nothing.
{
  pkgs,
  glidefsModule,
}:
let
  phaseNames = (import ./contract.nix).nixosPhases;
  phasesSrc = ../../vm-tests/phases;
  phases = builtins.path {
    name = "glidefs-vm-phases";
    path = phasesSrc;
  };
  s3s-fs = pkgs.callPackage ./s3s-fs/package.nix { };
  common = import ./common.nix { inherit glidefsModule s3s-fs phases; };

  phaseTest =
    phase:
    if builtins.pathExists (phasesSrc + "/${phase}.sh") then
      pkgs.testers.runNixOSTest {
        imports = [
          common
          (import ./phase.nix { inherit phase phasesSrc; })
        ];
      }
    else
      pkgs.runCommand "glidefs-vm-${phase}-missing" { } ''
        echo "vm-tests/phases/${phase}.sh does not exist: there is no vm-${phase} test to run" >&2
        exit 1
      '';
in
builtins.listToAttrs (
  map (phase: {
    name = "vm-${phase}";
    value = phaseTest phase;
  }) phaseNames
)
// {
  vm-service = pkgs.testers.runNixOSTest {
    imports = [
      common
      ./service.nix
    ];
  };
}
