# Evaluation checks of flake.nix and nixos/tests that need no nixpkgs: the flake's
# input is a NixOS release >= 25.05, its outputs are the expected ones, its
# nixosModules.default points services.glidefs.package at the flake's own build;
# the VM test modules put ublk_drv, the 6.12 kernel and fio on the node, boot with
# `modinfo ublk_drv` first and run the phase script with the header's ublks_max and
# deadline. The NixOS test framework itself is not evaluated here.
{
  lib,
  pkgs,
  eval,
}:
let
  inherit (import ./checks.nix) contains eq that;

  flake = import ../../flake.nix;
  branch = builtins.match "github:NixOS/nixpkgs/nixos-([0-9]+\\.[0-9]+)" flake.inputs.nixpkgs.url;

  flakePackage = pkgs.runCommand "glidefs-from-flake" { meta.mainProgram = "glidefs"; } "";
  outputs = flake.outputs {
    self = {
      packages.x86_64-linux.default = flakePackage;
      shortRev = "0000000";
    };
    nixpkgs = throw "nixpkgs is not available to the evaluation test";
  };
  viaFlake = eval [
    outputs.nixosModules.default
    {
      boot.kernelPackages = pkgs.linuxPackages_6_12;
      services.glidefs.enable = true;
    }
  ];

  common = import ../tests/common.nix {
    glidefsModule = "glidefs-module";
    s3s-fs = pkgs.runCommand "s3s-fs-0.14.1" { } "";
    phases = "/phases-in-store";
  };
  node = common.defaults {
    config.services.glidefs.package = pkgs.glidefs;
    inherit pkgs;
  };
  setup = common._module.args.testScriptSetup;
  # The text after `machine.start()`, then the argument of the first machine.succeed.
  afterStart = builtins.elemAt (builtins.split "machine\\.start\\(\\)" setup) 2;
  firstCommand = builtins.head (
    builtins.split "\"" (builtins.elemAt (builtins.split "machine\\.succeed\\(\"" afterStart) 2)
  );

  phase = import ../tests/phase.nix {
    phase = "sample";
    phasesSrc = ./fixtures/phases;
  } { testScriptSetup = "SETUP"; };
  script = phase.testScript { nodes.machine.services.glidefs.package = pkgs.glidefs; };
in
[
  (that "flake: nixpkgs input is a release >= 25.05" (
    branch != null && lib.versionAtLeast (builtins.head branch) "25.05"
  ))
  (eq "flake: outputs" (builtins.attrNames outputs) [
    "checks"
    "devShells"
    "formatter"
    "nixosConfigurations"
    "nixosModules"
    "overlays"
    "packages"
  ])
  (eq "flake: nixosModules.default runs the flake's package"
    viaFlake.config.systemd.services.glidefs.serviceConfig.ExecStart
    "${flakePackage}/bin/glidefs run --config ${builtins.storeDir}/00000000000000000000000000000000-glidefs-checked.toml"
  )
  (eq "flake: nixosModules.default declares nothing unknown" viaFlake.unknownOptions [ ])

  (eq "vm node: imports the module" node.imports [ "glidefs-module" ])
  (eq "vm node: kernel 6.12" node.boot.kernelPackages pkgs.linuxPackages_6_12)
  (eq "vm node: ublk_drv at boot" node.boot.kernelModules [ "ublk_drv" ])
  (that "vm node: fio, curl, jq, s3s-fs and glidefs installed" (
    builtins.all (n: builtins.elem n (map (p: p.name) node.environment.systemPackages)) [
      "fio"
      "curl"
      "jq"
      "s3s-fs-0.14.1"
      "glidefs-0.1.0"
    ]
  ))
  (eq "vm test: the first command after boot is modinfo ublk_drv" firstCommand "modinfo ublk_drv")
  (contains "vm test: phases run from the store" setup ''PHASES = "/phases-in-store"'')
  (contains "vm test: ublk is required, not skipped" setup ''"GLIDEFS_REQUIRE_UBLK": "1"'')
  (contains "vm test: only pass passes" setup ''assert verdict == "pass" and status == 0'')
  (eq "vm phase test: name" phase.name "glidefs-sample")
  (eq "vm phase test: ublks_max from the header" phase.nodes.machine.boot.extraModprobeConfig
    "options ublk_drv ublks_max=1100\n"
  )
  (eq "vm phase test: driver timeout = deadline + 900" phase.meta.timeout 3300)
  (contains "vm phase test: boots with the header's ublks_max, then runs the phase" script
    "boot_with_ublk(machine, 1100)\nrun_phase(\n"
  )
  (contains "vm phase test: runs the phase under its deadline" script
    "\"sample\",\n    deadline=2400,\n    ublks_max=1100,\n"
  )
  (contains "vm phase test: with the node's glidefs" script
    ''glidefs_bin="${pkgs.glidefs}/bin/glidefs"''
  )
]
