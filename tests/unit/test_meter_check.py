"""The site-meter plausibility check: believed, too high, too low, at the tolerance edge, no range, no reading, the
assets' power known only as an interval."""

from __future__ import annotations

import math

import pytest
from structlog.testing import capture_logs

from agent.config import SiteSettings
from agent.control.meter import MeterCheck, SiteRange, Uncontrolled, judge
from agent.control.safety import enforce_site_limits

# The demo site's range: base load 4..15 kW, PV up to 25 kW: the rest of the site draws -21..+15 kW, ±2 kW
SITE = SiteSettings(
    meter="meter", import_limit_w=60_000, export_limit_w=40_000, base_load_min_w=4_000, base_load_max_w=15_000,
    pv_max_w=25_000, meter_tolerance_w=2_000,
)  # fmt: skip
RANGE = SiteRange.from_settings(SITE)


def test_range_from_settings() -> None:
    assert SiteRange.from_settings(SITE) == SiteRange(-21_000, 15_000, 2_000)
    assert SiteRange.from_settings(SiteSettings(meter="meter", base_load_min_w=4_000, pv_max_w=25_000)) is None


def test_a_plausible_reading_is_used_exactly() -> None:
    # the meter reads 3 kW while the assets draw -5 kW: the rest of the site draws 8 kW, inside the range
    assert judge(3_000, -5_000, 0.0, RANGE) == (Uncontrolled(8_000, 8_000, 8_000), "believed")


def test_a_reading_too_high_is_not_believed() -> None:
    # +300 kW read with the assets at -5 kW: the rest of the site would draw 305 kW, 15 kW is the most it can
    result, state = judge(300_000, -5_000, 8_000.0, RANGE)
    assert state == "implausible"
    assert result == Uncontrolled(15_000, -21_000, 15_000)  # steer by the top, keep limits for the whole range


def test_a_reading_too_low_is_not_believed() -> None:
    result, state = judge(-300_000, 10_000, 8_000.0, RANGE)
    assert state == "implausible"
    assert result == Uncontrolled(-21_000, -21_000, 15_000)


def test_tolerance_edge() -> None:
    assert judge(17_000, 0.0, 0.0, RANGE)[1] == "believed"  # 15 kW + the 2 kW tolerance
    assert judge(17_000, 0.0, 0.0, RANGE)[0] == Uncontrolled.exactly(17_000)  # believed: used as read
    assert judge(17_001, 0.0, 0.0, RANGE)[1] == "implausible"
    assert judge(-23_000, 0.0, 0.0, RANGE)[1] == "believed"
    assert judge(-23_001, 0.0, 0.0, RANGE)[1] == "implausible"


def test_a_meter_not_believed_must_come_back_inside_the_range_itself() -> None:
    """No flapping at the tolerance edge: back within the tolerance is not enough once the meter was doubted."""
    assert judge(16_000, 0.0, 0.0, RANGE, believed_before=False)[1] == "implausible"
    assert judge(15_000, 0.0, 0.0, RANGE, believed_before=False)[1] == "believed"


def test_without_a_range_the_meter_is_always_believed() -> None:
    assert judge(300_000, -5_000, 0.0, None) == (Uncontrolled.exactly(305_000), "believed")


def test_no_reading_keeps_the_last_estimate_and_with_a_range_limits_against_all_of_it() -> None:
    assert judge(None, 0.0, 9_000.0, None) == (Uncontrolled.exactly(9_000), "missing")
    assert judge(None, 0.0, 9_000.0, RANGE) == (Uncontrolled(9_000, -21_000, 15_000), "missing")
    assert judge(None, 0.0, 40_000.0, RANGE)[0].value_w == 15_000  # the kept estimate, clamped into the range
    assert judge(math.nan, 0.0, 9_000.0, RANGE)[1] == "missing"  # not a number is no reading


