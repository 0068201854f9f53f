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

      # Every file in tests/vm/ is a NixOS VM test, with the modules of this
      # flake on every node.
      vmTests =
        pkgs:
        lib.mapAttrs' (
          file: _:
          lib.nameValuePair "vm-${lib.removeSuffix ".nix" file}" (
            pkgs.testers.runNixOSTest {
              imports = [ (./tests/vm + "/${file}") ];
              defaults.imports = [ self.nixosModules.default ];
            }
          )
        ) (lib.filterAttrs (file: type: type == "regular" && lib.hasSuffix ".nix" file) (builtins.readDir ./tests/vm));
    in
    {
      packages = forAllSystems (
        pkgs:
        {
          default = self.packages.${pkgs.stdenv.hostPlatform.system}.sni-edge;
          sni-edge = mkSniEdge pkgs;
        }
        # Cross-compiled from x86_64-linux, for a small ARM VPS or a Raspberry Pi.
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          sni-edge-aarch64-linux = mkSniEdge pkgs.pkgsCross.aarch64-multiplatform;
        }
      );

      overlays.default = final: _prev: { sni-edge = mkSniEdge final; };

      nixosModules = {
        # The gateway, with this flake's build as the default package.
        sni-edge =
          { lib, pkgs, ... }:
          {
            imports = [ ./nixos/module.nix ];
            services.sniEdge.package = lib.mkDefault (mkSniEdge pkgs);
          };
        # For k3s server nodes behind the gateway.
        k3s-traefik = ./nixos/k3s-traefik.nix;
        default = {
          imports = [
            self.nixosModules.sni-edge
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
        # Every package, the aarch64 cross build included.
        lib.mapAttrs' (name: lib.nameValuePair "package-${name}") (removeAttrs packages [ "default" ])
        // {
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
