"""Stationary battery: a pack that ages (sim_devices.degradation) behind a bidirectional converter.

Limits derate near the ends of the SoC range as a BMS does: charge falls linearly from rated at SoC 0.9 to 0 at
1.0, discharge from rated at 0.1 to 0 at 0.0. SoC is a fraction of the usable (aged) capacity.
"""

from __future__ import annotations

from sim_devices.controllable import ControllableDevice
from sim_devices.degradation import XuDegradation

CHARGE_TAPER_START_SOC = 0.9
DISCHARGE_TAPER_END_SOC = 0.1


class Battery(ControllableDevice):
    """Battery physics; `capacity_wh` is the nominal (new) capacity."""

    kind = "battery"

    def __init__(
        self,
        *,
        capacity_wh: float = 100_000.0,
        soc: float = 0.5,
        rated_charge_w: float = 50_000.0,
        rated_discharge_w: float = 50_000.0,
        ramp_w_per_s: float = 25_000.0,
        efficiency: float = 0.95,
        temperature_c: float = 25.0,
        lease_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            rated_charge_w=rated_charge_w,
            rated_discharge_w=rated_discharge_w,
            ramp_w_per_s=ramp_w_per_s,
            efficiency=efficiency,
            lease_timeout_s=lease_timeout_s,
        )
        if capacity_wh <= 0:
            raise ValueError(f"capacity {capacity_wh!r} Wh must be > 0")
        if not 0 <= soc <= 1:
            raise ValueError(f"soc {soc!r} must be within 0..1")
        self.capacity_wh = float(capacity_wh)
        self.soc = float(soc)
        self.ageing = XuDegradation(soc=self.soc, temperature_c=temperature_c)

    @property
    def soh(self) -> float:
        return self.ageing.soh

    @property
    def usable_wh(self) -> float:
        return self.capacity_wh * self.soh

    def store_limits(self) -> tuple[float, float]:
        soc = self.soc
        if soc >= 1.0:
            max_ch = 0.0
        elif soc <= CHARGE_TAPER_START_SOC:
            max_ch = self.rated_charge_w
        else:
            max_ch = self.rated_charge_w * (1.0 - soc) / (1.0 - CHARGE_TAPER_START_SOC)
        if soc <= 0.0:
            max_dis = 0.0
        elif soc >= DISCHARGE_TAPER_END_SOC:
            max_dis = self.rated_discharge_w
        else:
            max_dis = self.rated_discharge_w * soc / DISCHARGE_TAPER_END_SOC
        return max_ch, max_dis

    def apply_store_energy(self, store_wh: float, dt_s: float) -> None:
        self.soc = min(max(self.soc + store_wh / self.usable_wh, 0.0), 1.0)
        self.ageing.update(self.soc, dt_s)

    def extra_fields(self) -> dict[str, float]:
        return {"soc": self.soc, "soh": self.soh, "capacity_wh": self.capacity_wh}
