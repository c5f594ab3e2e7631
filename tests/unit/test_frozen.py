"""Frozen-register detection (agent.frozen) and what the fleet does with it.

The readings come from a small model of a real device: a pack whose registers quantise SoC to the register's
resolution and refresh only every `refresh_s` of device time, like a BMS or a meter that updates its counters on
its own schedule. A healthy device of that kind must never be called frozen, whatever its power, resolution and
refresh; the same device with its registers stuck must be, and must come back when they move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from agent.config import AssetConfig
from agent.fleet import AssetState, Fleet
from agent.frozen import MIN_STILL_POLLS, MIN_STILL_S, RESOLUTIONS, FrozenDetector, implied_rate
from agent.model import AssetKind, Measurement

T0 = datetime(2026, 11, 23, tzinfo=UTC)


@dataclass
class Pack:
    """A battery as its registers show it: SoC quantised to `resolution`, refreshed every `refresh_s` of device
    time; import/export counters in whole `counter_wh`; `stuck` freezes every register at its current value."""

    capacity_wh: float = 100_000.0
    soc: float = 0.3
    power_w: float = 0.0
    efficiency: float = 0.95
    resolution: float = 0.01
    refresh_s: float = 1.0
    counter_wh: float | None = None
    imported_wh: float = 0.0
    t: float = 0.0
    stuck: bool = False
    _shown: Measurement | None = None
    _shown_at: float = -math.inf

    def run(self, seconds: float) -> None:
        energy = self.power_w * seconds / 3600.0
        stored = energy * self.efficiency if energy > 0 else energy / self.efficiency
        self.soc = min(1.0, max(0.0, self.soc + stored / self.capacity_wh))
        self.imported_wh += max(0.0, energy)
        self.t += seconds

    def reading(self) -> Measurement:
        at = T0 + timedelta(seconds=self.t)
        if self._shown is None or (not self.stuck and self.t - self._shown_at >= self.refresh_s):
            counter = None
            if self.counter_wh is not None:
                counter = math.floor(self.imported_wh / self.counter_wh) * self.counter_wh
            self._shown = Measurement(
                "bess",
                at,
                power_w=self.power_w,
                soc=math.floor(self.soc / self.resolution + 1e-9) * self.resolution,
                capacity_wh=self.capacity_wh,
                energy_import_wh=counter,
            )
            self._shown_at = self.t
        return replace(self._shown, at=at)


def poll(detector: FrozenDetector, pack: Pack, seconds: float, every_s: float = 1.0) -> list[str]:
    """Run the pack for `seconds`, reading it every `every_s`; the verdict changes seen."""
    changes = []
    for _ in range(round(seconds / every_s)):
        pack.run(every_s)
        change = detector.observe(pack.reading())
        if change is not None:
            changes.append(change)
    return changes


@pytest.mark.parametrize("power_w", [-50_000.0, -3_000.0, 600.0, 7_000.0, 50_000.0])
@pytest.mark.parametrize(("resolution", "refresh_s"), [(0.01, 1.0), (0.01, 30.0), (0.001, 10.0), (0.001, 55.0)])
def test_a_healthy_pack_is_never_called_frozen(power_w: float, resolution: float, refresh_s: float) -> None:
    """Coarse registers that refresh slowly, at any power, over a full charge or discharge: no false alarm."""
    pack = Pack(soc=0.5, power_w=power_w, resolution=resolution, refresh_s=refresh_s, counter_wh=1000.0)
    detector = FrozenDetector()
    hours = min(6.0, 0.45 * pack.capacity_wh / abs(power_w))  # stays inside the SoC range
    assert poll(detector, pack, hours * 3600, every_s=5.0) == []
    assert not detector.frozen
    assert abs(pack.soc - 0.5) > 0.01  # it did move: the run was long enough to matter


def test_a_stuck_pack_at_power_is_called_frozen_with_its_evidence() -> None:
    pack = Pack(power_w=30_000.0, resolution=0.001)
    detector = FrozenDetector()
    assert poll(detector, pack, 120) == []  # healthy: SoC moves every ~12 s
    pack.stuck = True
    changes = poll(detector, pack, 600)
    assert changes == ["froze"]
    evidence = detector.evidence
    assert evidence is not None and evidence.field == "soc"
    assert evidence.polls >= MIN_STILL_POLLS and evidence.still_s >= MIN_STILL_S
    assert evidence.expected >= evidence.threshold == pytest.approx(RESOLUTIONS * 0.001)
    assert "soc stood at" in evidence.describe() and "30000 W" in evidence.describe()


def test_detection_takes_the_longer_of_the_still_time_and_three_resolutions() -> None:
    """Before any change is seen the SoC step is the coarsest (1 %): 3 % of 100 kWh at 30 kW takes minutes."""
    detector = FrozenDetector()
    pack = Pack(power_w=30_000.0, resolution=0.01)
    poll(detector, pack, 240)  # SoC ticks by whole percent: the step learnt is 1 %
    pack.stuck = True
    seconds = 0
    while not detector.frozen:
        pack.run(1.0)
        detector.observe(pack.reading())
        seconds += 1
    evidence = detector.evidence
    assert evidence is not None
    # (30 kW - 250 W) x 0.8 / 100 kWh per hour: 3 % takes 0.03 / 0.000066 ≈ 454 s, far beyond the 60 s minimum.
    # The evidence runs from the SoC's last tick, which came up to one tick (~126 s at 30 kW) before it stuck.
    rate = implied_rate("soc", pack.reading(), pack.reading())
    assert evidence.still_s == pytest.approx(RESOLUTIONS * 0.01 / rate, abs=1.0)
    assert evidence.still_s - 130 < seconds <= evidence.still_s


def test_a_reading_handed_out_twice_is_not_a_poll() -> None:
    """A pushed (MQTT) device polled twice between two messages gives the same snapshot: no time, no evidence."""
    pack = Pack(power_w=30_000.0, resolution=0.001)
    detector = FrozenDetector()
    poll(detector, pack, 60)
    pack.stuck = True
    pack.run(1.0)
    same = pack.reading()
    for _ in range(1000):
        assert detector.observe(same) is None
    assert not detector.frozen


def test_idle_time_is_no_evidence() -> None:
    """A pack idle for an hour and then charging with a SoC register that refreshes every 20 s is healthy."""
    pack = Pack(power_w=20_000.0, resolution=0.001, refresh_s=20.0)
    detector = FrozenDetector()
    poll(detector, pack, 120)
    pack.power_w = 0.0
    poll(detector, pack, 3600)
    pack.power_w = 50_000.0
    assert poll(detector, pack, 600) == []


def test_a_value_never_seen_to_move_is_no_evidence() -> None:
    """A charger that reports the EV's SoC once at plug-in shows it still for the whole session."""
    detector = FrozenDetector()
    m = Measurement("ev", T0, power_w=7_000.0, soc=0.42, capacity_wh=60_000.0)
    for i in range(3600):
        assert detector.observe(replace(m, at=T0 + timedelta(seconds=i))) is None


