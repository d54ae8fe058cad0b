# The glidefs appliance: a small NixOS system that boots (UEFI, serial console),
# loads ublk_drv on a 6.12 kernel and runs glidefs against an S3-compatible store
# whose keys it reads from a credentials file put on the machine by the operator.
# Built as a disk image with `nix build .#appliance-image` (qcow2) or
# `.#appliance-image-raw` through nixpkgs' `system.build.images`.
# Everything here is a default: override it in a module of your own (docs/nixos.md).
{ lib, pkgs, ... }:
{
  system.stateVersion = "25.05";

  boot.kernelPackages = pkgs.linuxPackages_6_12;
  # Serial console first-class: kernel messages and a login prompt on ttyS0.
  boot.kernelParams = [
    "console=tty0"
    "console=ttyS0,115200n8"
  ];
  boot.loader.systemd-boot.enable = lib.mkDefault true;
  boot.loader.efi.canTouchEfiVariables = false;
  boot.loader.timeout = lib.mkDefault 1;
  boot.growPartition = true;

  # The image modules (disk-image.nix) define the same file systems with a higher
  # priority; these make the configuration itself buildable (nix flake check).
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
    autoResize = true;
  };
  fileSystems."/boot" = {
    device = "/dev/disk/by-label/ESP";
    fsType = "vfat";
  };

  networking.hostName = lib.mkDefault "glidefs";
  networking.useDHCP = lib.mkDefault true;

  # No remote login unless the operator asks for it (and brings a key).
  services.openssh.enable = lib.mkDefault false;

  services.glidefs = {
    enable = true;
    # Put the S3 credentials here (an AWS credentials file or KEY=value lines);
    # until the file exists the service fails and systemd retries, at most every
    # 30 s, so it starts by itself once the file is there.
    credentialsFile = lib.mkDefault "/etc/glidefs/s3-credentials";
    settings.store = {
      url = lib.mkDefault "s3://glidefs/appliance";
      region = lib.mkDefault "us-east-1";
    };
  };

  environment.systemPackages = [
    pkgs.fio
    pkgs.curl
    pkgs.jq
  ];

  documentation.enable = lib.mkDefault false;
}
