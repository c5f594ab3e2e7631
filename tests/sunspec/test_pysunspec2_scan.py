"""Independent check: pysunspec2's own client scans the simulated SunSpec images (both firmware orders) and reads
the documented values, so the image is SunSpec as a third-party client understands it, not as our driver does."""

from __future__ import annotations

import asyncio

import pytest
from sunspeckit import HOST, served

from sim_devices.sunspec.image import model_order


def scan(port: int) -> dict[str, object]:
    import sunspec2.modbus.client as client

    device = client.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr=HOST, ipport=port, timeout=5)
    try:
        device.scan()
        out: dict[str, object] = {"order": [m for m in device.model_list if isinstance(m.model_id, int)]}
        out["ids"] = [m.model_id for m in out["order"]]  # type: ignore[attr-defined]
        for model in out["order"]:  # type: ignore[attr-defined]
            model.read()
        out["device"] = device
        return out
    finally:
        device.close()


@pytest.mark.parametrize("order", ["a", "b"])
async def test_pysunspec2_scans_the_battery_inverter(order: str) -> None:
    async with served("sunspec_battery_inverter", order) as sim:
        sim.physics.write_setpoint(-20_000.0)
        sim.step(5.0)
        result = await asyncio.to_thread(scan, sim.port)
    device = result["device"]
    assert result["ids"] == list(model_order("sunspec_battery_inverter", order))
    m701 = device.models[701][0]
    assert m701.W.cvalue == pytest.approx(20_000.0, abs=10)  # discharging = generation, positive in SunSpec
    assert m701.InvSt.value == 3  # RUNNING
    assert device.models[713][0].SoC.cvalue == pytest.approx(100 * sim.physics.soc, abs=0.1)
    assert device.models[702][0].WChaRteMaxRtg.cvalue == 50_000.0
    assert device.models[702][0].WDisChaRteMaxRtg.cvalue == 40_000.0
    assert device.models[124][0].WChaMax.cvalue == 50_000.0
    assert device.models[802][0].ChaSt.value == 3  # DISCHARGING
    assert device.models[1][0].SN.value == "sunspec_battery_inverter-1"


@pytest.mark.parametrize("order", ["a", "b"])
async def test_pysunspec2_scans_the_v2g_charger_with_its_ev_port(order: str) -> None:
    async with served("sunspec_v2g_charger", order) as sim:
        sim.physics.write_setpoint(7_000.0)
        sim.step(5.0)
        result = await asyncio.to_thread(scan, sim.port)
    device = result["device"]
    assert result["ids"] == list(model_order("sunspec_v2g_charger", order))
    m714 = device.models[714][0]
    assert m714.NPrt.value == 1
    port = m714.Prt[0]
    assert port.PrtTyp.value == 2 and port.DCSta.value == 1  # EV port, ON
    assert port.DCW.cvalue == pytest.approx(-7_000.0, abs=10)  # absorbing
    assert device.models[701][0].W.cvalue == pytest.approx(-7_000.0, abs=10)


async def test_pysunspec2_writes_move_the_physics() -> None:
    """pysunspec2 writing 704 WSet (its own encoding of the scale factor) moves the simulated battery."""
    async with served("sunspec_battery_inverter") as sim:

        def command() -> None:
            import sunspec2.modbus.client as client

            device = client.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr=HOST, ipport=sim.port, timeout=5)
            try:
                device.scan()
                ctl = device.models[704][0]
                ctl.read()
                ctl.WSet.cvalue = -12_000  # absorb 12 kW = charge
                ctl.WSetMod.value = 1
                ctl.WSetEna.value = 1
                ctl.write()
            finally:
                device.close()

        await asyncio.to_thread(command)
        sim.step(2.0)
    assert sim.physics.power_w == pytest.approx(12_000.0)
