"""The simulator over real sockets on 127.0.0.1, read with a bare pymodbus client and decoded in the test."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from simhelpers import HOST, decode_all, encode_field, eventually, free_port_block, resolution, span

from sim_devices.clock import ManualClock
from sim_devices.config import parse_simulation
from sim_devices.faults import DeviceFaults, apply_fault, parse_fault_spec
from sim_devices.meter import DCMeter
from sim_devices.runner import SimSite

START = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)  # 12:00 in Japan: PV is producing


def site_config(base: int) -> dict:
    return {
        "pv_peak_w": 15_000,
        "devices": [
            {
                "id": "ev1",
                "model": "vppsim_v2g_dc",
                "port": base,
                "params": {
                    "sessions": [
                        {"arrival_s": 0, "departure_s": 36_000, "capacity_kwh": 60, "soc": 0.4, "min_soc": 0.25}
                    ]
                },
            },
            {"id": "bess{i}", "count": 3, "model": "vppsim_battery", "port": base + 1, "units_per_port": 3},
            {"id": "meter", "model": "vppsim_dc_meter", "port": base + 2},
            {"id": "pv", "model": "vppsim_dc_meter", "port": base + 3, "params": {"measures": "pv"}},
        ],
    }


@pytest.fixture
async def sim() -> AsyncIterator[SimSite]:
    base = free_port_block(4)
    async with SimSite.from_config(parse_simulation(site_config(base)), clock=ManualClock(START)) as site:
        yield site


@pytest.fixture
async def client_for(sim: SimSite) -> AsyncIterator:
    clients: list[AsyncModbusTcpClient] = []

    async def make(device_id: str, reply_timeout_s: float = 3.0) -> tuple[AsyncModbusTcpClient, int]:
        placement = sim.placements[device_id]
        client = AsyncModbusTcpClient(HOST, port=placement.port, timeout=reply_timeout_s, retries=0)
        assert await client.connect()
        clients.append(client)
        return client, placement.unit_id

    yield make
    for c in clients:
        c.close()


MODELS = {
    "ev1": "vppsim_v2g_dc",
    "bess1": "vppsim_battery",
    "bess2": "vppsim_battery",
    "bess3": "vppsim_battery",
    "meter": "vppsim_dc_meter",
    "pv": "vppsim_dc_meter",
}


async def read_fields(client: AsyncModbusTcpClient, unit: int, model: str) -> dict[str, float]:
    first, count = span(model)
    rr = await client.read_holding_registers(first, count=count, device_id=unit)
    assert not rr.isError(), rr
    return decode_all(model, first, rr.registers)


def assert_matches(sim: SimSite, device_id: str, got: dict[str, float]) -> None:
    model = MODELS[device_id]
    truth = sim.devices[device_id].fields()
    sfs = sim.endpoints[device_id].codec.sf_of_field
    for field, value in got.items():
        tol = resolution(model, field, sfs.get(field, 0)) / 2 + abs(truth[field]) * 1e-6 + 1e-9
        assert value == pytest.approx(truth[field], abs=tol), (device_id, field)


async def test_registers_equal_the_physics(sim: SimSite, client_for) -> None:
    sim.faults("bess2")  # exists
    sim.devices["bess1"].write_setpoint(-20_000)
    sim.devices["ev1"].write_setpoint(7_000)
    sim.step(10.0)
    for device_id, model in MODELS.items():
        client, unit = await client_for(device_id)
        assert_matches(sim, device_id, await read_fields(client, unit, model))
    client, unit = await client_for("meter")
    meter = await read_fields(client, unit, "vppsim_dc_meter")
    assert meter["power_w"] == pytest.approx(sim.site.bus_power_w, abs=0.01)
    assert meter["energy_import_wh"] + meter["energy_export_wh"] > 0


async def test_setpoint_write_changes_power_and_lease_expires(sim: SimSite, client_for) -> None:
    client, unit = await client_for("bess2")
    address, words = encode_field("vppsim_battery", "setpoint_w", -30_000)  # + discharge kW on the device
    wr = await client.write_registers(address, words, device_id=unit)
    assert not wr.isError(), wr
    bess = sim.devices["bess2"]
    assert bess.lease.setpoint_w == pytest.approx(-30_000, abs=0.01) and bess.lease.writes == 1
    assert sim.endpoints["bess2"].last_setpoint_words == words
    sim.step(5.0)
    got = await read_fields(client, unit, "vppsim_battery")
    assert got["power_w"] == pytest.approx(-30_000, abs=0.01) and got["status"] == 2
    assert sim.devices["bess1"].power_w == 0  # a neighbour behind the same gateway is untouched
    sim.step(30.0)  # no refresh within the 30 s lease
    got = await read_fields(client, unit, "vppsim_battery")
    assert got["setpoint_w"] == 0 and got["power_w"] == 0 and got["status"] == 0


async def test_lease_timeout_register_is_writable(sim: SimSite, client_for) -> None:
    client, unit = await client_for("ev1")
    address, words = encode_field("vppsim_v2g_dc", "lease_timeout_s", 5)
    assert not (await client.write_registers(address, words, device_id=unit)).isError()
    address, words = encode_field("vppsim_v2g_dc", "setpoint_w", 50_000)  # beyond rated: clamped, echoed
    assert not (await client.write_registers(address, words, device_id=unit)).isError()
    sim.step(4.0)
    got = await read_fields(client, unit, "vppsim_v2g_dc")
    assert got["lease_timeout_s"] == 5 and got["setpoint_w"] == 50_000 and got["power_w"] == 11_000
    sim.step(4.0)
    assert sim.devices["ev1"].power_w == 0


async def test_writes_to_read_only_registers_get_an_exception(sim: SimSite, client_for) -> None:
    for device_id, field in (("ev1", "power_w"), ("bess3", "soc"), ("meter", "energy_import_wh")):
        client, unit = await client_for(device_id)
        address, words = encode_field(MODELS[device_id], field, 1)
        rr = await client.write_registers(address, words, device_id=unit)
        assert rr.isError() and rr.exception_code == 2, (device_id, field)
    assert sim.endpoints["ev1"].writes == 0


async def test_offline_alone_on_port_refuses_then_returns(sim: SimSite, client_for) -> None:
    client, unit = await client_for("meter")
    sim.faults("meter").set_offline()

    async def fails() -> bool:
        probe = AsyncModbusTcpClient(HOST, port=sim.placements["meter"].port, timeout=0.3, retries=0)
        try:
            return not await probe.connect()
        finally:
            probe.close()

    await eventually(fails, what="meter port closed")
    sim.faults("meter").clear()

    async def answers() -> bool:
        return not (await client.read_holding_registers(0, count=1, device_id=unit)).isError()

    await eventually(answers, what="meter back")  # the same client reconnects by itself


async def test_offline_behind_gateway_swallows_requests(sim: SimSite, client_for) -> None:
    sim.faults("bess2").set_offline()
    client, unit = await client_for("bess2", reply_timeout_s=0.3)
    with pytest.raises(ModbusIOException):  # no answer at all: the client times out
        await client.read_holding_registers(0, count=2, device_id=unit)
    assert sim.faults("bess2").swallowed >= 1
    neighbour, n_unit = await client_for("bess1")
    assert not (await neighbour.read_holding_registers(0, count=2, device_id=n_unit)).isError()
    sim.faults("bess2").set_offline(False)
    fresh, unit = await client_for("bess2")
    assert not (await fresh.read_holding_registers(0, count=2, device_id=unit)).isError()


async def test_slow_device_answers_late(sim: SimSite, client_for) -> None:
    sim.faults("ev1").set_slow(1.0)
    impatient, unit = await client_for("ev1", reply_timeout_s=0.1)
    with pytest.raises(ModbusIOException):
        await impatient.read_holding_registers(1000, count=1, device_id=unit)
    patient, unit = await client_for("ev1", reply_timeout_s=10.0)
    assert not (await patient.read_holding_registers(1000, count=1, device_id=unit)).isError()


async def test_exception_fault_replies_with_a_code(sim: SimSite, client_for) -> None:
    client, unit = await client_for("bess3")
    sim.faults("bess3").set_exception()
    rr = await client.read_holding_registers(0, count=2, device_id=unit)
    assert rr.isError() and rr.exception_code == 4
    sim.faults("bess3").set_exception(6)
    rr = await client.read_holding_registers(0, count=2, device_id=unit)
    assert rr.exception_code == 6
    sim.faults("bess3").clear()
    assert not (await client.read_holding_registers(0, count=2, device_id=unit)).isError()


async def test_frozen_registers_stop_refreshing_while_physics_runs(sim: SimSite, client_for) -> None:
    client, unit = await client_for("bess1")
    before = await read_fields(client, unit, "vppsim_battery")
    sim.faults("bess1").set_frozen()
    sim.devices["bess1"].write_setpoint(40_000)
    sim.step(5.0)
    assert sim.devices["bess1"].power_w == 40_000
    assert await read_fields(client, unit, "vppsim_battery") == before
    sim.faults("bess1").set_frozen(False)
    assert (await read_fields(client, unit, "vppsim_battery"))["power_w"] == pytest.approx(40_000, abs=0.01)


async def test_device_fault_code_trips_the_device(sim: SimSite, client_for) -> None:
    client, unit = await client_for("ev1")
    sim.devices["ev1"].write_setpoint(5_000)
    sim.step(3.0)
    sim.faults("ev1").set_device_fault(2)
    got = await read_fields(client, unit, "vppsim_v2g_dc")
    assert got["status"] == 3 and got["fault_code"] == 2 and got["power_w"] == 0 and got["max_charge_w"] == 0
    sim.faults("ev1").clear()
    sim.step(3.0)
    got = await read_fields(client, unit, "vppsim_v2g_dc")
    assert got["status"] == 1 and got["fault_code"] == 0 and got["power_w"] == 5_000


async def test_offset_fault_makes_a_meter_lie_while_the_physics_stays_true(sim: SimSite, client_for) -> None:
    sim.devices["bess1"].write_setpoint(-20_000)
    sim.step(5.0)
    client, unit = await client_for("meter")
    honest = await read_fields(client, unit, "vppsim_dc_meter")
    sim.faults("meter").set_offset(300_000)
    lying = await read_fields(client, unit, "vppsim_dc_meter")
    truth = sim.site.bus_power_w
    assert sim.devices["meter"].power_w == pytest.approx(truth)  # the physics does not see the lie
    assert honest["power_w"] == pytest.approx(truth, abs=0.01)
    assert lying["power_w"] == pytest.approx(truth + 300_000, abs=0.01)
    current_step = resolution("vppsim_dc_meter", "current_a", sim.endpoints["meter"].codec.sf_of_field["current_a"])
    assert lying["current_a"] == pytest.approx(lying["power_w"] / lying["voltage_v"], abs=current_step)
    assert lying["energy_import_wh"] == honest["energy_import_wh"]  # counters stay true
    assert lying["energy_export_wh"] == honest["energy_export_wh"]
    sim.faults("meter").clear()
    assert (await read_fields(client, unit, "vppsim_dc_meter"))["power_w"] == pytest.approx(truth, abs=0.01)


def test_offset_fault_spec() -> None:
    assert parse_fault_spec("meter-site:offset=300000") == ("meter-site", "offset", 300_000.0)
    assert parse_fault_spec("meter-site:offset=-2.5e5") == ("meter-site", "offset", -250_000.0)
    for bad, why in (("m:offset", "needs a value"), ("m:offset=inf", "finite"), ("m:offset=nan", "finite")):
        with pytest.raises(ValueError, match=why):
            parse_fault_spec(bad)
    faults = DeviceFaults("m", DCMeter())
    apply_fault(faults, "offset", 1500.0)
    assert faults.state.offset_w == 1500.0
    assert faults.reported({"power_w": 100.0, "voltage_v": 800.0, "current_a": 0.125}) == {
        "power_w": 1600.0, "voltage_v": 800.0, "current_a": 2.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="finite"):
        faults.set_offset(float("nan"))



def test_offset_fault_makes_an_mqtt_device_lie_too() -> None:
    cfg = parse_simulation({
        "devices": [{"id": "b", "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/{id}"}]
    })  # fmt: skip
    site = SimSite(cfg, ManualClock(START))
    endpoint = site.mqtt_endpoints["b"]
    site.devices["b"].write_setpoint(-10_000)
    site.step(5.0)
    honest = json.loads(endpoint.telemetry() or b"")
    site.faults("b").set_offset(3_000)
    lying = json.loads(endpoint.telemetry() or b"")
    assert site.devices["b"].power_w == pytest.approx(-10_000)  # the physics does not see the lie
    assert (honest["p_kw"], lying["p_kw"]) == pytest.approx((10.0, 7.0))  # + discharge kW: -10 kW reads -7 kW
