"""``blochnet simulate``: a synthetic 3D-ED data set (``.cif_pets``) and its ground truth.

The command calls :func:`blochnet.experiment.synthetic.simulate_experiment` and
:func:`~blochnet.experiment.synthetic.write_synthetic`; everything here is turning options
into the library's settings and printing a summary. torch is imported only when it runs.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from blochnet.errors import ConfigurationError
from blochnet.experiment.config import SimulationConfig  # pydantic only, no torch

__all__ = ["register", "simulate"]

_HELP = """Simulate a 3D-ED data set (PETS2 .cif_pets) of STRUCTURE, with its ground truth.

Geometry: --like DATA.cif_pets copies the frames and hkl rows of a measured data set;
otherwise a continuous-rotation (or precession) scan is generated from --voltage,
--rotation START END STEP, --semi-angle, --resolution and --orientation (random with
--seed, or the 9 elements of U row by row; UB = U·B), with a row for every hkl that is
excited in a frame (RSg = |s_g|/(|g|·Δ) ≤ 1 at the frame centre).

Thickness: one value (--thickness), or a wedge (--thickness-wedge MEAN_START MEAN_END
SPREAD) whose mean goes from the first to the last frame (--thickness-law) and whose
relative spread is sampled with --samples points. Noise: counts = Poisson(dose × scale ×
I) + background noise, σ = sqrt(counts + background²) (at least 1); frame scales vary by
--scale-jitter (log-normal). The truth (structure, thickness per frame, scales, noise,
seed, settings) goes to OUT.truth.json beside OUT. Units: Å, Å⁻¹, degrees, kV.

Example: blochnet simulate quartz.cif --out synthetic.cif_pets --rotation -20 20 1
--resolution 1.2 --thickness-wedge 400 800 0.2 --seed 1
"""

_DEFAULT = {name: field.default for name, field in SimulationConfig.model_fields.items()}
Device = StrEnum("Device", ["cpu", "cuda"])
Geometry = StrEnum("Geometry", ["continuous-rotation", "precession"])
Law = StrEnum("Law", ["linear", "inverse-cosine"])
Distribution = StrEnum("Distribution", ["uniform", "gaussian"])
_FLAGS = {  # settings field -> option, for messages
    "rotation": "--rotation",
    "semi_angle": "--semi-angle",
    "resolution": "--resolution",
    "orientation": "--orientation",
    "voltage": "--voltage",
    "mean_start": "--thickness-wedge",
    "mean_end": "--thickness-wedge",
    "spread": "--thickness-wedge",
    "samples": "--samples",
    "value": "--thickness",
    "dose": "--dose",
    "background": "--background",
    "scale_jitter": "--scale-jitter",
    "n_tilts": "--n-tilts",
    "g_max": "--g-max",
    "sg_max": "--sg-max",
    "absorption": "--absorption",
}


def _opt(text: str, **kwargs) -> typer.Option:
    return typer.Option(help=text, show_default=kwargs.pop("show_default", True), **kwargs)


def simulate(
    structure: Annotated[
        Path, typer.Argument(metavar="STRUCTURE", help="CIF of the true structure.")
    ],
    out: Annotated[Path, _opt("Data file to write (.cif_pets).", show_default=False)],
    like: Annotated[Path | None, _opt("Copy frames and hkl rows of this .cif_pets.")] = None,
    voltage: Annotated[float | None, _opt("Voltage [kV] (default 200).")] = None,
    rotation: Annotated[
        tuple[float, float, float] | None,
        _opt("START END STEP of α [deg] (default -30 30 1).", show_default=False),
    ] = None,
    semi_angle: Annotated[float | None, _opt("Semi-angle [deg] (default STEP/2).")] = None,
    resolution: Annotated[float | None, _opt("Largest |g| of a row [Å⁻¹] (default 1).")] = None,
    orientation: Annotated[
        str | None, _opt("'random' or U11,U12,...,U33 (default random).")
    ] = None,
    geometry: Annotated[Geometry | None, _opt("Scan type (default continuous-rotation).")] = None,
    thickness: Annotated[float | None, _opt("One thickness [Å] (default 500).")] = None,
    thickness_wedge: Annotated[
        tuple[float, float, float] | None,
        _opt("MEAN_START MEAN_END SPREAD: wedge [Å], relative spread.", show_default=False),
    ] = None,
    thickness_law: Annotated[Law, _opt("How the wedge's mean follows α.")] = Law.linear,
    distribution: Annotated[
        Distribution, _opt("Thickness distribution in a frame.")
    ] = Distribution.uniform,
    samples: Annotated[int | None, _opt("Thickness samples per frame (wedge; 9).")] = None,
    dose: Annotated[float, _opt("Counts per incident beam.")] = 1e7,
    background: Annotated[float, _opt("σ of the background noise [counts].")] = 2.0,
    scale_jitter: Annotated[float, _opt("Relative spread of the frame scales.")] = 0.0,
    poisson: Annotated[bool, _opt("Poisson counting noise.")] = True,
    seed: Annotated[int, _opt("Seed of every random choice.")] = 0,
    n_tilts: Annotated[
        int | None, _opt(f"Orientations sampled across each frame (default {_DEFAULT['n_tilts']}).")
    ] = None,
    g_max: Annotated[
        float | None, _opt(f"Largest |g| of a beam [Å⁻¹] (default {_DEFAULT['g_max']:g}).")
    ] = None,
    sg_max: Annotated[
        float | None, _opt(f"Largest |s_g| of a beam [Å⁻¹] (default {_DEFAULT['sg_max']:g}).")
    ] = None,
    absorption: Annotated[float, _opt("κ in U'_g = κ U_g.")] = 0.0,
    device: Annotated[Device, _opt("Where to compute.")] = Device.cpu,
    threads: Annotated[int, _opt("CPU threads (0: PyTorch's default).")] = 0,
) -> None:

    from blochnet.cli.runtime import prepare_compute
    from blochnet.experiment import synthetic
    from blochnet.experiment.sanity import check_thickness, check_voltage
    from blochnet.io.cif import read_structure
    from blochnet.io.pets import read_pets

    scan = dict(voltage=voltage, rotation=rotation, semi_angle=semi_angle, resolution=resolution)
    scan |= dict(
        orientation=_orientation(orientation),
        geometry=geometry and geometry.value.replace("-", " "),
    )
    scan = {key: value for key, value in scan.items() if value is not None}
    if like is not None and scan:
        given = ", ".join(_FLAGS.get(key, "--geometry") for key in scan)
        raise ConfigurationError(f"--like copies the geometry; do not also give {given}")
    _check_output(out, like)
    if voltage is not None:
        check_voltage(voltage)
    if thickness is not None:
        check_thickness(thickness, "--thickness")
    prepare_compute(device.value, threads)
    noise = dict(dose=dose, background=background, scale_jitter=scale_jitter, poisson=poisson)
    noise = _settings(synthetic.NoiseModel, **noise)
    beams = dict(n_tilts=n_tilts, g_max=g_max, sg_max=sg_max)
    beams = {key: value for key, value in beams.items() if value is not None}
    config = _settings(SimulationConfig, absorption=absorption, **beams)
    model = _thickness(thickness, thickness_wedge, thickness_law, distribution, samples)
    generated = None if like is not None else _settings(synthetic.GeneratedGeometry, **scan)
    crystal = read_structure(structure)
    dataset = read_pets(like) if like is not None else None
    with _progress() as (bar, task):
        data, truth = synthetic.simulate_experiment(
            crystal,
            geometry_from=dataset,
            generated=generated,
            thickness=model,
            noise=noise,
            config=config,
            seed=seed,
            device=device.value,
            progress=lambda n, total: bar.update(task, advance=n, total=total),
        )
    written = synthetic.write_synthetic(data, truth, out)
    _print_summary(data, truth, written)


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` subcommand to ``app``."""
    app.command("simulate", help=_HELP)(simulate)


