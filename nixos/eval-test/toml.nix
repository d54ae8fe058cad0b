# A tiny pure-Nix TOML renderer standing in for `pkgs.formats.toml`'s `generate`
# (which runs remarshal in a derivation and is not available without a Nix store).
# Layout: a table's plain keys first, then its sub-tables as `[a.b]` sections, then
# arrays of tables as `[[a.b]]`; attribute order is Nix's (sorted). Strings are
# emitted as TOML basic strings through JSON escaping, which TOML accepts.
# null has no TOML representation and is an error, as in nixpkgs.
{ lib }:
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isPath
    isString
    match
    toJSON
    ;

  isTable = v: isAttrs v && !(v ? outPath);
  isTableArray = v: isList v && v != [ ] && all isTable v;
  key = k: if match "[A-Za-z0-9_-]+" k != null then k else toJSON k;
  dotted = path: concatStringsSep "." (map key path);

  scalar =
    path: v:
    if isBool v then
      lib.boolToString v
    else if isInt v || isFloat v then
      toString v
    else if isString v then
      toJSON v
    else if isPath v || (isAttrs v && v ? outPath) then
      toJSON (toString v)
    else if isList v then
      "[" + concatStringsSep ", " (map (scalar path) v) + "]"
    else if isAttrs v then
      "{ "
      + concatStringsSep ", " (lib.mapAttrsToList (k: x: "${key k} = ${scalar (path ++ [ k ]) x}") v)
      + " }"
    else if v == null then
      throw "TOML has no null: `${dotted path}' is null"
    else
      throw "cannot render `${dotted path}' as TOML";

  table =
    path: attrs:
    let
      names = attrNames attrs;
      plain = builtins.filter (n: !(isTable attrs.${n}) && !(isTableArray attrs.${n})) names;
      tables = builtins.filter (n: isTable attrs.${n}) names;
      arrays = builtins.filter (n: isTableArray attrs.${n}) names;
    in
    lib.concatMapStrings (n: "${key n} = ${scalar (path ++ [ n ]) attrs.${n}}\n") plain
    + lib.concatMapStrings (
      n:
      let
        p = path ++ [ n ];
      in
      "\n[${dotted p}]\n" + table p attrs.${n}
    ) tables
    + lib.concatMapStrings (
      n:
      let
        p = path ++ [ n ];
      in
      lib.concatMapStrings (t: "\n[[${dotted p}]]\n" + table p t) attrs.${n}
    ) arrays;
in
value:
if isTable value then
  let
    text = table [ ] value;
  in
  # Sections are preceded by a blank line; drop it before the first one.
  if builtins.substring 0 1 text == "\n" then
    builtins.substring 1 (builtins.stringLength text) text
  else
    text
else
  throw "a TOML document must be an attribute set"
