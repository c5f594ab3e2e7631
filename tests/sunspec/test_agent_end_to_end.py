"""The agent's own control loop drives a simulated SunSpec battery inverter end to end: config → factory →
SunSpecDriver → SafetyEnvelope → 704 writes → the simulator's physics, with the site meter closing the loop; and the
704 revert timer is the lease when the agent stops."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest
from sunspeckit import HOST, free_port

from agent.cli import main
from agent.config import ConfigError, parse_config
from agent.control.loop import ControlLoop
from agent.wiring import build_drivers
from drivers.sunspec.driver import SunSpecDriver
from sim_devices.battery import Battery
from sim_devices.config import parse_simulation
from sim_devices.faults import DeviceFaults
from sim_devices.runner import SimSite
from sim_devices.server import PortServer
from sim_devices.sunspec.image import SunSpecEndpoint, SunSpecImage

SITE = """
[agent]
poll_period_s = 0.2
poll_timeout_s = 0.1
unavailable_after = 2
max_backoff_s = 0.4
lease_timeout_s = 2.0
setpoint_deadband_w = 20.0
[site]
meter = "meter"
import_limit_w = 100000.0
export_limit_w = 100000.0
[control]
mode = "site_target"
site_target_w = 0.0
[[assets]]
id = "bess"
transport = "sunspec"
kind = "battery"
port = {bess_port}
rated_discharge_w = 8000.0
[[assets]]
id = "meter"
map = "vppsim_dc_meter"
port = {meter_port}

[simulation]
speed = 1.0
tick_s = 0.05
base_load_w = 12000.0
[[simulation.devices]]
id = "meter"
model = "vppsim_dc_meter"
port = {meter_port}
[simulation.devices.params]
measures = "site"
"""


async def eventually(check, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a state (the deadline only bounds a failing test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, "state not reached"
        await asyncio.sleep(0.02)


async def test_agent_discharges_the_sunspec_battery_within_its_envelope() -> None:
    text = SITE.format(bess_port=free_port(), meter_port=free_port())
    config = parse_config(text, "sunspec-site.toml")
    sim_config = parse_simulation(tomllib.loads(text)["simulation"])
    bess_port = config.assets[0].port
    async with SimSite.from_config(sim_config) as site:
        battery = Battery(
            capacity_wh=50_000.0,
            soc=0.8,
            rated_charge_w=20_000.0,
            rated_discharge_w=20_000.0,
            ramp_w_per_s=1e6,
            lease_timeout_s=30.0,
        )
        site.site.add_device("bess", battery)  # the site meter measures it with the base load
        image = SunSpecImage("sunspec_battery_inverter", battery, "bess", order="b")
        server = PortServer(HOST, bess_port, [SunSpecEndpoint("bess", 1, image, DeviceFaults("bess", battery))])
        await server.start()
        drivers, pool = build_drivers(config, site.clock.now)
        assert isinstance(drivers["bess"], SunSpecDriver)
        loop = ControlLoop(config, drivers, clock=site.clock.now)
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        try:
            # 12 kW of load; the envelope holds the battery at its configured 8 kW discharge limit
            await eventually(lambda: battery.power_w == pytest.approx(-8000.0, abs=25))
            assert battery.lease.timeout_s == pytest.approx(2.0)  # 704 WSetRvrtTms = the agent's lease
            assert battery.lease.min_written_w >= -8000.0 - 1e-6  # never beyond the envelope
            assert battery.writes_outside_nameplate == 0
            stop.set()
            await task
            await eventually(lambda: battery.power_w == 0.0)  # the device reverts by itself after the lease
        finally:
            stop.set()
            await task
            pool.close()
            await server.stop()


def test_config_errors_name_the_sunspec_keys() -> None:
    base = "[[assets]]\nid = 'x'\ntransport = 'sunspec'\nport = 1502\n"
    with pytest.raises(ConfigError, match="needs kind"):
        parse_config(base, "c.toml")
    with pytest.raises(ConfigError, match="only for transport = 'sunspec'"):
        parse_config("[[assets]]\nid = 'y'\nmap = 'vppsim_battery'\nkind = 'battery'\n", "c.toml")
    config = parse_config(base + "map = 'fronius_gen24'\n", "c.toml")
    assert config.assets[0].transport == "sunspec"


@pytest.mark.parametrize(
    ("asset", "expected"),
    [
        ("map = 'no_such_product'", ["assets[0].map: SunSpec product map 'no_such_product' not found", "known:"]),
        ("map = 'fronius_gen24'\nkind = 'meter'", ["assets[0].kind: 'meter' but map 'fronius_gen24' is a battery"]),
        ("map = '{bad}'", ["assets[0].map: ", "bad.toml", "product.kind"]),  # names the asset, the file and the key
    ],
)
def test_check_config_and_run_refuse_a_bad_product_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], asset: str, expected: list[str]
) -> None:
    """The product map is loaded with the other device maps (agent.wiring.asset_problems), not by the config's
    validation: check-config and run meet it alike, before anything starts, and say the same."""
    shipped = Path(__file__).resolve().parents[2] / "drivers" / "sunspec" / "products" / "fronius_gen24.toml"
    bad = tmp_path / "bad.toml"
    bad.write_text(shipped.read_text().replace('kind = "battery"', 'kind = "car"', 1))
    config = tmp_path / "site.toml"
    head = (
        f'[agent]\nstate_file = "{tmp_path / "state.db"}"\n[control]\nmode = "idle"\n[trust]\n'
        "require_signatures = false\n[[assets]]\nid = 'x'\ntransport = 'sunspec'\nport = 1502\n"
    )
    config.write_text(head + "map = 'fronius_gen24'\n")
    assert main(["check-config", str(config)]) == 0, capsys.readouterr().err
    config.write_text(head + asset.format(bad=bad) + "\n")
    said = []
    for argv in (["check-config", str(config)], ["run", "--config", str(config), "--duration", "1"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"error: {config}") and "Traceback" not in err, (argv, err)
        assert all(part in err for part in expected), (argv, err)
        said.append(err)
    assert said[0] == said[1]
    assert not (tmp_path / "state.db").exists()  # run stopped before opening its state
