"""Free ports on 127.0.0.1 for test (and bench) servers."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def free_port_range(count: int) -> int:
    """A base port with ``count`` consecutive free ports (runtime i listens on base + i)."""
    for _ in range(100):
        base = free_port()
        if base + count < 65000 and all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free port range")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
