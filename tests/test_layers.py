"""The package's shape: layers only point down (import-linter contract in pyproject.toml), no import cycles."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "revelio_svc"


def test_layers_point_down():
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint)], cwd=PKG.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def _module_imports() -> dict[str, set[str]]:
    """Every module of the package → the package modules it imports (at any depth in the file)."""
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        name = ".".join(parts)
        package = parts if rel.name == "__init__" else parts[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                # `from pkg import mod` depends on pkg.mod; `from pkg import name` on pkg itself
                deps.update((f"{mod}.{a.name}", mod) for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = deps
    known = set(graph)
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        resolved = {d if isinstance(d, str) else (d[0] if d[0] in known else d[1]) for d in deps}
        out[m] = {d for d in resolved if d in known and d != m}
    return out


def test_no_import_cycles():
    graph = _module_imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " → ".join(cycle))
