# The sni-edge package, built with nixpkgs' Rust tooling. The crate's tests
# (unit, integration, doc) run in the build's check phase; they only use
# loopback, which the Nix sandbox has. Called from flake.nix with the filtered
# source and the version read from Cargo.toml.
{
  lib,
  rustPlatform,
  src,
  version,
}:

rustPlatform.buildRustPackage {
  pname = "sni-edge";
  inherit version src;

  cargoLock.lockFile = src + "/Cargo.lock";

  meta = {
    description = "Edge gateway that routes TLS by SNI without decrypting, adds PROXY protocol, redirects HTTP and passes ACME challenges";
    homepage = "https://github.com/sni-edge/sni-edge";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "sni-edge";
    platforms = lib.platforms.linux;
  };
}
