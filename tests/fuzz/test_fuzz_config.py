"""Fuzzing the configuration loader: any TOML text, and any value of a command-line option,
gives a configuration or one clear line naming the file or option; never a traceback."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from test_fuzz_readers import fuzz

from blochnet.cli.options import validated
from blochnet.cli.refine import load_config
from blochnet.errors import ConfigurationError, InputFileError
from blochnet.refinement.config import RefineConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "refine.toml"
# the cases are written here; the folder goes when the test process ends
_WORK = tempfile.TemporaryDirectory(prefix="blochnet-fuzz-config-")
WORK = Path(_WORK.name)


def _field_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        names.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _field_names(annotation, f"{prefix}{name}.")
    return names


FIELDS = _field_names(RefineConfig)

SCALARS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["all", "none", "adam", "lbfgs", "neural", "global", "frame", "eigh"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.lists(st.lists(SCALARS, max_size=3)))
KEYS = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from(FIELDS).map(lambda name: name[:-1] + "x"),  # a typing error
    st.text(min_size=1, max_size=10),
)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml(settings: dict[str, object]) -> str:
    """TOML text of dotted keys (``simulation.n_tilts = 3``), each part quoted."""
    return "".join(
        ".".join(json.dumps(part) for part in key.split(".")) + f" = {_toml_value(value)}\n"
        for key, value in settings.items()
    )


def load_or_explain(path: Path):
    try:
        return load_config(path)
    except (InputFileError, ConfigurationError) as error:
        message = str(error)
        assert message.startswith(f"{path}"), message
        assert "\n" not in message, message
        return None


@fuzz(300)
@given(settings=st.dictionaries(KEYS, VALUES, max_size=6))
def test_any_generated_configuration_loads_or_is_refused_in_one_line(settings):
    path = WORK / "generated.toml"
    path.write_text(_toml(settings), encoding="utf-8")
    config = load_or_explain(path)
    if config is not None:
        assert isinstance(config, RefineConfig) and config.epochs >= 1


@fuzz(200)
@given(
    edits=st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 20), st.text(max_size=15)),
        min_size=1,
        max_size=4,
    )
)
def test_the_example_configuration_edited_anywhere_loads_or_is_refused_in_one_line(edits):
    text = EXAMPLE.read_text(encoding="utf-8")
    for where, removed, inserted in edits:
        at = int(where * len(text))
        text = text[:at] + inserted + text[at + removed :]
    path = WORK / "edited.toml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    load_or_explain(path)


@fuzz(200)
@given(value=st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=8), st.floats()))
def test_any_epochs_option_gives_a_configuration_or_one_line_naming_the_option(value):
    try:
        config = validated(RefineConfig, {"epochs": ("--epochs", value)})
    except ConfigurationError as error:
        assert str(error).startswith("--epochs ") and "\n" not in str(error)
        assert str(value) in str(error) or repr(str(value)) in str(error)
    else:
        assert config.epochs >= 1
