"""The [simulation] table: defaults, per-kind params, error messages with key paths, and the CLI exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim_devices.cli import main
from sim_devices.config import BatteryParams, EVChargerParams, SimulationError, parse_simulation

GOOD = {
    "seed": 3,
    "start": "2026-11-23T09:00:00+09:00",
    "devices": [
        {"id": "ev{i}", "count": 4, "model": "vppsim_v2g_dc", "port": 15020, "params": {"rated_charge_w": 7000}},
        {"id": "bess{i}", "count": 3, "model": "vppsim_battery", "port": 15100, "units_per_port": 2},
        {"id": "meter", "model": "vppsim_dc_meter", "port": 15200, "params": {"measures": "site"}},
    ],
}


def test_good_config_expands_groups_and_types_params() -> None:
    cfg = parse_simulation(GOOD)
    placements = [(p.id, p.port, p.unit_id) for _, p in cfg.placements()]
    assert placements[:4] == [("ev1", 15020, 1), ("ev2", 15021, 1), ("ev3", 15022, 1), ("ev4", 15023, 1)]
    assert placements[4:7] == [("bess1", 15100, 1), ("bess2", 15100, 2), ("bess3", 15101, 1)]
    ev_params = cfg.devices[0].physics()
    assert isinstance(ev_params, EVChargerParams) and ev_params.rated_charge_w == 7000
    assert isinstance(cfg.devices[1].physics(), BatteryParams)
    assert cfg.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"speed": 0}, "simulation.speed = 0"),
        ({"bogus": 1}, "simulation.bogus = 1: unknown key"),
        ({"start": "2026-11-23T09:00:00"}, "simulation.start"),
        ({"devices": [{"id": "x", "model": "nope", "port": 1}]}, "simulation.devices[0].model = 'nope'"),
        (
            {"devices": [{"id": "x", "model": "vppsim_battery", "port": 1, "params": {"start_empty": True}}]},
            "simulation.devices[0].params.start_empty = True: unknown key",
        ),
        (
            {"devices": [{"id": "x", "model": "vppsim_battery", "port": 1, "params": {"soc": 1.5}}]},
            "simulation.devices[0].params.soc = 1.5",
        ),
        (
            {
                "devices": [
                    {"id": "x", "model": "vppsim_battery", "port": 1},
                    {"id": "y", "model": "vppsim_battery", "port": 1},
                ]
            },
            "port 1 unit 1 already taken",
        ),
        ({"devices": [{"id": "x", "count": 2, "model": "vppsim_battery", "port": 1}]}, "{i}"),
    ],
)
def test_errors_name_the_key_path_and_value(patch: dict, expected: str) -> None:
    with pytest.raises(SimulationError) as err:
        parse_simulation({**GOOD, **patch})
    assert expected in str(err.value)


def test_cli_exits_2_on_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[agent]\nx = 1\n[simulation]\nspeed = -2\n[[simulation.devices]]\nid = "a"\n'
        'model = "vppsim_battery"\nport = 15000\n'
    )
    assert main(["--config", str(path)]) == 2
    assert "simulation.speed = -2" in capsys.readouterr().err
    path.write_text("[agent]\nx = 1\n")
    assert main(["--config", str(path)]) == 2
    assert "no [simulation] table" in capsys.readouterr().err
