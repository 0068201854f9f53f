# Evaluates every case in cases.nix and tunnel-cases.nix against the repo's
# modules (nixos/module.nix, agent.nix, k3s-traefik.nix), the cases of
# flake-cases.nix through flake.nix, and the option docs' {option}
# references, with nothing but nixpkgs' lib/ and the stubs in nixos-stubs.nix.
# Run by tests/nix/check.sh:
#
#   nix-instantiate --eval --strict --json --read-write-mode tests/nix/eval.nix \
#     --arg nixpkgsLib /path/to/nixpkgs.lib
#
# For each case: { problems; configFile; runCheck; lab; manifest; export;
# keyPath }, where
# problems is empty when the case passed and configFile is the generated
# config file (a store path) or null.
{ nixpkgsLib }:

let
  lib = import (nixpkgsLib + "/lib");
  stubs = import ./nixos-stubs.nix { inherit lib; };
  cases =
    import ./cases.nix { inherit lib; }
    // import ./flake-cases.nix { inherit lib stubs; }
    // import ./tunnel-cases.nix { inherit lib; }
    // {
      option-references = optionReferences;
    };

  # The repo's NixOS modules, which every case of cases.nix is evaluated with.
  ourModules = [
    ../../nixos/module.nix
    ../../nixos/agent.nix
    ../../nixos/k3s-traefik.nix
  ];

  evalCase =
    case:
    lib.evalModules {
      modules = [
        stubs.module
        { _module.args.pkgs = stubs.pkgs { canExecute = case.canExecute or false; }; }
      ]
      ++ case.baseModules or ourModules
      ++ case.modules;
    };

  # The NixOS manual renders every option's description (and literalMD
  # defaults and examples) with nixos-render-docs, which fails on an
  # {option}`x` whose x is not a declared option. Every such reference in the
  # docs of our modules' options must name an option declared by our modules
  # or by the stubs (which mirror nixpkgs' declarations).
  optionReferences =
    let
      docs = lib.optionAttrSetToDocList (evalCase { modules = [ ]; }).options;
      declared = lib.genAttrs (map (o: o.name) docs) (_: true);
      # What the manual renders: visible, not internal (not _module.args).
      ours = lib.filter (o: lib.hasPrefix "services.sniEdge" o.name && o.visible && !o.internal) docs;
      texts =
        o:
        [ (o.description or "") ]
        ++ map (v: if builtins.isAttrs v && v ? text then v.text else "") [
          (o.default or null)
          (o.example or null)
        ];
      # "a {option}`x` b {option}`y`" -> [ "x" "y" ]
      refsIn =
        text:
        let
          parts = builtins.split "\\{option}`([^`]*)`" text;
        in
        lib.concatMap (p: if builtins.isList p then p else [ ]) parts;
      refs = lib.concatMap (
        o:
        map (target: {
          inherit target;
          from = o.name;
        }) (lib.concatMap refsIn (texts o))
      ) ours;
      unresolved = lib.filter (r: !(declared ? ${r.target})) refs;
    in
    {
      modules = [ ];
      runCheck = false;
      checks =
        _:
        lib.optional (refs == [ ]) "found no {option} reference at all: the scan is broken"
        ++ map (r: "${r.from}: {option}`${r.target}` is not a declared option") unresolved;
    };

  # Each wanted substring must match exactly one of the messages, and every
  # message must be wanted.
  matchMessages =
    kind: wanted: got:
    lib.concatMap (
      w:
      let
        n = builtins.length (lib.filter (lib.hasInfix w) got);
      in
      lib.optional (n != 1) "${kind}: want one message containing ${builtins.toJSON w}, got ${toString n}"
    ) wanted
    ++ lib.concatMap (
      m: lib.optional (!lib.any (w: lib.hasInfix w m) wanted) "${kind}: unexpected message: ${m}"
    ) got;

  run =
    name: case:
    let
      inherit (evalCase case) config;
      failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      wantFailed = case.failed or [ ];
      passes = wantFailed == [ ];
      problems =
        matchMessages "assertion" wantFailed failed
        ++ lib.optionals (case ? warnings) (matchMessages "warning" case.warnings config.warnings)
        ++ lib.optionals (passes && failed == [ ] && case ? checks) (case.checks config);
      ok = problems == [ ];
      # The gateway's config file, or the one the case names (the agent's).
      enabled = case ? configOf || (config.services.sniEdge.enable or false);
      configOf = case.configOf or (c: c.services.sniEdge.configFile);
    in
    {
      inherit problems;
      runCheck = ok && passes && enabled && (case.runCheck or true);
      configFile = if ok && passes && enabled then toString (configOf config) else null;
      lab = case.lab or false;
      manifestTunnel = case.manifestTunnel or false;
      pythonScript = if case ? pythonScript then toString case.pythonScript else null;
      export = case.export or null;
      # Where the config names a private key (a credential at run time).
      keyPath =
        case.keyPath
          or (if (config.services.sniEdge.tunnelKeyFile or null) != null then "tunnel.key_file" else null);
      manifest =
        if ok && case ? manifest then
          toString config.services.k3s.manifests.${case.manifest}.source
        else
          null;
    };
in
lib.mapAttrs run cases
