"""The Prometheus endpoint of a running agent, scraped over real HTTP and read with prometheus_client's own parser.

Every figure asserted here is one that moves while the site runs (cycles, polls of a device taken offline, refusals,
clamps, the MQTT buffer, an event's delivery, a plan), so a collector that served stale or constant values fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import tomllib
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

from prometheus_client.parser import text_string_to_metric_families
from sitekit import TWO_BATTERY_ASSETS, TWO_BATTERY_DEVICES, eventually, free_port_block
from structlog.testing import capture_logs

from agent.app import AgentApp
from agent.config import MetricsSettings, parse_config
from agent.metrics import MetricsEndpoint, start_metrics
from agent.trust.keys import ACCEPTED_ALGORITHMS
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

HOST = "127.0.0.1"

SITE = """
[agent]
poll_period_s = 0.1
poll_timeout_s = 0.05
unavailable_after = 2
lease_timeout_s = 2.0
state_file = ":memory:"
[site]
meter = "meter"
[control]
mode = "site_target"
site_target_w = 5000.0
""" + TWO_BATTERY_ASSETS + """[metrics]
enabled = true
host = "127.0.0.1"
port = {metrics_port}
[simulation]
tick_s = 0.02
base_load_w = 5000.0
""" + TWO_BATTERY_DEVICES

DISPATCH = """
[control]
mode = "dispatch"
[dispatch]
step_s = 60
horizon_steps = 6
default_price_per_kwh = 20.0
base_load_w = 0.0
"""

Families = dict[str, dict[tuple[tuple[str, str], ...], float]]  # sample name -> sorted labels -> value


def site_text(extra: str = "") -> tuple[str, int]:
    """The site above on free ports (Modbus on the first, metrics on the second, `{spare_port}` in `extra` the
    third, where nothing listens), with `extra` tables applied."""
    port = free_port_block(3)
    text = SITE.replace("{port}", str(port)).replace("{metrics_port}", str(port + 1))
    extra = extra.replace("{spare_port}", str(port + 2))
    if "[control]" in extra:  # a [control] of the caller's replaces the site_target one
        text = text.replace('[control]\nmode = "site_target"\nsite_target_w = 5000.0\n', "")
    return text + extra, port


@contextlib.asynccontextmanager
async def agent(text: str) -> AsyncIterator[tuple[SimSite, AgentApp, str]]:
    """The simulated site with the whole agent running, polled once; yields (site, app, metrics URL)."""
    config = parse_config(text)
    async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
        app = AgentApp(config, site.clock.now)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            await eventually(lambda: app.first_cycle.is_set(), what="first cycle")
            yield site, app, f"http://{HOST}:{config.metrics.port}/metrics"
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


async def scrape(url: str) -> Families:
    """One scrape over HTTP (in a thread: the agent's loop keeps running), parsed by prometheus_client."""
    text = await asyncio.to_thread(_get, url)
    samples: Families = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Families, name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def value_label(samples: Families, name: str, label: str) -> str:
    """The value of `label` on the single sample of `name` (an info metric's)."""
    (labels,) = samples[name]
    return dict(labels)[label]


async def until(url: str, check: Callable[[Families], object], what: str, timeout_s: float = 15.0) -> Families:
    """Scrape until `check(samples)` holds; returns those samples."""
    last: Families = {}

    async def ok() -> bool:
        nonlocal last
        last = await scrape(url)
        return bool(check(last))

    await eventually(ok, timeout_s=timeout_s, what=what)
    return last


def unknown_key_token() -> bytes:
    """A signed-looking command from a key this site does not know: the gate refuses it as `unknown_key`."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": ACCEPTED_ALGORITHMS[0], "kid": "stranger"}).encode())
    return f"{header}.{part(b'{}')}.{part(b'not a signature')}".encode()


async def test_scrape_shows_the_running_site() -> None:
    text, _ = site_text()
    async with agent(text) as (site, app, url):
        first = await scrape(url)
        cycles = value(first, "vpp_control_cycles_total")
        assert cycles is not None and cycles >= 1
        assert value(first, "vpp_asset_available", asset_id="bess1") == 1.0
        assert value(first, "vpp_agent_info", version=value_label(first, "vpp_agent_info", "version")) == 1.0
        assert "process_resident_memory_bytes" in first

        # cycles go up between two scrapes, and every cycle is in the histogram
        second = await until(url, lambda s: value(s, "vpp_control_cycles_total") > cycles, "cycles rising")
        observed = value(second, "vpp_control_cycle_duration_seconds_count")
        assert observed is not None and observed >= 1
        assert value(second, "vpp_control_cycle_duration_seconds_bucket", le="+Inf") == observed
        assert value(second, "vpp_control_cycle_duration_seconds_bucket", le="0.1") is not None  # the period's
        assert value(second, "vpp_control_cycle_overruns_total") is not None

        # a device taken offline: unavailable, and its failed polls rise from one scrape to the next
        site.faults("bess1").set_offline(True)
        down = await until(url, lambda s: value(s, "vpp_asset_available", asset_id="bess1") == 0.0, "bess1 out")
        failed = value(down, "vpp_asset_polls_total", asset_id="bess1", result="failed")
        assert failed is not None and failed >= 2  # unavailable_after
        await until(
            url,
            lambda s: value(s, "vpp_asset_polls_total", asset_id="bess1", result="failed") > failed,
            "failed polls of bess1 rising",
        )
        assert value(down, "vpp_asset_available", asset_id="bess2") == 1.0

        # refusals by reason: the gate's code, and the agent's own checks after it
        assert (await app.ingest.receive("site_target", unknown_key_token())).status == "rejected"
        assert (await app.ingest.receive("site_target", b'{"nonsense": 1}')).status == "rejected"
        refused = await scrape(url)
        assert value(refused, "vpp_signals_rejected_total", reason="unknown_key") == 1.0
        assert value(refused, "vpp_signals_rejected_total", reason="checks") == 1.0
        assert value(refused, "vpp_signals_received_total", status="rejected") == 2.0
        accepted = value(refused, "vpp_signals_received_total", status="accepted")

        # an accepted target counts; an override far beyond the battery's nameplate is clamped, with the limit
        target = json.dumps({"id": "t-new", "site_target_w": 6000.0}).encode()
        assert (await app.ingest.receive("site_target", target)).status == "accepted"
        app.loop.set_override("bess2", 10_000_000.0)
        clamped = await until(
            url,
            lambda s: sum(s.get("vpp_setpoints_clamped", {}).values()) >= 1,
            "a clamped setpoint",
        )
        reasons = {dict(labels)["reason"] for labels, v in clamped["vpp_setpoints_clamped"].items() if v > 0}
        assert reasons & {"nameplate charge limit", "live charge limit"}, reasons
        assert value(clamped, "vpp_signals_received_total", status="accepted") == accepted + 1
        written = value(clamped, "vpp_setpoints_written_total")
        assert written is not None and written >= 1
        assert "vpp_plan_path" not in clamped and "vpp_mqtt_connected" not in clamped  # no optimiser, no broker


async def test_event_delivery_ratio_appears_when_the_event_completes() -> None:
    text, _ = site_text()
    async with agent(text) as (site, app, url):
        meter = site.devices["meter"]
        await eventually(lambda: abs(meter.power_w - 5000) < 300, what="site at its 5 kW target")
        now = site.clock.now()
        event = json.dumps(
            {"id": "dr1", "start": str(now + timedelta(seconds=1)), "end": str(now + timedelta(seconds=4)),
             "requested_increase_w": 20000, "price_per_kwh": 5}
        ).encode()  # fmt: skip
        assert (await app.ingest.receive("up_dr", event)).status == "accepted"
        await until(url, lambda s: value(s, "vpp_events_open", kind="up_dr", state="active") == 1.0, "event active")
        done = await until(
            url, lambda s: value(s, "vpp_event_delivered_ratio", event_id="dr1") is not None, "event completed"
        )
        report = app.events.events["dr1"].report
        assert report is not None
        assert value(done, "vpp_event_delivered_ratio", event_id="dr1") == report["delivered_fraction"] > 0.3
        assert value(done, "vpp_events_open", kind="up_dr", state="active") is None


async def test_mqtt_buffer_depth_and_drops_while_the_broker_is_away() -> None:
    text, _ = site_text(
        # no broker on the spare port: telemetry piles up in the link's buffer of 5, the oldest dropped
        f"[mqtt]\nenabled = true\nhost = '{HOST}'\nport = {{spare_port}}\nbuffer_limit = 5\n"
        "[trust]\nrequire_signatures = false\n"
    )
    async with agent(text) as (_site, _app, url):
        full = await until(url, lambda s: value(s, "vpp_mqtt_buffered_messages") == 5.0, "buffer full")
        assert value(full, "vpp_mqtt_connected") == 0.0
        assert value(full, "vpp_mqtt_buffer_limit_messages") == 5.0
        dropped = value(full, "vpp_mqtt_dropped_messages_total")
        assert dropped is not None
        await until(url, lambda s: value(s, "vpp_mqtt_dropped_messages_total") > dropped, "drops rising")


async def test_dispatch_mode_shows_solve_time_path_and_cost_terms() -> None:
    text, _ = site_text(DISPATCH)
    async with agent(text) as (_site, app, url):
        planned = await until(url, lambda s: (value(s, "vpp_plan_solves_total") or 0) >= 1, "first plan", timeout_s=60)
        assert value(planned, "vpp_plan_path", path="solver") == 1.0
        assert value(planned, "vpp_plan_path", path="rule") == 0.0
        method = app.dispatcher.method if app.dispatcher else ""
        assert (value(planned, "vpp_plan_solve_duration_seconds_count", method=method) or 0) >= 1
        plan = app.dispatcher.plan if app.dispatcher else None
        assert plan is not None
        assert value(planned, "vpp_plan_cost_terms", term="energy", flow="cost") == plan.breakdown["energy"]
        assert value(planned, "vpp_plan_net_cost") == plan.net_cost


async def test_a_taken_port_is_logged_and_the_agent_runs_on() -> None:
    text, _ = site_text()
    config = parse_config(text)
    taken = socket.socket()
    taken.bind((HOST, config.metrics.port))
    taken.listen()
    try:
        async with SimSite.from_config(parse_simulation(tomllib.loads(text)["simulation"])) as site:
            app = AgentApp(config, site.clock.now)
            stop = asyncio.Event()
            with capture_logs() as logs:
                task = asyncio.create_task(app.run(stop))
                try:
                    await eventually(lambda: app.loop.cycles >= 1, what="first cycle")
                    cycles = app.loop.cycles
                    await eventually(lambda: app.loop.cycles > cycles + 5, what="the agent cycling on")
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 30)
    finally:
        taken.close()
    (line,) = [entry for entry in logs if entry["event"] == "metrics.unavailable"]
    assert line["log_level"] == "error"
    assert line["host"] == HOST and line["port"] == config.metrics.port
    assert "in use" in line["reason"]


def test_disabled_metrics_serve_nothing() -> None:
    endpoint = start_metrics(object(), MetricsSettings())  # type: ignore[arg-type]  # never touched when off
    assert isinstance(endpoint, MetricsEndpoint) and not endpoint.serving and endpoint.address is None
    endpoint.close()
