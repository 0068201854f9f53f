#!/usr/bin/env bash
# The newcomer's path: Rust installed with rustup as a normal user, then `sudo tests/run-all.sh`.
# Debian's sudo resets PATH to its secure_path, so the user's ~/.cargo/bin is gone; run-all.sh must
# still find the user's cargo (tests/lib/cargo.sh). Run as root, offline, in a few seconds:
#
#   tests/sudo-cargo.sh
#
# 1. creates a throwaway user whose home has a rustup-style install: ~/.cargo/bin holds rustup's
#    proxies (copies of this machine's rustup binary) and ~/.rustup a default toolchain linked with
#    `rustup toolchain link` to a hard-linked copy of this machine's toolchain (no download);
# 2. as that user, with ~/.cargo/bin on PATH only, `cargo --version` works (what the user sees);
# 3. the way sudo runs the test command (env -i, PATH=secure_path, HOME=/root, SUDO_USER=<user>),
#    `tests/run-all.sh --which-cargo` (the real resolution code of run-all.sh) picks that user's
#    cargo and rustc, and they run;
# 4. the same invocation without SUDO_USER does not pick them (so 3 cannot pass by accident).
# The user, its home and everything in it are removed at the end.
#
# Last line: "N passed, M failed, K skipped".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

PASSED=0 FAILED=0 SKIPPED=0
ok() { PASSED=$((PASSED + 1)); printf 'ok: %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL: %s\n' "$1"; [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/    /'; }
finish() { echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"; [ "$FAILED" -eq 0 ]; exit; }
skip_all() { SKIPPED=$((SKIPPED + 1)); printf '\n*** SKIPPED: %s ***\n\n' "$1"; finish; }

# Debian 12's /etc/sudoers: Defaults secure_path=...
SECURE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

[ "$(id -u)" -eq 0 ] || { echo "run as root: it creates and removes a user" >&2; exit 2; }

# This machine's rustup and the sysroot of its default toolchain, as root sees them.
RUSTUP=$(command -v rustup || true)
[ -n "$RUSTUP" ] || [ ! -x "$HOME/.cargo/bin/rustup" ] || RUSTUP=$HOME/.cargo/bin/rustup
[ -n "$RUSTUP" ] || skip_all "no rustup on this machine to install for a throwaway user"
SYSROOT=$(PATH=$(dirname "$RUSTUP"):$PATH rustc --print sysroot 2>/dev/null) ||
  skip_all "rustup has no working default toolchain here"
TOOLCHAIN_VERSION=$(PATH=$(dirname "$RUSTUP"):$PATH rustc --version)

NAME=sni-newcomer-$$
HOME_DIR=$(mktemp -d /tmp/sni-edge-newcomer.XXXXXX) || exit 2
MOUNTED=
cleanup() {
  [ -z "$MOUNTED" ] || umount "$MOUNTED" 2>/dev/null
  userdel "$NAME" >/dev/null 2>&1
  rm -rf "$HOME_DIR"
}
trap cleanup EXIT
chmod 755 "$HOME_DIR"
useradd --no-create-home --home-dir "$HOME_DIR" --shell /bin/sh "$NAME" || { fail "useradd $NAME"; finish; }

# rustup's layout: one binary, called as cargo, rustc, ... through links of those names.
mkdir -p "$HOME_DIR/.cargo/bin" "$HOME_DIR/toolchain"
cp "$RUSTUP" "$HOME_DIR/.cargo/bin/rustup"
for tool in cargo rustc rustdoc; do ln "$HOME_DIR/.cargo/bin/rustup" "$HOME_DIR/.cargo/bin/$tool"; done
# The toolchain itself: hard links when it is on the same file system (root's home is not
# readable by the user, its files are), else a read-only bind mount.
if ! cp -al "$SYSROOT/." "$HOME_DIR/toolchain/" 2>/dev/null; then
  rm -rf "$HOME_DIR/toolchain" && mkdir "$HOME_DIR/toolchain" &&
    mount --bind -o ro "$SYSROOT" "$HOME_DIR/toolchain" && MOUNTED=$HOME_DIR/toolchain ||
    { fail "could not give the user a copy of $SYSROOT"; finish; }
fi
chown -R "$NAME:" "$HOME_DIR/.cargo"
[ -n "$MOUNTED" ] || chown "$NAME:" "$HOME_DIR/toolchain"
chown "$NAME:" "$HOME_DIR"

# What rustup's installer leaves: a default toolchain in ~/.rustup, ~/.cargo/bin on PATH.
as_user() { runuser -u "$NAME" -- env -i HOME="$HOME_DIR" PATH="$HOME_DIR/.cargo/bin:/usr/bin:/bin" "$@"; }
if out=$(as_user rustup toolchain link machine "$HOME_DIR/toolchain" 2>&1 && as_user rustup default machine 2>&1); then
  ok "the user's rustup links the machine's toolchain offline and makes it the default"
else
  fail "the user's rustup links the machine's toolchain offline and makes it the default" "$out"
  finish
fi
if out=$(as_user rustc --version 2>&1) && [ "$out" = "$TOOLCHAIN_VERSION" ]; then
  ok "as the user, with only ~/.cargo/bin on PATH: $out"
else
  fail "as the user, rustc --version is the machine's toolchain ($TOOLCHAIN_VERSION)" "$out"
fi

# What `sudo tests/run-all.sh` gives the script: env_reset, PATH=secure_path, HOME of root,
# SUDO_USER of the caller.
as_sudo() { env -i PATH="$SECURE_PATH" HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb "$@"; }
out=$(as_sudo SUDO_USER="$NAME" SUDO_UID="$(id -u "$NAME")" tests/run-all.sh --which-cargo 2>&1)
status=$?
if [ "$status" -eq 0 ] && grep -qxF "cargo: $HOME_DIR/.cargo/bin/cargo" <<<"$out"; then
  ok "sudo-style run-all.sh finds the user's cargo ($HOME_DIR/.cargo/bin/cargo)"
else
  fail "sudo-style run-all.sh finds the user's cargo" "exit $status"$'\n'"$out"
fi
if grep -qxF "rustc: $HOME_DIR/.cargo/bin/rustc" <<<"$out" && grep -qxF "$TOOLCHAIN_VERSION" <<<"$out"; then
  ok "and its rustc is the user's toolchain: $TOOLCHAIN_VERSION"
else
  fail "and its rustc is the user's toolchain ($TOOLCHAIN_VERSION)" "$out"
fi

# The control: without SUDO_USER the same call must not find the user's toolchain.
out=$(as_sudo tests/run-all.sh --which-cargo 2>&1)
if grep -qF "$HOME_DIR" <<<"$out"; then
  fail "without SUDO_USER the user's cargo is not found (else the check above proves nothing)" "$out"
else
  ok "without SUDO_USER the user's cargo is not found: $(head -1 <<<"$out")"
fi

finish
