# NixOS module for glidefs: block devices served through the kernel's ublk driver,
# with a local write-back cache and the durable copy in S3-compatible storage.
#
# Invariants this module keeps (docs/nixos.md explains them):
# - ublk_drv is loaded at boot (boot.kernelModules), so the service can keep
#   ProtectKernelModules on; `maxDevices` becomes the module's `ublks_max`.
# - A stop (SIGTERM) or a crash (kill -9) of the daemon leaves its devices QUIESCED
#   in the kernel (they are created with USER_RECOVERY); the restarted daemon
#   recovers them. Restart=always brings it back after a short delay and never
#   gives up, because a device's I/O waits until a daemon recovers it.
# - Secrets never go into `settings` (the rendered file is world-readable in the
#   Nix store): S3 keys come from `credentialsFile` (LoadCredential) or
#   `environmentFile` (AWS_* variables), the encryption master key from
#   `encryptionKeyFile` and earlier keys from `oldEncryptionKeyFiles`
#   (LoadCredential).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;

  cfg = config.services.glidefs;
  settingsFormat = pkgs.formats.toml { };

  # systemd places LoadCredential= files here for the system service `glidefs`.
  credentialPath = "/run/credentials/glidefs.service/s3";
  masterKeyPath = "/run/credentials/glidefs.service/master-key";
  # Earlier master keys (rotation): credential old-master-key-N for the Nth file.
  oldKeyIds = lib.imap0 (i: _: "old-master-key-${toString i}") cfg.oldEncryptionKeyFiles;
  oldKeyPaths = map (id: "/run/credentials/glidefs.service/${id}") oldKeyIds;
  loadCredentials =
    lib.optional (cfg.credentialsFile != null) "s3:${cfg.credentialsFile}"
    ++ lib.optional (cfg.encryptionKeyFile != null) "master-key:${cfg.encryptionKeyFile}"
    ++ lib.zipListsWith (id: file: "${id}:${file}") oldKeyIds cfg.oldEncryptionKeyFiles;

  generatedConfig = settingsFormat.generate "glidefs.toml" cfg.settings;
  checkedConfig =
    pkgs.runCommand "glidefs-checked.toml"
      {
        configFile = generatedConfig;
      }
      ''
        ${cfg.package}/bin/glidefs check-config --skip-key-files "$configFile"
        cp "$configFile" "$out"
      '';
  configFile = if cfg.checkConfig then checkedConfig else generatedConfig;

  # "127.0.0.1:8080", "[::1]:8080", "0.0.0.0:8080" or a unix socket path, which
  # the daemon also accepts as "unix:/path".
  listen = cfg.settings.api.listen;
  socketPath = lib.removePrefix "unix:" listen;
  isSocket = lib.hasPrefix "/" socketPath;
  hostPort = builtins.match "\\[?([^]]*)]?:([0-9]+)" listen;
  apiHost = if hostPort == null then null else builtins.head hostPort;
  apiPort = if hostPort == null then null else lib.toInt (lib.last hostPort);
  apiIsLocal =
    isSocket
    || apiHost == "localhost"
    || apiHost == "::1"
    || (apiHost != null && lib.hasPrefix "127." apiHost);

  storeUrl = cfg.settings.store.url;
  isS3 = lib.hasPrefix "s3://" storeUrl;
  fileStoreDir =
    if lib.hasPrefix "file://" storeUrl then lib.removePrefix "file://" storeUrl else null;

  # Paths the daemon writes besides its StateDirectory and RuntimeDirectory.
  inStateDir = p: p == "/var/lib/glidefs" || lib.hasPrefix "/var/lib/glidefs/" p;
  # Directories under /var/lib/glidefs that systemd creates (StateDirectory=).
  stateDirs = lib.unique (
    [ "glidefs" ]
    ++ map (lib.removePrefix "/var/lib/") (
      builtins.filter (p: p != null && inStateDir p) [
        cfg.settings.cache.dir
        fileStoreDir
      ]
    )
  );
  extraWritable =
    lib.optional (!inStateDir cfg.settings.cache.dir) cfg.settings.cache.dir
    ++ lib.optional (fileStoreDir != null && !inStateDir fileStoreDir) fileStoreDir
    ++ lib.optional (isSocket && !lib.hasPrefix "/run/glidefs/" socketPath) (dirOf socketPath);

  kernelVersion = config.boot.kernelPackages.kernel.version;

  secretKeys = [
    "access_key"
    "access_key_id"
    "secret_key"
    "secret_access_key"
    "session_token"
  ];
  secretsInSettings = builtins.filter (k: (cfg.settings.store or { }) ? ${k}) secretKeys;

  isOutsideStore =
    p: p == null || (lib.hasPrefix "/" p && !(lib.hasPrefix "${builtins.storeDir}/" p));
  # Options naming a secret file (or a list of them) that is not an absolute path
  # outside the store.
  secretFilesInStore = builtins.filter (n: !builtins.all isOutsideStore (lib.toList cfg.${n})) [
    "credentialsFile"
    "environmentFile"
    "encryptionKeyFile"
    "oldEncryptionKeyFiles"
  ];
