#!/usr/bin/env bash
# End-to-end lab for sni-edge: network namespaces + veth, the real binary as an unprivileged
# user, real ingresses (nginx, HAProxy) that trust PROXY only from the gateway, real clients
# (curl, openssl s_client, headless Chromium). See tests/lab/README.md.
#
#   tests/lab/run.sh              build the lab, run every check, tear down (exit 1 if any fails)
#   tests/lab/run.sh --keep       same, but leave the lab running and print how to look around
#   tests/lab/run.sh --up         build the lab and leave it running, no checks
#   tests/lab/run.sh --down [ID]  tear down kept labs (all of them, or the one with that ID)
#
# Environment: SNI_EDGE (binary; default target/release/sni-edge), NIXPKGS_LIB (use the NixOS
# module's config when tests/nix/check.sh can export it), LAB_LOG_LEVEL (gateway log level,
# default debug), LAB_SKIP_CHROMIUM=1, LAB_SKIP_OPS=1 (skip the operations checks: concurrency,
# reload, failover, SIGTERM).
set -uo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
# Not $TMPDIR: the gateway runs as nobody and must be able to read its config under here.
STATE_ROOT=/tmp

# --- addresses (RFC 5737) --------------------------------------------------------------------
GW_PUB=203.0.113.1        # gateway, public side
C1=203.0.113.10           # internet client 1
C2=203.0.113.11           # internet client 2
GW_HOME=192.0.2.1         # gateway, home side: the only PROXY sender the ingresses trust
NODE=192.0.2.20           # cluster node: nginx :443 (PROXY v1/v2), :80 (ACME); HAProxy :8443
NODE_B=192.0.2.21         # second ingress server on the node (failover target)
NODE_SIDE=198.51.100.20   # the node's side link, only the attacker is on it
ATTACKER=198.51.100.66    # reaches the node directly, forges PROXY headers
BOTS_NET=203.0.113        # bots: 40 addresses 203.0.113.100-139 that hold silent connections
BOTS_FIRST=100
BOTS_COUNT=40
NOBODY_UID=65534
NOBODY_GID=65534

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

MODE="test"
DOWN_ID=
case "${1:-}" in
  "") ;;
  --keep) MODE=keep ;;
  --up) MODE=up ;;
  --down) MODE=down; DOWN_ID=${2:-} ;;
  -h|--help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

# shellcheck source=tests/lab/lib.sh
. "$LAB_DIR/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (ip netns needs it)"

# --- teardown (also used by --down) ----------------------------------------------------------
# shellcheck source=tests/lib/netns.sh
. "$REPO/tests/lib/netns.sh"

# Kills only what this lab started and deletes its namespaces (see tests/lib/netns.sh).
teardown_dir() {
  local dir=$1
  [ -d "$dir" ] || return 0
  netns_teardown "$dir"
  rm -f "$dir/pids" "$dir/netns" "$dir/kept"
}

if [ "$MODE" = down ]; then
  found=0
  for dir in "$STATE_ROOT"/sni-edge-lab.*; do
    [ -f "$dir/kept" ] || continue
    id=${dir##*.}
    [ -n "$DOWN_ID" ] && [ "$id" != "$DOWN_ID" ] && continue
    log "tearing down lab $id ($dir)"
    teardown_dir "$dir"
    rm -rf "$dir"
    found=1
  done
  [ $found = 1 ] || log "no kept lab found${DOWN_ID:+ with id $DOWN_ID}"
  exit 0
fi

# --- state ------------------------------------------------------------------------------------
ID=$$
P=sel-$ID                               # namespace prefix, unique per run
WORK=$STATE_ROOT/sni-edge-lab.$ID       # configs, certs, logs, pid list
NS_PUB=$P-pub NS_C1=$P-c1 NS_C2=$P-c2 NS_GW=$P-gw NS_HOME=$P-home NS_NODE=$P-node NS_ATT=$P-att
NS_BOTS=$P-bots
PASSED=0
FAILED=0
SETUP_DONE=0
GW_PID=
NGINX_A_PID=
NGINX_B_PID=
HAPROXY_PID=

on_exit() {
  local rc=$?
  if [ "$MODE" != test ] && [ $SETUP_DONE = 1 ]; then
    touch "$WORK/kept"
    return
  fi
  [ -d "$WORK" ] || return
  teardown_dir "$WORK"
  if [ $FAILED = 0 ] && [ $rc = 0 ]; then
    rm -rf "$WORK"
  else
    log "logs kept in $WORK (namespaces removed)"
  fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM


# --- helpers ----------------------------------------------------------------------------------
# --- packages ---------------------------------------------------------------------------------
ensure_packages() {
  local missing=() pair cmd pkg
  for pair in nginx:nginx haproxy:haproxy curl:curl openssl:openssl chromium:chromium \
              ip:iproute2 ss:iproute2 ethtool:ethtool certutil:libnss3-tools tcpdump:tcpdump \
              python3:python3 setpriv:util-linux setsid:util-linux sysctl:procps; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} = 0 ] && return 0
  log "installing missing packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || die "apt-get update failed"
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >/dev/null || die "apt-get install failed"
}

