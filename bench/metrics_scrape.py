"""Scrape time of /metrics at 1000 assets, against the scrape of an empty registry measured in the same run.

The agent is composed as `vpp-agent run` composes it (AgentApp from a config: 800 V2G chargers, 199 batteries and a
meter behind Modbus gateways, dispatch mode, MQTT on), but not started: its state is filled in as a polled site's
would be (a measurement and poll counts per asset, a setpoint per controllable asset with one in ten clamped, a plan
with its cost terms, a completed up-DR event), so the scrape formats what a live 1000-asset site serves without
depending on a simulator's pace. `start_metrics` then serves it on a free loopback port.

Printed, all from this run:
  * median wall time of a scrape over HTTP (urllib, keep-alive off, as Prometheus scrapes) of the agent's /metrics,
    and of an empty CollectorRegistry served by prometheus_client's own `start_http_server`: the ratio is the figure;
    the empty scrape is the HTTP floor on this machine;
  * the payload's size and sample count;
  * the time to collect and format the same page in-process (`generate_latest`): what a handler on the event loop
    would stall every cycle's I/O for, per scrape, had the endpoint been served there (it is served from a thread);
  * the event loop's lag (a 1 ms ticker; p99 and worst) while another process scrapes back to back, against the same
    with the empty registry scraped: what serving from a thread costs the loop (the GIL is handed over every 5 ms),
    with the full garbage collections meanwhile, which the worst lag is usually one of (a scrape allocates ~30,000
    objects, which brings the next full collection closer; it would pause the loop wherever the scrape ran).
Timing is printed, never asserted: these machines are shared and noisy, hence the ratios.

Usage: python bench/metrics_scrape.py [--assets 1000] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, generate_latest, start_http_server  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from agent.app import AgentApp  # noqa: E402
from agent.config import parse_config  # noqa: E402
from agent.dispatch.plan import Plan  # noqa: E402
from agent.events.lifecycle import Event, EventState  # noqa: E402
from agent.metrics import start_metrics  # noqa: E402
from agent.model import Measurement, Setpoint  # noqa: E402
from agent.signals.models import UpDrEvent  # noqa: E402
from sim_devices.ports import free_port_block  # noqa: E402

UNITS_PER_GATEWAY = 100
HOST = "127.0.0.1"


def site_config(assets: int, port: int, state_file: Path) -> str:
    """`assets` - 1 controllable assets (80 % chargers) and a meter from `port` on, metrics on the port after them;
    dispatch mode; MQTT on (its link is never run, so never dialled: the buffer and drop figures read 0)."""
    chargers = (assets - 1) * 4 // 5
    batteries = assets - 1 - chargers
    bess_port = port + -(-chargers // UNITS_PER_GATEWAY)
    meter_port = bess_port + -(-batteries // UNITS_PER_GATEWAY)
    metrics_port = meter_port + 1
    text = (
        f"[agent]\npoll_period_s = 1.0\nstate_file = '{state_file}'\n[site]\nmeter = 'meter-site'\n"
        "[control]\nmode = 'dispatch'\n"
        f"[mqtt]\nenabled = true\nhost = '{HOST}'\nport = 1883\n[trust]\nrequire_signatures = false\n"
        f"[metrics]\nenabled = true\nhost = '{HOST}'\nport = {metrics_port}\n"
    )
    for pattern, count, model, first in (
        ("ev{i:04d}", chargers, "vppsim_v2g_dc", port),
        ("bess{i:04d}", batteries, "vppsim_battery", bess_port),
    ):
        text += f"[[assets]]\nid = '{pattern}'\ncount = {count}\nmap = '{model}'\nport = {first}\n"
        text += f"units_per_port = {UNITS_PER_GATEWAY}\n"
    return text + f"[[assets]]\nid = 'meter-site'\nmap = 'vppsim_dc_meter'\nport = {meter_port}\n"


def fill(app: AgentApp, now: datetime) -> None:
    """The state a polled 1000-asset site would have: what the collector reads at scrape time."""
    fleet = app.loop.fleet
    setpoints: dict[str, Setpoint] = {}
    for n, state in enumerate(fleet.assets.values()):
        for _ in range(n % 7 + 1):
            fleet.record_ok(state.id, Measurement(state.id, now, 1000.0 + n, soc=0.5, capacity_wh=50_000.0), 1.0)
        state.polls_ok += 3600
        state.polls_failed += n % 5
        if state.controllable:
            reasons = ("nameplate charge limit",) if n % 10 == 0 else ()
            setpoints[state.id] = Setpoint(state.id, 7000.0, 9000.0 if reasons else 7000.0, reasons)
    fleet.assets["ev0003"].available = False
    app.loop.last_setpoints = setpoints
    app.loop.cycles = app.loop.polls = 3600
    app.loop.writes = 12_000
    app.ingest.counts.update(accepted=40, duplicate=3, rejected=7)
    app.gate.refusals.update(unknown_key=4, expired=2)
    dispatcher = app.dispatcher
    assert dispatcher is not None
    ids = [s.id for s in fleet.controllable()]
    zeros = np.zeros((len(ids), 96))
    dispatcher.plan = Plan(
        ids, 900.0, zeros, np.zeros((len(ids), 97)), zeros, zeros,
        breakdown={"energy": 5812.0, "wear_cycle": 120.0, "wear_calendar": 30.0, "updr_revenue": 400.0,
                   "reserve_revenue": 0.0, "terminal_value": 250.0, "penalty": 0.0},
        solve_s=0.41,
    )  # fmt: skip
    dispatcher.plan_start = now - timedelta(minutes=1)
    dispatcher.solves = 12
    signal = UpDrEvent(id="dr1", start=now - timedelta(hours=2), end=now - timedelta(hours=1),
                       requested_increase_w=30_000.0, price_per_kwh=5.0)  # fmt: skip
    event = Event("dr1", "up_dr", signal, state=EventState.COMPLETED, report={"delivered_fraction": 0.93})
    app.events.events[event.id] = event


def scrape_s(url: str, count: int) -> tuple[float, bytes]:
    """Median wall time of `count` scrapes (a new connection each), and the last page."""
    times = []
    body = b""
    for _ in range(count):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), body


def scrape_elsewhere(url: str, count: int) -> None:
    """`count` scrapes back to back from another process, as Prometheus scrapes: the client's own parsing must not
    compete with the agent for this process's GIL."""
    code = f"import urllib.request\nfor _ in range({count}): urllib.request.urlopen({url!r}, timeout=10).read()"
    subprocess.run([sys.executable, "-c", code], check=True)


