"""The dependency rule of DESIGN.md §2: nothing in `agent/` imports `sim_devices` (or the evaluation, which imports
both) except the composition root, agent/cli.py, which starts the demo's simulated site and the `simulate` command;
`sim_devices` never imports `evaluation` or `agent`'s dispatch. Read from the source (every import statement, those
inside functions included), so a lazy import cannot hide."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION_ROOT = {"agent/cli.py"}


def imported_modules(source: str) -> set[str]:
    """Every absolute module an import statement anywhere in `source` names (relative imports stay in-package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def offenders(package: str, forbidden: tuple[str, ...], allowed: set[str] = frozenset()) -> dict[str, list[str]]:
    """Files of `package` (relative paths) importing a module under one of `forbidden`, with what they import."""
    out: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        bad = sorted(m for m in imported_modules(path.read_text(encoding="utf-8"))
                     if m.split(".")[0] in forbidden)
        if bad:
            out[rel] = bad
    return out


def test_the_rule_sees_lazy_and_from_imports() -> None:
    source = "import os\ndef f():\n    from sim_devices.battery import Battery\n    import evaluation.plots\n"
    assert {"sim_devices.battery", "evaluation.plots"} <= imported_modules(source)
    assert "os" in imported_modules(source)


def test_agent_imports_no_simulator_or_evaluation_outside_the_composition_root() -> None:
    assert offenders("agent", ("sim_devices", "evaluation"), COMPOSITION_ROOT) == {}


def test_the_composition_root_is_where_the_simulator_comes_in() -> None:
    # if the demo stopped needing it this test would say so, and the allowance above should go
    modules = imported_modules((ROOT / "agent/cli.py").read_text(encoding="utf-8"))
    assert any(m.startswith("sim_devices") for m in modules)


def test_the_simulator_imports_no_evaluation() -> None:
    assert offenders("sim_devices", ("evaluation",)) == {}