# --- topology ---------------------------------------------------------------------------------
#   c1, c2, gw:pub0 --- bridge in "pub" (203.0.113.0/24)
#   gw:home0, node  --- bridge in "home" (192.0.2.0/24)
#   attacker:eth0 ----- node:side0 (198.51.100.0/24), the only other way to the node
build_topology() {
  log "topology: namespaces $P-{pub,c1,c2,gw,home,node,att,bots}"
  for ns in "$NS_PUB" "$NS_C1" "$NS_C2" "$NS_GW" "$NS_HOME" "$NS_NODE" "$NS_ATT" "$NS_BOTS"; do add_ns "$ns"; done
  bridge_in "$NS_PUB" || die "bridge pub"
  bridge_in "$NS_HOME" || die "bridge home"

  link "$NS_C1" eth0 "$NS_PUB" c1;    enslave "$NS_PUB" c1
  link "$NS_C2" eth0 "$NS_PUB" c2;    enslave "$NS_PUB" c2
  link "$NS_GW" pub0 "$NS_PUB" gw;    enslave "$NS_PUB" gw
  link "$NS_GW" home0 "$NS_HOME" gw;  enslave "$NS_HOME" gw
  link "$NS_NODE" eth0 "$NS_HOME" node; enslave "$NS_HOME" node
  link "$NS_ATT" eth0 "$NS_NODE" side0
  link "$NS_BOTS" eth0 "$NS_PUB" bots; enslave "$NS_PUB" bots

  in_ns "$NS_C1" ip addr add $C1/24 dev eth0
  in_ns "$NS_C2" ip addr add $C2/24 dev eth0
  in_ns "$NS_GW" ip addr add $GW_PUB/24 dev pub0
  in_ns "$NS_GW" ip addr add $GW_HOME/24 dev home0
  in_ns "$NS_NODE" ip addr add $NODE/24 dev eth0
  in_ns "$NS_NODE" ip addr add $NODE_B/24 dev eth0
  in_ns "$NS_NODE" ip addr add $NODE_SIDE/24 dev side0
  in_ns "$NS_ATT" ip addr add $ATTACKER/24 dev eth0
  local n
  for n in $(seq $BOTS_FIRST $((BOTS_FIRST + BOTS_COUNT - 1))); do
    in_ns "$NS_BOTS" ip addr add $BOTS_NET.$n/24 dev eth0
  done
  # The attacker's only route into the home network goes straight to the node.
  in_ns "$NS_ATT" ip route add 192.0.2.0/24 via $NODE_SIDE
  # The gateway does not route between its sides (the default in a new namespace; made explicit).
  in_ns "$NS_GW" sysctl -qw net.ipv4.ip_forward=0
  in_ns "$NS_NODE" sysctl -qw net.ipv4.ip_forward=0
  # Let addresses settle (duplicate address detection is IPv6 only; ARP needs nothing).
  sleep 0.2
}

# --- test CA and server certificate -----------------------------------------------------------
SAN="DNS:app.example.test,DNS:*.kube.example.test,DNS:*.b.kube.example.test,DNS:v1.example.test,DNS:v2.example.test,DNS:failover.example.test,DNS:reload.example.test"

make_ca() {
  local d=$WORK/tls
  mkdir -p "$d"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$d/ca.key" -out "$d/ca.pem" -days 2 -subj "/CN=sni-edge lab CA $ID" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || die "CA"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=app.example.test" 2>/dev/null || die "CSR"
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
    "$SAN" > "$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/server.ext" -out "$d/server.pem" 2>/dev/null || die "server cert"
  cat "$d/server.pem" "$d/server.key" > "$d/haproxy.pem"
  chmod 755 "$d"
  chmod 644 "$d/ca.pem" "$d/server.pem"
  CA=$d/ca.pem
}

# --- the cluster node's ingresses -------------------------------------------------------------
ACME_TOKEN=lab-token-$ID
ACME_BODY="acme-response-$ID"

# write_nginx_conf NAME: nginx-a serves :443 (TLS page), :80 (ACME), 127.0.0.1:8080 stub_status;
# nginx-b serves only the TLS page on the second address (the failover server).
write_nginx_conf() {
  local name=$1 d=$WORK/$1
  mkdir -p "$d/tmp"
  chmod 755 "$d" "$d/tmp"
  {
    cat <<EOF
user nobody nogroup;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log info;
events { worker_connections 512; }
http {
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  default_type text/plain;
  keepalive_timeout 5s;
  log_format lab 'client=\$remote_addr peer=\$realip_remote_addr proxy_addr=\$proxy_protocol_addr '
                 'port=\$server_port sni=\$ssl_server_name host=\$host status=\$status "\$request"';
  # Trust the PROXY header's address only from the gateway's home-side address.
  set_real_ip_from $GW_HOME;
  real_ip_header proxy_protocol;
EOF
    if [ "$name" = nginx-a ]; then
      cat <<EOF
  server {
    listen $NODE:443 ssl proxy_protocol;
    ssl_certificate $WORK/tls/server.pem;
    ssl_certificate_key $WORK/tls/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    access_log $d/tls.log lab;
    if (\$realip_remote_addr != "$GW_HOME") { return 403 "refused: PROXY header from untrusted \$realip_remote_addr\n"; }
    location / { return 200 "client=\$remote_addr ingress=nginx-a sni=\$ssl_server_name\n"; }
  }
  server {
    listen $NODE:80 proxy_protocol;
    access_log $d/http.log lab;
    if (\$realip_remote_addr != "$GW_HOME") { return 403 "refused: PROXY header from untrusted \$realip_remote_addr\n"; }
    location /.well-known/acme-challenge/ { root $WORK/acme; }
    location / { return 404 "only ACME challenges here\n"; }
  }
  server {
    listen 127.0.0.1:8080;
    access_log off;
    location = /status { stub_status; }
  }
}
EOF
    else
      cat <<EOF
  server {
    listen $NODE_B:443 ssl proxy_protocol;
    ssl_certificate $WORK/tls/server.pem;
    ssl_certificate_key $WORK/tls/server.key;
    access_log $d/tls.log lab;
    if (\$realip_remote_addr != "$GW_HOME") { return 403 "refused: PROXY header from untrusted \$realip_remote_addr\n"; }
    location / { return 200 "client=\$remote_addr ingress=nginx-b sni=\$ssl_server_name\n"; }
  }
  server {
    listen 127.0.0.1:8081;
    access_log off;
    location = /status { stub_status; }
  }
}
EOF
    fi
  } > "$d/nginx.conf"
  : > "$d/tls.log"; : > "$d/http.log"; : > "$d/error.log"
}

write_haproxy_conf() {
  local d=$WORK/haproxy
  mkdir -p "$d"
  cat > "$d/haproxy.cfg" <<EOF
global
  log stdout format raw local0 info
  pidfile $d/haproxy.pid
  ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
  mode http
  log global
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-request 10s

frontend fe_tls
  # accept-proxy reads PROXY v1 and v2; "tcp-request connection" rules still see the real peer,
  # so only the gateway may send it.
  bind $NODE:8443 accept-proxy ssl crt $WORK/tls/haproxy.pem
  tcp-request connection reject unless { src $GW_HOME }
  log-format "haproxy client=%ci sni=%[ssl_fc_sni] status=%ST %{+Q}r"
  http-request return status 200 content-type text/plain lf-string "client=%[src] ingress=haproxy sni=%[ssl_fc_sni]\n"

frontend stats
  bind 127.0.0.1:8404
  no log
  stats enable
  stats uri /stats
EOF
}

