"""The status page's server-side SVG charts: well-formed, escaped, and drawing the numbers they are given where the
axes say they are (a chart whose bars or lines were off-scale would pass a "contains <svg" check)."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from agent.events.lifecycle import Event, EventState
from agent.events.mv.report import updr_report
from agent.signals.models import AsAward, UpDrEvent
from agent.web import delivery, svg

TOKYO = ZoneInfo("Asia/Tokyo")
START = datetime(2026, 1, 5, 0, 0, tzinfo=UTC)  # 09:00 JST
NS = "{http://www.w3.org/2000/svg}"


def parse(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{NS}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return ["".join(e.itertext()) for e in root.iter(f"{NS}text")]


def path_ys(d: str) -> list[float]:
    """The y of each vertical segment of a step path (M x,y then H x V y ...)."""
    first = float(re.match(r"M[\d.]+,([\d.]+)", d)[1])  # type: ignore[index]
    return [first, *(float(v) for v in re.findall(r"V([\d.]+)", d))]


def tick_y(root: ET.Element, label: str, anchor: str = "end") -> float:
    """The y of the axis tick labelled `label` (text y is the baseline, 4 px under the tick)."""
    for e in root.iter(f"{NS}text"):
        if e.text == label and e.get("text-anchor") == anchor:
            return float(e.get("y", "nan")) - 4
    raise AssertionError(f"no tick {label!r}")


@pytest.mark.parametrize(("lo", "hi"), [(0, 7.3), (-12.5, 40), (0.001, 0.0042), (-1e6, 3e6), (5, 5)])
def test_nice_ticks_cover_the_range_in_round_steps(lo: float, hi: float) -> None:
    ticks = svg.nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1
    mantissa = float(f"{steps.pop():e}".split("e")[0])
    assert mantissa in (1.0, 2.0, 2.5, 5.0)
    assert 3 <= len(ticks) <= 8


def test_plan_chart_draws_power_price_and_soc_on_their_axes() -> None:
    power = [10_000.0, 10_000.0, -20_000.0, 0.0]
    price = [8.0, 30.0, 30.0, 12.0]
    soc = [0.5, 0.6, 0.7, 0.5, 0.5]
    chart = svg.plan_chart("plan: test", START, 900, [svg.Series("batteries", power)], price,
                           [svg.Series("batteries", soc)], "JPY", TOKYO, START + timedelta(minutes=20))  # fmt: skip
    root = parse(chart)
    paths = {e.get("data-series"): e for e in root.iter() if e.get("data-series")}
    assert set(paths) == {"batteries", "price", "SoC batteries"}
    # power: the 10 kW steps sit on the 10 kW tick, the -20 kW step on the -20 kW tick
    ys = path_ys(paths["batteries"].get("d", ""))
    assert ys[0] == pytest.approx(tick_y(root, "10"), abs=0.2)
    assert ys[2] == pytest.approx(tick_y(root, "-20"), abs=0.2)
    # price: the 30 JPY/kWh steps on the price axis's 30 (right side, red, start-anchored)
    price_ys = path_ys(paths["price"].get("d", ""))
    assert price_ys[1] == pytest.approx(tick_y(root, "30", "start"), abs=0.2)
    # SoC 50 % on the SoC axis's 50
    first_point = paths["SoC batteries"].get("points", "").split()[0]
    assert float(first_point.split(",")[1]) == pytest.approx(tick_y(root, "50"), abs=0.2)
    labels = texts(root)
    assert "now" in labels and "energy price, JPY/kWh" in labels and "price (JPY/kWh)" in labels
    assert "10:00" in labels  # local time (JST), not UTC
    assert svg.plan_chart("x", START, 900, [], None, [], "JPY", TOKYO).count("no plan yet") == 1


def test_labels_are_escaped() -> None:
    chart = svg.plan_chart('<script>alert("x")</script>', START, 900, [svg.Series("a&b <i>", [1.0])], None, [],
                           "JPY", TOKYO)  # fmt: skip
    root = parse(chart)  # well-formed: nothing leaked out as markup
    assert '<script>alert("x")</script>' in texts(root)
    assert not list(root.iter(f"{NS}script")) and not list(root.iter("script"))


def updr_event(samples: list[tuple[float, float]]) -> tuple[Event, dict[str, object]]:
    start, end = START, START + timedelta(hours=1)
    signal = UpDrEvent(id="dr1", start=start, end=end, requested_increase_w=20_000, price_per_kwh=5)
    event = Event("dr1", "up_dr", signal, EventState.ACTIVE, baseline_w=5000.0)
    report = updr_report(samples, lambda ts: 5000.0, 20_000, 1800, 60, start.timestamp(), end.timestamp())
    return event, report


def test_delivery_chart_from_an_mv_report_shows_its_intervals_and_totals() -> None:
    t0 = START.timestamp()
    # first half hour at baseline + 20 kW, second at baseline + 10 kW
    samples = [(t0 + s, 25_000.0 if s < 1800 else 15_000.0) for s in range(0, 3600, 10)]
    event, report = updr_event(samples)
    rows = delivery.rows_of(report)
    assert [r.measured_w for r in rows] == [25_000.0, 15_000.0]
    root = parse(delivery.event_chart(event, report, TOKYO))
    bars = {e.get("data-measured-w"): e for e in root.iter(f"{NS}rect") if e.get("data-measured-w")}
    assert set(bars) == {"25000", "15000"}
    # the 25 kW bar is 2.5 x the 10 kW tick's height above zero
    zero, ten = tick_y(root, "0"), tick_y(root, "10")
    assert float(bars["25000"].get("height", "0")) == pytest.approx(2.5 * (zero - ten), abs=0.5)
    delivered = [float(e.get("data-delivered-kwh", "nan")) for e in root.iter() if e.get("data-delivered-kwh")]
    assert delivered == pytest.approx([10.0, 5.0], abs=0.01)
    assert f"delivered {report['delivered_kwh']:.2f} kWh of {report['requested_kwh']:.2f} kWh" in " ".join(texts(root))
    assert [t for t in texts(root) if t in ("09:00", "09:30")] == ["09:00", "09:30"]


def test_no_delivery_chart_for_awards_or_events_without_a_report() -> None:
    award = AsAward(id="a1", product="FCR", block_start=START, block_end=START + timedelta(hours=1), up_w=1, down_w=1)
    with pytest.raises(delivery.NoDelivery, match="ancillary-service award"):
        delivery.event_chart(Event("a1", "as_award", award, EventState.COMPLETED), {"score": 0.9}, TOKYO)
    event, _ = updr_event([])
    with pytest.raises(delivery.NoDelivery, match="no M&V report yet"):
        delivery.event_chart(event, None, TOKYO)
    with pytest.raises(delivery.NoDelivery, match="fewer than 2 meter readings"):
        delivery.event_chart(event, updr_event([])[1], TOKYO)


def test_live_report_runs_to_now_with_the_one_mv_rule() -> None:
    t0 = START.timestamp()
    samples = [(t0 + s, 25_000.0) for s in range(0, 900, 10)]
    event, _ = updr_event(samples)
    now = START + timedelta(minutes=15)
    live = delivery.live_report(event, samples, 1800, 60, now)
    assert live["requested_kwh"] == pytest.approx(5.0)  # 20 kW for the 15 min so far, not the whole hour
    assert live["delivered_kwh"] == pytest.approx(5.0, abs=0.1)
