"""Building physics objects from a validated simulation config.

Kept apart from the runner so tests can build a Site without sockets, and so each kind's params map onto its
constructor in one visible place.
"""

from __future__ import annotations

import random
from datetime import datetime

from sim_devices.battery import Battery
from sim_devices.config import BatteryParams, DeviceGroupConfig, EVChargerParams, MeterParams, SimulationConfig
from sim_devices.ev_charger import EVCharger
from sim_devices.ev_sessions import EVSession, generate_sessions
from sim_devices.meter import DCMeter
from sim_devices.site import Site


def session_rng(seed: int, device_id: str) -> random.Random:
    """A generator per device, stable across runs and independent of the order devices are listed in."""
    return random.Random(f"{seed}:{device_id}")


def build_device(group: DeviceGroupConfig, device_id: str, seed: int, start_unix_s: float
                 ) -> EVCharger | Battery | DCMeter:
    params = group.physics()
    if isinstance(params, EVChargerParams):
        if params.sessions is not None:
            sessions = [
                EVSession(arrival_s=s.arrival_s, departure_s=s.departure_s, capacity_wh=s.capacity_kwh * 1000.0,
                          soc=s.soc, target_soc=s.target_soc, min_soc=s.min_soc)
                for s in params.sessions
            ]
            source = iter(sessions)
        else:
            source = generate_sessions(session_rng(seed, device_id), start_empty=params.start_empty)
        return EVCharger(source, rated_charge_w=params.rated_charge_w, rated_discharge_w=params.rated_discharge_w,
                         ramp_w_per_s=params.ramp_w_per_s, efficiency=params.efficiency,
                         lease_timeout_s=params.lease_timeout_s, start_unix_s=start_unix_s)
    if isinstance(params, BatteryParams):
        return Battery(capacity_wh=params.capacity_kwh * 1000.0, soc=params.soc,
                       rated_charge_w=params.rated_charge_w, rated_discharge_w=params.rated_discharge_w,
                       ramp_w_per_s=params.ramp_w_per_s, efficiency=params.efficiency,
                       temperature_c=params.temperature_c, lease_timeout_s=params.lease_timeout_s)
    assert isinstance(params, MeterParams)
    return DCMeter(measures=params.measures, rated_power_w=params.rated_power_w,
                   nominal_voltage_v=params.nominal_voltage_v, bus_resistance_ohm=params.bus_resistance_ohm)


def build_site(config: SimulationConfig, start: datetime) -> Site:
    """The physics of the whole configured site, devices in config order."""
    site = Site(start, base_load_w=config.base_load_w, pv_peak_w=config.pv_peak_w, utc_offset_h=config.utc_offset_h)
    for group, placement in config.placements():
        # an OCPP station with several EVSEs has one physics per EVSE (config.DeviceGroupConfig.evse_ids)
        for device_id in group.evse_ids(placement.id) if group.transport == "ocpp" else [placement.id]:
            device = build_device(group, device_id, config.seed, site.start_unix_s)
            if isinstance(device, DCMeter):
                site.add_meter(device_id, device)
            else:
                site.add_device(device_id, device)
    return site
