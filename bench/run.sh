#!/usr/bin/env bash
# Benchmark: sni-edge against HAProxy, nginx stream and sniproxy (all from Debian) and against
# no gateway at all, on identical work, in one run. See bench/README.md.
#
#   sudo bench/run.sh            full run (about 10 minutes), table on stdout and in
#                                bench/results/RESULTS-<date>.md
#   BENCH_QUICK=1 bench/run.sh   short smoke run (fewer, shorter rounds; not for publishing)
#   BENCH_SUITE=tunnel bench/run.sh
#                                tunnel mode beside sni-edge's direct mode, OpenSSH remote
#                                forwards and rathole (bench/results/TUNNEL-<date>.md)
#   SNI_EDGE_BASELINE=old/sni-edge bench/run.sh   adds a column "sni-edge-before" for that binary,
#                                measured in the same rounds (before/after a change; gateways suite)
#   BENCH_ONLY=conn bench/run.sh the new-connection figures only (TTFB, rates, CPU, context switches,
#                                system calls per connection); BENCH_CALLGRIND=1 adds instructions
#   BENCH_ONLY=bulk bench/run.sh the downloads only, on gateways that carried no connections first
#   BENCH_BATCH=1 bench/run.sh   adds a column "sni-edge-batch": sni-edge on SCHED_BATCH (chrt -b 0)
#
# Environment: SNI_EDGE (use this binary, skip the build), CARGO_TARGET_DIR (where to build;
# default target/ in the repo), BENCH_NO_PROFILE=1 (skip the perf profile of sni-edge),
# BENCH_KEEP=1 (keep the work directory with configs and logs), BENCH_SUITE (gateways, the
# default, or tunnel), RATHOLE (tunnel suite: use this rathole binary; by default rathole 0.5.0
# is installed with cargo into BENCH_CACHE, default /var/cache/sni-edge-bench, when missing),
# BENCH_PROFILE=1 (tunnel suite: perf profiles of the tunnel's gateway and agent), BENCH_FAR_CPU=0
# (backend and home on CPU 0 beside the load, gateways alone on CPU 1), BENCH_HOLD=SECONDS (keep
# everything up that long before measuring, to look around by hand), BENCH_REPS (rounds per figure,
# default 3), BENCH_BULK_MIB (size of the downloaded file in MiB, default 1024). bench/README.md has
# more.
#
# Topology (network namespaces, veth, RFC 5737 addresses):
#   client 198.51.100.10 --- 198.51.100.1 gateway 192.0.2.1 --- 192.0.2.20 backend
# The gateway namespace runs all four gateways (on ports 443..446; only the one being measured
# is busy) and routes in the kernel for the direct path (client -> backend:8443, no gateway
# process). Load generator on CPU 0; gateways and backend on CPU 1 (taskset).
# The tunnel suite adds a home namespace (203.0.113.20, linked to the gateway's 203.0.113.1)
# whose firewall drops every inbound connection: its own nginx is reached only through tunnels
# that the home side dials out (sni-edge agent, ssh -R, rathole client), also on CPU 1.
set -uo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)

log() { printf '# %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (network namespaces need it): sudo bench/run.sh"
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (load generator on CPU 0, gateway and backend on CPU 1)"
SUITE=${BENCH_SUITE:-gateways}
case $SUITE in gateways|tunnel) ;; *) die "BENCH_SUITE=$SUITE: expected gateways or tunnel" ;; esac
# The tunnel suite compares ways to reach home, not two builds: a second column would measure only
# the baseline's direct mode.
[ "$SUITE" = tunnel ] && [ -n "${SNI_EDGE_BASELINE:-}" ] && die "SNI_EDGE_BASELINE is for the gateways suite, not BENCH_SUITE=tunnel"
case ${BENCH_BATCH:-0} in 0) ;; 1) [ "$SUITE" = tunnel ] && die "BENCH_BATCH is for the gateways suite, not BENCH_SUITE=tunnel" ;;
  *) die "BENCH_BATCH=$BENCH_BATCH: expected 0 or 1" ;; esac

