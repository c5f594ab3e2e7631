"""The assets' power at the site meter's moment: a reading from the poll is the present; an older one is when it
shows the asset at its setpoint or was measured `response_s` after the setpoint was told; otherwise the asset lies
between reading and setpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.config import AssetConfig
from agent.control.assets_now import assets_power
from agent.fleet import AssetState
from agent.model import AssetKind, Measurement

POLL = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)  # when the poll that read the meter began
OLD = POLL - timedelta(seconds=3)  # an OCPP meter value pushed 3 s before it
RESPONSE_S, TOLERANCE_W = 5.0, 50.0


def asset(asset_id: str, power_w: float, read_at: datetime, told_w: float | None, told_s_before_poll: float = 4.0,
          commanded_w: float | None = None) -> AssetState:  # fmt: skip
    state = AssetState(asset_id, AssetKind.EV_CHARGER, AssetConfig(id=asset_id, map="vppsim_v2g_dc"),
                       measurement=Measurement(asset_id, read_at, power_w=power_w), available=True)  # fmt: skip
    state.written_setpoint_w, state.commanded_setpoint_w = told_w, commanded_w
    state.told_at = None if told_w is None else POLL - timedelta(seconds=told_s_before_poll)
    return state


def power(*states: AssetState) -> tuple[float, float]:
    return assets_power(states, POLL, RESPONSE_S, TOLERANCE_W)


def test_a_reading_from_this_poll_is_the_assets_power() -> None:
    # read while the poll ran, though told -5000 W a moment ago: it is where the asset is, ramping or not
    assert power(asset("a", -2_000, POLL + timedelta(seconds=0.1), -5_000, told_s_before_poll=0.5)) == (-2_000, -2_000)


def test_a_reading_older_than_the_poll_and_the_response_lies_between_itself_and_the_setpoint() -> None:
    # told 4 s before the poll, read 3 s before it: 1 s after the setpoint, the EV may have been on its way
    states = [asset("ocpp", 0.0, OLD, -5_000), asset("modbus", 1_000, POLL, 4_000), asset("never-told", 700, OLD, None)]
    assert power(*states) == (-5_000 + 1_000 + 700, 0 + 1_000 + 700)
    # a driver that changed the request (below the device's minimum: 0 W) told the device that, not what was written
    assert power(asset("ev", 3_000, OLD, 1_000, commanded_w=0.0)) == (0.0, 3_000)
    # at its setpoint, within the tolerance: nothing is unknown
    assert power(asset("ev", -4_960, OLD, -5_000)) == (-4_960, -4_960)


def test_a_reading_measured_a_response_time_after_the_setpoint_is_the_answer_to_it() -> None:
    """A full EV told 11 kW draws 3 kW, tapering: measured 5 s after the setpoint, that is what it does, not a step
    towards 11 kW (an interval there would hide a change of the rest of the site as large as the gap)."""
    assert power(asset("ev", 3_000, OLD, 11_000, told_s_before_poll=8.0)) == (3_000, 3_000)
    assert power(asset("ev", 3_000, OLD, 11_000, told_s_before_poll=7.9)) == (3_000, 11_000)
