"""`vpp-agent check-config` reports a Modbus asset's connector and its lease against the device's maximum (the map's
`[model.connector]` and `[control] lease_max_s`), with the asset and map named, before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFIG = """
[agent]
lease_timeout_s = {lease}
[[assets]]
id = "evtec"
map = "evtec_bidipro10"
host = "127.0.0.1"
port = 1502
connector = {connector}
"""


def _check(tmp_path: Path, lease: float, connector: int) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(lease=lease, connector=connector))
    return subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_a_lease_beyond_the_devices_maximum_is_a_warning(tmp_path: Path) -> None:
    result = _check(tmp_path, 900, 2)
    assert result.returncode == 0, result.stderr
    assert "warning: assets[0].map:" in result.stderr and "lease_max_s = 600" in result.stderr
    assert "written as 600 s" in result.stderr


def test_a_lease_within_the_maximum_is_quiet(tmp_path: Path) -> None:
    result = _check(tmp_path, 10, 2)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr


def test_a_connector_the_charger_does_not_have_is_an_error(tmp_path: Path) -> None:
    result = _check(tmp_path, 10, 9)
    assert result.returncode == 2
    assert "assets[0].map:" in result.stderr and "connector" in result.stderr
