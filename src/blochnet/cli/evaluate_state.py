"""``blochnet evaluate DIR``: the R values of a finished refinement, simulated again from
its saved end state (:mod:`blochnet.refinement.end_state`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from blochnet.io import strict_json

_ROWS = (
    ("R1(obs) pooled", "r_obs"),
    ("R1(obs) frame mean", "r_obs_frame_mean"),
    ("R1(all)", "r_all"),
    ("wR2", "wr2"),
    ("GoF", "gof"),
)


def evaluate_directory(
    directory: Path, data: Path | None, *, as_json: bool, device: str, threads: int
) -> None:
    """Rescore the end state in ``directory`` against its data (or ``data``) and print it."""
    from blochnet.cli.runtime import prepare_compute
    from blochnet.io.pets import read_pets
    from blochnet.refinement.end_state import load_end_state, rescore

    prepare_compute(device, threads)
    state = load_end_state(directory)
    paths = [Path(d["source"]) for d in state["datasets"]] if data is None else [data]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise typer.BadParameter(f"data file not found: {', '.join(missing)}; give it as DATA")
    result = rescore(state, [read_pets(p) for p in paths], device=device)
    recorded = state["r_values"]
    if as_json:
        typer.echo(strict_json.dumps({"recorded": recorded, **result}, indent=1))
        return
    table = Table(title=f"{directory}: saved end state simulated again")
    for name in ("", "recorded", "now", "difference"):
        table.add_column(name, justify="right")
    now = result["pooled"]
    for label, key in _ROWS:
        before, after = recorded.get(key), now.get(key)
        if before is None or after is None:
            continue
        scale = 1 if key == "gof" else 100
        unit = "" if key == "gof" else " %"
        table.add_row(
            label, f"{scale * before:.4f}{unit}", f"{scale * after:.4f}{unit}",
            f"{after - before:.1e}",
        )  # fmt: skip
    Console().print(table)
