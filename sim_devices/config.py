"""The `[simulation]` table: pydantic models, per-kind physics parameters and readable errors.

Kind-specific params are checked against the kind of the register map the group names (a battery group cannot
take `start_empty`), so a typo in a scenario fails at load with the key path and value instead of being ignored.

A device group is served over Modbus TCP (default: `port`, `unit_id`, a register map in drivers/maps) or over MQTT
(`transport = "mqtt"`: a `topic` pattern with `{id}` and an MQTT map in drivers/mqtt_maps), with the broker in the
optional `[simulation.mqtt]` table. The physics is the same whichever transport serves it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.addressing import Placement, expand_group, index_placements
from agent.config import Host
from sim_devices.maps import MapError, load_map
from sim_devices.mqtt_codec import load_mqtt_model

Transport = Literal["modbus", "mqtt", "ocpp", "sunspec"]
# OCPP station models (sim_devices/ocpp_station.py) and their device kind: the protocol defines the fields, no map
OCPP_MODELS: dict[str, str] = {"ocpp21_dc_bpt": "ev_charger", "ocpp201_charge": "ev_charger"}


def model_kind(transport: str, model: str) -> str:
    """Device kind of a model id: a register map for Modbus groups, an MQTT map for MQTT groups, an OCPP station
    model for OCPP groups (MapError if none)."""
    if transport == "sunspec":  # SunSpec images (sim_devices/sunspec): the models' definitions, no map
        from sim_devices.sunspec.image import PRODUCTS

        if model not in PRODUCTS:
            raise MapError(f"unknown SunSpec product {model!r}; known: {', '.join(PRODUCTS)}")
        return PRODUCTS[model][0]
    if transport == "ocpp":
        if model not in OCPP_MODELS:
            raise MapError(f"unknown OCPP station model {model!r}; known: {', '.join(OCPP_MODELS)}")
        return OCPP_MODELS[model]
    return load_mqtt_model(model).kind if transport == "mqtt" else load_map(model).kind


class SimulationError(ValueError):
    """The simulation config is invalid; the message lists every problem with its key path and value."""


class _Strict(BaseModel):
    # strict like the agent's config: "2" is not a speed, and nan/inf mean nothing for a device parameter
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


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


class MqttSimConfig(_Strict):
    """The `[simulation.mqtt]` table: the broker the MQTT devices of the site publish to.

    The password comes from `password_env` (the name of an environment variable) on a shared machine; an inline
    `password` is accepted for throw-away test brokers only (DESIGN.md §4: no secrets inline in real configs).
    """

    host: Host = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    password_env: str | None = None
    ca_file: str | None = None
    client_id: str | None = None
    publish_period_s: float = Field(default=1.0, gt=0, le=3600)
    qos: Literal[0, 1] = 0

    @model_validator(mode="after")
    def _one_password(self) -> MqttSimConfig:
        if self.password is not None and self.password_env is not None:
            raise ValueError("give password or password_env, not both")
        if self.password_env is not None and self.password_env not in os.environ:
            raise ValueError(f"password_env names {self.password_env!r}, which is not set in the environment")
        return self

    def resolved_password(self) -> str | None:
        return os.environ[self.password_env] if self.password_env is not None else self.password


class OcppSimConfig(_Strict):
    """The `[simulation.ocpp]` table: the CSMS the simulated OCPP 2.1 stations dial (docs/ocpp.md). Each station
    connects to `<url>/<station id>` with HTTP Basic, its password from the same JSON object
    {"<station id>": "<password>"} the agent's `[ocpp]` reads (password_file, or the variable password_env)."""

    url: str = Field(default="ws://127.0.0.1:9000/ocpp", pattern=r"^wss?://[^\s/]+(/[^\s]*)?$")
    ca_file: str | None = Field(default=None, description="CA (PEM) the CSMS's certificate is checked against")
    password_file: str | None = None
    password_env: str | None = None
    meter_period_s: float = Field(default=1.0, gt=0, le=3600, description="TransactionEvent meter values, wall s")
    fallback_w: float = Field(default=0.0, description="power after a profile lapses offline (no TxDefaultProfile)")
    tx_resumption_timeout_s: float = Field(default=0.0, ge=0, description="2.1: > 0 resumes a transaction across a "
                                           "reboot (TxResumed); 0 ends it (PowerLoss)")
    follow_tx_interval: bool = Field(default=True, description="apply the CSMS's SampledDataCtrlr.TxUpdatedInterval; "
                                     "false keeps meter_period_s (a lab setting for sub-second tests)")

    @model_validator(mode="after")
    def _one_source(self) -> OcppSimConfig:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        return self


