"""Issue 16 item 6: a clean shutdown publishes `offline` with the time the agent stopped (not the time it started),
sealed with the agent's key like every status; on a real Mosquitto on loopback."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "mqtt"))

from brokerkit import running_broker
from sitekit import eventually
from test_agent_mqtt import PREFIX, peer, running_agent

from agent.trust.keys import new_private_key, write_private_key
from agent.trust.seal import open_sealed

TOPIC = f"{PREFIX}/agent/status"


async def _retained_status(port_broker, public_key: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    async with peer(port_broker, TOPIC) as client:
        async with asyncio.timeout(15):
            async for message in client.messages:
                return open_sealed(bytes(message.payload), public_key, TOPIC).body  # type: ignore[arg-type,return-value]
    raise AssertionError("no retained status")


async def test_clean_shutdown_publishes_offline_with_its_own_time(tmp_path: Path) -> None:
    key = tmp_path / "agent.pem"
    write_private_key(key, new_private_key())
    trust = f'[trust]\nrequire_signatures = false\nsite_id = "site-a"\nagent_key_file = "{key}"\nagent_kid = "agent"\n'
    started = datetime.now(UTC).replace(microsecond=0)
    clock = {"now": started}
    (tmp_path / "broker").mkdir()
    with running_broker(tmp_path / "broker") as broker:
        async with running_agent(broker, tmp_path, trust, clock=lambda: clock["now"]) as app:
            assert app.sealer is not None
            public = app.sealer.signer.public_key
            await eventually(lambda: app.link is not None and app.link.connected, what="agent connected")
            online = await _retained_status(broker, public)
            assert online["state"] == "online"
            clock["now"] = stopped = started + timedelta(hours=5)  # the agent ran for five hours
        status = await _retained_status(broker, public)
    assert status["state"] == "offline" and status["reason"] == "shutdown"
    assert datetime.fromisoformat(str(status["at"])) == stopped, status
