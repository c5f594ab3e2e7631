"""Port blocks for simulators stay out of the kernel's ephemeral range and really bind."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from sim_devices.ports import LOOPBACK, address_in_use, ephemeral_range, free_port_block
from sim_devices.server import PortServer, bind_error


def test_block_is_outside_the_ephemeral_range_and_binds() -> None:
    low, high = ephemeral_range()
    for count in (1, 50, 500):
        base = free_port_block(count)
        assert base + count - 1 < low or base > high, (base, count, low, high)
        sockets = [socket.socket() for _ in range(count)]
        try:
            for offset, sock in enumerate(sockets):
                sock.bind((LOOPBACK, base + offset))
        finally:
            for sock in sockets:
                sock.close()


def test_a_held_port_is_never_handed_out() -> None:
    held = []
    try:
        for _ in range(20):
            base = free_port_block(3)
            for port in range(base, base + 3):
                sock = socket.socket()
                sock.bind((LOOPBACK, port))  # raises if a block overlapped one already held
                held.append(sock)
    finally:
        for sock in held:
            sock.close()


def test_a_taken_port_is_reported_with_its_errno() -> None:
    """pymodbus raises a bare RuntimeError when it cannot bind; vpp-sim's error must still say why (EADDRINUSE), so
    the retry on a new block (ports.address_in_use) and the user both see the real cause."""
    taken = socket.socket()
    taken.bind((LOOPBACK, 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(OSError) as caught:
            asyncio.run(PortServer(LOOPBACK, port, []).start())
    finally:
        taken.close()
    assert caught.value.errno == errno.EADDRINUSE
    assert f"cannot listen on {LOOPBACK}:{port}" in str(caught.value)
    assert address_in_use(caught.value)


def test_bind_error_is_none_for_a_free_port() -> None:
    probe = socket.socket()
    probe.bind((LOOPBACK, 0))
    port = probe.getsockname()[1]
    probe.close()
    assert bind_error(LOOPBACK, port) is None


def test_bind_error_probes_every_address_the_host_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio binds every address of a host (localhost: ::1 and 127.0.0.1); if only the second is taken, the reason
    must still be found. Stand-in for the two families: two loopback entries, the second on the taken port."""
    taken = socket.socket()
    taken.bind((LOOPBACK, 0))
    taken.listen()
    held = taken.getsockname()[1]
    free = socket.socket()
    free.bind((LOOPBACK, 0))
    spare = free.getsockname()[1]
    free.close()
    entries = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (LOOPBACK, p)) for p in (spare, held)]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: entries)
    try:
        reason = bind_error("localhost", held)
    finally:
        taken.close()
    assert reason is not None and reason.errno == errno.EADDRINUSE
