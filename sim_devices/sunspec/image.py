"""SunSpec images of simulated devices, built from pysunspec2's model definitions, driving the shared physics.

Two products, each in two firmware orders (the same models at other addresses, as vendors' firmware updates do):
  * sunspec_battery_inverter: 1 + 701 + 702 + 704 + 713 + 802 + 124
  * sunspec_v2g_charger:      1 + 701 + 702 + 704 + 714 + 713 (714 has one DC port of type EV)
Writes to 704 (`WSetEna`/`WSetMod`/`WSet`, `WSetRvrtTms`) or 124 (`StorCtl_Mod`, `InWRte`/`OutWRte` in % of
`WChaMax`, `InOutWRte_RvrtTms`) move the same physics as the register-map devices, and the physics' lease reverts
the setpoint to 0 W (704 `WSetRvrt` = 0; on 124 the limits are dropped, `StorCtl_Mod` reads 0 again). A write to a
read-only point is refused with exception 2 (illegal address). The image is written with the driver-independent
helpers of drivers/sunspec/models.py and points.py only where they are pysunspec2's definitions; the values, signs
and scale factors here are the simulator's own (DESIGN.md §2), and pysunspec2's own client checks them (tests/sunspec).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.sunspec.models import ModelLayout, layout
from drivers.sunspec.points import decode_words, encode, encode_fields
from sim_devices.faults import DeviceFaults

log = structlog.get_logger(__name__)

PRODUCTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "sunspec_battery_inverter": ("battery", (1, 701, 702, 704, 713, 802, 124)),
    "sunspec_v2g_charger": ("ev_charger", (1, 701, 702, 704, 714, 713)),
}
# Firmware orders: "a" as listed, "b" the same models after model 1 in reverse (every address moves).
ORDERS = ("a", "b")
BASE = 40000
MARKER = [0x5375, 0x6E53]
END = [0xFFFF, 0]
NOMINAL_V = 230.0
DC_V = 400.0
PCT_SF = -1  # SoC/SoH in 0.1 %
RATE_SF = -2  # InWRte/OutWRte in 0.01 %
READ_CODES = frozenset({3, 4, 23})
WRITE_CODES = frozenset({6, 16, 22, 23})


class SunSpecPhysics(Protocol):
    """What the image needs from a ControllableDevice."""

    import_wh: float
    export_wh: float

    def fields(self) -> dict[str, float]: ...

    def write_setpoint(self, setpoint_w: float) -> None: ...

    def write_lease_timeout(self, timeout_s: float) -> None: ...


def model_order(product: str, order: str | list[int]) -> tuple[int, ...]:
    """The chain of `product` in firmware order `order` ("a", "b", or an explicit list: 1 first, same models)."""
    if product not in PRODUCTS:
        raise ValueError(f"unknown SunSpec product {product!r}; known: {', '.join(PRODUCTS)}")
    models = PRODUCTS[product][1]
    if isinstance(order, list):
        if not order or order[0] != 1 or sorted(order) != sorted(models):
            raise ValueError(f"order {order} must start with 1 and hold exactly the models {list(models)}")
        return tuple(order)
    if order not in ORDERS:
        raise ValueError(f"order {order!r} is not one of {ORDERS} or a list of model ids")
    return models if order == "a" else (1, *reversed(models[1:]))


def exponent_for(max_abs: float, width_bits: int = 15, finest: int = -2) -> int:
    """The finest power of ten at which `max_abs` fits a register of `width_bits` magnitude bits."""
    limit = 2**width_bits - 2
    sf = finest
    while abs(max_abs) / 10.0**sf > limit and sf < 10:
        sf += 1
    return sf


@dataclass
class Placed:
    model_id: int
    address: int  # of its ID register
    layout: ModelLayout


class SunSpecImage:
    """The register image of one device: static words built once, live points refreshed on each read."""

    def __init__(self, product: str, physics: SunSpecPhysics, device_id: str, order: str | list[int] = "a",
                 base: int = BASE) -> None:
        self.product = product
        self.kind = PRODUCTS[product][0]
        self.physics = physics
        self.device_id = device_id
        self.base = base
        fields = physics.fields()
        rated = max(fields["rated_charge_w"], fields["rated_discharge_w"])
        self.w_sf = exponent_for(rated)  # int16 W of 701
        self.cap_sf = exponent_for(max(fields.get("capacity_wh", 0.0), 1.0), 16)
        self.settings: dict[tuple[int, str], float] = {
            (704, "WSetEna"): 0, (704, "WSetMod"): 1, (704, "WSetEnaRvrt"): 1, (704, "WSetRvrt"): 0.0,
            (124, "StorCtl_Mod"): 0, (124, "InWRte"): 0.0, (124, "OutWRte"): 0.0, (124, "ChaGriSet"): 0,
            (124, "WChaMax"): fields["rated_charge_w"],
        }
        self.placed: list[Placed] = []
        address = base + 2
        for model_id in model_order(product, order):
            model = layout(model_id, self._length(model_id))
            self.placed.append(Placed(model_id, address, model))
            address += 2 + model.length
        self.end = address + 2
        self.by_id = {p.model_id: p for p in self.placed}
        self._expiries = self._lease_expiries()
        # Scale factors never change while the device runs (a client may cache them), so every model's words with
        # its IDs, scale factors and "not implemented" values are built once; a refresh encodes the live points.
        self._static: dict[int, list[int]] = {}
        self._exponent: dict[tuple[int, str], int] = {}
        for placed in self.placed:
            exps = self.exponents(placed.model_id)
            words = encode_fields(placed.layout, {}, exps)
            self._static[placed.model_id] = self._common(placed.layout, words) if placed.model_id == 1 else words
            for point in placed.layout.points.values():
                sf = point.sf
                self._exponent[(placed.model_id, point.name)] = exps.get(sf, 0) if isinstance(sf, str) else 0
        self._version = 0  # bumped by every accepted write
        # what the device says from what its physics is (a lying-device fault adds an offset: DeviceFaults.reported)
        self.faults: DeviceFaults | None = None
        self._cached: tuple[tuple[Any, ...], list[int]] | None = None

    @staticmethod
    def _length(model_id: int) -> int:
        if model_id == 714:  # one DC port
            return layout(714).length
        if model_id == 1:
            return 66
        return layout(model_id).length

    def _lease_expiries(self) -> int:
        lease = getattr(self.physics, "lease", None)
        return int(getattr(lease, "expiries", 0))

    # ---- reading ------------------------------------------------------------------------------------------
    def exponents(self, model_id: int) -> dict[str, int]:
        fields = self.physics.fields()
        cap = self.cap_sf
        w_u16 = exponent_for(max(fields["rated_charge_w"], fields["rated_discharge_w"]), 16)
        return {
            1: {},
            701: {"W_SF": self.w_sf, "A_SF": -1, "V_SF": -1, "Hz_SF": -2, "TotWh_SF": 0, "VA_SF": self.w_sf,
                  "Var_SF": self.w_sf, "PF_SF": -2},
            702: {"W_SF": w_u16, "V_SF": 0, "A_SF": 0, "VA_SF": w_u16, "Var_SF": w_u16, "PF_SF": -2, "S_SF": 0},
            704: {"WSet_SF": 0, "WSetPct_SF": -2, "PF_SF": -2, "WMaxLimPct_SF": -1, "VarSet_SF": 0,
                  "VarSetPct_SF": -1},
            713: {"WH_SF": cap, "Pct_SF": PCT_SF},
            714: {"DCA_SF": -1, "DCV_SF": -1, "DCW_SF": self.w_sf, "DCWH_SF": 0, "Tmp_SF": -1},
            802: {"WHRtg_SF": cap, "WChaDisChaMax_SF": w_u16, "SoC_SF": PCT_SF, "SoH_SF": PCT_SF, "V_SF": -1,
                  "AHRtg_SF": 0, "DisChaRte_SF": 0, "DoD_SF": 0, "CellV_SF": -3, "A_SF": -1, "AMax_SF": 0,
                  "W_SF": self.w_sf},
            124: {"WChaMax_SF": w_u16, "InOutWRte_SF": RATE_SF, "ChaState_SF": PCT_SF, "WChaDisChaGra_SF": 0,
                  "VAChaMax_SF": w_u16, "MinRsvPct_SF": 0, "StorAval_SF": 0, "InBatV_SF": -1},
        }[model_id]

    def values(self, model_id: int, f: Mapping[str, float]) -> dict[str, Any]:
        """Device-unit values of one model's live points from the physics' fields (agent sign: + charging)."""
        power = f["power_w"]
        fault = bool(f.get("fault_code"))
        soc_pct = 100.0 * f.get("soc", 0.0)
        soh_pct = 100.0 * f.get("soh", 1.0)
        connected = f.get("ev_connected", 1)
        s = self.settings
        if model_id == 1:
            return {"DA": 1}
        if model_id == 701:
            status = 6 if fault else 3 if abs(power) > 1.0 else 7
            return {"ACType": 1, "St": 0 if fault else 1, "InvSt": status, "ConnSt": 1, "W": -power,
                    "VA": abs(power), "PF": 1.0, "A": abs(power) / NOMINAL_V, "LNV": NOMINAL_V, "LLV": 400.0,
                    "Hz": 50.0, "TotWhInj": self.physics.export_wh, "TotWhAbs": self.physics.import_wh,
                    "Alrm": int(f.get("fault_code", 0))}
        if model_id == 702:
            return {"WMaxRtg": max(f["rated_charge_w"], f["rated_discharge_w"]),
                    "WChaRteMaxRtg": f["rated_charge_w"], "WDisChaRteMaxRtg": f["rated_discharge_w"],
                    "WMax": max(f["rated_charge_w"], f["rated_discharge_w"]),
                    "WChaRteMax": f["max_charge_w"], "WDisChaRteMax": f["max_discharge_w"], "VNomRtg": NOMINAL_V,
                    "VNom": NOMINAL_V}
        if model_id == 704:
            return {"WSetEna": s[(704, "WSetEna")], "WSetMod": s[(704, "WSetMod")], "WSet": -f["setpoint_w"],
                    "WSetRvrt": s[(704, "WSetRvrt")], "WSetEnaRvrt": s[(704, "WSetEnaRvrt")],
                    "WSetRvrtTms": f["lease_timeout_s"]}
        if model_id == 713:
            cap = f.get("capacity_wh", 0.0)
            return {"WHRtg": cap, "WHAvail": cap * soc_pct / 100.0, "SoC": soc_pct, "SoH": soh_pct,
                    "Sta": 2 if fault else 0}
        if model_id == 714:
            return {"NPrt": 1, "DCW": -power, "DCA": abs(power) / DC_V, "Prt[1].PrtTyp": 2,
                    "Prt[1].ID": 1, "Prt[1].DCSta": 3 if fault else (1 if connected else 0),
                    "Prt[1].DCW": -power, "Prt[1].DCV": DC_V if connected else 0.0,
                    "Prt[1].DCA": abs(power) / DC_V}
        if model_id == 802:
            cha = 4 if power > 1.0 else 3 if power < -1.0 else 6
            return {"WHRtg": f.get("capacity_wh", 0.0), "WChaRteMax": f["rated_charge_w"],
                    "WDisChaRteMax": f["rated_discharge_w"], "SoC": soc_pct, "SoH": soh_pct, "ChaSt": cha,
                    "LocRemCtl": 0, "Typ": 4, "State": 99 if fault else 3, "V": DC_V}
        if model_id == 124:
            cha = 4 if power > 1.0 else 3 if power < -1.0 else 6
            return {"WChaMax": s[(124, "WChaMax")], "StorCtl_Mod": s[(124, "StorCtl_Mod")],
                    "ChaState": soc_pct, "ChaSt": cha, "InWRte": s[(124, "InWRte")],
                    "OutWRte": s[(124, "OutWRte")], "InOutWRte_RvrtTms": f["lease_timeout_s"],
                    "ChaGriSet": s[(124, "ChaGriSet")], "InBatV": DC_V}
        raise ValueError(f"no values for model {model_id}")

    def words(self) -> list[int]:
        """The whole image from the base address: marker, models, end model (rebuilt only when the physics moved
        or a write was taken: the several requests of one poll share one build)."""
        if self._lease_expiries() != self._expiries:  # the lease lapsed: 124's limits are dropped by the device
            self._expiries = self._lease_expiries()
            self.settings[(124, "StorCtl_Mod")] = 0
            self._version += 1
        lease = getattr(self.physics, "lease", None)
        key = (float(getattr(self.physics, "t_s", 0.0)), self._version, getattr(self.physics, "fault_code", 0),
               getattr(lease, "writes", 0), getattr(lease, "timeout_s", 0.0),
               0.0 if self.faults is None else self.faults.state.offset_w)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        fields = self.physics.fields()
        f = fields if self.faults is None else self.faults.reported(fields)
        out = list(MARKER)
        for placed in self.placed:
            model_words = list(self._static[placed.model_id])
            for name, value in self.values(placed.model_id, f).items():
                point = placed.layout.points[name]
                exponent = self._exponent[(placed.model_id, name)]
                model_words[point.offset : point.offset + point.size] = encode(point, value, exponent)
            out += model_words
        out += END
        self._cached = (key, out)
        return out

    def _common(self, model: ModelLayout, words: list[int]) -> list[int]:
        for name, text in (("Mn", "vpp-sim"), ("Md", self.product), ("SN", self.device_id), ("Vr", "1.0")):
            point = model.point(name)
            data = text.encode("latin-1")[: 2 * point.size].ljust(2 * point.size, b"\0")
            words[point.offset : point.offset + point.size] = [
                int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)
            ]
        return words

    # ---- writing ------------------------------------------------------------------------------------------
    def locate(self, address: int) -> tuple[Placed, str] | None:
        """The model and point whose first register is `address`."""
        for placed in self.placed:
            if placed.address <= address < placed.address + 2 + placed.layout.length:
                offset = address - placed.address
                for point in placed.layout.points.values():
                    if point.offset == offset:
                        return placed, point.name
                return None
        return None

    def apply_write(self, address: int, values: list[int]) -> bool:
        """Apply a write of `values` at `address` to the settings and the physics; False if any word lands on a
        read-only point (or half of one)."""
        changed: list[tuple[int, str, float]] = []
        i = 0
        while i < len(values):
            found = self.locate(address + i)
            if found is None:
                return False
            placed, name = found
            point = placed.layout.point(name)
            if not point.writable or i + point.size > len(values):
                return False
            exps = self.exponents(placed.model_id)
            raw = decode_words(point, values[i : i + point.size])
            if raw is None or isinstance(raw, str):
                return False
            sf = exps.get(point.sf, 0) if isinstance(point.sf, str) else 0
            changed.append((placed.model_id, name, float(raw) * 10.0**sf))
            i += point.size
        self._version += 1
        for model_id, name, value in changed:
            self._set(model_id, name, value)
        touched = {(m, n) for m, n, _ in changed}
        if touched & {(704, "WSetEna"), (704, "WSet"), (704, "WSetMod")}:
            s = self.settings
            enabled = s[(704, "WSetEna")] == 1 and s[(704, "WSetMod")] == 1
            wset = next((v for m, n, v in changed if (m, n) == (704, "WSet")), None)
            if wset is None:
                wset = -self.physics.fields()["setpoint_w"]
            self.physics.write_setpoint(-wset if enabled else 0.0)
        if touched & {(124, "StorCtl_Mod"), (124, "InWRte"), (124, "OutWRte")}:
            self.physics.write_setpoint(self._window_setpoint())
        return True

    def _set(self, model_id: int, name: str, value: float) -> None:
        if name in ("WSetRvrtTms", "InOutWRte_RvrtTms"):
            self.physics.write_lease_timeout(value)
        elif (model_id, name) in self.settings or model_id in (704, 124):
            self.settings[(model_id, name)] = value

    def _window_setpoint(self) -> float:
        """124: the power inside [−OutWRte, +InWRte] % of WChaMax closest to 0 (0 when the window holds 0)."""
        s = self.settings
        mode = int(s[(124, "StorCtl_Mod")])
        reference = s[(124, "WChaMax")]
        high = s[(124, "InWRte")] / 100.0 * reference if mode & 1 else math.inf
        low = -s[(124, "OutWRte")] / 100.0 * reference if mode & 2 else -math.inf
        if low > high:
            return 0.0  # an empty window: the device refuses to act on it
        if low > 0:
            return low
        if high < 0:
            return high
        return 0.0


class SunSpecEndpoint:
    """One SunSpec device on the wire: unit id, image, faults; served by sim_devices.server.PortServer."""

    def __init__(self, device_id: str, unit_id: int, image: SunSpecImage, faults: DeviceFaults) -> None:
        self.device_id = device_id
        self.unit_id = unit_id
        self.image = image
        self.physics = image.physics
        self.faults = faults
        image.faults = faults
        self.reads = 0
        self.writes = 0
        self.rejected_writes = 0

    def sim_device(self) -> SimDevice:
        words = self.image.words()
        block = SimData(address=self.image.base, values=words, datatype=DataType.REGISTERS)
        return SimDevice(id=self.unit_id, simdata=[block], action=self.action)

    def sim_devices(self) -> list[SimDevice]:
        """PortServer's interface: the SimDevices of every unit id this device answers on (one)."""
        return [self.sim_device()]

    def _fill(self, registers: list[int]) -> None:
        registers[: self.image.end - self.image.base] = self.image.words()

    async def action(self, function_code: int, start_address: int, address: int, count: int,
                     registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus callback for every access (see sim_devices.server.DeviceEndpoint.action)."""
        if set_values is None and function_code not in READ_CODES:
            self._fill(registers)
            return None
        code = await self.faults.gate()
        if code is not None:
            try:
                return ExcCodes(code)
            except ValueError:
                return ExcCodes.DEVICE_FAILURE
        if set_values is not None and function_code in WRITE_CODES:
            if not self.image.apply_write(address, [int(v) for v in set_values]):
                self.rejected_writes += 1
                log.warning("sim.sunspec_write_refused", device=self.device_id, address=address, count=count)
                return ExcCodes.ILLEGAL_ADDRESS
            self.writes += 1
            return None
        if set_values is None and not self.faults.state.frozen:
            self.reads += 1
            self._fill(registers)
        return None


def encode_point(model: ModelLayout, name: str, value: float, exponent: int) -> list[int]:
    """Words of one point (tests use it to write what a client would)."""
    return encode(model.point(name), value, exponent)
