"""agent/dispatch has no import cycle, counting imports inside functions (a deferred import hides a cycle from the
interpreter, not from the design): aggregate.py and refine.py imported each other until the numpy pricing moved to
agent.dispatch.pricing. Imports under `if TYPE_CHECKING:` are annotations only and are not counted."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "agent" / "dispatch"


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def dispatch_imports(path: Path) -> set[str]:
    """Modules of agent.dispatch (top level, not the evaluation subpackage) that `path` imports anywhere."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["agent", "dispatch"] and len(parts) >= 3 and (PACKAGE / f"{parts[2]}.py").exists():
                found.add(parts[2])
    found.discard(path.stem)
    return found


def test_no_module_of_agent_dispatch_imports_itself_through_another() -> None:
    graph = {p.stem: dispatch_imports(p) for p in PACKAGE.glob("*.py")}
    assert "refine" in graph["aggregate"]  # the checker sees real edges

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for c in (cycle_from(m) for m in sorted(graph)) if c]
    assert not cycles, f"import cycles in agent/dispatch: {cycles}"
