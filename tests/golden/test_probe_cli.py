"""`vpp-agent probe` (the shipped CLI) against a bare Modbus device holding a real product's documented words.

The words are the SDM630's from test_eastron_sdm630.py (worked from Eastron's table), so what probe prints is checked
against the document, not against our simulator.
"""

from __future__ import annotations

import asyncio
import json
import sys

from devicekit import device

SDM630_EXPORTING = {
    52: 0xC533, 53: 0xB800,  # total power -2875.5 W: exporting
    72: 0x4640, 73: 0xE666,  # import 12345.6 kWh
    74: 0x4476, 75: 0xD000,  # export 987.25 kWh
}


async def _probe(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.cli", "probe", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_probe_prints_rows_and_measurement() -> None:
    async with device("eastron_sdm630", SDM630_EXPORTING, (0, 79)) as dev:
        port = str(dev.driver.gateway.port)
        code, out, _ = await _probe("--host", "127.0.0.1", "--port", port, "--map", "eastron_sdm630")
        assert code == 0, out
        assert "eastron_sdm630" in out
        assert "power_w" in out and "-2875.5" in out
        assert "status" in out and "standby" in out
        code, out, _ = await _probe("--host", "127.0.0.1", "--port", port, "--map", "eastron_sdm630", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["measurement"]["power_w"] == -2875.5
    assert report["measurement"]["energy_export_wh"] == 987250.0
    assert {row["function"] for row in report["rows"]} == {4}
    power_row = next(r for r in report["rows"] if r["value"] == -2875.5)
    assert power_row["address"] in (52, 30053)  # as the map numbers it (0- or 1-based documents)


async def test_probe_reports_an_unanswered_read_and_exits_1() -> None:
    # the integrator's commonest mistake: the wrong unit id (this server refuses it; a real device may stay silent)
    async with device("eastron_sdm630", SDM630_EXPORTING, (0, 79)) as dev:
        code, out, _ = await _probe("--host", "127.0.0.1", "--port", str(dev.driver.gateway.port),
                                    "--unit", "7", "--timeout", "0.5", "--map", "eastron_sdm630")
    assert code == 1
    assert "error: probe: read 2 registers at 0 (function 4)" in out


async def test_probe_names_a_missing_map() -> None:
    code, _, err = await _probe("--host", "127.0.0.1", "--map", "no_such_map")
    assert code == 2
    assert "no_such_map" in err


async def test_probe_sunspec_walks_the_chain_of_a_fronius_gen24() -> None:
    # the GEN24's documented words (test_fronius_gen24.py): chain 1, 103, 120..123, 160, 124 from 40000
    from test_fronius_gen24 import CHARGING_2500, gen24

    async with gen24(CHARGING_2500) as (_, driver):
        port = str(driver.gateway.port)
        code, out, _ = await _probe("--host", "127.0.0.1", "--port", port, "--sunspec", "--map", "fronius_gen24",
                                    "--json")  # fmt: skip
    assert code == 0, out
    report = json.loads(out)
    assert [m["model_id"] for m in report["models"]] == [1, 103, 120, 121, 122, 123, 160, 124]
    assert report["models"][0]["address"] == 40002 and report["models"][-1]["address"] == 40343
    assert report["control"] == "124"
    assert report["measurement"]["power_w"] == 2500.0 and report["measurement"]["soc"] == 0.655


async def test_probe_needs_a_map_or_sunspec() -> None:
    code, _, err = await _probe("--host", "127.0.0.1")
    assert code == 2 and "--map" in err and "--sunspec" in err
