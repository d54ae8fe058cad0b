# The "# key: value" headers of a vm-tests phase script, read the way vm-tests/run
# reads them (first HEADER_LINES lines, first match wins), with the defaults of the
# phase contract (vm-tests/contract.env): ublks_max, deadline in seconds, needs (a
# list of words). Pure builtins, so the evaluation test can check it without nixpkgs.
script:
let
  contract = import ./contract.nix;
  inherit (builtins)
    elemAt
    filter
    fromJSON
    genList
    head
    isString
    length
    match
    split
    ;
  lines = filter isString (split "\n" (builtins.readFile script));
  top = genList (elemAt lines) (
    if length lines < contract.headerLines then length lines else contract.headerLines
  );
  trimmed =
    s:
    let
      m = match "[[:space:]]*(.*[^[:space:]])[[:space:]]*" s;
    in
    if m == null then "" else head m;
  value =
    key:
    let
      found = filter (m: m != null) (map (match "# ${key}:(.*)") top);
    in
    if found == [ ] then null else trimmed (head (head found));
  number =
    key: default:
    let
      v = value key;
    in
    if v == null || v == "" then
      default
    else if match "[0-9]+" v != null then
      fromJSON v
    else
      throw "${toString script}: header `${key}: ${v}' is not a number";
  needs = value "needs";
in
{
  ublksMax = number "ublks_max" contract.defaultUblksMax;
  deadline = number "deadline" contract.defaultDeadline;
  needs =
    if needs == null then [ ] else filter (w: isString w && w != "") (split "[[:space:]]+" needs);
}
