"""Time per optimisation epoch against the number of processes (torch.distributed, frames
shared among them), on a zeolite-size synthetic data set, and each process's memory.

    python benchmarks/processes.py [--workers 1 2] [--threads 1] [--epochs 3]
                                   [--structure tests/data/structures/heu_framework.cif]
                                   [--data heu.cif_pets] [--n-tilts 5] [--out processes.json]

The data set (made once with ``blochnet simulate`` unless --data gives one, and kept beside
--out): the heulandite framework (C2/m, 2,055 Å³, 15 atoms), 126 frames over ±62.5° with
semi-angle 2°, rows to 1.15 Å⁻¹ (57,425 rows), thickness wedge 600–900 Å, frame scales
jittered by 10 %, simulated with the refinement's ``n_tilts``. The model: the structure
displaced by about 0.05 Å, the default thickness network and per-frame orientations,
refinement defaults but ``n_tilts`` (5; the default 41 would make the plans of this cell
~10 GB) and a fixed t0 (no set-up).

For each process count N: N fresh processes (``blochnet.cli.workers.run_local``, gloo on
loopback, ``--threads`` each), each prepares its share of the frames, builds the model and
runs ``--epochs`` Adam epochs; the first epoch is reported apart (it includes first-touch
costs), the others averaged. Printed: seconds per epoch, speed-up against the first count,
parallel efficiency (speed-up / (N / first N)), peak memory of every process, and that the
losses agree.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _job(args, *, rank: int, size: int, address: str, threads: int) -> None:
    """One process: prepare its share, build, time the epochs; rank 0 writes the record."""
    from contextlib import nullcontext

    import torch

    import blochnet
    from blochnet.cli.workers import process_group
    from blochnet.experiment import shards
    from blochnet.experiment.prepared import prepare
    from blochnet.refinement.engine import optimise_adam
    from blochnet.refinement.model import build_refinement
    from blochnet.refinement.timings import _peak_rss_gb

    torch.set_num_threads(threads)
    group = process_group("cpu", rank=rank, size=size, address=address)
    with group if size > 1 else nullcontext():
        config = blochnet.RefineConfig.model_validate(
            {"simulation": {"n_tilts": args.n_tilts}, "refine_charge": "none",
             "thickness": {"t0": 750.0}}
        )  # fmt: skip
        crystal = blochnet.read_structure(args.start)
        dataset = blochnet.read_pets(args.data)
        tick = time.perf_counter()
        prepared = prepare(crystal, dataset, config.simulation, processes=shards.current())
        prepare_s = time.perf_counter() - tick
        model = build_refinement([prepared], config)
        shards.same_everywhere(model)
        sum_w = float(((model.objectives[0].i_obs / model.objectives[0].weight_sigma) ** 2).sum())
        history = optimise_adam(
            model, epochs=args.epochs, learning_rates=config.learning_rates.model_dump(),
            sum_w_io2=sum_w, after_step=model.after_step, tolerance=0.0,
        )  # fmt: skip
        plan = prepared.plan
        record = {
            "rank": rank,
            "orientations": plan.n_orientations,
            "frames": None if plan.own_frames is None else len(plan.own_frames),
            "prepare_s": prepare_s,
            "epoch_s": [h.seconds for h in history],
            "loss": [h.loss for h in history],
            "peak_memory_gb": _peak_rss_gb(),
        }
        records = shards.gather_objects(record)
        if rank == 0:
            Path(args.record).write_text(json.dumps(records))


def _simulated(args) -> tuple[Path, Path]:
    """The synthetic data set and the displaced start (made once)."""
    import numpy as np

    import blochnet
    from blochnet.io.cif_write import write_structure
    from blochnet.lattice import direct_matrix
    from blochnet.sitesym import site_constraints

    folder = Path(args.out).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else folder / "heu-synthetic.cif_pets"
    if not data.exists():
        subprocess.run(
            [sys.executable, "-m", "blochnet", "simulate", str(args.structure), "--out",
             str(data), "--rotation", "-62.5", "62.5", "1", "--semi-angle", "2",
             "--resolution", "1.15", "--thickness-wedge", "600", "900", "0.2",
             "--scale-jitter", "0.1", "--seed", "5", "--n-tilts", str(args.n_tilts)],
            check=True,
        )  # fmt: skip
    truth = blochnet.read_structure(args.structure)
    start = copy.deepcopy(truth)
    rng = np.random.default_rng(11)
    to_fractional = np.linalg.inv(direct_matrix(start.cell))
    for atom, site in zip(start.atoms, site_constraints(truth), strict=True):
        shift = to_fractional @ rng.normal(0, 0.03, 3)  # ~0.05 Å, along the free directions
        p = site.xyz_basis
        atom.xyz = atom.xyz + p @ np.linalg.lstsq(p, shift, rcond=None)[0]
    return data, write_structure(start, folder / "heu-start.cif")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-tilts", type=int, default=5)
    parser.add_argument(
        "--structure", default=str(HERE.parent / "tests/data/structures/heu_framework.cif")
    )
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=str(HERE / "processes.json"))
    args = parser.parse_args()
    from blochnet.cli.workers import run_local

    data, start = _simulated(args)
    args.data, args.start = str(data), str(start)
    results = {}
    for n in args.workers:
        args.record = str(Path(args.out).with_suffix(f".{n}.tmp"))
        if n == 1:
            _job(args, rank=0, size=1, address="", threads=args.threads)
        elif run_local(n, _job, (args,), threads=args.threads):
            sys.exit(f"{n} processes failed")
        results[n] = json.loads(Path(args.record).read_text())
        Path(args.record).unlink()
    first = args.workers[0]
    base = _per_epoch(results[first])
    print(f"{'processes':>9} {'first epoch':>12} {'s/epoch':>8} {'speed-up':>9} "
          f"{'efficiency':>10}  peak memory per process [GB]")  # fmt: skip
    for n, records in results.items():
        per = _per_epoch(records)
        speedup = base / per
        memory = ", ".join(f"{r['peak_memory_gb']:.2f}" for r in records)
        print(f"{n:>9} {max(r['epoch_s'][0] for r in records):>12.1f} {per:>8.1f} "
              f"{speedup:>9.2f} {speedup / (n / first):>10.2f}  {memory}")  # fmt: skip
    losses = [results[n][0]["loss"] for n in results]
    spread = max(abs(a - b) / abs(b) for run in losses for a, b in zip(run, losses[0], strict=True))
    print(f"largest relative difference of the losses between process counts: {spread:.1e}")
    Path(args.out).write_text(json.dumps({str(n): r for n, r in results.items()}, indent=1))


def _per_epoch(records: list[dict]) -> float:
    """Seconds per epoch after the first (the slowest process's; they wait for it)."""
    times = [r["epoch_s"][1:] or r["epoch_s"] for r in records]
    return max(sum(t) / len(t) for t in times)


if __name__ == "__main__":
    main()