def test_soc_held_at_the_ends_is_no_evidence() -> None:
    detector = FrozenDetector()
    full = Measurement("bess", T0, power_w=2_000.0, soc=0.99, capacity_wh=10_000.0)
    detector.observe(replace(full, soc=0.98))  # it moved once
    for i in range(1, 3600):
        detector.observe(replace(full, at=T0 + timedelta(seconds=i)))
    assert not detector.frozen


def test_a_meter_is_judged_by_its_counters_and_only_by_them() -> None:
    detector = FrozenDetector()
    meter = Measurement("meter", T0, power_w=12_000.0, voltage_v=750.0, energy_import_wh=5_000.0)
    detector.observe(meter)
    detector.observe(replace(meter, at=T0 + timedelta(seconds=1), energy_import_wh=5_003.0))  # it counts
    changes = [
        detector.observe(replace(meter, at=T0 + timedelta(seconds=1 + i), energy_import_wh=5_003.0))
        for i in range(1, 120)
    ]
    assert changes.count("froze") == 1
    assert detector.evidence is not None and detector.evidence.field == "energy_import_wh"

    plain = FrozenDetector()  # no counter, no SoC: every field identical for an hour is a steady load
    reading = Measurement("meter", T0, power_w=12_000.0, voltage_v=750.0)
    for i in range(3600):
        assert plain.observe(replace(reading, at=T0 + timedelta(seconds=i))) is None


