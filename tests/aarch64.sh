#!/usr/bin/env bash
# Cross-build sni-edge for aarch64-unknown-linux-gnu with Debian's own Rust toolchain and run
# its unit, integration and doc tests under qemu user emulation. No ARM machine, no rustup
# target, nothing but Debian packages (installed here when missing). Run as root from anywhere:
#
#   tests/aarch64.sh            install what is missing, cross-build, test, smoke-run the binary
#
# Environment: CARGO_TARGET_DIR (default: /tmp/sni-edge-aarch64-target-<hash of the checkout's
# path>, kept apart from the native build so the two never mix artifacts, and one per checkout:
# cargo takes a test binary built from the same sources in another checkout as up to date, and
# that binary reads the other checkout's files, since env!("CARGO_MANIFEST_DIR") is fixed at build
# time).
#
# Pitfalls this script avoids (see the project's notes on aarch64):
# - rustup's proxies come first on PATH and their toolchain has no aarch64 std: use Debian's
#   compiler explicitly (RUSTC=/usr/bin/rustc, /usr/bin/cargo). Debian's rustc ignores
#   rust-toolchain.toml and may know lints the pinned toolchain does not.
# - Never pass `-L /usr/aarch64-linux-gnu` to qemu: the cross loader then meets the newer arm64
#   libc from libc6:arm64 and every program that starts a thread hangs. The arm64 loader and
#   libc come from libc6:arm64 at their standard paths, so no -L is needed.
# - Tests that run the crate's own binary as a child process need the kernel to hand aarch64
#   ELF files to qemu: binfmt_misc is mounted and qemu-aarch64 registered (flag F) if it is not.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=aarch64-unknown-linux-gnu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/sni-edge-aarch64-target-$(printf '%s' "$REPO" | sha256sum | cut -c1-12)}

log() { printf '# %s\n' "$*"; }
die() { printf 'aarch64: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs packages, registers binfmt_misc)"

# --- packages -----------------------------------------------------------------------------
PACKAGES=(
  rustc-web cargo-web libstd-rust-web-dev:arm64
  libc6:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  qemu-user file binfmt-support
)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "adding the arm64 architecture to dpkg"
  dpkg --add-architecture arm64
  NEED_UPDATE=1
fi
MISSING=()
for p in "${PACKAGES[@]}"; do installed "$p" || MISSING+=("$p"); done
if [ "${#MISSING[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  if [ -n "${NEED_UPDATE:-}" ] || ! apt-get install --no-install-recommends -y "${MISSING[@]}" >/dev/null 2>&1; then
    log "apt-get update"
    apt-get update -q
    log "installing: ${MISSING[*]}"
    apt-get install --no-install-recommends -y "${MISSING[@]}"
  fi
fi
for p in "${PACKAGES[@]}"; do installed "$p" || die "package $p is not installed"; done
log "packages: ${PACKAGES[*]}"

# --- binfmt_misc: aarch64 ELF files run through qemu ------------------------------------------
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/register" ]; then
  mount -t binfmt_misc binfmt_misc "$BINFMT" || die "cannot mount binfmt_misc"
fi
if grep -qs '^enabled' "$BINFMT/qemu-aarch64"; then
  log "binfmt_misc: qemu-aarch64 already registered ($(sed -n 's/^interpreter //p' "$BINFMT/qemu-aarch64"))"
else
  # Magic and mask of an aarch64 ELF executable (ELF64, little endian, e_machine 0xb7), as in
  # qemu's scripts/qemu-binfmt-conf.sh; F: open the interpreter now, so it works in any root.
  printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64:F' \
    >"$BINFMT/register" || die "cannot register qemu-aarch64 with binfmt_misc"
  log "binfmt_misc: registered /usr/bin/qemu-aarch64"
fi

# --- build and test -----------------------------------------------------------------------------
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
CARGO=/usr/bin/cargo
log "$($CARGO --version), $($RUSTC --version), target dir $CARGO_TARGET_DIR"

cd "$REPO"
log "cargo test --target $TARGET (tests run under qemu-aarch64)"
# One test at a time, each wait bounded by 180 s instead of 20: under emulation a debug build is tens
# of times slower (the tunnel tests move 24 and 50 MiB through TLS), and in-process gateways and agents
# of several tests sharing two emulated cores starve one another's keepalives (2 s in the tunnel
# tests) into false "dead agent" verdicts.
SNI_EDGE_TEST_PATIENCE=180 $CARGO test --locked --target "$TARGET" -- --test-threads=1

log "cargo build --release --target $TARGET"
$CARGO build --locked --release --target "$TARGET"
BIN=$CARGO_TARGET_DIR/$TARGET/release/sni-edge
DESC=$(file -b "$BIN")
printf '%s\n' "$DESC"
case $DESC in *"ARM aarch64"*) ;; *) die "$BIN is not an aarch64 executable" ;; esac

# Runs through binfmt_misc, the way a test's child process would.
log "$BIN check --config examples/gateway.json"
"$BIN" check --config examples/gateway.json
log "aarch64: cross build, tests and smoke run passed"
