"""Issue 16 item 6: a device dead since the agent started, and a device that trips (status fault), are logged at
warning with the asset and the code; against the simulator over real Modbus TCP on loopback."""

from __future__ import annotations

import asyncio

from sitekit import eventually, running_site
from structlog.testing import capture_logs
from test_end_to_end import SITE


def _warnings(logs: list[dict[str, object]], event: str, asset_id: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == event and e.get("asset_id") == asset_id and e["log_level"] == "warning"]


async def test_a_device_dead_since_start_is_logged_unavailable_once() -> None:
    with capture_logs() as logs:
        async with running_site(SITE, 1, start_agent=False) as run:
            run.site.faults("bess").set_exception(4)  # answers every request with DEVICE_FAILURE from the start
            run.task = asyncio.create_task(run.loop.run(run.stop))
            await eventually(lambda: bool(_warnings(logs, "asset.unavailable", "bess")), what="bess unavailable")
            failures = run.loop.fleet.assets["bess"].consecutive_failures
            await eventually(
                lambda: run.loop.fleet.assets["bess"].consecutive_failures >= failures + 2, what="more failed polls"
            )
    (dead,) = _warnings(logs, "asset.unavailable", "bess")  # once, not at every failed poll
    assert dead["since_start"] is True and "4" in str(dead["error"]), dead


async def test_a_device_trip_is_a_warning_with_its_fault_code() -> None:
    with capture_logs() as logs:
        async with running_site(SITE, 1) as run:
            await eventually(lambda: run.loop.fleet.assets["ev"].available, what="ev polled")
            run.site.faults("ev").set_device_fault(42)
            await eventually(lambda: bool(_warnings(logs, "asset.fault", "ev")), what="ev trip logged")
            run.site.faults("ev").set_device_fault(None)
            await eventually(
                lambda: any(e["event"] == "asset.fault_cleared" and e.get("asset_id") == "ev" for e in logs),
                what="ev trip cleared",
            )
    (trip,) = _warnings(logs, "asset.fault", "ev")
    assert trip["fault_code"] == 42
