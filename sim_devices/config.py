"""The `[simulation]` table: pydantic models, per-kind physics parameters and readable errors.

Kind-specific params are checked against the kind of the register map the group names (a battery group cannot
take `start_empty`), so a typo in a scenario fails at load with the key path and value instead of being ignored.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.addressing import Placement, expand_group, index_placements
from sim_devices.maps import MapError, load_map


class SimulationError(ValueError):
    """The simulation config is invalid; the message lists every problem with its key path and value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EVSessionParams(_Strict):
    """An explicit EV session; times are sim seconds from the simulation start."""

    arrival_s: float = Field(ge=0)
    departure_s: float = Field(gt=0)
    capacity_kwh: float = Field(gt=0, le=6553)
    soc: float = Field(ge=0, le=1)
    target_soc: float = Field(default=0.8, ge=0, le=1)
    min_soc: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _order(self) -> EVSessionParams:
        if self.departure_s <= self.arrival_s:
            raise ValueError(f"departure_s {self.departure_s} must be after arrival_s {self.arrival_s}")
        return self


class EVChargerParams(_Strict):
    """Physics of a V2G charger. Without `sessions`, a seeded generator supplies EVs (see ev_sessions)."""

    rated_charge_w: float = Field(default=11_000.0, gt=0)
    rated_discharge_w: float = Field(default=11_000.0, ge=0)
    ramp_w_per_s: float = Field(default=5_000.0, ge=0)
    efficiency: float = Field(default=0.95, gt=0, le=1)
    lease_timeout_s: float = Field(default=30.0, ge=0, le=65535)
    start_empty: bool = False
    sessions: list[EVSessionParams] | None = None

    @field_validator("sessions")
    @classmethod
    def _no_overlap(cls, sessions: list[EVSessionParams] | None) -> list[EVSessionParams] | None:
        if sessions:
            ordered = sorted(sessions, key=lambda s: s.arrival_s)
            for a, b in pairwise(ordered):
                if b.arrival_s < a.departure_s:
                    raise ValueError(f"sessions overlap: one departs at {a.departure_s} s, the next arrives at "
                                     f"{b.arrival_s} s")
            return ordered
        return sessions


class BatteryParams(_Strict):
    """Physics of a stationary battery; `capacity_kwh` is nominal (new)."""

    capacity_kwh: float = Field(default=100.0, gt=0)
    soc: float = Field(default=0.5, ge=0, le=1)
    rated_charge_w: float = Field(default=50_000.0, gt=0)
    rated_discharge_w: float = Field(default=50_000.0, ge=0)
    ramp_w_per_s: float = Field(default=25_000.0, ge=0)
    efficiency: float = Field(default=0.95, gt=0, le=1)
    temperature_c: float = Field(default=25.0, ge=-40, le=80)
    lease_timeout_s: float = Field(default=30.0, ge=0, le=65535)


class MeterParams(_Strict):
    """A DC meter: `measures` = "site" (whole bus, + import) or "pv" (the PV string, export < 0)."""

    measures: Literal["site", "pv"] = "site"
    rated_power_w: float = Field(default=200_000.0, gt=0)
    nominal_voltage_v: float = Field(default=750.0, gt=0)
    bus_resistance_ohm: float = Field(default=0.01, ge=0)


PARAMS_BY_KIND: dict[str, type[_Strict]] = {
    "ev_charger": EVChargerParams,
    "battery": BatteryParams,
    "meter": MeterParams,
}
KindParams = EVChargerParams | BatteryParams | MeterParams


class DeviceGroupConfig(_Strict):
    """One `[[simulation.devices]]` entry: a device or a group (`count`) of one model."""

    id: str = Field(min_length=1)
    count: int | None = Field(default=None, ge=1)
    model: str
    port: int = Field(ge=1, le=65535)
    unit_id: int = Field(default=1, ge=1, le=247)
    units_per_port: int = Field(default=1, ge=1, le=247)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        try:
            load_map(model)
        except MapError as exc:
            raise ValueError(str(exc)) from exc
        return model

    @property
    def kind(self) -> str:
        return load_map(self.model).kind

    def physics(self) -> KindParams:
        """The params validated for this group's device kind."""
        return PARAMS_BY_KIND[self.kind].model_validate(self.params)  # type: ignore[return-value]

    def placements(self) -> list[Placement]:
        return expand_group(self.id, self.count, self.port, self.unit_id, self.units_per_port)


class SimulationConfig(_Strict):
    """The `[simulation]` table."""

    host: str = "127.0.0.1"
    speed: float = Field(default=1.0, gt=0)
    tick_s: float = Field(default=0.2, gt=0, le=60)
    seed: int = 1
    start: datetime | None = None
    base_load_w: float = Field(default=3000.0, ge=0)
    pv_peak_w: float = Field(default=0.0, ge=0)
    utc_offset_h: float = Field(default=9.0, ge=-12, le=14)
    devices: list[DeviceGroupConfig] = Field(min_length=1)

    @field_validator("start")
    @classmethod
    def _aware(cls, start: datetime | None) -> datetime | None:
        if start is not None and start.utcoffset() is None:
            raise ValueError("start needs a UTC offset, e.g. 2026-11-23T09:00:00+09:00")
        return start

    @model_validator(mode="after")
    def _unique(self) -> SimulationConfig:
        index_placements("devices", [g.placements for g in self.devices])
        return self

    def placements(self) -> list[tuple[DeviceGroupConfig, Placement]]:
        return [(g, p) for g in self.devices for p in g.placements()]


def _path(where: str, loc: tuple[int | str, ...]) -> str:
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _messages(exc: ValidationError, where: str, prefix: tuple[int | str, ...] = ()) -> list[str]:
    lines = []
    for err in exc.errors():
        path = _path(where, prefix + tuple(err["loc"]))
        if not err["loc"]:
            lines.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
        elif err["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{path} = {err['input']!r}: unknown key")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{path} = {err['input']!r}: {msg}")
    return lines


def parse_simulation(data: Mapping[str, Any], where: str = "simulation") -> SimulationConfig:
    """Validate the contents of a `[simulation]` table; `where` prefixes every key path in error messages."""
    problems: list[str] = []
    try:
        config: SimulationConfig | None = SimulationConfig.model_validate(dict(data))
    except ValidationError as exc:
        config = None
        problems += _messages(exc, where)
    # Check every group's params even when something else failed, so one run reports all the mistakes.
    groups = data.get("devices")
    for index, group in enumerate(groups if isinstance(groups, list) else []):
        if not isinstance(group, Mapping) or not isinstance(group.get("params", {}), Mapping):
            continue
        try:
            kind = load_map(str(group.get("model"))).kind
            PARAMS_BY_KIND[kind].model_validate(dict(group.get("params", {})))
        except MapError:
            continue  # already reported as a bad model
        except ValidationError as exc:
            problems += _messages(exc, where, ("devices", index, "params"))
    if problems or config is None:
        raise SimulationError("invalid simulation config:\n  " + "\n  ".join(problems))
    return config


def load_simulation_file(path: str | Path) -> SimulationConfig:
    """Read only the `[simulation]` table of a TOML file (other tables belong to the agent and are ignored)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimulationError(f"{p}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SimulationError(f"{p}: not valid TOML: {exc}") from exc
    table = data.get("simulation")
    if not isinstance(table, dict):
        raise SimulationError(f"{p}: no [simulation] table")
    return parse_simulation(table, f"{p}: simulation")
