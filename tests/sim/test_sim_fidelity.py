"""Simulator fidelity (issue 12 §5) and the format-v2 constructs of §1 on the wire, with a map given by path.

A two-unit battery map (written here, served by `vpp-sim`'s own loader from its path) uses coils, a discrete input
as the sign flag, an input register on a second unit id and the per-map "refuses partial writes" flag. The agent's
driver controls it end to end, and a bare pymodbus client checks what a real device answers: exception 02 for the
wrong function table or an unmapped bit, 0x0B for a unit id nobody answers, 02 for half of a 32-bit register.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient
from simhelpers import HOST, eventually, free_port_block

from drivers.modbus import GatewayPool, ModbusDriver
from drivers.registermap import load_map as load_driver_map
from sim_devices.clock import ManualClock
from sim_devices.config import parse_simulation
from sim_devices.runner import SimSite

START = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
SECOND_UNIT = 100
LAB_MAP = """
schema = 2
[model]
id = "lab_battery"
manufacturer = "test"
name = "Battery answering on two unit ids, with coils"
kind = "battery"
refuses_partial_writes = true
blocks = [[0, 23]]  # the device lets one request read through 0..23

[[registers]]
field = "power_w"
address = 0
type = "u32"
unit = "W"
negate_if = "discharging"

[[registers]]
name = "discharging"
address = 3
type = "bit"
function = 2
description = "discrete input: 1 while discharging"

[[registers]]
field = "soc"
address = 4
type = "u16"
unit = "%"
scale = 0.1
function = 4
unit_id = 100
description = "input register of the battery management unit"

[[registers]]
name = "remote"
address = 8
type = "bit"
function = 1
access = "rw"
description = "coil: remote control enabled"

[[registers]]
field = "setpoint_w"
address = 20
type = "s32"
unit = "W"
access = "rw"

[[registers]]
field = "lease_timeout_s"
address = 22
type = "u16"
unit = "s"
access = "rw"

