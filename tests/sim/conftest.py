"""Fixtures for the simulator tests; helpers live in simhelpers.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from simhelpers import free_port_block


@pytest.fixture
def port_block() -> Callable[[int], int]:
    return free_port_block
