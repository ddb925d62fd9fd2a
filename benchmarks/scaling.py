"""Cost of an optimisation step against the number of refined parameters: the gradient path
(one forward and one backward pass, what an Adam epoch costs) and the second-order path
(a Jacobian of the residuals, what a Gauss–Newton / Levenberg–Marquardt iteration and the
s.u. cost), in forward mode and in reverse mode, on the same data in one run.

    python benchmarks/scaling.py [--threads 1] [--precision float64]
                                 [--directions 3 15 30 60 120] [--out scaling.json]

The data are the bundled quartz (99 frames, default settings). Structure directions beyond the
15 refined shifts of quartz repeat them: a column costs the same whatever parameter it
belongs to, so the time per column is that of a structure with that many parameters.
The orientation of every frame (3 × frames parameters) costs three forward-mode
directions; in reverse mode it costs 3 × the number of frame colours (rows that share
no frame), see :mod:`blochnet.refinement.gauss_newton`.

Each measurement runs in a fresh subprocess so that its peak resident memory (VmHWM) is
its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _child(kind: str, n_directions: int, args) -> dict:
    import torch

    import blochnet
    from blochnet.examples import example_dataset_path, example_path
    from blochnet.experiment.frame_tangents import frame_jacobian
    from blochnet.experiment.prepared import prepare
    from blochnet.refinement.engine import parameter_groups
    from blochnet.refinement.gauss_newton import jacobian
    from blochnet.refinement.model import build_refinement
    from blochnet.refinement.uncertainty import residual_jacobian

    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.precision == "float64" else torch.float32
    crystal = blochnet.read_structure(example_path("quartz"))
    data = blochnet.read_pets(example_dataset_path("quartz"))
    config = blochnet.RefineConfig()
    prepared = prepare(crystal, data, config.simulation, dtype=dtype)
    model = build_refinement([prepared], config, starts=[900.0])
    parameter_groups(model, config.learning_rates.model_dump())
    objective = model.objectives[0]
    model.update_robust_scale(fresh=True)
    tick = time.perf_counter()
    if kind == "gradient":
        loss = model()
        loss.backward()
        columns = sum(p.numel() for p in model.parameters() if p.requires_grad)
    elif kind == "forward":
        structure = model.structure
        tangents = structure.atom_tangents()
        tangents = (tangents * (n_directions // len(tangents) + 1))[:n_directions]
        samples, weights = objective.thickness()
        with torch.no_grad():
            frame_jacobian(
                objective.simulator,
                structure.atoms(), tangents, samples, weights,
                rotations=objective.rotations().detach(), orientation=args.orientation,
            )  # fmt: skip
        columns = n_directions + (3 * data.n_frames if args.orientation else 0)
    elif kind == "reverse-orientation":
        _, jac, _ = jacobian(model)
        columns = jac.shape[1]
    else:  # reverse mode, n_directions structure columns (repeating the 15)
        active = [p for p in model.structure.shifts() if p.requires_grad and p.numel()]
        r, jac = residual_jacobian(lambda: objective.residuals(), active)
        per_column = (time.perf_counter() - tick) / jac.shape[1]
        columns = n_directions
        return {"seconds": per_column * n_directions, "columns": columns,
                "peak_gb": _peak_gb(), "measured_columns": jac.shape[1]}  # fmt: skip
    return {"seconds": time.perf_counter() - tick, "columns": columns, "peak_gb": _peak_gb()}


def _peak_gb() -> float | None:
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        return None
    return None


def _run(kind: str, n: int, args) -> dict:
    command = [sys.executable, __file__, "--child", kind, str(n), "--threads", str(args.threads),
               "--precision", args.precision]  # fmt: skip
    if args.orientation:
        command.append("--orientation")
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=["float64", "float32"], default="float64")
    parser.add_argument("--directions", type=int, nargs="+", default=[3, 15, 30, 60, 120])
    parser.add_argument("--orientation", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="scaling.json", help="record (and OUT.png, the plot)")
    parser.add_argument("--plot-only", metavar="JSON", help="draw the plot of a record")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args)))
        return
    if args.plot_only:
        with open(args.plot_only, encoding="utf-8") as handle:
            plot(json.load(handle), args.plot_only.removesuffix(".json") + ".png")
        return
    gradient = _run("gradient", 0, args)
    rows = []
    print(f"gradient step (forward + backward): {gradient['seconds']:.2f} s, "
          f"peak {gradient['peak_gb']:.2f} GB, {gradient['columns']} parameters")  # fmt: skip
    print(
        "| structure columns | forward mode s | reverse mode s | forward / gradient step "
        "| reverse / gradient step | peak GB forward / reverse |"
    )
    print("|---|---|---|---|---|---|")
    for n in args.directions:
        fwd, rev = _run("forward", n, args), _run("reverse", n, args)
        rows.append({"columns": n, "forward": fwd, "reverse": rev})
        print(f"| {n} | {fwd['seconds']:.2f} | {rev['seconds']:.2f} | "
              f"{fwd['seconds'] / gradient['seconds']:.2f} | "
              f"{rev['seconds'] / gradient['seconds']:.2f} | "
              f"{fwd['peak_gb']:.2f} / {rev['peak_gb']:.2f} |", flush=True)  # fmt: skip
    args.orientation = True
    turn_fwd = _run("forward", 0, args)
    turn_rev = _run("reverse-orientation", 0, args)
    print(f"every frame's orientation ({turn_fwd['columns']} columns): forward mode "
          f"{turn_fwd['seconds']:.2f} s; reverse mode with the structure "
          f"({turn_rev['columns']} columns) {turn_rev['seconds']:.2f} s")  # fmt: skip
    record = {"gradient": gradient, "rows": rows, "orientation_forward": turn_fwd,
              "orientation_and_structure_reverse": turn_rev, "threads": args.threads,
              "precision": args.precision}  # fmt: skip
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    plot(record, args.out.removesuffix(".json") + ".png")


def plot(record: dict, path: str) -> None:
    """Time of a Jacobian (forward and reverse mode) and of a gradient step against the
    number of structure columns, as a figure (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [row["columns"] for row in record["rows"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.plot(
        n,
        [row["forward"]["seconds"] for row in record["rows"]],
        "o-",
        label="Jacobian, forward mode",
    )
    ax.plot(
        n,
        [row["reverse"]["seconds"] for row in record["rows"]],
        "s--",
        label="Jacobian, reverse mode",
    )
    ax.axhline(record["gradient"]["seconds"], color="k", lw=1, label="gradient step (Adam epoch)")
    ax.set_xlabel("structure parameters (Jacobian columns)")
    ax.set_ylabel("seconds (1 thread)")
    ax.set_title("bundled quartz: one step of each path")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