# --- packages ---------------------------------------------------------------------------------
ensure_packages() {
  local missing=() pair cmd pkg
  for pair in nginx:nginx haproxy:haproxy sniproxy:sniproxy curl:curl openssl:openssl \
              ip:iproute2 ss:iproute2 ethtool:ethtool python3:python3 taskset:util-linux \
              setsid:util-linux sysctl:procps nstat:iproute2 gcc:gcc git:git; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
  [ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
  command -v perf >/dev/null 2>&1 || missing+=(linux-perf)   # profile and system-call counts
  if [ "${BENCH_CALLGRIND:-0}" = 1 ] && ! command -v callgrind_control >/dev/null 2>&1; then missing+=(valgrind); fi
  if [ "$SUITE" = tunnel ]; then
    for pair in sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client autossh:autossh nft:nftables; do
      cmd=${pair%%:*} pkg=${pair#*:}
      command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
    done
  fi
  [ ${#missing[@]} = 0 ] && return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  log "installing missing packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >/dev/null || die "apt-get install ${missing[*]} failed"
}
ensure_packages

# rathole 0.5.0 for the tunnel suite, built once into a cache outside the repository. Not
# --locked: its lock file pins time 0.3.29, which no longer compiles with Rust >= 1.80 (E0282).
ensure_rathole() {
  if [ -n "${RATHOLE:-}" ]; then
    [ -x "$RATHOLE" ] || die "RATHOLE=$RATHOLE is not an executable"
    return 0
  fi
  local root=${BENCH_CACHE:-/var/cache/sni-edge-bench}/rathole-0.5.0
  RATHOLE=$root/bin/rathole
  [ -x "$RATHOLE" ] && return 0
  command -v cargo >/dev/null 2>&1 || die "cargo not found: needed to install rathole (or set RATHOLE)"
  log "installing rathole 0.5.0 into $root (cargo install; a few minutes, once)"
  mkdir -p "$root" || die "mkdir $root"
  env -u CARGO_TARGET_DIR cargo install -q rathole --version 0.5.0 --root "$root" \
    || die "cargo install rathole failed"
  [ -x "$RATHOLE" ] || die "no rathole at $RATHOLE after cargo install"
}
RATHOLE=${RATHOLE:-}
if [ "$SUITE" = tunnel ]; then
  ensure_rathole
  mkdir -p /run/sshd      # sshd's privilege separation directory (Debian's unit makes it at boot)
fi

# --- state and cleanup ------------------------------------------------------------------------
ID=$$
P=seb-$ID
NS_C=$P-c NS_G=$P-g NS_B=$P-b NS_H=$P-h
WORK=$(mktemp -d /tmp/sni-edge-bench.XXXXXX) || die "mktemp"
chmod 755 "$WORK"          # nginx workers run as nobody and read the backend's files here
: > "$WORK/pids"
: > "$WORK/netns"

# shellcheck source=tests/lib/netns.sh
. "$REPO/tests/lib/netns.sh"

# Kills only what this run started and deletes its namespaces (see tests/lib/netns.sh).
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  netns_teardown "$WORK"
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the gateway binary and the load generator ------------------------------------------------
SNI_EDGE_BUILT=0
if [ -n "${SNI_EDGE:-}" ]; then
  [ -x "$SNI_EDGE" ] || die "SNI_EDGE=$SNI_EDGE is not an executable"
else
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust, or set SNI_EDGE to a built binary"
  log "building sni-edge (cargo build --release)"
  (cd "$REPO" && cargo build --release -q) || die "cargo build failed"
  SNI_EDGE=${CARGO_TARGET_DIR:-$REPO/target}/release/sni-edge
  [ -x "$SNI_EDGE" ] || die "no binary at $SNI_EDGE"
  # Built here from the work tree: results name it by the work tree's revision.
  SNI_EDGE_BUILT=1
fi
if [ -n "${SNI_EDGE_BASELINE:-}" ]; then
  [ -x "$SNI_EDGE_BASELINE" ] || die "SNI_EDGE_BASELINE=$SNI_EDGE_BASELINE is not an executable"
  SNI_EDGE_BASELINE=$(realpath "$SNI_EDGE_BASELINE")
fi
case ${BENCH_ONLY:-} in ''|conn|bulk) ;; *) die "BENCH_ONLY=$BENCH_ONLY: the partial runs are BENCH_ONLY=conn and BENCH_ONLY=bulk" ;; esac
case ${BENCH_REPS:-3} in *[!0-9]*|0*) die "BENCH_REPS=$BENCH_REPS: expected a number of rounds, 1 or more" ;; esac
case ${BENCH_FAR_CPU:-1} in 0|1) ;; *) die "BENCH_FAR_CPU=$BENCH_FAR_CPU: expected 0 or 1 (this machine's CPUs)" ;; esac
gcc -O2 -Wall -o "$WORK/tlsload" "$BENCH_DIR/tlsload.c" -lssl -lcrypto || die "compiling tlsload"

