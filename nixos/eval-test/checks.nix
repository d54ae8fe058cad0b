# Check constructors of the evaluation test: each gives { name; ok; detail; }, and a
# failure to evaluate counts as not ok (where builtins.tryEval can catch it).
rec {
  failedAssertions = config: map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
  hasMessage =
    needle: config:
    builtins.any (m: hasInfix needle (builtins.replaceStrings [ "\n" ] [ " " ] m)) (
      failedAssertions config
    );

  show = v: builtins.toJSON (builtins.tryEval (builtins.deepSeq v v)).value or null;
  eq = name: actual: expected: {
    inherit name;
    ok =
      let
        r = builtins.tryEval (builtins.deepSeq actual actual == expected);
      in
      r.success && r.value;
    detail =
      let
        r = builtins.tryEval (builtins.deepSeq actual actual);
      in
      if r.success then
        "expected ${builtins.toJSON expected}, got ${builtins.toJSON r.value}"
      else
        "expected ${builtins.toJSON expected}, evaluation failed";
  };
  that = name: cond: {
    inherit name;
    ok =
      let
        r = builtins.tryEval cond;
      in
      r.success && r.value == true;
    detail = "condition is false or fails to evaluate";
  };
  throws = name: expr: {
    inherit name;
    ok = !(builtins.tryEval (builtins.deepSeq expr expr)).success;
    detail = "expected an evaluation error, got ${show expr}";
  };
  # Literal substring test: replacing the needle changes the text iff it occurs.
  hasInfix = needle: text: builtins.replaceStrings [ needle ] [ "" ] text != text;
  contains = name: text: needle: {
    inherit name;
    ok =
      let
        r = builtins.tryEval (hasInfix needle text);
      in
      r.success && r.value;
    detail = "expected ${builtins.toJSON needle} in: ${show text}";
  };

}
