# A minimal stand-in for the parts of nixpkgs' `lib` that nixos/module.nix uses,
# including a small module evaluator, so the module can be evaluated with a bare
# `nix-instantiate --eval --strict` on machines that have no nixpkgs.
#
# It follows nixpkgs' semantics where the module relies on them:
# - `mkIf`/`mkMerge`/`mkOverride` are pushed down into attribute sets before any
#   condition is evaluated (so `config = mkIf cfg.enable { ... }` does not recurse);
# - at a declared option, definitions are discharged, only the highest priority
#   ones are kept (option default 1500, mkDefault 1000, plain 100, mkForce 50) and
#   merged by the option's type; the merged value is type checked;
# - defining an option that is not declared is an error (`unknownOptions`), except
#   inside a submodule with a `freeformType`;
# - submodules may declare nested options next to a freeform type (RFC 42).
# It is deliberately small: anything the module does not use is not here, and a
# use of something missing fails evaluation instead of being guessed.
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatMap
    concatStringsSep
    elem
    filter
    foldl'
    genList
    head
    isAttrs
    isBool
    isFloat
    isFunction
    isInt
    isList
    isPath
    isString
    length
    listToAttrs
    mapAttrs
    match
    stringLength
    substring
    tail
    toJSON
    ;

  lib = rec {
    # ---- lists, strings, attrsets -------------------------------------------------
    optional = cond: x: if cond then [ x ] else [ ];
    optionals = cond: xs: if cond then xs else [ ];
    optionalString = cond: s: if cond then s else "";
    optionalAttrs = cond: as: if cond then as else { };
    concatStrings = concatStringsSep "";
    concatMapStrings = f: xs: concatStrings (map f xs);
    concatMapStringsSep =
      sep: f: xs:
      concatStringsSep sep (map f xs);
    hasPrefix = pre: s: substring 0 (stringLength pre) s == pre;
    hasSuffix =
      suf: s:
      let
        ls = stringLength s;
        lf = stringLength suf;
      in
      ls >= lf && substring (ls - lf) lf s == suf;
    removePrefix =
      pre: s:
      if hasPrefix pre s then substring (stringLength pre) (stringLength s - stringLength pre) s else s;
    last = xs: builtins.elemAt xs (length xs - 1);
    unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
    mapAttrsToList = f: as: map (n: f n as.${n}) (attrNames as);
    filterAttrs =
      pred: as:
      listToAttrs (
        map (n: {
          name = n;
          value = as.${n};
        }) (filter (n: pred n as.${n}) (attrNames as))
      );
    attrByPath =
      path: default: as:
      if path == [ ] then
        as
      else if isAttrs as && as ? ${head path} then
        attrByPath (tail path) default as.${head path}
      else
        default;
    toInt =
      s:
      if match "[0-9]+" s != null then
        builtins.fromJSON s
      else
        throw "toInt: `${s}' is not a decimal integer";
    versionAtLeast = v: min: builtins.compareVersions v min >= 0;
    versionOlder = v: other: builtins.compareVersions v other < 0;
    boolToString = b: if b then "true" else "false";
    showOption = concatStringsSep ".";
    isDerivation = x: isAttrs x && (x.type or null) == "derivation";
    isStringLike = x: isString x || isPath x || (isAttrs x && x ? outPath);
    getExe =
      pkg:
      "${pkg}/bin/${
        pkg.meta.mainProgram or (throw "getExe: ${pkg.name or "package"} has no meta.mainProgram")
      }";
    inherit
      concatMap
      concatLists
      concatStringsSep
      genList
      ;

    # ---- module properties ---------------------------------------------------------
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkOptionDefault = mkOverride 1500;
    mkDefault = mkOverride 1000;
    mkForce = mkOverride 50;

    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption =
      name:
      mkOption {
        type = types.bool;
        default = false;
        example = true;
        description = "Whether to enable ${name}.";
      };
    mkPackageOption =
      pkgs: name:
      {
        extraDescription ? "",
        ...
      }:
      mkOption {
        type = types.package;
        default = pkgs.${name};
        defaultText = literalExpression "pkgs.${name}";
        description =
          "The ${name} package to use." + optionalString (extraDescription != "") " ${extraDescription}";
      };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    literalMD = text: {
      _type = "literalMD";
      inherit text;
    };

    # ---- types --------------------------------------------------------------------
    mkOptionType =
      {
        name,
        description ? name,
        check ? (_: true),
        merge ? mergeEqualOption,
        nestedTypes ? { },
        ...
      }@t:
      {
        _type = "option-type";
        inherit
          name
          description
          check
          merge
          nestedTypes
          ;
        submodule = t.submodule or null;
      };

    # A value for an error message: never forces derivations or functions.
    showValue =
      v:
      if isFunction v then
        "<function>"
      else if isAttrs v && v ? outPath then
        v.outPath
      else
        toJSON v;

    mergeEqualOption =
      loc: values:
      let
        first = head values;
      in
      if values == [ ] then
        throw "The option `${showOption loc}' has no definitions."
      else if all (v: v == first) (tail values) then
        first
      else
        throw "The option `${showOption loc}' has conflicting definition values: ${
          concatMapStringsSep ", " showValue values
        }";

    types = rec {
      raw = mkOptionType { name = "raw"; };
      bool = mkOptionType {
        name = "bool";
        description = "boolean";
        check = isBool;
      };
      int = mkOptionType {
        name = "int";
        description = "signed integer";
        check = isInt;
      };
      float = mkOptionType {
        name = "float";
        description = "floating point number";
        check = isFloat;
      };
      str = mkOptionType {
        name = "str";
        description = "string";
        check = isString;
      };
      nonEmptyStr = mkOptionType {
        name = "nonEmptyStr";
        description = "non-empty string";
        check = x: isString x && match "[[:space:]]*" x == null;
      };
      lines = mkOptionType {
        name = "lines";
        description = "strings concatenated with \"\\n\"";
        check = isString;
        merge = _loc: concatStringsSep "\n";
      };
      path = mkOptionType {
        name = "path";
        description = "absolute path";
        check = x: isStringLike x && substring 0 1 "${toString x}" == "/";
      };
      package = mkOptionType {
        name = "package";
        description = "package";
        check = x: isDerivation x || (isAttrs x && x ? outPath);
      };
      port = ints.between 0 65535;
      ints = {
        between =
          lo: hi:
          mkOptionType {
            name = "intBetween";
            description = "integer between ${toString lo} and ${toString hi} (both inclusive)";
            check = x: isInt x && x >= lo && x <= hi;
          };
        positive = mkOptionType {
          name = "positiveInt";
          description = "positive integer, meaning >0";
          check = x: isInt x && x > 0;
        };
        unsigned = mkOptionType {
          name = "unsignedInt";
          description = "unsigned integer, meaning >=0";
          check = x: isInt x && x >= 0;
        };
      };
      enum =
        values:
        mkOptionType {
          name = "enum";
          description = "one of ${concatMapStringsSep ", " showValue values}";
          check = x: elem x values;
        };
      strMatching =
        pattern:
        mkOptionType {
          name = "strMatching ${toJSON pattern}";
          description = "string matching the pattern ${pattern}";
          check = x: isString x && match pattern x != null;
        };
      nullOr =
        elemType:
        mkOptionType {
          name = "nullOr";
          description = "null or ${elemType.description}";
          check = x: x == null || elemType.check x;
          merge =
            loc: values:
            if all (v: v == null) values then
              null
            else if any (v: v == null) values then
              throw "The option `${showOption loc}' is defined both null and not null."
            else
              elemType.merge loc values;
          nestedTypes.elemType = elemType;
        };
      listOf =
        elemType:
        mkOptionType {
          name = "listOf";
          description = "list of ${elemType.description}";
          check = isList;
          merge =
            loc: values:
            let
              items = concatLists values;
              bad = filter (x: !(elemType.check x)) items;
            in
            if bad == [ ] then
              items
            else
              throw "A definition for option `${showOption loc}' is not of type `${elemType.description}': ${showValue (head bad)}";
          nestedTypes.elemType = elemType;
        };
      attrsOf =
        elemType:
        mkOptionType {
          name = "attrsOf";
          description = "attribute set of ${elemType.description}";
          check = isAttrs;
          merge = loc: values: mergeAttrsOf loc elemType values;
          nestedTypes.elemType = elemType;
        };
      lazyAttrsOf = attrsOf;
      either =
        t1: t2:
        mkOptionType {
          name = "either";
          description = "${t1.description} or ${t2.description}";
          check = x: t1.check x || t2.check x;
          merge =
            loc: values:
            if all t1.check values then
              t1.merge loc values
            else if all t2.check values then
              t2.merge loc values
            else
              mergeEqualOption loc values;
        };
      oneOf =
        ts:
        let
          h = head ts;
        in
        if tail ts == [ ] then h else either h (oneOf (tail ts));
      submodule =
        spec:
        let
          s = if isFunction spec then spec { inherit lib; } else spec;
          decl = {
            options = s.options or { };
            freeformType = s.freeformType or null;
          };
        in
        mkOptionType {
          name = "submodule";
          description = "submodule";
          check = isAttrs;
          merge = loc: values: mergeSet loc decl.options decl.freeformType values;
          submodule = decl;
        };
    };

    # ---- the evaluator ------------------------------------------------------------
    isOption = x: isAttrs x && (x._type or null) == "option";
    isProperty =
      x:
      isAttrs x
      && elem (x._type or null) [
        "if"
        "merge"
        "override"
      ];

    # Turns a (possibly wrapped) attribute-set definition into a plain attribute set
    # whose values carry the wrapping, without evaluating any mkIf condition.
    pushDown =
      loc: def:
      if !(isAttrs def) then
        throw "A definition for `${showOption loc}' is not an attribute set: ${showValue def}"
      else if (def._type or null) == "if" then
        mapAttrs (_: mkIf def.condition) (pushDown loc def.content)
      else if (def._type or null) == "override" then
        mapAttrs (_: mkOverride def.priority) (pushDown loc def.content)
      else if (def._type or null) == "merge" then
        let
          parts = map (pushDown loc) def.contents;
          names = unique (concatMap attrNames parts);
        in
        listToAttrs (
          map (n: {
            name = n;
            value = mkMerge (concatMap (p: if p ? ${n} then [ p.${n} ] else [ ]) parts);
          }) names
        )
      else
        def;

    # Expands properties into a list of { priority; value; }.
    discharge =
      loc: priority: def:
      if !(isProperty def) then
        [
          {
            inherit priority;
            value = def;
          }
        ]
      else if def._type == "if" then
        if def.condition == true then
          discharge loc priority def.content
        else if def.condition == false then
          [ ]
        else
          throw "The condition of mkIf for `${showOption loc}' is not a boolean."
      else if def._type == "override" then
        discharge loc def.priority def.content
      else
        concatMap (discharge loc priority) def.contents;

    # Keeps the definitions with the highest priority (lowest number).
    filterOverrides =
      defs:
      let
        best = foldl' (m: d: if d.priority < m then d.priority else m) 100000 defs;
      in
      map (d: d.value) (filter (d: d.priority == best) defs);

    subDefs = n: parts: concatMap (p: if p ? ${n} then [ p.${n} ] else [ ]) parts;

    mergeAttrsOf =
      loc: elemType: values:
      let
        parts = map (pushDown loc) values;
        names = filter (n: isDefined (loc ++ [ n ]) (subDefs n parts)) (unique (concatMap attrNames parts));
      in
      listToAttrs (
        map (n: {
          name = n;
          value = mergeOption (loc ++ [ n ]) { type = elemType; } (subDefs n parts);
        }) names
      );

    # Whether any definition survives its mkIf conditions (attrsOf and freeform
    # values drop attributes that have none, as in nixpkgs).
    isDefined = loc: defs: concatMap (discharge loc 100) defs != [ ];

    mergeOption =
      loc: opt: defs:
      let
        defaults = if opt ? default then [ (mkOptionDefault opt.default) ] else [ ];
        values = filterOverrides (concatMap (discharge loc 100) (defs ++ defaults));
        merged =
          if values == [ ] then
            throw "The option `${showOption loc}' is used but not defined."
          else
            opt.type.merge loc values;
        checked =
          if opt.type.check merged then
            merged
          else
            throw "The option `${showOption loc}' has a value that is not of type `${opt.type.description}': ${showValue merged}";
      in
      if opt ? apply then opt.apply checked else checked;

    # Merges one attribute-set level: `decls` are the option declarations at this
    # level (options or nested sets of them), `freeform` the type of undeclared keys
    # (null: undeclared keys are an error).
    mergeSet =
      loc: decls: freeform: defs:
      let
        parts = map (pushDown loc) defs;
        names = filter (n: decls ? ${n} || isDefined (loc ++ [ n ]) (subDefs n parts)) (
          unique (attrNames decls ++ concatMap attrNames parts)
        );
        one =
          n:
          let
            l = loc ++ [ n ];
            ds = subDefs n parts;
          in
          if decls ? ${n} then
            (if isOption decls.${n} then mergeOption l decls.${n} ds else mergeSet l decls.${n} freeform ds)
          else if freeform != null then
            mergeOption l { type = freeform; } ds
          else
            throw "The option `${showOption l}' does not exist.";
      in
      listToAttrs (
        map (n: {
          name = n;
          value = one n;
        }) names
      );

    # Paths that are defined but not declared (nixpkgs reports these even under a
    # false mkIf, because properties are pushed down before conditions are read).
    unknownIn =
      loc: decls: freeform: defs:
      let
        parts = map (pushDown loc) (filter isAttrs defs);
        names = unique (concatMap attrNames parts);
        check =
          n:
          let
            l = loc ++ [ n ];
            ds = subDefs n parts;
          in
          if decls ? ${n} then
            (
              if isOption decls.${n} then
                unknownInType l decls.${n}.type ds
              else
                unknownIn l decls.${n} freeform ds
            )
          else if freeform != null then
            [ ]
          else
            [ (showOption l) ];
      in
      concatMap check names;

    unknownInType =
      loc: type: defs:
      let
        plain = concatMap (d: if isProperty d then map (x: x.value) (dischargeAll loc d) else [ d ]) defs;
      in
      if type.submodule != null then
        unknownIn loc type.submodule.options type.submodule.freeformType plain
      else if type.name == "attrsOf" && type.nestedTypes.elemType.submodule != null then
        let
          parts = map (pushDown loc) (filter isAttrs plain);
          names = unique (concatMap attrNames parts);
        in
        concatMap (n: unknownInType (loc ++ [ n ]) type.nestedTypes.elemType (subDefs n parts)) names
      else
        [ ];

    # Like discharge, but keeps definitions under any mkIf condition.
    dischargeAll =
      loc: def:
      if !(isProperty def) then
        [ { value = def; } ]
      else if def._type == "merge" then
        concatMap (dischargeAll loc) def.contents
      else
        dischargeAll loc def.content;

    # Merges option declaration trees of several modules.
    mergeDecls =
      a: b:
      let
        names = unique (attrNames a ++ attrNames b);
      in
      listToAttrs (
        map (n: {
          name = n;
          value =
            if !(a ? ${n}) then
              b.${n}
            else if !(b ? ${n}) then
              a.${n}
            else if isOption a.${n} || isOption b.${n} then
              throw "The option `${n}' is declared twice."
            else
              mergeDecls a.${n} b.${n};
        }) names
      );

    evalModules =
      {
        modules,
        specialArgs ? { },
      }:
      let
        args = {
          inherit lib config options;
        }
        // specialArgs;
        # Modules imported by path are loaded once, however often they are imported
        # (nixpkgs keys them by file name).
        load =
          m:
          let
            v = if isPath m then import m else m;
            r = if isFunction v then v args else v;
          in
          [
            {
              key = if isPath m then toString m else null;
              module = r;
            }
          ]
          ++ concatMap load (r.imports or [ ]);
        dedup =
          foldl'
            (
              acc: e:
              if e.key != null && elem e.key acc.keys then
                acc
              else
                {
                  keys = acc.keys ++ [ e.key ];
                  modules = acc.modules ++ [ e.module ];
                }
            )
            {
              keys = [ ];
              modules = [ ];
            };
        loaded = (dedup (concatMap load modules)).modules;
        configOf =
          m:
          let
            base =
              if m ? config || m ? options then
                m.config or { }
              else
                removeAttrs m [
                  "imports"
                  "meta"
                  "_file"
                  "key"
                ];
          in
          if m ? meta then
            mkMerge [
              base
              { inherit (m) meta; }
            ]
          else
            base;
        options = foldl' mergeDecls { } (map (m: m.options or { }) loaded);
        defs = map configOf loaded;
        config = mergeSet [ ] options null defs;
      in
      {
        inherit config options;
        unknownOptions = unknownIn [ ] options null defs;
      };
  };
in
lib
