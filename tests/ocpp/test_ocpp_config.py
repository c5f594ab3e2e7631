"""`[ocpp]`, OCPP `[[assets]]` and `[simulation.ocpp]` mistakes fail at load with the key that is wrong."""

from __future__ import annotations

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
