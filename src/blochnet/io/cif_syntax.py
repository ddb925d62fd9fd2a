"""CIF text to a gemmi document, with each syntax error reported where its cause is.

:func:`read_text` reads the file strictly (UTF-8 text, any line endings).

gemmi stops at the first syntax error and names the line where it noticed it; for some
errors that is not where the file is damaged. :func:`parse_cif` adds what a user needs:

* a loop with a wrong number of values: the first row that has too few or too many, or,
  when the loop runs to the end of the file, that the file looks truncated;
* an unterminated quote in the value of a tag the reader does not use (a title, a
  journal name written by another program): the value is read as unknown (``?``) and a
  note names the line; in anything the reader uses it stays an error;
* an unterminated text field (``;``): the line where it was opened.
"""

from __future__ import annotations

import re
from pathlib import Path

import gemmi

from blochnet.errors import InputFileError

_GEMMI_MESSAGE = re.compile(r"^string:(\d+)?(?::\d+)?(?:\(\d+\))?(?: in data_\S+)?:?\s*(.*)$", re.S)
_TOKEN = re.compile(r"'[^']*'(?=\s|$)|\"[^\"]*\"(?=\s|$)|\S+")
_MAX_REPAIRS = 20


def parse_cif(
    path: Path, text: str, *, used: tuple[str, ...]
) -> tuple[gemmi.cif.Document, list[str]]:
    """Parse ``text`` (the contents of ``path``); returns the document and notes on what
    was read leniently. ``used``: tag prefixes the reader uses (``"_cell_"``, ...); damage
    in any other tag's single value is tolerated. Raises
    :class:`~blochnet.errors.InputFileError` naming the line and the cause."""
    lines = text.split("\n")
    notes = []
    for _ in range(_MAX_REPAIRS + 1):
        try:
            return gemmi.cif.read_string("\n".join(lines)), notes
        except (ValueError, RuntimeError) as error:
            line, problem = _location(error)
            tag = _tag_of(lines, line) if line else None
            repairable = tag is not None and not tag.lower().startswith(used)
            if problem.startswith("unterminated") and "string" in problem and repairable:
                lines[line - 1] = _without_value(lines[line - 1], tag)
                notes.append(
                    f"line {line}: unterminated quote in the value of {tag}, which blochnet "
                    "does not use; read as unknown (?)"
                )
                continue
            raise _explained(path, lines, line, problem, tag) from None
    raise InputFileError(path, "", f"more than {_MAX_REPAIRS} damaged values; not read")


def read_text(path: Path, expected: str) -> str:
    """The text of a CIF file, strictly: one line naming the byte that is not UTF-8 text
    (or a control character), an empty file, or a file that cannot be read. Line endings
    (LF, CRLF, CR, mixed) become LF, a byte-order mark is dropped."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, "", f"cannot read the file ({exc.strerror})") from None
    if not data.strip():
        raise InputFileError(path, "", f"the file is empty; expected {expected}")
    bad = re.search(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]", data)
    if bad is None:
        try:
            text = data.decode("utf-8").removeprefix("\ufeff")
            return text.replace("\r\n", "\n").replace("\r", "\n")  # mixed line endings
        except UnicodeDecodeError as exc:
            offset, problem = exc.start, f"byte 0x{data[exc.start]:02x} is not valid UTF-8"
    else:
        offset, problem = bad.start(), f"control byte 0x{data[bad.start()]:02x}"
    line = data.count(b"\n", 0, offset) + 1
    raise InputFileError(
        path, f"line {line}", f"{problem}; expected a text CIF file (ASCII or UTF-8)"
    )


def _location(error: Exception) -> tuple[int | None, str]:
    match = _GEMMI_MESSAGE.match(str(error))
    if match is None:
        return None, str(error)
    return (int(match[1]) if match[1] else None), match[2].strip()


def _tag_of(lines: list[str], line: int) -> str | None:
    """The tag whose single value is on ``line`` (1-based): on the same line, or alone on
    the line before; None inside a loop."""
    words = lines[line - 1].split()
    if words and words[0].startswith("_"):
        return words[0]
    previous = lines[line - 2].split() if line >= 2 else []
    if len(previous) == 1 and previous[0].startswith("_"):
        return previous[0]
    return None


def _without_value(text: str, tag: str) -> str:
    return f"{tag} ?" if text.split() and text.split()[0] == tag else "?"


def _explained(
    path: Path, lines: list[str], line: int | None, problem: str, tag: str | None
) -> InputFileError:
    if line and problem.startswith("Wrong number of values in loop"):
        return _loop_error(path, lines, line) or InputFileError(
            path, f"line {line}", f"CIF syntax error: {problem}"
        )
    if problem.startswith("unterminated text field"):
        opened = _open_text_field(lines)
        if opened is not None:
            return InputFileError(
                path,
                f"line {opened}",
                "a text field opened here with ';' is never closed (by a line starting with "
                f"';') up to the end of the file at line {len(lines)}; is the file truncated?",
            )
    if line and problem.startswith("unterminated") and "string" in problem:
        what = f"the value of {tag}" if tag else "a loop value"
        return InputFileError(
            path, f"line {line}", f"unterminated quote in {what}; a quoted value ends in the "
            "same quote followed by a space or the end of the line"
        )  # fmt: skip
    return InputFileError(path, f"line {line}" if line else "", f"CIF syntax error: {problem}")


def _loop_error(path: Path, lines: list[str], start: int) -> InputFileError | None:
    """Where the loop starting at line ``start`` (1-based, ``loop_``) goes wrong."""
    index = start - 1 + (lines[start - 1].strip().lower() == "loop_")
    tags = []
    while index < len(lines) and lines[index].strip().startswith("_"):
        tags.append(lines[index].split()[0])
        index += 1
    if not tags:
        return None
    width, counts = len(tags), []
    while index < len(lines):
        stripped = lines[index].strip()
        if stripped.startswith(("_", ";")) or stripped.lower().startswith(
            ("loop_", "data_", "save_")
        ):
            break
        values = _TOKEN.findall(stripped.split("#")[0] if "'" not in stripped else stripped)
        if values:
            counts.append((index + 1, len(values)))
        index += 1
    at_end = all(not line.strip() or line.lstrip().startswith("#") for line in lines[index:])
    total = sum(n for _, n in counts)
    loop = f"the loop of {tags[0]} … at line {start} ({width} columns)"
    wrong = [(i, n) for i, n in counts if n != width]
    if len(counts) > 1 and len(wrong) == len(counts) and len({n for _, n in counts}) == 1:
        return InputFileError(
            path, f"line {start}", f"every row has {counts[0][1]} values but {loop} names "
            f"{width} tags; is a tag missing or extra?"
        )  # fmt: skip
    one_per_line = len(wrong) <= len(counts) // 2
    if at_end and total % width and counts and (not one_per_line or wrong[0] == counts[-1]):
        return InputFileError(
            path,
            f"line {counts[-1][0]}",
            f"the file ends inside a row of {loop}, {total % width} of {width} values; "
            "the file looks truncated",
        )
    if wrong and one_per_line:
        return InputFileError(
            path,
            f"line {wrong[0][0]}",
            f"{wrong[0][1]} values in a row of {loop}; expected {width}",
        )
    return None


def _open_text_field(lines: list[str]) -> int | None:
    """1-based line of the ';' that opens a text field never closed."""
    opened = None
    for number, text in enumerate(lines, 1):
        if text.startswith(";"):
            opened = None if opened is not None else number
    return opened
