"""Signals over a real Mosquitto: what the broker replays is not a new command, nothing handed over is lost, every
message is answered once, and a burst does not stall the agent.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from brokerkit import Broker
from sitekit import eventually
from test_agent_mqtt import PREFIX, next_json, peer, running_agent


def up_dr(signal_id: str, watts: float = 1.0, minutes: float = 10) -> bytes:
    now = datetime.now(UTC)
    return json.dumps({
        "id": signal_id, "start": (now + timedelta(minutes=1)).isoformat(),
        "end": (now + timedelta(minutes=1 + minutes)).isoformat(), "requested_increase_w": watts, "price_per_kwh": 1,
    }).encode()  # fmt: skip


async def acks_until(client, wanted: str, within_s: float = 30) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Every ack up to and including the one for signal id `wanted`."""
    seen = []
    async with asyncio.timeout(within_s):
        while True:
            ack = await next_json(client, f"{PREFIX}/ack", within_s=within_s)
            seen.append(ack)
            if ack["signal_id"] == wanted:
                return seen


async def test_retained_signals_are_not_replayed_as_new_commands_on_reconnect(broker: Broker, tmp_path: Path) -> None:
    async with peer(broker, f"{PREFIX}/ack") as operator:
        async with running_agent(broker, tmp_path) as app:
            assert app.link is not None
            await eventually(lambda: app.link.connected and app.ingest.ready.is_set(), what="agent ready")
            await operator.publish(f"{PREFIX}/signals/up_dr", up_dr("kept"), qos=1, retain=True)  # an operator's slip
            assert [a["status"] for a in await acks_until(operator, "kept")] == ["accepted"]
            # handed back to the broker as handled (else it would rightly come again, as a duplicate)
            await eventually(lambda: app.link.stats.acked >= 1, what="PUBACK sent")
        for _ in range(2):  # restarts: the broker replays "kept" to the new subscription each time
            async with running_agent(broker, tmp_path) as app:
                assert app.link is not None
                await eventually(lambda: app.link.connected and app.ingest.ready.is_set(), what="agent ready")
                await eventually(lambda: app.link.stats.retained_skipped >= 1, what="replay skipped")
                acked = app.link.stats.acked
                await operator.publish(f"{PREFIX}/signals/up_dr", up_dr(f"marker-{_}"), qos=1)
                acks = await acks_until(operator, f"marker-{_}")
                assert [a["signal_id"] for a in acks] == [f"marker-{_}"]  # nothing for "kept"
                await eventually(lambda: app.link.stats.acked > acked, what="PUBACK sent")  # noqa: B023


async def test_an_unknown_signal_topic_is_answered(broker: Broker, tmp_path: Path) -> None:
    async with running_agent(broker, tmp_path) as app, peer(broker, f"{PREFIX}/ack") as operator:
        assert app.link is not None
        await eventually(lambda: app.link.connected and app.ingest.ready.is_set(), what="agent ready")
        await operator.publish(f"{PREFIX}/signals/curtail_now", b'{"id": "c1"}', qos=1)
        ack = await next_json(operator, f"{PREFIX}/ack")
        assert ack["status"] == "rejected" and "unknown signal kind 'curtail_now'" in str(ack["reason"])
        assert ack["kind"] == "curtail_now"


async def test_a_signal_the_agent_stopped_while_handling_is_delivered_again(broker: Broker, tmp_path: Path) -> None:
    """The broker forgets a QoS 1 message once it is acknowledged to it; the agent acknowledges only after handling,
    so one it had taken but not handled (here: held while its clock was unset) comes again after a restart."""
    async with peer(broker, f"{PREFIX}/ack") as operator:
        async with running_agent(broker, tmp_path, clock=lambda: datetime(1970, 1, 2, tzinfo=UTC)) as app:
            assert app.link is not None
            await eventually(lambda: app.link.connected, what="agent connected")
            await operator.publish(f"{PREFIX}/signals/up_dr", up_dr("held"), qos=1)
            await eventually(lambda: app.link.stats.received >= 1, what="message handed over to the agent")
            assert not app.ingest.ready.is_set()
        async with running_agent(broker, tmp_path) as app:
            ack = await next_json(operator, f"{PREFIX}/ack", within_s=30)
            assert ack["signal_id"] == "held" and ack["status"] == "accepted"
            assert "held" in app.ingest.book["up_dr"]


async def test_a_burst_of_signals_is_answered_once_each_while_polling_goes_on(broker: Broker, tmp_path: Path) -> None:
    count = 1500  # more than [signals] max_pending (1000): the rest are refused, not dropped
    async with running_agent(broker, tmp_path) as app, peer(broker, f"{PREFIX}/ack") as operator:
        assert app.link is not None
        await eventually(lambda: app.link.connected and app.ingest.ready.is_set(), what="agent ready")
        polls_before = app.loop.fleet.assets["meter"].polls_ok
        await asyncio.gather(*(
            operator.publish(f"{PREFIX}/signals/up_dr", up_dr(f"b{n}"), qos=1) for n in range(count)
        ))  # fmt: skip
        answered: dict[str, list[str]] = {}
        async with asyncio.timeout(240):
            while len(answered) < count:
                ack = await next_json(operator, f"{PREFIX}/ack", within_s=120)
                answered.setdefault(str(ack["signal_id"]), []).append(str(ack["status"]))
        polls_during = app.loop.fleet.assets["meter"].polls_ok - polls_before
    assert all(len(statuses) == 1 for statuses in answered.values())
    statuses = [s[0] for s in answered.values()]
    assert statuses.count("accepted") == 1000 and statuses.count("rejected") == count - 1000
    assert polls_during > 0
    assert app.link.stats.connects == 1  # the broker never dropped the agent


async def test_the_retained_status_says_degraded_with_the_reason_and_recovers(broker: Broker, tmp_path: Path) -> None:
    clock = {"unset": True}

    def now() -> datetime:
        return datetime(1970, 1, 1, 0, 1, tzinfo=UTC) if clock["unset"] else datetime.now(UTC)

    async with running_agent(broker, tmp_path, clock=now) as app, peer(broker, f"{PREFIX}/agent/status") as watcher:
        assert app.link is not None
        status = await next_json(watcher, f"{PREFIX}/agent/status")
        while status["state"] != "degraded":  # the birth may come first
            status = await next_json(watcher, f"{PREFIX}/agent/status")
        assert any(str(r).startswith("clock: clock reads 1970") for r in status["reasons"])  # type: ignore[union-attr]
        clock["unset"] = False  # NTP arrived
        while status["state"] != "online":  # the degraded one may come again first (birth, then the buffered one)
            status = await next_json(watcher, f"{PREFIX}/agent/status")
        assert status["reasons"] == []
