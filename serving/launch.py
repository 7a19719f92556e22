"""Starting local servers on 127.0.0.1 for tests and benchmarks: free ports, and (below) the gateway under
gunicorn as a child process. Production runs gunicorn directly (`make serve`, the gateway image)."""
from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """`count` distinct ports on 127.0.0.1 that were free a moment ago (all held open together while picked,
    so they differ). Another process may still take one before it is bound; callers bind soon after."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]
