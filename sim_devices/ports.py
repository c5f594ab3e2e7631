"""Free loopback port blocks for simulators started by tests, benches and test rigs.

pymodbus servers cannot bind port 0 and a simulated site wants consecutive ports, so a caller has to pick them.
Picking inside the kernel's ephemeral range (Linux: 32768-60999) is a trap: a client socket elsewhere can be
given the same number a moment later, and a probe `connect()` to a port nobody listens on can connect to
*itself* (TCP simultaneous open) when the kernel happens to choose that port as the probe's source, which
makes a closed port look open. Blocks are therefore taken below the ephemeral range.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
_LOWEST = 20_000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral (client) port range; the Linux default where /proc is not readable."""
    try:
        low, high = (int(v) for v in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return low, high


def _candidate_ranges(count: int) -> list[tuple[int, int]]:
    """Stretches [first, last_base] where a block of `count` fits without touching the ephemeral range."""
    low, high = ephemeral_range()
    ranges = []
    if low - count > _LOWEST:
        ranges.append((_LOWEST, low - count))
    if high + 1 <= 65_535 - count:
        ranges.append((high + 1, 65_536 - count))
    return ranges


def free_port_block(count: int, host: str = LOOPBACK) -> int:
    """First of `count` consecutive ports that bind on `host` now, all outside the ephemeral range."""
    ranges = _candidate_ranges(count)
    if not ranges:
        raise RuntimeError(f"no room for {count} consecutive ports outside the ephemeral range {ephemeral_range()}")
    rng = random.Random()
    for _ in range(200):
        first, last = rng.choice(ranges)
        base = rng.randrange(first, last)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind((host, port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no block of {count} free ports on {host}")
