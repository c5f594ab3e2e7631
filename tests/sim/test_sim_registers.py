"""The simulator's own register codec against every map file, and an independent decoder in the tests."""

from __future__ import annotations

import math

import pytest
from simhelpers import decode_all, span

from sim_devices.maps import available_models, load_map
from sim_devices.meter import DCMeter
from sim_devices.registers import DeviceCodec, choose_scale_factor, decode, encode

SAMPLE = {
    "status": 2,
    "fault_code": 1,
    "power_w": -7_321.4,
    "setpoint_w": -7_000.0,
    "lease_timeout_s": 30,
    "rated_charge_w": 11_000,
    "rated_discharge_w": 11_000,
    "max_charge_w": 9_870,
    "max_discharge_w": 10_990,
    "soc": 0.4567,
    "soh": 0.9876,
    "capacity_wh": 64_300,
    "ev_connected": 1,
    "ev_target_soc": 0.8,
    "ev_min_soc": 0.25,
    "ev_departure": 1_795_416_888,
    "voltage_v": 748.3,
    "current_a": -9.8,
    "energy_import_wh": 123_456,
    "energy_export_wh": 789,
}


# The independent decoder of simhelpers reads format v1 (holding registers, u16..f32); the v2 maps of real products
# are checked word by word in test_sim_native.py and through the driver in tests/integration/test_every_map.py.
SERVED = [m for m in available_models() if load_map(m).schema == 1]


@pytest.mark.parametrize("model", SERVED)
def test_every_map_round_trips_through_an_independent_decoder(model: str) -> None:
    regmap = load_map(model)
    codec = DeviceCodec(regmap, DCMeter().field_maxima())
    first, count = span(model)
    regs = [0] * count
    codec.fill(regs, first, SAMPLE)
    decoded = decode_all(model, first, regs)
    for field, value in decoded.items():
        row = regmap.row_for(field)
        assert row is not None
        step = abs(row.scale * 10 ** codec.sf_for(row) * {"kW": 1000, "kWh": 1000, "%": 0.01}.get(row.unit, 1))
        tol = step / 2 + 1e-9 if row.type != "f32" else abs(SAMPLE[field]) * 1e-6 + 1e-9
        assert math.isclose(value, SAMPLE[field], abs_tol=tol), (model, field, value, SAMPLE[field])


def test_integers_saturate_instead_of_wrapping() -> None:
    row = load_map("vppsim_v2g_dc").row_for("rated_charge_w")  # u16, scale 10 -> max 655 350 W
    assert row is not None
    assert decode(row, encode(row, 1e9)) == 655_350
    assert decode(row, encode(row, -5)) == 0


def test_meter_scale_factors_fit_the_rating() -> None:
    regmap = load_map("vppsim_dc_meter")
    for rating in (5_000, 200_000, 5_000_000):
        meter = DCMeter(rated_power_w=rating)
        codec = DeviceCodec(regmap, meter.field_maxima())
        for field, max_value in meter.field_maxima().items():
            row = regmap.row_for(field)
            assert row is not None
            sf = codec.sf_of_field[field]
            assert decode(row, encode(row, max_value, sf), sf) == pytest.approx(max_value, abs=10**sf)
            assert decode(row, encode(row, -max_value, sf), sf) == pytest.approx(
                -max_value if row.type.startswith("s") else 0, abs=10**sf
            )
    row = regmap.row_for("power_w")
    assert row is not None
    assert choose_scale_factor(row, 400_000) == -2
