"""The dependency rules of DESIGN.md §2, checked on the source (ast, nothing imported).

- `drivers` implements agent.ports and imports nothing else of `agent` but the domain (agent.model): a driver that
  reached into agent.config or agent.telemetry would tie every protocol adapter to the agent's config classes.
- agent/wiring.py is the one module of `agent` that picks a driver class per asset; agent/probe.py builds one
  ModbusDriver for `vpp-agent probe`, a map and an address from the command line, no asset (the one exception).
- `agent` reaches `drivers` only through the composition root and the few modules named in REACHES_DRIVERS: a config
  validator that loaded a driver's map (as agent/config.py once did for SunSpec product maps) would tie the config
  classes to the protocol adapters; such checks live in agent.wiring.asset_problems.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVERS_MAY_IMPORT = {"agent.ports", "agent.model", "agent.domain"}
DRIVER_CLASSES = {"ModbusDriver", "MqttDriver", "OcppEvseDriver", "SunSpecDriver"}
PICKS_DRIVERS = {"agent/wiring.py", "agent/probe.py"}
# the modules of `agent` that import anything of `drivers`, and why; every other one (agent/config.py included) none
REACHES_DRIVERS = {
    "agent/wiring.py": "the composition root",
    "agent/probe.py": "`vpp-agent probe`: a driver for a map and an address, no asset",
    "agent/plugins.py": "the transport registry: drivers.entrypoints names the built-in and installed factories",
    "agent/app.py": "a type only (MqttLink, under TYPE_CHECKING); wiring builds it",
}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import in the file, TYPE_CHECKING and function-local ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def _allowed(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in DRIVERS_MAY_IMPORT)


def test_drivers_import_only_the_ports_and_the_domain_of_agent() -> None:
    files = sorted((ROOT / "drivers").rglob("*.py"))
    assert len(files) > 10  # the walk found the package
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module, _ in _imports(path)
        if (module == "agent" or module.startswith("agent.")) and not _allowed(module)
    ]
    assert not wrong, "drivers may import only agent.ports and agent.model of agent:\n" + "\n".join(wrong)


def test_only_the_wiring_picks_driver_classes() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module} import {', '.join(sorted(set(names) & DRIVER_CLASSES))}"
        for path in sorted((ROOT / "agent").rglob("*.py"))
        if str(path.relative_to(ROOT)) not in PICKS_DRIVERS
        for line, module, names in _imports(path)
        if module.startswith("drivers") and set(names) & DRIVER_CLASSES
    ]
    assert not wrong, "a driver class is chosen outside agent/wiring.py:\n" + "\n".join(wrong)


def test_only_the_composition_root_and_its_named_neighbours_import_drivers() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in sorted((ROOT / "agent").rglob("*.py"))
        if str(path.relative_to(ROOT)) not in REACHES_DRIVERS
        for line, module, _ in _imports(path)
        if module == "drivers" or module.startswith("drivers.")
    ]
    why = "agent reaches drivers outside agent/wiring.py (a map is checked in agent.wiring.asset_problems):"
    assert not wrong, "\n".join([why, *wrong])
    assert all((ROOT / name).is_file() for name in REACHES_DRIVERS)  # no stale entry


def test_the_walk_sees_a_lazy_drivers_import_in_a_validator(tmp_path: Path) -> None:
    """The shape agent/config.py had: an import of drivers inside a method, not at the top."""
    source = tmp_path / "config.py"
    source.write_text("class A:\n    def check(self):\n        from drivers.sunspec.profile import load_product\n"
                      "        import drivers.registermap\n")  # fmt: skip
    assert [m for _, m, _ in _imports(source)] == ["drivers.sunspec.profile", "drivers.registermap"]


def test_the_rule_would_catch_a_config_import(tmp_path: Path) -> None:
    """The walk sees imports inside functions and TYPE_CHECKING blocks, where the old factory's were."""
    source = tmp_path / "x.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.config import AppConfig\n"
        "def f():\n    import agent.telemetry\n"
    )
    modules = [module for _, module, _ in _imports(source)]
    assert [m for m in modules if m.startswith("agent") and not _allowed(m)] == ["agent.config", "agent.telemetry"]