[control]
on_connect = [{ row = "remote", value = 1 }]
"""


@pytest.fixture
def lab_map(tmp_path: Path) -> Path:
    path = tmp_path / "lab_battery.toml"
    path.write_text(LAB_MAP)
    return path


@pytest.fixture
def open_map(tmp_path: Path) -> Path:
    """The same device from a vendor that takes a write to half of a 32-bit register."""
    path = tmp_path / "lab_open.toml"
    path.write_text(LAB_MAP.replace("refuses_partial_writes = true", "").replace('"lab_battery"', '"lab_open"'))
    return path


@pytest.fixture
async def lab(lab_map: Path) -> AsyncIterator[tuple[SimSite, ModbusDriver, AsyncModbusTcpClient]]:
    port = free_port_block(1)
    config = parse_simulation({"devices": [{"id": "bess", "model": str(lab_map), "port": port}]})
    async with SimSite.from_config(config, clock=ManualClock(START)) as site:
        pool = GatewayPool(timeout_s=2.0)
        driver = ModbusDriver("bess", load_driver_map(lab_map), pool.get(HOST, port), 1)
        client = AsyncModbusTcpClient(HOST, port=port, timeout=2.0, retries=0)
        assert await client.connect()
        try:
            yield site, driver, client
        finally:
            client.close()
            pool.close()


async def test_driver_controls_a_two_unit_device_with_coils(lab) -> None:
    site, driver, client = lab
    # one request per table and unit: coil, discrete input, holding registers (one block), unit 100's input register
    assert [(s.function, s.unit_id) for s in driver.map.spans] == [(1, None), (2, None), (3, None), (4, SECOND_UNIT)]
    await driver.write_lease_timeout(60)
    assert (await client.read_coils(8, count=1, device_id=1)).bits[0] is True  # on_connect wrote the coil (05)
    assert site.devices["bess"].lease.timeout_s == 60
    await driver.write_setpoint(-3000.0)
    site.step(10.0)
    reading = await driver.read()
    truth = site.devices["bess"].fields()
    assert truth["power_w"] < 0
    assert reading.power_w == pytest.approx(truth["power_w"], abs=1.0)  # magnitude + discrete-input sign
    assert reading.soc == pytest.approx(truth["soc"], abs=0.001)  # from unit 100, function 04
    assert (await client.read_discrete_inputs(3, count=1, device_id=1)).bits[0] is True


async def test_each_function_table_is_served_apart(lab) -> None:
    _, _, client = lab
    assert (await client.read_input_registers(4, count=1, device_id=SECOND_UNIT)).isError() is False
    wrong_table = await client.read_holding_registers(4, count=1, device_id=SECOND_UNIT)
    assert wrong_table.isError() and wrong_table.exception_code == 0x02
    holding_by_04 = await client.read_input_registers(0, count=2, device_id=1)
    assert holding_by_04.isError() and holding_by_04.exception_code == 0x02
    unmapped_coil = await client.read_coils(9, count=1, device_id=1)
    assert unmapped_coil.isError() and unmapped_coil.exception_code == 0x02
    input_as_coil = await client.write_coil(3, True, device_id=1)  # the discrete input is no coil
    assert input_as_coil.isError() and input_as_coil.exception_code == 0x02


async def test_unknown_unit_id_gets_gateway_exception_0x0b(lab) -> None:
    _, _, client = lab
    answer = await client.read_holding_registers(0, count=2, device_id=55)
    assert answer.isError() and answer.exception_code == 0x0B


async def test_half_of_a_32_bit_register_is_refused_where_the_map_says(lab, open_map: Path) -> None:
    site, _, client = lab
    half = await client.write_register(21, 1000, device_id=1)  # the low word of setpoint_w alone
    assert half.isError() and half.exception_code == 0x02
    assert site.devices["bess"].lease.setpoint_w == 0.0
    whole = await client.write_registers(20, [0, 1000], device_id=1)
    assert not whole.isError()
    assert site.devices["bess"].lease.setpoint_w == 1000.0
    # a map without the flag (the vendor takes it): the same half write lands on the low word
    port = free_port_block(1)
    config = parse_simulation({"devices": [{"id": "open", "model": str(open_map), "port": port}]})
    async with SimSite.from_config(config, clock=ManualClock(START)) as open_site:
        other = AsyncModbusTcpClient(HOST, port=port, timeout=2.0, retries=0)
        assert await other.connect()
        try:
            assert not (await other.write_register(21, 700, device_id=1)).isError()
        finally:
            other.close()
        assert open_site.devices["open"].lease.setpoint_w == 700.0


async def test_vpp_sim_serves_a_map_given_by_a_relative_path(tmp_path: Path) -> None:
    """`vpp-sim` resolves `model = "maps/lab_battery.toml"` from its working directory, as `vpp-agent` resolves an
    asset's `map`, and serves it."""
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "lab_battery.toml").write_text(LAB_MAP)
    port = free_port_block(1)
    (tmp_path / "sim.toml").write_text(
        f'[[simulation.devices]]\nid = "b"\nmodel = "maps/lab_battery.toml"\nport = {port}\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sim_devices.cli", "--config", "sim.toml", cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    client = AsyncModbusTcpClient(HOST, port=port, timeout=2.0, retries=0)
    try:

        async def answers() -> bool:
            assert proc.returncode is None, "vpp-sim exited"
            if not client.connected:
                await client.connect()
            return not (await client.read_input_registers(4, count=1, device_id=SECOND_UNIT)).isError()

        await eventually(answers, timeout_s=30, what="vpp-sim serving the map from its path")
    finally:
        client.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await proc.communicate()
    assert proc.returncode == 0


def test_a_map_path_that_does_not_exist_is_named() -> None:
    from sim_devices.config import SimulationError

    with pytest.raises(SimulationError, match=r"model = 'nowhere/my_map.toml'.*not found"):
        parse_simulation({"devices": [{"id": "x", "model": "nowhere/my_map.toml", "port": 1502}]})