class FullCollections:
    """Pauses of the garbage collector's full (generation 2) passes while in use: the likely worst lag."""

    def __init__(self) -> None:
        self.pauses_s: list[float] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses_s.append(time.perf_counter() - self._t0)

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self)


async def loop_lag_s(work: Callable[[], object]) -> tuple[float, float, list[float]]:
    """The event loop's lateness of a 1 ms sleep, p99 and worst, while `work` runs in a thread; and the full GC
    pauses meanwhile."""
    lags = []
    with FullCollections() as collections:
        job = asyncio.create_task(asyncio.to_thread(work))
        while not job.done():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t0 - 0.001)
        await job
    lags.sort()
    return lags[int(0.99 * (len(lags) - 1))], lags[-1], collections.pauses_s


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--lag-scrapes", type=int, default=40, help="scrapes while the loop's lag is measured")
    args = parser.parse_args()
    port = free_port_block(-(-args.assets // UNITS_PER_GATEWAY) + 3)  # gateways, the meter's, metrics
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(site_config(args.assets, port, Path(tmp) / "state.db"))
        now = datetime.now(UTC)
        app = AgentApp(config, lambda: datetime.now(UTC))
        fill(app, now)
        endpoint = start_metrics(app, config.metrics)
        assert endpoint.serving and endpoint.address is not None and endpoint.registry is not None
        empty_server, empty_thread = start_http_server(0, HOST, registry=CollectorRegistry())
        empty_url = f"http://{HOST}:{empty_server.server_address[1]}/metrics"
        url = f"http://{HOST}:{endpoint.address[1]}/metrics"
        try:
            scrape_s(url, 3)  # warm up both
            scrape_s(empty_url, 3)
            agent_s, body = scrape_s(url, args.scrapes)
            empty_s, _ = scrape_s(empty_url, args.scrapes)
            samples = sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))
            formats = []
            for _ in range(args.scrapes):
                t0 = time.perf_counter()
                generate_latest(endpoint.registry)
                formats.append(time.perf_counter() - t0)
            idle = await loop_lag_s(lambda: scrape_elsewhere(empty_url, args.lag_scrapes))
            busy = await loop_lag_s(lambda: scrape_elsewhere(url, args.lag_scrapes))
        finally:
            endpoint.close()
            empty_server.shutdown()
            empty_server.server_close()
            empty_thread.join(1.0)
            app.store.close()
            app.pool.close()
    print(
        f"metrics scrape at {args.assets} assets: {agent_s * 1000:.1f} ms median over HTTP vs {empty_s * 1000:.2f} ms "
        f"for an empty registry (x{agent_s / empty_s:.0f}); {len(body) / 1024:.0f} KiB, {samples} samples; "
        f"collect+format in-process {statistics.median(formats) * 1000:.1f} ms (what a handler on the event loop "
        f"would stall it for)\nevent-loop lag while another process scrapes it {args.lag_scrapes} times: p99 "
        f"{busy[0] * 1000:.1f} ms, worst {busy[1] * 1000:.1f} ms (full GC pauses meanwhile: {_ms(busy[2])}); "
        f"scraping the empty registry instead: p99 {idle[0] * 1000:.1f} ms, worst {idle[1] * 1000:.1f} ms "
        f"(full GC: {_ms(idle[2])})"
    )


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v * 1000:.1f} ms" for v in values) or "none"


if __name__ == "__main__":
    asyncio.run(main())
