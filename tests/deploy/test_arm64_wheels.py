"""Every runtime dependency of vpp-agent comes as a binary wheel for arm64 gateways (aarch64, CPython 3.11).

Why: most edge gateways are ARM boards, and no emulator runs here, so the ARM image cannot be built or run in CI.
What can go wrong on ARM is a dependency without an aarch64 wheel: pip would then compile it from source on the
gateway (or in the image build), which needs a compiler, headers and often an hour, or fails. So the test resolves
the dependencies of the tree as it is now (pyproject.toml, not a list kept here) for manylinux aarch64 with
`deploy/build-image.sh --check-wheels`, the same platform rule the image build uses for x86_64, binary wheels
only, and reads pip's report of what it would install. The optional sets a gateway may install (`ocpp`, for a site
with OCPP chargers) are resolved with it; the test and evaluation extras are not runtime dependencies.

Needs the package index (as the install of the test environment does): outside CI a test machine without it skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "deploy" / "build-image.sh"
CI = os.environ.get("CI") == "true"
# what pip prints when it cannot reach the index at all (not: a package without a wheel)
NOT_RUNTIME = {"test", "eval"}  # pyproject.toml's extras that never go onto a gateway
OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable", "ConnectTimeout")


def runtime_requirements() -> tuple[list[str], list[str]]:
    """(the runtime extras' names, every runtime requirement) as pyproject.toml declares them now."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = sorted(set(project.get("optional-dependencies", {})) - NOT_RUNTIME)
    requirements = [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]
    return extras, requirements


def resolve(arch: str, report: Path) -> subprocess.CompletedProcess[str]:
    extras, _ = runtime_requirements()
    return subprocess.run(
        [str(BUILD), *(["--extras", ",".join(extras)] if extras else []), "--check-wheels", arch, str(report)],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.timeout(600)
def test_every_runtime_dependency_resolves_to_an_aarch64_wheel(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = resolve("aarch64", report)
    if proc.returncode != 0 and not CI and any(sign in proc.stderr for sign in OFFLINE):
        pytest.skip(f"the package index is not reachable: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    installs = json.loads(report.read_text())["install"]
    wheels = {}
    for item in installs:
        filename = item["download_info"]["url"].rsplit("/", 1)[-1]
        assert filename.endswith(".whl"), f"{filename}: not a wheel (it would be built on the gateway)"
        name, _version, _build, tags = parse_wheel_filename(filename)
        wheels[name] = tags
    # binary wheels for the ARM gateway's CPU and Python, or pure Python ones
    for name, tags in wheels.items():
        assert any(tag.platform == "any" or tag.platform.endswith("_aarch64") for tag in tags), (name, tags)
        assert any(tag.interpreter in ("py3", "cp311") or tag.abi == "abi3" for tag in tags), (name, tags)
    # the resolution covered every dependency pyproject.toml declares now, and compiled ones came for aarch64
    _, declared = runtime_requirements()
    missing = {canonicalize_name(Requirement(text).name) for text in declared} - set(wheels) - {"vpp-agent"}
    assert not missing, f"declared but not resolved: {sorted(missing)}"
    compiled = [name for name, tags in wheels.items() if all(tag.platform != "any" for tag in tags)]
    assert "numpy" in compiled and all(
        any(tag.platform.endswith("_aarch64") for tag in wheels[name]) for name in compiled
    ), {name: sorted(str(tag) for tag in wheels[name]) for name in compiled}


def test_32_bit_arm_is_refused_with_pip_s_reason(tmp_path: Path) -> None:
    """The check can fail, and says why: 32-bit ARM (armv7l, e.g. a 32-bit Raspberry Pi OS) gets no manylinux
    wheels from numpy and others, so such a gateway would compile them (docs/deploy.md, "ARM")."""
    proc = resolve("armv7l", tmp_path / "report.json")
    if proc.returncode != 0 and not CI and any(sign in proc.stderr for sign in OFFLINE):
        pytest.skip("the package index is not reachable")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "a runtime dependency has no armv7l wheel for CPython 3.11" in proc.stderr
    assert "No matching distribution found for" in proc.stderr, proc.stderr[-2000:]
