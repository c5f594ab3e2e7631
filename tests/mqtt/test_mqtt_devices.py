"""MQTT-connected devices end to end against a real Mosquitto: map files, simulator, MqttDriver over MqttLink.

Every MQTT map is served by the simulator and read back by the driver; a battery is controlled through its command
topic; junk and stale telemetry become DriverErrors that name the reason; mosquitto_sub (an independent client)
sees the documented topic and keys; a broker restart is survived by both ends. Synchronisation is by polling until
a deadline (the deadline only bounds a failing test), never by sleeping a guessed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from brokerkit import Broker

from agent.model import MEASUREMENT_FIELDS, Measurement
from agent.ports import DriverError
from drivers.mqtt_driver import MqttDriver
from drivers.mqtt_link import LinkSettings, MqttLink
from drivers.mqtt_map import MapError, MqttMap, available_mqtt_maps, load_mqtt_map, mqtt_maps_dir
from sim_devices.clock import ManualClock
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

HOST = "127.0.0.1"
START = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


async def until(check: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    """Poll `check` (sync or async) until it returns something truthy without raising; return that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return result
        except (AssertionError, DriverError) as exc:
            last = exc
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout_s} s: {what} (last: {last!r})")
        await asyncio.sleep(0.02)


async def read_error(driver: MqttDriver) -> str:
    """The DriverError message of a read, or '' when the read succeeds."""
    try:
        await driver.read()
    except DriverError as exc:
        return str(exc)
    return ""


@dataclass
class Rig:
    site: SimSite
    link: MqttLink
    drivers: dict[str, MqttDriver]
    clock: ManualClock

    def physics(self, device_id: str) -> Any:
        return self.site.devices[device_id]


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@contextlib.asynccontextmanager
async def rig(
    broker: Broker,
    devices: dict[str, str],
    monotonic: Callable[[], float] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[Rig]:
    """A simulated site of MQTT devices (id → MQTT map) and one MqttDriver per device over one MqttLink."""
    clock = ManualClock(START)
    cfg = parse_simulation(
        {
            "base_load_w": 4321.0,
            "mqtt": {"host": HOST, "port": broker.port, "publish_period_s": 0.05},
            "devices": [
                {"id": d, "transport": "mqtt", "model": m, "topic": "devices/{id}", "params": (params or {}).get(d, {})}
                for d, m in devices.items()
            ],
        }
    )
    link = MqttLink(LinkSettings(HOST, broker.port, client_id=f"agent-{id(clock):x}", reconnect_max_s=0.5))
    drivers = {
        d: MqttDriver(d, load_mqtt_map(m), link, f"devices/{d}", monotonic=monotonic or time.monotonic)
        for d, m in devices.items()
    }
    stop = asyncio.Event()
    runner = asyncio.create_task(link.run(stop))
    try:
        async with SimSite.from_config(cfg, clock) as site:
            await asyncio.wait_for(link.wait_connected(), 15)
            # and the devices' command subscriptions are live: a command published before them reaches nobody
            assert site.mqtt is not None
            await asyncio.wait_for(site.mqtt.connected.wait(), 15)
            yield Rig(site, link, drivers, clock)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)


def compare(register_map: MqttMap, reading: Measurement, truth: dict[str, float]) -> int:
    """Assert every mapped field the physics reports equals the reading; return how many were checked."""
    checked = 0
    for field in MEASUREMENT_FIELDS:
        if not register_map.has(field) or field not in truth:
            continue
        got, want = getattr(reading, field), truth[field]
        if field == "ev_departure":
            got, want = got.timestamp(), round(want)
        elif field in ("status", "fault_code"):
            got, want = int(got), int(want)
        elif field == "ev_connected":
            got, want = bool(got), bool(want)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-6), field
        checked += 1
    return checked


