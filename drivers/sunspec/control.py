"""Setpoints for SunSpec devices: model 704 (DER AC controls) or model 124 (basic storage controls).

704: `WSetEna = 1, WSetMod = 1 (watts), WSet = −P` in one request (SunSpec counts generation positive, the agent
counts charging positive), with `WSetRvrt = 0 W`, `WSetEnaRvrt = 1` and `WSetRvrtTms` = the lease: a device that
hears nothing for that long reverts to 0 W by itself.

124: rates in percent of `WChaMax` (`InWRte` charge, `OutWRte` discharge, scaled by `InOutWRte_SF`) with
`StorCtl_Mod = 3` (both limits active). Exact power P in either direction is a window of one value: charging P is
`InWRte = +p, OutWRte = −p` (a negative discharge limit forces charging, as Fronius documents and evcc uses),
discharging is the mirror image, 0 W is both 0. `InOutWRte_RvrtTms` is the lease; when it runs out the device drops
the limits and returns to its own mode (docs/sunspec.md says which).

Both clamp a request to the device's limits before encoding (702 WMax/WChaRteMax/WDisChaRteMax, 124 WChaMax) and
truncate toward zero, so a write never asks more than the device declares; the driver returns the power written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drivers.sunspec.device import DeviceMap
from drivers.sunspec.points import PointError, encode, scale_exponent


@dataclass(frozen=True, slots=True)
class PointWrite:
    """Words for consecutive points starting at `address` (one write request)."""

    label: str
    address: int
    words: list[int]


class ControlError(ValueError):
    """A setpoint cannot be written (a scale factor or reference is not implemented, or a value does not fit)."""


class SunSpecControl:
    """Setpoint and lease writes through one control model of a discovered device."""

    model_id: int = 0

    def __init__(self, device: DeviceMap) -> None:
        self.device = device
        self.layout = device.layouts[self.model_id]
        self.address = device.entries[self.model_id].address

    def _write(self, words: dict[int, list[int]], names: list[str], values: list[float],
               toward_zero: bool = False) -> PointWrite:
        """One request writing `values` (device units) into the consecutive points `names`."""
        out: list[int] = []
        first = self.layout.point(names[0])
        expected = first.offset
        for name, value in zip(names, values, strict=True):
            point = self.layout.point(name)
            if point.offset != expected:
                raise ControlError(f"{names} are not consecutive in model {self.model_id}")
            exponent = scale_exponent(self.layout, point, words[self.model_id])
            if exponent is None:
                raise ControlError(f"model {self.model_id} {point.sf} (scale of {name}) is not implemented")
            try:
                out += encode(point, value, exponent, toward_zero)
            except PointError as exc:
                raise ControlError(str(exc)) from exc
            expected += point.size
        return PointWrite("+".join(names), self.address + first.offset, out)

    def limits(self, words: dict[int, list[int]]) -> tuple[float, float]:
        """(max charge W, max discharge W) the device declares now; inf where it declares none."""
        d = self.device
        charge = [d.point(words, 702, "WChaRteMax"), d.point(words, 702, "WMax"), d.point(words, 124, "WChaMax")]
        discharge = [d.point(words, 702, "WDisChaRteMax"), d.point(words, 702, "WMax"),
                     d.point(words, 124, "WChaMax")]
        return (min((v for v in charge if v is not None), default=math.inf),
                min((v for v in discharge if v is not None), default=math.inf))

    def clamp(self, power_w: float, words: dict[int, list[int]]) -> float:
        charge, discharge = self.limits(words)
        return min(max(power_w, -discharge), charge)

    def lease(self, seconds: float, words: dict[int, list[int]]) -> list[PointWrite]:
        raise NotImplementedError

    def setpoint(self, power_w: float, words: dict[int, list[int]]) -> list[PointWrite]:
        raise NotImplementedError

    def readback(self, words: dict[int, list[int]]) -> float | None:
        raise NotImplementedError


class Control704(SunSpecControl):
    model_id = 704

    def lease(self, seconds: float, words: dict[int, list[int]]) -> list[PointWrite]:
        return [
            self._write(words, ["WSetRvrt"], [0.0]),
            self._write(words, ["WSetEnaRvrt"], [1]),
            self._write(words, ["WSetRvrtTms"], [round(seconds)]),
        ]

    def setpoint(self, power_w: float, words: dict[int, list[int]]) -> list[PointWrite]:
        return [self._write(words, ["WSetEna", "WSetMod", "WSet"], [1, 1, -power_w], toward_zero=True)]

    def readback(self, words: dict[int, list[int]]) -> float | None:
        enabled = self.device.point(words, 704, "WSetEna")
        if enabled is None:
            return None
        if not enabled:
            return 0.0
        value = self.device.point(words, 704, "WSet")
        return None if value is None else -value


class Control124(SunSpecControl):
    model_id = 124
    BOTH_LIMITS = 3  # StorCtl_Mod bits 0 (CHARGE) and 1 (DISCHARGE)

    def _reference(self, words: dict[int, list[int]]) -> float:
        reference = self.device.point(words, 124, "WChaMax")
        if not reference:
            raise ControlError("model 124 WChaMax (the 100 % of InWRte/OutWRte) is not implemented or 0")
        return reference

    def lease(self, seconds: float, words: dict[int, list[int]]) -> list[PointWrite]:
        return [self._write(words, ["InOutWRte_RvrtTms"], [round(seconds)])]

    def setpoint(self, power_w: float, words: dict[int, list[int]]) -> list[PointWrite]:
        pct = 100.0 * power_w / self._reference(words)
        out_pct, in_pct = -pct, pct  # charging: a negative discharge limit; discharging: a negative charge limit
        return [
            self._write(words, ["OutWRte", "InWRte"], [out_pct, in_pct], toward_zero=True),
            self._write(words, ["StorCtl_Mod"], [self.BOTH_LIMITS]),
        ]

    def readback(self, words: dict[int, list[int]]) -> float | None:
        mode = self.device.point(words, 124, "StorCtl_Mod")
        rate = self.device.point(words, 124, "InWRte")
        if mode is None or rate is None:
            return None
        if int(mode) & self.BOTH_LIMITS != self.BOTH_LIMITS:
            return None  # not under the agent's control: the device runs its own mode
        return rate / 100.0 * self._reference(words)


CONTROLS: dict[str, type[SunSpecControl]] = {"704": Control704, "124": Control124}


def choose(device: DeviceMap, wanted: str) -> SunSpecControl | None:
    """The control model to use: `wanted` ("704", "124", "none"), or with "auto" 704 if present, else 124."""
    if wanted == "none":
        return None
    if wanted != "auto":
        if int(wanted) not in device.layouts:
            raise ControlError(f"control = {wanted} but the device has no model {wanted}")
        return CONTROLS[wanted](device)
    for name in ("704", "124"):
        if int(name) in device.layouts:
            return CONTROLS[name](device)
    return None
