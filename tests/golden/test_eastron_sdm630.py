"""Eastron SDM630 golden test: float32 input registers (function 04) from the documented table → Measurement."""

from __future__ import annotations

import pytest
from devicekit import device

from drivers.registermap import load_map

EXPORTING = {
    0: 0x4366, 1: 0x199A,  # L1 230.1 V
    6: 0x4148, 7: 0x0000,  # L1 12.5 A
    52: 0xC533, 53: 0xB800,  # total power -2875.5 W: exporting
    72: 0x4640, 73: 0xE666,  # import 12345.6 kWh (float32 12345.599609375)
    74: 0x4476, 75: 0xD000,  # export 987.25 kWh
}


def test_reads_are_input_registers() -> None:
    assert {s.function for s in load_map("eastron_sdm630").spans} == {4}


async def test_exporting_site_reads_negative_power() -> None:
    async with device("eastron_sdm630", EXPORTING, (0, 79)) as dev:
        m = await dev.driver.read()
    assert m.power_w == -2875.5
    assert m.voltage_v == pytest.approx(230.1, abs=1e-4)
    assert m.current_a == 12.5
    assert m.energy_import_wh == 12345.599609375 * 1000
    assert m.energy_export_wh == 987250.0
