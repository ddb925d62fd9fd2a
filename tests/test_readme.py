"""The README's snippets (and the Python ones of docs/) run as written.

``pip install`` lines are checked against the extras ``pyproject.toml`` offers (installing
needs a network); ``python -m pytest`` is this suite; ``blochnet refine --example quartz``
takes minutes and runs in the slow tier; every other command runs in a folder where a
small refinement has written ``refinement/``, as the tutorial's first command would.
"""

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from refinement.small_data import SIMULATION, small_quartz_frames

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", README, flags=re.DOTALL)
COMMANDS = [
    part.strip()
    for kind, text in BLOCKS
    if kind == "bash"
    for part in text.replace("\\\n", " ").split("&&")
    if part.strip()
]
REFINE = "blochnet refine --example quartz"
BLOCHNET = [c for c in COMMANDS if c.startswith("blochnet") and c != REFINE]


def test_readme_has_the_two_commands_first():
    assert COMMANDS[:3] == ["pip install torch==2.13.0", 'pip install -e ".[plot]"', REFINE]
    assert "python -m pytest -q" in COMMANDS


def test_readme_installs_only_extras_the_project_offers():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for command in COMMANDS:
        if command.startswith("pip install -e"):
            named = re.search(r"\[(.*)\]", command).group(1).split(",")
            assert set(named) <= set(extras), command


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """A folder holding ``refinement/`` from a small refinement of quartz."""
    from blochnet.examples import example_path
    from blochnet.io.cif import read_structure
    from blochnet.io.pets import read_pets
    from blochnet.io.pets_write import write_pets
    from blochnet.refinement.config import RefineConfig
    from blochnet.refinement.pipeline import refine
    from blochnet.refinement.thickness import ThicknessConfig

    folder = tmp_path_factory.mktemp("tutorial")
    crystal = read_structure(example_path("quartz"))
    write_pets(small_quartz_frames(crystal, seed=3), folder / "small.cif_pets")
    config = RefineConfig(
        simulation=SIMULATION, epochs=1, thickness=ThicknessConfig(kind="global", t0=500.0),
        auto_setup=False, plot=False,
    )  # fmt: skip
    refine(crystal, [read_pets(folder / "small.cif_pets")], folder / "refinement", config)
    return folder


@pytest.mark.parametrize("command", BLOCHNET)
def test_readme_command_runs_on_a_refinement_folder(command, tutorial):
    blochnet = Path(sys.executable).parent / "blochnet"
    run = subprocess.run(
        [str(blochnet), *shlex.split(command)[1:]], cwd=tutorial, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


PYTHON = [
    text
    for page in (README, *(p.read_text(encoding="utf-8") for p in sorted(ROOT.glob("docs/*.md"))))
    for kind, text in re.findall(r"```(bash|python)\n(.*?)```", page, flags=re.DOTALL)
    if kind == "python"
]


@pytest.mark.parametrize("code", PYTHON)
def test_python_snippets_of_the_readme_and_docs_run(code, tmp_path):
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr


@pytest.mark.slow
def test_readme_first_command_refines_the_bundled_quartz(tmp_path):
    blochnet = Path(sys.executable).parent / "blochnet"
    run = subprocess.run([str(blochnet), *shlex.split(REFINE)[1:]], cwd=tmp_path,
                         capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "refinement" / "report.html").is_file()
