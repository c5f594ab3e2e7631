"""Grid signals the agent takes in: JEPX-style prices, up-DR events, ancillary-service awards and activations.

Each signal type has a pydantic schema (published as JSON Schema in docs/schemas/) and a topic of its own under
`{prefix}/signals/`. Payloads are in SI units with the unit in the key (W, s), prices in currency per kWh (DESIGN.md
§4), times as ISO 8601 with an offset. Anything that does not validate is rejected with a reason that names the key,
and the rejection is published on the ack topic; a valid signal is stored durably *before* it is acknowledged, so an
acknowledged signal survives a broker or agent restart (DESIGN.md §7 rule 5: bad input never changes a setpoint).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Finite = Annotated[float, AfterValidator(_finite)]
SignalId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
AsProduct = Literal["FCR", "S-FRR", "FRR", "S-RR", "RR"]


class SignalModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: SignalId = Field(description="unique per signal; a re-sent id is acknowledged again, stored once")


class PriceSeries(SignalModel):
    """Energy prices for consecutive intervals (JEPX: 48 half-hours a day), currency per kWh."""

    area: str = Field("system", max_length=32, description="'system' or a JEPX area name")
    currency: str = Field("JPY", pattern=r"^[A-Z]{3}$")
    start: AwareDatetime
    interval_s: int = Field(1800, ge=60, le=86400)
    prices_per_kwh: list[Finite] = Field(min_length=1, max_length=2000)


class UpDrEvent(SignalModel):
    """Up-DR (上げDR): raise consumption above the baseline by `requested_increase_w` inside the window."""

    start: AwareDatetime
    end: AwareDatetime
    requested_increase_w: Finite = Field(gt=0)
    price_per_kwh: Finite = Field(ge=0, description="reward per kWh above the baseline")
    baseline_method: Literal["high4of5", "pre_event_average"] = "high4of5"

    @model_validator(mode="after")
    def _window(self) -> UpDrEvent:
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} must be after start {self.start.isoformat()}")
        return self


class AsAward(SignalModel):
    """An ancillary-service award: capacity to hold up (deliver) and down (absorb) over a block."""

    product: AsProduct
    block_start: AwareDatetime
    block_end: AwareDatetime
    up_w: Finite = Field(ge=0, description="capacity to increase export / reduce consumption")
    down_w: Finite = Field(ge=0, description="capacity to increase consumption")
    capacity_price_per_kw_h: Finite = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> AsAward:
        if self.block_end <= self.block_start:
            raise ValueError("block_end must be after block_start")
        if self.up_w == 0 and self.down_w == 0:
            raise ValueError("an award needs up_w or down_w above 0")
        return self


class AsActivation(SignalModel):
    """Activation of an award: a normalised set value in -1..1 (+1 = full up, i.e. deliver)."""

    award_id: SignalId
    at: AwareDatetime
    value: Finite = Field(ge=-1, le=1)


class GridFrequency(SignalModel):
    """A local grid-frequency measurement (e.g. from a frequency relay, every 0.1-1 s); active FCR awards turn it
    into an activation through the droop of `[events]`."""

    at: AwareDatetime
    frequency_hz: Finite = Field(gt=40, lt=70)


class SiteTarget(SignalModel):
    """Operator command: the import at the site meter the controller steers to from now on (W, + import)."""

    site_target_w: Finite = Field(ge=-1e9, le=1e9)


SIGNAL_TYPES: dict[str, type[SignalModel]] = {
    "site_target": SiteTarget,
    "prices": PriceSeries,
    "up_dr": UpDrEvent,
    "as_award": AsAward,
    "as_activation": AsActivation,
    "frequency": GridFrequency,
}


class Ack(BaseModel):
    """Published on `{prefix}/signals/ack` for every message on a signal topic."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    signal_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    reason: str | None = None
    received_at: datetime


class SignalRejected(ValueError):
    """A payload failed validation; the message is the reason published on the ack topic."""

    def __init__(self, reason: str, signal_id: str | None = None) -> None:
        super().__init__(reason)
        self.signal_id = signal_id


def parse_signal(kind: str, payload: bytes, max_bytes: int) -> SignalModel:
    """Validate one payload; raises SignalRejected with a reason naming the key and value."""
    if len(payload) > max_bytes:
        raise SignalRejected(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignalRejected(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SignalRejected(f"expected a JSON object, got {type(data).__name__}")
    signal_id = data.get("id") if isinstance(data.get("id"), str) else None
    try:
        return SIGNAL_TYPES[kind].model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err["loc"]) or "(payload)"
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            problems.append(f"{where}: {err['msg']}{shown}")
        raise SignalRejected("; ".join(problems), signal_id) from exc


def now_utc() -> datetime:
    return datetime.now(UTC)
