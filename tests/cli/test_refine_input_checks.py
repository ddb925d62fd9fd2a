"""``blochnet refine`` answers a wrong output folder or option in one line, before reading
any data, and refuses a second run into a folder another run holds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blochnet.cli.main import app
from blochnet.errors import ConfigurationError
from blochnet.io.output_folder import LOCK_NAME, check_output_folder, claim_output_folder

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def run(*args) -> object:
    return CliRunner().invoke(app, ["refine", *map(str, args)])


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_an_output_folder_that_is_an_existing_file_is_refused_in_one_line(tmp_path):
    out = tmp_path / "results"
    out.write_text("not a folder")
    assert_one_line_error(run("--example", "quartz", "--out", out), str(out), "is a file")


def test_an_output_folder_below_a_file_cannot_be_created_and_says_which_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("")
    out = blocker / "run1"
    assert_one_line_error(
        run("--example", "quartz", "--out", out),
        f"{out}: cannot be created",
        f"{blocker} is a file",
    )


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot write in (a read-only system folder for root)."""
    if ROOT:
        if not Path("/sys").is_dir():
            pytest.skip("no read-only folder for root on this system")
        return Path("/sys")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_an_unwritable_output_folder_is_refused_before_the_data_are_read(tmp_path):
    folder = _unwritable(tmp_path)
    missing = tmp_path / "missing.cif_pets"  # reading it would fail with another message
    structure = tmp_path / "missing.cif"
    result = run(structure, missing, "--out", folder)
    assert_one_line_error(result, str(folder), "files cannot be written in it")


def test_an_output_folder_that_cannot_be_created_is_refused_in_one_line(tmp_path):
    out = _unwritable(tmp_path) / "new" / "run"
    assert_one_line_error(run("--example", "quartz", "--out", out), str(out), "cannot be created")


def test_a_second_claim_from_another_process_names_the_first_run(tmp_path):
    with claim_output_folder(tmp_path):
        code = (
            "import sys\n"
            "from blochnet.io.output_folder import claim_output_folder\n"
            "from blochnet.errors import ConfigurationError\n"
            "try:\n"
            f"    claim_output_folder({str(tmp_path)!r})\n"
            "except ConfigurationError as error:\n"
            "    print(error); sys.exit(3)\n"
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode == 3, other.stderr
        assert "another blochnet run is writing to it" in other.stdout
        assert f"pid {os.getpid()}" in other.stdout
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr  # released after the run


def test_a_folder_left_by_a_killed_run_can_be_claimed_again(tmp_path):
    """flock dies with its process: a SIGKILLed run leaves no stale lock behind."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom blochnet.io.output_folder import claim_output_folder\n"
            f"claim_output_folder({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigurationError, match=f"pid {holder.pid}"):
        claim_output_folder(tmp_path)
    holder.kill()
    holder.wait()
    with claim_output_folder(tmp_path) as claim:
        assert (claim.path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()}")


def test_a_claim_nested_in_the_same_process_is_allowed(tmp_path):
    with claim_output_folder(tmp_path), claim_output_folder(tmp_path / "."):
        check_output_folder(tmp_path)


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--epochs", -3, "--epochs -3: input should be greater than or equal to 1"),
        ("--epochs", 0, "--epochs 0: input should be greater than or equal to 1"),
    ],
)
def test_a_command_line_option_is_checked_by_the_configuration_rules(
    tmp_path, option, value, expected
):
    result = run("--example", "quartz", option, value, "--out", tmp_path / "out")
    assert_one_line_error(result, expected)
    assert not (tmp_path / "out").exists()


def test_the_same_value_in_the_configuration_file_is_refused_by_the_same_rule(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("epochs = -3\n")
    result = run("--example", "quartz", "--config", config, "--out", tmp_path / "out")
    assert_one_line_error(
        result, f"{config}: epochs = -3: input should be greater than or equal to 1"
    )


@pytest.mark.parametrize(
    "toml, expected",
    [
        ("[simulation]\nn_tilt = 3\n", "[simulation] n_tilt: unknown key; did you mean n_tilts?"),
        ("epoch = 3\n", "epoch: unknown key; did you mean epochs?"),
        ("[learning_rates]\nxzy = 1e-4\n", "[learning_rates] xzy: unknown key; did you mean xyz?"),
        ("[thickness]\nkind = 'neural'\nt_rnage = [1, 2]\n", "did you mean t_range?"),
        ("zzz_unrelated = 1\n", "zzz_unrelated: unknown key"),
        ("[simulation]\nn_tilts = 'many'\n", "[simulation] n_tilts = 'many': input should be"),
    ],
)
def test_a_bad_configuration_key_gets_one_line_naming_it(tmp_path, toml, expected):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = run("--example", "quartz", "--config", config, "--out", tmp_path / "out")
    line = assert_one_line_error(result, str(config), expected)
    if "zzz" in toml:
        assert "did you mean" not in line


def test_a_configuration_file_that_is_not_utf8_or_not_toml_is_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_bytes(b"epochs = 3\n# caf\xe9\n")
    assert_one_line_error(run("--example", "quartz", "--config", config), f"{config}", "UTF-8")
    config.write_text("epochs = = 3\n")
    assert_one_line_error(run("--example", "quartz", "--config", config), "not valid TOML")


@pytest.mark.parametrize(
    "command, option, value, expected",
    [
        ("evaluate", "--n-tilts", "0", "--n-tilts 0: input should be greater than or equal to 1"),
        ("evaluate", "--rsg-max", "-1", "--rsg-max -1.0: input should be greater than 0"),
        ("evaluate", "--rocking", "sideways", "--rocking sideways: input should be 'auto'"),
        ("simulate", "--n-tilts", "0", "--n-tilts 0: input should be greater than or equal to 1"),
        ("simulate", "--dose", "-5", "--dose -5.0: input should be greater than 0"),
    ],
)
def test_simulation_options_of_other_commands_follow_the_configuration_rules(
    tmp_path, command, option, value, expected
):
    from blochnet.examples import example_dataset_path, example_path

    structure, data = example_path("quartz"), example_dataset_path("quartz")
    if command == "evaluate":
        args = ["evaluate", structure, data, "--thickness", "500", option, value]
    else:
        args = ["simulate", structure, "--out", tmp_path / "s.cif_pets", option, value]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert_one_line_error(result, expected)
