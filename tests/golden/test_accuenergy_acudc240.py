"""Accuenergy AcuDC 240 golden test: float32 V/A/kW and 0.01 kWh counters from the documented table → Measurement."""

from __future__ import annotations

import pytest
from devicekit import device

DISCHARGING_BUS = {
    512: 0x4447, 513: 0xE000,  # 799.5 V
    514: 0xC1CA, 515: 0x0000,  # -25.25 A
    516: 0xC1A1, 517: 0x851F,  # -20.19 kW (float32 -20.190000534057617)
    768: 0x0001, 769: 0xE240,  # import 123456 × 0.01 kWh = 1234.56 kWh
    770: 0x0000, 771: 0x0005,  # export 0.05 kWh
}


async def test_dc_meter_reads_si_units() -> None:
    async with device("accuenergy_acudc240", DISCHARGING_BUS, (512, 771)) as dev:
        m = await dev.driver.read()
    assert m.voltage_v == 799.5
    assert m.current_a == -25.25
    assert m.power_w == pytest.approx(-20190.0005, abs=1e-3)
    assert m.energy_import_wh == pytest.approx(1_234_560.0)
    assert m.energy_export_wh == pytest.approx(50.0)  # a 0.01 kWh step is 10 Wh: exact, not rounded away
