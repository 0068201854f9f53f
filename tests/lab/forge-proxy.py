#!/usr/bin/env python3
"""Send a forged PROXY protocol header straight to an ingress, then one HTTP request.

The lab's "attacker" runs this from a host that can reach the cluster node without going
through the gateway. It claims to be relaying for --claim (a real client's address). A
correct ingress trusts PROXY headers only from the gateway, so it must refuse: close the
connection, or answer without believing the claimed address.

Prints what happened on stdout (one "connected" line, then the response or the error) and
exits 0 if a response arrived, 1 if the connection was refused or closed without one.
"""

import argparse
import ipaddress
import socket
import ssl
import struct
import sys

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_header(version, src, sport, dst, dport):
    if version == 1:
        return f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    addresses = (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )
    # version 2, command PROXY; family INET, protocol STREAM
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connect", required=True, help="IP:port of the ingress")
    p.add_argument("--proxy-version", type=int, choices=(1, 2), default=1)
    p.add_argument("--claim", required=True, help="client address to claim in the header")
    p.add_argument("--host", required=True, help="Host header and TLS server name")
    p.add_argument("--path", default="/")
    p.add_argument("--tls", action="store_true", help="speak TLS after the header")
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args()

    ip, port = args.connect.rsplit(":", 1)
    port = int(port)
    try:
        sock = socket.create_connection((ip, port), timeout=args.timeout)
        print(f"connected {sock.getsockname()[0]} -> {ip}:{port}", flush=True)
        sock.sendall(proxy_header(args.proxy_version, args.claim, 40000, ip, port))
        if args.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=args.host)
        request = (
            f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\n"
            "User-Agent: forge-proxy\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except (OSError, ssl.SSLError) as err:
        print(f"refused: {err.__class__.__name__}: {err}")
        return 1
    response = b"".join(chunks).decode(errors="replace")
    if not response:
        print("refused: connection closed without a response")
        return 1
    print(response)
    return 0


if __name__ == "__main__":
    sys.exit(main())
