"""Reading and writing PETS2 .cif_pets files: the real files, round trips, bad files.

Bad files are built in ``tmp_path`` by editing the text of the real files
(the package's quartz example and ``tests/data``, see their READMEs for sources and
licences).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from blochnet.crystal import Cell
from blochnet.dataset import check_cell
from blochnet.errors import ConfigurationError, InputFileError
from blochnet.io.pets import read_pets
from blochnet.io.pets_write import write_pets
from conftest import dataset_path


def _path(name: str) -> Path:
    return dataset_path(name)


def _text(name: str) -> str:
    """The file's text with its own line endings (glycine has CRLF)."""
    return _path(name).read_bytes().decode("ascii")


def _lines(name: str) -> list[str]:
    return _text(name).splitlines(keepends=True)


def _write(tmp_path: Path, text: str | bytes, name: str = "mutated.cif_pets") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _line_of(lines: list[str], pattern: str) -> int:
    """0-based index of the first line matching ``pattern``."""
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


def _fails(path: Path, *fragments: str) -> InputFileError:
    with pytest.raises(InputFileError) as info:
        read_pets(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def assert_same_dataset(a, b) -> None:
    assert a.cell.parameters == pytest.approx(b.cell.parameters, abs=1e-9)
    assert a.cell.su == pytest.approx(b.cell.su)
    assert a.wavelength == pytest.approx(b.wavelength, rel=1e-9)
    assert a.voltage == pytest.approx(b.voltage, rel=1e-9)
    np.testing.assert_allclose(a.ub, b.ub, rtol=1e-9, atol=1e-12)
    for name in ("geometry", "details", "block", "mosaicity", "dstarmax"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.semi_angle == pytest.approx(b.semi_angle, abs=1e-6)
    assert a.rotation_axis_position == pytest.approx(b.rotation_axis_position, abs=1e-9)
    for name in ("id", "zone_axis", "semi_angle", "alpha", "beta", "omega", "scale"):
        np.testing.assert_allclose(getattr(a.frames, name), getattr(b.frames, name), atol=1e-6)
    np.testing.assert_array_equal(a.reflections.hkl, b.reflections.hkl)
    np.testing.assert_array_equal(a.reflections.frame_id, b.reflections.frame_id)
    for name in ("intensity", "sigma"):
        np.testing.assert_allclose(getattr(a.reflections, name), getattr(b.reflections, name))


# --- the real files ---------------------------------------------------------------------


def test_quartz_file_loads_with_all_frames_and_reflections():
    ds = read_pets(_path("quartz"))
    assert len(ds.frames) == 99 and len(ds.reflections) == 7952
    assert ds.geometry == "continuous rotation"
    assert ds.rotation_axis_position == 0.0
    assert ds.dstarmax is None and ds.mosaicity is None  # written as 0.000 = not set
    assert ds.semi_angle == 1.0
    assert ds.voltage == pytest.approx(200e3, rel=2e-3)
    assert ds.cell.gamma == 120.0
    assert (ds.reflections.intensity < 0).any()  # negative intensities are kept
    assert ds.reflections.hkl.dtype.kind == "i"
    assert ds.warnings == []


def test_glycine_file_loads_with_rotation_axis_scales_and_empty_frames():
    ds = read_pets(_path("glycine"))
    assert len(ds.frames) == 31 and len(ds.reflections) == 2986
    assert ds.rotation_axis_position == pytest.approx(230.391)
    assert ds.mosaicity == pytest.approx(0.21) and ds.dstarmax == pytest.approx(1.8)
    assert ds.semi_angle == pytest.approx(1.26)
    assert not np.allclose(ds.frames.scale, 1.0)
    assert ds.details["Virtual frame settings: number of merged frames"] == "7"
    assert ds.details["Virtual frame settings: step between frames"] == "5"
    empty = sorted(int(i) for i in set(ds.frames.id) - set(ds.reflections.frame_id))
    assert empty and any(str(empty) in w for w in ds.warnings)


def test_reflection_rows_remember_their_line_in_the_file():
    lines = _lines("quartz")
    ds = read_pets(_path("quartz"))
    first = _line_of(lines, r"^\s+-7\s+6\s+2\s") + 1
    assert ds.reflections.line[0] == first
    assert ds.reflections.line[-1] == first + 7951
    assert ds.frames.line[0] == _line_of(lines, r"^\s+1\s+0\.92726") + 1


@pytest.mark.parametrize("name", ["quartz", "glycine"])
def test_written_file_reads_back_as_the_same_dataset(tmp_path, name):
    ds = read_pets(_path(name))
    out = tmp_path / f"{name}.cif_pets"
    write_pets(ds, out)
    assert_same_dataset(read_pets(out), ds)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_writing_twice_overwrites_and_keeps_cell_uncertainties(tmp_path):
    text = _text("quartz").replace("_cell_length_a 4.92489", "_cell_length_a 4.92489(12)")
    ds = read_pets(_write(tmp_path, text))
    assert ds.cell.a == 4.92489 and ds.cell.su["a"] == pytest.approx(0.00012)
    out = tmp_path / "out.cif_pets"
    write_pets(ds, out)
    ds.frames.scale = ds.frames.scale * 2
    write_pets(ds, out)
    back = read_pets(out)
    assert_same_dataset(back, ds)
    assert "4.92489(12)" in out.read_text()


def test_changed_settings_are_written_over_stale_details(tmp_path):
    ds = read_pets(_path("glycine"))
    ds.rotation_axis_position, ds.dstarmax = 12.5, None
    out = tmp_path / "out.cif_pets"
    write_pets(ds, out)
    back = read_pets(out)
    assert back.rotation_axis_position == 12.5 and back.dstarmax is None
    assert back.details["rotation axis position"] == "12.5"


def test_crlf_line_endings_load_like_lf(tmp_path):
    lf = _text("quartz")
    crlf = read_pets(_write(tmp_path, lf.replace("\n", "\r\n"), "crlf.cif_pets"))
    assert_same_dataset(crlf, read_pets(_path("quartz")))
    glycine_lf = read_pets(_write(tmp_path, _text("glycine").replace("\r\n", "\n"), "lf.cif"))
    assert_same_dataset(glycine_lf, read_pets(_path("glycine")))


def test_renamed_block_and_extra_blocks_load(tmp_path):
    text = _text("quartz").replace("data_pets", "data_quartz_run1", 1)
    ds = read_pets(_write(tmp_path, text))
    assert ds.block == "quartz_run1"
    out = tmp_path / "out.cif_pets"
    write_pets(ds, out)
    assert read_pets(out).block == "quartz_run1"
    two = read_pets(_write(tmp_path, "data_global\n_journal_year 2024\n" + text, "two.cif"))
    assert two.block == "quartz_run1" and len(two.reflections) == 7952


def test_comment_lines_are_ignored_and_line_numbers_stay_right(tmp_path):
    lines = _lines("quartz")
    at = _line_of(lines, r"^_refln_zone_axis_id") + 1
    lines[at:at] = ["# integrated with DIALS\n"]
    lines.insert(1, "# PETS2 export\n")
    ds = read_pets(_write(tmp_path, "".join(lines)))
    assert ds.reflections.line[0] == at + 3  # two lines inserted above, 1-based
    assert len(ds.reflections) == 7952


def test_details_under_reduction_process_tag_are_read(tmp_path):
    text = _text("glycine").replace(
        "_diffrn_measurement_details", "_diffrn_reflns_reduction_process"
    )
    ds = read_pets(_write(tmp_path, text))
    assert ds.rotation_axis_position == pytest.approx(230.391)
    assert ds.mosaicity == pytest.approx(0.21)


def _without_details(text: str) -> str:
    return re.sub(r"_diffrn_measurement_details\r?\n;.*?\n;", "", text, flags=re.S)


def test_structured_tags_are_read_without_details(tmp_path):
    tags = (
        "_diffrn_measurement.rotation_axis_position 230.391\n"
        "_diffrn_measurement_data_collection_geometry precession\n"
        "_diffrn_measurement_dstarmax ?\n"
        "_diffrn_measurement_mosaicity 0.05\n"
    )
    text = _without_details(_text("glycine")).replace(
        "_diffrn_pets_omega", tags + "_diffrn_pets_omega"
    )
    ds = read_pets(_write(tmp_path, text))
    assert ds.details == {}
    assert ds.geometry == "precession"
    assert ds.rotation_axis_position == pytest.approx(230.391)
    assert ds.dstarmax is None and ds.mosaicity == pytest.approx(0.05)
    zero = read_pets(_write(tmp_path, text.replace("mosaicity 0.05", "mosaicity 0"), "z.cif"))
    assert zero.mosaicity is None


def test_structured_tag_wins_over_details_with_a_warning(tmp_path):
    text = _text("glycine").replace(
        "_diffrn_pets_omega", "_diffrn_measurement_rotation_axis_position 231.0\n_diffrn_pets_omega"
    )
    ds = read_pets(_write(tmp_path, text))
    assert ds.rotation_axis_position == 231.0
    assert any("_diffrn_measurement_rotation_axis_position" in w for w in ds.warnings)


def test_absent_details_and_pets_omega_give_defaults(tmp_path):
    text = re.sub(r"_diffrn_pets_omega.*?\n", "", _without_details(_text("quartz")))
    ds = read_pets(_write(tmp_path, text))
    assert ds.details == {} and ds.rotation_axis_position == 0.0
    assert ds.geometry == "continuous rotation" and ds.dstarmax is None
    assert any("geometry" in w for w in ds.warnings)


def test_missing_scale_column_and_unknown_scales_mean_one(tmp_path):
    lines = _lines("glycine")
    tag = _line_of(lines, "_diffrn_zone_axis_scale")
    del lines[tag]
    for i in range(tag, tag + 31):
        lines[i] = lines[i].rsplit(maxsplit=1)[0] + "\r\n"
    ds = read_pets(_write(tmp_path, "".join(lines)))
    assert np.all(ds.frames.scale == 1.0)
    text = re.sub(r"1\.077\r\n", "?\r\n", _text("glycine"))
    assert read_pets(_write(tmp_path, text, "q.cif")).frames.scale[1] == 1.0


# --- bad files ----------------------------------------------------------------------------


def test_truncated_files_name_the_line(tmp_path):
    text = _text("quartz")
    middle = text.index("\n", len(text) // 2) + 8  # inside a reflection row
    cut = text[:middle]
    last = cut.count("\n") + 1
    _fails(_write(tmp_path, cut, "a.cif"), f"line {last}: the file ends inside a row", "truncated")
    details = text.index("RC width")
    _fails(
        _write(tmp_path, text[:details], "b.cif"), "line 21: a text field opened here", "truncated?"
    )
    frames = text.index("\n  50 ") + 1  # a row boundary in the frame loop
    _fails(_write(tmp_path, text[:frames], "c.cif"), "no _refln_ loop", "_refln_intensity_sigma")
    ub = text.index("_diffrn_orient_matrix_UB_22")
    _fails(_write(tmp_path, text[:ub], "d.cif"), "_diffrn_orient_matrix_UB_22", "missing")


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ("_refln_intensity_sigma", "_refln_intensity_esd", ["line 143", "_refln_intensity_sigma"]),
        ("_diffrn_zone_axis_alpha", "_diffrn_zone_axis_tilt", ["line 33", "zone_axis_alpha"]),
        ("_refln_zone_axis_id", "_refln_frame", ["_refln_zone_axis_id", "_refln_frame"]),
        ("_cell_length_a 4.92489", "_cell_length_x 4.92489", ["_cell_length_a", "missing"]),
    ],
)
def test_missing_or_renamed_required_tag_is_named(tmp_path, old, new, fragments):
    _fails(_write(tmp_path, _text("quartz").replace(old, new)), *fragments)


def test_removed_column_is_a_syntax_error_with_a_line(tmp_path):
    text = _text("quartz").replace("_refln_intensity_sigma\n", "")
    _fails(_write(tmp_path, text), "line 143", "every row has 6 values", "names 5 tags")


@pytest.mark.parametrize(
    ("pattern", "replacement", "tag"),
    [
        (r"1137\.87", "n/a", "_refln_intensity_meas"),
        (r"1137\.87", "nan", "_refln_intensity_meas"),
        (r"56\.14", "inf", "_refln_intensity_sigma"),
        (r"56\.14", "0.00", "_refln_intensity_sigma"),
        (r"56\.14", "-3.5", "_refln_intensity_sigma"),
        (r"^(\s+)-5(\s+4\s+2\s+1137)", r"\g<1>-5.5\g<2>", "_refln_index_h"),
        (r"56\.14(\s+)1$", r"56.14\g<1>150", "_refln_zone_axis_id"),
    ],
)
def test_bad_reflection_value_names_its_line(tmp_path, pattern, replacement, tag):
    lines = _lines("quartz")
    row = _line_of(lines, r"^\s+-5\s+4\s+2\s+1137\.87")
    lines[row] = re.sub(pattern, replacement, lines[row].rstrip("\n")) + "\n"
    _fails(_write(tmp_path, "".join(lines)), f"line {row + 1}, {tag}")


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ("_cell_length_b 4.92489", "_cell_length_b abc", ["line 3", "expected a number"]),
        ("_diffrn_radiation_wavelength 0.02508", "_diffrn_radiation_wavelength ?", ["missing"]),
        ("_diffrn_radiation_wavelength 0.02508", "_diffrn_radiation_wavelength -1", ["line 9"]),
        ("_diffrn_orient_matrix_UB_11 0.06928", "_diffrn_orient_matrix_UB_11 NaN", ["line 10"]),
        ("_cell_angle_gamma 120.00000", "_cell_angle_gamma 200", ["_cell_angle_gamma"]),
        ("rotation axis position:  000.000", "rotation axis position: east", ["rotation axis"]),
        ("geometry: continuous rotation", "geometry: sideways", ["continuous rotation"]),
    ],
)
def test_bad_scalar_value_names_its_tag(tmp_path, old, new, fragments):
    text = _text("quartz")
    assert old in text
    _fails(_write(tmp_path, text.replace(old, new)), *fragments)


