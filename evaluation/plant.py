"""The simulator's physics driven by hand: no sockets, no wall clock, one planning step at a time.

The devices are sim_devices' own Battery and EVCharger on a sim_devices Site, so limits, ramps, losses, BMS tapers
and Xu ageing are exactly what the Modbus/MQTT simulators serve. The plant only adds what an evaluation needs:
setpoints held for a whole step (leases disabled), the step split at EV departures so each departing vehicle's
state of charge is read before the next one plugs in, and a record of what crossed each terminal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

import sim_devices.controllable as controllable
from evaluation.scenario import Scenario
from sim_devices.battery import Battery
from sim_devices.controllable import ControllableDevice
from sim_devices.ev_charger import EVCharger
from sim_devices.ev_sessions import EVSession
from sim_devices.scenarios import SessionSpec
from sim_devices.site import Site

# The simulator sub-steps at most 2 s to bound overshoot at BMS taper knees. A year at that resolution is ~10^8
# device sub-steps (too slow in Python); the evaluation holds each setpoint for a whole step and keeps the plan off
# the taper knees, so 30-s sub-steps change energies by far less than the figures are rounded to. The patch is
# scoped: `fast_substeps()` restores the simulator's value on exit.
EVAL_SUBSTEP_S = 30.0


@contextlib.contextmanager
def fast_substeps(substep_s: float = EVAL_SUBSTEP_S) -> Iterator[None]:
    saved = controllable.MAX_SUBSTEP_S
    controllable.MAX_SUBSTEP_S = substep_s
    try:
        yield
    finally:
        controllable.MAX_SUBSTEP_S = saved


@dataclass(frozen=True)
class Departure:
    """An EV that left during a step: what it had and what its owner wanted."""

    charger_id: str
    session: EVSession
    soc: float


@dataclass(frozen=True)
class RegulationRecord:
    """What following the regulation signal asked for and got over one step, per signal sample (W, + = up, i.e.
    more power into the grid than the step's setpoints)."""

    target_w: np.ndarray  # signal x reserved power of its side, summed over the regulating devices
    response_w: np.ndarray  # what those devices did beyond their setpoints (mean over each sample)
    capacity_w: float  # the larger side's reservation: normalises both for the performance score
    up_w: float
    down_w: float


@dataclass
class StepRecord:
    """What the physics did over one step (Wh at terminals, + import)."""

    site_wh: float
    base_wh: float
    device_wh: dict[str, float]
    discharged_wh: dict[str, float]  # terminal export of each device this step (>= 0)
    departures: list[Departure] = field(default_factory=list)
    regulation: RegulationRecord | None = None
    # batteries' SoC after each regulation sample (only in regulating steps): the cycles BLAST-Lite must see
    soc_path: dict[str, np.ndarray] = field(default_factory=dict)


class Plant:
    """The site of a scenario, advanced by `step(setpoints)`."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        fleet = scenario.fleet
        self.site = Site(scenario.start, base_load_w=float(scenario.base_load_w[0]))
        self.batteries: dict[str, Battery] = {}
        self.chargers: dict[str, EVCharger] = {}
        self.devices: dict[str, ControllableDevice] = {}
        for b in fleet.batteries:
            battery = Battery(
                capacity_wh=b.capacity_wh,
                soc=b.soc,
                rated_charge_w=b.power_w,
                rated_discharge_w=b.power_w,
                efficiency=b.efficiency,
                temperature_c=b.temperature_c,
                lease_timeout_s=0.0,
            )
            self.batteries[b.id] = battery
            self.site.add_device(b.id, battery)
            self.devices[b.id] = battery
        for c in fleet.chargers:
            sessions = [_sim_session(s, scenario) for s in scenario.sessions.get(c.id, [])
                        if _departs_after_start(s, scenario)]
            charger = EVCharger(
                sessions,
                rated_charge_w=c.power_w,
                rated_discharge_w=c.power_w,
                efficiency=c.efficiency,
                lease_timeout_s=0.0,
                start_unix_s=self.site.start_unix_s,
            )
            self.chargers[c.id] = charger
            self.site.add_device(c.id, charger)
            self.devices[c.id] = charger
        self.k = 0

    @property
    def t_s(self) -> float:
        return self.site.t_s

    def step(
        self,
        setpoints: dict[str, float],
        reserve_up_w: dict[str, float] | None = None,
        reserve_down_w: dict[str, float] | None = None,
    ) -> StepRecord:
        """Hold `setpoints` (W, + charge; the devices clamp them to their live limits) for one step; devices with
        a reservation follow the regulation signal around their setpoint, sample by sample."""
        step_s = self.scenario.step_s
        self.site.base_load_w = float(self.scenario.base_load_w[self.k])
        for device_id, device in self.devices.items():
            device.write_setpoint(float(setpoints.get(device_id, 0.0)))
        before = {i: (d.import_wh, d.export_wh) for i, d in self.devices.items()}
        base_before = self.site.base_load_energy_wh
        departures: list[Departure] = []
        up = {i: w for i, w in (reserve_up_w or {}).items() if w > 0 and i in self.devices}
        down = {i: w for i, w in (reserve_down_w or {}).items() if w > 0 and i in self.devices}
        regulation = None
        soc_path: dict[str, np.ndarray] = {}
        if (up or down) and self.scenario.offers_regulation:
            site_wh, regulation, soc_path = self._follow(setpoints, up, down, departures)
        else:
            site_wh = self._advance(self.t_s + step_s, departures)
        device_wh, discharged = {}, {}
        for device_id, d in self.devices.items():
            imp0, exp0 = before[device_id]
            device_wh[device_id] = (d.import_wh - imp0) - (d.export_wh - exp0)
            discharged[device_id] = d.export_wh - exp0
        self.k += 1
        return StepRecord(
            site_wh, self.site.base_load_energy_wh - base_before, device_wh, discharged, departures, regulation,
            soc_path,
        )

    def _advance(self, end: float, departures: list[Departure]) -> float:
        """Run the physics to sim time `end`, split at EV departures and arrivals; returns the site meter's Wh."""
        site_wh = 0.0
        while end - self.t_s > 1e-9:
            chunk_end = end
            for charger in self.chargers.values():
                event = charger.next_event_s()
                if event is not None and self.t_s < event < chunk_end:
                    chunk_end = event
            plugged = {i: (c.session, c) for i, c in self.chargers.items()}
            site_wh += self.site.step(chunk_end - self.t_s)
            for charger_id, (session, charger) in plugged.items():
                if session is not None and charger.session is not session:
                    departures.append(Departure(charger_id, session, charger.soc))
        return site_wh

    def _follow(
        self, setpoints: dict[str, float], up: dict[str, float], down: dict[str, float], departures: list[Departure]
    ) -> tuple[float, RegulationRecord, dict[str, np.ndarray]]:
        """One step following the regulation signal: each sample, every reserving device is set to its setpoint
        minus signal x its reservation of that side (+ signal = up = discharge)."""
        samples = self.scenario.regulation_samples(self.k)
        dt = self.scenario.step_s / len(samples)
        ids = sorted(set(up) | set(down))
        target = np.zeros(len(samples))
        response = np.zeros(len(samples))
        soc = {i: np.zeros(len(samples)) for i in self.batteries}
        site_wh = 0.0
        for j, signal in enumerate(samples):
            moved = 0.0
            for i in ids:
                reserved = up.get(i, 0.0) if signal >= 0 else down.get(i, 0.0)
                moved += signal * reserved
                self.devices[i].write_setpoint(float(setpoints.get(i, 0.0)) - signal * reserved)
            target[j] = moved
            before = {i: self.devices[i].import_wh - self.devices[i].export_wh for i in ids}
            site_wh += self._advance(self.t_s + dt, departures)
            done_wh = sum(self.devices[i].import_wh - self.devices[i].export_wh - before[i] for i in ids)
            # delivered up = planned power minus what the devices drew
            response[j] = sum(float(setpoints.get(i, 0.0)) for i in ids) - done_wh * 3600.0 / dt
            for i, battery in self.batteries.items():
                soc[i][j] = battery.soc
        up_w, down_w = sum(up.values()), sum(down.values())
        record = RegulationRecord(target, response, max(up_w, down_w), up_w, down_w)
        return site_wh, record, soc


def _departs_after_start(s: SessionSpec, scenario: Scenario) -> bool:
    return (s.departure - scenario.start).total_seconds() > 0


def _sim_session(s: SessionSpec, scenario: Scenario) -> EVSession:
    """A scenario SessionSpec as the simulator's EVSession (times in seconds from the run's start)."""
    return EVSession(
        arrival_s=max(0.0, (s.arrival - scenario.start).total_seconds()),
        departure_s=(s.departure - scenario.start).total_seconds(),
        capacity_wh=s.capacity_wh,
        soc=s.arrival_soc,
        target_soc=s.target_soc,
        min_soc=s.min_soc,
    )