start_ingresses() {
  mkdir -p "$WORK/acme/.well-known/acme-challenge"
  printf '%s\n' "$ACME_BODY" > "$WORK/acme/.well-known/acme-challenge/$ACME_TOKEN"
  chmod -R a+rX "$WORK/acme"
  write_nginx_conf nginx-a
  write_nginx_conf nginx-b
  write_haproxy_conf
  local name
  for name in nginx-a nginx-b; do
    in_ns "$NS_NODE" nginx -t -q -e "$WORK/$name/error.log" -c "$WORK/$name/nginx.conf" \
      || die "nginx config $name: $(tail -3 "$WORK/$name/error.log")"
  done
  in_ns "$NS_NODE" haproxy -c -q -f "$WORK/haproxy/haproxy.cfg" || die "haproxy config"

  start_bg nginx-a "$NS_NODE" nginx -e "$WORK/nginx-a/error.log" -c "$WORK/nginx-a/nginx.conf" -g 'daemon off;'
  NGINX_A_PID=$BG_PID
  start_bg nginx-b "$NS_NODE" nginx -e "$WORK/nginx-b/error.log" -c "$WORK/nginx-b/nginx.conf" -g 'daemon off;'
  NGINX_B_PID=$BG_PID
  start_bg haproxy "$NS_NODE" haproxy -db -f "$WORK/haproxy/haproxy.cfg"
  HAPROXY_PID=$BG_PID
  wait_listen "$NS_NODE" $NODE 443 $NGINX_A_PID || die "nginx-a did not start: $(cat "$WORK/nginx-a.out" "$WORK/nginx-a/error.log")"
  wait_listen "$NS_NODE" $NODE 80 $NGINX_A_PID || die "nginx-a :80 did not start"
  wait_listen "$NS_NODE" $NODE_B 443 $NGINX_B_PID || die "nginx-b did not start: $(cat "$WORK/nginx-b.out")"
  wait_listen "$NS_NODE" $NODE 8443 $HAPROXY_PID || die "haproxy did not start: $(cat "$WORK/haproxy.out")"
  log "ingresses up: nginx-a pid $NGINX_A_PID, nginx-b pid $NGINX_B_PID, haproxy pid $HAPROXY_PID"
}

# --- packet captures --------------------------------------------------------------------------
# The node side: to see which PROXY version each backend connection carried.
start_node_capture() {
  start_bg tcpdump-node "$NS_NODE" tcpdump -i eth0 --immediate-mode -U -Z root -s 256 -w "$WORK/node.pcap" \
    "tcp and src host $GW_HOME"
  local n
  for n in $(seq 1 50); do grep -q 'listening on' "$WORK/tcpdump-node.out" 2>/dev/null && return 0; sleep 0.1; done
  log "warning: node capture did not start: $(cat "$WORK/tcpdump-node.out")"
}

# --- the gateway ------------------------------------------------------------------------------
find_binary() {
  SNI_EDGE=${SNI_EDGE:-$REPO/target/release/sni-edge}
  [ -x "$SNI_EDGE" ] || die "no gateway binary at $SNI_EDGE (cargo build --release, or set SNI_EDGE)"
  # The binary runs as nobody: it must be reachable by that user.
  setpriv --reuid=$NOBODY_UID --regid=$NOBODY_GID --clear-groups test -x "$SNI_EDGE" \
    || die "$SNI_EDGE is not executable by uid $NOBODY_UID (copy it somewhere readable, set SNI_EDGE)"
}

# Config: the NixOS module's output when available (NIXPKGS_LIB set and tests/nix/check.sh can
# export the lab case), else examples/lab.json.
prepare_gateway_config() {
  local nix_check=$REPO/tests/nix/check.sh
  CONFIG_SOURCE=
  if [ -n "${NIXPKGS_LIB:-}" ] && [ -x "$nix_check" ] && grep -q -- '--export-lab-config' "$nix_check"; then
    # check.sh runs all its checks; an unrelated failure there does not spoil the export.
    SNI_EDGE=$SNI_EDGE "$nix_check" --export-lab-config "$WORK/gateway.json" >"$WORK/nix-export.out" 2>&1
    if grep -q '^ok: exported the lab config' "$WORK/nix-export.out" && [ -s "$WORK/gateway.json" ]; then
      CONFIG_SOURCE="NixOS module (tests/nix/check.sh --export-lab-config, NIXPKGS_LIB=$NIXPKGS_LIB)"
    else
      log "warning: tests/nix/check.sh --export-lab-config did not export, falling back:"
      grep -E '^FAIL|^    ' "$WORK/nix-export.out" | head -10 | sed 's/^/#   /'
    fi
  fi
  if [ -z "$CONFIG_SOURCE" ]; then
    cp "$REPO/examples/lab.json" "$WORK/gateway.json" || die "examples/lab.json missing"
    CONFIG_SOURCE="examples/lab.json"
  fi
  chmod 644 "$WORK/gateway.json"
  log "gateway config: $CONFIG_SOURCE"
  if ! "$SNI_EDGE" check --config "$WORK/gateway.json" > "$WORK/check.out" 2>&1; then
    die "sni-edge check rejected the config: $(cat "$WORK/check.out")"
  fi
}

# Runs the way the NixOS module does: an unprivileged user, CAP_NET_BIND_SERVICE only
# (ambient, so it survives exec; the bounding set holds nothing else), no new privileges.
start_gateway() {
  start_bg gateway "$NS_GW" setpriv --reuid=$NOBODY_UID --regid=$NOBODY_GID --clear-groups \
    --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service \
    --bounding-set=-all,+net_bind_service --no-new-privs -- \
    "$SNI_EDGE" run --config "$WORK/gateway.json" --log-level "${LAB_LOG_LEVEL:-debug}"
  GW_PID=$BG_PID
  wait_listen "$NS_GW" $GW_PUB 443 $GW_PID || die "gateway did not listen on :443: $(tail -20 "$WORK/gateway.out")"
  wait_listen "$NS_GW" $GW_PUB 80 $GW_PID || die "gateway did not listen on :80: $(tail -20 "$WORK/gateway.out")"
  log "gateway up: pid $GW_PID ($SNI_EDGE)"
}

setup() {
  ensure_packages
  find_binary
  mkdir -m 755 "$WORK" || die "cannot create $WORK"
  : > "$WORK/pids"
  : > "$WORK/netns"
  build_topology
  make_ca
  start_ingresses
  start_node_capture
  prepare_gateway_config
  start_gateway
  SETUP_DONE=1
}

