"""Where each domain field comes from in a SunSpec device, and the product maps that adjust it.

A field's source is a sum of terms `[-]MODEL.POINT` (`-701.W`: minus the W point of model 701). Each field has a
list of alternative sources; after discovery the first whose models the device has is used. The defaults below
cover the standard models (701/702/704/713/714/802/124, the older 101–103, 111–113, 120, 160 and the 201–204,
211–214 meters). A product map (drivers/sunspec/products/*.toml, docs/sunspec.md) replaces the source of any field
for one product, adds vendor registers outside the SunSpec chain, names the controls and its documented model order.

Sign: SunSpec inverter and DER models count generation (export) positive, the agent counts import positive, so
their W terms carry a minus; SunSpec meters (20x/21x) count import positive and are taken as they are.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from agent.model import MEASUREMENT_FIELDS, AssetKind

TERM = re.compile(r"^(-?)(\d+)\.([A-Za-z_][\w]*(?:\[\d+\])?(?:\.[A-Za-z_]\w*)?)$")
INVERTERS = (701, 103, 102, 101, 113, 112, 111)
METERS = (203, 204, 202, 201, 213, 214, 212, 211)


class ProfileError(ValueError):
    """A product map or a term is malformed; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Term:
    model_id: int
    point: str
    sign: float

    def __str__(self) -> str:
        return f"{'-' if self.sign < 0 else ''}{self.model_id}.{self.point}"


Source = tuple[Term, ...]


def parse_term(text: str) -> Term:
    match = TERM.match(text.strip())
    if match is None:
        raise ProfileError(f"{text!r} is not a term MODEL.POINT (e.g. \"-701.W\", \"160.module[3].DCW\")")
    sign, model, point = match.groups()
    return Term(int(model), point, -1.0 if sign else 1.0)


def source(*terms: str) -> Source:
    return tuple(parse_term(t) for t in terms)


def _alternatives(pattern: str, models: tuple[int, ...]) -> list[Source]:
    return [source(pattern.format(m=m)) for m in models]


# field -> alternatives, best first
DEFAULT_SOURCES: dict[str, list[Source]] = {
    "power_w": _alternatives("-{m}.W", INVERTERS) + _alternatives("{m}.W", METERS),
    "soc": [source("713.SoC"), source("802.SoC"), source("124.ChaState")],
    "soh": [source("713.SoH"), source("802.SoH")],
    "capacity_wh": [source("713.WHRtg"), source("802.WHRtg"), source("120.WHRtg")],
    "rated_charge_w": [source("702.WChaRteMaxRtg"), source("802.WChaRteMax"), source("120.MaxChaRte")],
    "rated_discharge_w": [source("702.WDisChaRteMaxRtg"), source("802.WDisChaRteMax"), source("120.MaxDisChaRte")],
    "max_charge_w": [source("702.WChaRteMax"), source("124.WChaMax")],
    "max_discharge_w": [source("702.WDisChaRteMax"), source("124.WChaMax")],
    "voltage_v": [
        source("701.LNV"), source("701.LLV"), *_alternatives("{m}.PhVphA", INVERTERS[1:]),
        *_alternatives("{m}.PhV", METERS),
    ],
    "current_a": _alternatives("{m}.A", INVERTERS + METERS),
    "energy_import_wh": [source("701.TotWhAbs"), *_alternatives("{m}.TotWhImp", METERS)],
    "energy_export_wh": [
        source("701.TotWhInj"), *_alternatives("{m}.WH", INVERTERS[1:]), *_alternatives("{m}.TotWhExp", METERS),
    ],
}
# SunSpec percentages (SoC, SoH) feed fields held as fractions
PERCENT_FIELDS = frozenset({"soc", "soh"})
READ_FIELDS = frozenset(DEFAULT_SOURCES) | {"status", "fault_code"}
Control = Literal["auto", "704", "124", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ProductInfo(_Strict):
    id: str
    manufacturer: str
    name: str
    kind: Annotated[AssetKind, Strict(False)]
    source: str = Field(min_length=10)  # the public document the map was written from, with version or commit
    product: str = ""
    models: Annotated[tuple[int, ...], Strict(False)] = ()  # the chain as documented, in the device's order
    control: Control = "auto"


class PointWrite(_Strict):
    """A write made before the first setpoint and again after the device comes back (Fronius ChaGriSet = 1)."""

    point: str
    value: int

    @field_validator("point")
    @classmethod
    def _term(cls, value: str) -> str:
        parse_term(value)
        return value


class ExtraRegister(_Strict):
    """A vendor register outside the SunSpec chain (Fermata FE-20 SoC at 41104): value = raw × scale, SI units."""

    field: str
    address: int = Field(ge=0, le=65535)
    type: Literal["uint16", "int16", "uint32", "int32"]
    scale: float = 1.0

    @field_validator("field")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in MEASUREMENT_FIELDS:
            raise ValueError(f"{value!r} is not a domain field ({', '.join(MEASUREMENT_FIELDS)})")
        return value


class ProductMap(_Strict):
    schema_: int = Field(alias="schema")
    product: ProductInfo
    fields: dict[str, Annotated[tuple[str, ...], Strict(False)]] = Field(default_factory=dict)
    on_connect: Annotated[tuple[PointWrite, ...], Strict(False)] = ()
    extra: Annotated[tuple[ExtraRegister, ...], Strict(False)] = ()

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: int) -> int:
        if value != 1:
            raise ValueError(f"schema {value} is not supported (SunSpec product maps are schema 1)")
        return value

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for name, terms in value.items():
            if name not in DEFAULT_SOURCES:
                raise ValueError(f"fields.{name}: not a field a SunSpec point can feed ({', '.join(DEFAULT_SOURCES)})")
            if not terms:
                raise ValueError(f"fields.{name}: give at least one term")
            for term in terms:
                try:
                    parse_term(term)
                except ProfileError as exc:
                    raise ValueError(f"fields.{name}: {exc}") from exc
        return value

    def sources(self) -> dict[str, list[Source]]:
        """The field sources with this product's replacements."""
        merged = dict(DEFAULT_SOURCES)
        for name, terms in self.fields.items():
            merged[name] = [source(*terms)]
        return merged


def products_dir() -> Path:
    return Path(__file__).parent / "products"


def load_product(name_or_path: str | Path) -> ProductMap:
    """A product map by id (drivers/sunspec/products) or path; errors name the file and the key."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = products_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in products_dir().glob("*.toml"))
        raise ProfileError(f"SunSpec product map {name_or_path!r} not found (looked for {path}; known: {known})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from exc
    try:
        return ProductMap.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg'].removeprefix('Value error, ')}"
                    for e in exc.errors()]
        raise ProfileError(f"{path}: " + "; ".join(problems)) from exc
