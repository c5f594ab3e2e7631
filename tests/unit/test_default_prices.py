"""Prices the optimiser assumes where no price signal says otherwise: the configured time-of-use day, read in the
local time of `[events] timezone`, else the flat default; a price signal still wins where it covers a step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from agent.config import AppConfig, parse_config
from agent.dispatch.build import plan_inputs, profile_mean
from agent.fleet import Fleet
from agent.signals.models import PriceSeries

TOKYO = ZoneInfo("Asia/Tokyo")
HALF_HOURS = [float(k) for k in range(48)]  # the price is the half-hour's number: easy to read back


def prices(config: AppConfig, now: datetime, book: dict[str, dict[str, PriceSeries]] | None = None) -> list[float]:
    inputs, _ = plan_inputs(Fleet({}), config, now, book or {}, uncontrolled_w=0.0)
    return list(inputs.site.price_per_kwh)


def profiled(step_s: int = 1800, zone: str = "Asia/Tokyo") -> AppConfig:
    profile = ", ".join(f"{p:g}" for p in HALF_HOURS)
    return parse_config(
        f"[dispatch]\nstep_s = {step_s}\nhorizon_steps = 4\nprice_profile_per_kwh = [{profile}]\n"
        f'[events]\ntimezone = "{zone}"\n'
    )


def test_steps_take_the_profile_of_their_local_half_hour() -> None:
    now = datetime(2026, 12, 2, 10, 0, tzinfo=TOKYO).astimezone(UTC)  # 01:00 UTC, 10:00 in Tokyo: half-hour 20
    assert prices(profiled(), now) == [20, 21, 22, 23]
    berlin = datetime(2026, 12, 2, 10, 0, tzinfo=ZoneInfo("Europe/Berlin")).astimezone(UTC)
    assert prices(profiled(zone="Europe/Berlin"), berlin) == [20, 21, 22, 23]  # the zone is the config's


def test_an_hourly_step_pays_the_mean_of_its_half_hours_and_a_day_wraps_at_midnight() -> None:
    late = datetime(2026, 12, 2, 22, 0, tzinfo=TOKYO).astimezone(UTC)
    assert prices(profiled(step_s=3600), late) == [44.5, 46.5, 0.5, 2.5]  # 22:00-23:00 = (44 + 45) / 2, ...
    # a step that straddles a slot boundary is weighted by the time it spends in each slot
    assert profile_mean(HALF_HOURS, TOKYO, datetime(2026, 12, 2, 10, 15, tzinfo=TOKYO), 3600) == pytest.approx(
        (20 * 15 + 21 * 30 + 22 * 15) / 60
    )


def test_a_price_signal_overrides_the_profile_where_it_covers() -> None:
    now = datetime(2026, 12, 2, 10, 0, tzinfo=TOKYO).astimezone(UTC)
    signal = PriceSeries(id="p", start=now + timedelta(minutes=30), interval_s=1800, prices_per_kwh=[99.0])
    assert prices(profiled(), now, {"prices": {"p": signal}}) == [20, 99, 22, 23]


def test_without_a_profile_the_flat_default_stands() -> None:
    config = parse_config("[dispatch]\nhorizon_steps = 3\ndefault_price_per_kwh = 17.5\n")
    assert prices(config, datetime(2026, 12, 2, 1, 0, tzinfo=UTC)) == [17.5, 17.5, 17.5]
