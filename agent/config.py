"""config.toml as pydantic models.

Unknown keys are errors and every error names the key path and the value it got, because an aggregator editing
a file on a gateway over SSH has nothing else to go on. The `[simulation]` table belongs to sim_devices and is
validated there; the agent only carries it along.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.addressing import Placement, expand_group, index_placements


class ConfigError(ValueError):
    """The config file is unreadable or invalid; str() is the full message for the user."""


class Strict(BaseModel):
    # TOML allows nan and inf; no setting of ours means anything with them (a NaN target would command full power)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AgentSettings(Strict):
    poll_period_s: float = Field(1.0, gt=0.05, le=3600, description="control period: poll, decide, write")
    poll_timeout_s: float = Field(0.5, gt=0, le=60, description="per-request timeout toward one device")
    unavailable_after: int = Field(3, ge=1, le=1000, description="failed polls in a row before an asset is out")
    max_backoff_s: float = Field(30.0, ge=0, le=3600, description="longest wait between polls of a dead asset")
    lease_timeout_s: float = Field(
        10.0, ge=1, le=65535, description="device-side setpoint lease written to devices (whole seconds of device time)"
    )
    setpoint_deadband_w: float = Field(50.0, ge=0, description="rewrite a setpoint only past this change")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @model_validator(mode="after")
    def _timeout_fits_period(self) -> AgentSettings:
        if self.poll_timeout_s >= self.poll_period_s:
            raise ValueError(
                f"poll_timeout_s ({self.poll_timeout_s}) must be below poll_period_s ({self.poll_period_s}) "
                "or one dead device stretches every cycle"
            )
        least = self.min_lease_s(self.poll_period_s, self.poll_timeout_s)
        if self.lease_timeout_s < least:
            raise ValueError(
                f"lease_timeout_s ({self.lease_timeout_s}) must be at least {least:g} s (2 x poll_period_s + "
                "poll_timeout_s) or a single slow cycle lets every device's lease lapse"
            )
        return self

    @staticmethod
    def min_lease_s(period_s: float, timeout_s: float) -> float:
        return float(math.ceil(2 * period_s + timeout_s))


class SiteSettings(Strict):
    import_limit_w: float = Field(math.inf, gt=0, description="maximum import at the site meter")
    export_limit_w: float = Field(math.inf, ge=0, description="maximum export at the site meter")
    meter: str | None = Field(None, description="asset id of the meter at the site connection point")


class ControlSettings(Strict):
    mode: Literal["site_target", "idle"] = "site_target"
    site_target_w: float = Field(0.0, description="import at the site meter the rule controller steers to")


class AssetConfig(Strict):
    """One device, or a group of identical devices when `count` is set (see agent.addressing)."""

    id: str = Field(min_length=1)
    map: str = Field(min_length=1, description="register map id (drivers/maps/<id>.toml) or a path")
    host: str = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=247)
    count: int | None = Field(None, ge=1, le=100000)
    units_per_port: int = Field(1, ge=1, le=247)
    rated_charge_w: float | None = Field(
        None, ge=0, description="nameplate override; the lower of this and the device's wins"
    )
    rated_discharge_w: float | None = Field(None, ge=0)
    ramp_w_per_s: float | None = Field(None, gt=0, description="agent-side ramp limit on setpoint changes")
    efficiency: float = Field(0.95, gt=0, le=1, description="one-way conversion efficiency assumed for EV planning")

    def placements(self) -> list[Placement]:
        return expand_group(self.id, self.count, self.port, self.unit_id, self.units_per_port)


class AppConfig(Strict):
    agent: AgentSettings = AgentSettings()
    site: SiteSettings = SiteSettings()
    control: ControlSettings = ControlSettings()
    assets: list[AssetConfig] = Field(default_factory=list)
    simulation: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_assets(self) -> AppConfig:
        seen = index_placements("assets", [a.placements for a in self.assets], [a.host for a in self.assets])
        if self.site.meter is not None and self.site.meter not in seen:
            raise ValueError(f"site.meter: {self.site.meter!r} is not an asset id")
        return self


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} error(s)"]
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        where = path or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {where}: {err['msg']}{shown}")
    return "\n".join(lines)


def parse_config(text: str, source: str = "<config>") -> AppConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from exc


def load_config(path: str | Path) -> AppConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_config(text, str(path))
