"""The picture of a refinement: ``thickness.csv`` and ``refinement.png``.

``thickness.csv`` lists every frame's refined thickness distribution as the samples and
weights the simulation uses (one row per frame and sample: data set, frame id, rotation
angle α, thickness [Å], weight; the weights of a frame sum to 1), whatever the thickness
model: one row per frame for a single thickness, the grid for ``neural-grid``, the
quantile nodes for ``neural``.

``refinement.png`` (with matplotlib, the ``plot`` extra) shows on one page what the tables
say: (a) the thickness distribution of every frame against the rotation angle, its mean
and mean ± width; (b) R1(obs) and the scale of each frame, held-out frames marked; (c) Io
against the scaled Ic of every observation (log axes, observed and unobserved apart), the
Fo²/Fc² plot of kinematical refinement; (d) wR2 and R1(obs) per epoch. It is drawn from
the three output files alone, so ``blochnet plot DIR`` can redraw it later.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from blochnet.errors import InputFileError
from blochnet.io.atomic import write_bytes_atomically, write_text_atomically

THICKNESS_COLUMNS = ("dataset", "frame", "alpha_deg", "thickness_A", "weight")
FIGURE = "refinement.png"


def thickness_table(objectives) -> dict[str, np.ndarray]:
    """Every frame's thickness samples and weights, as the rows of ``thickness.csv``."""
    parts = []
    for objective in objectives:
        frames = objective.simulator.dataset.frames
        with torch.no_grad():
            t, w = (x.detach().cpu().double().numpy() for x in objective.thickness())
        n_frames, n_samples = t.shape
        parts.append({
            "dataset": np.full(t.size, dataset_name(objective), dtype=object),
            "frame": np.repeat(frames.id, n_samples),
            "alpha_deg": np.repeat(frames.alpha, n_samples),
            "thickness_A": t.ravel(),
            "weight": w.ravel(),
        })  # fmt: skip
    return {key: np.concatenate([p[key] for p in parts]) for key in THICKNESS_COLUMNS}


def dataset_name(objective) -> str:
    """The name of an objective's data set in the output tables: its source file."""
    return str(objective.simulator.dataset.source or "data set")


