"""The names users import from the top-level package."""

import pytest

import blochnet


def test_public_names_resolve_to_their_implementations():
    from blochnet.experiment.pattern import simulate_pattern
    from blochnet.io.cif import read_structure

    assert blochnet.simulate_pattern is simulate_pattern
    assert blochnet.read_structure is read_structure
    assert set(blochnet.__all__) <= set(dir(blochnet))
    for name in blochnet.__all__:
        assert getattr(blochnet, name) is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        blochnet.no_such_thing  # noqa: B018
