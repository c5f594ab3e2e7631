"""MQTT benchmark: telemetry throughput against a bare aiomqtt publisher, and signal → setpoint latency.

1. Telemetry: the agent's TelemetryPublisher publishes measurement, status and envelope messages for 1000
   assets per cycle; the baseline is a bare aiomqtt client publishing the same payloads to the same topics with
   the same concurrency, in the same run, against the same Mosquitto. A `mosquitto_sub` process counts what
   arrives, so both figures are messages delivered end to end per second.
2. Latency: a simulated site (Modbus devices in-process) and the whole agent with MQTT on; an operator client
   publishes `site_target` signals; the figure is the time from publish until every device has received its new
   setpoint (Modbus write seen by the simulated device), p50 / p99, alongside a raw Modbus write round trip
   measured in the same run.
Usage: python bench/mqtt.py [--assets 1000] [--cycles 20] [--signals 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mqtt"))

from benchkit import raw_write_p50_ms  # noqa: E402
from brokerkit import Broker  # noqa: E402

from agent.config import AssetConfig  # noqa: E402
from agent.fleet import AssetState, Fleet  # noqa: E402
from agent.model import AssetKind, Measurement  # noqa: E402
from agent.telemetry import ENVELOPE_JSON, MEASUREMENT_JSON, TelemetryPublisher  # noqa: E402
from drivers.mqtt_link import LinkSettings, MqttLink  # noqa: E402
from sim_devices.ports import free_port_block  # noqa: E402


def make_fleet(count: int) -> Fleet:
    now = datetime.now(UTC)
    config = AssetConfig(id="x", map="vppsim_battery")
    states = {}
    for n in range(count):
        asset_id = f"bess{n:04d}"
        m = Measurement(asset_id, now, power_w=-1234.5 + n, soc=0.5, soh=0.98, capacity_wh=100000,
                        rated_charge_w=50000, rated_discharge_w=50000, max_charge_w=50000, max_discharge_w=50000,
                        setpoint_w=-1234.5, lease_timeout_s=10)  # fmt: skip
        states[asset_id] = AssetState(asset_id, AssetKind.BATTERY, config, measurement=m, available=True)
    return Fleet(states)


async def count_received(port: int, topic: str, expected: int, limit_s: float) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", str(expected), "-W", str(int(limit_s)),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return proc


async def telemetry_run(port: int, assets: int, cycles: int, bare: bool) -> tuple[float, int]:
    fleet = make_fleet(assets)
    link = MqttLink(LinkSettings("127.0.0.1", port, client_id=f"bench-{'bare' if bare else 'agent'}"))
    stop = asyncio.Event()
    runner = asyncio.create_task(link.run(stop))
    await link.wait_connected()
    publisher = TelemetryPublisher(link, "bench")
    await publisher.publish_cycle(fleet)  # first cycle also sends statuses: not measured
    per_cycle = assets + 1  # measurements + envelope
    total = per_cycle * cycles
    counter = await count_received(port, "bench/+/+/measurement", assets * cycles, 120)
    await asyncio.sleep(0.5)  # let mosquitto_sub subscribe (it prints nothing on SUBACK)
    if bare:
        payloads = []
        for state in fleet.assets.values():
            payloads.append((publisher.measurement_topic(state.id), MEASUREMENT_JSON.dump_json(state.measurement)))
        envelope = ENVELOPE_JSON.dump_json(fleet.envelope())
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-bare-client") as client:
            client.pending_calls_threshold = 10_000
            t0 = time.perf_counter()
            for _ in range(cycles):
                for start in range(0, len(payloads), 200):
                    batch = payloads[start : start + 200]
                    await asyncio.gather(*(client.publish(t, p, qos=0) for t, p in batch))
                await client.publish("bench/envelope", envelope, qos=1, retain=True)
            out, _ = await counter.communicate()
            elapsed = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        for _ in range(cycles):
            for state in fleet.assets.values():
                state.polls_ok += 1
            await publisher.publish_cycle(fleet)
        out, _ = await counter.communicate()
        elapsed = time.perf_counter() - t0
    stop.set()
    await runner
    received = len(out.splitlines())
    return received / elapsed, total


SITE = """
[agent]
poll_period_s = 1.0
poll_timeout_s = 0.5
state_file = "{store}"
setpoint_deadband_w = 50
[site]
meter = "meter"
[control]
mode = "site_target"  # a site_target signal must move every setpoint; no solver competing for the CPU
[mqtt]
enabled = true
port = {broker}
client_id = "bench-agent"
topic_prefix = "bench/site"
[trust]
require_signatures = false  # a lab: the bench sends unsigned signals
[[assets]]
id = "bess{i:03d}"
count = {n}
map = "vppsim_battery"
port = {port}
units_per_port = 100
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {meter_port}
[simulation]
base_load_w = 0.0
[[simulation.devices]]
id = "bess{i:03d}"
count = {n}
model = "vppsim_battery"
port = {port}
units_per_port = 100
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {meter_port}
"""


async def latency_run(port: int, devices: int, signals: int, tmp: Path) -> dict[str, float]:
    from agent.app import AgentApp
    from agent.config import parse_config
    from sim_devices.config import parse_simulation
    from sim_devices.runner import SimSite

    gateways = -(-devices // 100)
    first = free_port_block(gateways + 1)
    text = (
        SITE.replace("{broker}", str(port)).replace("{store}", str(tmp / f"s{devices}.sqlite3"))
        .replace("{n}", str(devices)).replace("{port}", str(first)).replace("{meter_port}", str(first + gateways))
    )  # fmt: skip
    config = parse_config(text)
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        written_at: dict[str, float] = {}
        all_written = asyncio.Event()
        for device_id, physics in site.devices.items():
            if hasattr(physics, "write_setpoint"):
                original = physics.write_setpoint

                def hook(value: float, _id: str = device_id, _orig=original) -> None:  # type: ignore[no-untyped-def]
                    written_at[_id] = time.perf_counter()
                    if len(written_at) == devices:
                        all_written.set()
                    _orig(value)

                physics.write_setpoint = hook
        app = AgentApp(config, site.clock.now)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        assert app.link is not None
        await app.link.wait_connected()
        while len(app.loop.fleet.available()) < devices + 1:  # noqa: ASYNC110 - the fleet has no event to await
            await asyncio.sleep(0.05)
        raw = await raw_write_p50_ms(first)
        latencies = []
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-operator") as operator:
            for n in range(signals):
                target = (5000.0 if n % 2 else -5000.0) * devices
                written_at.clear()
                all_written.clear()
                t0 = time.perf_counter()
                await operator.publish(
                    "bench/site/signals/site_target", f'{{"id": "t{n}", "site_target_w": {target}}}', qos=1
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_written.wait(), timeout=10)
                if all_written.is_set():
                    latencies.append(max(written_at.values()) - t0)
                await asyncio.sleep(0.3)
        stop.set()
        await task
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
        "complete": len(latencies),
        "raw_write_p50_ms": raw,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--signals", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    from agent.logs import configure_logging

    configure_logging("error", "json")  # the bench prints its own figures
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp))
        broker.start()
        try:
            bare_rate, _ = await telemetry_run(broker.port, args.assets, args.cycles, bare=True)
            agent_rate, _ = await telemetry_run(broker.port, args.assets, args.cycles, bare=False)
            print(f"telemetry, {args.assets} assets x {args.cycles} cycles, measurements delivered per second:")
            print(f"  bare aiomqtt {bare_rate:8.0f} msg/s")
            print(f"  agent        {agent_rate:8.0f} msg/s   ({agent_rate / bare_rate * 100:.0f} % of bare)")
            print("signal -> every device's setpoint written (site_target over MQTT, Modbus devices):")
            for size in args.sizes:
                fig = await latency_run(broker.port, size, args.signals, Path(tmp))
                print(
                    f"  {size:4d} devices: p50 {fig['p50_ms']:6.1f} ms  p99 {fig['p99_ms']:6.1f} ms  "
                    f"({fig['complete']:.0f}/{args.signals} complete; "
                    f"raw Modbus write p50 {fig['raw_write_p50_ms']:.2f} ms)"
                )
        finally:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
