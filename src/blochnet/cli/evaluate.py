"""``blochnet evaluate``: figures of merit of a structure against a 3D-ED data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from blochnet.experiment.config import SimulationConfig
from blochnet.io import strict_json

_DEFAULT = SimulationConfig()

_HELP = """Simulate every frame of DATA for STRUCTURE and print R1(obs), R1(all), wR2 and GoF.

With --thickness-scan TMIN TMAX N the frames are simulated at N thicknesses at once (one
eigendecomposition per orientation serves all of them) and R is printed against thickness,
overall and as the best thickness per frame. Frame scales are the least-squares optimum at
each thickness. Which observations are compared is one rule (printed with the results):
|g| ≤ --score-g-max and RSg = |s_g|/(|g|·Δ) ≤ --rsg-max; every excluded row is counted
with its reason. "pooled" R values sum over all frames; "frame mean" values average the
per-frame R.

Given a refinement's output folder instead (blochnet evaluate DIR), its saved end state
(state.json: the structure at full precision, every frame's thickness distribution,
orientation correction and scale) is simulated again and the R values printed beside the
ones the refinement reported; the data files are those the refinement read, or DATA.
"""


def evaluate(
    structure: Annotated[
        Path,
        typer.Argument(
            metavar="STRUCTURE",
            help="structure CIF, or a refinement's output folder",
            show_default=False,
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Argument(metavar="DATA", help="3D-ED data (.cif_pets)", show_default=False),
    ] = None,
    thickness: Annotated[float | None, typer.Option(help="one thickness [Å]")] = None,
    thickness_scan: Annotated[
        tuple[float, float, int] | None,
        typer.Option(help="TMIN TMAX N: scan N thicknesses [Å]", show_default=False),
    ] = None,
    rocking: Annotated[
        str, typer.Option(help="auto, frame or integrated (whole rocking curves per row)")
    ] = "auto",
    n_tilts: Annotated[
        int, typer.Option(help="orientations across each frame (frame mode)")
    ] = _DEFAULT.n_tilts,
    rocking_step: Annotated[
        float, typer.Option(help="rotation step for whole rocking curves [deg]")
    ] = _DEFAULT.rocking_step,
    g_max: Annotated[float, typer.Option(help="largest |g| of a beam [Å⁻¹]")] = _DEFAULT.g_max,
    sg_max: Annotated[float, typer.Option(help="largest |s_g| of a beam [Å⁻¹]")] = _DEFAULT.sg_max,
    score_g_max: Annotated[float, typer.Option(help="resolution limit for scoring [Å⁻¹]")] = 1.6,
    rsg_max: Annotated[
        float | None,
        typer.Option(help="largest RSg of a compared reflection (default 0.6 in frame mode)"),
    ] = None,
    absorption: Annotated[float, typer.Option(help="κ in U'_g = κ U_g")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    threads: Annotated[int, typer.Option(help="CPU threads (0: PyTorch's default)")] = 0,
) -> None:
    import numpy as np

    from blochnet.cli.options import validated
    from blochnet.cli.runtime import prepare_compute
    from blochnet.experiment.config import SimulationConfig
    from blochnet.experiment.evaluate import score_thicknesses
    from blochnet.experiment.prepared import prepare
    from blochnet.experiment.sanity import check_beam_set, check_structure, check_thickness
    from blochnet.io.cif import read_structure
    from blochnet.io.pets import read_pets

    if structure.is_dir():  # a finished refinement: its saved end state
        from blochnet.cli.evaluate_state import evaluate_directory

        return evaluate_directory(structure, data, as_json=as_json, device=device, threads=threads)
    if data is None:
        raise typer.BadParameter("give the data file (.cif_pets) after the structure")
    if (thickness is None) == (thickness_scan is None):
        raise typer.BadParameter("give exactly one of --thickness and --thickness-scan")
    prepare_compute(device, threads)
    grid = [thickness] if thickness is not None else np.linspace(*thickness_scan)
    options = {"g_max": g_max, "sg_max": sg_max, "rocking": rocking, "n_tilts": n_tilts}
    options |= {"rocking_step": rocking_step, "absorption": absorption}
    flags = {field: ("--" + field.replace("_", "-"), value) for field, value in options.items()}
    flags |= {"selection.g_max": ("--score-g-max", score_g_max)}
    flags |= {"selection.rsg_max": ("--rsg-max", rsg_max)}
    config = validated(SimulationConfig, flags)  # the rules of the configuration file
    check_thickness(grid, "--thickness" if thickness is not None else "--thickness-scan")
    dataset = read_pets(data)
    crystal = read_structure(structure)
    check_structure(crystal)
    check_beam_set(g_max, [dataset], "--g-max")
    prepared = prepare(crystal, dataset, config, device=device)
    simulator = prepared.simulator()
    err = Console(stderr=True)
    columns = (
        TextColumn("simulating frames"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} orientations"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("simulate", total=simulator.n_orientations)
        result = score_thicknesses(
            simulator, prepared.observations, grid, progress=lambda n: bar.advance(task, n)
        )
    if as_json:
        typer.echo(strict_json.dumps(result.to_dict(), indent=1))
        return
    _print(result, dataset, Console())


def _print(result, dataset, console: Console) -> None:
    counts = result.selection.counts()
    excluded = ", ".join(f"{n} {reason}" for reason, n in counts.items() if reason != "used")
    console.print(
        f"[bold]{dataset.source}[/]: {dataset.n_frames} frames, "
        f"{len(dataset.reflections)} observations"
    )
    console.print(
        f"compared: {counts['used']} observations ({result.selection.rule}); "
        f"excluded: {excluded or 'none'}"
    )
    if len(result.thickness) > 1:
        table = Table(title="thickness scan (frame scales optimal at each thickness)")
        for name in ("t (Å)", "R1(obs) pooled", "R1(obs) frame mean", "wR2", "n obs"):
            table.add_column(name, justify="right")
        for j, (t, m) in enumerate(zip(result.thickness, result.merit, strict=True)):
            mark = " ◀" if j == result.best else ""
            table.add_row(
                f"{t:.0f}{mark}",
                f"{100 * m.r1_obs:.2f} %",
                f"{100 * m.r1_obs_frame_mean:.2f} %",
                f"{100 * m.wr2:.2f} %",
                f"{m.n_obs}",
            )
        console.print(table)
        best = result.frame_best_thickness()
        best = best[best == best]  # frames with data
        if len(best):
            console.print(
                f"best thickness per frame (lowest frame R1(obs)): median "
                f"{sorted(best)[len(best) // 2]:.0f} Å, range {best.min():.0f}–"
                f"{best.max():.0f} Å"
            )
    console.print(f"\n[bold]at t = {result.best_thickness:.0f} Å[/] (lowest R1(obs)):")
    console.print(result.best_merit.summary())
    console.print(f"{result.n_orientations} orientations in {result.wall_time:.1f} s")


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` subcommand to ``app``."""
    app.command("evaluate", help=_HELP)(evaluate)
