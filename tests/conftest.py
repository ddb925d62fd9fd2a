"""Shared test fixtures: where the project's shared real data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve()


def shared_data_dir() -> Path:
    """The shared data folder: $BLOCHNET_DATA, or ``shared/data`` beside the checkout."""
    candidates = [Path(os.environ["BLOCHNET_DATA"])] if os.environ.get("BLOCHNET_DATA") else []
    candidates += [parent / "shared" / "data" for parent in _HERE.parents]
    for candidate in candidates:
        if (candidate / "experiments").is_dir():
            return candidate
    raise FileNotFoundError(
        "shared data not found: set BLOCHNET_DATA or place shared/data beside the checkout"
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()
