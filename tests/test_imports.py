"""The packages' import structure: no cycles, no function-local workarounds, dependencies in order.

Issue 8: every module imports what it needs at module level; the graph of those imports (within the
four packages) has no cycle; a function-local import of a module of the *same* package (the classic
way to hide a cycle) is not allowed; each package imports only the packages before it
(hiend-data < hiend-model < hiend-train < hiend-eval); and every module imports in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["hiend_data", "hiend_model", "hiend_train", "hiend_eval"]
#: hiend-eval depends on hiend-data only (DESIGN.md: each package depends on the ones before it in the
#: list; hiend-eval uses no model or training code)
ALLOWED = {
    "hiend_data": set(),
    "hiend_model": {"hiend_data"},
    "hiend_train": {"hiend_data", "hiend_model"},
    "hiend_eval": {"hiend_data", "hiend_model", "hiend_train"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in ORDER:
        src = next(ROOT.glob(f"packages/*/src/{pkg}"))
        for path in sorted(src.rglob("*.py")):
            rel = path.relative_to(src.parent).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Project modules named by one import statement of ``module`` (the longest existing prefix)."""
    targets: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if _is_package(module) else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
    for name in names:
        parts = name.split(".")
        while parts and ".".join(parts) not in MODULES:
            parts.pop()
        if parts:
            targets.append(".".join(parts))
    return targets


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(module: str, tree: ast.Module) -> set[str]:
    """Imports executed when the module is imported (top level, incl. try/if blocks, not TYPE_CHECKING)."""
    out: set[str] = set()

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                out.update(t for t in _resolve(module, node) if t != module)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node):
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for h in node.handlers:
                    walk(h.body)
                walk(node.orelse)
                walk(node.finalbody)
            elif isinstance(node, ast.With):
                walk(node.body)

    walk(tree.body)
    return out


def _local_imports(module: str, tree: ast.Module) -> list[tuple[int, str]]:
    """Imports of the module's own package inside functions: (line, target)."""
    pkg = module.split(".")[0]
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import | ast.ImportFrom):
                out += [
                    (node.lineno, t) for t in _resolve(module, node) if t.split(".")[0] == pkg and t != pkg
                ]
    return out


def _graph() -> dict[str, set[str]]:
    return {m: _module_level_imports(m, ast.parse(p.read_text(), str(p))) for m, p in MODULES.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # importing a package runs its __init__ first, and a submodule import runs the parent's
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_module_list_is_complete():
    # the walk found every package and a plausible number of modules (not an empty glob)
    assert {m.split(".")[0] for m in MODULES} == set(ORDER)
    assert len(MODULES) >= 40


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_cycle_hidden_inside_a_function():
    # A function-local import of the module's own package is fine for start-up time (a CLI importing
    # torch-heavy modules only when a command runs), but not as a way to hide a cycle: with every such
    # import added as an edge, the graph must still be acyclic.
    graph = _graph()
    for module, path in MODULES.items():
        graph[module] |= {
            t for _, t in _local_imports(module, ast.parse(path.read_text(), str(path))) if t != module
        }
    cycle = _cycle(graph)
    assert cycle is None, "import cycle through a function-local import: " + " -> ".join(cycle or [])


def test_packages_import_only_the_ones_before_them():
    bad = []
    for module, targets in _graph().items():
        pkg = module.split(".")[0]
        for t in targets:
            other = t.split(".")[0]
            if other != pkg and other not in ALLOWED[pkg]:
                bad.append(f"{module} imports {t}")
    # function-local imports across packages count too
    for module, path in MODULES.items():
        pkg = module.split(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for t in _resolve(module, node):
                    other = t.split(".")[0]
                    if other != pkg and other not in ALLOWED[pkg]:
                        bad.append(f"{module}:{node.lineno} imports {t}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_every_module_imports_in_a_fresh_interpreter():
    # one interpreter per package, importing its modules leaf-first would hide nothing the graph test
    # misses; importing each package's modules in sorted order in a fresh process catches a module that
    # only imports after another one was imported
    code = (
        "import importlib, sys\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        bad.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    for pkg in ORDER:
        names = sorted(m for m in MODULES if m.split(".")[0] == pkg)
        proc = subprocess.run(
            [sys.executable, "-c", code, *reversed(names)], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, (
            f"{pkg}: modules that fail to import:\n{proc.stdout}{proc.stderr[-2000:]}"
        )
