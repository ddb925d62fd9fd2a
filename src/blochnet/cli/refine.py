"""``blochnet refine``: joint refinement of structure, thickness model and frame orientations."""

from __future__ import annotations

import math
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
    resume: Annotated[bool, typer.Option(help="continue from DIR/checkpoint.pt")] = False,
    quiet: Annotated[bool, typer.Option(help="no per-epoch output")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    threads: Annotated[int, typer.Option(help="CPU threads (0: PyTorch's default)")] = 0,
) -> None:
    from blochnet.cli.runtime import prepare_compute
    from blochnet.errors import ConfigurationError
    from blochnet.examples import example_dataset_path, example_path
    from blochnet.experiment.sanity import check_beam_set, check_structure, check_thickness
    from blochnet.io.cif import read_structure
    from blochnet.io.output_folder import claim_output_folder
    from blochnet.io.pets import read_pets
    from blochnet.refinement.timings import Timings

    settings = load_config(config, epochs=epochs)
    prepare_compute(device, threads)
    if example is not None:
        if files:
            raise ConfigurationError("give either --example or STRUCTURE and DATA files")
        files = [example_path(example), example_dataset_path(example)]
    if not files or len(files) < 2:
        raise ConfigurationError("need STRUCTURE.cif and at least one DATA.cif_pets")
    with claim_output_folder(out):
        timings = Timings(device=device)
        with timings.stage("read"):
            crystal = read_structure(files[0])
            datasets = [read_pets(path) for path in files[1:]]
        check_structure(crystal)
        check_beam_set(settings.simulation.g_max, datasets, "[simulation] g_max")
        if settings.thickness.t0 is not None:
            check_thickness(settings.thickness.t0, "[thickness] t0")
        _refine_and_print(
            crystal, datasets, out, settings, timings, device=device, resume=resume, quiet=quiet
        )


def _refine_and_print(crystal, datasets, out, settings, timings, *, device, resume, quiet):
    from rich.console import Console

    from blochnet.io.cif_write import format_su
    from blochnet.refinement.pipeline import refine as run

    console = Console(stderr=True)

    def report(record):
        if not quiet:
            free = "" if math.isnan(record.r_free) else f"  R1 free {100 * record.r_free:6.2f} %"
            console.print(
                f"epoch {record.epoch:4d}  wR2 {100 * record.wr2:6.2f} %  "
                f"R1(obs) {100 * record.r_obs:6.2f} % pooled, "
                f"{100 * record.r_obs_frame_mean:6.2f} % frame mean{free}  ({record.seconds:.1f} s)"
            )

    def lm_report(record):
        if not quiet:
            state = "accepted" if record.accepted else "rejected"
            console.print(
                f"LM {record.iteration:3d}  Σw·Δ² {record.loss:.6g}  "
                f"max shift/s.u. {record.max_shift_su:.3g}  ({state})"
            )

    result = run(
        crystal,
        datasets,
        out,
        settings,
        device=device,
        resume=resume,
        report=report,
        lm_report=lm_report,
        setup_report=None if quiet else (lambda line: console.print(f"setup: {line}")),
        stage_report=None if quiet else console.print,
        timings=timings,
    )
    r = result.report
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
    worst = r["most_disagreeable"][:5]
    listed = "; ".join(
        f"{' '.join(map(str, w['hkl']))} (frame {w['frame']}) {w['delta_over_sigma']:+.0f}σ"
        for w in worst
        if w["delta_over_sigma"] is not None
    )
    Console().print(
        f"R1(obs) {100 * r['r_obs']:.2f} % pooled over {r['n_obs']} obs / "
        f"{100 * r['r_obs_frame_mean']:.2f} % frame mean; wR2 {100 * r['wr2']:.2f} %; "
        f"{r['n_parameters']} parameters; {r['wall_time_s']:.0f} s{absolute}\n"
        + f"{timings.summary()}\n"
        + (f"partial charges (e): {charges}\n" if charges else "")
        + (f"most disagreeable (Io − Ic)/σ: {listed}\n" if listed else "")
        + (
            f"merged (Laue class): R_int {100 * merged['r_int']:.2f} %, R1(obs) "
            f"{100 * merged['r1_obs']:.2f} % over {merged['n_unique']} unique\n"
            if (merged := r.get("merged") or {}).get("r_int") is not None
            else ""
        )
        + f"open {out}/report.html; wrote {out}/report.json, {out}/refined.cif, "
        f"{out}/reflections.csv, {out}/reflections.fcf, {out}/merged.csv, "
        f"{out}/difference_map.ccp4, {out}/state.json, {out}/observations.csv, "
        f"{out}/thickness.csv"
        + (f", {out}/{r['figure']}" if r["figure"] else "")
        + (
            ""
            if r["figure"] or not settings.plot
            else "\n(no refinement.png: matplotlib is not installed; pip install matplotlib, "
            f"then blochnet plot {out})"
        )
    )


def load_config(path: Path | None, *, epochs: int | None = None):
    """The refinement configuration from a TOML file (defaults without one), with the
    command-line options that set its fields, all checked by the same rules."""
    from blochnet.cli.options import validated
    from blochnet.refinement.config import RefineConfig

    return validated(RefineConfig, {"epochs": ("--epochs", epochs)}, path=path)


def register(app: typer.Typer) -> None:
    """Add the ``refine`` subcommand to ``app``."""
    app.command("refine", help=_HELP)(refine)