# --- topology ---------------------------------------------------------------------------------
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
add_ns() {
  ip netns add "$1" || die "ip netns add $1"
  echo "$1" >> "$WORK/netns"
  in_ns "$1" ip link set lo up
  # Many short connections, 10k idle ones: wide port range, TIME_WAIT reuse, deep backlogs.
  in_ns "$1" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1 \
    net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 >/dev/null
}
log "topology: namespaces $NS_C $NS_G $NS_B$([ "$SUITE" = tunnel ] && echo " $NS_H")"
add_ns "$NS_C"; add_ns "$NS_G"; add_ns "$NS_B"
ip link add eth0 netns "$NS_C" type veth peer name c0 netns "$NS_G" || die "veth client"
ip link add b0 netns "$NS_G" type veth peer name eth0 netns "$NS_B" || die "veth backend"
in_ns "$NS_C" ip addr add 198.51.100.10/24 dev eth0
in_ns "$NS_G" ip addr add 198.51.100.1/24 dev c0
in_ns "$NS_G" ip addr add 192.0.2.1/24 dev b0
in_ns "$NS_B" ip addr add 192.0.2.20/24 dev eth0
for l in "$NS_C eth0" "$NS_G c0" "$NS_G b0" "$NS_B eth0"; do in_ns ${l% *} ip link set ${l#* } up; done
in_ns "$NS_C" ip route add 192.0.2.0/24 via 198.51.100.1
in_ns "$NS_B" ip route add 198.51.100.0/24 via 192.0.2.1
in_ns "$NS_G" sysctl -qw net.ipv4.ip_forward=1      # the direct path only
# The client sends real segments (no GSO/TSO): a 1.9 KB ClientHello arrives as two TCP segments,
# as from a real NIC. Bulk data flows the other way and keeps the veth's offloads.
in_ns "$NS_C" ethtool -K eth0 tso off gso off >/dev/null 2>&1 || true
if [ "$SUITE" = tunnel ]; then
  # Home: the gateway has a route to it, but its firewall drops every inbound connection; it
  # dials out. The backend gets the same kind of firewall (new connections to its ingress ports
  # only, and to 8445, the two-hop reference's second sni-edge), so both sides pay for connection
  # tracking alike.
  add_ns "$NS_H"
  ip link add h0 netns "$NS_G" type veth peer name eth0 netns "$NS_H" || die "veth home"
  in_ns "$NS_G" ip addr add 203.0.113.1/24 dev h0
  in_ns "$NS_H" ip addr add 203.0.113.20/24 dev eth0
  in_ns "$NS_G" ip link set h0 up
  in_ns "$NS_H" ip link set eth0 up
  firewall() {  # namespace, extra accept rule
    printf 'table inet bench {\n  chain input {\n    type filter hook input priority 0; policy drop;\n%s\n  }\n}\n' \
      "    ct state established,related accept; iifname \"lo\" accept; $2" | in_ns "$1" nft -f - \
      || die "nft firewall in $1"
  }
  firewall "$NS_H" ""
  firewall "$NS_B" "tcp dport { 443, 8443, 8445 } ct state new accept"
fi
sleep 0.3

# --- certificates -----------------------------------------------------------------------------
mkdir -p "$WORK/tls"
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 2 \
  -keyout "$WORK/tls/ca.key" -out "$WORK/tls/ca.pem" -subj "/CN=sni-edge bench CA $ID" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null || die "CA"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=bench.example.test" \
  -keyout "$WORK/tls/server.key" -out "$WORK/tls/server.csr" 2>/dev/null || die "CSR"
printf 'subjectAltName=DNS:bench.example.test\nextendedKeyUsage=serverAuth\n' > "$WORK/tls/ext"
openssl x509 -req -in "$WORK/tls/server.csr" -CA "$WORK/tls/ca.pem" -CAkey "$WORK/tls/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/tls/ext" -out "$WORK/tls/server.pem" 2>/dev/null || die "cert"
chmod 755 "$WORK/tls"; chmod 644 "$WORK/tls/"*

# --- measure ----------------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export WORK NS_C NS_G NS_B NS_H SNI_EDGE SNI_EDGE_BUILT SNI_EDGE_BASELINE REPO BENCH_DIR RATHOLE BENCH_SUITE=$SUITE
python3 "$BENCH_DIR/bench.py"
