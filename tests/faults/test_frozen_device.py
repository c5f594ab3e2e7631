"""Frozen registers over the wire: the simulator's `frozen` fault (a stuck gateway cache: registers stop refreshing
while the physics goes on) against the agent's real drivers and loop.

A frozen battery and a frozen EV charging at power are detected and get no setpoints (seen from the simulator: its
endpoint takes no more writes and the device's lease lapses to 0 W); when their registers move again they are back
in service; a healthy battery at the same power, polled over the same connection, is never called frozen.
Device time is a ManualClock moved by the test, so the evidence the agent gathers is exact and needs no waiting.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sitekit import Running, eventually, running_site
from structlog.testing import capture_logs

from sim_devices.clock import ManualClock

SITE = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.15
unavailable_after = 5  # a poll lost to a loaded machine must not take the healthy battery out
max_backoff_s = 0.4
lease_timeout_s = 120.0
setpoint_deadband_w = 20.0
[control]
mode = "idle"  # every asset follows its override (set by the test); nothing else moves it
[[assets]]
id = "bess"
map = "vppsim_battery"
port = {port}
[[assets]]
id = "healthy"
map = "vppsim_battery"
port = {port}
unit_id = 2
[[assets]]
id = "ev"
map = "vppsim_v2g_dc"
port = {port}
unit_id = 3

[simulation]
base_load_w = 0.0
pv_peak_w = 0.0
[[simulation.devices]]
id = "bess"
model = "vppsim_battery"
port = {port}
[simulation.devices.params]
soc = 0.2
[[simulation.devices]]
id = "healthy"
model = "vppsim_battery"
port = {port}
unit_id = 2
[simulation.devices.params]
soc = 0.2
[[simulation.devices]]
id = "ev"
model = "vppsim_v2g_dc"
port = {port}
unit_id = 3
[simulation.devices.params]
sessions = [{ arrival_s = 0, departure_s = 86400, capacity_kwh = 60, soc = 0.3, target_soc = 0.9, min_soc = 0.2 }]
"""

STEP_S = 20.0  # device seconds per round: well inside the 120 s lease, so a device written each round never lapses
POWER_W = {"bess": 30_000.0, "healthy": 30_000.0, "ev": 7_000.0}


async def round_(run: Running, n: int) -> None:
    """One round: new overrides (alternating by 100 W, past the deadband, so every operable asset is written each
    round), STEP_S of device time, then two polls of every asset (one in flight during the step may predate it)."""
    for asset_id, watts in POWER_W.items():
        run.loop.set_override(asset_id, watts + 100.0 * (n % 2))
    assets = run.loop.fleet.assets
    before = {k: s.polls_ok + s.polls_failed for k, s in assets.items()}
    run.site.step(STEP_S)
    await eventually(
        lambda: all(s.polls_ok + s.polls_failed >= before[k] + 2 for k, s in assets.items()),
        what="every asset polled after the step",
    )


async def test_frozen_battery_and_ev_get_no_setpoints_until_they_move_again() -> None:
    clock = ManualClock(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))
    with capture_logs() as logs:
        async with running_site(SITE, 1, clock=clock) as run:
            fleet, site = run.loop.fleet, run.site
            bess, ev, healthy = (fleet.assets[k] for k in ("bess", "ev", "healthy"))
            n = 0
            for n in range(1, 7):  # two minutes of charging: every register has been seen to move
                await round_(run, n)
            assert all(s.available and s.measurement is not None for s in (bess, ev, healthy))
            assert bess.measurement.power_w > 29_000 and ev.measurement.power_w > 6_900  # type: ignore[union-attr]

            site.faults("bess").set_frozen()
            site.faults("ev").set_frozen()
            started = clock.seconds()
            while bess.available or ev.available:
                n += 1
                assert clock.seconds() - started < 1800, "frozen devices still in service after 30 min of device time"
                await round_(run, n)
            detected_after_s = clock.seconds() - started
            assert bess.frozen and ev.frozen
            assert (bess.last_error or "").startswith("frozen: soc stood at")
            assert not healthy.frozen

            # no more setpoints: the simulator takes no writes and the leases lapse to 0 W
            await round_(run, n + 1)
            n += 1
            writes = {k: site.endpoints[k].writes for k in POWER_W}
            for _ in range(8):  # 160 s > the 120 s lease
                n += 1
                await round_(run, n)
            assert site.endpoints["bess"].writes == writes["bess"] and site.endpoints["ev"].writes == writes["ev"]
            for frozen_id in ("bess", "ev"):
                physics = run.device(frozen_id)
                assert physics.lease.setpoint_w == 0.0 and physics.power_w == 0.0, frozen_id
            assert site.endpoints["healthy"].writes > writes["healthy"]  # the healthy one is steered on
            assert run.device("healthy").power_w >= 30_000.0 and not healthy.frozen

            # registers move again: back in service, written again
            site.faults("bess").set_frozen(False)
            site.faults("ev").set_frozen(False)
            n += 1
            await round_(run, n)
            assert bess.available and ev.available and not bess.frozen and not ev.frozen
            await eventually(
                lambda: run.device("bess").lease.setpoint_w >= 30_000.0 and run.device("ev").lease.setpoint_w >= 7_000,
                what="unfrozen devices written again",
            )
            assert site.endpoints["bess"].writes > writes["bess"] and site.endpoints["ev"].writes > writes["ev"]
            # the healthy battery charged through all of it, far longer than the frozen ones needed to be caught
            assert clock.seconds() > 3 * detected_after_s
            assert run.device("healthy").soc > 0.2 + 0.02

    by_asset = [(entry["event"], entry["asset_id"]) for entry in logs if entry["event"].startswith("asset.")]
    for frozen_id in ("bess", "ev"):
        assert by_asset.count(("asset.frozen", frozen_id)) == 1  # once, with its evidence
        assert by_asset.count(("asset.unfrozen", frozen_id)) == 1
    assert ("asset.frozen", "healthy") not in by_asset
    evidence = next(e for e in logs if e["event"] == "asset.frozen" and e["asset_id"] == "bess")
    assert evidence["field"] == "soc" and evidence["power_w"] >= 29_000 and evidence["expected_change"] > 0
