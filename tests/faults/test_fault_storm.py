"""A storm of device faults against the shipped agent (dispatch mode), judged on the devices' side: no setpoint is
ever written outside a device's nameplate, the agent stays up, and once the faults clear every device that failed
is back under control within 3 of its own polls.

Faults, one device at a time on a seeded timeline: offline, slow (answers after the poll timeout), Modbus
exceptions, frozen registers, a device trip, and a site meter that lies by hundreds of kW.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from faultkit import controllable, simulated_site, site_config, writes_outside_nameplate
from sitekit import agent_process, eventually

from drivers.registermap import load_map
from sim_devices.faults import apply_fault

STORM_S = 30.0
SEED = 11


def storm_plan(devices: list[str], rng: random.Random) -> list[tuple[str, str, float | None, float]]:
    """(device, fault kind, value, seconds held) in order."""
    plan = []
    for _ in range(int(STORM_S / 3)):
        device = rng.choice(devices)
        kind = rng.choice(["offline", "slow", "exception", "frozen", "device"])
        value = {"slow": 0.7, "device": 7.0}.get(kind)
        plan.append((device, kind, value, rng.uniform(1.5, 4.0)))
    plan.insert(len(plan) // 2, ("meter-site", "offset", 300_000.0, 4.0))
    return plan


async def test_a_fault_storm_never_gets_a_setpoint_past_a_nameplate_and_the_agent_stays_up(tmp_path: Path) -> None:
    config = site_config(tmp_path, None)
    async with simulated_site(config) as site, agent_process(config) as agent:
        devices = controllable(site)
        await eventually(lambda: all(d.writes_total > 0 for d in devices.values()), 60, "every device written")
        for device, kind, value, held_s in storm_plan(sorted(devices), random.Random(SEED)):
            apply_fault(site.faults(device), kind, value)
            await asyncio.sleep(held_s)  # the storm's own timeline: how long a fault lasts, not a wait for a state
            site.faults(device).clear()
        assert agent.proc is not None and agent.proc.returncode is None  # still running
        assert writes_outside_nameplate(site) == {}
        assert not agent.logged("cycle.failed") and not agent.logged("dispatch.crashed")
        assert agent.logged("meter.implausible")


async def test_a_device_back_from_a_communication_fault_is_under_control_within_3_of_its_polls(
    tmp_path: Path,
) -> None:
    """Counted on the device: read requests it answered (÷ requests per poll of its map) from the moment the fault
    cleared to the first write the agent makes to it (the lease and setpoint it rewrites to a returning device)."""
    config = site_config(tmp_path, None)
    async with simulated_site(config) as site, agent_process(config) as agent:
        devices = controllable(site)
        await eventually(lambda: all(d.writes_total > 0 for d in devices.values()), 60, "every device written")
        models = {placement.id: group.model for group, placement in site.config.placements()}
        polls_to_recover: dict[str, float] = {}
        for device, kind, value in (("bess1", "offline", None), ("ev2", "exception", None), ("bess2", "slow", 0.7),
                                    ("ev4", "offline", None)):  # fmt: skip
            endpoint = site.endpoints[device]
            went_out = len(agent.logged("asset.unavailable", asset_id=device))
            apply_fault(site.faults(device), kind, value)
            await agent.wait_logged("asset.unavailable", asset_id=device) if went_out == 0 else await eventually(
                lambda: len(agent.logged("asset.unavailable", asset_id=device)) > went_out, 60, "out"  # noqa: B023
            )
            reads, writes = endpoint.reads, endpoint.writes
            site.faults(device).clear()
            await eventually(lambda: endpoint.writes > writes, 120, f"{device} written again")  # noqa: B023
            polls_to_recover[f"{device} {kind}"] = (endpoint.reads - reads) / len(load_map(models[device]).spans)
        assert max(polls_to_recover.values()) <= 3, polls_to_recover
        assert writes_outside_nameplate(site) == {}
