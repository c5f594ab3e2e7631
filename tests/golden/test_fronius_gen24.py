"""Fronius GEN24 Plus golden test: the SunSpec driver alone against a bare Modbus server holding the registers a
GEN24 holds (int+SF setting) for a documented state, written here by hand as raw words at the PDU addresses the
public sources give (drivers/sunspec/products/fronius_gen24.toml). A wrong sign, scale factor, point offset or
control word fails here even if the simulator shared the mistake."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
from devicekit import UNIT, free_port
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.model import AssetKind, DeviceStatus
from drivers.modbus import GatewayPool
from drivers.sunspec.driver import SunSpecDriver
from drivers.sunspec.profile import load_product

NOT_SF = 0x8000  # sunssf "not implemented"
# The model chain: ID and L at each model's first register (int+SF order), the end marker after 124.
CHAIN = {40000: 0x5375, 40001: 0x6E53,  # "SunS"
         40002: 1, 40003: 65, 40069: 103, 40070: 50, 40121: 120, 40122: 26, 40149: 121, 40150: 30,
         40181: 122, 40182: 44, 40227: 123, 40228: 24, 40253: 160, 40254: 88, 40343: 124, 40344: 24,
         40369: 0xFFFF, 40370: 0}
NAMEPLATE = {40140: 10240, 40141: 0,  # 120 WHRtg 10.24 kWh (BYD HVS 10.2), WHRtg_SF 0
             40144: 10240, 40145: 0, 40146: 10240, 40147: 0}  # 120 MaxChaRte, MaxDisChaRte 10240 W, SF 0
MPPT = {40255: NOT_SF, 40256: NOT_SF, 40257: 0xFFFF, 40258: NOT_SF,  # 160 DCA_SF, DCV_SF, DCW_SF = -1, DCWH_SF
        40262: 4}  # 160 N: four modules
STORAGE = {40345: 10240, 40361: 0,  # 124 WChaMax 10240 W, WChaMax_SF 0
           40351: 6550, 40365: 0xFFFE,  # 124 ChaState 65.50 %, ChaState_SF -2
           40368: 0xFFFE}  # 124 InOutWRte_SF -2 (0.01 %)
CHARGING_2500 = {**CHAIN, **NAMEPLATE, **MPPT, **STORAGE,
                 40314: 25000,  # 160 module 3 DCW: 2500.0 W into the battery (DCW_SF -1)
                 40334: 0,  # 160 module 4 DCW: nothing out
                 40107: 4}  # 103 St: MPPT (running)
DISCHARGING = {**CHARGING_2500, 40314: 0, 40334: 12345}  # module 4 DCW 1234.5 W out of the battery
SPAN = (40000, 40371)


@asynccontextmanager
async def gen24(words: Mapping[int, int]) -> AsyncIterator[tuple[ModbusTcpServer, SunSpecDriver]]:
    first, last = SPAN
    values = [words.get(a, 0) for a in range(first, last)]
    device = SimDevice(id=UNIT, simdata=[SimData(address=first, count=len(values), values=values,
                                                 datatype=DataType.REGISTERS)])
    port = free_port()
    server = ModbusTcpServer([device], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    pool = GatewayPool(timeout_s=2.0)
    driver = SunSpecDriver("gen24", pool.get("127.0.0.1", port), UNIT, AssetKind.BATTERY,
                           product=load_product("fronius_gen24"))
    try:
        yield server, driver
    finally:
        pool.close()
        await server.shutdown()


async def words(server: ModbusTcpServer, address: int, count: int = 1) -> list[int]:
    return [int(v) for v in await server.async_getValues(UNIT, 3, address, count)]


async def test_chain_is_the_documented_int_sf_order() -> None:
    async with gen24(CHARGING_2500) as (_, driver):
        device = await driver.discover()
    assert [(e.model_id, e.address) for e in device.chain] == [
        (1, 40002), (103, 40069), (120, 40121), (121, 40149), (122, 40181), (123, 40227), (160, 40253), (124, 40343)]
    assert tuple(e.model_id for e in device.chain) == load_product("fronius_gen24").product.models


async def test_charging_battery_reads_positive_from_mppt_module_3() -> None:
    async with gen24(CHARGING_2500) as (_, driver):
        m = await driver.read()
    assert m.power_w == pytest.approx(2500.0)
    assert m.status is DeviceStatus.CHARGING
    assert m.soc == pytest.approx(0.655)
    assert m.capacity_wh == 10240.0
    assert m.rated_charge_w == 10240.0 and m.rated_discharge_w == 10240.0
    assert m.max_charge_w == 10240.0 and m.max_discharge_w == 10240.0
    assert m.setpoint_w is None  # StorCtl_Mod 0: the inverter runs its own mode


async def test_discharging_battery_reads_negative_from_mppt_module_4() -> None:
    async with gen24(DISCHARGING) as (_, driver):
        m = await driver.read()
    assert m.power_w == pytest.approx(-1234.5)
    assert m.status is DeviceStatus.DISCHARGING


async def test_inverter_fault_state_is_a_fault() -> None:
    async with gen24({**CHARGING_2500, 40107: 7}) as (_, driver):  # 103 St 7: FAULT
        m = await driver.read()
    assert m.status is DeviceStatus.FAULT


async def test_setpoints_are_a_window_in_percent_of_wchamax() -> None:
    async with gen24(CHARGING_2500) as (server, driver):
        await driver.read()
        await driver.write_lease_timeout(60.0)
        assert await words(server, 40360) == [1]  # ChaGriSet: charging from the grid allowed (on_connect)
        assert await words(server, 40358) == [60]  # InOutWRte_RvrtTms: the lease
        await driver.write_setpoint(-3000.0)  # discharge 3000 W = 29.296875 % of 10240 W, truncated to 29.29 %
        assert await words(server, 40355, 2) == [2929, 0x10000 - 2929]  # OutWRte +29.29 %, InWRte -29.29 %
        assert await words(server, 40348) == [3]  # StorCtl_Mod: both limits active
        await driver.write_setpoint(5120.0)  # charge 50 %
        assert await words(server, 40355, 2) == [0x10000 - 5000, 5000]
        assert await driver.write_setpoint(12000.0) == 10240.0  # beyond WChaMax: clamped to 100 %
        assert await words(server, 40355, 2) == [0x10000 - 10000, 10000]
