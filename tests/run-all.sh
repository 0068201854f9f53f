#!/usr/bin/env bash
# Every test of sni-edge, on a fresh Debian 12 machine with Rust. Run as root (it installs
# Debian packages and builds network namespaces):
#
#   sudo tests/run-all.sh
#
# 1. installs what the tests need from Debian (nginx, haproxy, curl, openssl, chromium,
#    iproute2, nix-bin, ...; the aarch64 step installs its own cross toolchain and qemu);
# 2. cargo test: unit tests, loopback integration tests, the CLI on every example; the demo
#    (the README's first command);
# 3. the Nix side offline: every .nix file parses; with NIXPKGS_LIB set to a checkout of
#    nix-community/nixpkgs.lib the NixOS modules are evaluated too (else: SKIPPED, loudly);
#    the k3s YAML against the Traefik chart's keys;
# 4. the lab: gateway, cluster node and clients in network namespaces, with real programs;
# 5. the aarch64 cross build, its tests run under qemu user emulation.
#
# Each step prints its own results; the last line adds them up: "N passed, M failed".
# Environment: SKIP_AARCH64=1 or SKIP_LAB=1 to leave a step out (it is then reported as skipped).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
REPO=$(pwd)
LOGS=$(mktemp -d /tmp/sni-edge-tests.XXXXXX)
passed=0 failed=0 skipped=0
steps_failed=()

say() { printf '\n=== %s\n' "$*"; }

# Adds up "test result: ok. N passed; M failed" (cargo) and "N passed, M failed" (our scripts).
count() {
  local log=$1 p f
  read -r p f < <(grep -hoE '^test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed|^[0-9]+ passed, [0-9]+ failed' "$log" |
    awk '{ for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p+0, f+0 }')
  passed=$((passed + p)); failed=$((failed + f))
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
PACKAGES=(nginx haproxy curl openssl chromium iproute2 ethtool libnss3-tools tcpdump procps
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

step "cargo test" cargo test --all-targets --no-fail-fast
step "cargo doc tests" cargo test --doc
step "release build" cargo build --release --locked
# The README's first command, exactly as written there: it exits non-zero if any of its checks fails.
step "demo (README's first command)" cargo run --release --example demo

export SNI_EDGE="$REPO/target/release/sni-edge"
step "nix checks" tests/nix/check.sh

if [ "${SKIP_LAB:-}" = 1 ]; then
  say "lab: SKIPPED (SKIP_LAB=1)"; skipped=$((skipped + 1))
else
  step "lab" tests/lab/run.sh
  step "lab: tunnel mode" tests/lab/tunnel.sh
fi

if [ "${SKIP_AARCH64:-}" = 1 ]; then
  say "aarch64 under qemu: SKIPPED (SKIP_AARCH64=1)"; skipped=$((skipped + 1))
else
  step "aarch64 under qemu" tests/aarch64.sh
fi

say "summary (logs in $LOGS)"
for s in "${steps_failed[@]}"; do echo "failed step: $s"; done
[ "$skipped" -gt 0 ] && echo "skipped steps: $skipped"
if [ ${#steps_failed[@]} -gt 0 ] && [ "$failed" -eq 0 ]; then
  failed=${#steps_failed[@]}   # a step that failed without a counted test still fails the run
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#steps_failed[@]} -eq 0 ]
