# One NixOS test per vm-tests phase: boots a node with ublks_max from the phase's
# header, then runs vm-tests/phases/PHASE.sh unchanged under its deadline.
# The headers are read from `phasesSrc`, the phases folder in the source tree; the
# VM runs the copy in the store (PHASES in common.nix).
{
  phase,
  phasesSrc,
}:
{ testScriptSetup, ... }:
let
  headers = import ./phase-headers.nix (phasesSrc + "/${phase}.sh");
in
{
  name = "glidefs-${phase}";
  # The driver's own limit: the phase's deadline plus booting and copying results.
  meta.timeout = headers.deadline + 900;

  nodes.machine = {
    boot.extraModprobeConfig = ''
      options ublk_drv ublks_max=${toString headers.ublksMax}
    '';
  };

  testScript =
    { nodes, ... }:
    ''
      ${testScriptSetup}

      boot_with_ublk(machine, ${toString headers.ublksMax})
      run_phase(
          machine,
          "${phase}",
          deadline=${toString headers.deadline},
          ublks_max=${toString headers.ublksMax},
          glidefs_bin="${nodes.machine.services.glidefs.package}/bin/glidefs",
      )
    '';
}
