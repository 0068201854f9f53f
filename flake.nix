{
  description = "sni-edge: routes TLS by SNI without decrypting, adds PROXY protocol, redirects HTTP, passes ACME challenges";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      inherit ((lib.importTOML ./Cargo.toml).package) version;

      # Only what the Rust build reads: editing the Nix files, the lab or the
      # VM tests does not rebuild the package.
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [
          ./Cargo.toml
          ./Cargo.lock
          ./src
          ./examples
          (lib.fileset.maybeMissing ./README.md)
          (lib.fileset.maybeMissing ./.cargo)
          (lib.fileset.maybeMissing ./benches)
          (lib.fileset.difference ./tests (
            lib.fileset.unions (
              map lib.fileset.maybeMissing [
                ./tests/vm
                ./tests/nix
                ./tests/lab
                ./tests/aarch64.sh
              ]
            )
          ))
        ];
      };

      mkSniEdge = pkgs: pkgs.callPackage ./nixos/package.nix { inherit src version; };

      # A minimal image: the binary and its closure, run as an unprivileged
      # user (the Deployment's securityContext says so too).
      mkImage =
        pkgs: sni-edge:
        pkgs.dockerTools.buildLayeredImage {
          name = "sni-edge";
          tag = version;
          contents = [ sni-edge ];
          config = {
            Entrypoint = [ (lib.getExe sni-edge) ];
            User = "65534:65534";
          };
        };

      # Every file in tests/vm/ is a NixOS VM test, with the modules of this
      # flake on every node.
      vmTests =
        pkgs:
        lib.mapAttrs'
          (
            file: _:
            lib.nameValuePair "vm-${lib.removeSuffix ".nix" file}" (
              pkgs.testers.runNixOSTest {
                imports = [ (./tests/vm + "/${file}") ];
                defaults.imports = [ self.nixosModules.default ];
              }
            )
          )
          (
            lib.filterAttrs (file: type: type == "regular" && lib.hasSuffix ".nix" file) (
              builtins.readDir ./tests/vm
            )
          );
    in
    {
      packages = forAllSystems (
        pkgs:
        {
          default = self.packages.${pkgs.stdenv.hostPlatform.system}.sni-edge;
          sni-edge = mkSniEdge pkgs;
          # The agent's container image for k3s (k3s/tunnel-agent.yaml):
          # `nix build .#sni-edge-image`, then
          # `k3s ctr images import result` on each node.
          sni-edge-image = mkImage pkgs (mkSniEdge pkgs);
        }
        # Cross-compiled from x86_64-linux, for a small ARM VPS or a Raspberry Pi.
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          sni-edge-aarch64-linux = mkSniEdge pkgs.pkgsCross.aarch64-multiplatform;
        }
      );

      overlays.default = final: _prev: { sni-edge = mkSniEdge final; };

      nixosModules = {
        # The gateway, with this flake's build as the default package.
        # Each module has a `key`, so importing two names that contain the
        # same module (default and sni-edge) includes it once, as the module
        # system does for a module given by path.
        sni-edge =
          { lib, pkgs, ... }:
          {
            key = "sni-edge#nixosModules.sni-edge";
            _file = "${toString ./flake.nix}#nixosModules.sni-edge";
            imports = [ ./nixos/module.nix ];
            services.sniEdge.package = lib.mkDefault (mkSniEdge pkgs);
          };
        # The agent of tunnel mode, at home, with this flake's build.
        agent =
          { lib, pkgs, ... }:
          {
            key = "sni-edge#nixosModules.agent";
            _file = "${toString ./flake.nix}#nixosModules.agent";
            imports = [ ./nixos/agent.nix ];
            services.sniEdgeAgent.package = lib.mkDefault (mkSniEdge pkgs);
          };
        # For k3s server nodes behind the gateway.
        k3s-traefik = ./nixos/k3s-traefik.nix;
        default = {
          key = "sni-edge#nixosModules.default";
          _file = "${toString ./flake.nix}#nixosModules.default";
          imports = [
            self.nixosModules.sni-edge
            self.nixosModules.agent
            self.nixosModules.k3s-traefik
          ];
        };
      };

      checks = forAllSystems (
        pkgs:
        let
          packages = self.packages.${pkgs.stdenv.hostPlatform.system};
          inherit (packages) sni-edge;
        in
        # The native package only. The aarch64 cross package stays in
        # `packages` (nix build .#sni-edge-aarch64-linux) but is no check:
        # building it needs a whole cross toolchain (pkgsCross gcc, glibc,
        # rustc's aarch64 std) that cache.nixos.org does not carry, so every
        # `nix flake check` would compile one for an hour or more. The crate's
        # aarch64 build and tests are run by tests/aarch64.sh under qemu
        # instead, and an aarch64-linux machine builds
        # packages.aarch64-linux.sni-edge natively, which is checked there.
        {
          package-sni-edge = sni-edge;
          clippy = sni-edge.overrideAttrs (old: {
            pname = "sni-edge-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              cargo clippy --offline --all-targets -- --deny warnings
              runHook postBuild
            '';
            doCheck = false;
            installPhase = "touch $out";
            dontFixup = true;
          });

          formatting =
            pkgs.runCommand "sni-edge-formatting"
              {
                nativeBuildInputs = [
                  pkgs.cargo
                  pkgs.rustfmt
                  pkgs.nixfmt
                ];
              }
              ''
                export HOME=$TMPDIR
                cp -r --no-preserve=mode ${self} source
                cd source
                cargo fmt --check
                find . -name '*.nix' -exec nixfmt --check {} +
                touch $out
              '';
        }
        // lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux (vmTests pkgs)
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.sni-edge ];
          packages = [
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.nixfmt
            pkgs.python3Packages.pyyaml
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);
    };
}
