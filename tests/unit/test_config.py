"""Config validation: bad files fail with one message naming the key path and the value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, ControlSettings, load_config, parse_config
from sim_devices.ports import free_port_block

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid() -> None:
    config = load_config(ROOT / "config.toml")
    ids = [p.id for a in config.assets for p in a.placements()]
    assert ids == ["ev1", "ev2", "ev3", "ev4", "bess1", "bess2", "meter-site", "meter-pv"]


def test_shipped_config_runs_the_optimiser_on_its_price_day_and_pack_costs() -> None:
    """The demo's config: dispatch mode by default, its time-of-use day priced into the plan, wear not free."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from agent.dispatch.build import plan_inputs
    from agent.fleet import Fleet

    config = load_config(ROOT / "config.toml")
    assert config.control.mode == "dispatch" and ControlSettings().mode == "dispatch"
    profile = config.dispatch.price_profile_per_kwh
    assert profile is not None and len(profile) == 24
    zone = ZoneInfo(config.events.timezone)
    noon, evening = profile[12], profile[19]
    assert noon < evening  # the solar dip is cheaper than the evening peak, or the demo has nothing to shift
    # a horizon starting at local midnight: step k is k x 15 min into the local day
    now = datetime(2026, 12, 2, tzinfo=zone).astimezone(UTC)
    inputs, _ = plan_inputs(Fleet({}), config, now, {}, uncontrolled_w=0.0)
    prices = inputs.site.price_per_kwh
    steps_per_hour = round(3600 / config.dispatch.step_s)
    assert prices[12 * steps_per_hour] == noon and prices[19 * steps_per_hour] == evening
    by_id = {a.id: a for a in config.assets}
    assert by_id["bess{i}"].replacement_cost and by_id["ev{i}"].wear_price_per_kwh  # wear is priced


