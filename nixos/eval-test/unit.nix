# Renders a `systemd.services.<name>` value to unit-file text the way nixpkgs'
# systemd-lib does for the parts the module uses: one `Key=value` line per value
# (lists give repeated lines), booleans as true/false, unit dependencies and
# `wantedBy` in [Unit]/[Install], environment as quoted Environment= lines.
{ lib }:
service:
let
  toOption =
    x:
    if x == true then
      "true"
    else if x == false then
      "false"
    else
      toString x;
  section =
    as:
    lib.concatStrings (
      lib.concatMap (
        name:
        map (x: "${name}=${toOption x}\n") (
          if builtins.isList as.${name} then as.${name} else [ as.${name} ]
        )
      ) (builtins.attrNames as)
    );
  nonEmpty = lib.filterAttrs (_: v: v != [ ] && v != "");
  unit = nonEmpty {
    Description = service.description;
    After = lib.concatStringsSep " " service.after;
    Wants = lib.concatStringsSep " " service.wants;
    Requires = lib.concatStringsSep " " service.requires;
    Before = lib.concatStringsSep " " service.before;
  };
  environment = lib.mapAttrsToList (n: v: "\"${n}=${v}\"") (
    lib.filterAttrs (_: v: v != null) service.environment
  );
in
"[Unit]\n"
+ section (unit // service.unitConfig)
+ "\n[Service]\n"
+ section (lib.optionalAttrs (environment != [ ]) { Environment = environment; })
+ section service.serviceConfig
+ lib.optionalString (
  service.wantedBy != [ ]
) "\n[Install]\nWantedBy=${lib.concatStringsSep " " service.wantedBy}\n"
