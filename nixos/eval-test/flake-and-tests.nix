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
  # The whole flake against a fake nixpkgs: shapes and build attributes only.
  fake = import ./fake-nixpkgs.nix { inherit lib pkgs; };
  full = flake.outputs {
    self = full // {
      shortRev = "1234567";
    };
    nixpkgs = fake;
  };
  xpkgs = full.packages.x86_64-linux;
  xchecks = full.checks.x86_64-linux;
  cargoVersion = (builtins.fromTOML (builtins.readFile ../../Cargo.toml)).package.version;
  s3s-fs = fake.legacyPackages.x86_64-linux.callPackage ../tests/s3s-fs/package.nix { };

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
  (that "flake: nixosModules.default declares nothing unknown" (
    (builtins.tryEval (builtins.deepSeq viaFlake.config.services.glidefs.settings true)).success
  ))
  (eq "flake: x86_64 packages" (builtins.attrNames xpkgs) [
    "appliance-image"
    "appliance-image-raw"
    "default"
    "glidefs"
  ])
  (eq "flake: aarch64 packages (no image)" (builtins.attrNames full.packages.aarch64-linux) [
    "default"
    "glidefs"
  ])
  (eq "flake: image = system.build.images.qemu-efi" xpkgs.appliance-image.name "nixos-image-qemu-efi")
  (eq "flake: checks" (builtins.attrNames xchecks) [
    "appliance"
    "clippy"
    "deadnix"
    "module-unit"
    "nixfmt"
    "package"
    "vm-crash"
    "vm-density"
    "vm-integrity"
    "vm-service"
    "vm-smoke"
  ])
  (eq "flake: the vm-service check is a runNixOSTest" xchecks.vm-service.name "vm-test-run")
  (eq "flake: formatter is nixfmt" full.formatter.x86_64-linux.name "nixfmt")
  (eq "flake: devShell has the package's inputs"
    (map (p: p.name) full.devShells.x86_64-linux.default.inputsFrom)
    [
      "glidefs-${cargoVersion}"
    ]
  )
  (eq "flake: appliance modules" (builtins.length full.nixosConfigurations.appliance.modules) 3)
  (eq "package: version from Cargo.toml" xpkgs.default.version cargoVersion)
  (eq "package: Cargo.lock as is" xpkgs.default.cargoLock.lockFile ../../Cargo.lock)
  (eq "package: bindgen hook" (map (p: p.name) xpkgs.default.nativeBuildInputs) [
    "rust-bindgen-hook"
  ])
  (eq "package: only host-side unit tests in the sandbox" xpkgs.default.cargoTestFlags [ "--lib" ])
  (eq "package: git rev for vergen" xpkgs.default.env {
    VERGEN_GIT_SHA = "1234567";
    VERGEN_GIT_DIRTY = "false";
  })
  (eq "package: mainProgram" xpkgs.default.meta.mainProgram "glidefs")
  (contains "clippy check: -D warnings on all targets" xchecks.clippy.buildPhase
    "cargo clippy --all-targets --offline -- -D warnings"
  )
  (eq "clippy check: tests not run" xchecks.clippy.doCheck false)
  (that "clippy check: has clippy" (
    builtins.elem "clippy" (map (p: p.name) xchecks.clippy.nativeBuildInputs)
  ))
  (contains "nixfmt check: --check" xchecks.nixfmt.buildCommand "nixfmt --check")
  (contains "deadnix check: --fail" xchecks.deadnix.buildCommand "deadnix --fail")
  (contains "module-unit check: greps the real unit file" xchecks.module-unit.buildCommand
    "grep -qxF \"$line\" \"$unit\""
  )
  (eq "s3s-fs: version of scripts/install-test-servers.sh" s3s-fs.version "0.14.1")
  (eq "s3s-fs: binary feature" s3s-fs.buildFeatures [ "binary" ])
  (that "s3s-fs: its Cargo.lock is there" (builtins.pathExists s3s-fs.cargoLock.lockFile))

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