def test_export_counter_and_discharge_are_watched_too() -> None:
    detector = FrozenDetector()
    m = Measurement("meter", T0, power_w=-40_000.0, energy_export_wh=100.0, energy_import_wh=7.0)
    detector.observe(m)
    detector.observe(replace(m, at=T0 + timedelta(seconds=1), energy_export_wh=111.0))
    for i in range(2, 200):
        detector.observe(replace(m, at=T0 + timedelta(seconds=i), energy_export_wh=111.0))
    assert detector.evidence is not None and detector.evidence.field == "energy_export_wh"


def test_thaw_when_readings_move_and_fresh_evidence_is_needed_to_freeze_again() -> None:
    pack = Pack(power_w=30_000.0, resolution=0.001)
    detector = FrozenDetector()
    poll(detector, pack, 60)
    pack.stuck = True
    assert poll(detector, pack, 600) == ["froze"]
    pack.stuck = False
    pack.power_w = 0.0  # the lease lapsed while it was out
    assert poll(detector, pack, 1) == ["thawed"]
    assert not detector.frozen
    pack.power_w = 30_000.0
    poll(detector, pack, 1)  # its registers show the power again
    pack.stuck = True  # and stick at once: the watches started over, so it takes the full evidence again
    assert poll(detector, pack, MIN_STILL_S - 5) == []
    assert poll(detector, pack, 600) == ["froze"]


def test_a_failed_poll_leaves_its_interval_out() -> None:
    pack = Pack(power_w=30_000.0, resolution=0.001)
    detector = FrozenDetector()
    poll(detector, pack, 60)
    pack.stuck = True
    for _ in range(600):  # every other poll fails: no interval has a reading at both ends
        pack.run(1.0)
        detector.interrupt()
        detector.observe(pack.reading())
    assert not detector.frozen


# ---- the fleet ---------------------------------------------------------------------------------------------
def _fleet() -> Fleet:
    config = AssetConfig(id="bess", map="vppsim_battery")
    return Fleet({"bess": AssetState("bess", AssetKind.BATTERY, config)}, unavailable_after=3)


def test_fleet_takes_a_frozen_asset_out_logs_once_and_brings_it_back() -> None:
    fleet = _fleet()
    state = fleet.assets["bess"]
    pack = Pack(power_w=30_000.0, resolution=0.001)
    assert fleet.record_ok("bess", pack.reading(), 0.0)  # first answer: it came
    for i in range(60):
        pack.run(1.0)
        fleet.record_ok("bess", pack.reading(), float(i))
    state.lease_written = True
    pack.stuck = True
    with capture_logs() as logs:
        for i in range(600):
            pack.run(1.0)
            assert not fleet.record_ok("bess", pack.reading(), float(100 + i))
    frozen = [entry for entry in logs if entry["event"] == "asset.frozen"]
    assert len(frozen) == 1 and frozen[0]["field"] == "soc" and frozen[0]["power_w"] == 30_000.0
    assert not state.available and state.frozen and (state.last_error or "").startswith("frozen: soc stood at")
    assert state.consecutive_failures == 0 and state.next_poll_monotonic == 699.0  # polled on, no back-off
    assert ("bess", "frozen") in fleet.events
    assert fleet.envelope().assets_available == 0 and fleet.available() == []

    pack.stuck = False
    pack.run(1.0)
    with capture_logs() as logs:
        assert fleet.record_ok("bess", pack.reading(), 800.0)  # came back: the loop logs asset.available
    assert [entry["event"] for entry in logs] == ["asset.unfrozen"]
    assert state.available and not state.frozen and state.last_error is None
    assert not state.lease_written  # its lease and setpoint are written afresh
    assert fleet.events[-2:] == [("bess", "unfrozen"), ("bess", "available")]
