#!/usr/bin/env bash
# The lab's tunnel-mode scenario: a home network that accepts no inbound connection at all, two
# agents at home dialing out to the gateway, nginx and HAProxy as the home ingress trusting PROXY
# headers only from the agents, and real clients (curl, openssl s_client, headless Chromium).
# Run it as root under the namespace lock:
#
#   flock /tmp/sni-edge-netns.lock tests/lab/tunnel.sh
#
# Environment: SNI_EDGE (binary; default target/release/sni-edge), LAB_SKIP_CHROMIUM=1.
#
#   c1 (203.0.113.10), gw (203.0.113.1), rtr:wan0 (203.0.113.50)  --- bridge "pub"
#   rtr:lan0 (192.0.2.1), node (192.0.2.20), ag1 (.31), ag2 (.32)  --- bridge "home"
# rtr masquerades home's outgoing connections and drops every new inbound one; the node's own
# firewall accepts new connections only from the two agents. The gateway even has a route to
# the home network through rtr: it still cannot connect to anything there.
set -uo pipefail

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$LAB_DIR/../.." && pwd)
STATE_ROOT=/tmp

GW_PUB=203.0.113.1
C1=203.0.113.10
RTR_WAN=203.0.113.50
RTR_LAN=192.0.2.1
NODE=192.0.2.20
AG1=192.0.2.31
AG2=192.0.2.32
NOBODY_UID=65534
NOBODY_GID=65534
ID=$$
P=selt-$ID
WORK=$STATE_ROOT/sni-edge-tunnel-lab.$ID
NS_PUB=$P-pub NS_HOME=$P-home NS_C1=$P-c1 NS_GW=$P-gw NS_RTR=$P-rtr NS_NODE=$P-node NS_AG1=$P-ag1 NS_AG2=$P-ag2
PASSED=0
FAILED=0
# shellcheck source=tests/lab/lib.sh
. "$LAB_DIR/lib.sh"
# shellcheck source=tests/lib/netns.sh
. "$REPO/tests/lib/netns.sh"

[ "$(id -u)" = 0 ] || die "run as root (ip netns needs it)"
for cmd in nginx haproxy curl openssl nft setpriv; do
  command -v "$cmd" >/dev/null || die "$cmd is missing (tests/run-all.sh installs the lab's packages)"
done
SNI_EDGE=${SNI_EDGE:-$REPO/target/release/sni-edge}
[ -x "$SNI_EDGE" ] || die "no binary at $SNI_EDGE (cargo build --release, or set SNI_EDGE)"
setpriv --reuid=$NOBODY_UID --regid=$NOBODY_GID --clear-groups test -x "$SNI_EDGE" \
  || die "$SNI_EDGE is not executable by uid $NOBODY_UID (copy it somewhere readable, set SNI_EDGE)"

