#!/usr/bin/env bash
# Every test of sni-edge, on a fresh Debian 12 machine with Rust (rustup as your normal user and a C
# compiler; see README.md). Run as root (it installs Debian packages and builds network namespaces):
#
#   sudo tests/run-all.sh
#   tests/run-all.sh --which-cargo     only print the cargo the steps would use and its version
#
# 1. installs what the tests need from Debian (gcc, nginx, haproxy, curl, openssl, chromium,
#    iproute2, nix-bin, ...);
# 2. the newcomer's cargo under sudo (tests/sudo-cargo.sh); cargo test (unit, loopback
#    integration, the CLI on every example), the doc tests, the release build, then the demo
#    (the README's first command);
# 3. the Nix side offline (tests/nix/check.sh): every .nix file parses and is in nixfmt's format;
#    the NixOS modules, the flake's modules and overlay and the VM tests' nodes are evaluated
#    with nixpkgs' lib (../shared/nixpkgs-lib or NIXPKGS_LIB); the k3s YAML against the Traefik
#    chart's keys;
# 4. the lab: gateway, cluster node and clients in network namespaces, with real programs;
# 5. the aarch64 cross build, its tests run under qemu user emulation (installs its own cross
#    toolchain, Debian's rustc in /usr/bin, dpkg's arm64 architecture and a qemu binfmt entry).
#
# cargo: sudo resets PATH, so a rustup toolchain in ~/.cargo/bin is found through SUDO_USER
# (tests/lib/cargo.sh). Each step prints its own results; the last line adds them up:
# "N passed, M failed, K skipped" (a skipped step or check is never counted as passed).
# Environment: SKIP_AARCH64=1 or SKIP_LAB=1 to leave a step out (it is then reported as skipped);
# CARGO=/path/to/cargo to choose the cargo.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
REPO=$(pwd)
. tests/lib/cargo.sh

case "${1:-}" in
  "") ;;
  --which-cargo)
    find_cargo || exit 2
    echo "cargo: $CARGO"
    "$CARGO" --version || exit 2
    # What that cargo's build will call: rustc from PATH (through rustup's proxy, for a rustup
    # toolchain), unless RUSTC says otherwise.
    echo "rustc: ${RUSTC:-$(command -v rustc)}"
    "${RUSTC:-rustc}" --version || exit 2
    exit 0
    ;;
  *) echo "usage: $0 [--which-cargo]" >&2; exit 2 ;;
esac

LOGS=$(mktemp -d /tmp/sni-edge-tests.XXXXXX)
passed=0 failed=0 skipped=0
steps_failed=()
skipped_steps=()

say() { printf '\n=== %s\n' "$*"; }

# Adds up "test result: ok. N passed; M failed; K ignored" (cargo; ignored counts as skipped)
# and "N passed, M failed[, K skipped]" (our scripts).
count() {
  local log=$1 p f k
  read -r p f k < <(grep -hoE '^test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed; [0-9]+ ignored|^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?' "$log" |
    awk '{ for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^(ignored|skipped)/) k += $i } }
      END { print p+0, f+0, k+0 }')
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + k))
}

# step NAME COMMAND...: runs it with its output shown and kept, and counts its results.
step() {
  local name=$1; shift
  say "$name"
  local log="$LOGS/${name// /-}.log"
  "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  count "$log"
  if [ "$status" -ne 0 ]; then
    steps_failed+=("$name (exit $status)")
  fi
}

if [ "$(id -u)" -ne 0 ]; then
  echo "run-all.sh installs packages and builds network namespaces: run it as root (sudo tests/run-all.sh)" >&2
  exit 2
fi

say "installing test dependencies from Debian"
# gcc and libc6-dev: the C compiler that the ring crate's build needs. libgmp10 and libffi8: what
# nixfmt (../shared/tools/nixfmt-1.2.0/nixfmt, used by tests/nix/check.sh) links against.
PACKAGES=(gcc libc6-dev libgmp10 libffi8 nginx haproxy curl openssl chromium iproute2 ethtool libnss3-tools tcpdump procps
  python3 python3-yaml nix-bin nftables)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
    { echo "apt-get install failed: ${missing[*]}" >&2; exit 2; }
fi
# The packaged nginx and haproxy start system services on install; the tests run their own.
systemctl disable --now nginx haproxy >/dev/null 2>&1 || true

# The newcomer's path: rustup as a normal user, then sudo (a throwaway user, a few seconds).
step "cargo under sudo" tests/sudo-cargo.sh
find_cargo || exit 2
say "cargo: $CARGO ($("$CARGO" --version 2>&1))"
step "cargo test" "$CARGO" test --all-targets --no-fail-fast
step "cargo doc tests" "$CARGO" test --doc
step "release build" "$CARGO" build --release --locked
# The README's first command, exactly as written there: it exits non-zero if any of its checks fails.
step "demo (README's first command)" "$CARGO" run --release --example demo

export SNI_EDGE="$REPO/target/release/sni-edge"
step "nix checks" tests/nix/check.sh

if [ "${SKIP_LAB:-}" = 1 ]; then
  say "lab: SKIPPED (SKIP_LAB=1)"; skipped=$((skipped + 2)); skipped_steps+=(lab "lab: tunnel mode")
else
  step "lab" tests/lab/run.sh
  step "lab: tunnel mode" tests/lab/tunnel.sh
fi

if [ "${SKIP_AARCH64:-}" = 1 ]; then
  say "aarch64 under qemu: SKIPPED (SKIP_AARCH64=1)"; skipped=$((skipped + 1)); skipped_steps+=(aarch64)
else
  step "aarch64 under qemu" tests/aarch64.sh
fi

say "summary (logs in $LOGS)"
for s in "${steps_failed[@]}"; do echo "failed step: $s"; done
[ ${#skipped_steps[@]} -gt 0 ] && echo "skipped steps: ${skipped_steps[*]}"
[ "$skipped" -gt 0 ] && echo "skipped (steps and checks; see the *** SKIPPED lines above): $skipped"
if [ ${#steps_failed[@]} -gt 0 ] && [ "$failed" -eq 0 ]; then
  failed=${#steps_failed[@]}   # a step that failed without a counted test still fails the run
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ ${#steps_failed[@]} -eq 0 ]
