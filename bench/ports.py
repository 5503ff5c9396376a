"""A free TCP port for a server started by a test or a benchmark.

``bind(("127.0.0.1", 0))`` hands out a port of the kernel's ephemeral range, the range every
outgoing connection also takes its local port from. Between closing that socket and a server
binding the port, a client connection of another process (tests run in parallel: HTTP clients,
database connections, load generators) can take it, and the server fails with "address already
in use". A port below the ephemeral range is never handed to an outgoing connection.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default, and above the IANA registered ports' busiest part


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on, below the ephemeral range."""
    top = max(_ephemeral_start(), LOWEST + 1_000)
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(LOWEST, top)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} between {LOWEST} and {top}")
