#!/usr/bin/env python3
"""Hold silent TCP connections to the gateway from several source addresses.

The lab's "bots" namespace runs this to attack the gateway's pool of pending connections
(accepted, no ClientHello or request head yet): from each --source address it keeps
--per-source connections open to each --target, sending nothing, and opens a new one as
soon as the gateway closes one, until --seconds have passed. Bounded in count (the
connections it holds) and time.

Prints one line at the end: "connects=N held=M" (M: connections open when it stopped).
"""

import argparse
import errno
import resource
import selectors
import socket
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", action="append", required=True, help="source address (repeat)")
    parser.add_argument("--target", action="append", required=True, help="HOST:PORT (repeat)")
    parser.add_argument("--per-source", type=int, required=True, help="connections per source and target")
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()

    targets = []
    for target in args.target:
        host, port = target.rsplit(":", 1)
        targets.append((host, int(port)))
    slots = [(source, target) for source in args.source for target in targets for _ in range(args.per_source)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    selector = selectors.DefaultSelector()
    connects = 0
    end = time.monotonic() + args.seconds
    pending = list(range(len(slots)))  # slots that need a connection

    def open_slot(slot):
        nonlocal connects
        source, target = slots[slot]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((source, 0))
        try:
            sock.connect(target)
        except BlockingIOError:
            pass
        except OSError as e:
            sock.close()
            if e.errno in (errno.EMFILE, errno.ENFILE):
                raise
            return False
        connects += 1
        selector.register(sock, selectors.EVENT_READ, slot)
        return True

    while time.monotonic() < end:
        retry = []
        for slot in pending:
            if not open_slot(slot):
                retry.append(slot)
        pending = retry
        for key, _ in selector.select(timeout=0.05):
            # Readable: the gateway closed it (or reset it). Open that slot again.
            sock = key.fileobj
            try:
                data = sock.recv(1)
            except OSError:
                data = b""
            if data:
                continue
            selector.unregister(sock)
            sock.close()
            pending.append(key.data)
    held = len(selector.get_map())
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    print(f"connects={connects} held={held}")


if __name__ == "__main__":
    main()
