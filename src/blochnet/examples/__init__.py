"""Example structures and data sets shipped inside the package (see README.md here)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from blochnet.errors import ConfigurationError

EXAMPLES = {"quartz": "quartz.cif", "silicon": "silicon.cif"}


def example_path(name: str) -> Path:
    """Path of a bundled example file by short name (``"quartz"``, ``"silicon"``)."""
    if name not in EXAMPLES:
        raise ConfigurationError(f"no example {name!r}; available: {', '.join(EXAMPLES)}")
    return Path(str(resources.files(__package__).joinpath(EXAMPLES[name])))
