"""The house rules that keep the code readable in dependency order, checked on the source.

- No import cycle among the project's modules (``patchrank/``, ``app/``, ``app.py``), counting
  imports inside functions too: a lazy import that dodges a cycle is still a cycle.
- No module over 400 lines and no function over 60, outside tests, unless the line of the ``def``
  (or the module's first line) carries ``# long: <reason>``.
- ``patchrank`` never imports gradio or ``app``; ``app`` uses ``patchrank``'s public names only.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
REASON = "# long:"


def project_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the two packages and the Spaces entry point."""
    mods = {}
    for pkg in ("patchrank", "app"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    mods["app_entry"] = ROOT / "app.py"
    return mods


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (module level or inside functions)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[:len(package) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            # ``from pkg import sub`` imports the submodule; any other name comes from pkg itself
            candidates = subs + ([base] if any(s not in known for s in subs) else [])
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {n: imported_modules(n, p, set(mods)) for n, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (lazy imports count): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def oversized() -> list[str]:
    """Modules and functions over the limits without a stated reason."""
    bad = []
    for name, path in project_modules().items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES and REASON not in lines[0]:
            bad.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and REASON not in lines[node.lineno - 1]:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    return bad


def test_modules_and_functions_are_small():
    bad = oversized()
    assert not bad, "over the size limits (or add '# long: <reason>'): " + "; ".join(bad)


def test_engine_never_imports_the_app():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("patchrank"):
            assert not any(d.startswith("app") for d in deps), name
    for path in (ROOT / "patchrank").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "gradio" not in names, path


def test_app_uses_public_engine_names_only():
    """``from patchrank.x import _private`` or ``x._private`` reaching into the engine is refused."""
    bad = []
    for path in list((ROOT / "app").rglob("*.py")) + [ROOT / "app.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("patchrank"):
                bad += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad, bad
