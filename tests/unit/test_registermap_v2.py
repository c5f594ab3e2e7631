"""Format v2 constructs decode and encode as documented, and each mistake is refused naming file, row and key."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from drivers.registermap import MapError, load_map

HEAD = 'schema = {schema}\n[model]\nid = "t"\nmanufacturer = "x"\nname = "x"\nkind = "{kind}"\n{model}\n'


def _map(tmp_path: Path, body: str, kind: str = "meter", model: str = "", schema: int = 2) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(HEAD.format(schema=schema, kind=kind, model=model) + body)
    return path


POWER = '[[registers]]\nfield = "power_w"\naddress = 0\ntype = "s16"\nunit = "W"\n'


@pytest.mark.parametrize(
    ("body", "model", "schema", "expected"),
    [
        (POWER.replace('unit = "W"', 'unit = "W"\nmissing = [0]'), "", 1,
         r"t.toml: .*row power_w: keys \['missing'\] need schema = 2"),
        (POWER + '[[registers]]\nfield = "status"\naddress = 1\ntype = "u16"\nenum = { "3" = "charing" }\n',
         "", 2, r"t.toml: registers.1: enum 3 = 'charing' is not a status.*\[row status\]"),
        (POWER, "blocks = [[10, 20]]", 2, r"t.toml: .*row power_w: address 0 \(\+1\) lies in no \[model\] block"),
        (POWER + '[control]\nsetpoint = [{ row = "nope", value = "setpoint" }]\n', "", 2,
         r"t.toml: .*\[control\] setpoint\[0\]: row 'nope' is no writable row"),
        (POWER + '[[registers]]\nname = "a"\naddress = 1\ntype = "u16"\nbits = [0, 3]\n'
         '[[registers]]\nname = "b"\naddress = 1\ntype = "u16"\nbits = [3, 4]\n', "", 2,
         r"row b: bits \[3, 4\] overlap a"),
        (POWER.replace('type = "s16"', 'type = "s32"\nwrite_function = 6'), "", 2,
         r"registers.0: write_function 6 writes one register; a s32 needs 16 \[row power_w\]"),
        # issue 12 §1 leftovers: coils and discrete inputs, unit ids, connectors, the lease's upper bound
        (POWER + '[[registers]]\nname = "flag"\naddress = 5\ntype = "bit"\n', "", 2,
         r"t.toml: registers.1: a coil or discrete input is `type = \"bit\"` with `function = 1`.*\[row flag\]"),
        (POWER + '[[registers]]\nname = "flag"\naddress = 5\ntype = "bit"\nfunction = 2\naccess = "rw"\n', "", 2,
         r"registers.1: only a coil \(function 1\) is writable.*\[row flag\]"),
        (POWER.replace('unit = "W"', 'unit = "W"\nwrite_function = 5'), "", 2,
         r"registers.0: write_function 5/15 writes coils; registers are written with 6/16 \[row power_w\]"),
        (POWER.replace('unit = "W"', 'unit = "W"\nunit_id = 300'), "", 2, r"registers.0.unit_id: .*\[row power_w\]"),
        (POWER, "[model.connector]\nrows = [0, 99]\nstride = 50\ncount = 2", 2,
         r"t.toml: .*\[model.connector\] stride 50 is shorter than connector 1's object \[0, 99\]"),
        (POWER, "[model.connector]\nrows = [10, 19]\nstride = 10\ncount = 2", 2,
         r"\[model.connector\] rows \[10, 19\] hold no row of the map"),
        (POWER + '[[registers]]\nfield = "setpoint_w"\naddress = 1\ntype = "s16"\nunit = "W"\naccess = "rw"\n',
         "read_function = 4", 2, r"row setpoint_w: an input register \(function 4\) is read-only"),
        (POWER + "[control]\nlease_max_s = 600\n", "", 2,
         r"\[control\] lease_max_s bounds a lease, but the map writes none"),
    ],
)
def test_mistakes_name_file_row_and_key(tmp_path: Path, body: str, model: str, schema: int, expected: str) -> None:
    with pytest.raises(MapError, match=expected):
        load_map(_map(tmp_path, body, model=model, schema=schema))


def test_byte_order_sentinels_offset_and_nan(tmp_path: Path) -> None:
    body = (
        '[[registers]]\nfield = "power_w"\naddress = 0\ntype = "s16"\nunit = "W"\nbyte_order = "little"\n'
        '[[registers]]\nfield = "voltage_v"\naddress = 1\ntype = "u16"\nunit = "V"\noffset = -40.0\n'
        '[[registers]]\nfield = "current_a"\naddress = 2\ntype = "f32"\nunit = "A"\n'
    )
    m = load_map(_map(tmp_path, body, model='sentinels = "sunspec"'))
    nan_hi, nan_lo = struct.unpack(">HH", struct.pack(">f", float("nan")))
    values = m.decode([[0x3412, 440, nan_hi, nan_lo]])
    assert values == {"power_w": 0x1234, "voltage_v": 400.0}  # bytes swapped; offset; NaN is missing
    assert m.decode([[0x3412, 0xFFFF, 0, 0]]).get("voltage_v") is None  # SunSpec's u16 "not implemented"


def test_scale_factor_and_percent_on_writable_rows(tmp_path: Path) -> None:
    body = (
        POWER
        + '[[registers]]\nname = "WMax"\naddress = 1\ntype = "u16"\nunit = "W"\nscale_factor = 2\n'
        '[[registers]]\nname = "WMax_SF"\naddress = 2\ntype = "s16"\n'
        '[[registers]]\nfield = "setpoint_w"\naddress = 3\ntype = "s16"\nunit = "%"\npercent_of = "WMax"\n'
        'access = "rw"\n[[registers]]\nfield = "lease_timeout_s"\naddress = 4\ntype = "u16"\nunit = "s"\n'
        'access = "rw"\n'
    )
    m = load_map(_map(tmp_path, body, kind="battery"))
    reading = m.read([[0, 500, 1, 25, 30]])  # WMax = 500 × 10^1 W; setpoint 25 % of it; lease 30 s
    assert reading.extras["WMax"] == 5000.0 and reading.values["setpoint_w"] == 1250.0
    assert m.encode("setpoint_w", -2500.0, toward_zero=True, context=reading) == [(-50) & 0xFFFF]
    with pytest.raises(ValueError, match="WMax"):
        m.encode("setpoint_w", 100.0)  # without a reading the 100 % is unknown


def test_unlisted_status_code_is_not_operable_and_reported(tmp_path: Path) -> None:
    body = POWER + '[[registers]]\nfield = "status"\naddress = 1\ntype = "u16"\nenum = { "7" = "charging" }\n'
    m = load_map(_map(tmp_path, body))
    assert m.read([[0, 7]]).values["status"] == 1 and m.read([[0, 7]]).unmapped_status is None
    reading = m.read([[0, 9]])
    assert reading.values["status"] == 3 and reading.unmapped_status == 9  # FAULT: no setpoints, still polled


def test_requests_respect_limit_blocks_and_functions(tmp_path: Path) -> None:
    rows = "".join(
        f'[[registers]]\nname = "r{a}"\naddress = {a}\ntype = "u16"\n' + ("function = 4\n" if a >= 300 else "")
        for a in (0, 5, 60, 99, 100, 300, 301)
    )
    m = load_map(_map(tmp_path, POWER.replace("address = 0", "address = 1") + rows,
                      model="max_registers = 50\nblocks = [[0, 99], [100, 199], [300, 399]]"))
    assert [(s.address, s.count, s.function) for s in m.spans] == [(0, 6, 3), (60, 40, 3), (100, 1, 3), (300, 2, 4)]


SETPOINT = '[[registers]]\nfield = "setpoint_w"\naddress = 1\ntype = "s16"\nunit = "W"\naccess = "rw"\n'
LEASE = '[[registers]]\nfield = "lease_timeout_s"\naddress = 2\ntype = "u16"\nunit = "s"\naccess = "rw"\n'


def test_a_map_that_takes_setpoints_gives_the_device_a_lease_or_says_why_not(tmp_path: Path) -> None:
    """DESIGN.md §8 rule 2: a device that hears nothing returns to its safe default. A map that cannot give it a
    lease is refused unless it says why ([control] no_lease); then the map says it is not leased."""
    with pytest.raises(MapError, match=r"t.toml: .*takes setpoints but gives the device no lease.*no_lease"):
        load_map(_map(tmp_path, POWER + SETPOINT, kind="battery"))
    assert load_map(_map(tmp_path, POWER + SETPOINT + LEASE, kind="battery")).leased
    unleased = load_map(_map(tmp_path, POWER + SETPOINT + '[control]\nno_lease = "the vendor has no timeout"\n',
                             kind="battery"))  # fmt: skip
    assert not unleased.leased and unleased.control.no_lease == "the vendor has no timeout"
    assert load_map(_map(tmp_path, POWER)).leased is False  # a meter takes no setpoints: nothing to lease


def test_bits_and_unit_ids_are_planned_apart(tmp_path: Path) -> None:
    """Coils, discrete inputs and each unit id are separate requests; bits decode as 0/1 and a coil is written
    with function 05 on its own unit."""
    body = (
        POWER
        + '[[registers]]\nname = "alarm"\naddress = 0\ntype = "bit"\nfunction = 2\n'
        + '[[registers]]\nname = "enable"\naddress = 0\ntype = "bit"\nfunction = 1\naccess = "w"\nunit_id = 3\n'
        + '[[registers]]\nfield = "soc"\naddress = 0\ntype = "u16"\nunit = "%"\nfunction = 4\nunit_id = 3\n'
    )
    m = load_map(_map(tmp_path, body))
    assert [(s.function, s.unit_id, s.count) for s in m.spans] == [(2, None, 1), (3, None, 1), (4, 3, 1)]
    reading = m.read([[1], [250], [55]])
    assert reading.extras["alarm"] == 1 and reading.values == {"power_w": 250, "soc": 0.55}
    write = m.write("enable", m.encode_raw("enable", 1))
    assert (write.function, write.unit_id, write.registers) == (5, 3, [1])


def test_connector_moves_its_object_and_nothing_else() -> None:
    one, three = load_map("evtec_bidipro10"), load_map("evtec_bidipro10", connector=3)
    assert three.pdu_address("status") == one.pdu_address("status") + 200
    assert three.pdu_address("setpoint_w") == 386
    assert three.pdu_address("lease_timeout_s") == 42  # the charge point's object stays
    assert [(s.address, s.count) for s in three.spans] == [(300, 88)]  # the block moved with it: one request
    with pytest.raises(MapError, match=r"evtec_bidipro10.toml: connector = 9 is not one of 1..8"):
        load_map("evtec_bidipro10", connector=9)
    with pytest.raises(MapError, match=r"wallbox_quasar.toml: connector = 2, but the map has no \[model.connector\]"):
        load_map("wallbox_quasar", connector=2)


def test_lease_beyond_the_device_maximum_is_a_warning_below_the_refresh_an_error() -> None:
    from drivers.registermap import lease_check

    evtec = load_map("evtec_bidipro10")  # [control] lease_max_s = 600
    assert lease_check(evtec, 300, 30) == ([], [])
    errors, warnings = lease_check(evtec, 900, 30)
    assert errors == [] and "lease_max_s = 600 s: agent lease_timeout_s = 900 s is written as 600 s" in warnings[0]
    errors, warnings = lease_check(evtec, 1300, 650)
    assert warnings == [] and "shorter than the 650 s the agent needs" in errors[0]


def test_check_config_view_of_an_asset_map() -> None:
    """What `vpp-agent check-config` reports for one Modbus asset: map errors with the file, the connector, and
    the lease against the device's maximum."""
    from drivers.registermap import check_asset_map

    assert check_asset_map("evtec_bidipro10", 2, 10, 7) == ([], [])
    errors, _ = check_asset_map("evtec_bidipro10", 12, 10, 7)
    assert "evtec_bidipro10.toml: connector = 12 is not one of 1..8" in errors[0]
    _, warnings = check_asset_map("evtec_bidipro10", None, 900, 7)
    assert "written as 600 s" in warnings[0]
