"""Strict JSON: what JavaScript's JSON.parse accepts."""

import json

import numpy as np
import pytest

from blochnet.io import strict_json


def _refuse(token):
    raise ValueError(f"non-standard JSON constant {token}")


def test_non_finite_numbers_become_null_and_numpy_types_plain_numbers():
    value = {
        "r_free": float("nan"),
        "gof": np.float64(np.inf),
        "n": np.int64(3),
        "flags": np.array([True, False]),
        "pair": (1.5, -np.inf),
    }
    text = strict_json.dumps(value)
    assert json.loads(text, parse_constant=_refuse) == {
        "r_free": None,
        "gof": None,
        "n": 3,
        "flags": [True, False],
        "pair": [1.5, None],
    }


def test_an_object_json_cannot_hold_is_refused_not_written_as_text():
    with pytest.raises(TypeError):
        strict_json.dumps({"when": object()})
