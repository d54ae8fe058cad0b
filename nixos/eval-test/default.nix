# Evaluation test of nixos/module.nix with the real nixpkgs `lib` (module system,
# types) and, in this folder, the smallest stand-in for the rest: the NixOS options
# the module writes to (nixos-base.nix), the few `pkgs` attributes it uses
# (pkgs.nix, toml.nix) and systemd-lib's unit rendering (unit.nix).
# `nix-instantiate --eval --strict --json nixos/eval-test -I nixpkgs-lib=DIR` (DIR
# holds nixpkgs' lib/, e.g. the unpacked nixpkgs-lib tarball) gives a list of
# { name; ok; detail; } (scripts/check-nix.sh prints it and fails on any !ok), the
# rendered settings for a TOML round trip outside Nix, and the rendered
# serviceConfig of the default configuration, which scripts/check-nix.sh compares
# with packaging/systemd/glidefs.service directive by directive.
let
  lib = import <nixpkgs-lib/lib>;
  pkgs = import ./pkgs.nix { inherit lib; };
  renderUnit = import ./unit.nix { inherit lib; };

  eval =
    modules:
    lib.evalModules {
      modules = [
        ./nixos-base.nix
        ../module.nix
      ]
      ++ modules;
      specialArgs = { inherit pkgs; };
    };

  # A configuration with the module enabled on a 6.12 kernel, plus `extra`.
  withGlidefs =
    extra:
    eval [
      {
        boot.kernelPackages = pkgs.linuxPackages_6_12;
        services.glidefs.enable = true;
      }
      extra
    ];

  inherit (import ./checks.nix)
    contains
    eq
    failedAssertions
    hasMessage
    that
    throws
    ;

  store = builtins.storeDir + "/00000000000000000000000000000000";

  # ---- sample: S3 store, credentials and master key files, API on all interfaces ---
  s3 = withGlidefs {
    services.glidefs = {
      maxDevices = 4096;
      expediteRcu = true;
      credentialsFile = "/run/secrets/glidefs-s3";
      encryptionKeyFile = "/run/secrets/glidefs-master-key";
      openFirewall = true;
      settings = {
        store = {
          url = "s3://volumes/host-a";
          endpoint = "http://127.0.0.1:9000";
          region = "us-east-1";
          path_style = true;
        };
        cache = {
          dirty_limit = "1G";
          flush_interval = "5s";
          flush_mode = "local";
        };
        api.listen = "0.0.0.0:8080";
        ublk = {
          workers = 2;
          queues = 2;
          queue_depth = 64;
          pool_slots = 256;
        };
        limits.max_exports = 4096;
      };
    };
  };
  s3c = s3.config;
  s3svc = s3c.systemd.services.glidefs;
  s3sc = s3svc.serviceConfig;
  s3unit = renderUnit s3svc;
  s3cfgFile = s3c.services.glidefs.configFile;
  s3toml = s3cfgFile.configFile.text;

  # ---- sample: all defaults ------------------------------------------------------
  defaults = withGlidefs { };
  dc = defaults.config;
  dsc = dc.systemd.services.glidefs.serviceConfig;

  # ---- broken or edge configurations ---------------------------------------------
  oldKernel = eval [
    {
      boot.kernelPackages = pkgs.linuxPackages_6_1;
      services.glidefs.enable = true;
    }
  ];
  secretInSettings = withGlidefs { services.glidefs.settings.store.secret_access_key = "hunter2"; };
  loopbackFirewall = withGlidefs { services.glidefs.openFirewall = true; };
  otherCredPath = withGlidefs {
    services.glidefs.credentialsFile = "/run/secrets/s3";
    services.glidefs.settings.store.credentials_file = "/etc/glidefs/s3";
  };
  secretInStore = withGlidefs {
    services.glidefs.environmentFile = "${builtins.storeDir}/abc-glidefs.env";
  };
  keyInStore = withGlidefs {
    services.glidefs.encryptionKeyFile = "${builtins.storeDir}/abc-glidefs-master-key";
  };
  relativeKey = withGlidefs { services.glidefs.encryptionKeyFile = "glidefs-master-key"; };
  otherKeyPath = withGlidefs {
    services.glidefs.encryptionKeyFile = "/run/secrets/glidefs-master-key";
    services.glidefs.settings.store.encryption.key_file = "/etc/glidefs/master-key";
  };
  badListen = withGlidefs { services.glidefs.settings.api.listen = "localhost"; };
  nullSetting = withGlidefs { services.glidefs.settings.store.endpoint = null; };
  typo = withGlidefs { services.glidefs.maxDevice = 10; };
  disabled = eval [ { boot.kernelPackages = pkgs.linuxPackages_6_12; } ];
  unchecked = withGlidefs { services.glidefs.checkConfig = false; };
  socket = withGlidefs { services.glidefs.settings.api.listen = "/srv/glidefs/api.sock"; };
  unixSocket = withGlidefs { services.glidefs.settings.api.listen = "unix:/run/glidefs/api.sock"; };
  lowPort = withGlidefs { services.glidefs.settings.api.listen = "[::]:443"; };
  elsewhere = withGlidefs {
    services.glidefs.settings = {
      cache.dir = "/srv/glidefs-cache";
      store.url = "file:///srv/glidefs-store";
    };
  };
  envFile = withGlidefs {
    services.glidefs.environmentFile = "/run/secrets/glidefs.env";
    services.glidefs.settings.store.url = "s3://b/p";
  };
  keyOnly = withGlidefs { services.glidefs.encryptionKeyFile = "/run/secrets/glidefs-master-key"; };
  oldKeys = withGlidefs {
    services.glidefs.encryptionKeyFile = "/run/secrets/glidefs-master-key";
    services.glidefs.settings.store.encryption.old_key_files = [
      "/run/secrets/glidefs-master-key.old"
    ];
  };
  rotation = withGlidefs {
    services.glidefs.encryptionKeyFile = "/run/secrets/glidefs-master-key";
    services.glidefs.oldEncryptionKeyFiles = [
      "/run/secrets/glidefs-master-key.1"
      "/run/secrets/glidefs-master-key.2"
    ];
  };
  rotationc = rotation.config;
  rotationWithSettings = withGlidefs {
    services.glidefs.encryptionKeyFile = "/run/secrets/glidefs-master-key";
    services.glidefs.oldEncryptionKeyFiles = [ "/run/secrets/glidefs-master-key.1" ];
    services.glidefs.settings.store.encryption.old_key_files = [ "/etc/glidefs/master-key.0" ];
  };
  oldKeysWithoutKey = withGlidefs {
    services.glidefs.oldEncryptionKeyFiles = [ "/run/secrets/glidefs-master-key.1" ];
  };
  oldKeyInStore = withGlidefs {
    services.glidefs.encryptionKeyFile = "/run/secrets/glidefs-master-key";
    services.glidefs.oldEncryptionKeyFiles = [
      "/run/secrets/glidefs-master-key.1"
      "${builtins.storeDir}/abc-glidefs-master-key.old"
    ];
  };
  relativeOldKey = withGlidefs {
    services.glidefs.encryptionKeyFile = "/run/secrets/glidefs-master-key";
    services.glidefs.oldEncryptionKeyFiles = [ "glidefs-master-key.old" ];
  };
  userPriority = withGlidefs {
    services.glidefs.settings.cache.dir = lib.mkForce "/mnt/cache";
    services.glidefs.settings.cache.dirty_limit = lib.mkDefault "2G";
  };

  expectedS3Toml = ''
    [api]
    listen = "0.0.0.0:8080"

    [cache]
    dir = "/var/lib/glidefs/cache"
    dirty_limit = "1G"
    flush_interval = "5s"
    flush_mode = "local"

    [limits]
    max_exports = 4096

    [store]
    credentials_file = "/run/credentials/glidefs.service/s3"
    endpoint = "http://127.0.0.1:9000"
    path_style = true
    region = "us-east-1"
    url = "s3://volumes/host-a"

    [store.encryption]
    key_file = "/run/credentials/glidefs.service/master-key"

    [ublk]
    pool_slots = 256
    queue_depth = 64
    queues = 2
    workers = 2
  '';

  expectedDefaultToml = ''
    [api]
    listen = "127.0.0.1:8080"

    [cache]
    dir = "/var/lib/glidefs/cache"

    [limits]
    max_exports = 20000

    [store]
    url = "file:///var/lib/glidefs/store"
  '';

  expectedKeyOnlyToml = expectedDefaultToml + ''

    [store.encryption]
    key_file = "/run/credentials/glidefs.service/master-key"
  '';

  expectedRotationToml = expectedDefaultToml + ''

    [store.encryption]
    key_file = "/run/credentials/glidefs.service/master-key"
    old_key_files = ["/run/credentials/glidefs.service/old-master-key-0", "/run/credentials/glidefs.service/old-master-key-1"]
  '';

  checks = [
    # the S3 sample
    # The real module system throws on a definition of an undeclared option.
    (that "s3: no undeclared options are defined" (
      (builtins.tryEval (builtins.deepSeq s3c.services.glidefs.settings s3c.boot.kernelModules)).success
    ))
    (eq "s3: no failed assertions" (failedAssertions s3c) [ ])
    (eq "s3: no warnings" s3c.warnings [ ])
    (eq "s3: rendered TOML" s3toml expectedS3Toml)
    (eq "s3: ExecStart runs the checked config" s3sc.ExecStart
      "${store}-glidefs-0.1.0/bin/glidefs run --config ${store}-glidefs-checked.toml"
    )
    (contains "s3: build-time check-config of the generated file" s3cfgFile.buildCommand
      "/bin/glidefs check-config --skip-key-files \"$configFile\""
    )
    (eq "s3: Type=notify" s3sc.Type "notify")
    (eq "s3: Restart=always" s3sc.Restart "always")
    (eq "s3: small restart delay" s3sc.RestartSec "1s")
    (eq "s3: never stop restarting" s3svc.unitConfig.StartLimitIntervalSec 0)
    (eq "s3: KillMode=mixed" s3sc.KillMode "mixed")
    (eq "s3: StateDirectory (cache only: the store is S3)" s3sc.StateDirectory [
      "glidefs"
      "glidefs/cache"
    ])
    (eq "s3: LimitNOFILE" s3sc.LimitNOFILE 1048576)
    (eq "s3: LoadCredential has the S3 credentials and the master key" s3sc.LoadCredential [
      "s3:/run/secrets/glidefs-s3"
      "master-key:/run/secrets/glidefs-master-key"
    ])
    (that "s3: no EnvironmentFile" (!(s3sc ? EnvironmentFile)))
    (eq "s3: capabilities" s3sc.CapabilityBoundingSet [ "CAP_SYS_ADMIN" ])
    (eq "s3: DeviceAllow" s3sc.DeviceAllow [
      "/dev/ublk-control rw"
      "char-ublk-char rw"
    ])
    (eq "s3: DevicePolicy" s3sc.DevicePolicy "closed")
    (eq "s3: PrivateDevices off" s3sc.PrivateDevices false)
    (eq "s3: ProtectKernelModules on" s3sc.ProtectKernelModules true)
    (eq "s3: ProtectSystem strict" s3sc.ProtectSystem "strict")
    (that "s3: PrivateUsers not set" (!(s3sc ? PrivateUsers)))
    (eq "s3: SystemCallFilter" s3sc.SystemCallFilter [
      "@system-service"
      "umount2"
      "~@privileged"
    ])
    (eq "s3: /run and /dev/shm read-only" s3sc.ReadOnlyPaths [
      "/run"
      "/dev/shm"
    ])
    (eq "s3: after network for S3" s3svc.after [
      "systemd-modules-load.service"
      "network-online.target"
    ])
    (eq "s3: ublk_drv loaded" s3c.boot.kernelModules [ "ublk_drv" ])
    (eq "s3: expediteRcu on the kernel command line" s3c.boot.kernelParams [
      "rcupdate.rcu_expedited=1"
    ])
    (eq "s3: ublks_max from maxDevices" s3c.boot.extraModprobeConfig
      "options ublk_drv ublks_max=4096\n"
    )
    (eq "s3: firewall opens the API port" s3c.networking.firewall.allowedTCPPorts [ 8080 ])
    (eq "s3: package installed" (map (p: p.name) s3c.environment.systemPackages) [ "glidefs-0.1.0" ])
    (contains "s3: unit has Type=notify" s3unit "\nType=notify\n")
    (contains "s3: unit has KillMode=mixed" s3unit "\nKillMode=mixed\n")
    (contains "s3: unit has Restart=always" s3unit "\nRestart=always\n")
    (contains "s3: unit has PrivateDevices=false" s3unit "\nPrivateDevices=false\n")
    (contains "s3: unit has both DeviceAllow lines" s3unit
      "\nDeviceAllow=/dev/ublk-control rw\nDeviceAllow=char-ublk-char rw\n"
    )
    (contains "s3: unit has both LoadCredential lines" s3unit
      "\nLoadCredential=s3:/run/secrets/glidefs-s3\nLoadCredential=master-key:/run/secrets/glidefs-master-key\n"
    )
    (contains "s3: unit has ExecStart" s3unit
      "\nExecStart=${store}-glidefs-0.1.0/bin/glidefs run --config "
    )
    (contains "s3: unit is wanted by multi-user.target" s3unit
      "[Install]\nWantedBy=multi-user.target\n"
    )

    # defaults
    (eq "defaults: no failed assertions" (failedAssertions dc) [ ])
    (eq "defaults: rendered TOML" dc.services.glidefs.configFile.configFile.text expectedDefaultToml)
    (eq "defaults: maxDevices follows max_exports" dc.boot.extraModprobeConfig
      "options ublk_drv ublks_max=20000\n"
    )
    (eq "defaults: no firewall port" dc.networking.firewall.allowedTCPPorts [ ])
    (eq "defaults: no kernel parameters" dc.boot.kernelParams [ ])
    (that "defaults: no LoadCredential" (!(dsc ? LoadCredential)))
    (that "defaults: encryption off (no [store.encryption])" (
      !(dc.services.glidefs.settings.store ? encryption)
    ))
    (eq "defaults: no extra writable paths" dsc.ReadWritePaths [ ])
    (eq "defaults: systemd creates the cache and store directories" dsc.StateDirectory [
      "glidefs"
      "glidefs/cache"
      "glidefs/store"
    ])
    (eq "defaults: no network dependency for a file store" dc.systemd.services.glidefs.after [
      "systemd-modules-load.service"
    ])

    # what must be rejected
    (that "kernel 6.1 is rejected (USER_COPY needs 6.5)" (
      hasMessage "needs kernel >= 6.5" oldKernel.config
    ))
    (that "S3 keys in settings are rejected" (hasMessage "secret_access_key" secretInSettings.config))
    (that "openFirewall on loopback is rejected" (
      hasMessage "openFirewall is set" loopbackFirewall.config
    ))
    (that "a second credentials_file path is rejected" (
      hasMessage "credentials_file is set to another path" otherCredPath.config
    ))
    (that "secret files in the Nix store are rejected" (hasMessage "outside" secretInStore.config))
    (that "a master key in the Nix store is rejected" (
      hasMessage "encryptionKeyFile: a secret file must be an absolute path" keyInStore.config
    ))
    (that "a relative master key path is rejected" (
      hasMessage "encryptionKeyFile: a secret file must be an absolute path" relativeKey.config
    ))
    (that "a second encryption.key_file path is rejected" (
      hasMessage "encryption.key_file is set to another path" otherKeyPath.config
    ))
    (that "oldEncryptionKeyFiles without encryptionKeyFile is rejected" (
      hasMessage "oldEncryptionKeyFiles is set but services.glidefs.encryptionKeyFile is not" oldKeysWithoutKey.config
    ))
    (that "oldEncryptionKeyFiles without encryptionKeyFile: no [store.encryption] rendered" (
      !(oldKeysWithoutKey.config.services.glidefs.settings.store ? encryption)
    ))
    (that "an old master key in the Nix store is rejected" (
      hasMessage "oldEncryptionKeyFiles: a secret file must be an absolute path" oldKeyInStore.config
    ))
    (that "a relative old master key path is rejected" (
      hasMessage "oldEncryptionKeyFiles: a secret file must be an absolute path" relativeOldKey.config
    ))
    (that "a listen address without port is rejected" (hasMessage "neither host:port" badListen.config))
    (throws "null in settings is a type error (TOML has no null)" nullSetting.config.services.glidefs.settings)
    (throws "a misspelt option is an evaluation error" typo.config.boot.kernelModules)

    # variations
    (eq "disabled: no service" disabled.config.systemd.services { })
    (eq "disabled: no kernel module" disabled.config.boot.kernelModules [ ])
    (eq "checkConfig off: unchecked file"
      unchecked.config.systemd.services.glidefs.serviceConfig.ExecStart
      "${store}-glidefs-0.1.0/bin/glidefs run --config ${store}-glidefs.toml"
    )
    (eq "socket: its directory is writable"
      socket.config.systemd.services.glidefs.serviceConfig.ReadWritePaths
      [
        "/srv/glidefs"
      ]
    )
    (eq "socket: no firewall port" socket.config.networking.firewall.allowedTCPPorts [ ])
    (eq "unix:/path socket: accepted" (failedAssertions unixSocket.config) [ ])
    (eq "unix:/path socket in /run/glidefs: nothing extra writable"
      unixSocket.config.systemd.services.glidefs.serviceConfig.ReadWritePaths
      [ ]
    )
    (eq "port < 1024 adds CAP_NET_BIND_SERVICE"
      lowPort.config.systemd.services.glidefs.serviceConfig.CapabilityBoundingSet
      [
        "CAP_SYS_ADMIN"
        "CAP_NET_BIND_SERVICE"
      ]
    )
    (eq "cache and store outside /var/lib are writable"
      elsewhere.config.systemd.services.glidefs.serviceConfig.ReadWritePaths
      [
        "/srv/glidefs-cache"
        "/srv/glidefs-store"
      ]
    )
    (eq "environmentFile: EnvironmentFile set"
      envFile.config.systemd.services.glidefs.serviceConfig.EnvironmentFile
      "/run/secrets/glidefs.env"
    )
    (eq "environmentFile: no warning about credentials" envFile.config.warnings [ ])
    (eq "encryptionKeyFile alone: no failed assertions" (failedAssertions keyOnly.config) [ ])
    (eq "encryptionKeyFile alone: LoadCredential has the master key only"
      (keyOnly.config.systemd.services.glidefs.serviceConfig.LoadCredential or null)
      [
        "master-key:/run/secrets/glidefs-master-key"
      ]
    )
    (eq "encryptionKeyFile alone: key_file rendered, no credentials_file"
      keyOnly.config.services.glidefs.configFile.configFile.text
      expectedKeyOnlyToml
    )
    (eq "old_key_files from settings join the module's key_file"
      oldKeys.config.services.glidefs.settings.store.encryption
      {
        key_file = "/run/credentials/glidefs.service/master-key";
        old_key_files = [ "/run/secrets/glidefs-master-key.old" ];
      }
    )
    (eq "oldEncryptionKeyFiles: no failed assertions" (failedAssertions rotationc) [ ])
    (eq "oldEncryptionKeyFiles: LoadCredential has the current and the old master keys"
      rotationc.systemd.services.glidefs.serviceConfig.LoadCredential
      [
        "master-key:/run/secrets/glidefs-master-key"
        "old-master-key-0:/run/secrets/glidefs-master-key.1"
        "old-master-key-1:/run/secrets/glidefs-master-key.2"
      ]
    )
    (contains "oldEncryptionKeyFiles: unit has a LoadCredential line per key"
      (renderUnit rotationc.systemd.services.glidefs)
      "\nLoadCredential=master-key:/run/secrets/glidefs-master-key\nLoadCredential=old-master-key-0:/run/secrets/glidefs-master-key.1\nLoadCredential=old-master-key-1:/run/secrets/glidefs-master-key.2\n"
    )
    (eq "oldEncryptionKeyFiles: old_key_files are the credentials, in order"
      rotationc.services.glidefs.settings.store.encryption
      {
        key_file = "/run/credentials/glidefs.service/master-key";
        old_key_files = [
          "/run/credentials/glidefs.service/old-master-key-0"
          "/run/credentials/glidefs.service/old-master-key-1"
        ];
      }
    )
    (eq "oldEncryptionKeyFiles: rendered TOML" rotationc.services.glidefs.configFile.configFile.text
      expectedRotationToml
    )
    (eq "oldEncryptionKeyFiles and settings' old_key_files: both kept"
      (builtins.sort builtins.lessThan rotationWithSettings.config.services.glidefs.settings.store.encryption.old_key_files)
      [
        "/etc/glidefs/master-key.0"
        "/run/credentials/glidefs.service/old-master-key-0"
      ]
    )
    (eq "mkForce/mkDefault inside settings" userPriority.config.services.glidefs.settings.cache {
      dir = "/mnt/cache";
      dirty_limit = "2G";
    })
  ]
  ++ import ./flake-and-tests.nix { inherit lib pkgs eval; };
in
{
  inherit checks;
  # For the TOML round trip in scripts/check-nix.sh: the text must parse back to
  # exactly these settings.
  roundTrip = {
    settings = s3c.services.glidefs.settings;
    toml = s3toml;
  };
  # For the unit-file comparison: the default configuration, and the S3 sample
  # (LoadCredential), as the unit text nixpkgs would render.
  unit = {
    defaults = renderUnit dc.systemd.services.glidefs;
    s3 = s3unit;
    libVersion = lib.version;
  };
}