# --- observation helpers ----------------------------------------------------------------------
# haproxy_stat COLUMN: a counter of HAProxy's fe_tls frontend (conn_tot, dcon, ...).
haproxy_stat() {
  in_ns "$NS_NODE" curl -s --max-time 3 'http://127.0.0.1:8404/stats;csv' | awk -F, -v want="$1" '
    NR==1 { for (i = 1; i <= NF; i++) { h=$i; sub(/^# /, "", h); col[h]=i } }
    $1=="fe_tls" && $2=="FRONTEND" { print $col[want] + 0 }'
}

# What the node has seen so far: TCP connections the gateway opened to it (SYNs in the node-side
# capture), HAProxy frontend connections, and the ingresses' log lines. "key=value ..." on one line.
node_counts() {
  local syns hap
  syns=$(tcpdump -r "$WORK/node.pcap" -nn 'tcp[tcpflags] & tcp-syn != 0' 2>/dev/null | wc -l)
  hap=$(haproxy_stat conn_tot)
  printf 'gateway_to_node_conns=%s haproxy_conns=%s nginx_tls_log=%s nginx_http_log=%s haproxy_log=%s\n' \
    "$syns" "${hap:-?}" \
    "$(wc -l < "$WORK/nginx-a/tls.log")" "$(wc -l < "$WORK/nginx-a/http.log")" \
    "$(grep -c '^haproxy ' "$WORK/haproxy.out")"
}

# The gateway's log without terminal colour codes.
gateway_log() { sed 's/\x1b\[[0-9;]*m//g' "$WORK/gateway.out"; }

# https_get NS HOST [curl args]: GET https://HOST/ through the gateway with the test CA.
https_get() {
  local ns=$1 host=$2; shift 2
  curl_c "$ns" --cacert "$CA" --resolve "$host:443:$GW_PUB" "$@" "https://$host/" 2>&1
}

# --- checks -----------------------------------------------------------------------------------
check_isolation() {
  local out rc
  out=$(curl_c "$NS_C1" --connect-timeout 2 --max-time 3 -k "https://$NODE/" 2>&1); rc=$?
  check "client cannot reach the cluster node directly (no route)" "$([ $rc != 0 ] && echo 0 || echo 1)" \
    "curl https://$NODE/ from c1 exited $rc: $out"
  local caps uid
  uid=$(awk '/^Uid:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null)
  caps=$(awk '/^Cap(Eff|Prm|Bnd|Amb):/ {printf "%s=%s ", $1, $2}' "/proc/$GW_PID/status" 2>/dev/null)
  check "gateway runs as uid $NOBODY_UID with CAP_NET_BIND_SERVICE only" \
    "$([ "$uid" = $NOBODY_UID ] && [ "$(grep -c '^Cap\(Eff\|Prm\|Bnd\|Amb\):.*0000000000000400$' "/proc/$GW_PID/status")" = 4 ] && echo 0 || echo 1)" \
    "uid=$uid $caps"
}

# expect_page DESC NS HOST CLIENT INGRESS [curl args]
expect_page() {
  local desc=$1 ns=$2 host=$3 client=$4 ingress=$5; shift 5
  local out
  out=$(https_get "$ns" "$host" "$@")
  if printf '%s' "$out" | grep -q "^client=$client ingress=$ingress sni=${host,,}\$"; then
    ok "$desc: $out"
  else
    fail "$desc" "curl $* https://$host/ from $ns said: $out"
  fi
}

check_allowed_names() {
  expect_page "exact name over TLS 1.3 reaches nginx (PROXY v2), page sees client 1" \
    "$NS_C1" app.example.test $C1 nginx-a --tlsv1.3
  expect_page "exact name over TLS 1.2 reaches nginx (PROXY v2), page sees client 1" \
    "$NS_C1" app.example.test $C1 nginx-a --tlsv1.2 --tls-max 1.2
  expect_page "exact name from the second client, page sees client 2" \
    "$NS_C2" app.example.test $C2 nginx-a --tlsv1.3
  expect_page "suffix name x.kube.example.test over TLS 1.3 reaches HAProxy (PROXY v1)" \
    "$NS_C1" x.kube.example.test $C1 haproxy --tlsv1.3
  expect_page "suffix name over TLS 1.2 from client 2 reaches HAProxy (PROXY v1)" \
    "$NS_C2" x.kube.example.test $C2 haproxy --tlsv1.2 --tls-max 1.2
  expect_page "deeper suffix name a.b.kube.example.test matches" \
    "$NS_C2" a.b.kube.example.test $C2 haproxy
  expect_page "PROXY v1 into nginx (v1.example.test)" "$NS_C1" v1.example.test $C1 nginx-a
  expect_page "PROXY v2 into HAProxy (v2.example.test)" "$NS_C2" v2.example.test $C2 haproxy
}

# sclient_get NS SNI: one HTTP request through openssl s_client, verifying against the test CA.
sclient_get() {
  local vh=${2,,}
  vh=${vh%.}
  printf 'GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$2" |
    timeout 15 ip netns exec "$1" openssl s_client -connect $GW_PUB:443 -servername "$2" \
      -CAfile "$CA" -verify_hostname "$vh" -verify_return_error -ign_eof 2>&1
}

check_openssl_client() {
  local out sni
  for sni in app.example.test X.KUBE.Example.Test.; do
    out=$(sclient_get "$NS_C1" "$sni")
    printf '%s\n' "$out" > "$WORK/s_client-$sni.out"
    if printf '%s' "$out" | grep -q 'Verify return code: 0 (ok)' &&
       printf '%s' "$out" | grep -q "^client=$C1 ingress="; then
      ok "openssl s_client with SNI $sni verifies the certificate and gets the page: $(printf '%s' "$out" | grep -m1 '^client=')"
    else
      fail "openssl s_client with SNI $sni verifies the certificate and gets the page" \
        "$(printf '%s' "$out" | grep -E -v '^ +[0-9a-f]{4} - |^-----|^[A-Za-z0-9+/=]{64}$' | tail -40)"
    fi
  done
}

# chromium_dom HOME: https://app.example.test/ from c1 with headless Chromium (its NSS db in
# HOME trusts the test CA); prints the DOM.
chromium_dom() {
  chromium_dump "$1" "$NS_C1" "MAP app.example.test $GW_PUB, MAP * ~NOTFOUND" https://app.example.test/
}

# Chromium's ClientHello (~1.9 KB with an X25519MLKEM768 key share) spans two TCP segments.
check_chromium() {
  if [ "${LAB_SKIP_CHROMIUM:-0}" = 1 ]; then log "skipping Chromium (LAB_SKIP_CHROMIUM=1)"; return; fi
  local home=$WORK/chromium out rc n
  chromium_home "$home" || return
  start_bg tcpdump-gw "$NS_GW" tcpdump -i pub0 --immediate-mode -U -Z root -nn -w "$WORK/chromium.pcap" \
    "tcp port 443 and host $C1"
  local cap_pid=$BG_PID
  for n in $(seq 1 50); do grep -q 'listening on' "$WORK/tcpdump-gw.out" 2>/dev/null && break; sleep 0.1; done
  out=$(chromium_dom "$home"); rc=$?
  sleep 0.3
  stop_pid "$cap_pid"
  if printf '%s' "$out" | grep -q "client=$C1 ingress=nginx-a sni=app.example.test"; then
    ok "headless Chromium (test CA trusted via NSS, no certificate override) gets the page: $(printf '%s' "$out" | grep -o "client=[^<]*")"
  else
    fail "headless Chromium gets the page" "exit $rc; dom: $(printf '%s' "$out" | head -c 600); stderr: $(grep -v -e dbus -e 'Fontconfig' "$WORK/chromium.err" | tail -8)"
  fi
  # Data segments client -> gateway before the gateway's first data segment, per connection.
  local seg
  seg=$(tcpdump -r "$WORK/chromium.pcap" -nn -q 2>/dev/null | awk -v c="$C1" -v g="$GW_PUB" '
    { src=$3; dst=$5; sub(/:$/, "", dst); len=$NF + 0 }
    len == 0 { next }
    index(src, c ".") == 1 { port=substr(src, length(c) + 2); if (!(port in done)) { segs[port]++; bytes[port]+=len } }
    index(src, g ".443") == 1 { port=substr(dst, length(c) + 2); done[port]=1 }
    END { best=""; for (p in segs) if (segs[p] > 0 && (p in done)) { printf "port %s: %d segments, %d bytes; ", p, segs[p], bytes[p] } }')
  if printf '%s' "$seg" | grep -Eq ': ([2-9]|[1-9][0-9]+) segments, (1[5-9][0-9][0-9]|[2-9][0-9][0-9][0-9]|[0-9]{5,}) bytes'; then
    ok "Chromium's ClientHello spanned more than one TCP segment ($seg)"
  else
    fail "Chromium's ClientHello spanned more than one TCP segment" "capture on gw pub0: ${seg:-no data segments}"
  fi
}

# expect_refused DESC COMMAND...: the client gets no page and the node sees nothing.
expect_refused() {
  local desc=$1; shift
  local before after out rc
  before=$(node_counts)
  out=$("$@" 2>&1); rc=$?
  sleep 0.3
  after=$(node_counts)
  if printf '%s' "$out" | grep -q 'client=\|ingress='; then
    fail "$desc: client got a page" "$out"
  elif [ "$before" != "$after" ]; then
    fail "$desc: bytes reached the node" "before: $before"$'\n'"after:  $after"$'\n'"client: $out"
  else
    ok "$desc (client: $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-120); node unchanged: $after)"
  fi
}

raw_send() { # raw_send NS IP PORT PRINTF-FORMAT: write raw bytes, print what comes back
  local ns=$1 ip=$2 port=$3 fmt=$4
  timeout 8 ip netns exec "$ns" bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 9
    printf "$3" >&3
    timeout 7 cat <&3 | head -c 300 | od -c | head -5
    echo "(exit ${PIPESTATUS[0]})"' _ "$ip" "$port" "$fmt"
}

check_refused_names() {
  expect_refused "name not allowed (evil.example.test) gets nothing" \
    https_get "$NS_C1" evil.example.test
  expect_refused "look-alike name evilkube.example.test gets nothing" \
    https_get "$NS_C1" evilkube.example.test
  expect_refused "bare suffix kube.example.test (not covered by *.kube) gets nothing" \
    https_get "$NS_C2" kube.example.test
  expect_refused "no SNI (curl to the IP address) gets nothing" \
    curl_c "$NS_C1" -k "https://$GW_PUB/"
  expect_refused "no SNI (openssl s_client -noservername) gets nothing" \
    bash -c "printf 'GET / HTTP/1.0\r\n\r\n' | timeout 10 ip netns exec '$NS_C2' openssl s_client -connect $GW_PUB:443 -noservername -ign_eof 2>&1 | grep -E 'CONNECTED|alert|errno|Cipher is|no peer certificate|^client=' "
  expect_refused "non-TLS bytes (plain HTTP on :443) get nothing" \
    raw_send "$NS_C1" $GW_PUB 443 'GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n'
  expect_refused "a malformed TLS record gets nothing" \
    raw_send "$NS_C1" $GW_PUB 443 '\026\003\001\000\005hello'
  local line
  line=$(gateway_log | grep -m1 'sni=evil\.example\.test[ }]')
  check "the gateway logged the refusal of evil.example.test with its reason" \
    "$(printf '%s' "$line" | grep -q 'refused' && echo 0 || echo 1)" "log line: ${line:-none}"
}

check_port80() {
  local out code loc before after
  out=$(curl_c "$NS_C1" -si --resolve app.example.test:80:$GW_PUB 'http://app.example.test/path?q=1' 2>&1)
  code=$(printf '%s' "$out" | awk 'NR==1 {print $2}')
  loc=$(printf '%s' "$out" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  check "http://app.example.test/path?q=1 answers 308 to https://app.example.test/path?q=1" \
    "$([ "$code" = 308 ] && [ "$loc" = 'https://app.example.test/path?q=1' ] && echo 0 || echo 1)" \
    "$(printf '%s' "$out" | head -8)"

  before=$(wc -l < "$WORK/nginx-a/http.log")
  out=$(curl_c "$NS_C1" -s --resolve app.example.test:80:$GW_PUB \
    "http://app.example.test/.well-known/acme-challenge/$ACME_TOKEN" 2>&1)
  sleep 0.2
  local line
  line=$(tail -n +$((before + 1)) "$WORK/nginx-a/http.log" | grep -m1 "$ACME_TOKEN")
  check "ACME challenge for app.example.test is served from the node (PROXY v2)" \
    "$([ "$out" = "$ACME_BODY" ] && echo 0 || echo 1)" "got: $out"
  check "the node's log shows the real client $C1 for the challenge" \
    "$(printf '%s' "$line" | grep -q "^client=$C1 peer=$GW_HOME " && echo 0 || echo 1)" \
    "node log: ${line:-no line for the token}"

  before=$(wc -l < "$WORK/nginx-a/http.log")
  out=$(curl_c "$NS_C2" -s --resolve x.kube.example.test:80:$GW_PUB \
    "http://x.kube.example.test/.well-known/acme-challenge/$ACME_TOKEN" 2>&1)
  sleep 0.2
  line=$(tail -n +$((before + 1)) "$WORK/nginx-a/http.log" | grep -m1 "$ACME_TOKEN")
  check "ACME challenge for a *.kube name is served from the node (PROXY v1), node sees $C2" \
    "$([ "$out" = "$ACME_BODY" ] && printf '%s' "$line" | grep -q "^client=$C2 " && echo 0 || echo 1)" \
    "got: $out; node log: ${line:-none}"

  before=$(node_counts)
  out=$(curl_c "$NS_C1" -si --resolve evil.example.test:80:$GW_PUB \
    "http://evil.example.test/.well-known/acme-challenge/$ACME_TOKEN" 2>&1)
  sleep 0.2
  after=$(node_counts)
  code=$(printf '%s' "$out" | awk 'NR==1 {print $2}')
  check "port 80 for a name not allowed answers 421 and forwards nothing" \
    "$([ "$code" = 421 ] && [ "$before" = "$after" ] && echo 0 || echo 1)" \
    "status $code; before: $before; after: $after"

  before=$(node_counts)
  out=$(raw_send "$NS_C2" $GW_PUB 80 'GET / HTTP/1.0\r\n\r\n')
  sleep 0.2
  after=$(node_counts)
  check "port 80 without a Host header answers 400 and forwards nothing" \
    "$(printf '%s' "$out" | tr -d ' \n' | grep -q 'HTTP/1\.[01]400' && [ "$before" = "$after" ] && echo 0 || echo 1)" \
    "reply: $out; before: $before; after: $after"

  before=$(node_counts)
  out=$(curl_c "$NS_C1" -si --path-as-is --resolve app.example.test:80:$GW_PUB \
    "http://app.example.test/.well-known/acme-challenge/../../etc/passwd" 2>&1)
  sleep 0.2
  after=$(node_counts)
  code=$(printf '%s' "$out" | awk 'NR==1 {print $2}')
  check "ACME path with dot segments answers 400 and forwards nothing" \
    "$([ "$code" = 400 ] && [ "$before" = "$after" ] && echo 0 || echo 1)" \
    "status $code; before: $before; after: $after"
}

# The PROXY versions on the wire, from the node-side capture of the gateway's connections.
check_proxy_versions_on_wire() {
  local v1 v2
  sleep 0.3
  v1=$(tcpdump -r "$WORK/node.pcap" -nn -A "dst host $NODE and dst port 8443" 2>/dev/null | grep -c "PROXY TCP4 $C1 ")
  check "the gateway sent PROXY v1 (\"PROXY TCP4 $C1 ...\") to HAProxy for *.kube" \
    "$([ "$v1" -gt 0 ] && echo 0 || echo 1)" "no v1 header toward $NODE:8443 in node.pcap"
  # v2 signature 0d0a0d0a000d0a515549540a, then 0x21 (v2, PROXY) 0x11 (TCP over IPv4)
  v2=$(tcpdump -r "$WORK/node.pcap" -nn -x "dst host $NODE and dst port 443" 2>/dev/null |
       awk '/^[^ \t]/ { if (hex != "") print hex; hex="" } /^\t0x/ { for (i = 2; i <= NF; i++) hex = hex $i }
            END { if (hex != "") print hex }' | grep -c '0d0a0d0a000d0a515549540a2111')
  check "the gateway sent PROXY v2 (binary signature, TCP4) to nginx for app.example.test" \
    "$([ "$v2" -gt 0 ] && echo 0 || echo 1)" "no v2 signature toward $NODE:443 in node.pcap"
}

check_forged_proxy() {
  local forge="python3 $LAB_DIR/forge-proxy.py" out before
  before=$(wc -l < "$WORK/nginx-a/tls.log")
  out=$(timeout 15 ip netns exec "$NS_ATT" $forge --connect $NODE:443 --proxy-version 1 --claim $C1 \
    --host app.example.test --tls 2>&1)
  sleep 0.2
  local line
  line=$(tail -n +$((before + 1)) "$WORK/nginx-a/tls.log" | tail -1)
  if printf '%s' "$out" | grep -q '^connected' && ! printf '%s' "$out" | grep -q "client=$C1" &&
     printf '%s' "$out" | grep -q 'HTTP/1.1 403'; then
    ok "forged PROXY v1 from $ATTACKER straight to nginx is refused (403; node log: $line)"
  else
    fail "forged PROXY v1 from $ATTACKER straight to nginx is refused" "$out"$'\n'"node log: $line"
  fi

  local denied_before denied_after
  denied_before=$(haproxy_stat dcon)
  out=$(timeout 15 ip netns exec "$NS_ATT" $forge --connect $NODE:8443 --proxy-version 2 --claim $C1 \
    --host x.kube.example.test --tls 2>&1)
  denied_after=$(haproxy_stat dcon)
  if printf '%s' "$out" | grep -q '^refused' && ! printf '%s' "$out" | grep -q "client=$C1" &&
     [ "$denied_after" -gt "$denied_before" ]; then
    ok "forged PROXY v2 from $ATTACKER straight to HAProxy is refused ($(printf '%s' "$out" | tr '\n' ' ' | cut -c1-100); HAProxy denied connections $denied_before -> $denied_after)"
  else
    fail "forged PROXY v2 from $ATTACKER straight to HAProxy is refused" "$out"$'\n'"HAProxy denied connections $denied_before -> $denied_after"
  fi

  before=$(wc -l < "$WORK/nginx-a/http.log")
  out=$(timeout 15 ip netns exec "$NS_ATT" $forge --connect $NODE:80 --proxy-version 2 --claim $C1 \
    --host app.example.test --path "/.well-known/acme-challenge/$ACME_TOKEN" 2>&1)
  if printf '%s' "$out" | grep -q '^connected' && printf '%s' "$out" | grep -q 'HTTP/1.1 403' &&
     ! printf '%s' "$out" | grep -q "$ACME_BODY"; then
    ok "forged PROXY v2 from $ATTACKER straight to the node's port 80 is refused (403)"
  else
    fail "forged PROXY v2 from $ATTACKER straight to the node's port 80 is refused" "$out"
  fi
}

# --- operations checks (hooks) ----------------------------------------------------------------
# Each is a function run after the core checks; add new ones to OPS_CHECKS.

# 200 sequential requests while the gateway reloads a changed config (SIGHUP) twice, and once
# an invalid one: none may fail, the PID stays, the new name works after the reload.
check_reload_under_load() {
  local cfg=$WORK/gateway.json orig=$WORK/gateway.orig.json n okc=0 bad=0 first_bad='' out
  cp "$cfg" "$orig"
  for n in $(seq 1 200); do
    case $n in
      50) sed 's/"app\.example\.test"/"app.example.test", "reload.example.test"/' "$orig" > "$cfg.new" \
            && mv "$cfg.new" "$cfg" && chmod 644 "$cfg" && kill -HUP "$GW_PID" ;;
      120) printf '{ "listeners": [' > "$cfg" && kill -HUP "$GW_PID" ;;
    esac
    out=$(curl_c "$NS_C1" --max-time 5 --cacert "$CA" --resolve app.example.test:443:$GW_PUB \
      https://app.example.test/ 2>&1)
    if [ "$out" = "client=$C1 ingress=nginx-a sni=app.example.test" ]; then
      okc=$((okc + 1))
    else
      bad=$((bad + 1)); [ -z "$first_bad" ] && first_bad="request $n: $out"
    fi
  done
  check "200 requests while reloading (SIGHUP with a changed config, then an invalid one) all succeed" \
    "$([ $bad = 0 ] && echo 0 || echo 1)" "$okc ok, $bad failed; first: $first_bad"
  check "the gateway kept running through the reloads (same pid $GW_PID)" \
    "$(kill -0 "$GW_PID" 2>/dev/null && echo 0 || echo 1)" "$(tail -5 "$WORK/gateway.out")"
  expect_page "a name added by the reload works (an invalid file later kept that config)" \
    "$NS_C2" reload.example.test $C2 nginx-a
  cp "$orig" "$cfg"; chmod 644 "$cfg"; kill -HUP "$GW_PID"
}

# A backend with two servers: nginx-b then nginx-a. Stop nginx-b; every request still succeeds.
check_failover() {
  local n out seen_b=0 seen_a=0 bad=0 first_bad=
  for n in $(seq 1 6); do
    out=$(https_get "$NS_C1" failover.example.test)
    case $out in
      *ingress=nginx-b*) seen_b=$((seen_b + 1)) ;;
      *ingress=nginx-a*) seen_a=$((seen_a + 1)) ;;
      *) bad=$((bad + 1)); first_bad=${first_bad:-$out} ;;
    esac
  done
  check "failover backend: both servers answer while up (round robin)" \
    "$([ $bad = 0 ] && [ $seen_a -gt 0 ] && [ $seen_b -gt 0 ] && echo 0 || echo 1)" \
    "nginx-a $seen_a, nginx-b $seen_b, failed $bad: $first_bad"
  stop_pid "$NGINX_B_PID"
  seen_a=0 bad=0 first_bad=
  for n in $(seq 1 20); do
    out=$(https_get "$NS_C1" failover.example.test)
    case $out in
      "client=$C1 ingress=nginx-a sni=failover.example.test") seen_a=$((seen_a + 1)) ;;
      *) bad=$((bad + 1)); first_bad=${first_bad:-$out} ;;
    esac
  done
  check "with nginx-b stopped, 20 requests all fail over to nginx-a" \
    "$([ $bad = 0 ] && echo 0 || echo 1)" "ok $seen_a, failed $bad: $first_bad"
  # Bring nginx-b back so a kept lab is whole again.
  start_bg nginx-b "$NS_NODE" nginx -e "$WORK/nginx-b/error.log" -c "$WORK/nginx-b/nginx.conf" -g 'daemon off;'
  NGINX_B_PID=$BG_PID
  wait_listen "$NS_NODE" $NODE_B 443 $NGINX_B_PID || log "warning: nginx-b did not come back"
}

# 60 requests at once from both clients (30 each, exact and suffix names): all succeed and each
# page reports its own client.
check_concurrent() {
  local dir=$WORK/concurrent n pids=() bad=0 first_bad='' f
  mkdir -p "$dir"
  for n in $(seq 1 30); do
    https_get "$NS_C1" app.example.test > "$dir/c1-$n" &
    pids+=($!)
    https_get "$NS_C2" "n$n.kube.example.test" > "$dir/c2-$n" &
    pids+=($!)
  done
  wait "${pids[@]}"
  for n in $(seq 1 30); do
    f=$(cat "$dir/c1-$n")
    [ "$f" = "client=$C1 ingress=nginx-a sni=app.example.test" ] || { bad=$((bad + 1)); first_bad=${first_bad:-$f}; }
    f=$(cat "$dir/c2-$n")
    [ "$f" = "client=$C2 ingress=haproxy sni=n$n.kube.example.test" ] || { bad=$((bad + 1)); first_bad=${first_bad:-$f}; }
  done
  check "60 concurrent requests from both clients all succeed with the right client address" \
    "$([ $bad = 0 ] && echo 0 || echo 1)" "$bad failed; first: $first_bad"
}

# SIGTERM: no new connections, the one in flight (its request sent 2 s later) still gets its
# page, and the gateway exits 0 within timeouts.shutdown. Then it is started again.
check_graceful_stop() {
  local out rc n new
  ( (sleep 2; printf 'GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n') |
      timeout 20 ip netns exec "$NS_C1" openssl s_client -connect $GW_PUB:443 -servername app.example.test \
        -CAfile "$CA" -verify_return_error -ign_eof > "$WORK/inflight.out" 2>&1 ) &
  local client=$!
  sleep 0.7
  kill -TERM "$GW_PID"
  sleep 0.2
  new=$(curl_c "$NS_C2" --max-time 3 --cacert "$CA" --resolve app.example.test:443:$GW_PUB \
    https://app.example.test/ 2>&1)
  for n in $(seq 1 100); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$GW_PID" 2>/dev/null; then
    rc=running
  else
    wait "$GW_PID"; rc=$?
  fi
  wait "$client"
  out=$(grep -m1 '^client=' "$WORK/inflight.out")
  check "after SIGTERM a new connection gets nothing" \
    "$(printf '%s' "$new" | grep -q '^client=' && echo 1 || echo 0)" "new connection got: $new"
  check "after SIGTERM the connection in flight still gets its page" \
    "$([ "$out" = "client=$C1 ingress=nginx-a sni=app.example.test" ] && echo 0 || echo 1)" \
    "$(tail -5 "$WORK/inflight.out")"
  check "the gateway exits 0 after draining (within 10 s)" "$([ "$rc" = 0 ] && echo 0 || echo 1)" \
    "exit status: $rc; log: $(gateway_log | tail -3)"
  sed -i "/^$GW_PID /d" "$WORK/pids"
  if [ "$rc" = running ]; then stop_pid "$GW_PID"; fi
  start_gateway
}

# The pending-connection pool under attack: 40 addresses each hold 60 silent connections to :443
# and 60 to :80, opening a new one as soon as the gateway closes one. That is more than a
# listener's pool (max_pending_handshakes, 2,000), so the gateway keeps closing the oldest
# connections of the biggest holders; curl, Chromium and port 80 must still be served.
check_pending_pool_attack() {
  local sources=() n ok_pages=0 tries=20 out code loc dom before_evicted evicted
  for n in $(seq $BOTS_FIRST $((BOTS_FIRST + BOTS_COUNT - 1))); do sources+=(--source "$BOTS_NET.$n"); done
  before_evicted=$(gateway_log | grep -c 'reason="limit_pending"')
  start_bg bots "$NS_BOTS" python3 "$LAB_DIR/silent-clients.py" "${sources[@]}" \
    --target $GW_PUB:443 --target $GW_PUB:80 --per-source 60 --seconds 120
  local bots_pid=$BG_PID
  # Until the pools are full and the gateway makes room (bounded: 30 s).
  for n in $(seq 1 300); do
    evicted=$(gateway_log | grep -c 'reason="limit_pending"')
    [ "$evicted" -gt "$before_evicted" ] && break
    sleep 0.1
  done
  check "silent clients from $BOTS_COUNT addresses fill the pending pools (the gateway makes room)" \
    "$([ "$evicted" -gt "$before_evicted" ] && echo 0 || echo 1)" \
    "no limit_pending in the gateway's log after 30 s; bots: $(tail -3 "$WORK/bots.out")"
  for n in $(seq 1 $tries); do
    out=$(https_get "$NS_C1" app.example.test)
    [ "$out" = "client=$C1 ingress=nginx-a sni=app.example.test" ] && ok_pages=$((ok_pages + 1))
  done
  check "during the attack curl gets its page ($ok_pages of $tries, at least 95 %)" \
    "$([ $((ok_pages * 100)) -ge $((tries * 95)) ] && echo 0 || echo 1)" "last answer: $out"
  out=$(curl_c "$NS_C2" -si --resolve app.example.test:80:$GW_PUB 'http://app.example.test/x' 2>&1)
  code=$(printf '%s' "$out" | awk 'NR==1 {print $2}')
  loc=$(printf '%s' "$out" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
  check "during the attack port 80 still redirects" \
    "$([ "$code" = 308 ] && [ "$loc" = 'https://app.example.test/x' ] && echo 0 || echo 1)" "$(printf '%s' "$out" | head -3)"
  if [ "${LAB_SKIP_CHROMIUM:-0}" != 1 ]; then
    dom=$(chromium_dom "$WORK/chromium")
    check "during the attack headless Chromium gets its page" \
      "$(printf '%s' "$dom" | grep -q "client=$C1 ingress=nginx-a sni=app.example.test" && echo 0 || echo 1)" \
      "dom: $(printf '%s' "$dom" | head -c 300); stderr: $(grep -v -e dbus -e Fontconfig "$WORK/chromium.err" | tail -5)"
  fi
  evicted=$(gateway_log | grep -c 'reason="limit_pending"')
  stop_pid "$bots_pid"
  log "pending-pool attack: $((evicted - before_evicted)) pending connections closed to make room"
}

OPS_CHECKS=(check_concurrent check_reload_under_load check_failover check_graceful_stop)

run_checks() {
  check_isolation
  check_allowed_names
  check_openssl_client
  check_chromium
  check_refused_names
  check_port80
  check_proxy_versions_on_wire
  check_forged_proxy
  check_pending_pool_attack
  if [ "${LAB_SKIP_OPS:-0}" != 1 ]; then
    local c
    for c in "${OPS_CHECKS[@]}"; do "$c"; done
  fi
  if ! kill -0 "$GW_PID" 2>/dev/null; then
    fail "the gateway is still running at the end" "$(tail -20 "$WORK/gateway.out")"
  fi
}

print_keep_help() {
  cat <<EOF

The lab is running (id $ID). Namespaces:
  $NS_C1 ($C1), $NS_C2 ($C2)     internet clients
  $NS_GW ($GW_PUB / $GW_HOME)   sni-edge, pid $GW_PID, log $WORK/gateway.out
  $NS_NODE ($NODE, $NODE_B)     nginx-a :443 :80, nginx-b :443, HAProxy :8443
  $NS_ATT ($ATTACKER)          reaches the node directly
  $NS_PUB, $NS_HOME               the two switches (bridges)
Try:
  ip netns exec $NS_C1 curl --cacert $CA --resolve app.example.test:443:$GW_PUB https://app.example.test/
  ip netns exec $NS_C1 curl -i --resolve app.example.test:80:$GW_PUB 'http://app.example.test/path?q=1'
  ip netns exec $NS_C1 openssl s_client -connect $GW_PUB:443 -servername x.kube.example.test -CAfile $CA
  ip netns exec $NS_ATT python3 $LAB_DIR/forge-proxy.py --connect $NODE:443 --claim $C1 --host app.example.test --tls
  ip netns exec $NS_GW bash        # a shell inside a namespace
  tail -f $WORK/gateway.out $WORK/nginx-a/tls.log $WORK/haproxy.out
  kill -HUP $GW_PID                 # reload $WORK/gateway.json
Tear down: $0 --down $ID
EOF
}

# --- main -------------------------------------------------------------------------------------
setup
if [ "$MODE" != up ]; then
  run_checks
fi
if [ "$MODE" != test ]; then
  print_keep_help
fi
if [ "$MODE" != up ]; then
  echo "$PASSED passed, $FAILED failed"
fi
[ $FAILED = 0 ]
