# Declarations of the NixOS options that nixos/module.nix writes to, with the
# types nixpkgs gives them (nixos/modules/system/boot/kernel.nix, modprobe.nix,
# misc/assertions.nix, services/networking/firewall.nix, system/boot/systemd.nix,
# lib/systemd-unit-options.nix). Only what the module uses is declared, so a
# misspelt option name in the module fails the evaluation test as it would on NixOS.
{ lib, ... }:
let
  inherit (lib) mkOption types;

  # nixpkgs' `unitOption`: lists are concatenated, scalars must agree.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: values:
      if builtins.any builtins.isList values then
        builtins.concatMap (v: if builtins.isList v then v else [ v ]) values
      else
        lib.mergeEqualOption loc values;
  };
  unitSection = types.attrsOf unitOption;
  strList = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };

  service = types.submodule {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      documentation = strList;
      wantedBy = strList;
      requiredBy = strList;
      after = strList;
      before = strList;
      wants = strList;
      requires = strList;
      path = mkOption {
        type = types.listOf types.raw;
        default = [ ];
      };
      environment = mkOption {
        type = types.attrsOf (types.nullOr types.str);
        default = { };
      };
      unitConfig = mkOption {
        type = unitSection;
        default = { };
      };
      serviceConfig = mkOption {
        type = unitSection;
        default = { };
      };
      restartTriggers = mkOption {
        type = types.listOf types.raw;
        default = [ ];
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
    };
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.raw;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    meta.doc = mkOption {
      type = types.path;
    };
    boot = {
      kernelPackages = mkOption {
        type = types.raw;
      };
      kernelModules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      extraModprobeConfig = mkOption {
        type = types.lines;
        default = "";
      };
      kernelParams = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
    };
    systemd.services = mkOption {
      type = types.attrsOf service;
      default = { };
    };
  };
}
