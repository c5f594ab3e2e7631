"""The MQTT parts of the `[simulation]` table: transport, topic patterns, the broker table, readable errors;
and the simulator's own MQTT codec (telemetry JSON out, commands in)."""

from __future__ import annotations

import pytest

from sim_devices.config import SimulationError, parse_simulation
from sim_devices.mqtt_codec import CommandError, available_mqtt_models, load_mqtt_model


def test_mqtt_groups_expand_to_topics_and_default_broker() -> None:
    cfg = parse_simulation({
        "devices": [
            {"id": "ev{i}", "count": 2, "transport": "mqtt", "model": "vppsim_v2g_mqtt", "topic": "site1/{id}"},
            {"id": "bess", "model": "vppsim_battery", "port": 15020},
        ]
    })
    ev = cfg.devices[0]
    assert [ev.device_topic(p.id) for p in ev.placements()] == ["site1/ev1", "site1/ev2"]
    assert ev.kind == "ev_charger"
    assert cfg.mqtt_settings.port == 1883 and cfg.mqtt_settings.publish_period_s == 1.0 and cfg.mqtt_settings.qos == 0


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ([{"id": "a", "transport": "mqtt", "model": "vppsim_battery_mqtt"}], "topic is required"),
        ([{"id": "a", "transport": "mqtt", "model": "vppsim_battery", "topic": "d/{id}"}],
         "simulation.devices[0].model = 'vppsim_battery': no MQTT map"),
        ([{"id": "a", "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/{id}", "port": 1}],
         "only transport = 'modbus' takes port"),
        ([{"id": "a", "model": "vppsim_battery"}], "port is required"),
        ([{"id": "a", "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/#"}], "no wildcards"),
        ([{"id": "a", "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/{name}"}], "only use {id}"),
        ([{"id": "a{i}", "count": 2, "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/x"}],
         "needs an {id} placeholder"),
        ([{"id": "a", "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/same"},
          {"id": "b", "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/same"}],
         "topic 'd/same' already used by 'a'"),
        ([{"id": "a", "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/{id}"},
          {"id": "a", "model": "vppsim_battery", "port": 15000}], "id 'a' already used"),
        ([{"id": "a", "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/{id}",
           "params": {"start_empty": True}}], "simulation.devices[0].params.start_empty = True: unknown key"),
    ],
)
def test_mqtt_group_errors_name_the_key(devices: list[dict[str, object]], expected: str) -> None:
    with pytest.raises(SimulationError) as err:
        parse_simulation({"devices": devices})
    assert expected in str(err.value)


def test_broker_table_is_strict() -> None:
    base = {"devices": [{"id": "a", "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/{id}"}]}
    with pytest.raises(SimulationError, match=r"simulation\.mqtt\.qos = 2"):
        parse_simulation({**base, "mqtt": {"qos": 2}})
    with pytest.raises(SimulationError, match=r"simulation\.mqtt\.pasword = 'x': unknown key"):
        parse_simulation({**base, "mqtt": {"pasword": "x"}})
    with pytest.raises(SimulationError, match="VPP_TEST_UNSET_PASSWORD"):
        parse_simulation({**base, "mqtt": {"password_env": "VPP_TEST_UNSET_PASSWORD"}})


def test_codec_round_trips_units_sign_and_nesting() -> None:
    assert set(available_mqtt_models()) >= {"vppsim_battery_mqtt", "vppsim_v2g_mqtt", "vppsim_dc_meter_mqtt"}
    battery = load_mqtt_model("vppsim_battery_mqtt")
    out = battery.telemetry_json({"power_w": -1500.0, "soc": 0.25, "soh": 0.99, "status": 2})
    assert out == {"p_kw": 1.5, "bms": {"soc_pct": 25.0, "soh_pct": 99.0}, "status": 2}
    assert battery.decode_command({"setpoint_kw": 2, "lease_s": 30}) == {"setpoint_w": -2000.0, "lease_timeout_s": 30}
    ev = load_mqtt_model("vppsim_v2g_mqtt")
    assert ev.telemetry_json({"ev_connected": 1, "ev_departure": 1.8e9 + 0.4}) == {
        "ev": {"connected": True, "departure": 1_800_000_000}
    }


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ([1], "not a JSON object"),
        ({}, "empty command"),
        ({"p_kw": 1}, "unknown or read-only keys ['p_kw']"),
        ({"setpoint_kw": "1"}, "is not a finite number"),
        ({"setpoint_kw": True}, "is not a finite number"),
        ({"setpoint_kw": float("nan")}, "is not a finite number"),
        ({"lease_s": -1}, "must be >= 0"),
    ],
)
def test_codec_refuses_bad_commands(command: object, reason: str) -> None:
    with pytest.raises(CommandError) as err:
        load_mqtt_model("vppsim_battery_mqtt").decode_command(command)
    assert reason in str(err.value)


def test_mqtt_endpoint_faults_offline_and_frozen() -> None:
    from sim_devices.clock import ManualClock
    from sim_devices.runner import SimSite

    cfg = parse_simulation({
        "devices": [{"id": "b", "transport": "mqtt", "model": "vppsim_battery_mqtt", "topic": "d/{id}",
                     "params": {"lease_timeout_s": 0}}]
    })
    site = SimSite(cfg, ManualClock())
    endpoint = site.mqtt_endpoints["b"]
    assert site.servers == {} and site.mqtt is not None
    assert (endpoint.telemetry_topic, endpoint.command_topic) == ("d/b/state", "d/b/set")
    endpoint.apply_command(b'{"setpoint_kw": -10}')  # device convention: -10 kW = charge 10 kW
    site.step(5.0)
    first = endpoint.telemetry()
    site.faults("b").set_frozen()
    site.step(5.0)
    assert endpoint.telemetry() == first  # a stuck bridge keeps publishing the old state
    site.faults("b").set_frozen(False)
    assert endpoint.telemetry() != first
    site.faults("b").set_offline()
    assert endpoint.telemetry() is None
    endpoint.apply_command(b'{"setpoint_kw": 0}')
    assert endpoint.ignored_commands == 1 and site.devices["b"].lease.setpoint_w == 10_000.0
    site.faults("b").set_device_fault(2)
    site.faults("b").set_offline(False)
    assert b'"status": 3' in (endpoint.telemetry() or b"")
