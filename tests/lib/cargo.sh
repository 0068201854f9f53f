# Finds the cargo to build and test with, for scripts run as root through sudo. Sourced:
#
#   . tests/lib/cargo.sh && find_cargo || exit 2
#   "$CARGO" build ...
#
# The usual way to get Rust is rustup as a normal user: cargo lands in ~/.cargo/bin and that
# directory is put on the user's PATH. `sudo` on Debian resets PATH to its secure_path
# (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin), so under `sudo tests/run-all.sh`
# neither cargo nor rustc is on PATH any more. In this order, find_cargo takes:
#
# 1. $CARGO, when set: an explicit choice;
# 2. the rustup toolchain of the user who ran sudo ($SUDO_USER's ~/.cargo/bin/cargo), with
#    RUSTUP_HOME set to that user's ~/.rustup (rustup's proxies otherwise look in root's home) and
#    that ~/.cargo/bin first on PATH (the proxies run rustc, rustdoc, ... from PATH). CARGO_HOME
#    stays root's own (~root/.cargo): the crates root downloads are not written into the user's
#    home. Preferred over a cargo in /usr/bin, which may be Debian's (tests/aarch64.sh installs
#    it) rather than the toolchain the user chose;
# 3. cargo on PATH;
# 4. root's own rustup install, ~root/.cargo/bin/cargo, when PATH was reset.
#
# Sets CARGO (and exports RUSTUP_HOME, PATH for case 2); returns 1 with advice when none is found.

find_cargo() {
  local user_home root_home
  if [ -n "${CARGO:-}" ]; then
    [ -x "$CARGO" ] || command -v "$CARGO" >/dev/null || {
      echo "CARGO=$CARGO is not an executable" >&2
      return 1
    }
    return 0
  fi

  if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    if [ -n "$user_home" ] && [ -x "$user_home/.cargo/bin/cargo" ]; then
      CARGO=$user_home/.cargo/bin/cargo
      if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$user_home/.rustup" ]; then
        export RUSTUP_HOME=$user_home/.rustup
      fi
      root_home=$(getent passwd "$(id -un)" | cut -d: -f6)
      export CARGO_HOME=${CARGO_HOME:-${root_home:-/root}/.cargo}
      export PATH=$user_home/.cargo/bin:$PATH
      return 0
    fi
  fi

  if CARGO=$(command -v cargo); then
    return 0
  fi

  root_home=$(getent passwd "$(id -un)" | cut -d: -f6)
  if [ -n "$root_home" ] && [ -x "$root_home/.cargo/bin/cargo" ]; then
    CARGO=$root_home/.cargo/bin/cargo
    export PATH=$root_home/.cargo/bin:$PATH
    return 0
  fi

  CARGO=
  cat >&2 <<'EOF'
cargo not found: not in $CARGO, not in the rustup toolchain of $SUDO_USER (~/.cargo/bin),
not on PATH, not in root's ~/.cargo/bin. Install Rust as your normal user with rustup
(https://rustup.rs: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh), a C
compiler (sudo apt-get install build-essential), then run the command again with sudo; or set
CARGO=/path/to/cargo.
EOF
  return 1
}
