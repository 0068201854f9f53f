# Helpers shared by the lab's scripts (tests/lab/run.sh, tests/lab/tunnel.sh); source it (bash).
# They use the caller's WORK (state directory: pids, netns, logs), PASSED and FAILED.

log() { printf '# %s\n' "$*"; }
die() { printf 'lab: error: %s\n' "$*" >&2; exit 1; }

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# start_bg NAME NS CMD...: start a long-running process in a namespace, own session, output to
# $WORK/NAME.out; records the PID (ip netns exec and setsid both exec, so $! is the process).
start_bg() {
  local name=$1 ns=$2; shift 2
  setsid ip netns exec "$ns" "$@" </dev/null >>"$WORK/$name.out" 2>&1 &
  local pid=$!
  echo "$pid $name" >> "$WORK/pids"
  BG_PID=$pid
}

# stop_pid PID: stop a process start_bg started (TERM, then KILL after 5 s), forget its PID.
stop_pid() {
  local pid=$1 n
  sed -i "/^$pid /d" "$WORK/pids"
  kill -TERM "$pid" 2>/dev/null || return 0
  for n in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
}

# wait_listen NS IP PORT [PID]: bounded wait (10 s) until something listens there. Uses ss, so
# it does not open a connection (that would disturb the ingresses' connection counters).
wait_listen() {
  local ns=$1 ip=$2 port=$3 pid=${4:-} n
  for n in $(seq 1 100); do
    if in_ns "$ns" ss -Hltn "sport = :$port" 2>/dev/null | grep -q "$ip:$port"; then return 0; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

ok() { PASSED=$((PASSED + 1)); printf 'ok - %s\n' "$1"; }
fail() {
  FAILED=$((FAILED + 1))
  printf 'FAIL - %s\n' "$1"
  [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/    /'
  return 0
}
# check DESC CONDITION-RESULT EVIDENCE: ok when the result is 0.
check() { if [ "$2" = 0 ]; then ok "$1"; else fail "$1" "$3"; fi; }

add_ns() { ip netns add "$1" || die "ip netns add $1"; echo "$1" >> "$WORK/netns"; in_ns "$1" ip link set lo up; }

# link NS1 IF1 NS2 IF2: a veth pair between two namespaces, both ends up, offloads off so the
# kernel does not coalesce segments (we want to see a ClientHello span several).
link() {
  ip link add "$2" netns "$1" type veth peer name "$4" netns "$3" || die "veth $1:$2 <-> $3:$4"
  in_ns "$1" ip link set "$2" up
  in_ns "$3" ip link set "$4" up
  in_ns "$1" ethtool -K "$2" tso off gso off gro off >/dev/null 2>&1 || true
  in_ns "$3" ethtool -K "$4" tso off gso off gro off >/dev/null 2>&1 || true
}

bridge_in() { in_ns "$1" ip link add br0 type bridge && in_ns "$1" ip link set br0 up; }
enslave() { in_ns "$1" ip link set "$2" master br0; }

# curl_c NS ARGS...: curl from a client namespace, bounded.
curl_c() { local ns=$1; shift; in_ns "$ns" curl -sS --max-time 10 --connect-timeout 5 "$@"; }

# chromium_home DIR: a fresh profile whose NSS database trusts the test CA ($CA) and nothing else.
chromium_home() {
  local home=$1
  mkdir -p "$home/.pki/nssdb" "$home/profile" "$home/tmp"
  certutil -N -d "sql:$home/.pki/nssdb" --empty-password || { fail "Chromium NSS db" "certutil -N failed"; return 1; }
  certutil -A -d "sql:$home/.pki/nssdb" -n "sni-edge lab CA" -t "C,," -i "$CA" \
    || { fail "Chromium NSS db" "certutil -A failed"; return 1; }
}

# chromium_dump HOME NS RESOLVER-RULES URL: headless Chromium in a namespace prints the page's DOM;
# stderr goes to $WORK/chromium.err. The flags keep it from reaching for the internet.
chromium_dump() {
  local out try
  for try in 1 2; do
    out=$(HOME=$1 TMPDIR=$1/tmp timeout 90 ip netns exec "$2" chromium --headless --no-sandbox --disable-gpu \
      --disable-quic --no-first-run --disable-background-networking --disable-component-update \
      --disable-sync --disable-dev-shm-usage --user-data-dir="$1/profile" \
      --host-resolver-rules="$3" --dump-dom "$4" 2>"$WORK/chromium.err")
    # Chromium abandons a load when it sees the machine's network change (another test's namespaces
    # and links coming and going): that, and only that, is tried once more.
    [ -z "$out" ] && grep -q ERR_NETWORK_CHANGED "$WORK/chromium.err" || break
  done
  printf '%s' "$out"
}