# ---- maps --------------------------------------------------------------------------------------------------
def test_three_maps_one_per_kind_load() -> None:
    kinds = {load_mqtt_map(m).kind for m in available_mqtt_maps()}
    assert kinds == {"battery", "ev_charger", "meter"}


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"fields": [{"field": "power_w", "key": "p", "unit": "V"}]}, "fields.0: unit 'V' cannot feed power_w"),
        ({"fields": [{"field": "power_w", "key": "p", "colour": 1}]}, "fields.0.colour: Extra inputs"),
        ({"fields": [{"field": "soc", "key": "p", "unit": "%", "access": "rw"}]}, "field soc cannot be writable"),
        ({"fields": [{"field": "power_w", "key": "a..b"}]}, "fields.0.key: key 'a..b'"),
        (
            {"fields": [{"field": "power_w", "key": "a", "unit": "W"}, {"field": "soc", "key": "a.b", "unit": "%"}]},
            "key 'a.b' (soc) collides with key 'a'",
        ),
        ({"model": {"telemetry": "x/#"}}, "model.telemetry"),
    ],
)
def test_map_errors_name_file_row_and_key(tmp_path: Path, patch: dict[str, Any], expected: str) -> None:
    data = tomllib.loads((mqtt_maps_dir() / "vppsim_dc_meter_mqtt.toml").read_text())
    data["model"].update(patch.get("model", {}))
    if "fields" in patch:
        data["fields"] = patch["fields"]
    path = tmp_path / "broken.toml"
    path.write_text(_toml(data))
    with pytest.raises(MapError) as err:
        load_mqtt_map(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def _toml(data: dict[str, Any]) -> str:
    lines = ["schema = 1", "[model]"] + [f"{k} = {json.dumps(v)}" for k, v in data["model"].items()]
    for row in data["fields"]:
        lines += ["[[fields]]"] + [f"{k} = {json.dumps(v)}" for k, v in row.items()]
    return "\n".join(lines) + "\n"


def test_decode_and_encode_convert_units_sign_and_nesting() -> None:
    battery = load_mqtt_map("vppsim_battery_mqtt")
    values = battery.decode({"p_kw": 2.5, "bms": {"soc_pct": 40, "soh_pct": 99.5}, "status": 2})
    assert values == {"power_w": -2500.0, "soc": 0.4, "soh": 0.995, "status": 2.0}
    assert battery.encode("setpoint_w", 3000.0) == ("setpoint_kw", -3.0)
    with pytest.raises(ValueError, match=r"'bms\.soc_pct'"):
        battery.decode({"p_kw": 1, "bms": {"soc_pct": "40"}})


# ---- round trip of every map ----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", available_mqtt_maps())
async def test_every_mqtt_map_round_trips_through_simulator(broker: Broker, model: str) -> None:
    mqtt_map = load_mqtt_map(model)
    async with rig(broker, {"dut": model}) as r:
        driver, physics = r.drivers["dut"], r.physics("dut")
        if mqtt_map.kind.controllable:

            async def commanded() -> bool:
                # re-sent until they land: a command published before the simulator has subscribed is lost
                if physics.lease.timeout_s != 0:
                    await driver.write_lease_timeout(0)
                if physics.lease.setpoint_w != pytest.approx(-2500.0):
                    await driver.write_setpoint(-2500.0)
                return physics.lease.setpoint_w == pytest.approx(-2500.0) and physics.lease.timeout_s == 0

            await until(commanded, "setpoint and lease reach physics")
        r.site.step(60.0)
        truth = physics.fields()

        async def matches() -> bool:
            return compare(mqtt_map, await driver.read(), truth) > 0

        await until(matches, f"{model}: driver reads the physics")
        mapped = [f for f in MEASUREMENT_FIELDS if mqtt_map.has(f)]
        assert compare(mqtt_map, await driver.read(), truth) == len(mapped), set(mapped) - set(truth)
        assert driver.stats.rejected == 0 and r.link.stats.handler_errors == 0


# ---- control --------------------------------------------------------------------------------------------------
async def test_battery_follows_setpoint_and_lease_returns_it_to_zero(broker: Broker) -> None:
    async with rig(broker, {"bess": "vppsim_battery_mqtt"}) as r:
        driver, physics = r.drivers["bess"], r.physics("bess")
        await driver.write_lease_timeout(5)
        await driver.write_setpoint(-20_000.0)  # discharge 20 kW (the device sees +20 kW: it flips the sign)
        await until(
            lambda: physics.lease.setpoint_w == -20_000.0 and physics.lease.timeout_s == 5, "command applied to physics"
        )
        r.site.step(2.0)
        assert physics.power_w == pytest.approx(-20_000.0)

        async def reads(power_w: float) -> bool:
            return (await driver.read()).power_w == pytest.approx(power_w)

        await until(lambda: reads(-20_000.0), "driver sees the discharge")
        r.site.step(10.0)  # no refresh: the 5 s lease lapses on the device's own clock
        assert physics.lease.setpoint_w == 0.0 and physics.lease.expiries == 1
        assert physics.power_w == pytest.approx(0.0)
        await until(lambda: reads(0.0), "driver sees the device back at 0 W")
        assert r.site.mqtt_endpoints["bess"].commands == 2


async def test_bad_commands_are_counted_and_ignored(broker: Broker) -> None:
    async with rig(broker, {"bess": "vppsim_battery_mqtt"}) as r:
        endpoint, physics = r.site.mqtt_endpoints["bess"], r.physics("bess")
        async with aiomqtt.Client(HOST, broker.port) as peer:
            # a good command first, applied before the junk is sent: the simulator's subscription is live by then
            # (CI once lost the first two junk messages to a subscription still being set up)
            await peer.publish("devices/bess/set", b'{"setpoint_kw": 0.5}', qos=1)
            await until(lambda: endpoint.commands == 1, "first good command applied")
            for junk in (b"{", b"[1]", b'{"p_kw": 5}', b'{"setpoint_kw": "5"}', b'{"lease_s": -1}'):
                await peer.publish("devices/bess/set", junk, qos=1)
            await peer.publish("devices/bess/set", b'{"setpoint_kw": 1.5}', qos=1)
        await until(lambda: endpoint.commands == 2, "good command after the junk applied")
        assert endpoint.bad_commands == 5
        assert physics.lease.setpoint_w == -1500.0


# ---- bad and stale telemetry ---------------------------------------------------------------------------------
JUNK: list[tuple[bytes, str]] = [
    (b"not json{", "not JSON"),
    (b"[1, 2]", "not a JSON object but list"),
    (b'{"p_kw": "fast"}', "wrong type: key 'p_kw'"),
    (b'{"p_kw": 1.0, "pad": "' + b"x" * 70_000 + b'"}', "exceeds 65536 bytes"),
    (b'{"p_kw": NaN}', "NaN is not a JSON number"),
    (b'{"p_kw": 1.0, "bms": {"soc_pct": 150}}', "implausible: key 'bms.soc_pct' (soc) value 1.5 is outside 0..1"),
    (b'{"bms": {"soc_pct": 50}}', "missing key 'p_kw'"),
]


async def test_bad_telemetry_is_rejected_with_its_reason_and_good_telemetry_recovers(broker: Broker) -> None:
    async with rig(broker, {"bess": "vppsim_battery_mqtt"}) as r:
        driver = r.drivers["bess"]
        await until(driver.read, "first good telemetry")
        r.site.faults("bess").set_offline()  # the device falls silent, so only our junk reaches the topic
        async with aiomqtt.Client(HOST, broker.port) as peer:
            for payload, reason in JUNK:
                await peer.publish("devices/bess/state", payload, qos=1)
                await until(lambda reason=reason: _contains(driver, reason), f"read fails naming {reason!r}")
        assert driver.stats.rejected >= len(JUNK)
        assert r.link.connected and r.link.stats.handler_errors == 0
        r.site.faults("bess").set_offline(False)
        await until(driver.read, "good telemetry accepted again")


async def _contains(driver: MqttDriver, reason: str) -> bool:
    message = await read_error(driver)
    return reason in message and "bess" in message


async def test_stale_telemetry_fails_reads_until_the_device_is_back(broker: Broker) -> None:
    fake = FakeMonotonic()
    async with rig(broker, {"ev": "vppsim_v2g_mqtt"}, monotonic=fake) as r:
        driver = r.drivers["ev"]
        assert "no telemetry yet" in await read_error(driver) or await driver.read()
        await until(driver.read, "first telemetry")
        r.site.faults("ev").set_offline()

        async def stale() -> bool:
            fake.t += driver.map.stale_after_s + 1  # an in-flight message may still land: keep moving time on
            return "telemetry stale" in await read_error(driver)

        await until(stale, "read reports stale telemetry")
        r.site.faults("ev").clear()
        await until(driver.read, "fresh telemetry after the fault clears")


# ---- an independent client sees the documented topic and keys -------------------------------------------------
def documented_keys(model: str) -> tuple[str, set[str]]:
    """(telemetry sub-topic, dotted keys) read straight from the TOML, without drivers or sim code."""
    data = tomllib.loads((mqtt_maps_dir() / f"{model}.toml").read_text())
    return data["model"]["telemetry"], {row["key"] for row in data["fields"]}


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="needs mosquitto_sub (mosquitto-clients)")
async def test_mosquitto_sub_sees_documented_topic_and_keys(broker: Broker) -> None:
    models = {f"d{i}": m for i, m in enumerate(available_mqtt_maps())}
    async with rig(broker, models) as r:
        for device, model in models.items():
            sub_topic, keys = documented_keys(model)
            proc = await asyncio.create_subprocess_exec(
                shutil.which("mosquitto_sub") or "mosquitto_sub",
                "-h",
                HOST,
                "-p",
                str(broker.port),
                "-t",
                f"devices/{device}/{sub_topic}",
                "-C",
                "1",
                "-W",
                "10",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            payload = flatten(json.loads(out))
            assert set(payload) == keys, model
            physics = r.physics(device).fields()
            assert isinstance(payload[documented_power_key(model)], int | float) and "power_w" in physics


def documented_power_key(model: str) -> str:
    data = tomllib.loads((mqtt_maps_dir() / f"{model}.toml").read_text())
    return next(row["key"] for row in data["fields"] if row["field"] == "power_w")


# ---- broker restart ---------------------------------------------------------------------------------------------
async def test_sim_and_driver_reconnect_after_broker_restart(broker: Broker) -> None:
    async with rig(broker, {"bess": "vppsim_battery_mqtt"}) as r:
        driver, mqtt = r.drivers["bess"], r.site.mqtt
        assert mqtt is not None
        await until(driver.read, "telemetry before the restart")
        await broker.astop()
        await until(lambda: not r.link.connected and not mqtt.connected.is_set(), "both ends notice")
        with pytest.raises(DriverError, match="link down"):
            await driver.write_setpoint(1000.0)  # never buffered for later
        accepted = driver.stats.accepted
        await broker.astart()
        await until(lambda: r.link.connected and mqtt.connected.is_set(), "both ends reconnect")
        await until(lambda: driver.stats.accepted > accepted, "telemetry flows again")
        await driver.write_setpoint(3000.0)
        await until(lambda: r.physics("bess").lease.setpoint_w == 3000.0, "commands flow again")
        assert r.link.stats.connects >= 2 and mqtt.connects >= 2


async def test_site_starts_and_stops_while_the_broker_is_away(broker: Broker) -> None:
    await broker.astop()
    cfg = parse_simulation(
        {
            "mqtt": {"host": HOST, "port": broker.port},
            "devices": [{"id": "m", "transport": "mqtt", "model": "vppsim_dc_meter_mqtt", "topic": "devices/{id}"}],
        }
    )
    site = SimSite.from_config(cfg, ManualClock(START))
    async with site:
        assert site.mqtt is not None
        mqtt = site.mqtt
        await until(lambda: mqtt.connect_failures >= 1, "the sim keeps trying to connect")
    assert not mqtt.connected.is_set() and mqtt._task is None
