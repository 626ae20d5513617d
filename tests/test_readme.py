"""The README's Python example runs as written (on a recording written here)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import events
from events.formats.aedat3 import write_aedat3

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    rng = np.random.default_rng(0)
    n = 20_000
    ev = events.make_events(
        rng.integers(0, 128, n), rng.integers(0, 128, n), np.sort(rng.integers(0, 1_000_000, n)), rng.integers(0, 2, n)
    )
    write_aedat3(tmp_path / "user01_fluorescent.aedat", ev)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["frames"].shape[1:] == (1, 64, 64)
    assert scope["res"].probs.shape == (1, 11)
    assert scope["logits"].shape == (1, 11)
