# One NixOS test per vm-tests phase: boots a node with ublks_max from the phase's
# header, then runs vm-tests/phases/PHASE.sh unchanged under its deadline.
# `phases` is the phases folder in the store (what the VM runs), `phasesSrc` the
# same folder in the source tree (where the headers are read at evaluation).
{
  phase,
  phases,
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
