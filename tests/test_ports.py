"""Port blocks are reserved, not just checked: no two picks (in one process or in parallel processes) share a port
while both are held, and a server that finds its port taken is started again on a new block (sim_devices/ports.py).

The picks here are never bound: between a pick and a server's bind nothing is listening, which is exactly when the
kernel check alone hands the same ports out twice.
"""

from __future__ import annotations

import errno
import multiprocessing
import random
import socket
from collections.abc import Callable, Iterator

import pytest

from sim_devices.ports import (
    LOOPBACK,
    SLOT,
    address_in_use,
    free_port_block,
    port_lease,
    release_port_blocks,
    reserved_blocks,
    start_on_free_ports,
)

WORKERS = 4
BLOCKS_PER_WORKER = 25
ROUNDS = 5


def _ports(blocks: list[tuple[int, int]]) -> list[int]:
    return [port for base, count in blocks for port in range(base, base + count)]


def _assert_disjoint(blocks: list[tuple[int, int]]) -> None:
    ports = _ports(blocks)
    shared = sorted({p for p in ports if ports.count(p) > 1})
    assert not shared, f"ports handed out twice: {shared[:10]} (blocks {sorted(blocks)})"


def _counts(seed: int, n: int) -> list[int]:
    """Sizes the suite asks for: single ports, the shipped config's 30, and some that span two slots."""
    rng = random.Random(seed)
    return [rng.choice([1, 2, 3, 30, SLOT + 5]) for _ in range(n)]


def _pick_while_others_pick(seed: int, start: object, done: object) -> list[tuple[int, int]]:
    """One worker process: picks its blocks at the same moment as the others and holds them until all have picked."""
    start.wait()  # type: ignore[attr-defined]
    blocks = [(free_port_block(count), count) for count in _counts(seed, BLOCKS_PER_WORKER)]
    done.wait()  # type: ignore[attr-defined]  # nobody drops its locks before every worker has picked
    release_port_blocks()  # the pool's processes live on into the next round
    return blocks


def test_picks_in_one_process_never_overlap() -> None:
    blocks = [(free_port_block(count), count) for count in _counts(1, 60)]
    _assert_disjoint(blocks)


def test_parallel_processes_never_get_overlapping_blocks() -> None:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a second pytest process would be
    with context.Manager() as manager, context.Pool(WORKERS) as pool:
        for round_ in range(ROUNDS):
            start, done = manager.Barrier(WORKERS + 1), manager.Barrier(WORKERS)
            mine = (free_port_block(3), 3)  # the parent holds one too, as the test session does
            results = pool.starmap_async(_pick_while_others_pick,
                                         [(round_ * WORKERS + w, start, done) for w in range(WORKERS)])  # fmt: skip
            start.wait()
            per_worker = results.get(timeout=120)
            _assert_disjoint([mine, *(block for blocks in per_worker for block in blocks)])
            release_port_blocks({mine[0]})


def test_a_released_block_is_free_again_and_a_lease_keeps_what_it_found() -> None:
    kept = free_port_block(1)
    with port_lease():
        leased = free_port_block(SLOT)
        assert {kept, leased} <= reserved_blocks()
    assert kept in reserved_blocks() and leased not in reserved_blocks()
    release_port_blocks({kept})
    assert kept not in reserved_blocks()


@pytest.fixture
def occupied() -> Iterator[socket.socket]:
    """A listener on the first port of a block that is not reserved: what a program outside the scheme does."""
    base = free_port_block(1)
    release_port_blocks({base})
    with socket.socket() as sock:
        sock.bind((LOOPBACK, base))
        sock.listen()
        yield sock


def _first_then_free(first: int) -> Callable[[int], int]:
    """A pick that hands out `first` once (as an unlucky free_port_block would) and then real picks."""
    picks = iter([first])
    return lambda count: next(picks, None) or free_port_block(count)


def test_a_start_that_finds_its_port_taken_gets_a_new_block(occupied: socket.socket) -> None:
    taken = occupied.getsockname()[1]
    tried: list[int] = []

    def listen(base: int) -> socket.socket:
        tried.append(base)
        server = socket.socket()
        try:
            server.bind((LOOPBACK, base))
        except OSError:
            server.close()
            raise
        return server

    with start_on_free_ports(1, listen, pick=_first_then_free(taken)) as server:
        assert tried[0] == taken and len(tried) == 2
        assert server.getsockname()[1] == tried[1] != taken


def test_other_start_errors_are_not_retried() -> None:
    tried: list[int] = []

    def broken(base: int) -> None:
        tried.append(base)
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        start_on_free_ports(1, broken)
    assert len(tried) == 1


def test_address_in_use_is_recognised_in_errors_causes_and_output() -> None:
    assert address_in_use(OSError(errno.EADDRINUSE, "Address already in use"))
    wrapped = OSError("cannot listen on 127.0.0.1:20001 (in use or not permitted)")
    wrapped.__cause__ = RuntimeError("error while attempting to bind on address: address already in use")
    assert address_in_use(wrapped)
    assert address_in_use("1733 Error: Address already in use\n")
    assert not address_in_use(OSError(errno.EACCES, "Permission denied"))
    assert not address_in_use(OSError("cannot listen on 127.0.0.1:80 (in use or not permitted)"))
