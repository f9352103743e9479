#!/usr/bin/env python3
"""A connection storm: COUNT WebSocket upgrade attempts against HOST:PORT,
as fast as one thread can make them, each closed once its status line is
read. Prints how many got each status and how long the storm took.

    python3 bench/connect-burst.py 127.0.0.1 9420 20000 /socket/websocket

Used by bench/burst-ab.sh; only the standard library.
"""
import collections
import socket
import sys
import time


def attempt(host, port, path):
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(request)
        status = s.recv(64).split(b" ", 2)
        return status[1].decode() if len(status) > 1 else "none"


def main():
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    path = sys.argv[4] if len(sys.argv) > 4 else "/"
    statuses = collections.Counter()
    started = time.monotonic()
    for _ in range(count):
        try:
            statuses[attempt(host, port, path)] += 1
        except OSError as err:
            statuses[type(err).__name__] += 1
    took = time.monotonic() - started
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    print(f"burst: {count} attempts in {took:.2f} s ({count / took:.0f}/s): {summary}")


if __name__ == "__main__":
    main()
