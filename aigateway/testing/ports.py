"""Ports on loopback for servers the tests and the benchmark start."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


def free_port() -> int:
    """A port free a moment ago: another process may take it before it is used, so a
    server that can bind port 0 and say which it took is better (PORT=0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port nothing answers on while the block runs: bound and not listening, so a
    connection is refused at once and no other server can take the port meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port