def write_thickness_csv(table: dict[str, np.ndarray], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(THICKNESS_COLUMNS)
    for i in range(len(table["weight"])):
        writer.writerow([
            table["dataset"][i], int(table["frame"][i]), f"{table['alpha_deg'][i]:.4f}",
            f"{table['thickness_A'][i]:.6g}", f"{table['weight'][i]:.6g}",
        ])  # fmt: skip
    return write_text_atomically(path, buffer.getvalue())


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_directory(out: str | Path) -> Path:
    """Draw ``refinement.png`` in ``out`` from its ``report.json``, ``observations.csv``
    and ``thickness.csv``; return its path."""
    report, observations, thickness = read_refinement_folder(out)
    figure = draw_refinement(report, observations, thickness)
    return write_bytes_atomically(Path(out) / FIGURE, figure)


def read_refinement_folder(out: str | Path) -> tuple[dict, dict, dict]:
    """``report.json``, ``observations.csv`` and ``thickness.csv`` of a refinement folder,
    each refused with its file and place when damaged."""
    out = Path(out)
    files = {name: out / name for name in ("report.json", "observations.csv", "thickness.csv")}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise InputFileError(out, "", f"not a refinement folder: no {', '.join(missing)}")
    try:
        report = json.loads(files["report.json"].read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputFileError(
            files["report.json"], f"line {err.lineno}", f"not JSON: {err.msg}"
        ) from None
    observations = _read_csv(files["observations.csv"], {"i_obs", "i_calc", "sigma", "observed"})
    thickness = _read_csv(files["thickness.csv"], set(THICKNESS_COLUMNS))
    return report, observations, thickness


def _read_csv(path: Path, needed: set[str]) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise InputFileError(path, "header", f"expected column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    out = {}
    for key in reader.fieldnames:
        values = [r[key] for r in rows]
        if key == "dataset":  # a name, even when it looks like a number
            out[key] = np.array(values, dtype=object)
            continue
        try:
            out[key] = np.array(values, dtype=float)
        except ValueError:
            line = next(i for i, v in enumerate(values, start=2) if not _is_number(v))
            where = f"line {line}, column {key}"
            found = values[line - 2]
            raise InputFileError(path, where, f"expected a number, found {found!r}") from None
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def draw_refinement(report: dict, observations: dict, thickness: dict) -> bytes:
    """``refinement.png`` as bytes (see the module docstring)."""
    from matplotlib.figure import Figure  # the plot extra; no pyplot, no global state

    figure = Figure(figsize=(12, 8.5), layout="constrained")
    (a, b), (c, d) = figure.subplots(2, 2)
    x, x_label, boundaries = _frame_axis(report["frames"])
    _thickness_panel(a, report["frames"], thickness, x, x_label, boundaries)
    _frame_panel(b, report["frames"], x, x_label, boundaries)
    _observation_panel(c, observations)
    _history_panel(d, report.get("history", []))
    figure.suptitle(
        f"R1(obs) {_pc(report['r_obs'])} pooled, {_pc(report['r_obs_frame_mean'])} frame mean "
        f"over {report['n_obs']} observations; wR2 {_pc(report['wr2'])}, GoF "
        f"{_num(report['gof'])}; {report['n_parameters']} parameters; "
        f"{report['config']['thickness']['kind']} thickness"
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _frame_axis(frames: list[dict]) -> tuple[np.ndarray, str, list[float]]:
    """The x of every frame: its rotation angle for one data set, else the running frame
    number with the boundaries between data sets."""
    datasets = [f["dataset"] for f in frames]
    if len(set(datasets)) == 1 and all("alpha_deg" in f for f in frames):
        return np.array([f["alpha_deg"] for f in frames], float), "rotation angle α (°)", []
    starts = [i - 0.5 for i in range(1, len(frames)) if datasets[i] != datasets[i - 1]]
    return np.arange(len(frames), dtype=float), "frame (all data sets in turn)", starts


def _mark(ax, boundaries: list[float]) -> None:
    for position in boundaries:
        ax.axvline(position, color="0.5", lw=0.8, ls=":")


def _thickness_panel(ax, frames, table, x, x_label, boundaries) -> None:
    t, w = table["thickness_A"], table["weight"]
    keys = list(zip(table["dataset"], table["frame"].astype(int), strict=True))
    order = {(f["dataset"], int(f["id"])): i for i, f in enumerate(frames)}
    index = np.array([order.get(k, -1) for k in keys])
    known = index >= 0
    edges = _thickness_bins(t)
    bottom, top = float(edges[0]), float(edges[-1])
    density = np.zeros((len(edges) - 1, len(frames)))
    bins = np.clip(np.digitize(t[known], edges) - 1, 0, len(edges) - 2)
    np.add.at(density, (bins, index[known]), w[known])
    density /= np.maximum(density.max(axis=0, keepdims=True), 1e-300)
    ax.pcolormesh(_edges(x), edges, density, cmap="Greys", shading="flat", rasterized=True)
    mean = np.array([f["thickness_mean"] for f in frames])
    width = np.array([f["thickness_width"] for f in frames])
    ax.plot(x, mean, color="tab:red", lw=1.5, label="mean")
    ax.plot(x, mean - width, color="tab:red", lw=0.8, ls="--", label="mean ± width")
    ax.plot(x, mean + width, color="tab:red", lw=0.8, ls="--")
    _mark(ax, boundaries)
    ax.set(xlabel=x_label, ylabel="thickness (Å)", ylim=(bottom, top))
    ax.set_title("(a) thickness distribution per frame (grey: weight, each frame to its peak)",
                 fontsize=9)  # fmt: skip
    ax.legend(loc="best", fontsize=8)


def _thickness_bins(t: np.ndarray, n_bins: int = 60) -> np.ndarray:
    """Bin edges for the thickness samples ``t``: one bin per point of a grid every frame
    shares (``neural-grid``, a single thickness), else ``n_bins`` equal bins."""
    lo, hi = (float(t.min()), float(t.max())) if t.size else (0.0, 1.0)
    margin = 0.05 * (hi - lo) if hi > lo else 0.05 * max(hi, 1.0)
    points = np.unique(np.round(t, 6))
    if 1 < len(points) <= 2 * n_bins:
        return np.maximum(_edges(points), 0.0)
    if len(points) == 1:
        return np.array([max(0.0, lo - margin), hi + margin])
    return np.linspace(max(0.0, lo - margin), hi + margin, n_bins + 1)


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges around the frame positions ``x`` (increasing or decreasing)."""
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    middle = (x[1:] + x[:-1]) / 2
    return np.concatenate([[2 * x[0] - middle[0]], middle, [2 * x[-1] - middle[-1]]])


def _frame_panel(ax, frames, x, x_label, boundaries) -> None:
    r = np.array([np.nan if f["r1_obs"] is None else 100 * f["r1_obs"] for f in frames])
    held = np.array([bool(f.get("held_out", False)) for f in frames])
    ax.plot(x, r, color="tab:blue", lw=1, marker=".", ms=4, label="R1(obs) fitted")
    if held.any():
        ax.plot(x[held], r[held], ls="none", marker="o", mfc="none", color="tab:orange",
                label="held out")  # fmt: skip
    ax.set(xlabel=x_label, ylabel="R1(obs) per frame (%)")
    ax.set_ylim(bottom=0)
    scale_ax = ax.twinx()
    scale_ax.plot(x, [f["scale"] for f in frames], color="tab:green", lw=0.8, alpha=0.8)
    scale_ax.set_ylabel("scale k", color="tab:green")
    _mark(ax, boundaries)
    ax.set_title("(b) per frame: R1(obs) (blue) and scale (green)", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)


def _observation_panel(ax, table) -> None:
    i_obs, i_calc = table["i_obs"].astype(float), table["i_calc"].astype(float)
    observed = table["observed"].astype(float) > 0
    shown = (i_obs > 0) & (i_calc > 0)
    edge = 0
    if shown.any():
        values = np.concatenate([i_calc[shown], i_obs[shown]])
        # a few near-zero intensities would stretch the axes over decades of nothing:
        # the range starts at half the 0.5th percentile and those below sit on its edge
        lo, hi = 0.5 * np.percentile(values, 0.5), values.max()
        edge = int((shown & ((i_calc < lo) | (i_obs < lo))).sum())
        i_calc, i_obs = np.maximum(i_calc, lo), np.maximum(i_obs, lo)
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set(xlim=(lo / 1.5, hi * 1.5), ylim=(lo / 1.5, hi * 1.5))
    names = list(dict.fromkeys(table["dataset"])) if "dataset" in table else []
    groups = [(shown & ~observed, "0.65", "Io ≤ 3σ", 3)]
    if len(names) > 1:  # one colour per data set
        groups += [
            (shown & observed & (table["dataset"] == name), f"C{n}", f"{Path(name).name}", 4)
            for n, name in enumerate(names)
        ]
    else:
        groups.append((shown & observed, "tab:blue", "Io > 3σ", 4))
    for mask, colour, label, size in groups:
        ax.scatter(i_calc[mask], i_obs[mask], s=size, color=colour, alpha=0.5, lw=0,
                   label=f"{label} ({int(mask.sum())})", rasterized=True)  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="scaled Ic", ylabel="Io")
    hidden = int((~shown).sum())
    title = f"(c) Io against scaled Ic ({hidden} with Io ≤ 0 or Ic ≤ 0 not shown"
    title += f"; {edge} below the range on its edge)" if edge else ")"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)


def _history_panel(ax, history: list[dict]) -> None:
    epochs = [h["epoch"] for h in history]
    for key, label, style in (
        ("wr2", "wR2", "-"),
        ("r_obs", "R1(obs) pooled", "-"),
        ("r_obs_frame_mean", "R1(obs) frame mean", "--"),
        ("r_free", "R1(obs) held out", ":"),
    ):
        values = np.array([np.nan if h.get(key) is None else 100 * h[key] for h in history])
        if np.isfinite(values).any():
            ax.plot(epochs, values, ls=style, label=label)
    ax.set(xlabel="epoch", ylabel="%")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("(d) convergence (values at the start of each epoch)", fontsize=9)
    if history:
        ax.legend(fontsize=8)


def _pc(value) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _num(value) -> str:
    return "–" if value is None else f"{value:.2f}"
