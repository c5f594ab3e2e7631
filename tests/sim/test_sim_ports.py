"""Port blocks for simulators stay out of the kernel's ephemeral range and really bind."""

from __future__ import annotations

import socket

from sim_devices.ports import LOOPBACK, ephemeral_range, free_port_block


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
