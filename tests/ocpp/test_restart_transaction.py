"""The agent restarts during an OCPP 2.1 transaction and loses nothing of it.

OCPP 2.1 cannot ask a station to repeat NotifyEVChargingNeeds, so the EV's departure, target and minimum must come
from the agent's own memory (the Store), and the transaction's register log must go on where it was: the energy
across the restart is booked once (an event resent across the restart is not counted twice, the step from the
last reading before to the first after is not lost). The whole agent (AgentApp, its CSMS over TLS, a real SQLite
state file) runs twice on the same file; the station is the `ocpp` library's own client (ocppkit).
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp import v21
from ocppkit import LibStation21, Pki, fill_site, lib_station
from sitekit import eventually

from agent.app import AgentApp
from agent.config import parse_config
from agent.model import Measurement
from agent.store import Store
from drivers.ocpp.evse import OcppEvseDriver
from sim_devices.ports import free_port_block

STATION = "CP001"
TX = "tx-restart"
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
CAPACITY_WH = 60_000.0

CONFIG = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
lease_timeout_s = 30.0
state_file = "{state}"
[control]
mode = "idle"
[ocpp]
enabled = true
host = "127.0.0.1"
port = {port}
cert_file = "{cert}"
key_file = "{key}"
password_file = "{passwords}"
[[assets]]
id = "ev1"
transport = "ocpp"
station = "CP001"
evse = 1
"""


class Clock:
    """The agent's clock, moved by the test in step with the station's timestamps."""

    def __init__(self, start: datetime) -> None:
        self.t = start

    def now(self) -> datetime:
        return self.t


def stamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def tx_event(seq_no: int, minutes: int, import_wh: float, kind: str = "Updated", offline: bool = False) -> Any:
    """A TransactionEvent metered `minutes` after T0: 6 kW into the EV, its import register, SoC 30 %."""
    when = stamp(T0 + timedelta(minutes=minutes))
    return v21.call.TransactionEvent(
        event_type=kind, timestamp=when, seq_no=seq_no, offline=offline,
        trigger_reason="CablePluggedIn" if kind == "Started" else "MeterValuePeriodic",
        transaction_info={"transaction_id": TX}, evse={"id": 1, "connector_id": 1},
        meter_value=[{"timestamp": when, "sampled_value": [
            {"value": 6000.0, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}},
            {"value": import_wh, "measurand": "Energy.Active.Import.Register", "unit_of_measure": {"unit": "Wh"}},
            {"value": 30.0, "measurand": "SoC", "unit_of_measure": {"unit": "Percent"}}]}])


def charging_needs(departure: datetime) -> Any:
    """60 kWh pack at 30 %: +30 kWh to the target (80 %), +6 kWh to the minimum (40 %), leaving at `departure`."""
    return v21.call.NotifyEVChargingNeeds(evse_id=1, charging_needs={
        "requested_energy_transfer": "DC_BPT", "departure_time": stamp(departure),
        "dc_charging_parameters": {"ev_max_current": 30, "ev_max_voltage": 400, "ev_energy_capacity": CAPACITY_WH,
                                   "state_of_charge": 30},
        "v2x_charging_parameters": {"ev_target_energy_request": 30_000, "ev_min_energy_request": 6_000,
                                    "max_charge_power": 11_000, "max_discharge_power": 11_000}})


@contextlib.asynccontextmanager
async def running_agent(text: str, clock: Clock) -> AsyncIterator[AgentApp]:
    """The whole agent, once its CSMS listens and the fleet has been polled."""
    app = AgentApp(parse_config(text, "restart.toml"), clock.now)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await asyncio.wait_for(app.first_cycle.wait(), 10)  # the CSMS starts before the first cycle
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def station(port: int, pki: Pki) -> contextlib.AbstractAsyncContextManager[LibStation21]:
    """The library station (OCPP 2.1) dialling in to the agent's CSMS on `port`."""
    return lib_station(types.SimpleNamespace(port=port), pki, STATION, "2.1")  # type: ignore[arg-type,return-value]


