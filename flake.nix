{
  description = "glidefs: block devices over ublk with a local write-back cache and S3-compatible durable storage";

  # The module and tests need NixOS >= 25.05 (system.build.images, runNixOSTest);
  # the Rust toolchain must be new enough for Cargo.lock (rustc >= 1.91 for the
  # locked crates, >= 1.92 for the s3s-fs test fixture), which 25.05 (1.86) and
  # 25.11 are not: hence the 26.05 release branch.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems =
        f:
        lib.genAttrs systems (
          system: f system (nixpkgs.legacyPackages.${system}.extend self.overlays.default)
        );
      gitRev = self.shortRev or self.dirtyShortRev or null;
      gitDirty = !(self ? shortRev);

      # nixfmt is the RFC 166 formatter from 25.11 on; 25.05 calls it nixfmt-rfc-style.
      nixfmtFor =
        pkgs: if lib.versionAtLeast lib.trivial.release "25.11" then pkgs.nixfmt else pkgs.nixfmt-rfc-style;

      # Only the .nix files, so formatting checks do not rebuild on every Rust change.
      nixFiles = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.fileFilter (file: file.hasExt "nix") ./.;
      };
    in
    {
      overlays.default = final: _prev: {
        glidefs = final.callPackage ./nixos/package.nix { inherit gitRev gitDirty; };
      };

      # services.glidefs, with the package defaulting to this flake's build.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos/module.nix ];
          services.glidefs.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      packages = forAllSystems (
        system: pkgs:
        {
          default = pkgs.glidefs;
          inherit (pkgs) glidefs;
        }
        // lib.optionalAttrs (system == "x86_64-linux") {
          # Bootable UEFI disk images of nixosConfigurations.appliance.
          appliance-image = self.nixosConfigurations.appliance.config.system.build.images.qemu-efi;
          appliance-image-raw = self.nixosConfigurations.appliance.config.system.build.images.raw-efi;
        }
      );

      nixosConfigurations.appliance = lib.nixosSystem {
        modules = [
          self.nixosModules.default
          ./nixos/appliance.nix
          { nixpkgs.hostPlatform = "x86_64-linux"; }
        ];
      };

      devShells = forAllSystems (
        _system: pkgs: {
          default = pkgs.mkShell {
            # cargo, rustc and the bindgen hook (LIBCLANG_PATH) of the package build.
            inputsFrom = [ pkgs.glidefs ];
            packages = [
              pkgs.clippy
              pkgs.rustfmt
              pkgs.rust-analyzer
              pkgs.fio
              pkgs.jq
              pkgs.curl
              pkgs.deadnix
              (nixfmtFor pkgs)
            ];
          };
        }
      );

      formatter = forAllSystems (_system: nixfmtFor);

      checks = forAllSystems (
        system: pkgs:
        {
          package = pkgs.glidefs;

          clippy = pkgs.glidefs.overrideAttrs (old: {
            pname = "glidefs-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              cargo clippy --all-targets --offline -- -D warnings
              runHook postBuild
            '';
            installPhase = ''
              mkdir -p $out
            '';
            doCheck = false;
          });

          nixfmt = pkgs.runCommand "glidefs-nixfmt-check" { nativeBuildInputs = [ (nixfmtFor pkgs) ]; } ''
            cd ${nixFiles}
            find . -name '*.nix' -print0 | xargs -0 nixfmt --check
            touch $out
          '';

          deadnix = pkgs.runCommand "glidefs-deadnix-check" { nativeBuildInputs = [ pkgs.deadnix ]; } ''
            deadnix --fail ${nixFiles}
            touch $out
          '';
        }
        // lib.optionalAttrs (system == "x86_64-linux") {
          appliance = self.nixosConfigurations.appliance.config.system.build.toplevel;

          # What nixos/eval-test asserts against its stand-in lib, here against the
          # real nixpkgs: the rendered unit file and modprobe config of the appliance.
          module-unit =
            let
              inherit (self.nixosConfigurations.appliance) config;
            in
            pkgs.runCommand "glidefs-module-unit-check"
              {
                modprobe = config.boot.extraModprobeConfig;
              }
              ''
                unit=${config.systemd.units."glidefs.service".unit}/glidefs.service
                for line in Type=notify Restart=always KillMode=mixed PrivateDevices=false \
                    CapabilityBoundingSet=CAP_SYS_ADMIN DevicePolicy=closed \
                    "DeviceAllow=/dev/ublk-control rw" "DeviceAllow=char-ublk-char rw" \
                    LoadCredential=s3:/etc/glidefs/s3-credentials; do
                  grep -qxF "$line" "$unit" || { echo "glidefs.service lacks: $line"; cat "$unit"; exit 1; }
                done
                grep -q '^ExecStart=/nix/store/[^ ]*/bin/glidefs run --config /nix/store/[^ ]*-glidefs-checked.toml$' "$unit" \
                  || { echo "unexpected ExecStart"; cat "$unit"; exit 1; }
                grep -qxF "options ublk_drv ublks_max=20000" <<<"$modprobe" \
                  || { echo "no ublks_max in: $modprobe"; exit 1; }
                touch $out
              '';
        }
        // import ./nixos/tests {
          inherit pkgs;
          glidefsModule = self.nixosModules.default;
        }
      );
    };
}
