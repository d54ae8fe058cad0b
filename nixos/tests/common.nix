# Shared parts of the glidefs NixOS tests, in the layout of nixpkgs'
# nixos/tests/garage: every node gets a 6.12 kernel with ublk_drv loaded at boot,
# fio and the tools the vm-tests phase scripts call, and the Python helpers in
# `testScriptSetup` boot the machine and run a phase script unchanged.
{
  glidefsModule,
  s3s-fs,
  phases,
}:
{
  defaults =
    { config, pkgs, ... }:
    {
      imports = [ glidefsModule ];
      boot.kernelPackages = pkgs.linuxPackages_6_12;
      boot.kernelModules = [ "ublk_drv" ];
      environment.systemPackages = [
        config.services.glidefs.package
        s3s-fs
        pkgs.fio
        pkgs.curl
        pkgs.jq
        pkgs.util-linux
        pkgs.kmod
        pkgs.e2fsprogs
      ];
      virtualisation = {
        cores = 2;
        memorySize = 4096;
        # WORK_DIR of the phases lives on the root disk (a real disk, not tmpfs).
        diskSize = 16384;
      };
    };

  _module.args.testScriptSetup = # python
    ''
      import shlex

      PHASES = "${phases}"
      S3S_FS = "${s3s-fs}/bin/s3s-fs"


      def boot_with_ublk(machine, ublks_max):
          """Boots the node; the first check is that the kernel ships ublk_drv."""
          machine.start()
          with subtest("ublk_drv is available and loaded"):
              machine.succeed("modinfo ublk_drv")
              machine.wait_for_unit("multi-user.target")
              machine.succeed("test -c /dev/ublk-control")
              got = machine.succeed("cat /sys/module/ublk_drv/parameters/ublks_max").strip()
              assert got == str(ublks_max), f"ublks_max is {got}, expected {ublks_max}"


      def run_phase(machine, phase, deadline, ublks_max, glidefs_bin):
          """Runs vm-tests/phases/PHASE.sh as vm-tests/run does; only "pass" passes."""
          results = f"/tmp/vm-results/{phase}"
          env = {
              "GLIDEFS_BIN": glidefs_bin,
              "GLIDEFS_TOOLS": "/run/current-system/sw",
              "GLIDEFS_S3S_FS": S3S_FS,
              "GLIDEFS_REQUIRE_UBLK": "1",
              "RESULTS_DIR": results,
              "WORK_DIR": f"/var/lib/glidefs-test/{phase}",
              "UBLKS_MAX": str(ublks_max),
          }
          assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
          with subtest(f"phase {phase}"):
              status, output = machine.execute(
                  f"env {assignments} bash {PHASES}/{phase}.sh 2>&1", timeout=deadline
              )
              print(output)
              verdict = machine.succeed(f"cat {results}/result 2>/dev/null || echo missing").strip()
              reason = machine.execute(f"cat {results}/reason 2>/dev/null")[1].strip()
              figures = machine.execute(f"cat {results}/figures 2>/dev/null")[1]
              print(f"phase {phase}: {verdict} (exit {status}) {reason}\n{figures}")
              machine.copy_from_vm(results, phase)
              assert verdict == "pass" and status == 0, (
                  f"phase {phase}: {verdict} (exit {status}): {reason}"
              )
    '';
}
