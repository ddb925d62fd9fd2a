"""Seeds and mutations for fuzzing the readers (not a test module).

The seeds are the real files of the tests (``conftest``), the data sets cut to their first
reflection rows so that a case reads in milliseconds. Each named mutation damages a seed
the way real files are damaged (a deleted tag, a truncated loop, NaN, a frame without
reflections, ...); ``rng`` (a :class:`random.Random` drawn by hypothesis) picks where.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

from conftest import dataset_path, structure_path

ROWS_KEPT = 120  # reflection rows of a data-set seed


def _data_seed(name: str) -> str:
    """The real data set with only its first ``ROWS_KEPT`` reflection rows."""
    text = dataset_path(name).read_bytes().decode("ascii")
    lines = text.splitlines(keepends=True)
    start = max(i for i, line in enumerate(lines) if line.strip().startswith("_refln_")) + 1
    return "".join(lines[: start + ROWS_KEPT])


DATA_SEEDS = {name: _data_seed(name) for name in ("quartz", "glycine")}
STRUCTURE_SEEDS = {
    name: structure_path(name).read_text(encoding="utf-8")
    for name in ("quartz", "cspbbr3", "paracetamol", "glycine")
}

Mutation = Callable[[str, random.Random], str | bytes]


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _tag_lines(text: str, prefix: str = "_") -> list[int]:
    return [i for i, line in enumerate(_lines(text)) if line.lstrip().startswith(prefix)]


def _value_lines(text: str) -> list[int]:
    """Lines of loop rows (they start with a number or a label, not a tag or keyword)."""
    keywords = ("_", "loop_", "data_", ";", "#")
    return [
        i
        for i, line in enumerate(_lines(text))
        if line.strip() and not line.lstrip().lower().startswith(keywords)
    ]


def _replace_line(text: str, index: int, new: str) -> str:
    lines = _lines(text)
    ending = lines[index][len(lines[index].rstrip("\r\n")) :]
    lines[index] = new + ending
    return "".join(lines)


def delete_tag(text: str, rng: random.Random) -> str:
    """A tag line removed (a loop column or a single item)."""
    lines, tags = _lines(text), _tag_lines(text)
    if tags:
        del lines[rng.choice(tags)]
    return "".join(lines)


def truncate(text: str, rng: random.Random) -> str:
    """The file cut anywhere (a loop, a text field, a number)."""
    return text[: rng.randrange(0, max(len(text), 1))]


def replace_value(text: str, rng: random.Random, choices: tuple[str, ...]) -> str:
    """One value of a loop row or a tag line replaced by one of ``choices``."""
    candidates = _value_lines(text) + _tag_lines(text)
    if not candidates:
        return text + rng.choice(choices)
    index = rng.choice(candidates)
    words = _lines(text)[index].split()
    if words[0].startswith("_") and len(words) < 2:
        words = [*words, "0"]
    position = rng.randrange(1 if words[0].startswith("_") else 0, len(words))
    words[position] = rng.choice(choices)
    return _replace_line(text, index, " ".join(words))


def non_numeric(text: str, rng: random.Random) -> str:
    return replace_value(text, rng, ("abc", "1.2.3", "--1", "1e", "(3)", "'x'", "?", "."))


def non_finite(text: str, rng: random.Random) -> str:
    return replace_value(text, rng, ("nan", "NaN", "inf", "-inf", "Infinity", "1e999"))


def huge(text: str, rng: random.Random) -> str:
    return replace_value(text, rng, ("1e300", "-1e300", "99999999999999999999", "1e-320", "0"))


def duplicate_line(text: str, rng: random.Random) -> str:
    """A row (a duplicate frame id, a repeated reflection) or a tag repeated."""
    lines, candidates = _lines(text), _value_lines(text) + _tag_lines(text)
    if not candidates:
        return text + text
    index = rng.choice(candidates)
    lines.insert(index + rng.randrange(0, 3), lines[index])
    return "".join(lines)


def drop_rows(text: str, rng: random.Random) -> str:
    """Several consecutive rows removed (a frame without reflections, a missing frame)."""
    rows = _value_lines(text)
    if not rows:
        return text[: len(text) // 2]
    start = rng.randrange(len(rows))
    gone = set(rows[start : start + rng.randrange(1, 40)])
    return "".join(line for i, line in enumerate(_lines(text)) if i not in gone)


def frame_id(text: str, rng: random.Random) -> str:
    """A reflection's frame id set to one the file lacks (or negative, or zero)."""
    rows = [i for i in _value_lines(text) if len(_lines(text)[i].split()) in (6, 7)]
    if not rows:
        return text
    index = rng.choice(rows)
    words = _lines(text)[index].split()
    words[5] = rng.choice(("0", "-1", "999", "100000", "3.5"))
    return _replace_line(text, index, " ".join(words))


def line_endings(text: str, rng: random.Random) -> str:
    """Line endings mixed: some LF, some CRLF, some CR."""
    out = []
    for line in _lines(text):
        body = line.rstrip("\r\n")
        out.append(body + rng.choice(("\n", "\r\n", "\r\n", "\n", "\r")))
    return "".join(out)


def bad_bytes(text: str, rng: random.Random) -> bytes:
    """A few bytes that are not UTF-8 or are control characters."""
    data = bytearray(text.encode("utf-8"))
    for _ in range(rng.randrange(1, 4)):
        data.insert(rng.randrange(len(data) + 1), rng.choice((0xFF, 0xC3, 0x80, 0x00, 0x07, 0x1B)))
    return bytes(data)


def u_to_b(text: str, rng: random.Random) -> str:
    """Displacement parameters as B instead of U (isotropic and anisotropic tags)."""
    text = text.replace("_atom_site_U_iso_or_equiv", "_atom_site_B_iso_or_equiv")
    if rng.random() < 0.5:
        text = re.sub(r"_atom_site_aniso_U_(\d\d)", r"_atom_site_aniso_B_\1", text)
    return text


def several_blocks(text: str, rng: random.Random) -> str:
    """The file followed, or preceded, by another data block (a copy or a stub)."""
    other = rng.choice((text.replace("data_", "data_copy_", 1), "data_global\n_audit_x 1\n"))
    return text + "\n" + other if rng.random() < 0.5 else other + "\n" + text


def swap_lines(text: str, rng: random.Random) -> str:
    lines = _lines(text)
    if len(lines) < 2:
        return text[::-1]
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines)


def unterminated_quote(text: str, rng: random.Random) -> str:
    """An opening quote with no closing one, in a value or a descriptive tag."""
    if rng.random() < 0.5:
        return text.replace("\n", "\n_publ_section_title 'An unfinished title\n", 1)
    rows = _value_lines(text)
    if not rows:
        return text + "'"
    index = rng.choice(rows)
    return _replace_line(text, index, "'" + _lines(text)[index].strip())


MUTATIONS: dict[str, Mutation] = {
    f.__name__: f
    for f in (
        delete_tag, truncate, non_numeric, non_finite, huge, duplicate_line, drop_rows,
        frame_id, line_endings, bad_bytes, u_to_b, several_blocks, swap_lines,
        unterminated_quote,
    )
}  # fmt: skip


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path
