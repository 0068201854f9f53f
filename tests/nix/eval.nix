# Evaluates every case in cases.nix against nixos/module.nix and
# nixos/k3s-traefik.nix with nothing but nixpkgs' lib/ and the stubs in
# nixos-stubs.nix. Run by tests/nix/check.sh:
#
#   nix-instantiate --eval --strict --json --read-write-mode tests/nix/eval.nix \
#     --arg nixpkgsLib /path/to/nixpkgs.lib
#
# For each case: { problems; configFile; runCheck; lab; manifest }, where
# problems is empty when the case passed and configFile is the generated
# config file (a store path) or null.
{ nixpkgsLib }:

let
  lib = import (nixpkgsLib + "/lib");
  stubs = import ./nixos-stubs.nix { inherit lib; };
  cases = import ./cases.nix { inherit lib; };

  evalCase =
    case:
    lib.evalModules {
      modules = [
        stubs.module
        ../../nixos/module.nix
        ../../nixos/k3s-traefik.nix
        { _module.args.pkgs = stubs.pkgs { canExecute = case.canExecute or false; }; }
      ]
      ++ case.modules;
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
      m:
      lib.optional (!lib.any (w: lib.hasInfix w m) wanted) "${kind}: unexpected message: ${m}"
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
      enabled = config.services.sniEdge.enable;
    in
    {
      inherit problems;
      runCheck = ok && passes && enabled && (case.runCheck or true);
      configFile = if ok && passes && enabled then toString config.services.sniEdge.configFile else null;
      lab = case.lab or false;
      manifest =
        if ok && case ? manifest then
          toString config.services.k3s.manifests.${case.manifest}.source
        else
          null;
    };
in
lib.mapAttrs run cases