MODBUS_ONLY_KEYS = ("port", "unit_id", "units_per_port")


class DeviceGroupConfig(_Strict):
    """One `[[simulation.devices]]` entry: a device or a group (`count`) of one model on one transport."""

    id: str = Field(min_length=1)
    count: int | None = Field(default=None, ge=1)
    transport: Transport = "modbus"
    model: str
    port: int | None = Field(default=None, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=1, le=247)
    units_per_port: int = Field(default=1, ge=1, le=247)
    topic: str | None = None
    evses: int = Field(default=1, ge=1, le=32)  # OCPP: EVSEs per station, one connector and one physics each
    sunspec_order: Literal["a", "b"] = "a"  # SunSpec: firmware order of the models (sim_devices/sunspec/image.py)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str, info: ValidationInfo) -> str:
        try:
            model_kind(info.data.get("transport", "modbus"), model)
        except MapError as exc:
            raise ValueError(str(exc)) from exc
        return model

    @field_validator("topic")
    @classmethod
    def _topic_pattern(cls, topic: str | None) -> str | None:
        if topic is None:
            return None
        try:
            sample = topic.format(id="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"topic pattern may only use {{id}} ({type(exc).__name__}: {exc})") from exc
        if not sample or "+" in sample or "#" in sample or sample.startswith("/") or sample.endswith("/"):
            raise ValueError("topic must be a plain topic (no wildcards, no leading or trailing /)")
        return topic

    @model_validator(mode="after")
    def _transport_keys(self) -> DeviceGroupConfig:
        if self.transport != "ocpp" and self.evses != 1:  # (not fields_set: a dumped and re-read config has it)
            raise ValueError("evses is only for transport = 'ocpp' (EVSEs per station)")
        if self.transport != "sunspec" and "sunspec_order" in self.model_fields_set:
            raise ValueError("sunspec_order is only for transport = 'sunspec'")
        if self.transport in ("modbus", "sunspec"):
            if self.port is None:
                raise ValueError("port is required for a Modbus device group")
            if self.topic is not None:
                raise ValueError("topic is only for transport = 'mqtt'")
        elif self.transport == "ocpp":
            given = [k for k in (*MODBUS_ONLY_KEYS, "topic") if k in self.model_fields_set]
            if given:
                raise ValueError(f"transport = 'ocpp' takes no {', '.join(given)} (stations dial [simulation.ocpp])")
        else:
            if self.topic is None:
                raise ValueError("topic is required for transport = 'mqtt' (e.g. \"devices/{id}\")")
            if self.count is not None and "{id}" not in self.topic:
                raise ValueError(f"topic {self.topic!r} needs an {{id}} placeholder when count is set")
            given = [k for k in MODBUS_ONLY_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(f"only transport = 'modbus' takes {', '.join(given)}")
        return self

    @property
    def kind(self) -> str:
        return model_kind(self.transport, self.model)

    def physics(self) -> KindParams:
        """The params validated for this group's device kind."""
        return PARAMS_BY_KIND[self.kind].model_validate(self.params)  # type: ignore[return-value]

    def placements(self) -> list[Placement]:
        """Device ids with their Modbus address; MQTT devices and OCPP stations have none (port and unit 0)."""
        if self.transport in ("mqtt", "ocpp"):
            return [Placement(p.id, 0, 0) for p in expand_group(self.id, self.count, 1)]
        assert self.port is not None
        return expand_group(self.id, self.count, self.port, self.unit_id, self.units_per_port)

    def evse_ids(self, station_id: str) -> list[str]:
        """Physics ids of an OCPP station's EVSEs: the station id itself for one EVSE, else `<station>-evse<k>`."""
        if self.evses == 1:
            return [station_id]
        return [f"{station_id}-evse{k}" for k in range(1, self.evses + 1)]

    def device_topic(self, device_id: str) -> str:
        """Base topic of one MQTT device of this group."""
        assert self.topic is not None
        return self.topic.format(id=device_id)

    def _address_check(self) -> list[Placement]:
        """What index_placements checks: MQTT and OCPP devices get distinct pseudo ports so only their ids are
        compared."""
        if self.transport in ("mqtt", "ocpp"):
            return expand_group(self.id, self.count, 1)
        return self.placements()


class SimulationConfig(_Strict):
    """The `[simulation]` table."""

    host: Host = "127.0.0.1"  # never "" (that would listen on every interface)
    speed: float = Field(default=1.0, gt=0)
    tick_s: float = Field(default=0.2, gt=0, le=60)
    seed: int = 1
    start: datetime | None = Field(default=None, strict=False)  # a TOML datetime or an ISO string
    base_load_w: float = Field(default=3000.0, ge=0)
    pv_peak_w: float = Field(default=0.0, ge=0)
    utc_offset_h: float = Field(default=9.0, ge=-12, le=14)
    mqtt: MqttSimConfig | None = None
    ocpp: OcppSimConfig | None = None
    fault_timeline: str | None = Field(default=None, min_length=1)  # a TOML file of [[faults]] (docs/simulator.md)
    devices: list[DeviceGroupConfig] = Field(min_length=1)

    @field_validator("start")
    @classmethod
    def _aware(cls, start: datetime | None) -> datetime | None:
        if start is not None and start.utcoffset() is None:
            raise ValueError("start needs a UTC offset, e.g. 2026-11-23T09:00:00+09:00")
        return start

    @model_validator(mode="after")
    def _unique(self) -> SimulationConfig:
        hosts = ["" if g.transport in ("modbus", "sunspec") else f"mqtt#{i}" for i, g in enumerate(self.devices)]
        index_placements("devices", [g._address_check for g in self.devices], hosts)
        ids = {p.id for g in self.devices for p in g.placements()}
        for index, group in enumerate(self.devices):  # an OCPP station's EVSE physics ids must not clash either
            for placement in group.placements() if group.transport == "ocpp" and group.evses > 1 else []:
                for evse_id in group.evse_ids(placement.id):
                    if evse_id in ids:
                        raise ValueError(f"devices[{index}].evses: EVSE id {evse_id!r} is already a device id")
                    ids.add(evse_id)
        topics: dict[str, str] = {}
        for index, group in enumerate(self.devices):
            if group.transport != "mqtt":
                continue
            for placement in group.placements():
                topic = group.device_topic(placement.id)
                if topic in topics:
                    raise ValueError(f"devices[{index}]: topic {topic!r} already used by {topics[topic]!r}")
                topics[topic] = placement.id
        return self

    @property
    def mqtt_settings(self) -> MqttSimConfig:
        """The broker settings, defaults when the `[simulation.mqtt]` table is absent."""
        return self.mqtt if self.mqtt is not None else MqttSimConfig()

    def placements(self) -> list[tuple[DeviceGroupConfig, Placement]]:
        return [(g, p) for g in self.devices for p in g.placements()]

    def fault_kinds_by_device(self) -> dict[str, tuple[str, ...]]:
        """The fault kinds each device (an OCPP station as a whole) can show, for --fault and the timeline."""
        from sim_devices.faults import fault_kinds

        return {p.id: fault_kinds(g.transport) for g, p in self.placements()}

    def with_fault_timeline(self, path: str | Path, where: str) -> SimulationConfig:
        """This config with the timeline file `path` read, checked against the devices and made absolute
        (SimulationError naming `where`, the file, the entry and the key)."""
        from sim_devices.faults import TimelineError, load_timeline

        resolved = Path(path).resolve()
        try:
            load_timeline(resolved, self.fault_kinds_by_device())
        except TimelineError as exc:
            raise SimulationError(f"{where}: {exc}") from exc
        return self.model_copy(update={"fault_timeline": str(resolved)})


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
            kind = model_kind(str(group.get("transport", "modbus")), str(group.get("model")))
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
    config = parse_simulation(table, f"{p}: simulation")
    if config.fault_timeline is not None:  # relative to the config file
        config = config.with_fault_timeline(p.parent / config.fault_timeline, f"{p}: simulation.fault_timeline")
    return config
