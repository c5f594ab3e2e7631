"""EVtec BiDiPro 10 golden test (connector 1, base 100): words from the documented map (EV2Grid's, via V2G Liberty)
→ Measurement; setpoints → the exact int32 words; one request reads the connector."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from devicekit import device
from structlog.testing import capture_logs

from agent.config import parse_config
from agent.model import DeviceStatus
from agent.wiring import build_drivers
from drivers.registermap import load_map

CHARGING = {
    100: 0, 101: 7,  # connector state 7 = charging (s32, high word first)
    104: 0, 105: 5,  # session type 5 = bidirectional
    110: 0x45E1, 111: 0x0000,  # power +7200.0 W (f32)
    112: 0, 113: 450,  # SoC 450 per-mille
    122: 0xC61C, 123: 0x4000,  # lower limit potential -10000.0 W: V2G offered down to -10 kW
    130: 0x461C, 131: 0x4000,  # upper limit 10000.0 W
    138: 0x44BB, 139: 0x8000,  # lower limit (charge floor) 1500.0 W
    154: 0x0000, 155: 0x0002, 156: 0x0000, 157: 0x0001,  # error bits 33 and 0
    176: 0x5756, 177: 0x575A, 178: 0x5A5A, 179: 0x314B, 180: 0x5A37,  # car id "WVWZZZ1KZ7", NUL padded
    186: 0, 187: 7200,  # setpoint +7200 W
}
SPAN = (0, 199)


def test_connector_is_read_in_one_request() -> None:
    spans = load_map("evtec_bidipro10").spans
    assert [(s.address, s.count, s.function) for s in spans] == [(100, 88, 3)]


async def test_charging_state_reads_as_the_agent_sees_it() -> None:
    async with device("evtec_bidipro10", CHARGING, SPAN) as dev:
        m = await dev.driver.read()
        car_id = dev.driver.last_reading.extras["car_id"]
    assert m.status is DeviceStatus.CHARGING and m.ev_connected is True
    assert m.power_w == 7200.0
    assert m.soc == pytest.approx(0.45)
    assert m.max_charge_w == 10000.0 and m.max_discharge_w == 10000.0
    assert m.fault_code == 8589934593  # exact: a u64 is not squeezed through a float
    assert m.setpoint_w == 7200
    assert car_id == "WVWZZZ1KZ7"


async def test_plugged_but_not_yet_controllable_is_not_connected() -> None:
    words = {**CHARGING, 101: 5, 122: 0x0000, 123: 0x0000}  # plugged, preparing; no V2G offered (0.0 W)
    async with device("evtec_bidipro10", words, SPAN) as dev:
        m = await dev.driver.read()
    assert m.status is DeviceStatus.STANDBY and m.ev_connected is False
    assert m.max_discharge_w is None or m.max_discharge_w == 0.0


async def test_setpoints_and_lease_are_the_documented_int32_words() -> None:
    async with device("evtec_bidipro10", CHARGING, SPAN) as dev:
        await dev.driver.read()
        await dev.driver.write_lease_timeout(60)
        assert await dev.words(42, 2) == [0, 60]
        await dev.driver.write_setpoint(-6000.0)
        assert await dev.words(186, 2) == [0xFFFF, 0xE890]  # -6000 as s32
        await dev.driver.write_setpoint(1000.0)  # below the station's live charge floor of 1500 W
        assert await dev.words(186, 2) == [0, 0]
        await dev.driver.write_setpoint(2000.0)
        assert await dev.words(186, 2) == [0, 2000]


async def test_lease_longer_than_600_s_is_written_as_600() -> None:
    async with device("evtec_bidipro10", CHARGING, SPAN) as dev:
        with capture_logs() as logs:
            await dev.driver.write_lease_timeout(900)
        assert await dev.words(42, 2) == [0, 600]
    assert [e["written_s"] for e in logs if e["event"] == "asset.lease_clamped"] == [600]


async def test_connector_2_is_read_and_written_at_its_own_object() -> None:
    """An asset with `connector = 2` (config → factory): connector 2's object at 200..299, the charge point's
    timeout at 42 unchanged."""
    words = {a + 100: w for a, w in CHARGING.items()}
    words[201] = 8  # connector 2 discharging
    async with device("evtec_bidipro10", words, (0, 299)) as dev:
        config = parse_config(
            f'[[assets]]\nid = "c2"\nmap = "evtec_bidipro10"\nport = {dev.driver.gateway.port}\nconnector = 2\n'
        )
        drivers, pool = build_drivers(config, lambda: datetime.now(UTC))
        try:
            c2 = drivers["c2"]
            m = await c2.read()
            assert m.status is DeviceStatus.DISCHARGING and m.power_w == 7200.0
            await c2.write_lease_timeout(60)
            await c2.write_setpoint(-6000.0)
        finally:
            pool.close()
        assert await dev.words(286, 2) == [0xFFFF, 0xE890]
        assert await dev.words(186, 2) == [0, 0]  # connector 1's setpoint untouched
        assert await dev.words(42, 2) == [0, 60]