def ev_measurement(app: AgentApp) -> Measurement | None:
    return app.loop.fleet.assets["ev1"].measurement


def evse(app: AgentApp) -> OcppEvseDriver:
    driver = app.drivers["ev1"]
    assert isinstance(driver, OcppEvseDriver)
    return driver


async def test_a_restart_keeps_the_ev_needs_and_the_transaction_log(tmp_path: Path) -> None:
    port = free_port_block(1)
    state = tmp_path / "state.db"
    text, pki = fill_site(tmp_path, CONFIG, [STATION], port=port, state=state)
    clock = Clock(T0)
    departure = T0 + timedelta(hours=3)

    # the first agent: the transaction starts, the EV says its needs (once), two more meter values
    async with running_agent(text, clock) as first, station(port, pki) as cp:
        await cp.call(v21.call.BootNotification(charging_station={"model": "Lib", "vendor_name": "ocpp.v21"},
                                                reason="PowerUp"))
        await cp.call(v21.call.StatusNotification(timestamp=stamp(T0), connector_status="Occupied", evse_id=1,
                                                  connector_id=1))
        await cp.call(tx_event(0, 0, 1000.0, kind="Started"))
        assert (await cp.call(charging_needs(departure))).status == "Accepted"
        for seq_no, minutes, wh in ((1, 10, 2000.0), (2, 20, 3000.0)):
            clock.t = T0 + timedelta(minutes=minutes)
            await cp.call(tx_event(seq_no, minutes, wh))
        await eventually(lambda: (m := ev_measurement(first)) is not None and m.ev_departure is not None
                         and m.energy_import_wh == 3000.0, what="the first agent's EV session")  # fmt: skip
        before = ev_measurement(first)
        source = evse(first).tx_log.source  # type: ignore[union-attr]
    # the agent is gone (the station lost its CSMS): the station meters on and queues
    assert before is not None
    assert (before.ev_departure, before.ev_target_soc, before.ev_min_soc) == (
        departure, pytest.approx(0.8), pytest.approx(0.4))

    # the second agent on the same state file: the station reconnects (no reboot) and goes on
    clock.t = T0 + timedelta(minutes=50)
    async with running_agent(text, clock) as second, station(port, pki) as cp:
        await cp.call(tx_event(1, 10, 2000.0))  # resent across the restart: its answer was lost
        await cp.call(tx_event(3, 40, 5000.0, offline=True))  # queued while the CSMS was gone
        await cp.call(tx_event(4, 50, 5500.0))
        await eventually(lambda: (m := ev_measurement(second)) is not None and m.energy_import_wh == 5500.0,
                         what="the second agent polled the EVSE")  # fmt: skip
        after = ev_measurement(second)
        driver = evse(second)
        assert after is not None
        assert (after.ev_departure, after.ev_target_soc, after.ev_min_soc, after.capacity_wh) == (
            before.ev_departure, before.ev_target_soc, before.ev_min_soc, CAPACITY_WH)
        assert driver.transaction_id == TX and driver.tx_log is not None and driver.tx_log.source == source
        assert not driver.tx_log.missing  # seqNos 0..4 all accounted for: no gap, no second start
        assert not driver.ended_logs  # nothing ended, nothing started twice

    # the agents booked the register's own difference, once, to the intervals it was metered in
    store = Store(state)
    try:
        booked = store.load_asset_intervals(T0.timestamp(), (T0 + timedelta(hours=2)).timestamp())["ev1"]
    finally:
        store.close()
    assert sum(i for i, _ in booked.values()) == pytest.approx(5500.0 - 1000.0)
    # 10:00-10:20 2000 Wh, 10:20-10:40 2000 Wh spread evenly (half each side of 10:30), 10:40-10:50 500 Wh
    assert {t: i for t, (i, _) in booked.items()} == pytest.approx(
        {T0.timestamp(): 3000.0, (T0 + timedelta(minutes=30)).timestamp(): 1500.0})
