import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).parents[1] / "mqtt"))

from brokerkit import Broker, running_broker
from faultkit import shipped_persistence


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto on a free loopback port with the persistence lines of deploy/mosquitto.conf."""
    (tmp_path / "broker").mkdir()
    with running_broker(tmp_path / "broker", persistence=shipped_persistence()) as b:
        yield b
