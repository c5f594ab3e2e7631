"""Suite-wide fixtures: every test gives back the port blocks it reserved (sim_devices/ports.py) once its servers
have stopped, so a long session does not pile up reservations while no two tests or test processes share a block."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sim_devices.ports import port_lease


@pytest.fixture(autouse=True)
def _port_blocks_per_test() -> Iterator[None]:
    """Autouse, so it is set up before and torn down after every function-scoped fixture of the test: the servers
    those fixtures start are gone before their ports are released. Blocks picked by wider-scoped fixtures or at
    import stay reserved for the session."""
    with port_lease():
        yield
