# A fake `nixpkgs` flake input, just enough to call flake.nix's `outputs` and look
# at the shape of what it returns (attribute names, the package's build
# attributes, which tests exist) without nixpkgs. Derivations are attribute sets
# that record their arguments; nothing here builds or is checked against nixpkgs.
{ lib, pkgs }:
let
  fakeDrv =
    name: attrs:
    {
      type = "derivation";
      inherit name;
      outPath = "${builtins.storeDir}/00000000000000000000000000000000-${name}";
    }
    // attrs;

  buildRustPackage =
    args:
    let
      drv = fakeDrv "${args.pname}-${args.version}" args;
    in
    drv // { overrideAttrs = f: drv // f args; };

  fix =
    f:
    let
      x = f x;
    in
    x;

  # The package set as a fixed point, so `callPackage` and `extend` see overlays.
  packagesFor =
    system:
    fix (
      let
        scope =
          self:
          pkgs
          // {
            inherit system;
            callPackage =
              f: args:
              let
                fn = import f;
              in
              fn (builtins.intersectAttrs (builtins.functionArgs fn) (self // { lib = fakeLib; }) // args);
            extend = overlay: fix (s: scope s // overlay s (scope s));
            rustPlatform = {
              inherit buildRustPackage;
              bindgenHook = fakeDrv "rust-bindgen-hook" { };
            };
            fetchCrate = args: fakeDrv "${args.pname}-${args.version}.tar.gz" args;
            mkShell = args: fakeDrv "nix-shell" args;
            testers.runNixOSTest = module: fakeDrv "vm-test-run" { inherit module; };
            clippy = fakeDrv "clippy" { };
            rustfmt = fakeDrv "rustfmt" { };
            rust-analyzer = fakeDrv "rust-analyzer" { };
            deadnix = fakeDrv "deadnix" { };
            nixfmt = fakeDrv "nixfmt" { };
            nixfmt-rfc-style = throw "nixfmt-rfc-style is only for releases before 25.11";
          };
      in
      scope
    );
  fakeLib = lib // {
    genAttrs =
      names: f:
      builtins.listToAttrs (
        map (n: {
          name = n;
          value = f n;
        }) names
      );
    importTOML = path: builtins.fromTOML (builtins.readFile path);
    trivial.release = "26.05";
    licenses.asl20 = "asl20";
    platforms.linux = [
      "x86_64-linux"
      "aarch64-linux"
    ];
    fileset = {
      toSource = args: fakeDrv "source" { fileset = args.fileset; };
      unions = sets: sets;
      maybeMissing = p: p;
      fileFilter = _: p: p;
    };
    nixosSystem =
      args:
      let
        image = name: fakeDrv "nixos-image-${name}" { };
      in
      {
        inherit (args) modules;
        config.boot.extraModprobeConfig = "options ublk_drv ublks_max=20000\n";
        config.systemd.units."glidefs.service".unit = fakeDrv "unit-glidefs.service" { };
        config.system.build = {
          toplevel = fakeDrv "nixos-system-appliance" { };
          images = {
            qemu-efi = image "qemu-efi";
            raw-efi = image "raw-efi";
          };
        };
      };
  };
in
{
  lib = fakeLib;
  legacyPackages = {
    x86_64-linux = packagesFor "x86_64-linux";
    aarch64-linux = packagesFor "aarch64-linux";
  };
}
