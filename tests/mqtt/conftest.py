import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

from brokerkit import Broker, running_broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A plain Mosquitto on a free loopback port, anonymous, with persistence (for restart tests)."""
    with running_broker(tmp_path) as b:
        yield b
