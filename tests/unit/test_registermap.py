"""Register maps load, compile into contiguous spans, and reject malformed rows with a named error."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from drivers.registermap import MapError, available_maps, load_map


@pytest.mark.parametrize("map_id", available_maps())
def test_every_map_loads_and_reads_in_few_requests(map_id: str) -> None:
    register_map = load_map(map_id)
    assert register_map.has("power_w")
    assert all(span.count <= register_map.model.max_registers for span in register_map.spans)
    if map_id.startswith("vppsim_"):  # the simulator's own layout is our choice; a vendor's is not
        assert len(register_map.spans) == 1, "simulator maps are laid out so one request reads a whole device"
    else:
        assert register_map.model.source, "a real product's map names its source document and version"


def test_battery_float_is_low_word_first_and_inverted() -> None:
    battery = load_map("vppsim_battery")
    span = battery.spans[0]
    registers = [0] * span.count
    high, low = struct.unpack(">HH", struct.pack(">f", 12.5))  # device says +12.5 kW = discharging
    registers[2 - span.address], registers[3 - span.address] = low, high
    assert battery.decode([registers])["power_w"] == pytest.approx(-12500.0)
    assert battery.encode("setpoint_w", -12500.0) == [low, high]


def test_meter_scale_factor_register_applies() -> None:
    meter = load_map("vppsim_dc_meter")
    registers = [0] * meter.spans[0].count
    registers[0], registers[1] = 7502, (-1) & 0xFFFF  # 750.2 V with V_SF = -1
    values = meter.decode([registers])
    assert values["voltage_v"] == pytest.approx(750.2)


def test_encode_refuses_values_outside_the_register_type() -> None:
    charger = load_map("vppsim_v2g_dc")
    with pytest.raises(ValueError, match="outside u16 range"):
        charger.encode("lease_timeout_s", 70000)


def _write_map(tmp_path: Path, rows: str, kind: str = "meter") -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(f'schema = 1\n[model]\nid = "bad"\nmanufacturer = "x"\nname = "x"\nkind = "{kind}"\n' + rows)
    return path


def test_unknown_field_is_named(tmp_path: Path) -> None:
    path = _write_map(tmp_path, '[[registers]]\nfield = "powr_w"\naddress = 0\ntype = "s16"\nunit = "W"\n')
    with pytest.raises(MapError, match=r"bad.toml: registers.0.*powr_w"):
        load_map(path)


def test_overlap_is_rejected(tmp_path: Path) -> None:
    rows = (
        '[[registers]]\nfield = "power_w"\naddress = 0\ntype = "s32"\nunit = "W"\n'
        '[[registers]]\nfield = "status"\naddress = 1\ntype = "u16"\n'
    )
    with pytest.raises(MapError, match="status at 1 overlaps power_w"):
        load_map(_write_map(tmp_path, rows))


def test_wrong_unit_family_is_rejected(tmp_path: Path) -> None:
    path = _write_map(tmp_path, '[[registers]]\nfield = "power_w"\naddress = 0\ntype = "s16"\nunit = "kWh"\n')
    with pytest.raises(MapError, match="unit 'kWh' cannot feed power_w"):
        load_map(path)


def test_controllable_map_needs_setpoint(tmp_path: Path) -> None:
    path = _write_map(tmp_path, '[[registers]]\nfield = "power_w"\naddress = 0\ntype = "s16"\nunit = "W"\n', "battery")
    with pytest.raises(MapError, match="writable setpoint_w"):
        load_map(path)


def test_unknown_map_id_lists_known_ones() -> None:
    with pytest.raises(MapError, match=r"known: .*vppsim_battery"):
        load_map("nope")


def test_devices_doc_is_generated_from_the_maps() -> None:
    from drivers.docs import render_all

    committed = (Path(__file__).resolve().parents[2] / "docs" / "devices.md").read_text(encoding="utf-8")
    assert committed == render_all(), "docs/devices.md is stale: python -m drivers.docs > docs/devices.md"


def test_setpoints_are_truncated_toward_zero_not_rounded_past_a_limit() -> None:
    charger = load_map("vppsim_v2g_dc")  # setpoint s32 in W
    assert charger.encode("setpoint_w", 10600.9, toward_zero=True) == charger.encode("setpoint_w", 10600)
    assert charger.encode("setpoint_w", -10600.9, toward_zero=True) == charger.encode("setpoint_w", -10600)
    with pytest.raises(ValueError, match="not a finite number"):
        charger.encode("setpoint_w", float("nan"))


def test_absurd_scale_factor_is_an_error_not_an_overflow() -> None:
    meter = load_map("vppsim_dc_meter")
    registers = [0] * meter.spans[0].count
    registers[6] = 400  # W_SF
    with pytest.raises(ValueError, match="scale factor at 6 is 400"):
        meter.decode([registers])
