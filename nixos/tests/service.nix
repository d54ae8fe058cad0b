# The NixOS module itself: services.glidefs under systemd. The daemon reports ready
# through sd_notify; kill -9 of the main process is followed by a restart that
# recovers the QUIESCED device, and so is a stop/start (SIGTERM); every case ends
# by reading the data back through /dev/ublkbN.
{ testScriptSetup, ... }:
{
  name = "glidefs-service";

  nodes.machine = {
    services.glidefs = {
      enable = true;
      maxDevices = 16;
      settings.limits.max_exports = 16;
    };
  };

  testScript = ''
    ${testScriptSetup}

    import json

    API = "http://127.0.0.1:8080"


    def main_pid():
        return machine.succeed("systemctl show -P MainPID glidefs.service").strip()


    def read_back(dev):
        machine.succeed(f"dd if={dev} of=/tmp/readback bs=1M count=16 iflag=direct")
        machine.succeed("cmp /tmp/data /tmp/readback")


    boot_with_ublk(machine, 16)

    with subtest("the unit is ready (sd_notify) and the API answers"):
        machine.wait_for_unit("glidefs.service")
        machine.succeed(f"curl -fsS {API}/health/ready")
        caps = machine.succeed(f"grep CapBnd /proc/{main_pid()}/status").split()[1]
        assert int(caps, 16) == 1 << 21, f"bounding set {caps} is not CAP_SYS_ADMIN only"

    with subtest("an export serves data"):
        out = machine.succeed(
            "curl -fsS -X PUT -H 'Content-Type: application/json' "
            + f"--data '{{\"size\":\"64M\"}}' {API}/api/exports/vol0"
        )
        dev = json.loads(out)["device"]
        machine.wait_until_succeeds(f"test -b {dev}")
        machine.succeed("dd if=/dev/urandom of=/tmp/data bs=1M count=16")
        machine.succeed(f"dd if=/tmp/data of={dev} bs=1M oflag=direct conv=fsync")
        read_back(dev)

    with subtest("kill -9: systemd restarts the daemon, which recovers the device"):
        old = main_pid()
        machine.succeed(f"kill -9 {old}")
        machine.wait_until_succeeds("test $(systemctl show -P NRestarts glidefs.service) -ge 1")
        machine.wait_for_unit("glidefs.service")
        assert main_pid() not in ("0", old), "no new daemon after kill -9"
        machine.succeed(f"test -b {dev}")
        read_back(dev)

    with subtest("stop (SIGTERM) leaves the device for the next daemon"):
        machine.succeed("systemctl stop glidefs.service")
        machine.succeed(f"test -b {dev}")
        machine.succeed("systemctl start glidefs.service")
        machine.wait_for_unit("glidefs.service")
        read_back(dev)
  '';
}
