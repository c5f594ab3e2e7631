"""Soak: the shipped agent as deployed (`vpp-agent run`, dispatch mode, MQTT on a Mosquitto with the persistence of
deploy/mosquitto.conf) against a large simulated site, with device faults and a mix of good and bad signals, for
half an hour. What a gateway owner needs to know before leaving it alone for months:

  * memory: the agent's resident set at 5 min and at the end (goal: growth <= 5 %, control process <= 150 MB), and
    the solver worker's, which is recycled;
  * the cycle: p99 of the control cycle, polls missed against the period (goal 0);
  * signals lost: valid signals the broker confirmed that never got an answer on `{prefix}/ack` (goal 0); bad ones
    must all be answered `rejected`;
  * setpoints out of limits: writes outside a device's nameplate, counted on the devices' side (goal 0).

The devices are the simulator in this process (so their write logs can be read); faults hit one device every ~30 s
(offline, slow, Modbus exceptions, frozen registers, a trip, a lying site meter) and clear after 10-20 s. Figures
are this run's own: the RSS growth is the end against the 5-min value measured in the same run.

Usage: python bench/soak.py [--minutes 30] [--devices 500] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "mqtt"))

import aiomqtt  # noqa: E402
from brokerkit import Broker  # noqa: E402

from sim_devices.config import parse_simulation  # noqa: E402
from sim_devices.controllable import ControllableDevice  # noqa: E402
from sim_devices.faults import apply_fault  # noqa: E402
from sim_devices.ports import free_port_block  # noqa: E402
from sim_devices.runner import SimSite  # noqa: E402

PREFIX = "vpp/soak"
UNITS_PER_GATEWAY = 50
FAULT_EVERY_S = 30.0
FAULT_KINDS = ["offline", "slow", "exception", "frozen", "device"]


def persistence() -> list[str]:
    """The broker settings a deployment ships (deploy/mosquitto.conf)."""
    keys = ("persistence ", "autosave_on_changes", "autosave_interval", "set_tcp_nodelay")
    text = (ROOT / "deploy" / "mosquitto.conf").read_text()
    return [line.split("#")[0].strip() for line in text.splitlines() if line.startswith(keys)]


def config_text(devices: int, port: int, broker_port: int, state: Path) -> str:
    """The shipped config.toml's agent, dispatch and event settings, with `devices` assets (80 % V2G chargers, 20 %
    batteries, behind gateways) and a site meter in place of the demo's, and MQTT on."""
    shipped = (ROOT / "config.toml").read_text().split("\n[[assets]]", 1)[0] + "\n"
    chargers = devices * 4 // 5
    batteries = devices - chargers
    bess_port = port + -(-chargers // UNITS_PER_GATEWAY)
    meter_port = bess_port + -(-batteries // UNITS_PER_GATEWAY)
    site = (
        "[site]\nimport_limit_w = 4000000.0\nexport_limit_w = 3000000.0\nmeter = 'meter-site'\n"
        "base_load_min_w = 100000.0\nbase_load_max_w = 400000.0\npv_max_w = 600000.0\n"
    )
    text = shipped[: shipped.index("[site]")] + site + shipped[shipped.index("[control]") :]
    text = text.replace("enabled = false", "enabled = true", 1).replace("port = 1883", f"port = {broker_port}", 1)
    lab = "\n[trust]\nrequire_signatures = false  # the soak sends unsigned signals\n"
    text = text.replace("\n[mqtt]\n", lab + "[mqtt]\n", 1)
    text = text.replace('topic_prefix = "vpp/demo"', f'topic_prefix = "{PREFIX}"')
    text = text.replace('client_id = "vpp-agent-demo"', 'client_id = "vpp-agent-soak"')
    text = text.replace('state_file = "vpp-state.sqlite3"', f'state_file = "{state}"')
    text = text.replace("[web]\nenabled = true", "[web]\nenabled = false", 1)  # the demo's status page: not measured
    groups = [("ev{i:04d}", chargers, "vppsim_v2g_dc", port), ("bess{i:04d}", batteries, "vppsim_battery", bess_port)]
    for header, key in (("[[assets]]", "map"), ("[[simulation.devices]]", "model")):
        if header == "[[simulation.devices]]":
            text += "[simulation]\nhost = '127.0.0.1'\nspeed = 1.0\ntick_s = 0.5\nseed = 3\n"
            text += "base_load_w = 200000.0\npv_peak_w = 500000.0\nutc_offset_h = 9\n"
        for pattern, count, model, first in groups:
            text += f"{header}\nid = {pattern!r}\ncount = {count}\n{key} = {model!r}\nport = {first}\n"
            text += f"units_per_port = {UNITS_PER_GATEWAY}\n"
            if key == "map":
                text += "replacement_cost = 3000000.0\n" if "bess" in pattern else "wear_price_per_kwh = 8.0\n"
        text += f"{header}\nid = 'meter-site'\n{key} = 'vppsim_dc_meter'\nport = {meter_port}\n"
    return text


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Signals:
    """The operator's side: a mix of good and bad signals, every answer collected."""

    def __init__(self, client: aiomqtt.Client, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.sent_good: set[str] = set()
        self.sent_bad: set[str] = set()
        self.answers: dict[str, list[str]] = {}
        self.award: str | None = None
        self.n = 0

    async def publish(self, kind: str, body: dict[str, Any] | bytes, good: bool) -> None:
        self.n += 1
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(f"{PREFIX}/signals/{kind}", payload, qos=1)
        signal_id = f"bad{self.n}" if isinstance(body, bytes) else str(body["id"])
        (self.sent_good if good else self.sent_bad).add(signal_id)

    async def collect(self) -> None:
        async for message in self.client.messages:
            ack = json.loads(message.payload)
            self.answers.setdefault(str(ack.get("signal_id")), []).append(str(ack.get("status")))

    async def one_round(self, now: datetime) -> None:
        """A few seconds' worth of traffic: a frequency reading, now and then prices, events, awards, junk."""
        n, rng = self.n, self.rng
        await self.publish("frequency", {"id": f"f{n}", "at": now.isoformat(),
                                         "frequency_hz": round(50 + rng.gauss(0, 0.08), 3)}, True)  # fmt: skip
        if n % 60 == 0:
            start = now.replace(minute=0, second=0, microsecond=0)
            await self.publish("prices", {"id": f"p{n}", "start": start.isoformat(), "interval_s": 1800,
                                          "prices_per_kwh": [round(rng.uniform(5, 30), 2) for _ in range(48)]}, True)
        if n % 45 == 0:
            await self.publish("up_dr", {"id": f"dr{n}", "start": (now + timedelta(minutes=2)).isoformat(),
                                         "end": (now + timedelta(minutes=12)).isoformat(),
                                         "requested_increase_w": 20000, "price_per_kwh": 3,
                                         "baseline_method": "pre_event_average"}, True)  # fmt: skip
        if n % 90 == 0:
            self.award = f"a{n}"
            await self.publish("as_award", {"id": self.award, "product": "FCR", "block_start": now.isoformat(),
                                            "block_end": (now + timedelta(minutes=20)).isoformat(),
                                            "up_w": 30000, "down_w": 30000}, True)  # fmt: skip
        if n % 7 == 0:
            junk = rng.choice([
                b"{not json", b'{"id": "x", "requested_increase_w": ' + b"9" * 5000 + b"}",
                json.dumps({"id": f"j{n}", "at": "2099-01-01T00:00:00Z", "frequency_hz": 49.0}).encode(),
                json.dumps({"id": f"j{n}", "start": now.isoformat(), "prices_per_kwh": [1e308]}).encode(),
                json.dumps({"id": f"j{n}", "award_id": f"nobody{n}", "at": now.isoformat(), "value": 1}).encode(),
            ])  # fmt: skip
            kind = rng.choice(["up_dr", "frequency", "prices", "as_activation"])
            await self.publish(kind, junk, False)


async def faults(site: SimSite, rng: random.Random, stop: asyncio.Event, log: list[str]) -> None:
    ids = sorted(site.endpoints)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 1.5) * FAULT_EVERY_S)
        if stop.is_set():
            return
        if rng.random() < 0.15:
            device, kind, value = "meter-site", "offset", 2_000_000.0
        else:
            device, kind = rng.choice(ids), rng.choice(FAULT_KINDS)
            value = {"slow": 1.0, "device": 7.0}.get(kind)
        apply_fault(site.faults(device), kind, value)
        log.append(f"{device}:{kind}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(10, 20))
        site.faults(device).clear()


async def soak(minutes: float, devices: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="vpp-soak-"))
    broker = Broker(work / "broker", persistence=persistence())
    (work / "broker").mkdir()
    broker.start()
    port = free_port_block(-(-devices // UNITS_PER_GATEWAY) + 2)
    config = work / "site.toml"
    config.write_text(config_text(devices, port, broker.port, work / "state.sqlite3"))
    import tomllib

    sim = parse_simulation(tomllib.loads(config.read_text())["simulation"])
    stats: list[dict[str, Any]] = []
    fault_log: list[str] = []
    result: dict[str, Any] = {"devices": devices + 1, "minutes": minutes}
    async with SimSite.from_config(sim) as site:
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent.cli", "run", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip

        async def read_log() -> None:
            assert agent.stderr is not None
            while line := await agent.stderr.readline():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("event") == "agent.stats":
                        stats.append(entry)
                    elif entry.get("level") in ("error", "critical"):
                        result.setdefault("errors", []).append(entry.get("event"))

        reader = asyncio.create_task(read_log())
        stop = asyncio.Event()
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="operator", clean_session=False) as client:
            # the agent's first connection creates its session: what is published before that is for nobody
            await client.subscribe(f"{PREFIX}/agent/status", qos=1)
            async with asyncio.timeout(120):
                async for message in client.messages:
                    if json.loads(message.payload).get("state") in ("online", "degraded"):
                        break
            await client.unsubscribe(f"{PREFIX}/agent/status")
            await client.subscribe(f"{PREFIX}/ack", qos=1)
            traffic = Signals(client, rng)
            collector = asyncio.create_task(traffic.collect())
            faulter = asyncio.create_task(faults(site, rng, stop, fault_log))
            started = time.monotonic()
            rss: list[tuple[float, float, float]] = []  # (s, control MB, worker MB)
            next_sample = started
            while (elapsed := time.monotonic() - started) < minutes * 60:
                await traffic.one_round(datetime.now(UTC))
                if time.monotonic() >= next_sample:
                    worker = sum(rss_mb(c) or 0.0 for c in children(agent.pid))
                    rss.append((elapsed, rss_mb(agent.pid) or 0.0, worker))
                    next_sample += 10
                    print(f"{elapsed / 60:5.1f} min  agent {rss[-1][1]:6.1f} MB  worker {worker:6.1f} MB  "
                          f"signals {len(traffic.sent_good)}+{len(traffic.sent_bad)} bad  "
                          f"answered {len(traffic.answers)}  faults {len(fault_log)}", file=sys.stderr, flush=True)
                await asyncio.sleep(1.0)
            stop.set()
            await faulter
            for device in site.endpoints:
                site.faults(device).clear()
            # every signal the broker confirmed must be answered: wait for the answers, up to 2 min of silence
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not traffic.sent_good <= set(traffic.answers):  # noqa: ASYNC110
                await asyncio.sleep(1)
            collector.cancel()
        agent.send_signal(signal.SIGTERM)
        await asyncio.wait_for(agent.wait(), 30)
        await reader
        devices_out = {k: d.writes_outside_nameplate for k, d in site.devices.items()
                       if isinstance(d, ControllableDevice) and d.writes_outside_nameplate}  # fmt: skip
        writes = sum(d.writes_total for d in site.devices.values() if isinstance(d, ControllableDevice))
    broker.stop()
    at5 = min(rss, key=lambda r: abs(r[0] - 300))
    at30 = min(rss, key=lambda r: abs(r[0] - 1800))
    end = rss[-1]
    good_answers = {i: traffic.answers.get(i, []) for i in traffic.sent_good}
    lost = sorted(i for i, a in good_answers.items() if not a)
    bad_answers = [s for i, statuses in traffic.answers.items() if i not in traffic.sent_good for s in statuses]
    period = 1.0
    first, last = (stats[0], stats[-1]) if len(stats) >= 2 else (None, None)
    span_s = (datetime.fromisoformat(last["timestamp"]) - datetime.fromisoformat(first["timestamp"])).total_seconds() \
        if first and last else 0.0  # fmt: skip
    expected = span_s / period
    polls = last["polls"] - first["polls"] if first and last else 0
    result.update(
        rss_5min_mb=round(at5[1], 1), rss_30min_mb=round(at30[1], 1), rss_end_mb=round(end[1], 1),
        rss_growth_pct=round(100 * (end[1] / at5[1] - 1), 2),
        worker_rss_5min_mb=round(at5[2], 1), worker_rss_end_mb=round(end[2], 1),
        worker_rss_max_mb=round(max(r[2] for r in rss), 1),
        cycle_p99_s=max((s.get("cycle_p99_s") or 0) for s in stats) if stats else None,
        cycle_p50_s=statistics.median(s.get("cycle_p50_s") or 0 for s in stats) if stats else None,
        polls=polls, polls_expected=round(expected), polls_missed=max(0, round(expected) - polls),
        signals_good=len(traffic.sent_good), signals_bad=len(traffic.sent_bad), signals_lost=len(lost),
        signals_lost_ids=lost[:10],
        bad_answered=len(bad_answers), bad_answered_rejected=bad_answers.count("rejected"),
        setpoint_writes=writes, setpoints_out_of_limits=sum(devices_out.values()), faults=len(fault_log),
        agent_exit=agent.returncode,
    )
    return result


def main() -> None:
    from agent.logs import configure_logging

    configure_logging("warning")  # the simulator's fault lines would bury the figures
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = asyncio.run(soak(args.minutes, args.devices, args.seed))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
