"""``blochnet refine``: joint refinement of structure, thickness model and frame orientations."""

from __future__ import annotations

import math
import os
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

_HELP = """Refine STRUCTURE against one or more 3D-ED data sets (.cif_pets).

Coordinates and ADPs (through the site-symmetry constraints), per-frame orientation
corrections and a thickness model per data set (default: a learned distribution of
thicknesses per frame, on a grid, predicted by a small network from the frame angle) are
fitted together by Adam through the Bloch-wave simulation, minimising a robust (Cauchy)
loss of the weighted intensity residuals (robust = 0 in the configuration: weighted
least squares) with the frame scales in closed form. Outputs in --out: config.json (the
resolved configuration), checkpoint.pt (every few epochs, and when Ctrl-C or SIGTERM
stops the run; --resume continues from it), report.json, refined.cif, observations.csv
(every compared observation with Io, σ and the scaled Ic), thickness.csv (every frame's
thickness distribution) and, with matplotlib installed, refinement.png (blochnet plot
DIR redraws it). --config FILE.toml sets anything of the configuration (unknown keys are
refused); --example quartz refines the bundled quartz data.
"""


def refine(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="STRUCTURE DATA",
            help="structure CIF, then one or more 3D-ED data files (.cif_pets)",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("refinement"),
    example: Annotated[str | None, typer.Option(help="bundled example (quartz)")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
    epochs: Annotated[int | None, typer.Option(help="number of epochs (overrides config)")] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            metavar="float64|float32|mixed",
            help="arithmetic: float64 (default), float32, or mixed (float32 epochs, float64 "
            "for the last ones and the s.u.); overrides config",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from DIR/checkpoint.pt")] = False,
    quiet: Annotated[bool, typer.Option(help="no per-epoch output")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    threads: Annotated[
        int, typer.Option(help="CPU threads per process (0: the cores shared among them)")
    ] = 0,
    workers: Annotated[
        int,
        typer.Option(
            help="processes on this machine, each solving its share of the frames (under "
            "torchrun: leave at 1, its WORLD_SIZE counts)"
        ),
    ] = 1,
) -> None:
    from blochnet.cli.runtime import prepare_compute
    from blochnet.cli.workers import check_gpus, launched_size, run_local
    from blochnet.errors import ConfigurationError
    from blochnet.examples import example_dataset_path, example_path

    settings = load_config(config, epochs=epochs, precision=precision)
    if example is not None:
        if files:
            raise ConfigurationError("give either --example or STRUCTURE and DATA files")
        files = [example_path(example), example_dataset_path(example)]
    if not files or len(files) < 2:
        raise ConfigurationError("need STRUCTURE.cif and at least one DATA.cif_pets")
    launched = launched_size()
    if workers < 1:
        raise ConfigurationError(f"--workers {workers}: expected 1 or more")
    if workers > 1 and launched > 1:
        raise ConfigurationError(
            f"--workers {workers} under a launcher that started {launched} processes "
            "(WORLD_SIZE): give one or the other"
        )
    job = (list(files), out, settings, device, resume, quiet)
    if workers > 1:
        prepare_compute(device)  # the device checked before any process starts
        if device == "cuda":
            check_gpus(workers)
        status = run_local(workers, run_process, job, threads=threads)
        if status:
            raise typer.Exit(status)
    elif launched > 1:
        rank = int(os.environ.get("RANK", "0"))
        run_process(*job, rank=rank, size=launched, address="env://", threads=threads)
    else:
        run_process(*job, rank=0, size=1, address="", threads=threads)


def run_process(
    files, out, settings, device, resume, quiet, *, rank: int, size: int, address: str,
    threads: int,
) -> None:  # fmt: skip
    """The refinement in one process: ``rank`` of ``size`` (joining the process group at
    ``address`` when there are several; :mod:`blochnet.cli.workers`)."""
    from blochnet.cli.runtime import prepare_compute
    from blochnet.cli.workers import output_of_rank, process_group
    from blochnet.experiment.sanity import check_beam_set, check_structure, check_thickness
    from blochnet.io.cif import read_structure
    from blochnet.io.output_folder import claim_output_folder
    from blochnet.io.pets import read_pets
    from blochnet.refinement.timings import Timings

    prepare_compute(device, threads)
    if rank > 0:  # rank 0 prints; the others see the same
        quiet = True
        warnings.simplefilter("ignore")
    group = process_group(device, rank=rank, size=size, address=address)
    with (
        group if size > 1 else nullcontext(),
        output_of_rank(out, rank, resume=resume) as folder,
        claim_output_folder(folder),
    ):
        timings = Timings(device=device)
        with timings.stage("read"):
            crystal = read_structure(files[0])
            datasets = [read_pets(path) for path in files[1:]]
        check_structure(crystal)
        check_beam_set(settings.simulation.g_max, datasets, "[simulation] g_max")
        if settings.thickness.t0 is not None:
            check_thickness(settings.thickness.t0, "[thickness] t0")
        _refine_and_print(
            crystal, datasets, folder, settings, timings, device=device, resume=resume,
            quiet=quiet, summary=rank == 0,
        )  # fmt: skip


def _refine_and_print(
    crystal, datasets, out, settings, timings, *, device, resume, quiet, summary=True
):
    from rich.console import Console

    from blochnet.refinement.pipeline import refine as run

    console = Console(stderr=True)
    say = None if quiet else console.print
    result = run(
        crystal,
        datasets,
        out,
        settings,
        device=device,
        resume=resume,
        report=None if quiet else lambda record: console.print(_epoch_line(record)),
        lm_report=None if quiet else lambda record: console.print(_lm_line(record)),
        setup_report=None if quiet else (lambda line: console.print(f"setup: {line}")),
        stage_report=say,
        timings=timings,
    )
    if summary:
        Console().print(_summary(result.report, out, settings, timings))


def _epoch_line(record) -> str:
    free = "" if math.isnan(record.r_free) else f"  R1 free {100 * record.r_free:6.2f} %"
    return (
        f"epoch {record.epoch:4d}  wR2 {100 * record.wr2:6.2f} %  "
        f"R1(obs) {100 * record.r_obs:6.2f} % pooled, "
        f"{100 * record.r_obs_frame_mean:6.2f} % frame mean{free}  ({record.seconds:.1f} s)"
    )


def _lm_line(record) -> str:
    state = "accepted" if record.accepted else "rejected"
    return (
        f"LM {record.iteration:3d}  Σw·Δ² {record.loss:.6g}  "
        f"max shift/s.u. {record.max_shift_su:.3g}  ({state})"
    )


def _summary(r: dict, out: Path, settings, timings) -> str:
    """The lines printed at the end: R values, the hand, timings, charges, the most
    disagreeable observations, merged R values and the files written."""
    from blochnet.io.cif_write import format_su

    hand = r["absolute_structure"] or {}
    absolute = ""
    if "inverse_of_refined" in hand:
        which = " (inverse of the file's structure)" if hand["inverted"] else ""
        inverse = hand["inverse_of_refined"]["r_obs_frame_mean"]
        absolute = (
            f"\nabsolute structure {hand['space_group'] or '?'}{which}; inverted, the refined "
            f"model gives R1(obs) {100 * inverse:.2f} % frame mean"
        )
    charged = [a for a in r["atoms"] if a["charge"] or a["charge_su"]]
    charges = "; ".join(
        f"{a['label']} {format_su(a['charge'], a['charge_su'], 3)}" for a in charged
    )
    listed = "; ".join(
        f"{' '.join(map(str, w['hkl']))} (frame {w['frame']}) {w['delta_over_sigma']:+.0f}σ"
        for w in r["most_disagreeable"][:5]
        if w["delta_over_sigma"] is not None
    )
    merged = r.get("merged") or {}
    test = r.get("convergence")
    converged = []
    if test:
        state = "converged" if test["converged"] else "not converged"
        converged = [
            f"{state}: max |shift|/s.u. {test['max_shift_su'][-1]:.3f} (limit "
            f"{test['limit']:g}) after {test['steps']} Gauss–Newton steps"
        ]
    files = ("report.json", "refined.cif", "reflections.csv", "reflections.fcf", "merged.csv",
             "difference_map.ccp4", "state.json", "observations.csv", "thickness.csv")  # fmt: skip
    written = ", ".join(
        f"{out}/{name}" for name in (*files, *([r["figure"]] if r["figure"] else []))
    )
    lines = [
        f"R1(obs) {100 * r['r_obs']:.2f} % pooled over {r['n_obs']} obs / "
        f"{100 * r['r_obs_frame_mean']:.2f} % frame mean; wR2 {100 * r['wr2']:.2f} %; "
        f"{r['n_parameters']} parameters; {r['wall_time_s']:.0f} s{absolute}",
        *converged,
        timings.summary(),
        *([f"partial charges (e): {charges}"] if charges else []),
        *([f"most disagreeable (Io − Ic)/σ: {listed}"] if listed else []),
        *(
            [
                f"merged (Laue class): R_int {100 * merged['r_int']:.2f} %, R1(obs) "
                f"{100 * merged['r1_obs']:.2f} % over {merged['n_unique']} unique"
            ]
            if merged.get("r_int") is not None
            else []
        ),  # fmt: skip
        f"open {out}/report.html; wrote {written}",
    ]
    if not r["figure"] and settings.plot:
        lines.append(
            "(no refinement.png: matplotlib is not installed; pip install matplotlib, "
            f"then blochnet plot {out})"
        )
    return "\n".join(lines)


def load_config(path: Path | None, *, epochs: int | None = None, precision: str | None = None):
    """The refinement configuration from a TOML file (defaults without one), with the
    command-line options that set its fields, all checked by the same rules."""
    from blochnet.cli.options import validated
    from blochnet.refinement.config import RefineConfig

    options = {"epochs": ("--epochs", epochs), "precision": ("--precision", precision)}
    return validated(RefineConfig, options, path=path)


def register(app: typer.Typer) -> None:
    """Add the ``refine`` subcommand to ``app``."""
    app.command("refine", help=_HELP)(refine)
