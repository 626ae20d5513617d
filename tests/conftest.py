"""Shared fixtures. The genuine recordings live in ../shared/data/real and are read in place."""
from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of genuine recordings; tests that need it skip with a reason when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"genuine recordings not found at {REAL_DATA} (expected ../shared/data/real beside the project)")
    return REAL_DATA