def test_singular_or_foreign_ub_is_rejected(tmp_path):
    text = _text("quartz")
    for i, j in ((3, 1), (3, 2), (3, 3)):
        row1 = re.search(rf"_diffrn_orient_matrix_UB_1{j} (\S+)", text).group(1)
        text = re.sub(rf"(_diffrn_orient_matrix_UB_{i}{j}) \S+", rf"\1 {row1}", text)
    _fails(_write(tmp_path, text, "singular.cif"), "_diffrn_orient_matrix_UB", "not invertible")
    transposed = _text("quartz")
    for i, j in ((1, 2), (1, 3), (2, 3)):
        a = re.search(rf"_diffrn_orient_matrix_UB_{i}{j} (\S+)", transposed).group(1)
        b = re.search(rf"_diffrn_orient_matrix_UB_{j}{i} (\S+)", transposed).group(1)
        transposed = transposed.replace(f"UB_{i}{j} {a}", f"UB_{i}{j} {b}")
        transposed = transposed.replace(f"UB_{j}{i} {b}", f"UB_{j}{i} {a}")
    _fails(_write(tmp_path, transposed, "t.cif"), "line 10", "does not fit the cell")


def test_duplicated_frame_id_is_rejected(tmp_path):
    lines = _lines("quartz")
    row = _line_of(lines, r"^\s+2\s+0\.90794")
    lines[row] = lines[row].replace("   2  0.90794", "   1  0.90794")
    _fails(_write(tmp_path, "".join(lines)), f"line {row + 1}", "frame id 1")


