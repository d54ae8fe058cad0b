# A stand-in for the few `pkgs` attributes nixos/module.nix uses. Derivations are
# plain attribute sets with a fake store path as `outPath`, so interpolating them
# works; `formats.toml` renders real TOML text (see toml.nix) into `.text`.
{ lib }:
let
  storePath = name: "${builtins.storeDir}/00000000000000000000000000000000-${name}";
  fakeDrv =
    name: attrs:
    {
      type = "derivation";
      inherit name;
      outPath = storePath name;
    }
    // attrs;

  # As nixpkgs' pkgs-lib/formats.nix: the recursion goes through the type with its
  # description set, or the real lib's description of it never ends.
  tomlValue =
    lib.types.oneOf [
      lib.types.bool
      lib.types.int
      lib.types.float
      lib.types.str
      lib.types.path
      (lib.types.attrsOf tomlValue)
      (lib.types.listOf tomlValue)
    ]
    // {
      description = "TOML value";
    };

  platform = {
    system = "x86_64-linux";
    canExecute = _: true;
  };
in
{
  formats.toml = _: {
    type = tomlValue;
    generate =
      name: value:
      fakeDrv name {
        inherit value;
        text = import ./toml.nix { inherit lib; } value;
      };
  };

  runCommand =
    name: env: buildCommand:
    fakeDrv name (env // { inherit buildCommand; });

  stdenv = {
    buildPlatform = platform;
    hostPlatform = platform;
  };

  glidefs = fakeDrv "glidefs-0.1.0" {
    pname = "glidefs";
    version = "0.1.0";
    meta.mainProgram = "glidefs";
  };

  fio = fakeDrv "fio" { };
  curl = fakeDrv "curl" { };
  jq = fakeDrv "jq" { };
  util-linux = fakeDrv "util-linux" { };
  kmod = fakeDrv "kmod" { };
  e2fsprogs = fakeDrv "e2fsprogs" { };

  linuxPackages_6_12.kernel = fakeDrv "linux-6.12.41" { version = "6.12.41"; };
  linuxPackages_6_1.kernel = fakeDrv "linux-6.1.140" { version = "6.1.140"; };
}