on_exit() {
  local rc=$?
  [ -d "$WORK" ] || return
  netns_teardown "$WORK"
  if [ $FAILED = 0 ] && [ $rc = 0 ]; then rm -rf "$WORK"; else log "logs kept in $WORK (namespaces removed)"; fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM
mkdir -m 755 "$WORK" || die "cannot create $WORK"
: > "$WORK/pids"
: > "$WORK/netns"

# --- topology ---------------------------------------------------------------------------------
log "topology: namespaces $P-{pub,home,c1,gw,rtr,node,ag1,ag2}"
for ns in "$NS_PUB" "$NS_HOME" "$NS_C1" "$NS_GW" "$NS_RTR" "$NS_NODE" "$NS_AG1" "$NS_AG2"; do add_ns "$ns"; done
bridge_in "$NS_PUB" || die "bridge pub"
bridge_in "$NS_HOME" || die "bridge home"
link "$NS_C1" eth0 "$NS_PUB" c1;      enslave "$NS_PUB" c1
link "$NS_GW" eth0 "$NS_PUB" gw;      enslave "$NS_PUB" gw
link "$NS_RTR" wan0 "$NS_PUB" rtr;    enslave "$NS_PUB" rtr
link "$NS_RTR" lan0 "$NS_HOME" rtr;   enslave "$NS_HOME" rtr
link "$NS_NODE" eth0 "$NS_HOME" node; enslave "$NS_HOME" node
link "$NS_AG1" eth0 "$NS_HOME" ag1;   enslave "$NS_HOME" ag1
link "$NS_AG2" eth0 "$NS_HOME" ag2;   enslave "$NS_HOME" ag2
in_ns "$NS_C1" ip addr add $C1/24 dev eth0
in_ns "$NS_GW" ip addr add $GW_PUB/24 dev eth0
in_ns "$NS_RTR" ip addr add $RTR_WAN/24 dev wan0
in_ns "$NS_RTR" ip addr add $RTR_LAN/24 dev lan0
for pair in "$NS_NODE:$NODE" "$NS_AG1:$AG1" "$NS_AG2:$AG2"; do
  in_ns "${pair%%:*}" ip addr add "${pair#*:}/24" dev eth0
  in_ns "${pair%%:*}" ip route add default via $RTR_LAN
done
in_ns "$NS_GW" ip route add 192.0.2.0/24 via $RTR_WAN
in_ns "$NS_RTR" sysctl -qw net.ipv4.ip_forward=1
# The home router: out is masqueraded, in is only what answers an outgoing connection.
printf '%s\n' 'table inet home {' \
  '  chain forward { type filter hook forward priority 0; policy drop;' \
  '    ct state established,related accept' \
  '    iifname "lan0" oifname "wan0" accept' \
  '  }' \
  '  chain input { type filter hook input priority 0; policy drop;' \
  '    ct state established,related accept' \
  '    iifname { "lo", "lan0" } accept' \
  '  }' \
  '  chain postrouting { type nat hook postrouting priority 100; oifname "wan0" masquerade; }' \
  '}' > "$WORK/router.nft"
in_ns "$NS_RTR" nft -f "$WORK/router.nft" || die "router firewall"
# The node: new connections from the agents only, counted (what reached the ingress).
printf '%s\n' 'table inet node {' \
  '  counter from_agents { }' \
  '  chain input { type filter hook input priority 0; policy drop;' \
  '    ct state established,related accept' \
  '    iifname "lo" accept' \
  "    ip saddr { $AG1, $AG2 } tcp dport { 80, 443, 8443 } ct state new counter name from_agents accept" \
  '  }' \
  '}' > "$WORK/node.nft"
in_ns "$NS_NODE" nft -f "$WORK/node.nft" || die "node firewall"
sleep 0.2

# --- certificates, ingress ----------------------------------------------------------------------
d=$WORK/tls
mkdir -p "$d"
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$d/ca.key" -out "$d/ca.pem" \
  -days 2 -subj "/CN=sni-edge tunnel lab CA $ID" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null || die "CA"
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$d/server.key" -out "$d/server.csr" \
  -subj "/CN=app.example.test" 2>/dev/null || die "CSR"
printf 'subjectAltName=DNS:app.example.test,DNS:*.kube.example.test\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' \
  > "$d/server.ext"
openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
  -extfile "$d/server.ext" -out "$d/server.pem" 2>/dev/null || die "server cert"
cat "$d/server.pem" "$d/server.key" > "$d/haproxy.pem"
chmod 755 "$d"
chmod 644 "$d/ca.pem" "$d/server.pem"
CA=$d/ca.pem
ACME_TOKEN=tunnel-token-$ID
ACME_BODY=tunnel-acme-$ID
N=$WORK/nginx
mkdir -p "$WORK/acme/.well-known/acme-challenge" "$N/tmp"
printf '%s\n' "$ACME_BODY" > "$WORK/acme/.well-known/acme-challenge/$ACME_TOKEN"
chmod -R a+rX "$WORK/acme" "$N"
{
  echo "user nobody nogroup; worker_processes 1; pid $N/nginx.pid; error_log $N/error.log info;"
  echo "events { worker_connections 512; }"
  echo "http {"
  echo "  client_body_temp_path $N/tmp/body; proxy_temp_path $N/tmp/proxy; fastcgi_temp_path $N/tmp/fastcgi;"
  echo "  uwsgi_temp_path $N/tmp/uwsgi; scgi_temp_path $N/tmp/scgi; default_type text/plain;"
  echo "  log_format lab 'client=\$remote_addr peer=\$realip_remote_addr sni=\$ssl_server_name \"\$request\"';"
  echo "  # PROXY headers are trusted from the agents only: they are who connects to the ingress."
  echo "  set_real_ip_from $AG1; set_real_ip_from $AG2; real_ip_header proxy_protocol;"
  echo "  server { listen $NODE:443 ssl proxy_protocol; access_log $N/tls.log lab;"
  echo "    ssl_certificate $d/server.pem; ssl_certificate_key $d/server.key;"
  echo "    location / { return 200 \"client=\$remote_addr ingress=nginx sni=\$ssl_server_name via=\$realip_remote_addr\n\"; } }"
  echo "  server { listen $NODE:80 proxy_protocol; access_log $N/http.log lab;"
  echo "    location /.well-known/acme-challenge/ { root $WORK/acme; }"
  echo "    location / { return 404 \"only ACME challenges here\n\"; } }"
  echo "}"
} > "$N/nginx.conf"
: > "$N/tls.log"
: > "$N/http.log"
{
  echo "global"
  echo "  log stdout format raw local0 info"
  echo "defaults"
  echo "  mode http"
  echo "  log global"
  echo "  timeout connect 5s"
  echo "  timeout client 30s"
  echo "  timeout server 30s"
  echo "frontend fe_tls"
  echo "  bind $NODE:8443 accept-proxy ssl crt $d/haproxy.pem"
  echo "  tcp-request connection reject unless { src $AG1 $AG2 }"
  echo "  http-request return status 200 content-type text/plain lf-string \"client=%[src] ingress=haproxy sni=%[ssl_fc_sni]\\n\""
} > "$WORK/haproxy.cfg"
in_ns "$NS_NODE" nginx -t -q -c "$N/nginx.conf" -e "$N/error.log" || die "nginx config"
in_ns "$NS_NODE" haproxy -c -q -f "$WORK/haproxy.cfg" || die "haproxy config"
start_bg nginx "$NS_NODE" nginx -c "$N/nginx.conf" -e "$N/error.log" -g 'daemon off;'
NGINX_PID=$BG_PID
start_bg haproxy "$NS_NODE" haproxy -db -f "$WORK/haproxy.cfg"
HAPROXY_PID=$BG_PID
wait_listen "$NS_NODE" $NODE 443 "$NGINX_PID" || die "nginx did not start: $(cat "$WORK/nginx.out" "$N/error.log")"
wait_listen "$NS_NODE" $NODE 8443 "$HAPROXY_PID" || die "haproxy did not start: $(cat "$WORK/haproxy.out")"

# --- keys and configs, checked by the binary -----------------------------------------------------
K=$WORK/keys
mkdir -m 755 "$K"
GW_KEY=$("$SNI_EDGE" keygen --out "$K/gateway.key") || die "keygen"
AG1_KEY=$("$SNI_EDGE" keygen --out "$K/ag1.key") || die "keygen"
AG2_KEY=$("$SNI_EDGE" keygen --out "$K/ag2.key") || die "keygen"
chown $NOBODY_UID:$NOBODY_GID "$K"/*.key

# write_gateway_config AGENT-KEYS-JSON-ARRAY
write_gateway_config() {
  cat > "$WORK/gateway.json" <<JSON
{
  "log": { "level": "debug", "format": "text" },
  "listeners": [
    { "address": "$GW_PUB:443", "protocol": "tls" },
    { "address": "$GW_PUB:80", "protocol": "http" },
    { "address": "$GW_PUB:7443", "protocol": "tunnel" }
  ],
  "tunnel": { "key_file": "$K/gateway.key", "agents": { "home": $1 },
              "keepalive_interval": "1s", "keepalive_timeout": "3s" },
  "routes": [
    { "names": ["app.example.test"], "backend": "home", "acme_backend": "home-http" },
    { "names": ["*.kube.example.test"], "backend": "home-haproxy" }
  ],
  "backends": {
    "home": { "agents": "home", "target": "https", "proxy_protocol": "v2" },
    "home-http": { "agents": "home", "target": "http", "proxy_protocol": "v2" },
    "home-haproxy": { "agents": "home", "target": "haproxy", "proxy_protocol": "v1" }
  },
  "metrics": { "address": "127.0.0.1:9113" }
}
JSON
  chmod 644 "$WORK/gateway.json"
}
write_gateway_config "[\"$AG1_KEY\", \"$AG2_KEY\"]"
for a in ag1 ag2; do
  cat > "$WORK/$a.json" <<JSON
{
  "key_file": "$K/$a.key",
  "gateways": [ { "address": "$GW_PUB:7443", "public_key": "$GW_KEY" } ],
  "targets": { "https": "$NODE:443", "http": "$NODE:80", "haproxy": "$NODE:8443" },
  "keepalive": { "interval": "1s", "timeout": "3s" },
  "reconnect": { "min_delay": "250ms", "max_delay": "2s" },
  "log": { "level": "debug", "format": "text" },
  "metrics": { "address": "127.0.0.1:9114" }
}
JSON
  chmod 644 "$WORK/$a.json"
done
for f in gateway ag1 ag2; do
  out=$("$SNI_EDGE" check --config "$WORK/$f.json" 2>&1)
  check "sni-edge check accepts the $f config" $? "$out"
done

# The gateway as the NixOS module runs it (unprivileged, CAP_NET_BIND_SERVICE only); the agents
# with no capability at all.
start_gateway() {
  start_bg gateway "$NS_GW" setpriv --reuid=$NOBODY_UID --regid=$NOBODY_GID --clear-groups \
    --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service \
    --bounding-set=-all,+net_bind_service --no-new-privs -- "$SNI_EDGE" run --config "$WORK/gateway.json"
  GW_PID=$BG_PID
  wait_listen "$NS_GW" $GW_PUB 7443 "$GW_PID" || die "gateway did not start: $(tail -20 "$WORK/gateway.out")"
}
# start_agent ag1|ag2: sets AG_PID
start_agent() {
  local ns=$NS_AG1
  [ "$1" = ag2 ] && ns=$NS_AG2
  start_bg "$1" "$ns" setpriv --reuid=$NOBODY_UID --regid=$NOBODY_GID --clear-groups --inh-caps=-all \
    --bounding-set=-all --no-new-privs -- "$SNI_EDGE" agent --config "$WORK/$1.json"
  AG_PID=$BG_PID
}
# agents_connected: the gateway's own count of agents in group home.
agents_connected() {
  in_ns "$NS_GW" curl -s --max-time 2 http://127.0.0.1:9113/metrics |
    awk '$1 == "sni_edge_tunnel_agents{group=\"home\"}" { print $2 }'
}
# wait_agents N SECONDS: 0 once the gateway has N agents.
wait_agents() {
  local n
  for n in $(seq 1 $(($2 * 10))); do
    [ "$(agents_connected)" = "$1" ] && return 0
    sleep 0.1
  done
  return 1
}
start_gateway
start_agent ag1
AG1_PID=$AG_PID
start_agent ag2
AG2_PID=$AG_PID
wait_agents 2 10 || die "the agents did not connect: $(tail -n 5 "$WORK/ag1.out" "$WORK/ag2.out" "$WORK/gateway.out")"
log "gateway pid $GW_PID, agents $AG1_PID $AG2_PID"

# --- checks ---------------------------------------------------------------------------------------
# https_get HOST [curl args]: GET https://HOST/ from the client through the gateway.
https_get() {
  local host=$1
  shift
  curl_c "$NS_C1" --cacert "$CA" --resolve "$host:443:$GW_PUB" "$@" "https://$host/" 2>&1
}
from_agents() { in_ns "$NS_NODE" nft list counter inet node from_agents | awk '/packets/ { print $2 }'; }
yes_if() { if "$@"; then echo 0; else echo 1; fi; }

out=$(in_ns "$NS_GW" curl -sS --connect-timeout 2 --max-time 3 "http://$NODE/" 2>&1)
rc=$?
check "the gateway cannot connect to the home node (the router drops it)" "$(yes_if [ $rc = 28 ])" "curl exit $rc: $out"
out=$(in_ns "$NS_GW" curl -sS --connect-timeout 2 --max-time 3 "http://$RTR_WAN/" 2>&1)
rc=$?
check "the gateway cannot connect to the home router either" "$(yes_if [ $rc = 28 ])" "curl exit $rc: $out"
lines=$(grep -c "agent connected" "$WORK/gateway.out")
keyed=$(grep "agent connected" "$WORK/gateway.out" | grep -c -e "$AG1_KEY" -e "$AG2_KEY")
check "both agents connected, each logged with its key and address" "$(yes_if [ "$keyed" -ge 2 ])" \
  "$lines lines: $(grep 'agent connected' "$WORK/gateway.out")"

out=$(https_get app.example.test)
check "curl gets the page through the tunnel, nginx sees the client's own address: $out" \
  "$(yes_if grep -Eq "^client=$C1 ingress=nginx sni=app.example.test via=($AG1|$AG2)\$" <<< "$out")" "$out"
out=$(https_get x.kube.example.test)
check "curl to HAProxy (PROXY v1 through the tunnel) sees the client's own address: $out" \
  "$(yes_if grep -q "^client=$C1 ingress=haproxy sni=x.kube.example.test\$" <<< "$out")" "$out"
out=$(printf 'GET / HTTP/1.1\r\nHost: app.example.test\r\nConnection: close\r\n\r\n' |
  timeout 15 ip netns exec "$NS_C1" openssl s_client -connect $GW_PUB:443 -servername app.example.test \
    -CAfile "$CA" -verify_hostname app.example.test -verify_return_error -ign_eof 2>&1)
verified=$(grep -c -e 'Verify return code: 0 (ok)' -e "^client=$C1 ingress=nginx" <<< "$out")
check "openssl s_client verifies the home certificate and gets the page with its own address" \
  "$(yes_if [ "$verified" = 2 ])" "$(tail -n 15 <<< "$out")"
if [ "${LAB_SKIP_CHROMIUM:-0}" != 1 ] && command -v chromium >/dev/null && chromium_home "$WORK/chromium"; then
  out=$(chromium_dump "$WORK/chromium" "$NS_C1" "MAP app.example.test $GW_PUB, MAP * ~NOTFOUND" https://app.example.test/)
  check "headless Chromium gets the page and sees its own address" \
    "$(yes_if grep -q "client=$C1 ingress=nginx" <<< "$out")" \
    "dom: $(head -c 400 <<< "$out"); stderr: $(tail -n 5 "$WORK/chromium.err")"
fi

before=$(from_agents)
lines=$(wc -l < "$N/tls.log")
out=$(https_get evil.example.test)
rc=$?
out80=$(curl_c "$NS_C1" --resolve evil.example.test:80:$GW_PUB "http://evil.example.test/.well-known/acme-challenge/$ACME_TOKEN" 2>&1)
sleep 0.3
check "refused names leave no trace at home (no connection to the node, no log line)" \
  "$(yes_if test $rc != 0 -a "$(from_agents)" = "$before" -a "$(wc -l < "$N/tls.log")" = "$lines")" \
  "curl exit $rc: $out; port 80: $out80; connections from agents to the node: $before -> $(from_agents)"

out=$(curl_c "$NS_C1" --resolve app.example.test:80:$GW_PUB "http://app.example.test/.well-known/acme-challenge/$ACME_TOKEN" 2>&1)
logged=$(grep -c "client=$C1 .*acme-challenge/$ACME_TOKEN" "$N/http.log")
check "an ACME http-01 challenge on :80 reaches the home ingress through the tunnel: $out" \
  "$(yes_if test "$out" = "$ACME_BODY" -a "$logged" = 1)" \
  "body: $out; http.log: $(tail -n 2 "$N/http.log")"

# load SECONDS FILE: one client after another for SECONDS; a line "epoch-ms ok(0)/failed(1)" each.
load() {
  local end=$(($(date +%s) + $1)) rc
  : > "$2"
  while [ "$(date +%s)" -lt $end ]; do
    https_get app.example.test --max-time 8 | grep -q "^client=$C1 ingress=nginx"
    rc=$?
    echo "$(date +%s%3N) $rc" >> "$2"
  done
}
# failures_after FILE EPOCH-MS: "F failed of N" for the clients that ended after that time.
failures_after() { awk -v t="$2" '$1 > t { n++; if ($2 != 0) f++ } END { printf "%d failed of %d", f, n }' "$1"; }

# The detection window: keepalive interval + timeout (1 s + 3 s), rounded up; a killed process's
# socket is closed by its kernel, so that is seen at once.
WINDOW_MS=5000
load 12 "$WORK/load-kill" &
LOAD=$!
sleep 3
t=$(date +%s%3N)
kill -KILL "$AG1_PID"
wait $LOAD
res=$(failures_after "$WORK/load-kill" $((t + WINDOW_MS)))
check "agent 1 killed under load: after the detection window no client fails ($res; overall $(failures_after "$WORK/load-kill" 0))" \
  "$(yes_if grep -q '^0 failed of [1-9]' <<< "$res")" "$(awk '$2 != 0' "$WORK/load-kill" | head)"

start_agent ag1
AG1_PID=$AG_PID
wait_agents 2 10 || fail "agent 1 came back" "$(tail -n 5 "$WORK/ag1.out")"
load 14 "$WORK/load-cut" &
LOAD=$!
sleep 3
t=$(date +%s%3N)
# Agent 2's network stops: every packet dropped both ways, no FIN, no reset.
printf '%s\n' 'table inet cut {' \
  '  chain in { type filter hook input priority -10; policy drop; }' \
  '  chain out { type filter hook output priority -10; policy drop; }' \
  '}' > "$WORK/cut.nft"
in_ns "$NS_AG2" nft -f "$WORK/cut.nft"
wait_agents 1 8
detected=$(($(date +%s%3N) - t))
wait $LOAD
res=$(failures_after "$WORK/load-cut" $((t + WINDOW_MS)))
check "agent 2 cut off without a FIN: the gateway found it after $detected ms (< $WINDOW_MS)" \
  "$(yes_if [ $detected -lt $WINDOW_MS ])" "$(grep 'agent disconnected' "$WORK/gateway.out" | tail -n 2)"
check "agent 2 cut off under load: after the detection window no client fails ($res; overall $(failures_after "$WORK/load-cut" 0))" \
  "$(yes_if grep -q '^0 failed of [1-9]' <<< "$res")" "$(awk '$2 != 0' "$WORK/load-cut" | head)"
in_ns "$NS_AG2" nft delete table inet cut
wait_agents 2 15 || fail "agent 2 came back once its link did" "$(tail -n 5 "$WORK/ag2.out")"

stop_pid "$GW_PID"
t=$(date +%s%3N)
start_gateway
ready=
for n in $(seq 1 100); do
  if [ "$(agents_connected)" = 2 ] && https_get app.example.test --max-time 2 | grep -q "^client=$C1"; then
    ready=$(($(date +%s%3N) - t))
    break
  fi
  sleep 0.1
done
check "gateway restarted: both agents back and serving after ${ready:-more than 10000} ms (< 10 s)" \
  "$(yes_if test "${ready:-99999}" -lt 10000)" "$(tail -n 5 "$WORK/ag1.out")"

kill -0 "$GW_PID" 2>/dev/null
check "the gateway is still running at the end" $? "$(tail -n 20 "$WORK/gateway.out")"
echo "$PASSED passed, $FAILED failed"
[ $FAILED = 0 ]
