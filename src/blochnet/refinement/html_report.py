"""``report.html``: one self-contained page to read a refinement.

Built from the files of the output folder alone (``report.json``, ``refined.cif``,
``observations.csv``, ``thickness.csv``), so ``blochnet report DIR`` can rebuild it. The
figures are PNG embedded as data URIs and the style is inline: the page opens offline and
fetches nothing. Sections: the R values (pooled, per data set and merged, with R_int),
the figures (thickness distributions, per-frame R and scale, Io against Ic, convergence),
the thickness scan of the set-up (R1(obs) against one thickness for every frame, both
hands where the absolute structure was checked), the atoms with s.u., bond lengths and
angles, the difference-map peaks (table and plot), the most disagreeable observations and
the settings.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from blochnet.io.atomic import write_text_atomically
from blochnet.io.cif_write import format_su
from blochnet.refinement.figures import (
    draw_refinement,
    matplotlib_available,
    read_refinement_folder,
)

PAGE = "report.html"
_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.2em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.big{font-size:1.3em;font-weight:600}.note{color:#555;font-size:.9em}
img{max-width:100%;border:1px solid #eee}
"""


def write_html_report(out: str | Path, *, figure: bytes | None = None) -> Path:
    """Write ``report.html`` in the refinement folder ``out`` (module notes); ``figure``:
    the PNG of :func:`draw_refinement` for this folder where the caller has just drawn it
    (else it is drawn here, when matplotlib is there)."""
    out = Path(out)
    report, observations, thickness = read_refinement_folder(out)
    parts = [f"<h1>Dynamical refinement: {_e(_title(report, out))}</h1>"]
    parts += _summary(report)
    if figure is None and matplotlib_available():
        figure = draw_refinement(report, observations, thickness)
    if figure is not None:
        parts.append("<h2>Figures</h2>")
        parts.append(_img(figure, "refinement"))
        parts.append(
            "<p class=note>(a) thickness distribution of every frame against the rotation "
            "angle, with mean and mean ± width; (b) R1(obs) and scale per frame; (c) Io "
            "against the scaled Ic; (d) R values per epoch.</p>"
        )
    parts += _thickness_scan(report)
    parts += _atoms(report)
    parts += _geometry(out / "refined.cif")
    parts += _difference_map(report)
    parts += _disagreeable(report)
    parts.append("<h2>Settings</h2><details><summary>configuration (config.json)</summary>")
    parts.append(f"<pre>{_e(json.dumps(report.get('config', {}), indent=1))}</pre></details>")
    page = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(_title(report, out))}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    return write_text_atomically(out / PAGE, page)


def _title(report: dict, out: Path) -> str:
    names = sorted({frame["dataset"] for frame in report.get("frames", [])})
    return ", ".join(Path(n).name for n in names) or out.name


def _pc(value) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _summary(report: dict) -> list[str]:
    rows = [
        ("R1(obs), pooled", _pc(report["r_obs"])),
        ("R1(obs), frame mean", _pc(report["r_obs_frame_mean"])),
        ("R1(all)", _pc(report["r_all"])),
        ("wR2", _pc(report["wr2"])),
        ("GoF", "–" if report["gof"] is None else f"{report['gof']:.3f}"),
        ("observations (Io > 3σ) / compared", f"{report['n_obs']} / {report['n_reflections']}"),
        ("refined parameters", str(report["n_parameters"])),
    ]
    if report.get("r_free") is not None:
        rows.append(("R1(obs) of held-out frames", _pc(report["r_free"])))
    out = ["<h2>Figures of merit</h2>", _table(("", "value"), rows)]
    out.append(f"<p class=note>Compared: {_e(report['selection_rule'])}.</p>")
    datasets = report.get("datasets") or []
    if datasets:
        head = ("data set", "R1(obs)", "frame mean", "wR2", "n obs", "merged R1(obs)",
                "merged wR2", "R_int", "unique", "kinematical R1(obs)")  # fmt: skip
        rows = [
            (Path(d["name"]).name, _pc(d["r_obs"]), _pc(d["r_obs_frame_mean"]), _pc(d["wr2"]),
             str(d["n_obs"]), _pc(d["merged"]["r1_obs"]), _pc(d["merged"]["wr2"]),
             _pc(d["merged"]["r_int"]), str(d["merged"]["n_unique"]),
             _pc(d["merged"].get("kinematical", {}).get("r1_obs")))
            for d in datasets
        ]  # fmt: skip
        out += ["<h3>Per data set, frame-wise and merged</h3>", _table(head, rows)]
        rule = datasets[0]["merged"]["rule"]
        out.append(
            f"<p class=note>Merged as a kinematical program would: {_e(rule)}. Kinematical "
            "R1(obs): the merged data against |Fc|² of the refined model (one scale), what a "
            "kinematical program would report for it.</p>"
        )
    absolute = report.get("absolute_structure") or {}
    if absolute.get("inverse_of_refined"):
        inverse = absolute["inverse_of_refined"]
        out.append(
            f"<p>Absolute structure: R1(obs) {_pc(report['r_obs'])} as refined, "
            f"{_pc(inverse['r_obs'])} for the same model inverted.</p>"
        )
    return out


