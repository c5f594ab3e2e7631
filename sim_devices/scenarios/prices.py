"""Synthetic JEPX day-ahead (spot) prices: 48 half-hour periods a day, the system price and the 9 area prices.

Why synthetic: no market data set may be vendored without a licence (REFERENCE.md "Data"), yet the dispatcher, the
up-DR logic and the tests need price series with the features that drive decisions. This generator reproduces those
features in the JEPX spot-summary format; it is *shaped after* public JEPX results, not fitted to them.

Assumptions (each a named constant below, so a scenario can see and override what it relies on):

- Daily shape (multiplier on the day's level): a night floor, a morning peak near 08:30, an evening peak near 18:30
  (the highest of the day) and a midday dip from solar output whose depth follows the season (deepest in April–May).
  This is the "duck" shape visible in JEPX spot results since solar reached ~10 % of Japan's supply.
- Seasonal level: a monthly system-price level of ~9–14 JPY/kWh (winter and late summer high, spring and autumn low),
  in the range of JEPX fiscal-year averages after the 2022 fuel-price spike; interpolated smoothly between months.
- Day-to-day noise: an AR(1) log-level (phi 0.7, innovation 0.12) so cheap and dear days come in runs; weekends 10 %
  lower; period noise of ~4 %; an occasional evening spike (3 % of days) on winter/summer days.
- Area spreads: an area price equals the system price unless the market splits between areas. Splits come in blocks of
  hours (a two-state Markov chain per area and day); when split, an area carries its own spread (Hokkaido and Tokyo
  dearer, Kyushu/Shikoku/Chugoku cheaper with a deeper midday dip: the areas with the most solar per load).
- Curtailment days (出力抑制): Kyushu is curtailed on `curtailment_frequency` of spring (Mar–May) and autumn (Sep–Nov)
  days (weekends twice as often as weekdays; other months `offseason_factor` of that). Another area can be curtailed
  only on a Kyushu day, with the conditional probabilities in `CASCADE` (Shikoku, Chugoku, Tohoku first), mirroring
  the order in which Japanese areas started curtailing solar. On such a day the curtailed area's price is exactly
  0.01 JPY/kWh — JEPX's minimum price and the usual market sign of surplus — in the ten periods 10:00–15:00 (periods
  21..30), with falling/rising shoulders around them. Every other price is ≥ `PRICE_FLOOR` (0.5 JPY/kWh), so 0.01
  marks curtailment unambiguously. (Simplification: real system prices also reach 0.01 on nationwide surplus.)
- Prices are quantised to 0.01 JPY/kWh, as JEPX publishes them.

Times are the aware start datetimes of each period in JST (UTC+9; Japan has no daylight saving time).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import numpy as np

JST = timezone(timedelta(hours=9), "JST")
PERIODS_PER_DAY = 48
PERIOD_S = 1800
CURTAILMENT_PRICE = 0.01
PRICE_FLOOR = 0.5
# Periods are numbered 1..48 in JEPX files; in arrays they are 0-based: 10:00 starts index 20, 14:30 starts index 29.
CURTAILMENT_PERIODS = range(20, 30)

AREAS: tuple[str, ...] = (
    "Hokkaido", "Tohoku", "Tokyo", "Chubu", "Hokuriku", "Kansai", "Chugoku", "Shikoku", "Kyushu",
)
AREA_NAMES_JA: dict[str, str] = {
    "Hokkaido": "北海道", "Tohoku": "東北", "Tokyo": "東京", "Chubu": "中部", "Hokuriku": "北陸",
    "Kansai": "関西", "Chugoku": "中国", "Shikoku": "四国", "Kyushu": "九州",
}
# Column names of the JEPX spot summary CSV (spot_summary_<FY>.csv) that this module writes and reads. The real file
# has more columns (bid volumes, block bids, FIP reference prices...); a reader should pick these by name.
COL_DATE = "受渡日"  # delivery date, YYYY/MM/DD
COL_PERIOD = "時刻コード"  # period 1..48; period n starts at (n-1) × 30 min JST
COL_SYSTEM = "システムプライス(円/kWh)"
AREA_COLUMNS: dict[str, str] = {area: f"エリアプライス{ja}(円/kWh)" for area, ja in AREA_NAMES_JA.items()}
JEPX_COLUMNS: tuple[str, ...] = (COL_DATE, COL_PERIOD, COL_SYSTEM, *AREA_COLUMNS.values())

# Monthly system-price level (JPY/kWh, daily mean before shape) and midday solar-dip depth (fraction of the level).
MONTHLY_LEVEL = (14.0, 13.5, 11.0, 9.5, 9.0, 10.0, 12.0, 13.0, 11.0, 9.5, 10.5, 12.5)
MONTHLY_SOLAR_DIP = (0.20, 0.25, 0.35, 0.45, 0.50, 0.35, 0.30, 0.30, 0.35, 0.35, 0.30, 0.20)
CURTAILMENT_MONTHS = frozenset({3, 4, 5, 9, 10, 11})
# P(area curtailed | Kyushu curtailed that day). Tokyo has had no solar curtailment in the period modelled.
CASCADE: dict[str, float] = {
    "Shikoku": 0.55, "Chugoku": 0.45, "Tohoku": 0.35, "Hokkaido": 0.25,
    "Hokuriku": 0.15, "Kansai": 0.10, "Chubu": 0.10, "Tokyo": 0.0,
}
# Area behaviour when the market splits: (relative spread, extra relative midday dip, P(split) per period).
AREA_SPREAD: dict[str, tuple[float, float, float]] = {
    "Hokkaido": (0.12, 0.02, 0.45), "Tohoku": (-0.02, 0.06, 0.30), "Tokyo": (0.06, 0.00, 0.35),
    "Chubu": (0.01, 0.02, 0.25), "Hokuriku": (-0.01, 0.02, 0.25), "Kansai": (0.00, 0.02, 0.25),
    "Chugoku": (-0.02, 0.08, 0.30), "Shikoku": (-0.03, 0.10, 0.30), "Kyushu": (-0.06, 0.18, 0.45),
}


def _quantise(prices: np.ndarray) -> np.ndarray:
    """Round to 0.01 JPY/kWh; k/100 is the correctly rounded double, so a '%.2f' CSV round trip is exact."""
    return np.round(prices * 100.0) / 100.0


def _seasonal(day: date, monthly: tuple[float, ...]) -> float:
    """Smooth, periodic interpolation between monthly values placed at mid-month."""
    doy = day.timetuple().tm_yday - 1
    mids = np.array([(m + 0.5) * 365.0 / 12.0 for m in range(12)])
    xs = np.concatenate(([mids[-1] - 365.0], mids, [mids[0] + 365.0]))
    ys = np.concatenate(([monthly[-1]], monthly, [monthly[0]]))
    return float(np.interp(doy, xs, ys))


def _hours() -> np.ndarray:
    return (np.arange(PERIODS_PER_DAY) + 0.5) / 2.0


def _solar_kernel() -> np.ndarray:
    return np.exp(-(((_hours() - 12.25) / 2.3) ** 2))


def daily_shape(solar_dip: float) -> np.ndarray:
    """Multiplier per period (mean ≈ 1): night floor, morning and evening peaks, a midday solar dip of `solar_dip`."""
    h = _hours()
    shape = (
        0.82
        + 0.25 * np.exp(-(((h - 8.5) / 1.5) ** 2))
        + 0.45 * np.exp(-(((h - 18.5) / 1.8) ** 2))
        + 0.15 * np.exp(-(((h - 13.0) / 4.0) ** 2))
        - solar_dip * _solar_kernel()
    )
    return shape / shape.mean()


@dataclass(frozen=True)
class PriceSet:
    """Prices of consecutive days; arrays are aligned with `times` (length days × 48), JPY/kWh."""

    times: list[datetime]
    system: np.ndarray
    areas: dict[str, np.ndarray]
    curtailment_days: dict[str, list[date]] = field(default_factory=dict)

    @property
    def days(self) -> list[date]:
        return [t.date() for t in self.times[::PERIODS_PER_DAY]]

    def series(self, area: str = "system") -> np.ndarray:
        """The price array of 'system' or an area (KeyError naming the known areas otherwise)."""
        if area == "system":
            return self.system
        if area not in self.areas:
            raise KeyError(f"unknown area {area!r}; known: system, {', '.join(self.areas)}")
        return self.areas[area]

    def day_slice(self, day: date) -> slice:
        """Index range of one delivery day in the arrays."""
        index = self.days.index(day)
        return slice(index * PERIODS_PER_DAY, (index + 1) * PERIODS_PER_DAY)

    def to_signal_json(self, area: str = "system", day: date | None = None) -> str:
        """One day (default: the first) as an agent `prices` signal (agent.signals.PriceSeries) in JSON."""
        day = day or self.days[0]
        window = self.day_slice(day)
        payload = {
            "id": f"jepx-{area.lower()}-{day:%Y%m%d}",
            "area": area,
            "currency": "JPY",
            "start": self.times[window.start].isoformat(),
            "interval_s": PERIOD_S,
            "prices_per_kwh": [float(p) for p in self.series(area)[window]],
        }
        return json.dumps(payload, ensure_ascii=False)

    def to_jepx_csv(self, path: str | Path, encoding: str = "utf-8") -> None:
        """Write the JEPX spot-summary layout: `JEPX_COLUMNS`, one row per period, prices with 2 decimals.

        JEPX's own downloads are Shift_JIS; pass encoding="cp932" for tools that expect that.
        """
        with Path(path).open("w", newline="", encoding=encoding) as fh:
            writer = csv.writer(fh)
            writer.writerow(JEPX_COLUMNS)
            for i, t in enumerate(self.times):
                row = [f"{t:%Y/%m/%d}", str(i % PERIODS_PER_DAY + 1), f"{self.system[i]:.2f}"]
                row += [f"{self.areas[a][i]:.2f}" for a in AREAS]
                writer.writerow(row)


def read_jepx_csv(path: str | Path, encoding: str = "utf-8") -> PriceSet:
    """Read a file in the JEPX spot-summary layout (columns picked by name, extra columns ignored).

    Curtailment days are inferred: an area whose 10:00–15:00 prices are all 0.01 JPY/kWh on a day.
    """
    rows: dict[tuple[date, int], dict[str, str]] = {}
    with Path(path).open(newline="", encoding=encoding) as fh:
        for row in csv.DictReader(fh):
            day = datetime.strptime(row[COL_DATE], "%Y/%m/%d").date()
            rows[(day, int(row[COL_PERIOD]))] = row
    keys = sorted(rows)
    days = sorted({d for d, _ in keys})
    expected = [(d, p) for d in days for p in range(1, PERIODS_PER_DAY + 1)]
    if keys != expected:
        raise ValueError(f"{path}: expected periods 1..48 on every day from {days[0]} to {days[-1]}")
    times = [datetime.combine(d, time(), JST) + timedelta(seconds=(p - 1) * PERIOD_S) for d, p in keys]
    system = np.array([float(rows[k][COL_SYSTEM]) for k in keys])
    areas = {a: np.array([float(rows[k][col]) for k in keys]) for a, col in AREA_COLUMNS.items()}
    curtailed = {a: _curtailed_days(days, prices) for a, prices in areas.items()}
    return PriceSet(times=times, system=system, areas=areas, curtailment_days=curtailed)


def _curtailed_days(days: list[date], prices: np.ndarray) -> list[date]:
    by_day = prices.reshape(len(days), PERIODS_PER_DAY)[:, CURTAILMENT_PERIODS]
    return [d for d, row in zip(days, by_day, strict=True) if np.all(row == CURTAILMENT_PRICE)]


def _draw_curtailment(
    rng: np.random.Generator, days: list[date], frequency: float, offseason_factor: float,
    cascade: Mapping[str, float],
) -> dict[str, list[date]]:
    """Kyushu days first; other areas only on Kyushu days (the order areas reached surplus in)."""
    out: dict[str, list[date]] = {a: [] for a in AREAS}
    for day in days:
        p = frequency * (1.0 if day.month in CURTAILMENT_MONTHS else offseason_factor)
        # Weekends twice as likely as weekdays, with the weekly mean kept at p.
        p *= 14.0 / 9.0 if day.weekday() >= 5 else 7.0 / 9.0
        draws = rng.random(1 + len(cascade))
        if draws[0] >= min(p, 1.0):
            continue
        out["Kyushu"].append(day)
        for draw, (area, q) in zip(draws[1:], cascade.items(), strict=True):
            if draw < q:
                out[area].append(day)
    return out


def _split_mask(rng: np.random.Generator, p_split: float) -> np.ndarray:
    """Per-period market-split flags in blocks: a two-state Markov chain with stationary P(split) = p_split."""
    leave_split = 0.12
    enter_split = leave_split * p_split / (1.0 - p_split)
    mask = np.empty(PERIODS_PER_DAY, dtype=bool)
    state = rng.random() < p_split
    for i, u in enumerate(rng.random(PERIODS_PER_DAY)):
        mask[i] = state
        state = (u >= leave_split) if state else (u < enter_split)
    return mask


def generate_prices(
    start: date,
    days: int,
    seed: int,
    *,
    curtailment_frequency: float = 0.15,
    offseason_factor: float = 0.2,
    cascade: Mapping[str, float] | None = None,
) -> PriceSet:
    """Reproducible JEPX-style prices for `days` delivery days from `start` (see the module docstring).

    `curtailment_frequency` is the share of spring/autumn days on which Kyushu is curtailed; `cascade` overrides the
    conditional curtailment probabilities of the other areas (keys: area names other than Kyushu).
    """
    if days < 1:
        raise ValueError(f"days must be ≥ 1, got {days}")
    if not 0.0 <= curtailment_frequency <= 1.0:
        raise ValueError(f"curtailment_frequency must be within 0..1, got {curtailment_frequency}")
    chain = dict(CASCADE if cascade is None else cascade)
    unknown = set(chain) - (set(AREAS) - {"Kyushu"})
    if unknown:
        raise ValueError(f"cascade names unknown areas (or Kyushu, which leads): {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    day_list = [start + timedelta(days=i) for i in range(days)]
    curtailed = _draw_curtailment(rng, day_list, curtailment_frequency, offseason_factor, chain)
    kyushu_days = set(curtailed["Kyushu"])
    solar = _solar_kernel()

    system_days, area_days = [], {a: [] for a in AREAS}
    log_level = rng.normal(0.0, 0.12 / math.sqrt(1 - 0.7**2))
    for day in day_list:
        log_level = 0.7 * log_level + rng.normal(0.0, 0.12)
        level = _seasonal(day, MONTHLY_LEVEL) * math.exp(log_level) * (0.9 if day.weekday() >= 5 else 1.0)
        dip = _seasonal(day, MONTHLY_SOLAR_DIP) * (1.4 if day in kyushu_days else 1.0)
        system = level * daily_shape(dip) * np.exp(rng.normal(0.0, 0.04, PERIODS_PER_DAY))
        if day.month in (1, 2, 7, 8, 12) and rng.random() < 0.03:
            system *= 1.0 + rng.uniform(0.5, 2.0) * np.exp(-(((_hours() - 18.0) / 1.5) ** 2))
        system = np.maximum(system, PRICE_FLOOR)
        system_days.append(system)
        for area in AREAS:
            rel, extra_dip, p_split = AREA_SPREAD[area]
            split = _split_mask(rng, p_split)
            own = system * (1.0 + rel - extra_dip * solar) + rng.normal(0.0, 0.3, PERIODS_PER_DAY)
            price = np.maximum(np.where(split, own, system), PRICE_FLOOR)
            if day in curtailed[area]:
                price = _curtail(price, rng)
            area_days[area].append(price)

    times = [datetime.combine(d, time(), JST) + timedelta(seconds=p * PERIOD_S)
             for d in day_list for p in range(PERIODS_PER_DAY)]
    return PriceSet(
        times=times,
        system=_quantise(np.concatenate(system_days)),
        areas={a: _quantise(np.concatenate(v)) for a, v in area_days.items()},
        curtailment_days=curtailed,
    )


def _curtail(price: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0.01 JPY/kWh in 10:00–15:00, shoulders sliding down to it from 08:30 and back up by 16:30."""
    out = price.copy()
    first, last = CURTAILMENT_PERIODS.start, CURTAILMENT_PERIODS.stop
    for k, factor in enumerate((0.7, 0.45, 0.2)):
        out[first - 3 + k] *= factor * rng.uniform(0.8, 1.2)
        out[last + 2 - k] *= factor * rng.uniform(0.8, 1.2)
    out = np.maximum(out, PRICE_FLOOR)
    out[first:last] = CURTAILMENT_PRICE
    return out