def _orientation(text: str | None):
    """'random', 9 numbers (U row by row, comma or space separated) or None."""
    if text is None or text.strip().lower() == "random":
        return None if text is None else "random"
    try:
        values = [float(v) for v in re.split(r"[,\s]+", text.strip())]
    except ValueError:
        values = []
    if len(values) != 9:
        raise ConfigurationError(f"--orientation: expected 'random' or 9 numbers, got {text!r}")
    return tuple(tuple(values[i : i + 3]) for i in (0, 3, 6))


def _settings(cls, **values):
    """``cls(**values)``, with validation errors reported by option name."""
    from blochnet.cli.options import validated

    flags = {
        name: (_FLAGS.get(name, "--" + name.replace("_", "-")), v) for name, v in values.items()
    }
    return validated(cls, flags)


def _thickness(value, wedge, law, distribution, samples):
    from blochnet.experiment import specimen

    if value is not None and wedge is not None:
        raise ConfigurationError("give --thickness or --thickness-wedge, not both")
    if wedge is None:
        if samples is not None:
            raise ConfigurationError("--samples needs --thickness-wedge")
        return _settings(specimen.ConstantThickness, value=500.0 if value is None else value)
    start, end, spread = wedge
    options = dict(law=law.value.replace("-", "_"), distribution=distribution.value)
    options |= {} if samples is None else {"samples": samples}
    return _settings(
        specimen.WedgeThickness, mean_start=start, mean_end=end, spread=spread, **options
    )


def _check_output(out: Path, like: Path | None) -> None:
    if out.is_dir():
        raise ConfigurationError(f"--out {out}: is a directory; give a file name")
    if not out.parent.is_dir():
        raise ConfigurationError(f"--out {out}: the folder {out.parent} does not exist")
    if like is not None and out.resolve() == like.resolve():
        raise ConfigurationError(f"--out {out}: would overwrite the --like data file")


class _progress:
    """Context manager: a rich progress bar on stderr over the simulated orientations."""

    def __enter__(self):
        columns = (
            TextColumn("simulating frames"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("orientations"),
            TimeElapsedColumn(),
        )
        self.bar = Progress(*columns, console=Console(stderr=True), transient=True)
        self.bar.__enter__()
        return self.bar, self.bar.add_task("simulate", total=None)

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


def _print_summary(data, truth: dict, written: list[Path]) -> None:
    import numpy as np

    refl, frames = data.reflections, truth["frames"]
    err = Console(stderr=True, highlight=False)
    for message in truth["warnings"]:
        err.print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)
    console = Console(highlight=False, markup=False)
    mean = np.asarray(frames["thickness_mean"])
    noise = truth["noise"]
    lines = [
        f"frames       {data.n_frames} (α {min(frames['alpha']):g} to {max(frames['alpha']):g}°)",
        f"rows         {len(refl)} ({len(np.unique(refl.hkl, axis=0))} unique hkl)",
        f"thickness    {mean.min():.1f} to {mean.max():.1f} Å (frame means), "
        f"{len(frames['thickness_samples'][0])} sample(s) per frame",
        f"intensities  mean I/σ {np.mean(refl.intensity / refl.sigma):.2f}, "
        f"{int(np.sum(refl.intensity < 0))} negative; dose {noise['dose']:g}, "
        f"background {noise['background']:g}, seed {truth['seed']}",
        *(f"{'wrote' if i == 0 else '':<12} {path}" for i, path in enumerate(written)),
    ]
    for line in lines:
        console.print(line, soft_wrap=True)
