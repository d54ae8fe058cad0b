# vm-tests/contract.env (the VM phase contract) as a Nix attribute set: every
# KEY="value" line, values as strings. Pure builtins, so the evaluation test and
# scripts/check-nix.sh can use it without nixpkgs.
let
  inherit (builtins)
    filter
    isString
    listToAttrs
    match
    readFile
    split
    ;
  lines = filter isString (split "\n" (readFile ../../vm-tests/contract.env));
  pairs = filter (m: m != null) (map (match "([A-Z_]+)=\"([^\"]*)\"") lines);
  words = s: filter (w: isString w && w != "") (split "[[:space:]]+" s);
  raw = listToAttrs (
    map (m: {
      name = builtins.elemAt m 0;
      value = builtins.elemAt m 1;
    }) pairs
  );
in
raw
// {
  headerLines = builtins.fromJSON raw.HEADER_LINES;
  defaultUblksMax = builtins.fromJSON raw.DEFAULT_UBLKS_MAX;
  defaultDeadline = builtins.fromJSON raw.DEFAULT_DEADLINE;
  nixosPhases = words raw.NIXOS_PHASES;
}
