"""Modbus links other than Modbus TCP (issue 12 §4), chosen per asset in config and built by agent/wiring.py:
RTU frames over TCP (a serial gateway that passes frames through) and serial RTU on a local port.

Both talk to the simulator's own device (its pymodbus SimDevices) through real pymodbus servers: a TCP server with
RTU framing, and a serial server on one end of a pseudo-terminal pair whose other end the agent opens, the two
joined by a byte relay (a null-modem cable: real serial framing, CRCs and all, no mocks).
"""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer

from agent.config import AssetConfig, parse_config
from agent.wiring import build_drivers
from drivers.modbus import ModbusDriver
from sim_devices.clock import ManualClock
from sim_devices.config import parse_simulation
from sim_devices.ports import free_port_block
from sim_devices.runner import SimSite
from sim_devices.server import PortServer

START = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
HOST = "127.0.0.1"


def _now() -> datetime:
    return START


@pytest.fixture
async def battery() -> AsyncIterator[SimSite]:
    """One simulated battery (its Modbus TCP port unused here: the tests serve its SimDevice themselves)."""
    config = parse_simulation({"devices": [{"id": "bess", "model": "vppsim_battery", "port": free_port_block(1)}]})
    async with SimSite.from_config(config, clock=ManualClock(START)) as site:
        yield site


async def _drive(driver: ModbusDriver, site: SimSite) -> None:
    """Lease, setpoint and a read through the link; the physics must have taken them."""
    await driver.write_lease_timeout(30)
    await driver.write_setpoint(-4000.0)
    assert site.devices["bess"].lease.setpoint_w == pytest.approx(-4000.0)
    site.step(5.0)
    reading = await driver.read()
    assert reading.power_w == pytest.approx(site.devices["bess"].fields()["power_w"], abs=1.0)
    assert reading.power_w < 0


async def test_rtu_framing_over_tcp(battery: SimSite) -> None:
    port = free_port_block(1)
    server = PortServer(HOST, port, [battery.endpoints["bess"]], framing="rtu")
    await server.start()
    config = parse_config(f'[[assets]]\nid = "bess"\nmap = "vppsim_battery"\nport = {port}\nframing = "rtu"\n')
    drivers, pool = build_drivers(config, _now)
    try:
        driver = drivers["bess"]
        assert isinstance(driver, ModbusDriver) and driver.gateway.framing == "rtu"
        await _drive(driver, battery)
        # the same server does not understand Modbus TCP framing: a plain TCP client gets no answer
        plain = AsyncModbusTcpClient(HOST, port=port, timeout=0.5, retries=0)
        assert await plain.connect()
        with pytest.raises(Exception):  # noqa: B017 - pymodbus raises ModbusIOException on no answer
            await plain.read_holding_registers(0, count=2, device_id=1)
        plain.close()
    finally:
        pool.close()
        await server.stop()


@contextmanager
def null_modem() -> Iterator[tuple[str, str]]:
    """Two pseudo-terminals joined master to master: bytes written to one's slave come out of the other's."""
    m1, s1 = os.openpty()
    m2, s2 = os.openpty()
    for slave in (s1, s2):
        tty.setraw(slave)
    for master in (m1, m2):
        os.set_blocking(master, False)
    loop = asyncio.get_running_loop()

    def relay(src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except BlockingIOError:
            return
        os.write(dst, data)

    loop.add_reader(m1, relay, m1, m2)
    loop.add_reader(m2, relay, m2, m1)
    try:
        yield os.ttyname(s1), os.ttyname(s2)
    finally:
        loop.remove_reader(m1)
        loop.remove_reader(m2)
        for fd in (m1, m2, s1, s2):
            os.close(fd)


async def test_serial_rtu_over_a_pseudo_terminal_pair(battery: SimSite) -> None:
    with null_modem() as (device_end, agent_end):
        # a Linux pseudo-terminal refuses parity once open (tcsetattr EINVAL), so this line runs 8N1
        server = ModbusSerialServer(battery.endpoints["bess"].sim_devices(), framer=FramerType.RTU,
                                    port=device_end, baudrate=38400, parity="N")
        await server.serve_forever(background=True)
        config = parse_config(
            f'[[assets]]\nid = "bess"\nmap = "vppsim_battery"\nserial = "{agent_end}"\nbaudrate = 38400\n'
            'parity = "N"\nstopbits = 1\n'
        )
        drivers, pool = build_drivers(config, _now)
        try:
            driver = drivers["bess"]
            assert isinstance(driver, ModbusDriver) and driver.gateway.serial is not None
            await _drive(driver, battery)
        finally:
            pool.close()
            await server.shutdown()


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"baudrate": 9600}, "serial-line settings need serial"),
        ({"serial": "/dev/ttyUSB0", "port": 503}, "port are for TCP links"),
        ({"serial": "/dev/ttyUSB0", "framing": "rtu"}, "framing are for TCP links"),
        ({"framing": "ascii"}, "framing"),
        ({"transport": "mqtt", "connector": 2}, "connector: only for transport = 'modbus'"),
        ({"connector": 0}, "connector"),
    ],
)
def test_link_keys_are_validated(keys: dict, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        AssetConfig.model_validate({"id": "a", "map": "vppsim_battery", **keys})


def test_two_connectors_of_one_charger_and_two_serial_lines_are_distinct_assets() -> None:
    config = parse_config(
        '[[assets]]\nid = "c1"\nmap = "evtec_bidipro10"\nconnector = 1\n'
        '[[assets]]\nid = "c2"\nmap = "evtec_bidipro10"\nconnector = 2\n'
        '[[assets]]\nid = "m1"\nmap = "eastron_sdm630"\nserial = "/dev/ttyUSB0"\n'
        '[[assets]]\nid = "m2"\nmap = "eastron_sdm630"\nserial = "/dev/ttyUSB1"\n'
    )
    assert [a.id for a in config.assets] == ["c1", "c2", "m1", "m2"]
    with pytest.raises(ValueError, match="port 502 unit 1 already taken by 'c1'"):
        parse_config('[[assets]]\nid = "c1"\nmap = "evtec_bidipro10"\nconnector = 1\n'
                     '[[assets]]\nid = "c1b"\nmap = "evtec_bidipro10"\nconnector = 1\n')
