"""The control loop's read-back check against an OCPP 2.1 EVSE: a station pushes its meter values, so the freshest
value the agent holds may have been measured before the agent's last write. A meter value carrying the old
Power.Active.Setpoint that arrives after a new write is no mismatch (no `setpoint.mismatch`, no rewrite); one
measured after the write that disagrees still is. The station is the kit's `ocpp.v21.ChargePoint`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ocpp import v21
from ocppkit import fill_site, lib_station
from structlog.testing import capture_logs

from agent.config import parse_config
from agent.control.loop import ControlLoop
from agent.wiring import build_csms, build_drivers

SITE = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
lease_timeout_s = 30.0
setpoint_deadband_w = 20.0
[site]
import_limit_w = 100000.0
export_limit_w = 100000.0
[control]
mode = "site_target"
site_target_w = 0.0
[ocpp]
enabled = true
host = "127.0.0.1"
port = {ocpp_port}
cert_file = "{cert}"
key_file = "{key}"
password_file = "{passwords}"
[[assets]]
id = "ev"
transport = "ocpp"
station = "CP-RB"
rated_charge_w = 11000.0
rated_discharge_w = 11000.0
"""
TX = "tx-rb"


def _stamp(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(seq_no: int, measured: datetime, setpoint_w: float, power_w: float, kind: str = "Updated") -> Any:
    return v21.call.TransactionEvent(
        event_type=kind, timestamp=_stamp(measured), seq_no=seq_no,
        trigger_reason="CablePluggedIn" if kind == "Started" else "MeterValuePeriodic",
        transaction_info={"transaction_id": TX}, evse={"id": 1, "connector_id": 1},
        meter_value=[{"timestamp": _stamp(measured), "sampled_value": [
            {"value": power_w, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}},
            {"value": setpoint_w, "measurand": "Power.Active.Setpoint", "unit_of_measure": {"unit": "W"}}]}])


async def test_a_meter_value_measured_before_the_last_write_is_not_a_mismatch(tmp_path: Path) -> None:
    text, pki = fill_site(tmp_path, SITE, ["CP-RB"])
    config = parse_config(text, "readback.toml")
    now = lambda: datetime.now(UTC)  # noqa: E731 - the station stamps its values with the same (wall) clock
    drivers, pool = build_drivers(config, now)
    csms = build_csms(config, drivers, now)
    assert csms is not None
    await csms.start()
    loop = ControlLoop(config, drivers, clock=now)
    ev = loop.fleet.assets["ev"]

    async def cycles_until(check: Any, what: str) -> None:
        for _ in range(50):  # the loop's own cycles, one after another: no waiting on a clock
            await loop.cycle()
            if check():
                return
        raise AssertionError(f"not reached in 50 cycles: {what}")

    try:
        async with lib_station(csms, pki, "CP-RB", "2.1") as station:
            await station.call(v21.call.BootNotification(
                charging_station={"model": "Lib", "vendor_name": "ocpp.v21"}, reason="PowerUp"))
            await station.call(_event(0, now(), 0.0, 0.0, kind="Started"))

            loop.overrides["ev"] = 8000.0
            await cycles_until(lambda: station.tx_w == 8000.0, "8000 W written")
            await station.call(_event(1, now(), 8000.0, 8000.0))
            await loop.cycle()
            measured_before_write = now()  # the station samples its meter here ...

            loop.overrides["ev"] = 7488.2
            await cycles_until(lambda: station.tx_w == 7488.2, "7488.2 W written")
            writes = station.actions("SetChargingProfile") + station.actions("UpdateDynamicSchedule")
            with capture_logs() as logs:
                # ... and the value, with the old setpoint, reaches the agent after its new write
                await station.call(_event(2, measured_before_write, 8000.0, 8000.0))
                for _ in range(3):
                    await loop.cycle()
            assert [e for e in logs if e["event"] == "setpoint.mismatch"] == []
            assert ev.last_ok_monotonic is not None and ev.written_at_monotonic is not None
            assert ev.last_ok_monotonic > ev.written_at_monotonic  # the reading was taken after the write
            assert station.actions("SetChargingProfile") + station.actions("UpdateDynamicSchedule") == writes

            # measured after the write and still the old value: that is a mismatch, and the loop rewrites
            with capture_logs() as logs:
                await station.call(_event(3, now() + timedelta(milliseconds=1), 8000.0, 8000.0))
                await loop.cycle()
            [mismatch] = [e for e in logs if e["event"] == "setpoint.mismatch"]
            assert (mismatch["asset_id"], mismatch["device_w"], mismatch["written_w"]) == ("ev", 8000.0, 7488.2)
            assert len(station.actions("SetChargingProfile") + station.actions("UpdateDynamicSchedule")) \
                == len(writes) + 1
    finally:
        await csms.close()
        pool.close()
