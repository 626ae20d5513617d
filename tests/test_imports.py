"""Imports flow one way: events -> nsm -> models -> pipelines, and events never imports torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["events", "nsm", "models", "pipelines"]
FORBIDDEN = {pkg: set(ORDER[i + 1:]) for i, pkg in enumerate(ORDER)}
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
    modules = sorted("events." + ".".join(p.relative_to(ROOT / "events").with_suffix("").parts)
                     for p in (ROOT / "events").rglob("*.py") if p.name != "__init__.py")
    code = "import sys, importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "bad = [m for m in ('torch', 'nsm', 'models', 'pipelines') if m in sys.modules]\nassert not bad, bad\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
