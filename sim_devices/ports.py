"""Free loopback port blocks for simulators started by tests, benches and test rigs.

pymodbus servers cannot bind port 0 and a simulated site wants consecutive ports, so a caller has to pick them.
Picking inside the kernel's ephemeral range (Linux: 32768-60999) is a trap: a client socket elsewhere can be
given the same number a moment later, and a probe `connect()` to a port nobody listens on can connect to
*itself* (TCP simultaneous open) when the kernel happens to choose that port as the probe's source, which
makes a closed port look open. Blocks are therefore taken below the ephemeral range.

Between picking a block and the server binding it, the kernel check alone protects nothing: another pick (in this
process, in a parallel test process, or a second test session on the same machine) could hand out the same ports.
So every block is also *reserved*: the port space is cut into slots of `SLOT` ports, and a block holds an exclusive
`flock` on one lock file per slot in a directory under the system temp dir that every process shares. The kernel
drops the lock when its holder exits, so a crashed process never leaks a reservation. A block stays reserved until
`release_port_blocks` (or the end of `port_lease`, which the test suite wraps around every test) or the process exits.

A port taken by a process outside this scheme is still possible; `start_on_free_ports` covers that by picking a new
block when a server reports the address in use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import socket
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

LOOPBACK = "127.0.0.1"
_LOWEST = 20_000
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
SLOT = 32  # ports per reservation slot: one lock file covers the block of most callers
START_ATTEMPTS = 5  # blocks tried by start_on_free_ports before it gives up
T = TypeVar("T")

_held_fds: dict[int, list[int]] = {}  # first port of each block this process holds -> its slot lock fds
_held_lock = threading.Lock()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral (client) port range; the Linux default where /proc is not readable."""
    try:
        low, high = (int(v) for v in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999
    return low, high


def _candidate_bases(count: int) -> list[int]:
    """Slot-aligned first ports of blocks of `count` that lie wholly outside the ephemeral range."""
    low, high = ephemeral_range()
    span = -(-count // SLOT) * SLOT  # whole slots
    first = -(-_LOWEST // SLOT) * SLOT
    return [b for b in range(first, 65_536 - span + 1, SLOT) if b + span - 1 < low or b > high]


def reservation_dir() -> Path:
    """Where the slot lock files live: one directory per user under the system temp dir, shared by all processes."""
    path = Path(tempfile.gettempdir()) / f"vpp-port-reservations-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _lock_slots(base: int, count: int) -> list[int] | None:
    """Exclusive locks on the slots of [base, base + count), or None (nothing held) if another holder has one."""
    fds: list[int] = []
    directory = reservation_dir()
    for slot in range(base, base + count, SLOT):
        fd = os.open(directory / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            for held in fds:
                os.close(held)  # closing drops the lock
            return None
        fds.append(fd)
    return fds


def _binds(base: int, count: int, host: str) -> bool:
    """All ports of the block bind on `host` now (no listener, no socket of another program on them)."""
    try:
        with contextlib.ExitStack() as stack:
            for port in range(base, base + count):
                sock = stack.enter_context(socket.socket())
                sock.bind((host, port))
    except OSError:
        return False
    return True


def free_port_block(count: int, host: str = LOOPBACK) -> int:
    """First of `count` consecutive ports that bind on `host` now, outside the ephemeral range, and reserved for
    this process (no other caller, here or in another process, gets them until they are released)."""
    if count < 1:
        raise ValueError(f"free_port_block: count must be at least 1, got {count}")
    bases = _candidate_bases(count)
    if not bases:
        raise RuntimeError(f"no room for {count} consecutive ports outside the ephemeral range {ephemeral_range()}")
    random.shuffle(bases)  # processes start at different places, so they rarely contend for the same slot
    for base in bases:
        fds = _lock_slots(base, count)
        if fds is None:
            continue
        if not _binds(base, count, host):
            for fd in fds:
                os.close(fd)
            continue
        with _held_lock:
            _held_fds[base] = fds
        return base
    raise RuntimeError(f"no block of {count} free ports on {host} (reservations in {reservation_dir()})")


def reserved_blocks() -> set[int]:
    """First ports of the blocks this process holds now."""
    with _held_lock:
        return set(_held_fds)


def release_port_blocks(bases: set[int] | None = None) -> None:
    """Give back the blocks starting at `bases` (all this process holds if None), once their servers have stopped."""
    with _held_lock:
        chosen = set(_held_fds) if bases is None else bases & set(_held_fds)
        released = [_held_fds.pop(base) for base in chosen]
    for fds in released:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def port_lease() -> Iterator[None]:
    """Blocks handed out inside the `with` are released at its end; blocks held before it stay held."""
    before = reserved_blocks()
    try:
        yield
    finally:
        release_port_blocks(reserved_blocks() - before)


def address_in_use(error: BaseException | str) -> bool:
    """The one test for "a port was taken before the server bound it": EADDRINUSE on the error or on what caused it
    (vpp-sim's PortServer wraps pymodbus' error), or its message in a child's output."""
    seen: BaseException | str | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EADDRINUSE:
            return True
        if "address already in use" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__ if isinstance(seen, BaseException) else None
    return False


def start_on_free_ports(
    count: int, start: Callable[[int], T], attempts: int = START_ATTEMPTS, pick: Callable[[int], int] = free_port_block
) -> T:
    """`start(base)` on a fresh block of `count` ports (from `pick`); when it fails because a port is in use (see
    `address_in_use`), release that block and try a new one, at most `attempts` times. Other errors pass through.

    For a port taken by a program outside the reservations (a service, another user's process) in the moment
    between the pick and the bind."""
    last: BaseException | None = None
    for _ in range(attempts):
        base = pick(count)
        try:
            return start(base)
        except Exception as exc:
            last = _retry_or_raise(exc, base)
    raise _exhausted(count, attempts, last)


async def astart_on_free_ports(
    count: int,
    start: Callable[[int], Awaitable[T]],
    attempts: int = START_ATTEMPTS,
    pick: Callable[[int], int] = free_port_block,
) -> T:
    """`start_on_free_ports` for a coroutine `start`."""
    last: BaseException | None = None
    for _ in range(attempts):
        base = pick(count)
        try:
            return await start(base)
        except Exception as exc:
            last = _retry_or_raise(exc, base)
    raise _exhausted(count, attempts, last)


def _retry_or_raise(exc: Exception, base: int) -> Exception:
    """Release the failed block and return `exc` for a retry if a port was in use; otherwise re-raise it."""
    if not address_in_use(exc):
        raise exc
    release_port_blocks({base})
    return exc


def _exhausted(count: int, attempts: int, last: BaseException | None) -> RuntimeError:
    return RuntimeError(f"no block of {count} ports stayed free for a server in {attempts} attempts: {last}")
