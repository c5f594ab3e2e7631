"""A lying site meter cannot push the true site past its limits: checked on the simulator's physics, not the agent.

The shipped site (4 V2G chargers, 2 batteries, 60 kW import / 40 kW export, base load 8 kW, PV up to 20 kW) in
site_target mode; once the agent steers it, the site meter starts reporting 300 kW more (or less) than flows. A
meter believed blindly made the rule discharge (or charge) everything: the true site went 144 kW into export.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sitekit import eventually, running_site, shipped_config_on_free_ports
from structlog.testing import capture_logs


def shipped_site_target(tmp_path: Path) -> str:
    """config.toml on free ports in site_target mode, cycling 4x faster (the test waits for fewer wall seconds),
    starting at noon local time (PV producing)."""
    text = shipped_config_on_free_ports(tmp_path).read_text()
    for old, new in (
        ('mode = "dispatch"', 'mode = "site_target"'),
        ("poll_period_s = 1.0 ", "poll_period_s = 0.25 "),
        ("poll_timeout_s = 0.5 ", "poll_timeout_s = 0.2 "),
        ("utc_offset_h = 9\n", "utc_offset_h = 9\nstart = 2026-11-23T12:00:00+09:00\n"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("offset_w", [300_000.0, -300_000.0])
async def test_the_true_site_stays_within_its_limits_while_the_meter_lies(tmp_path: Path, offset_w: float) -> None:
    async with running_site(shipped_site_target(tmp_path), 1, start_agent=False) as run:
        site = run.config.site
        physics = run.site.site
        true_site_w: list[float] = []
        step = physics.step

        def recording_step(dt_s: float) -> float:  # the true power at the connection point after every tick
            energy = step(dt_s)
            true_site_w.append(physics.bus_power_w)
            return energy

        physics.step = recording_step  # type: ignore[method-assign]
        run.task = asyncio.create_task(run.loop.run(run.stop))
        meter = run.site.endpoints["meter-site"]
        await eventually(lambda: run.loop.cycles >= 4, what="the agent steering on an honest meter")
        with capture_logs() as logs:
            run.site.faults("meter-site").set_offset(offset_w)
            lied_from = meter.reads
            await eventually(lambda: meter.reads > lied_from, what="the agent read the lying meter")
            cycles = run.loop.cycles
            await eventually(lambda: run.loop.cycles >= cycles + 2, what="the agent acted on the reading")
            first = len(true_site_w)
            await eventually(lambda: run.loop.cycles >= cycles + 24, timeout_s=60, what="24 more cycles (6 s)")
            observed = true_site_w[first:]
        assert observed
        worst_export, worst_import = min(observed), max(observed)
        assert -site.export_limit_w <= worst_export and worst_import <= site.import_limit_w, (
            f"true site {worst_export:.0f}..{worst_import:.0f} W against -{site.export_limit_w:.0f}.."
            f"{site.import_limit_w:.0f} W"
        )
        assert [e["event"] for e in logs].count("meter.implausible") == 1  # once for the episode, not per cycle
        assert run.loop.meter_problem is not None
        # and the agent still steers: the assets are not merely stopped
        assert any(abs(run.device(k).power_w) > 1000 for k in ("bess1", "bess2", "ev1", "ev2", "ev3", "ev4"))
