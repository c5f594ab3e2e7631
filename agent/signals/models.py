"""Grid signals the agent takes in: JEPX-style prices, up-DR events, ancillary-service offers, awards and activations.

Each signal type has a pydantic schema (published as JSON Schema in docs/schemas/) and a topic of its own under
`{prefix}/signals/`. Payloads are in SI units with the unit in the key (W, s), prices in currency per kWh (DESIGN.md
§4), times as ISO 8601 with an offset. Anything that does not validate is rejected with a reason that names the key,
and the rejection is published on the ack topic; a valid signal is stored durably *before* it is acknowledged, so an
acknowledged signal survives a broker or agent restart (DESIGN.md §8 rule 5: bad input never changes a setpoint).

Types are strict (a string is not a number, `true` is not 1 W, a number is not a date) and every number has bounds
that no real signal comes near but that keep the optimiser's numbers sane: prices within ±MAX_PRICE_PER_KWH, powers
up to MAX_POWER_W, times between 2000 and 2100 and windows at most MAX_WINDOW long. Whether a time makes sense *now*
is judged against the agent's clock when the signal arrives (agent/signals/sanity.py).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import pydantic_core
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.products import PRODUCTS

# 500 times JEPX's 200 JPY/kWh price cap: beyond any market, still far inside what the LP solves with good numerics
MAX_PRICE_PER_KWH = 100_000.0
# An offer's capacity price (AsOffer) is what the planner earns per kW·h it holds, in the same objective as the
# penalties that keep its obligations (agent.dispatch.inputs.Penalties: up-DR shortfall 100, EV tier 1 200, an
# award's reserve shortfall 1000, the site limit 10,000 per kWh). A price above the smallest of them would make the
# plan drop an obligation to hold the offer instead (5,000 dropped a 40 kW award). An "up_down" kW·h earns the price
# twice, so the bound is half the smallest penalty: 50, several times Japan's balancing-market ΔkW prices (a few to
# tens of JPY/kW·h). tests/dispatch/test_as_offer.py keeps it at most half of every penalty.
MAX_CAPACITY_PRICE_PER_KW_H = 50.0
# a single site of a thousand 50-kW devices is 50 MW; a gigawatt is no request one agent can be given
MAX_POWER_W = 1e9
MAX_WINDOW = timedelta(days=7)  # the longest up-DR window, award block or offer (real ones: hours to a day)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # times outside these are typos or unset clocks, not signals
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
REASON_MAX_CHARS = 400  # a rejection reason published and logged is bounded, whatever the payload held
SHOWN_VALUE_CHARS = 40  # of which a value echoed back from the payload takes at most this
ID_PATTERN = r"^[A-Za-z0-9._:\-]+$"


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _in_era(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"must be between {EARLIEST.year} and {LATEST.year}")
    return value


Finite = Annotated[float, AfterValidator(_finite)]
# Bounded numbers put their bounds before the finite check: after an AfterValidator pydantic writes a list item's
# bounds into its JSON Schema as `ge`/`le`, keys JSON Schema does not know, instead of minimum/maximum.
Price = Annotated[float, Field(ge=-MAX_PRICE_PER_KWH, le=MAX_PRICE_PER_KWH), AfterValidator(_finite)]
# a reward, never negative: its own type, since a field-level ge=0 on top of Price validates but its schema keeps
# only the inner minimum
Reward = Annotated[float, Field(ge=0, le=MAX_PRICE_PER_KWH), AfterValidator(_finite)]
# paid for holding capacity, so never negative, and below the planner's obligations (MAX_CAPACITY_PRICE_PER_KW_H)
CapacityPrice = Annotated[float, Field(ge=0, le=MAX_CAPACITY_PRICE_PER_KW_H), AfterValidator(_finite)]
Power = Annotated[float, Field(ge=0, le=MAX_POWER_W), AfterValidator(_finite)]
# kWh moved per kW·h reserved; bounds first, as CapacityPrice's, so the optional field's JSON Schema says them
Activation = Annotated[float, Field(ge=0, le=1), AfterValidator(_finite)]
Time = Annotated[AwareDatetime, AfterValidator(_in_era)]
SignalId = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
# Awards: Japan's products (agent.products, market "JP"), the ones the event lifecycle runs with activations.
AsProduct = Literal["FCR", "S-FRR", "FRR", "S-RR", "RR"]
# Offers: every product of the table, the evaluation's PJM-style RegD included (an offer only prices capacity for the
# planner; nothing is activated until an award). tests/dispatch/test_as_offer.py keeps both in step with the table.
OfferProduct = Literal["FCR", "S-FRR", "FRR", "S-RR", "RR", "RegD"]


class SignalModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: SignalId = Field(description="unique per signal; a re-sent id is acknowledged again, stored once")

    def ends_at(self) -> datetime | None:
        """When the signal stops mattering for what the agent does next (None: until a newer one replaces it).

        The retention rule: the signal book forgets a signal once it has ended, and the state file prunes it
        `[signals] keep_days` later."""
        return None

    def starts_at(self) -> datetime | None:
        """When the signal starts to apply, for the "too far ahead" check (None: it applies on arrival)."""
        return None


class PriceSeries(SignalModel):
    """Energy prices for consecutive intervals (JEPX: 48 half-hours a day), currency per kWh."""

    area: str = Field("system", max_length=32, pattern=r"^[A-Za-z0-9 _-]+$", description="'system' or a JEPX area name")
    currency: str = Field("JPY", pattern=r"^[A-Z]{3}$")
    start: Time
    interval_s: int = Field(1800, ge=60, le=86400)
    prices_per_kwh: list[Price] = Field(
        min_length=1, max_length=2000, description=f"currency per kWh, within ±{MAX_PRICE_PER_KWH:g}"
    )

    def ends_at(self) -> datetime:
        return self.start + timedelta(seconds=self.interval_s * len(self.prices_per_kwh))

    def starts_at(self) -> datetime:
        return self.start


class UpDrEvent(SignalModel):
    """Up-DR (上げDR): raise consumption above the baseline by `requested_increase_w` inside the window."""

    start: Time
    end: Time
    requested_increase_w: Power = Field(gt=0)
    price_per_kwh: Reward = Field(description="reward per kWh above the baseline")
    baseline_method: Literal["high4of5", "pre_event_average"] = "high4of5"

    @model_validator(mode="after")
    def _window(self) -> UpDrEvent:
        _check_window("start", self.start, "end", self.end)
        return self

    def ends_at(self) -> datetime:
        return self.end

    def starts_at(self) -> datetime:
        return self.start


class AsAward(SignalModel):
    """An ancillary-service award: capacity to hold up (deliver) and down (absorb) over a block."""

    product: AsProduct
    block_start: Time
    block_end: Time
    up_w: Power = Field(description="capacity to increase export / reduce consumption")
    down_w: Power = Field(description="capacity to increase consumption")
    capacity_price_per_kw_h: Reward = 0.0

    @model_validator(mode="after")
    def _check(self) -> AsAward:
        _check_window("block_start", self.block_start, "block_end", self.block_end)
        if self.up_w == 0 and self.down_w == 0:
            raise ValueError("an award needs up_w or down_w above 0")
        return self

    def ends_at(self) -> datetime:
        return self.block_end

    def starts_at(self) -> datetime:
        return self.block_start


class AsOffer(SignalModel):
    """A price-only reserve offer: `product`'s capacity can be sold at these prices over these intervals; the planner
    decides how much to hold (agent.dispatch.build: a Reserve with these prices and nothing awarded). Nothing is
    committed and nothing is activated until an `as_award` for it arrives, and no bid is published: the band the plan
    holds shows in its `reserve_revenue` (the `dispatch.planned` log line, the audit trail's plan record), as "holds
    N kW in reserve" per asset on the terminal screen (agent.ui), summed over products, and on the status page with
    the offers priced now (agent.web.snapshot). Sending the band back as a bid is not built.

    One price list per interval, per kW·h of capacity held in each direction `directions` names ("up_down": up and
    down, each paid this price; "up" / "down": that side only). Per product and side the newest offer covering a step
    sets its price, so a newer "up" offer replaces an older "up_down" one's up price and leaves its down price. Up and
    down at different prices are two offers, one per side; a symmetric product (agent.products, RegD) is one band, so
    it is offered "up_down" only. Steps an `as_award` of the same product covers are already sold: the offer's price
    there is 0 (the award is held at its own terms, the offer adds nothing on top). No cap on the capacity: the
    planner's Reserve has none (its power and energy headroom bound it). Prices are at most
    MAX_CAPACITY_PRICE_PER_KW_H, below what the planner's obligations cost to break.

    `activation_per_h` > 0 needs the up side ("up_down" or "up"): the planner prices activations' wear and round-trip
    loss on the up reservation only, so a down-only offer's activations would cost nothing."""

    product: OfferProduct
    start: Time
    interval_s: int = Field(1800, ge=60, le=86400)
    capacity_price_per_kw_h: list[CapacityPrice] = Field(
        min_length=1,
        max_length=2000,
        description=f"currency per kW·h of capacity, per interval, ≤ {MAX_CAPACITY_PRICE_PER_KW_H:g} (below the "
        "planner's penalties for breaking an obligation)",
    )
    directions: Literal["up_down", "up", "down"] = "up_down"
    activation_per_h: Activation | None = Field(
        None,
        description="expected activation energy, kWh moved per kW·h reserved (0: rarely activated); omitted or null: "
        "the product's own figure (RegD: its signal's), else 0; above 0 only with the up side offered",
    )

    @model_validator(mode="after")
    def _check(self) -> AsOffer:
        span = self.ends_at() - self.start
        if span > MAX_WINDOW:
            n, step = len(self.capacity_price_per_kw_h), self.interval_s
            raise ValueError(f"capacity_price_per_kw_h: {n} intervals of {step} s span {span}, more than "
                             f"{MAX_WINDOW.days} days")  # fmt: skip
        if self.directions != "up_down" and PRODUCTS[self.product].symmetric:
            raise ValueError(f"directions {self.directions!r}: {self.product} is one band, offered 'up_down' only")
        if self.directions == "down" and self.expected_activation_per_h() > 0:  # the product's own figure included
            activation = self.expected_activation_per_h()
            raise ValueError(f"activation_per_h {activation:g}: a 'down' offer's activations are not priced (the "
                             "planner prices them on the up side); send 0 or offer 'up_down'")  # fmt: skip
        return self

    def expected_activation_per_h(self) -> float:
        """kWh an activation moves per kW·h reserved: the sender's figure where it gave one (an explicit 0 included),
        else the product's (agent.products.ProductProfile.activation_per_h), else 0. The one home of that rule: a RegD
        offer sent without one would otherwise price its activations' wear at nothing."""
        if self.activation_per_h is not None:
            return self.activation_per_h
        return PRODUCTS[self.product].activation_per_h or 0.0

    def ends_at(self) -> datetime:
        return self.start + timedelta(seconds=self.interval_s * len(self.capacity_price_per_kw_h))

    def starts_at(self) -> datetime:
        return self.start


class AsActivation(SignalModel):
    """Activation of an award: a normalised set value in -1..1 (+1 = full up, i.e. deliver)."""

    award_id: SignalId
    at: Time
    value: Finite = Field(ge=-1, le=1)

    def ends_at(self) -> datetime:
        return self.at


class GridFrequency(SignalModel):
    """A local grid-frequency measurement (e.g. from a frequency relay, every 0.1-1 s); active FCR awards turn it
    into an activation through the droop of `[events]`."""

    at: Time
    frequency_hz: Finite = Field(gt=40, lt=70)

    def ends_at(self) -> datetime:
        return self.at


class SiteTarget(SignalModel):
    """Operator command: the import at the site meter the controller steers to from now on (W, + import)."""

    site_target_w: Finite = Field(ge=-MAX_POWER_W, le=MAX_POWER_W)


SIGNAL_TYPES: dict[str, type[SignalModel]] = {
    "site_target": SiteTarget,
    "prices": PriceSeries,
    "up_dr": UpDrEvent,
    "as_offer": AsOffer,
    "as_award": AsAward,
    "as_activation": AsActivation,
    "frequency": GridFrequency,
}


class Ack(BaseModel):
    """Published on `{prefix}/ack` for every message on a signal topic."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    signal_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None
    received_at: datetime


class SignalRejected(ValueError):
    """A payload failed validation or admission; the message is the reason published on the ack topic."""

    def __init__(self, reason: str, signal_id: str | None = None) -> None:
        super().__init__(bounded(reason))
        self.signal_id = signal_id


def bounded(text: str, limit: int = REASON_MAX_CHARS) -> str:
    """`text` cut to `limit` characters (marked), so no payload can blow up an ack or a log line."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: object) -> str:
    """A payload value as echoed in a reason: its repr, bounded."""
    return bounded(repr(value), SHOWN_VALUE_CHARS)


def safe_id(value: object) -> str | None:
    """The payload's id if it is a well-formed one, else None: an ack never echoes an id that is not an id."""
    if isinstance(value, str) and len(value) <= 128 and re.fullmatch(ID_PATTERN, value):
        return value
    return None


def parse_signal(kind: str, payload: bytes) -> SignalModel:
    """Validate one payload strictly; raises SignalRejected with a bounded reason naming the key and value.

    pydantic's own JSON parser is used rather than `json`: it refuses what `json` raises unexpected errors on (numbers
    of thousands of digits, nesting thousands deep, lone surrogates, invalid UTF-8) as plain invalid JSON."""
    try:
        data = pydantic_core.from_json(payload)
    except ValueError as exc:
        raise SignalRejected(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SignalRejected(f"expected a JSON object, got {_json_type(data)}")
    signal_id = safe_id(data.get("id"))
    try:
        return SIGNAL_TYPES[kind].model_validate_json(payload, strict=True)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err["loc"]) or "(payload)"
            got = err.get("input")
            problems.append(f"{where}: {err['msg']}" + ("" if isinstance(got, dict | list) else f" (got {shown(got)})"))
        raise SignalRejected("; ".join(problems), signal_id) from exc


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _check_window(start_name: str, start: datetime, end_name: str, end: datetime) -> None:
    if end <= start:
        raise ValueError(f"{end_name} {end.isoformat()} must be after {start_name} {start.isoformat()}")
    if end - start > MAX_WINDOW:
        raise ValueError(f"{start_name}..{end_name} spans {end - start}, more than {MAX_WINDOW.days} days")


def now_utc() -> datetime:
    return datetime.now(UTC)
