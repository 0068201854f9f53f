# Cases of tests/nix/eval.nix that go through flake.nix, as a user's
# configuration and `nix flake check` do: the flake's outputs are called with
# nixpkgs replaced by nixpkgs' lib/ and the stub package set, so that
#   - nixosModules.sni-edge, .k3s-traefik and .default are imported alone and
#     together (a module imported twice must be included once: its `key`);
#   - overlays.default is applied to the stub package set (the package comes
#     from nixos/package.nix through callPackage);
#   - every node of every VM test in tests/vm/ (and each specialisation of a
#     node) is evaluated with the flake's default module, as
#     checks.<system>.vm-<name> declares them, so a wrong option path, a type
#     error or a double definition fails here.
# Case fields as in cases.nix, plus `baseModules = [ ]`: these cases bring
# their own modules instead of nixos/module.nix and nixos/k3s-traefik.nix.
{ lib, stubs }:

let
  pkgs = stubs.pkgs { };

  flakeFile = import ../../flake.nix;
  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs systems (
      system:
      pkgs
      // {
        stdenv = pkgs.stdenv // {
          hostPlatform = {
            inherit system;
            isLinux = true;
          };
        };
      }
    );
  };
  flake = lib.fix (self: flakeFile.outputs { inherit self nixpkgs; });
  inherit ((lib.importTOML ../../Cargo.toml).package) version;

  expect = cond: problem: lib.optional (!cond) problem;
  show = v: builtins.toJSON v;

  # The flake's build, not the stub set's sni-edge, is the package.
  flakePackage =
    config:
    let
      p = config.services.sniEdge.package;
    in
    expect (
      p.name == "sni-edge-${version}"
    ) "services.sniEdge.package is ${p.name}, want the flake's sni-edge-${version}"
    ++ expect (lib.hasInfix "/stub/sni-edge-${version}/bin/sni-edge run" config.systemd.services.sni-edge.serviceConfig.ExecStart) "ExecStart does not run the flake's package: ${config.systemd.services.sni-edge.serviceConfig.ExecStart}";

  example = ../../nixos/examples/allow-list.nix;

  flakeCase = modules: {
    baseModules = [ ];
    modules = modules ++ [ example ];
    checks = flakePackage;
  };

  # The modules a VM test's nodes get: flake.nix's vmTests put
  # self.nixosModules.default in `defaults`.
  vmFile = file: import (../../tests/vm + "/${file}") { inherit pkgs lib; };
  vmTests = lib.mapAttrs' (file: _: lib.nameValuePair (lib.removeSuffix ".nix" file) (vmFile file)) (
    lib.filterAttrs (file: type: type == "regular" && lib.hasSuffix ".nix" file) (
      builtins.readDir ../../tests/vm
    )
  );
  nodeCase = node: extra: {
    baseModules = [ ];
    modules = [
      flake.nixosModules.default
      node
    ]
    ++ extra;
    # Every option value the node sets, forced: a misspelt option deep in a
    # submodule is an error only when its value is read.
    checks = config: builtins.deepSeq (removeAttrs config [ "_module" ]) [ ];
  };
  # One case per node, and one per specialisation of a node (its
  # configuration added to the node's, as inheritParentConfig does).
  vmCases = lib.concatMapAttrs (
    test: t:
    lib.concatMapAttrs (
      nodeName: node:
      let
        specialisations =
          (lib.evalModules {
            modules = [
              stubs.module
              flake.nixosModules.default
              node
              { _module.args.pkgs = pkgs; }
            ];
          }).config.specialisation;
      in
      {
        "vm-${test}-node-${nodeName}" = nodeCase node [ ];
      }
      // lib.mapAttrs' (
        s: spec:
        lib.nameValuePair "vm-${test}-node-${nodeName}-specialisation-${s}" (
          nodeCase node [ spec.configuration ]
        )
      ) specialisations
    ) t.nodes
  ) vmTests;

  # Each VM test's script as the driver gets it (the gateway test's reads
  # nodes.<name>.system.build.toplevel, stubbed): check.sh compiles it as
  # Python, so a syntax error or a bad interpolation fails here.
  scriptCases = lib.mapAttrs' (
    test: t:
    lib.nameValuePair "vm-${test}-script" {
      baseModules = [ ];
      modules = [ ];
      runCheck = false;
      pythonScript = builtins.toFile "vm-${test}-script.py" (
        if builtins.isFunction t.testScript then
          t.testScript { nodes = lib.mapAttrs (_: _: { system.build.toplevel = "/stub/toplevel"; }) t.nodes; }
        else
          t.testScript
      );
    }
  ) vmTests;

  overlaid = lib.fix (final: pkgs // flake.overlays.default final pkgs);
in
{
  flake-module-default = flakeCase [ flake.nixosModules.default ];
  flake-module-sni-edge = flakeCase [ flake.nixosModules.sni-edge ];
  flake-modules-default-and-sni-edge = flakeCase [
    flake.nixosModules.default
    flake.nixosModules.sni-edge
  ];
  flake-module-agent-and-default = {
    baseModules = [ ];
    modules = [
      flake.nixosModules.agent
      flake.nixosModules.default
      flake.nixosModules.agent
      {
        services.sniEdgeAgent = {
          enable = true;
          keyFile = "/var/lib/secrets/agent.key";
          settings.gateways = [
            {
              address = "gateway.example.com:7443";
              public_key = "sni-edge-key:tD7dsK9KJv9D5nfUg4uQFn1VeRSLD7-cXIiCvLgtppk";
            }
          ];
          settings.targets.https = "127.0.0.1:443";
        };
      }
    ];
    runCheck = false;
    checks =
      config:
      let
        p = config.services.sniEdgeAgent.package;
      in
      expect (
        p.name == "sni-edge-${version}"
      ) "services.sniEdgeAgent.package is ${p.name}, want the flake's sni-edge-${version}"
      ++ expect (lib.hasInfix "/stub/sni-edge-${version}/bin/sni-edge agent" config.systemd.services.sni-edge-agent.serviceConfig.ExecStart) "the agent does not run the flake's package";
  };
  flake-modules-all-names-twice = flakeCase [
    flake.nixosModules.sni-edge
    flake.nixosModules.agent
    flake.nixosModules.default
    flake.nixosModules.k3s-traefik
    flake.nixosModules.default
    flake.nixosModules.sni-edge
  ];
  # What the `key` prevents: the same wrapper without it, imported twice,
  # must fail with a double definition, else the cases above prove nothing.
  flake-module-without-key-fails = {
    baseModules = [ ];
    modules = [ ];
    runCheck = false;
    checks =
      _:
      let
        noKey = { lib, pkgs, ... }@args: removeAttrs (flake.nixosModules.sni-edge args) [ "key" ];
        r = builtins.tryEval (
          builtins.deepSeq
            (lib.evalModules {
              modules = [
                stubs.module
                noKey
                noKey
                { _module.args.pkgs = pkgs; }
              ];
            }).config.services.sniEdge.package.name
            true
        );
      in
      expect (
        !r.success
      ) "the wrapper module without its key imported twice evaluates, so the key is not what is tested";
  };

  overlay = {
    baseModules = [ ];
    modules = [ ];
    runCheck = false;
    checks =
      _:
      let
        p = overlaid.sni-edge;
        args = p.passthru.buildRustPackageArgs null;
      in
      expect (p.name == "sni-edge-${version}") "overlay's sni-edge is ${p.name}, want sni-edge-${version}"
      ++ expect (p.meta.mainProgram == "sni-edge") "meta.mainProgram is ${show p.meta.mainProgram}"
      ++ expect (lib.elem "x86_64-linux" p.meta.platforms) "meta.platforms lacks x86_64-linux"
      ++ expect (args ? cargoLock.lockFile) "nixos/package.nix passes no cargoLock.lockFile";
  };

  flake-packages = {
    baseModules = [ ];
    modules = [ ];
    runCheck = false;
    checks =
      _:
      let
        x86 = flake.packages.x86_64-linux;
        checkNames = lib.attrNames flake.checks.x86_64-linux;
      in
      expect (
        x86.default.name == "sni-edge-${version}"
      ) "packages.x86_64-linux.default is ${x86.default.name}"
      ++ expect (x86 ? sni-edge-aarch64-linux) "packages.x86_64-linux has no sni-edge-aarch64-linux"
      ++ expect (
        x86 ? sni-edge-image
      ) "packages.x86_64-linux has no sni-edge-image (the agent's image for k3s)"
      ++ expect (
        !(flake.packages.aarch64-linux ? sni-edge-aarch64-linux)
      ) "aarch64-linux cross-builds to itself"
      ++ expect (
        !(lib.elem "package-sni-edge-aarch64-linux" checkNames)
      ) "checks build the aarch64 cross package"
      ++ expect (lib.elem "package-sni-edge" checkNames) "checks lack package-sni-edge: ${show checkNames}"
      ++ expect (lib.all (t: lib.elem "vm-${t}" checkNames) (
        lib.attrNames vmTests
      )) "checks lack a VM test: ${show checkNames}";
  };
}
// vmCases
// scriptCases