in
{
  meta.doc = ./module.md;

  options.services.glidefs = {
    enable = lib.mkEnableOption "glidefs, block devices over ublk backed by S3-compatible storage";

    package = lib.mkPackageOption pkgs "glidefs" {
      extraDescription = "The flake's `nixosModules.default` sets it to the flake's own build.";
    };

    settings = mkOption {
      default = { };
      description = ''
        The daemon's configuration, rendered to TOML and passed as
        `glidefs run --config <file>`. Keys are the daemon's own (snake_case), for
        example `store.endpoint`, `store.region`, `store.path_style`,
        `cache.dirty_limit`, `cache.flush_interval`, `cache.flush_mode`,
        `ublk.workers`, `ublk.queues`, `ublk.queue_depth`, `ublk.pool_slots`.
        The file lands in the world-readable Nix store: never put S3 keys here,
        use `credentialsFile` or `environmentFile`; the encryption master key
        comes from `encryptionKeyFile` (`store.encryption.key_file` names only
        the file).
      '';
      example = lib.literalExpression ''
        {
          store = {
            url = "s3://volumes/host-a";
            endpoint = "https://s3.example.internal";
            region = "eu-central-1";
            path_style = true;
          };
          cache = {
            dirty_limit = "4G";
            flush_interval = "5s";
            flush_mode = "local";
          };
          ublk.queue_depth = 64;
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          store.url = mkOption {
            type = types.str;
            default = "file:///var/lib/glidefs/store";
            example = "s3://my-bucket/glidefs";
            description = ''
              Where the durable copy lives: `file:///dir` (a local directory, for
              single-host use and tests) or `s3://bucket/prefix` (with
              `store.endpoint`, `store.region` and `store.path_style` for
              S3-compatible services).
            '';
          };
          cache.dir = mkOption {
            type = types.str;
            default = "/var/lib/glidefs/cache";
            description = ''
              Directory of the local write-back cache (cache files, block maps,
              journals). It holds acknowledged data that may not be in the store
              yet, so it must survive reboots: the default is under the
              service's StateDirectory, apart from a `file://` store, so that
              wiping the cache (a cold wake) never touches the store. Paths
              under /var/lib/glidefs are created by systemd; other paths must
              exist and are added to ReadWritePaths.
            '';
          };
          api.listen = mkOption {
            type = types.str;
            default = "127.0.0.1:8080";
            example = "/run/glidefs/api.sock";
            description = ''
              Where the HTTP API and metrics listen: `host:port` (IPv6 as
              `[addr]:port`) or the absolute path of a unix socket, optionally
              written `unix:/path` (for example
              under /run/glidefs, the service's RuntimeDirectory). The API has
              no authentication of its own: keep it on loopback or a socket
              unless the network is trusted.
            '';
          };
          limits.max_exports = mkOption {
            type = types.ints.positive;
            default = 20000;
            description = "Most exports (devices) the daemon serves at once.";
          };
        };
      };
    };

    maxDevices = mkOption {
      type = types.ints.between 1 1048576;
      default = cfg.settings.limits.max_exports;
      defaultText = lib.literalExpression "config.services.glidefs.settings.limits.max_exports";
      description = ''
        Sets the ublk_drv module parameter `ublks_max` (kernel default 64) through
        `boot.extraModprobeConfig`: before kernel 6.15 it caps the number of ublk
        devices a privileged server may create. It takes effect when ublk_drv is
        loaded, that is at the next boot (on kernels >= 6.7 it can also be written
        at runtime to /sys/module/ublk_drv/parameters/ublks_max).
      '';
    };

    expediteRcu = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Adds `rcupdate.rcu_expedited=1` to the kernel command line. When the daemon
        dies (kill -9, a crash) the kernel tears its devices down one RCU grace
        period after another before the next daemon may recover them, and deleting
        devices waits the same way. With expedited grace periods the recovery of
        1,025 devices took 9.0 s instead of 16.2 s in a 2-vCPU test VM, and deleting
        them 75 s instead of 112 s (docs/performance.md). Expedited grace periods
        interrupt every CPU, which latency-sensitive work on the host may notice:
        leave it off unless the recovery time of many devices matters. Takes effect
        at the next boot (at runtime: `echo 1 > /sys/kernel/rcu_expedited`).
      '';
    };

    credentialsFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/glidefs-s3";
      description = ''
        Absolute path (outside the Nix store) of the S3 credentials file, in a
        format the daemon's `[store] credentials_file` reads (an AWS credentials
        file, or `AWS_ACCESS_KEY_ID=...` / `AWS_SECRET_ACCESS_KEY=...` lines). It is passed with
        systemd's LoadCredential, so only the service can read its copy, which
        the module points `settings.store.credentials_file` at
        (/run/credentials/glidefs.service/s3).
      '';
    };

    encryptionKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/glidefs-master-key";
      description = ''
        Absolute path (outside the Nix store) of the master key for client-side
        encryption: 32 raw bytes or 64 hex digits (for example from
        `openssl rand -hex 32`), readable by root only. It is passed with
        systemd's LoadCredential, so only the service can read its copy, which
        the module points `settings.store.encryption.key_file` at
        (/run/credentials/glidefs.service/master-key). Setting it turns
        encryption of new volumes on; with `null` (and no `store.encryption` in
        `settings`) new volumes are plaintext. Earlier keys, during a rotation,
        go in `oldEncryptionKeyFiles`.
      '';
    };

    oldEncryptionKeyFiles = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/run/secrets/glidefs-master-key.old" ];
      description = ''
        Absolute paths (outside the Nix store) of earlier master keys, during a
        rotation: the daemon still opens volumes whose data keys they wrapped,
        and wraps those data keys again by the current key
        (`encryptionKeyFile`) when it opens them. Rotate by moving the current
        key's file here and setting `encryptionKeyFile` to the new key; remove
        an old key once every volume has been opened with the new one. Each
        file is passed with systemd's LoadCredential as credential
        `old-master-key-N` (N = 0, 1, … in list order), and the module adds
        /run/credentials/glidefs.service/old-master-key-N to
        `settings.store.encryption.old_key_files` (next to any paths listed
        there). Needs `encryptionKeyFile`.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/glidefs.env";
      description = ''
        Absolute path (outside the Nix store) of a systemd EnvironmentFile, for
        example with `AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...`
        lines, which the daemon reads when no credentials file is configured.
      '';
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the API's TCP port in the firewall. Only allowed when
        `settings.api.listen` is not a loopback address or a unix socket
        (there would be nothing to open).
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
      defaultText = lib.literalExpression "pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform";
      description = ''
        Validate the rendered configuration at build time with
        `glidefs check-config --skip-key-files` (which parses and checks it
        without touching the store, the cache, the kernel or the key files, which
        exist only at run time). Turn it off when cross-compiling.
      '';
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = configFile;
      defaultText = lib.literalExpression "the rendered (and checked) settings";
      description = "The configuration file the service runs with.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.versionAtLeast kernelVersion "6.5";
        message = ''
          services.glidefs needs kernel >= 6.5 (ublk USER_COPY), but
          boot.kernelPackages has ${kernelVersion}. Set for example
          boot.kernelPackages = pkgs.linuxPackages_6_12;
        '';
      }
      {
        assertion = secretsInSettings == [ ];
        message = ''
          services.glidefs.settings.store has secret keys
          (${lib.concatStringsSep ", " secretsInSettings}); settings are copied to the
          world-readable Nix store. Put them in a file and set
          services.glidefs.credentialsFile (or services.glidefs.environmentFile
          with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) instead.
        '';
      }
      {
        assertion = secretFilesInStore == [ ];
        message = ''
          ${lib.concatMapStringsSep ", " (n: "services.glidefs.${n}") secretFilesInStore}:
          a secret file must be an absolute path outside ${builtins.storeDir} (a
          secret in the store is readable by every user), for example
          "/run/secrets/glidefs-s3".
        '';
      }
      {
        assertion =
          cfg.credentialsFile == null
          || (cfg.settings.store.credentials_file or credentialPath) == credentialPath;
        message = ''
          services.glidefs.credentialsFile is loaded with LoadCredential and read
          by the daemon at ${credentialPath}, but settings.store.credentials_file
          is set to another path. Remove settings.store.credentials_file.
        '';
      }
      {
        assertion =
          cfg.encryptionKeyFile == null
          || (cfg.settings.store.encryption.key_file or masterKeyPath) == masterKeyPath;
        message = ''
          services.glidefs.encryptionKeyFile is loaded with LoadCredential and read
          by the daemon at ${masterKeyPath}, but
          settings.store.encryption.key_file is set to another path. Remove
          settings.store.encryption.key_file.
        '';
      }
      {
        assertion = cfg.oldEncryptionKeyFiles == [ ] || cfg.encryptionKeyFile != null;
        message = ''
          services.glidefs.oldEncryptionKeyFiles is set but
          services.glidefs.encryptionKeyFile is not: old master keys are only
          accepted next to a current key. To rotate, set encryptionKeyFile to the
          new key and keep the earlier ones in oldEncryptionKeyFiles.
        '';
      }
      {
        assertion = isSocket || hostPort != null;
        message = ''
          services.glidefs.settings.api.listen = "${listen}" is neither host:port
          (for example "127.0.0.1:8080" or "[::1]:8080") nor an absolute unix
          socket path (optionally as "unix:/path").
        '';
      }
      {
        assertion = !cfg.openFirewall || !apiIsLocal;
        message = ''
          services.glidefs.openFirewall is set, but the API listens on "${listen}",
          which is not reachable from the network. Set settings.api.listen to a
          non-loopback address or leave openFirewall off.
        '';
      }
      {
        assertion = lib.hasPrefix "/" cfg.settings.cache.dir;
        message = ''
          services.glidefs.settings.cache.dir = "${cfg.settings.cache.dir}" must be an
          absolute path.
        '';
      }
    ];

    warnings =
      lib.optional (cfg.maxDevices < cfg.settings.limits.max_exports) ''
        services.glidefs.maxDevices (${toString cfg.maxDevices}) is below
        settings.limits.max_exports (${toString cfg.settings.limits.max_exports}):
        the kernel will refuse devices beyond ublks_max before kernel 6.15.
      ''
      ++ lib.optional (isS3 && cfg.credentialsFile == null && cfg.environmentFile == null) ''
        services.glidefs uses an S3 store (${storeUrl}) but neither credentialsFile
        nor environmentFile is set: the daemon only sees AWS_* variables you pass
        yourself.
      '';

    services.glidefs.settings.store.credentials_file = lib.mkIf (cfg.credentialsFile != null) (
      lib.mkDefault credentialPath
    );
    # The mkIf guards the whole table: a false one on key_file would still render
    # an empty [store.encryption], which the daemon rejects (no key_file).
    # old_key_files is not a default: lists from `settings` and from the module
    # are concatenated, so neither loses the other's keys.
    services.glidefs.settings.store.encryption = lib.mkIf (cfg.encryptionKeyFile != null) {
      key_file = lib.mkDefault masterKeyPath;
      old_key_files = lib.mkIf (oldKeyPaths != [ ]) oldKeyPaths;
    };

    boot.kernelModules = [ "ublk_drv" ];
    boot.kernelParams = lib.mkIf cfg.expediteRcu [ "rcupdate.rcu_expedited=1" ];
    boot.extraModprobeConfig = ''
      options ublk_drv ublks_max=${toString cfg.maxDevices}
    '';

    environment.systemPackages = [ cfg.package ];

    networking.firewall.allowedTCPPorts = lib.optional (cfg.openFirewall && !apiIsLocal) apiPort;

    systemd.services.glidefs = {
      description = "glidefs block devices (ublk, write-back cache, S3-compatible store)";
      wantedBy = [ "multi-user.target" ];
      after = [ "systemd-modules-load.service" ] ++ lib.optional isS3 "network-online.target";
      wants = lib.optional isS3 "network-online.target";
      # A config change restarts the daemon in place during `switch`: SIGTERM leaves
      # the devices QUIESCED and the new daemon recovers them (I/O pauses, nothing
      # is lost). Set restartIfChanged = false to defer that to a manual restart.
      restartTriggers = [ configFile ];
      stopIfChanged = false;

      unitConfig = {
        # Never give up restarting: the devices' I/O waits for a daemon.
        StartLimitIntervalSec = 0;
      };

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/glidefs run --config ${configFile}";
        Restart = "always";
        RestartSec = "1s";
        RestartSteps = 5;
        RestartMaxDelaySec = "30s";
        # Recovering many devices takes time (upstream measured ~56 ms each); the
        # daemon reports READY=1 only when every device is served again.
        TimeoutStartSec = "15min";
        # KillMode=mixed: SIGTERM goes to the daemon only, so it can leave its
        # devices for the next daemon in an orderly way; whatever else is left in
        # the cgroup is then SIGKILLed. After a kill -9 of the daemon, systemd also
        # kills any leftover process before restarting, so nothing can keep a
        # /dev/ublkcN open: the kernel sees the server gone, the devices go
        # QUIESCED, and the next daemon's START_USER_RECOVERY does not hit EBUSY.
        # KillMode=process would leave such processes (a helper that inherited a
        # char device fd) alive across the restart and block recovery.
        KillMode = "mixed";
        # The daemon is cheaper to lose than the guests whose I/O it serves.
        OOMScoreAdjust = -900;

        LoadCredential = lib.mkIf (loadCredentials != [ ]) loadCredentials;
        EnvironmentFile = lib.mkIf (cfg.environmentFile != null) cfg.environmentFile;

        # Write-back cache and local store: state (dirty data), not cache.
        StateDirectory = stateDirs;
        StateDirectoryMode = "0700";
        ReadWritePaths = extraWritable;
        # /run/glidefs for an API socket; /run/ublksrvd is where libublk keeps
        # per-device JSON. Kept over restarts: the devices outlive the daemon.
        RuntimeDirectory = [
          "glidefs"
          "ublksrvd"
        ];
        RuntimeDirectoryPreserve = "yes";
        LimitNOFILE = 1048576;

        # ublk: ADD_DEV and USER_COPY need CAP_SYS_ADMIN in the initial user
        # namespace, so the daemon runs as root with only that capability (plus
        # CAP_NET_BIND_SERVICE for an API port below 1024).
        CapabilityBoundingSet = [
          "CAP_SYS_ADMIN"
        ]
        ++ lib.optional (apiPort != null && apiPort < 1024) "CAP_NET_BIND_SERVICE";
        NoNewPrivileges = true;
        # /dev/ublk-control and the /dev/ublkcN nodes created later must be
        # visible: no private /dev; the device cgroup allows exactly those.
        PrivateDevices = false;
        DevicePolicy = "closed";
        DeviceAllow = [
          "/dev/ublk-control rw"
          "char-ublk-char rw"
        ];
        # The daemon runs in its own mount namespace (libublk-rs #50: a shared one
        # can deadlock on exit); this also comes with the Protect* options below.
        PrivateMounts = true;
        ProtectSystem = "strict";
        # strict leaves /run and (with PrivateDevices = false) /dev/shm writable;
        # the RuntimeDirectory entries stay writable.
        ReadOnlyPaths = [
          "/run"
          "/dev/shm"
        ];
        ProtectHome = true;
        PrivateTmp = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        # /proc shows processes only; the one system file the daemon reads, the
        # boot id (power-loss detection), is bound where it looks next.
        ProcSubset = "pid";
        BindReadOnlyPaths = [ "/proc/sys/kernel/random/boot_id:/run/glidefs/boot_id" ];
        RestrictNamespaces = true;
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        # @system-service includes io_uring (@aio) and sched_setaffinity
        # (@resources, needed to pin workers), so ~@resources is not used.
        # umount2: the daemon detaches ublk mounts from its own (private) mount
        # namespace so that its exit never waits on a filesystem only it could sync.
        SystemCallFilter = [
          "@system-service"
          "umount2"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
        UMask = "0077";
      };
    };
  };
}
