"""Activation latency: an ancillary-service activation arrives → every device has acknowledged its new setpoint.

A simulated site of N batteries behind Modbus gateways (100 unit ids each) runs in its own `vpp-sim` process; the
whole agent (events, fast path) runs here. An award is accepted; then activations alternating +1/−1 are handed to
the agent the way MQTT delivers them (SignalIngest.receive). The figure is the time from that call until the write
phase of the fast cycle has every device's Modbus write response, p50/p99 over the activations, next to the raw
Modbus write round trip measured against the same simulator in the same run.
Usage: python bench/latency.py [--sizes 10 100 500] [--count 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchkit import raw_write_p50_ms, wait_for_ports

from agent.app import AgentApp
from agent.config import AppConfig, parse_config
from agent.logs import configure_logging
from sim_devices.ports import free_port_block

SITE = """
[agent]
poll_period_s = 1.0
poll_timeout_s = 0.5
lease_timeout_s = 10
state_file = ":memory:"
setpoint_deadband_w = 50
[site]
meter = "meter"
[control]
mode = "site_target"  # no solver competing for the CPU: the figure is the fast path alone
site_target_w = 0.0
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
tick_s = 0.5
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


async def run(size: int, count: int, tmp: Path) -> dict[str, float]:
    gateways = -(-size // 100)
    first = free_port_block(gateways + 1)
    text = SITE.replace("{n}", str(size)).replace("{port}", str(first)).replace("{meter_port}", str(first + gateways))
    config_path = tmp / f"site{size}.toml"
    config_path.write_text(text)
    config = parse_config(text)
    # the devices live in their own process, as real ones do: the agent's figure is not shared with the servers' CPU
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sim_devices.cli", "--config", str(config_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.to_thread(wait_for_ports, first, gateways + 1)
        return await measure(config, size, count, first)
    finally:
        sim.terminate()
        await sim.wait()


async def measure(config: AppConfig, size: int, count: int, first: int) -> dict[str, float]:
    app = AgentApp(config, lambda: datetime.now(UTC))
    acked = asyncio.Event()
    original_write = app.loop.write

    async def write(setpoints):  # type: ignore[no-untyped-def]
        await original_write(setpoints)
        if len(setpoints) >= size:
            acked.set()  # every write of this cycle has its Modbus response

    app.loop.write = write  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    while len(app.loop.fleet.available()) < size + 1:  # noqa: ASYNC110 - the fleet has no event to await
        await asyncio.sleep(0.05)
    raw = await raw_write_p50_ms(first)
    now = datetime.now(UTC)
    capacity = 20_000.0 * size
    award = {"id": "a", "product": "FRR", "block_start": now.isoformat(),
             "block_end": (now + timedelta(hours=1)).isoformat(), "up_w": capacity, "down_w": capacity}  # fmt: skip
    await app.ingest.receive("as_award", json.dumps(award).encode())
    while getattr(app.events.events.get("a"), "state", None) != "active":  # noqa: ASYNC110 - no event to await
        await asyncio.sleep(0.05)
    latencies = []
    for n in range(count):
        await asyncio.sleep(0.3)
        value = 1.0 if n % 2 == 0 else -1.0
        body = {"id": f"x{n}", "award_id": "a", "at": datetime.now(UTC).isoformat(), "value": value}
        acked.clear()
        t0 = time.perf_counter()
        await app.ingest.receive("as_activation", json.dumps(body).encode())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(acked.wait(), timeout=10)
        if acked.is_set():
            latencies.append(time.perf_counter() - t0)
    stop.set()
    await task
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered) * 1000 if ordered else float("nan"),
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000 if ordered else float("nan"),
        "complete": float(len(ordered)),
        "raw_ms": raw,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--count", type=int, default=40)
    args = parser.parse_args()
    configure_logging("error", "json")
    print("activation -> every device's new setpoint acknowledged (fast path; vpp-sim in its own process,")
    print("batteries behind Modbus gateways of 100 unit ids)")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            fig = await run(size, args.count, Path(tmp))
        print(
            f"  {size:4d} devices: p50 {fig['p50_ms']:6.1f} ms  p99 {fig['p99_ms']:6.1f} ms  "
            f"({fig['complete']:.0f}/{args.count} complete; raw Modbus write round trip p50 {fig['raw_ms']:.2f} ms)",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
