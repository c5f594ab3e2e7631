"""A simulated site: devices and meters on one DC bus, plus a base load and PV.

The Site is the only place time advances. It steps every device with the same dt and books the summed terminal
energy into the meters, so a site meter's net energy equals Σ device energy + base-load energy − PV energy by
construction, not by a calibration that could drift.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Protocol

from sim_devices.meter import DCMeter
from sim_devices.pv import PVProfile


class SteppedDevice(Protocol):
    """What the Site needs from a controllable device."""

    kind: str
    power_w: float

    def step(self, dt_s: float) -> float: ...

    def fields(self) -> dict[str, float]: ...


class Site:
    """Owns the physics of one bus. `start` is the aware datetime of sim time 0."""

    def __init__(
        self,
        start: datetime,
        *,
        base_load_w: float = 3000.0,
        pv_peak_w: float = 0.0,
        utc_offset_h: float = 9.0,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError(f"site start {start.isoformat()} must be timezone-aware")
        self.start = start
        self.start_unix_s = start.timestamp()
        self.base_load_w = float(base_load_w)
        self.pv = PVProfile(pv_peak_w, self.start_unix_s, utc_offset_h)
        self.t_s = 0.0
        self.devices: dict[str, SteppedDevice] = {}
        self.meters: dict[str, DCMeter] = {}
        # Totals for audits: what went through each part of the bus since start.
        self.device_energy_wh = 0.0
        self.base_load_energy_wh = 0.0
        self.pv_energy_wh = 0.0

    def add_device(self, device_id: str, device: SteppedDevice) -> None:
        self._check_new(device_id)
        self.devices[device_id] = device

    def add_meter(self, meter_id: str, meter: DCMeter) -> None:
        self._check_new(meter_id)
        meter.record(0.0, self._bus_power_w() if meter.measures == "site" else -self.pv.power_w(self.t_s))
        self.meters[meter_id] = meter

    def _check_new(self, ident: str) -> None:
        if ident in self.devices or ident in self.meters:
            raise ValueError(f"duplicate device id {ident!r}")

    def get(self, ident: str) -> SteppedDevice | DCMeter:
        return self.devices[ident] if ident in self.devices else self.meters[ident]

    def _bus_power_w(self) -> float:
        return math.fsum(d.power_w for d in self.devices.values()) + self.base_load_w - self.pv.power_w(self.t_s)

    @property
    def bus_power_w(self) -> float:
        """Instantaneous net power at the site's grid connection (+ import)."""
        return self._bus_power_w()

    def step(self, dt_s: float) -> float:
        """Advance everything by dt sim-seconds; return the site's net energy in Wh (+ import)."""
        if dt_s < 0 or not math.isfinite(dt_s):
            raise ValueError(f"step dt must be a finite number >= 0, got {dt_s!r}")
        t0, t1 = self.t_s, self.t_s + dt_s
        devices_wh = math.fsum(d.step(dt_s) for d in self.devices.values())
        base_wh = self.base_load_w * dt_s / 3600.0
        pv_wh = self.pv.energy_wh(t0, t1)
        self.t_s = t1
        self.device_energy_wh += devices_wh
        self.base_load_energy_wh += base_wh
        self.pv_energy_wh += pv_wh
        site_wh = devices_wh + base_wh - pv_wh
        bus_w = self._bus_power_w()
        pv_w = self.pv.power_w(t1)
        for meter in self.meters.values():
            if meter.measures == "site":
                meter.record(site_wh, bus_w)
            else:
                meter.record(-pv_wh, -pv_w)
        return site_wh
