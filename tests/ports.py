"""Free TCP ports on loopback for the servers the tests start (Ray nodes, MLflow, sshd).

A port is found by binding to port 0 and releasing it, so the same number can come back from
the next call: two of a node's agents, or two nodes, were once given one port (a Ray node's
metrics exporter answered its raylet's runtime-env requests with HTTP 405 and a sweep job
failed). Every port handed out here is therefore distinct from every other one handed out by
this process: the ports of one call are held bound together while they are chosen, and a
port given out before is never given out again.
"""

from __future__ import annotations

import socket

_GIVEN: set[int] = set()


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 with nothing listening on them now.

    None of them was returned before by this process, by this function or :func:`free_port`.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in _GIVEN:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    _GIVEN.update(ports)
    return ports


def free_port() -> int:
    """One TCP port on 127.0.0.1 with nothing listening on it, never given out before here."""
    return free_ports(1)[0]
