"""Settings from a TOML file and from command-line options, validated by one model.

A command-line option that sets a configuration field (``--epochs``, ``--n-tilts``) is not
checked on its own: it is put into the configuration and validated with the file's
settings by the same pydantic model, so both obey the same rules. Every problem becomes one
line naming the option (``--epochs -3: ...``) or the file and key (``refine.toml:
[simulation] n_tilt: unknown key; did you mean n_tilts?``).
"""

from __future__ import annotations

import difflib
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from blochnet.errors import ConfigurationError, InputFileError


def validated(
    model: type[BaseModel],
    options: Mapping[str, tuple[str, Any]] | None = None,
    *,
    path: Path | None = None,
) -> BaseModel:
    """``model`` from the TOML file ``path`` (defaults without one) with ``options`` set.

    ``options`` maps a field path (``"epochs"``, ``"simulation.n_tilts"``) to the option's
    name and value (``("--epochs", -3)``); a value of None leaves the field as it is.
    Raises :class:`~blochnet.errors.InputFileError` for a bad file and
    :class:`~blochnet.errors.ConfigurationError` for a bad option, each with every problem.
    """
    data = read_toml(path) if path is not None else {}
    flags = {}
    for field, (flag, value) in (options or {}).items():
        if value is None:
            continue
        *parents, key = field.split(".")
        table = data
        for parent in parents:
            table = table.setdefault(parent, {})
        table[key] = value
        flags[tuple(field.split("."))] = flag
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = [problem(model, e, flags) for e in error.errors()]
        on_flags = [p for p, e in zip(problems, error.errors(), strict=True) if _flag(e, flags)]
        if on_flags:
            raise ConfigurationError("; ".join(on_flags)) from None
        raise InputFileError(path or "configuration", "", "; ".join(problems)) from None


def read_toml(path: Path) -> dict:
    """The TOML file's tables; one line naming the file for a missing or broken one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputFileError(path, f"byte {error.start}", "not UTF-8 text") from None
    except IsADirectoryError:
        raise InputFileError(path, "", "is a folder; expected a TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputFileError(path, "", f"not valid TOML: {error}") from None


def problem(model: type[BaseModel], error: dict, flags: Mapping[tuple, str]) -> str:
    """One pydantic error as ``--flag VALUE: message`` or ``[table] key: message``."""
    loc = tuple(str(part) for part in error["loc"])
    flag = _flag(error, flags)
    if flag is not None:
        return f"{flag} {_shown(error['input'])}: {_message(error)}"
    *tables, key = [_shown(part) for part in loc] or [""]
    where = (f"[{'.'.join(tables)}] " if tables else "") + key
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, _fields_at(model, list(loc[:-1])), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"{where}: unknown key{hint}"
    return f"{where} = {error['input']!r}: {_message(error)}"


def _shown(value: Any) -> str:
    """A key or value as the user typed it; quoted when it has spaces or control
    characters (so that the message stays one readable line)."""
    text = str(value)
    plain = text and all(c.isprintable() and not c.isspace() for c in text)
    return text if plain else repr(text)


def _flag(error: dict, flags: Mapping[tuple, str]) -> str | None:
    loc = tuple(str(part) for part in error["loc"])
    return next((flag for field, flag in flags.items() if loc[: len(field)] == field), None)


def _message(error: dict) -> str:
    """pydantic's message, lower-case first letter (it follows a colon)."""
    message = error["msg"].removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def _fields_at(model: type[BaseModel], tables: list[str]) -> list[str]:
    """Field names of the (nested) model reached through ``tables``."""
    models = [model]
    for table in tables:
        found = []
        for current in models:
            field = current.model_fields.get(table)
            if field is not None:
                found += _models_in(field.annotation)
        models = found
    return [name for current in models for name in current.model_fields]


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
