#!/usr/bin/env python3
"""Gateway CPU per new connection of the two floor experiments beside the bench's own gateways.

Run on a topology the bench holds (bench/runtime-floor/README.md):

    sudo BENCH_HOLD=1200 BENCH_ONLY=conn bench/run.sh &
    sudo bench/runtime-floor/compare.py [WORK [ROUNDS]]   # WORK: the bench's /tmp/sni-edge-bench.*;
                                                          # "" or none: the only one there is

It starts bare-mio and tokio-minimal in the gateway's namespace the way the bench starts a gateway
(a session of its own whose autogroup gets the bench's niceness, CPU 1), then measures every
gateway in turn, 64 clients making new TLS connections for 3 s each, in rounds whose order
alternates, and reads each gateway's CPU from its threads' schedstat (ns). It stops only the two
processes it started, by PID.
"""
import glob
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "target"))
NICE = os.environ.get("BENCH_NICE", "-10")


def in_ns(ns, cpu, argv):
    """As bench.py's in_ns, to be run in a session of its own: the session's autogroup gets NICE
    too (see AUTOGROUP_SHIM there), then nice, the namespace and the CPU."""
    return (["sh", "-c", '{ echo "$0" > /proc/self/autogroup; } 2>/dev/null; exec "$@"', NICE,
             "nice", "-n", NICE, "ip", "netns", "exec", ns, "taskset", "-c", str(cpu)] + argv)
PORTS = {"bare-mio": 4641, "tokio-minimal": 4642}


def with_children(pid):
    """pid and its children (nginx: master and worker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [pid] + [int(c) for c in f.read().split()]


def cpu_ns(pids):
    total = 0
    for p in pids:
        for t in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def main():
    if len(sys.argv) > 1 and sys.argv[1]:
        work = sys.argv[1]
    else:  # the one topology the bench holds
        held = glob.glob("/tmp/sni-edge-bench.*")
        if len(held) != 1:
            sys.exit(f"{len(held)} bench work directories in /tmp: name one\n{__doc__}")
        work = held[0]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    conf = json.load(open(f"{work}/sni-edge.json"))
    gw, gw_port = conf["listeners"][0]["address"].rsplit(":", 1)
    upstream = conf["backends"]["bench"]["servers"][0]
    sni = conf["routes"][0]["names"][0]
    bench = {}  # the bench's gateways, from the PIDs it recorded
    for line in open(f"{work}/pids"):
        pid, name = line.split()
        if name in ("sni-edge", "haproxy", "nginx") and os.path.exists(f"/proc/{pid}"):
            bench[name] = int(pid)
    if "sni-edge" not in bench:
        sys.exit(f"no running sni-edge of the bench in {work}: is the bench holding its topology?")
    ns_g = subprocess.run(["ip", "netns", "identify", str(bench["sni-edge"])],
                          capture_output=True, text=True).stdout.strip()
    ns_c = ns_g[:-1] + "c"
    # The peers' ports, from the configs the bench wrote.
    ports = {"sni-edge": int(gw_port),
             "haproxy": int(re.search(r"bind \S+:(\d+)", open(f"{work}/haproxy.cfg").read()).group(1)),
             "nginx": int(re.search(r"listen \S+:(\d+)", open(f"{work}/nginx-gw/nginx.conf").read()).group(1))}

    started = []
    try:
        for name, binary in (("bare-mio", "bare_mio"), ("tokio-minimal", "tokio_minimal")):
            argv = in_ns(ns_g, 1, [f"{TARGET}/release/{binary}", f"{gw}:{PORTS[name]}", upstream])
            started.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True))
            bench[name], ports[name] = started[-1].pid, PORTS[name]
        time.sleep(1)
        targets = [n for n in ("sni-edge", "tokio-minimal", "bare-mio", "nginx", "haproxy") if n in bench]
        result = {n: [] for n in targets}
        for r in range(rounds):
            line = []
            for name in (targets if r % 2 == 0 else targets[::-1]):
                pids = with_children(bench[name])
                before = cpu_ns(pids)
                load = [f"{work}/tlsload", "rate", gw, str(ports[name]), sni, "64", "3", "200000", "0"]
                out = subprocess.run(in_ns(ns_c, 0, load), capture_output=True, text=True, timeout=60,
                                     start_new_session=True).stdout
                got = dict(re.findall(r"(\w+)=([\d.]+)", out))
                ok, err = float(got.get("ok", 0)), float(got.get("err", 0))
                if ok == 0 or err > 0:
                    sys.exit(f"{name}: {ok:.0f} connections, {err:.0f} failed: {out}")
                result[name].append((cpu_ns(pids) - before) / 1000 / ok)
                line.append(f"{name} {result[name][-1]:.0f}")
            print(f"round {r + 1}: " + ", ".join(line), flush=True)
        print("\n| Gateway CPU per new connection, µs (64 clients) | median | mean | rounds |\n|---|---:|---:|---|")
        for name in targets:
            v = result[name]
            print(f"| {name} | {statistics.median(v):.0f} | {statistics.mean(v):.0f} | "
                  f"{', '.join(f'{x:.0f}' for x in v)} |")
    finally:
        for p in started:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