def test_each_change_of_verdict_is_logged_once_and_the_problem_exposed() -> None:
    check = MeterCheck(SITE)
    with capture_logs() as logs:
        check.update(3_000, -5_000)
        assert check.problem is None
        for _ in range(5):
            check.update(300_000, -5_000)
        assert check.problem is not None and "300000 W" in check.problem and "-21000..15000 W" in check.problem
        check.update(None, -5_000)
        assert check.problem is not None and "no reading" in check.problem
        check.update(3_000, -5_000)
        assert check.problem is None
    events = [e["event"] for e in logs]
    assert events == ["meter.implausible", "meter.missing", "meter.plausible"]
    implausible = logs[0]
    assert (implausible["meter_w"], implausible["assets_w"]) == (300_000, -5_000)
    assert (implausible["range_low_w"], implausible["range_high_w"]) == (-21_000, 15_000)


def test_without_a_meter_the_range_bounds_the_limits() -> None:
    check = MeterCheck(SITE.model_copy(update={"meter": None}))
    assert check.update(None, 0.0) == Uncontrolled(0.0, -21_000, 15_000)  # no reading ever: the range bounds it
    assert check.problem is None  # nothing is wrong with a site that has no meter


@pytest.mark.parametrize("requested", [-200_000.0, -30_000.0, 0.0, 30_000.0, 200_000.0])
def test_site_limits_hold_for_every_value_in_the_range(requested: float) -> None:
    limited, _ = enforce_site_limits({"a": requested / 2, "b": requested / 2}, (-21_000, 15_000), 60_000, 40_000)
    total = sum(limited.values())
    for uncontrolled in (-21_000, 15_000):  # the site is linear in it: the ends of the range are the worst cases
        assert -40_000 - 1e-6 <= uncontrolled + total <= 60_000 + 1e-6


def test_with_the_assets_an_interval_the_last_estimate_holds_while_the_reading_allows_it() -> None:
    # base 0 W; an EV told -5000 W is on its way there, its last meter value (0 W) older than the meter's -2000 W:
    # steer by the last estimate, keep the limits for all the reading allows
    assert judge(-2_000, (-5_000, 0.0), 0.0, None) == (Uncontrolled(0.0, -2_000, 3_000), "believed")
    # read as if the old value were now, the rest of the site would export 2 kW and the rule would chase it
    assert judge(-2_000, 0.0, 0.0, None)[0].value_w == -2_000
    # the rest of the site rose by 8 kW: beyond what the EV's ramp can explain, the estimate moves to the nearer end
    assert judge(6_000, (-5_000, 0.0), 0.0, None)[0].value_w == 6_000
    assert judge(-9_000, (-5_000, 0.0), 0.0, None)[0].value_w == -4_000
    # with a range, the truth is also inside it: the interval is cut to it; the estimate 3 kW is believed
    assert judge(-2_000, (-5_000, 0.0), 3_000.0, RANGE) == (Uncontrolled(3_000, -2_000, 3_000), "believed")
    assert judge(12_000, (-5_000, 0.0), 14_000.0, RANGE) == (Uncontrolled(14_000, 12_000, 15_000), "believed")
    # believed within the tolerance just outside the range: the interval never excludes the estimate
    assert judge(16_000, (-1_000, 0.0), 16_500.0, RANGE) == (Uncontrolled(16_500, 16_000, 16_500), "believed")


def test_the_site_limits_hold_for_a_change_the_assets_interval_hides() -> None:
    """Import limit 60 kW: the rest of the site rose from 45 to 50 kW while an EV told 11 kW, last read at 3 kW, is
    somewhere between. Steered by the held 45 kW the rule would ask 15 kW; the limit holds for 50 kW as well."""
    uncontrolled, _ = judge(55_000, (3_000, 11_000), 45_000.0, None)
    assert uncontrolled == Uncontrolled(45_000, 44_000, 52_000)
    limited, _ = enforce_site_limits({"ev": 15_000}, (uncontrolled.low_w, uncontrolled.high_w), 60_000, 40_000)
    assert uncontrolled.high_w + limited["ev"] <= 60_000
