"""Free loopback ports for the servers that `entityd up`, benches and tests start.

Ports are picked below the kernel's ephemeral range; bench/ports.py re-exports these for
the benches and tests.
"""

from __future__ import annotations

import random
import socket

# Ports are picked below the kernel's ephemeral range (32768 and up on Linux): a port
# from that range, free when picked, can be taken by any outgoing connection (a leaf
# dialling its hub) before the server meant for it binds it.
PORT_LOW, PORT_HIGH = 15_000, 32_000
_handed_out: set[int] = set()  # never the same port twice in one run


def free_port() -> int:
    return free_port_range(1)


def free_port_range(count: int) -> int:
    """The first of `count` consecutive free loopback ports, below the ephemeral range."""
    for _ in range(500):
        base = random.randrange(PORT_LOW, PORT_HIGH - count)
        ports = range(base, base + count)
        if _handed_out.intersection(ports):
            continue
        sockets = []
        try:
            for port in ports:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        _handed_out.update(ports)
        return base
    raise RuntimeError(f"no {count} consecutive free ports in {PORT_LOW}-{PORT_HIGH}")
