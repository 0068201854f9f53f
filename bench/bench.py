#!/usr/bin/env python3
"""The measuring half of bench/run.sh (which builds the namespaces and cleans up).

Starts the backend and the four gateways, runs every load against every target in
interleaved rounds (so noise on a shared machine spreads over all targets alike), takes
medians, prints one table and writes bench/results/RESULTS-<date>.md. Every load is bounded
in count and in time. Environment (set by run.sh): WORK NS_C NS_G NS_B SNI_EDGE REPO BENCH_DIR.
"""
import datetime
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

E = os.environ
WORK, NS_C, NS_G, NS_B = E["WORK"], E["NS_C"], E["NS_G"], E["NS_B"]
SNI_EDGE, REPO, BENCH_DIR = E["SNI_EDGE"], E["REPO"], E["BENCH_DIR"]
QUICK = E.get("BENCH_QUICK") == "1"
PROFILE = E.get("BENCH_NO_PROFILE") != "1"

REPS = 1 if QUICK else 3           # runs per figure; the table shows the median
RATE_SECS = 1.5 if QUICK else 3.0  # one connection-rate run
RATE_MAX = 200_000                 # connections per rate run, at most
BIG_MIB = 64 if QUICK else 256     # the large file
PARALLEL = 4                       # parallel downloads
# Idle connections held for the memory figure: 10,000, unless the open-files hard limit (which
# root cannot raise in some containers) leaves a gateway fewer than two descriptors each.
FD_MAX = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
HAPROXY_MAXCONN = max(1000, min(40_000, (FD_MAX - 100) // 2))
HOLD = 2000 if QUICK else min(10_000, HAPROXY_MAXCONN - 50)
TTFB_ROUNDS = 100 if QUICK else 300  # sequential connections per target and run, for TTFB
PAD = 1400                         # ALPN padding: a ~1.9 KB ClientHello, two TCP segments
SNI = "bench.example.test"
GW, BE = "198.51.100.1", "192.0.2.20"
CLK = os.sysconf("SC_CLK_TCK")
# Priority of everything measured (load generator, gateways, backend): the machine may be shared
# with builds; a higher priority keeps their noise out of the figures. BENCH_NICE=0 to switch off.
NICE = E.get("BENCH_NICE", "-10")

# name, address, port the client connects to
TARGETS = [("direct", BE, 8443), ("sni-edge", GW, 443), ("haproxy", GW, 444), ("nginx", GW, 445),
           ("sniproxy", GW, 446)]
GATEWAYS = [t for t in TARGETS if t[0] != "direct"]
T0 = time.monotonic()


def log(msg):
    print(f"# [{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def in_ns(ns, cpu, argv):
    return ["nice", "-n", NICE, "ip", "netns", "exec", ns, "taskset", "-c", str(cpu)] + argv


def start(name, ns, cpu, argv):
    """Starts a long-running process in a namespace on one CPU; records its PID for cleanup."""
    out = open(f"{WORK}/{name}.log", "ab")
    p = subprocess.Popen(in_ns(ns, cpu, argv), stdin=subprocess.DEVNULL, stdout=out,
                         stderr=subprocess.STDOUT, start_new_session=True)
    with open(f"{WORK}/pids", "a") as f:
        f.write(f"{p.pid} {name}\n")
    return p


def listening(ns, ip, port):
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"],
                         capture_output=True, text=True).stdout
    return f"{ip}:{port}" in out


def wait_listen(name, ns, ip, port, proc):
    for _ in range(100):
        if listening(ns, ip, port):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    log_tail = open(f"{WORK}/{name}.log").read()[-2000:]
    sys.exit(f"bench: {name} does not listen on {ip}:{port}\n{log_tail}")


# --- /proc accounting --------------------------------------------------------------------------
def tree(pid):
    """pid and all its descendants (nginx: master and workers)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK


def memory(pids):
    """(RSS, PSS) in bytes, summed over the processes."""
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def established(ns, port):
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htn", "state", "established",
                          f"( sport = :{port} )"], capture_output=True, text=True).stdout
    return len(out.splitlines())


def tcp_out_segs(ns):
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True,
                         text=True).stdout
    tcp = [line.split() for line in out.splitlines() if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("OutSegs")])


# --- configs -------------------------------------------------------------------------------------
def configs():
    tls = f"{WORK}/tls"
    for d in ("backend", "nginx-gw", "sniproxy", "www"):
        os.makedirs(f"{WORK}/{d}", exist_ok=True)
        os.chmod(f"{WORK}/{d}", 0o777)
    with open(f"{WORK}/www/big.bin", "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(BIG_MIB):
            f.write(block)
    os.chmod(f"{WORK}/www/big.bin", 0o644)
    temps = "".join(f"  {k}_temp_path {WORK}/backend/{k};\n"
                    for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    write(f"{WORK}/backend/nginx.conf", f"""daemon off;
worker_processes 1;
worker_rlimit_nofile {min(FD_MAX, 65536)};
pid {WORK}/backend/nginx.pid;
error_log {WORK}/backend/error.log warn;
events {{ worker_connections 30000; }}
http {{
{temps}  access_log off;
  default_type application/octet-stream;
  keepalive_timeout 10m;
  client_header_timeout 10m;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache off;
  ssl_session_tickets off;
  ssl_certificate {tls}/server.pem;
  ssl_certificate_key {tls}/server.key;
  server {{
    listen {BE}:443 ssl proxy_protocol backlog=65535;   # behind a gateway: PROXY v1 or v2
    listen {BE}:8443 ssl backlog=65535;                 # the direct path
    server_name {SNI};
    location = /small {{ return 200 "ok\\n"; }}
    location = /big.bin {{ root {WORK}/www; }}
  }}
}}
""")
    write(f"{WORK}/sni-edge.json", json.dumps({
        "log": {"level": "warn", "format": "text"},
        "listeners": [{"address": f"{GW}:443", "protocol": "tls"}],
        "routes": [{"names": [SNI], "backend": "bench"}],
        "backends": {"bench": {"servers": [f"{BE}:443"], "proxy_protocol": "v2"}},
        "timeouts": {"client_hello": "5s", "idle": "10m"},
        "limits": {"max_connections": 40000, "max_pending_handshakes": 4000,
                   "max_connections_per_client": 40000},
    }, indent=2))
    write(f"{WORK}/haproxy.cfg", f"""global
  maxconn {HAPROXY_MAXCONN}
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 10m
  timeout server 10m
frontend tls
  bind {GW}:444
  tcp-request inspect-delay 5s
  tcp-request content accept if {{ req_ssl_hello_type 1 }}
  use_backend bench if {{ req.ssl_sni -i {SNI} }}
backend bench
  server backend {BE}:443 send-proxy-v2
""")
    write(f"{WORK}/nginx-gw/nginx.conf", f"""load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 1;
worker_rlimit_nofile {min(FD_MAX, 65536)};
pid {WORK}/nginx-gw/nginx.pid;
error_log {WORK}/nginx-gw/error.log warn;
events {{ worker_connections 30000; }}
stream {{
  map $ssl_preread_server_name $upstream {{
    {SNI} {BE}:443;
    default 127.0.0.1:9;
  }}
  server {{
    listen {GW}:445 backlog=65535;
    ssl_preread on;
    proxy_pass $upstream;
    proxy_protocol on;          # PROXY v1: nginx 1.22 has no v2
    proxy_timeout 10m;
  }}
}}
""")
    write(f"{WORK}/sniproxy/sniproxy.conf", f"""user nobody
pidfile {WORK}/sniproxy/sniproxy.pid
error_log {{
  filename {WORK}/sniproxy/error.log
  priority warning
}}
listener {GW}:446 {{
  protocol tls
  table bench
}}
table bench {{
  ^bench\\\\.example\\\\.test$ {BE}:443 proxy_protocol
}}
""")


def start_all():
    procs = {}
    p = start("backend", NS_B, 1, ["nginx", "-c", f"{WORK}/backend/nginx.conf"])
    wait_listen("backend", NS_B, BE, 443, p)
    wait_listen("backend", NS_B, BE, 8443, p)
    r = subprocess.run([SNI_EDGE, "check", "--config", f"{WORK}/sni-edge.json"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: sni-edge check failed: {r.stderr}")
    cmds = {
        "sni-edge": [SNI_EDGE, "run", "--config", f"{WORK}/sni-edge.json"],
        "haproxy": ["haproxy", "-db", "-f", f"{WORK}/haproxy.cfg"],
        "nginx": ["nginx", "-c", f"{WORK}/nginx-gw/nginx.conf"],
        "sniproxy": ["sniproxy", "-f", "-c", f"{WORK}/sniproxy/sniproxy.conf"],
    }
    for name, ip, port in GATEWAYS:
        procs[name] = start(name, NS_G, 1, cmds[name])
        wait_listen(name, NS_G, ip, port, procs[name])
    time.sleep(0.5)
    return procs


# --- loads ---------------------------------------------------------------------------------------
def tlsload(*args, timeout=120):
    argv = in_ns(NS_C, 0, [f"{WORK}/tlsload"] + [str(a) for a in args])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        sys.exit(f"bench: tlsload {args} failed: {r.stderr}")
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", r.stdout)}


def curl_argv(ip, port):
    return in_ns(NS_C, 0, ["curl", "-sk", "--max-time", "60", "--resolve", f"{SNI}:{port}:{ip}",
                           "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                           f"https://{SNI}:{port}/big.bin"])


def download(ip, port, n):
    """n parallel downloads of the large file: (bytes, seconds) with seconds = wall time."""
    t = time.monotonic()
    ps = [subprocess.Popen(curl_argv(ip, port), stdout=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=90)[0].split() for p in ps]
    wall = time.monotonic() - t
    total = 0
    for o in outs:
        if len(o) != 2 or o[0] != "200" or int(o[1]) != BIG_MIB << 20:
            sys.exit(f"bench: download via {ip}:{port} failed: {o}")
        total += int(o[1])
    return total, wall


def main():
    started_at = datetime.datetime.now(datetime.timezone.utc)
    load_start = open("/proc/loadavg").read().split()[:3]
    configs()
    procs = start_all()
    pids = {name: (lambda p=procs[name]: tree(p.pid)) for name, _, _ in GATEWAYS}
    R = {name: {} for name, _, _ in TARGETS}

    def add(target, key, value):
        R[target].setdefault(key, []).append(value)

    # Sanity: every target serves the small response and the big file, with no errors.
    for name, ip, port in TARGETS:
        for pad in (0, PAD):
            r = tlsload("rate", ip, port, SNI, 8, 0.5, 200, pad)
            if r["ok"] < 1:
                sys.exit(f"bench: {name} served nothing (pad {pad}): {r}")
            if r["err"] > 0:
                log(f"warning: {name} pad={pad}: {int(r['err'])} errors in the warm-up")
    # How many TCP segments a hello takes: client segments per connection, small vs padded hello.
    segs = {}
    for pad in (0, PAD):
        before = tcp_out_segs(NS_C)
        r = tlsload("rate", BE, 8443, SNI, 1, 10, 100, pad)
        segs[pad] = (tcp_out_segs(NS_C) - before) / r["ok"]
    log(f"client TCP segments per connection: normal hello {segs[0]:.2f}, padded hello {segs[PAD]:.2f}")

    # 1. New connections: TTFB (targets in turn, connection by connection), rate, gateway CPU per
    #    connection.
    for rep in range(REPS):
        for pad in (0, PAD):
            out = subprocess.run(in_ns(NS_C, 0, [f"{WORK}/tlsload", "ttfb", SNI, str(TTFB_ROUNDS), str(pad)]
                                       + [f"{ip}:{port}" for _, ip, port in TARGETS]),
                                 capture_output=True, text=True, timeout=180).stdout
            for line in out.splitlines():
                r = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
                name = TARGETS[int(r["target"])][0]
                add(name, f"p{pad}_c1_ttfb50", r["ttfb_p50_us"])
                add(name, f"p{pad}_c1_ttfb99", r["ttfb_p99_us"])
                add(name, f"p{pad}_ttfb_err", r["err"])
            log(f"ttfb rep {rep + 1}/{REPS} pad={pad}: " + ", ".join(
                f"{n} {R[n][f'p{pad}_c1_ttfb50'][-1]:.0f}/{R[n][f'p{pad}_c1_ttfb99'][-1]:.0f}us" for n, _, _ in TARGETS))
        for pad in (0, PAD):
            for conc in (1, 64):
                for name, ip, port in TARGETS:
                    g = pids[name]() if name != "direct" else []
                    c0 = cpu_seconds(g)
                    r = tlsload("rate", ip, port, SNI, conc, RATE_SECS, RATE_MAX, pad)
                    c1 = cpu_seconds(g)
                    k = f"p{pad}_c{conc}"
                    add(name, f"{k}_rate", r["rate"])
                    add(name, f"{k}_err", r["err"])
                    add(name, f"{k}_load_ttfb50", r["ttfb_p50_us"])
                    add(name, f"{k}_load_ttfb99", r["ttfb_p99_us"])
                    if g and r["ok"]:
                        add(name, f"{k}_cpu_us", (c1 - c0) / r["ok"] * 1e6)
                    log(f"rate rep {rep + 1}/{REPS} pad={pad} c={conc} {name}: {r['rate']:.0f}/s "
                        f"err={r['err']:.0f} ttfb p50={r['ttfb_p50_us']:.0f}us p99={r['ttfb_p99_us']:.0f}us")

    # 2. Bulk throughput and gateway CPU per GB.
    for rep in range(REPS):
        for n in (1, PARALLEL):
            for name, ip, port in TARGETS:
                g = pids[name]() if name != "direct" else []
                c0 = cpu_seconds(g)
                size, wall = download(ip, port, n)
                c1 = cpu_seconds(g)
                add(name, f"bulk{n}_mbps", size / wall / 1e6)
                if g:
                    add(name, f"bulk{n}_cpu_gb", (c1 - c0) / (size / 1e9))
                log(f"bulk rep {rep + 1}/{REPS} x{n} {name}: {size / wall / 1e6:.0f} MB/s")

    # 3. Memory per idle connection (one gateway at a time).
    for name, ip, port in GATEWAYS:
        g = pids[name]()
        m0 = memory(g)
        argv = in_ns(NS_C, 0, [f"{WORK}/tlsload", "hold", ip, str(port), SNI, str(HOLD), "256", "90"])
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        held = int(re.search(r"held (\d+)", line).group(1)) if "held" in line else 0
        time.sleep(1.0)
        m1 = memory(pids[name]())
        est = established(NS_G, port)
        try:
            p.stdin.write("q\n")
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
        if held:
            add(name, "idle_rss", (m1[0] - m0[0]) / held)
            add(name, "idle_pss", (m1[1] - m0[1]) / held)
        add(name, "idle_held", held)
        add(name, "idle_est", est)
        log(f"idle {name}: held {held} (gateway shows {est} established), RSS {m0[0] >> 10} -> {m1[0] >> 10} KiB, "
            f"{(m1[0] - m0[0]) / max(held, 1):.0f} B/conn")
        for _ in range(300):  # let the gateway and backend close them all (30 s at most)
            if established(NS_G, port) < 10:
                break
            time.sleep(0.1)

    # 4. Profile sni-edge (and HAProxy for bulk) with perf, outside the figures.
    profile = profile_runs(procs) if PROFILE else ""

    finished_at = datetime.datetime.now(datetime.timezone.utc)
    load_end = open("/proc/loadavg").read().split()[:3]
    report(R, segs, started_at, finished_at, load_start, load_end, profile)


def profile_runs(procs):
    import shutil
    if not shutil.which("perf"):
        return "perf not installed.\n"
    out = []
    jobs = [("sni-edge", "handshakes (64 clients, new connection each)", "rate"),
            ("sni-edge", f"bulk (one {BIG_MIB} MiB download)", "bulk"),
            ("haproxy", f"bulk (one {BIG_MIB} MiB download)", "bulk")]
    for name, what, kind in jobs:
        ip, port = next((i, p) for n, i, p in TARGETS if n == name)
        data = f"{WORK}/perf-{name}-{kind}.data"
        rec = subprocess.Popen(["taskset", "-c", "0", "perf", "record", "-q", "-e", "cpu-clock", "-F", "4000",
                                "-p", str(procs[name].pid), "-o", data], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        if kind == "rate":
            tlsload("rate", ip, port, SNI, 64, RATE_SECS, RATE_MAX, 0)
        else:
            download(ip, port, 1)
        rec.send_signal(2)
        try:
            rec.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rec.kill()
            continue
        lines = []
        for sort, limit, most in (("dso", "1", 6), ("dso,sym", "0.8", 30)):
            rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", sort,
                                  "--percent-limit", limit], capture_output=True, text=True).stdout
            got = re.search(r"# Samples: (\S+)", rep)
            lines += ([f"({got.group(1)} samples)"] if got and sort == "dso" else [])
            lines += [l for l in rep.splitlines() if l.strip() and not l.startswith("#")][:most] + [""]
        out.append(f"**{name}, {what}** (perf record -e cpu-clock -F 4000; share of the gateway's CPU samples; "
                   "by binary, then by symbol)\n\n```\n" + "\n".join(lines).rstrip() + "\n```\n")
        log(f"profiled {name} {kind}")
    out.append(syscall_counts(procs))
    return "\n".join(out)


def traced(pids, load):
    """Runs load() under `perf trace -s` on the given processes; returns {syscall: calls}."""
    path = f"{WORK}/trace-{pids[0]}.txt"
    rec = subprocess.Popen(["taskset", "-c", "0", "perf", "trace", "-s", "-p", ",".join(map(str, pids)),
                            "-o", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    units = load()
    time.sleep(0.2)
    rec.send_signal(2)
    try:
        rec.wait(timeout=30)
    except subprocess.TimeoutExpired:
        rec.kill()
        return {}, units
    counts = {}
    for m in re.finditer(r"^\s+(\w+)\s+(\d+)\s+\d+\s+[\d.]+", open(path).read(), re.M):
        counts[m.group(1)] = counts.get(m.group(1), 0) + int(m.group(2))
    return counts, units


def syscall_counts(procs):
    """System calls per new connection and per MiB moved, for every gateway (perf trace -s)."""
    rows = []
    for name, ip, port in GATEWAYS:
        pl = tree(procs[name].pid)
        conns, n = traced(pl, lambda: tlsload("rate", ip, port, SNI, 8, RATE_SECS, 1000, 0)["ok"])
        bulk, size = traced(pl, lambda: download(ip, port, 1)[0] / (1 << 20))
        def top(c, per):
            total = sum(c.values()) / per if per else 0
            most = sorted(c.items(), key=lambda kv: -kv[1])[:6]
            return f"{total:.1f} (" + ", ".join(f"{k} {v / per:.1f}" for k, v in most) + ")"
        rows.append(f"| {name} | {top(conns, n)} | {top(bulk, size)} |")
        log(f"traced {name}")
    return ("**System calls** (perf trace -s on every gateway process; outside the figures)\n\n"
            "| Gateway | per new connection (8 clients) | per MiB, one download |\n|---|---|---|\n"
            + "\n".join(rows) + "\n")


# --- the table -----------------------------------------------------------------------------------
def med(R, t, k):
    v = R[t].get(k)
    return statistics.median(v) if v else None


ROWS = [
    # key, label, format, kind: "abs" ratio to direct and HAProxy; "gw" gateway-only (ratio to HAProxy);
    # "added" minus direct (ratio to HAProxy of the added part)
    ("p0_c1_rate", "New TLS connections/s, 1 client", "{:.0f}", "abs"),
    ("p0_c64_rate", "New TLS connections/s, 64 clients", "{:.0f}", "abs"),
    ("p0_c1_ttfb50", "Added TTFB p50, µs (sequential)", "{:.0f}", "added"),
    ("p0_c1_ttfb99", "Added TTFB p99, µs (sequential)", "{:.0f}", "added"),
    ("p0_c64_cpu_us", "Gateway CPU per connection, µs", "{:.0f}", "gw"),
    ("p{PAD}_c1_rate", "2-segment hello: connections/s, 1 client", "{:.0f}", "abs"),
    ("p{PAD}_c64_rate", "2-segment hello: connections/s, 64 clients", "{:.0f}", "abs"),
    ("p{PAD}_c1_ttfb50", "2-segment hello: added TTFB p50, µs", "{:.0f}", "added"),
    ("p{PAD}_c1_ttfb99", "2-segment hello: added TTFB p99, µs", "{:.0f}", "added"),
    ("p{PAD}_c64_cpu_us", "2-segment hello: gateway CPU per connection, µs", "{:.0f}", "gw"),
    ("bulk1_mbps", "Bulk, 1 download, MB/s", "{:.0f}", "abs"),
    (f"bulk{PARALLEL}_mbps", f"Bulk, {PARALLEL} parallel downloads, MB/s", "{:.0f}", "abs"),
    ("bulk1_cpu_gb", "Gateway CPU s per GB, 1 download", "{:.2f}", "gw"),
    (f"bulk{PARALLEL}_cpu_gb", f"Gateway CPU s per GB, {PARALLEL} downloads", "{:.2f}", "gw"),
    ("idle_rss", f"Memory per idle connection, bytes RSS ({HOLD:,} held)", "{:.0f}", "gw"),
    ("idle_pss", "Memory per idle connection, bytes PSS", "{:.0f}", "gw"),
]


def table(R):
    names = [t[0] for t in TARGETS]
    head = "| Figure (median of %d) | %s |\n|---|%s\n" % (REPS, " | ".join(names), "---:|" * len(names))
    body = []
    values = {}
    for key, label, fmt, kind in ROWS:
        key = key.replace("{PAD}", str(PAD))
        cells = []
        d = med(R, "direct", key)
        for name in names:
            v = med(R, name, key)
            if kind == "added":
                v = None if v is None or d is None else v - d
            values[(key, name)] = v
        h = values[(key, "haproxy")]
        for name in names:
            v = values[(key, name)]
            if kind == "added" and name == "direct":
                cells.append(f"(base {fmt.format(d)})" if d is not None else "–")
                continue
            if v is None:
                cells.append("–")
                continue
            s = fmt.format(v)
            ratios = []
            if kind == "abs" and name != "direct" and d:
                ratios.append(f"{v / d:.2f}×d")
            if name != "haproxy" and name != "direct" and h:
                ratios.append(f"{v / h:.2f}×h")
            cells.append(s + (f" ({', '.join(ratios)})" if ratios else ""))
        body.append(f"| {label} | " + " | ".join(cells) + " |")
    return head + "\n".join(body) + "\n", values


def verdicts(values, R):
    def v(k, n):
        return values.get((k.replace("{PAD}", str(PAD)), n))

    lines = []

    def check(ok, text):
        if ok is None:
            lines.append(f"- n/a: {text}")
        else:
            lines.append(f"- {'MET' if ok else 'MISSED'}: {text}")

    for k, what in (("bulk1_mbps", "1 download"), (f"bulk{PARALLEL}_mbps", f"{PARALLEL} downloads")):
        s, d = v(k, "sni-edge"), v(k, "direct")
        check(None if not (s and d) else s / d >= 0.9, f"bulk throughput ≥ 0.9 of direct ({what}): {s / d:.2f}"
              if s and d else f"bulk {what}")
    for k, what in (("p0_c64_cpu_us", "CPU per new connection"), ("p{PAD}_c64_cpu_us", "CPU per new connection, 2-segment hello"),
                    ("bulk1_cpu_gb", "CPU per GB, 1 download"), (f"bulk{PARALLEL}_cpu_gb", f"CPU per GB, {PARALLEL} downloads")):
        s, h = v(k, "sni-edge"), v(k, "haproxy")
        check(None if not (s and h) else s / h <= 0.6, f"{what} ≤ 0.6 of HAProxy's: {s / h:.2f}" if s and h else what)
    s = v("idle_rss", "sni-edge")
    check(None if s is None else s <= 2048, f"memory per idle connection ≤ 2 KiB: {s:.0f} B RSS" if s is not None else "memory")
    for k, what in (("p0_c1_ttfb50", "p50"), ("p0_c1_ttfb99", "p99"), ("p{PAD}_c1_ttfb50", "p50, 2-segment hello"),
                    ("p{PAD}_c1_ttfb99", "p99, 2-segment hello")):
        s = v(k, "sni-edge")
        peers = {n: v(k, n) for n in ("haproxy", "nginx", "sniproxy")}
        if s is None or any(p is None for p in peers.values()):
            check(None, f"added TTFB {what}")
            continue
        check(all(s < p for p in peers.values()), f"added TTFB {what} below every peer's: sni-edge {s:.0f} µs; "
              + ", ".join(f"{n} {p:.0f}" for n, p in peers.items()))
    errs = []
    for name in R:
        for k, vals in R[name].items():
            if k.endswith("_err") and sum(vals) > 0:
                errs.append(f"{name} {k[:-4]}: {int(sum(vals))} failed connections")
        held = R[name].get("idle_held")
        if held and min(held) < HOLD:
            errs.append(f"{name}: held only {int(min(held))} of {HOLD} idle connections")
    return lines, errs


def versions():
    def run(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001 - a version line is best effort
            return f"unknown ({e})"
    rev = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return [
        f"sni-edge: git {rev}{' + uncommitted changes in src/' if dirty else ''} ({run([SNI_EDGE, '--version'])})",
        f"HAProxy: {run(['haproxy', '-v'])}",
        f"nginx: {run(['nginx', '-v'])}",
        f"sniproxy: {run(['sniproxy', '-V'])}",
        f"OpenSSL: {run(['openssl', 'version'])}; curl: {run(['curl', '--version'])}",
        f"kernel: {os.uname().release}",
        f"machine: {os.cpu_count()} × {cpu}, {mem / 1048576:.0f} GiB RAM",
    ]


def report(R, segs, started_at, finished_at, load_start, load_end, profile):
    tab, values = table(R)
    ver, errs = verdicts(values, R)
    date = started_at.strftime("%Y-%m-%d")
    mins = (finished_at - started_at).total_seconds() / 60
    text = f"""# sni-edge benchmark, {date}

Run {started_at.strftime('%Y-%m-%d %H:%M')}–{finished_at.strftime('%H:%M')} UTC ({mins:.1f} min){', QUICK mode (not for publishing)' if QUICK else ''}.
Produced by `sudo bench/run.sh`; method in bench/README.md.

{chr(10).join('- ' + v for v in versions())}
- load average at start {' '.join(load_start)}, at end {' '.join(load_end)} (the machine may be shared)

Cells: median of {REPS} runs; `×d` = ratio to direct (no gateway), `×h` = ratio to HAProxy in the same run.
Added TTFB = the target's TTFB minus the direct path's (base shown in the direct column).
Client TCP segments per connection: normal hello {segs[0]:.2f}, padded hello {segs[PAD]:.2f}
(the padded ClientHello is ~{PAD + 500} bytes and crosses a segment boundary).

{tab}
## The lead's targets (sni-edge, same run)

{chr(10).join(ver)}

## Errors and anomalies

{chr(10).join('- ' + e for e in errs) if errs else '- none: every connection and download completed'}

## Profile

{profile or 'skipped'}

## Raw runs

```json
{json.dumps(R, indent=None, sort_keys=True)}
```
"""
    # A quick run is a smoke test: it must not replace the day's published results.
    name = f"QUICK-{date}.md" if QUICK else f"RESULTS-{date}.md"
    path = f"{BENCH_DIR}/results/{name}"
    write(path, text)
    print(tab)
    print("\n".join(ver))
    if errs:
        print("\n".join("! " + e for e in errs))
    print(f"\nwritten: bench/results/{name}")
    # Keep the README's copy of the latest table current.
    readme = f"{BENCH_DIR}/README.md"
    if os.path.exists(readme) and not QUICK:
        old = open(readme).read()
        new = re.sub(r"(<!-- results:begin -->\n).*?(<!-- results:end -->)",
                     lambda m: m.group(1) + f"From bench/results/RESULTS-{date}.md ({', '.join(versions()[:1])}):\n\n"
                     + tab + "\n" + "\n".join(ver) + "\n" + m.group(2), old, flags=re.S)
        if new != old:
            write(readme, new)


if __name__ == "__main__":
    main()