def _atoms(report: dict) -> list[str]:
    head = ("atom", "x", "y", "z", "Ueq/Uiso (Å²)", "occupancy", "charge (e)")
    rows = []
    for a in report["atoms"]:
        xyz = [format_su(v, s or None) for v, s in zip(a["xyz"], a["xyz_su"], strict=True)]
        rows.append((a["label"], *xyz, format_su(a["uiso"], a["uiso_su"] or None, 5),
                     format_su(a["occupancy"], a["occupancy_su"] or None, 3),
                     format_su(a["charge"], a["charge_su"] or None, 3)))  # fmt: skip
    return ["<h2>Atoms</h2>", _table(head, rows)]


def _geometry(path: Path) -> list[str]:
    if not path.is_file():
        return []
    from gemmi import cif

    block = cif.read(str(path)).sole_block()
    bonds = block.find("_geom_bond_", ["atom_site_label_1", "atom_site_label_2", "distance",
                                       "site_symmetry_2"])  # fmt: skip
    angles = block.find("_geom_angle", ["_atom_site_label_1", "_atom_site_label_2",
                                        "_atom_site_label_3", ""])  # fmt: skip
    out = ["<h2>Bond lengths and angles</h2>"]
    out.append(
        _table(("bond", "d (Å)", "symmetry"), [(f"{r[0]}–{r[1]}", r[2], r[3]) for r in bonds])
    )
    out.append(_table(("angle", "(°)"), [(f"{r[0]}–{r[1]}–{r[2]}", r[3]) for r in angles]))
    return out


def _difference_map(report: dict) -> list[str]:
    diff = report.get("difference_map")
    if not diff:
        return []
    out = ["<h2>Difference potential map</h2>"]
    out.append(
        f"<p>{_e(diff['file'])}: r.m.s. {diff['rms']:.3f} V, max {diff['max']:.3f} V, min "
        f"{diff['min']:.3f} V. <span class=note>{_e(diff['approximation'])}.</span></p>"
    )
    head = ("", "x", "y", "z", "height (r.m.s.)", "nearest atom", "distance (Å)")
    rows = [
        (f"{kind} {n}", *(f"{v:.4f}" for v in p["xyz"]), f"{p['height']:.2f}",
         p["nearest_atom"], f"{p['distance']:.2f}")
        for kind, key in (("peak", "peaks"), ("hole", "holes"))
        for n, p in enumerate(diff[key][:10], 1)
    ]  # fmt: skip
    out.append(_table(head, rows))
    if matplotlib_available():
        out.append(_img(_peaks_figure(diff), "difference peaks"))
    return out


def _thickness_scan(report: dict) -> list[str]:
    """The set-up's scans of one thickness for every frame (both hands where the absolute
    structure was checked), as R1(obs) against thickness."""
    scans = report.get("thickness_scan") or []
    if not scans or not matplotlib_available():
        return []
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3), layout="constrained")
    axes = figure.subplots()
    for scan in scans:
        label = f"{Path(scan['dataset']).name}, {scan['hand']}"
        r1 = [100 * r if r is not None else float("nan") for r in scan["r1_obs"]]
        (line,) = axes.plot(scan["thickness"], r1, marker=".", label=label)
        axes.axvline(scan["best"], color=line.get_color(), linestyle=":", linewidth=0.8)
    axes.set_xlabel("thickness (Å), one for every frame")
    axes.set_ylabel("R1(obs) pooled (%)")
    axes.set_title("thickness scan before refinement (dotted: the lowest R1(obs))")
    axes.legend(fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    note = (
        "<p class=note>The structure as given (and inverted, where the absolute structure "
        "was checked) at one thickness for every frame; the lowest R1(obs) starts the "
        "thickness model.</p>"
    )
    return ["<h2>Thickness scan</h2>", _img(buffer.getvalue(), "thickness scan"), note]


def _disagreeable(report: dict) -> list[str]:
    head = ("data set", "frame", "h k l", "Io", "Ic", "σ", "(Io−Ic)/σ")
    rows = [
        (Path(o["dataset"]).name, str(o["frame"]), " ".join(map(str, o["hkl"])),
         f"{o['i_obs']:.4g}", f"{o['i_calc']:.4g}", f"{o['sigma']:.3g}",
         "–" if o["delta_over_sigma"] is None else f"{o['delta_over_sigma']:.1f}")
        for o in report.get("most_disagreeable", [])
    ]  # fmt: skip
    return ["<h2>Most disagreeable observations</h2>", _table(head, rows)]


def _peaks_figure(diff: dict) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3), layout="constrained")
    axes = figure.subplots()
    peaks, holes = diff["peaks"], diff["holes"]
    axes.bar(range(1, len(peaks) + 1), [p["height"] for p in peaks], color="tab:green",
             label="peaks")  # fmt: skip
    axes.bar(range(1, len(holes) + 1), [p["height"] for p in holes], color="tab:red",
             label="holes")  # fmt: skip
    for level in (3, -3):
        axes.axhline(level, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlabel("rank")
    axes.set_ylabel("height (map r.m.s.)")
    axes.set_title("difference-map peaks and holes (±3 r.m.s. dashed)")
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


def _table(head, rows) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _e(text) -> str:
    return html.escape(str(text))
