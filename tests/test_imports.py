"""Imports flow one way: events -> nsm -> models -> pipelines, and events never imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["events", "nsm", "models", "pipelines"]
FORBIDDEN = {pkg: set(ORDER[i + 1 :]) for i, pkg in enumerate(ORDER)}
FORBIDDEN["events"] |= {"torch", "torchvision"}
for pkg in ORDER[1:]:
    FORBIDDEN[pkg].add("torchvision")


def imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("pkg", ORDER)
def test_package_imports_only_earlier_packages(pkg):
    bad = {}
    for path in sorted((ROOT / pkg).rglob("*.py")):
        wrong = imported_top_levels(path) & FORBIDDEN[pkg]
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not bad, f"{pkg} imports what it must not: {bad}"


def test_events_runs_without_loading_torch():
    modules = sorted(
        "events." + ".".join(p.relative_to(ROOT / "events").with_suffix("").parts)
        for p in (ROOT / "events").rglob("*.py")
        if p.name != "__init__.py"
    )
    code = "import sys, importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "bad = [m for m in ('torch', 'nsm', 'models', 'pipelines') if m in sys.modules]\nassert not bad, bad\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the four packages (a package is its ``__init__.py``)."""
    modules = {}
    for pkg in ORDER:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` imports anywhere in its file (inside functions too). ``from P import x``
    imports the module P.x when there is one, else P."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    found = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def test_no_module_imports_in_a_circle():
    modules = project_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    circles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [name, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_library_modules_never_import_the_command_line():
    """Only the parser (``pipelines.cli``) and the subcommands (``pipelines.commands``) may import
    ``pipelines.cli`` or ``pipelines.commands``: the library below them is called by them, never the reverse."""
    modules = project_modules()
    front = ("pipelines.cli", "pipelines.commands")
    bad = {
        name: sorted(m for m in imported_modules(name, path, modules) if m.startswith(front))
        for name, path in modules.items()
        if not name.startswith(front)
    }
    bad = {name: found for name, found in bad.items() if found}
    assert not bad, f"library modules that import the command line: {bad}"
