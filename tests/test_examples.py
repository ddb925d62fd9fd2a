"""The files under ``examples/`` work: the configuration validates, the script runs."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from blochnet.cli.refine import load_config
from blochnet.refinement.config import RefineConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_example_configuration_is_valid_and_differs_from_the_defaults_only_where_it_says():
    config = load_config(EXAMPLES / "refine.toml")
    changed = {("thickness", "kind"): "neural", ("thickness", "shape"): "flexible"}
    assert (config.thickness.kind, config.thickness.shape) == tuple(changed.values())
    defaults = RefineConfig().model_dump()
    written = tomllib.loads((EXAMPLES / "refine.toml").read_text(encoding="utf-8"))

    def leaves(tree, prefix=()):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, (*prefix, key))
            else:
                yield (*prefix, key), value

    for path, value in leaves(written):
        default = defaults
        for key in path:
            default = default[key]
        if path not in changed:
            assert value == (list(default) if isinstance(default, tuple) else default), path


def test_the_python_example_refines_and_prints_coordinates_with_su(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "refine_quartz.py"), "--epochs", "1", "--no-setup",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert f"frame mean over {report['n_obs']} obs" in result.stdout
    assert report["n_obs"] >= 1400  # the observed per-frame observations of the bundled data
    assert "O1" in result.stdout and "(" in result.stdout
    assert "absolute structure: P 32 2 1 (as in the starting structure)" in result.stdout
    assert (tmp_path / "refined.cif").exists()
