"""The package's layers (pyproject.toml, [tool.importlinter]): every import runs downward,
no module imports back into one that imports it, and reading files needs no torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    """cli → refinement → experiment → io | physics → plain records → errors; io and the
    records without torch; no cycles (import-linter, configured in pyproject.toml)."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_reading_a_structure_and_a_data_file_does_not_load_torch():
    code = (
        "import sys\n"
        "from blochnet.examples import example_dataset_path, example_path\n"
        "from blochnet.io.cif import read_structure\n"
        "from blochnet.io.pets import read_pets\n"
        "crystal = read_structure(example_path('quartz'))\n"
        "data = read_pets(example_dataset_path('quartz'))\n"
        "assert len(crystal.atoms) == 2 and data.n_frames == 99\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "False"
