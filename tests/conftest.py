"""Shared test fixtures: the real data the tests read, all inside the repository.

α-quartz (structure and data) ships with the package (``blochnet.examples``); the other
structures and the glycine data set are in ``tests/data`` (see its README for sources and
licences). No test reads outside the checkout.
"""

from __future__ import annotations

from pathlib import Path

from blochnet.examples import example_dataset_path, example_path

TEST_DATA = Path(__file__).resolve().parent / "data"

#: Every real structure by short name.
STRUCTURES = {
    "quartz": example_path("quartz"),
    "cspbbr3": TEST_DATA / "structures" / "cspbbr3.cif",
    "paracetamol": TEST_DATA / "structures" / "paracetamol.cif",
    "fer_framework": TEST_DATA / "structures" / "fer_framework.cif",
    "heu_framework": TEST_DATA / "structures" / "heu_framework.cif",
    "glycine": TEST_DATA / "experiments" / "glycine" / "glycine.cif",
}

#: Every real 3D-ED data set (``.cif_pets``) by short name; its starting structure is
#: ``STRUCTURES[name]``.
DATASETS = {
    "quartz": example_dataset_path("quartz"),
    "glycine": TEST_DATA / "experiments" / "glycine" / "glycine.cif_pets",
}


def structure_path(name: str) -> Path:
    """A real structure file by short name (``"quartz"``, ``"cspbbr3"``, ...)."""
    return STRUCTURES[name]


def dataset_path(name: str) -> Path:
    """A real ``.cif_pets`` file by short name (``"quartz"``, ``"glycine"``)."""
    return DATASETS[name]