def test_bad_frame_values_name_their_line(tmp_path):
    lines = _lines("quartz")
    row = _line_of(lines, r"^\s+5\s+0\.85199")
    for old, new, tag in (("-45.000", "inf", "alpha"), ("1.000   -45", "-1.0   -45", "precession")):
        edited = [*lines]
        edited[row] = lines[row].replace(old, new)
        _fails(_write(tmp_path, "".join(edited)), f"line {row + 1}, _diffrn_zone_axis_{tag}")


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"", ["empty"]),
        (b"  \n\n\t\n", ["empty"]),
        (b"hello world\n", ["line 1", "data_"]),
        (bytes(range(256)) * 4, ["line 1", "control byte 0x00"]),
        (b"\x89PNG\r\n\x1a\n\x00\x00", ["control byte"]),
    ],
)
def test_empty_or_binary_files_are_rejected(tmp_path, content, fragments):
    _fails(_write(tmp_path, content), *fragments)


def test_wrong_encoding_names_the_line(tmp_path):
    lines = _lines("quartz")
    lines.insert(1, "# measured by J\xf6rg\n")
    data = "".join(lines).encode("latin-1")
    _fails(_write(tmp_path, data), "line 2", "not valid UTF-8")


def test_reading_a_directory_or_missing_file_is_an_input_error(tmp_path):
    _fails(tmp_path / "nope.cif_pets", "cannot read")
    with pytest.raises(InputFileError):
        read_pets(tmp_path)


# --- cells ---------------------------------------------------------------------------------


def test_check_cell_accepts_equal_warns_on_small_and_rejects_large_differences():
    cell = Cell(4.92489, 4.92489, 5.40137, 90, 90, 120)
    assert check_cell(cell, Cell(*cell.parameters)) is None
    warning = check_cell(cell, Cell(4.9134, 4.9134, 5.4052, 90, 90, 120))
    assert "4.9134" in warning and "4.92489" in warning
    with pytest.raises(ConfigurationError, match="5.4"):
        check_cell(cell, Cell(5.1, 4.92489, 5.40137, 90, 90, 120))
    with pytest.raises(ConfigurationError):
        check_cell(cell, Cell(4.92489, 4.92489, 5.40137, 90, 93, 120))
    assert check_cell(cell, Cell(5.0, 4.92489, 5.40137, 90, 90, 120), tolerance=0.05)
