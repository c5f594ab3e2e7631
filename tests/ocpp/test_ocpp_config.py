"""`[ocpp]`, OCPP `[[assets]]` and `[simulation.ocpp]` mistakes fail at load with the key that is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError, parse_config
from sim_devices.config import SimulationError, parse_simulation

OCPP_ON = '[ocpp]\nenabled = true\ninsecure = true\npassword_env = "X"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[assets]]\nid = "ev"\ntransport = "ocpp"\nstation = "CP1"\n', "ocpp.enabled is false"),
        (OCPP_ON + '[[assets]]\nid = "ev"\ntransport = "ocpp"\n', "needs station"),
        (OCPP_ON + '[[assets]]\nid = "ev"\ntransport = "ocpp"\nstation = "CP 1"\n', "not an OCPP identity"),
        (OCPP_ON + '[[assets]]\nid = "ev"\ntransport = "ocpp"\nstation = "CP1"\nmap = "vppsim_v2g_dc"\n', "no map"),
        (OCPP_ON + '[[assets]]\nid = "ev{i}"\ncount = 2\ntransport = "ocpp"\nstation = "CP1"\n', "{i} placeholder"),
        (OCPP_ON + '[[assets]]\nid = "a"\ntransport = "ocpp"\nstation = "CP1"\n'
         '[[assets]]\nid = "b"\ntransport = "ocpp"\nstation = "CP1"\n', "both station 'CP1' EVSE 1"),
        ('[ocpp]\nenabled = true\npassword_env = "X"\n', "needs TLS"),
        ('[ocpp]\nenabled = true\ninsecure = true\n', "needs station passwords"),
        ('[[assets]]\nid = "m"\ntransport = "modbus"\n', "needs map"),
        (OCPP_ON + "meter_interval_s = 60\n", r"meter_interval_s \(60\) must be below ocpp.meter_stale_after_s"),
        (OCPP_ON + "meter_interval_s = 0\n", "meter_interval_s"),
        (OCPP_ON + 'id_tokens = "list"\n', "id_tokens = 'list' and ocpp.id_token_file go together"),
        (OCPP_ON + 'id_tokens = "some"\n', "id_tokens"),
    ],
)
def test_bad_ocpp_config_is_refused_with_its_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_config(text)


def test_passwords_come_from_the_environment_as_a_json_object(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(OCPP_ON)
    monkeypatch.setenv("X", '{"CP1": "secret"}')
    assert config.ocpp.passwords() == {"CP1": "secret"}
    monkeypatch.setenv("X", "CP1:secret")
    with pytest.raises(ConfigError, match=r"ocpp\.password_env"):
        config.ocpp.passwords()


def test_simulated_ocpp_stations_take_no_modbus_keys() -> None:
    group = {"id": "CP1", "transport": "ocpp", "model": "ocpp21_dc_bpt"}
    assert parse_simulation({"devices": [group]}).devices[0].kind == "ev_charger"
    with pytest.raises(SimulationError, match="takes no port"):
        parse_simulation({"devices": [{**group, "port": 1502}]})
    with pytest.raises(SimulationError, match="unknown OCPP station model"):
        parse_simulation({"devices": [{**group, "model": "vppsim_v2g_dc"}]})


def test_the_id_token_file_is_read_at_start(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# site cards\nA1\n B2 \n\n")
    config = parse_config(OCPP_ON + f'id_tokens = "list"\nid_token_file = "{tokens}"\n')
    assert config.ocpp.accepted_id_tokens() == frozenset({"A1", "B2"})
    assert parse_config(OCPP_ON).ocpp.accepted_id_tokens() is None  # accept_all by default
    tokens.write_text("X" * 256)
    with pytest.raises(ConfigError, match="longer than OCPP's 255 characters"):
        config.ocpp.accepted_id_tokens()
    tokens.unlink()
    with pytest.raises(ConfigError, match=r"ocpp\.id_token_file: cannot read"):
        config.ocpp.accepted_id_tokens()
