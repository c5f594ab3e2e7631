import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).parents[1] / "mqtt"))

from brokerkit import Broker, running_broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto on a free loopback port with the persistence lines of deploy/mosquitto.conf."""
    (tmp_path / "broker").mkdir()
    with running_broker(tmp_path / "broker", persistence=shipped_persistence()) as b:
        yield b


def shipped_persistence() -> list[str]:
    """The persistence settings a deployment is told to use (deploy/mosquitto.conf), as lines."""
    text = (Path(__file__).parents[2] / "deploy" / "mosquitto.conf").read_text()
    keys = ("persistence ", "autosave_on_changes", "autosave_interval", "set_tcp_nodelay")
    return [line.split("#")[0].strip() for line in text.splitlines() if line.startswith(keys)]