def test_price_profile_must_be_a_day_of_finite_prices() -> None:
    for values, message in (
        (["10"] * 23, r"dispatch.price_profile_per_kwh: .*24 hourly or 48 half-hourly prices.*got 23 values"),
        (["nan"] + ["10"] * 23, r"dispatch.price_profile_per_kwh\[0\]: Input should be a finite number"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config(f"[dispatch]\nprice_profile_per_kwh = [{', '.join(values)}]\n", "site.toml")
    assert parse_config("[dispatch]\nprice_profile_per_kwh = [" + ", ".join(["-1.5"] * 48) + "]\n")


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("[agent]\npoll_periodd_s = 1\n", "x.toml")
    assert "unknown key `poll_periodd_s` in [agent]; did you mean `poll_period_s`?" in str(err.value)


def test_bad_value_names_path_and_value() -> None:
    text = '[[assets]]\nid = "a"\nmap = "vppsim_battery"\nport = 70000\n'
    with pytest.raises(ConfigError) as err:
        parse_config(text, "site.toml")
    message = str(err.value)
    assert message.startswith("site.toml:")
    assert "assets[0].port" in message and "70000" in message


def test_timeout_must_fit_in_period() -> None:
    with pytest.raises(ConfigError, match=r"poll_timeout_s \(2.0\) must be below poll_period_s \(1.0\)"):
        parse_config("[agent]\npoll_timeout_s = 2.0\n")


def test_duplicate_ids_after_group_expansion() -> None:
    text = (
        '[[assets]]\nid = "ev{i}"\ncount = 3\nmap = "vppsim_v2g_dc"\nport = 1000\n'
        '[[assets]]\nid = "ev2"\nmap = "vppsim_v2g_dc"\nport = 2000\n'
    )
    with pytest.raises(ConfigError, match=r"assets\[1\].*'ev2' already used by assets\[0\]"):
        parse_config(text)


def test_site_meter_must_be_an_asset() -> None:
    with pytest.raises(ConfigError, match=r"site\.meter: 'nope' is not an asset id"):
        parse_config('[site]\nmeter = "nope"\n')


def test_invalid_toml_names_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^cfg.toml: not valid TOML"):
        parse_config("[agent\n", "cfg.toml")


def test_gateway_groups_fill_units_then_ports() -> None:
    text = (
        '[[assets]]\nid = "d{i:02d}"\ncount = 5\nmap = "vppsim_battery"\nport = 100\nunit_id = 1\nunits_per_port = 2\n'
    )
    placements = parse_config(text).assets[0].placements()
    assert [(p.id, p.port, p.unit_id) for p in placements] == [
        ("d01", 100, 1),
        ("d02", 100, 2),
        ("d03", 101, 1),
        ("d04", 101, 2),
        ("d05", 102, 1),
    ]


def _check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_check_config_exits_2_with_message(tmp_path: Path) -> None:
    result = _check_config(tmp_path, '[control]\nsite_target_w = "lots"\n')
    assert result.returncode == 2
    assert "control.site_target_w" in result.stderr and "'lots'" in result.stderr


def test_check_config_rejects_unknown_map(tmp_path: Path) -> None:
    result = _check_config(tmp_path, '[[assets]]\nid = "a"\nmap = "no_such_model"\nport = 1502\n')
    assert result.returncode == 2
    assert "assets[0].map" in result.stderr and "no_such_model" in result.stderr


def test_check_config_accepts_shipped_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", str(ROOT / "config.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ok (8 assets)" in result.stdout


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("apt-get update") and "pytest" in line)
    assert command in ci.splitlines()


def test_two_assets_on_one_unit_are_rejected() -> None:
    text = (
        '[[assets]]\nid = "a"\nmap = "vppsim_battery"\nport = 1502\n'
        '[[assets]]\nid = "b"\nmap = "vppsim_battery"\nport = 1502\n'
    )
    with pytest.raises(ConfigError, match=r"assets\[1\]: port 1502 unit 1 already taken by 'a'"):
        parse_config(text)
    other_host = text.replace('id = "b"', 'id = "b"\nhost = "127.0.0.2"')
    assert len(parse_config(other_host).assets) == 2  # same port and unit on another gateway is fine


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[control]\nsite_target_w = nan\n", "control.site_target_w"),
        ("[agent]\nlease_timeout_s = 0\n", "agent.lease_timeout_s"),
        ("[agent]\nlease_timeout_s = 2\n", r"lease_timeout_s \(2.0\) must be at least 3 s"),
        ('[[assets]]\nid = "a"\nmap = "vppsim_battery"\nramp_w_per_s = inf\n', r"assets\[0\].ramp_w_per_s"),
    ],
)
def test_unsafe_values_are_rejected(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_committed_json_schemas_match_the_code() -> None:
    from agent.schemas import SCHEMA_DIR, all_schemas, render

    for name, schema in all_schemas().items():
        path = SCHEMA_DIR / name
        assert path.exists() and path.read_text(encoding="utf-8") == render(schema), (
            f"stale {name}: python -m agent.schemas"
        )


# JSON Schema 2020-12 keywords (core, applicator, validation, format, meta-data) the generated schemas may use; a
# key outside it (pydantic wrote `ge`/`le` for a bounded list item once) is ignored by every validator peers run
SCHEMA_KEYWORDS = frozenset(
    {
        "$schema", "$id", "$ref", "$defs", "$comment", "$anchor", "allOf", "anyOf", "oneOf", "not", "if", "then",
        "else", "dependentSchemas", "prefixItems", "items", "contains", "properties", "patternProperties",
        "additionalProperties", "propertyNames", "unevaluatedItems", "unevaluatedProperties", "type", "enum", "const",
        "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern",
        "maxItems", "minItems", "uniqueItems", "maxContains", "minContains", "maxProperties", "minProperties",
        "required", "dependentRequired", "format", "title", "description", "default", "deprecated", "readOnly",
        "writeOnly", "examples", "discriminator",
    }
)


def _unknown_keywords(schema: object, where: str) -> list[str]:
    if isinstance(schema, list):
        return [bad for i, item in enumerate(schema) for bad in _unknown_keywords(item, f"{where}[{i}]")]
    if not isinstance(schema, dict):
        return []
    found = [f"{where}.{key}" for key in schema if key not in SCHEMA_KEYWORDS]
    for key, value in schema.items():
        if key in ("properties", "$defs", "patternProperties", "dependentSchemas"):
            found += [bad for name, sub in value.items() for bad in _unknown_keywords(sub, f"{where}.{key}.{name}")]
        elif key not in ("enum", "const", "default", "examples", "required", "discriminator"):
            found += _unknown_keywords(value, f"{where}.{key}")
    return found


def test_json_schemas_use_only_json_schema_keywords() -> None:
    from agent.schemas import all_schemas

    unknown = [bad for name, schema in all_schemas().items() for bad in _unknown_keywords(schema, name)]
    assert unknown == []


@pytest.mark.parametrize("field", ["capacity_price_per_kw_h", "up_w"])
def test_an_award_refuses_a_negative_price_or_power(field: str) -> None:
    from pydantic import ValidationError

    from agent.signals.models import AsAward

    block = {"block_start": "2026-12-03T00:00:00+09:00", "block_end": "2026-12-03T01:00:00+09:00"}
    award = {"id": "a1", "product": "FCR", **block}
    award |= {"up_w": 1000.0, "down_w": 0.0, field: -1.0}
    with pytest.raises(ValidationError, match=field):
        AsAward.model_validate(award)


# -- through the CLI: `check-config` and `run` refuse the same inputs with exit 2, the key path and the value ------


def _mqtt_on() -> str:
    """MQTT on, toward a free loopback port with no broker: `run` would only retry (these configs never get there)."""
    return f'enabled = true\nhost = "127.0.0.1"\nport = {free_port_block(1)}'


def _site(
    tmp_path: Path, *, agent: str = "", mqtt: str = "", asset: str = "", map_ref: str = '"vppsim_battery"'
) -> Path:
    """A valid one-battery config (state in tmp_path) with extra lines in [agent], [mqtt] and the asset; a line
    setting a key the template sets (state_file, port) replaces the template's."""
    state = "" if "state_file" in agent else f'state_file = "{tmp_path / "state.db"}"\n'
    port = "" if "port =" in asset else f"port = {free_port_block(1)}\n"
    text = (
        f'[agent]\n{state}{agent}\n[control]\nmode = "idle"\n[mqtt]\n{mqtt}\n'
        "[trust]\nrequire_signatures = false\n"  # a lab: these cases are about other mistakes
        f'[[assets]]\nid = "bess"\nmap = {map_ref}\n{port}{asset}\n'
    )
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def _refused(capsys: pytest.CaptureFixture[str], config: Path, *expected: str) -> str:
    messages = []
    for argv in (["check-config", str(config)], ["run", "--config", str(config), "--duration", "1"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.startswith(f"error: {config}") and "Traceback" not in err, err
        for part in expected:
            assert part in err, (argv, part, err)
        messages.append(err)
    assert messages[0] == messages[1]
    return messages[0]


@pytest.mark.parametrize(
    ("section", "line", "key", "shown"),
    [
        ("mqtt", 'enabled = "yes"', "mqtt.enabled", "'yes'"),
        ("agent", 'poll_period_s = "1"', "agent.poll_period_s", "'1'"),
        ("asset", "port = 1502.0", "assets[0].port", "1502.0"),
        ("asset", "count = true", "assets[0].count", "True"),
        ("asset", "unit_id = 1.0", "assets[0].unit_id", "1.0"),
        ("asset", "ramp_w_per_s = true", "assets[0].ramp_w_per_s", "True"),
        ("mqtt", 'port = "1883"', "mqtt.port", "'1883'"),
        ("agent", "unavailable_after = 3.0", "agent.unavailable_after", "3.0"),
    ],
)
def test_strict_types(
    section: str, line: str, key: str, shown: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(capsys, _site(tmp_path, **{section: line}), key, f"(got {shown})")


def test_toml_integers_still_fill_float_keys() -> None:
    config = parse_config("[agent]\npoll_period_s = 2\npoll_timeout_s = 1\n[site]\nimport_limit_w = 60000\n")
    assert config.agent.poll_period_s == 2.0 and isinstance(config.agent.poll_period_s, float)
    assert config.site.import_limit_w == 60000.0


@pytest.mark.parametrize(
    ("section", "line", "key"),
    [
        ("mqtt", 'host = ""', "mqtt.host"),
        ("mqtt", 'host = "   "', "mqtt.host"),
        ("asset", 'host = ""', "assets[0].host"),
        ("asset", 'host = "\\t"', "assets[0].host"),
    ],
)
def test_empty_hosts(section: str, line: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, _site(tmp_path, **{section: line}), key, "host name or IP address")


@pytest.mark.parametrize(
    ("section", "line", "key"),
    [
        ("agent", 'state_file = ""', "agent.state_file"),  # sqlite3 takes "" as a throw-away temporary database
        ("mqtt", 'ca_file = ""', "mqtt.ca_file"),  # "" read as "no TLS" would silently send the password in clear
        ("mqtt", 'password_env = ""', "mqtt.password_env"),
        ("mqtt", 'password_file = "a\\u0000b"', "mqtt.password_file"),
    ],
)
def test_empty_or_impossible_paths_and_names(
    section: str, line: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(capsys, _site(tmp_path, **{section: line}), key)


def test_binary_config_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "site.toml"
    config.write_bytes(b'[agent]\nlog_level = "\xff\xfe"\n')
    _refused(capsys, config, "line 2", "not UTF-8")


BATTERY_MAP = (ROOT / "drivers" / "maps" / "vppsim_battery.toml").read_text()
BATTERY_MQTT_MAP = (ROOT / "drivers" / "mqtt_maps" / "vppsim_battery_mqtt.toml").read_text()


def _map_file(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "device.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return f'"{path}"'


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'unit = "kW"\n',
            'unit = "kW"\nscale = nan\n',
            "registers.2.scale: Input should be a finite number",
        ),
        ('unit = "kW"\n', 'unit = "kW"\nscale = -inf\n', "registers.2.scale: Input should be a finite"),
        ('unit = "kW"\n', 'unit = "kW"\nscale = "2"\n', "registers.2.scale: Input should be a valid number"),
        ("address = 2\n", "address = 2.0\n", "registers.2.address: Input should be a valid integer"),
        ("invert = true\n", 'invert = "true"\n', "registers.2.invert: Input should be a valid boolean"),
    ],
    ids=["scale nan", "scale -inf", "scale string", "address float", "invert string"],
)
def test_register_map_rows(
    old: str, new: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert old in BATTERY_MAP
    ref = _map_file(tmp_path, BATTERY_MAP.replace(old, new, 1))
    _refused(capsys, _site(tmp_path, map_ref=ref), "assets[0].map", "device.toml", expected, "[row power_w]")


@pytest.mark.parametrize("transport", ["modbus", "mqtt"])
def test_binary_map_names_file_and_line(transport: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = _map_file(tmp_path, b'schema = 1\n[model]\nid = "\xc3\x28"\n')
    if transport == "mqtt":
        config = _site(tmp_path, mqtt=_mqtt_on(), asset='transport = "mqtt"',
                       map_ref=ref)  # fmt: skip
    else:
        config = _site(tmp_path, map_ref=ref)
    _refused(capsys, config, "assets[0].map", "device.toml: line 3: not UTF-8")


def test_mqtt_map_types_are_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = _map_file(tmp_path, BATTERY_MQTT_MAP.replace("stale_after_s = 10.0", 'stale_after_s = "10"'))
    config = _site(tmp_path, mqtt=_mqtt_on(), asset='transport = "mqtt"',
                   map_ref=ref)  # fmt: skip
    _refused(capsys, config, "assets[0].map", "model.stale_after_s: Input should be a valid number")


def test_mqtt_devices_are_checked_against_mqtt_maps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config and run load an MQTT device's map from drivers/mqtt_maps, as the driver factory does."""
    config = _site(tmp_path, mqtt=_mqtt_on(), asset='transport = "mqtt"',
                   map_ref='"vppsim_battery_mqtt"')  # fmt: skip
    assert main(["check-config", str(config)]) == 0, capsys.readouterr().err
    wrong = config.read_text().replace('"vppsim_battery_mqtt"', '"vppsim_battery"')
    config.write_text(wrong)  # a register map for an MQTT device is a mistake
    _refused(capsys, config, "assets[0].map", "MQTT map 'vppsim_battery' not found")


@pytest.mark.parametrize(("topic", "expected"), [("d/{x}", "placeholder {id}"), ("d/+/{id}", "plain topic")])
def test_mqtt_device_topic_pattern(
    topic: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _site(tmp_path, mqtt=_mqtt_on(),
                   asset=f'transport = "mqtt"\ntopic = "{topic}"', map_ref='"vppsim_battery_mqtt"')  # fmt: skip
    _refused(capsys, config, "assets[0].topic", expected, repr(topic))
