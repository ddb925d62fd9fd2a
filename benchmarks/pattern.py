"""``blochnet pattern`` at large N against one bare eigendecomposition of its matrix.

Runs, one after the other and each in its own subprocess with the same thread settings:

1. ``blochnet pattern`` (the command a user types: Python start, imports, beam selection,
   potentials, structure matrix, eigensolver, propagation, output as JSON);
2. a bare eigendecomposition: a process that imports nothing but torch, makes a random
   Hermitian matrix of the same size and dtype (complex128 unless the structure matrix is
   real) and calls ``torch.linalg.eigh`` on it once.

Prints the beam count, each side's wall time and peak resident set (``wait4``), the time of
the bare ``eigh`` call alone, and the ratios (the command against the bare process and
against the ``eigh`` call alone), all measured in this run.

    python benchmarks/pattern.py [--zone 1 1 0] [--g-max 4.5] [--sg-max 0.1]
                                 [--thickness 100 300 500] [--threads 2] [--out DIR]

The defaults select 2,041 beams of silicon along [110]; ``--sg-max 0.4`` selects 8,131
(a complex 8,131 × 8,131 matrix: about 1 GB, and several minutes per side on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_BARE = """
import json, sys, time
import torch
n, is_complex, seed = int(sys.argv[1]), sys.argv[2] == "complex", int(sys.argv[3])
torch.manual_seed(seed)
dtype = torch.complex128 if is_complex else torch.float64
x = torch.randn(n, n, dtype=dtype)
a = (x + x.mH) / 2
del x
start = time.perf_counter()
values, vectors = torch.linalg.eigh(a[None])
print(json.dumps({"eigh_s": time.perf_counter() - start}))
"""


def run_child(cmd: list[str], *, env: dict[str, str], stdout: Path) -> dict:
    """Run ``cmd`` with its output in ``stdout``; wall time and the child's maximum
    resident set (``wait4``)."""
    with stdout.open("w") as handle:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.PIPE, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed ({code}): {proc.stderr.read().decode()}")
    return {"wall_s": wall, "peak_gb": usage.ru_maxrss * 1024 / 1e9}


def matrix_is_complex() -> bool:
    """Whether blochnet's structure matrices of the bundled silicon are complex: its
    potential is real only for a crystal centrosymmetric about the origin."""
    from blochnet.examples import example_path
    from blochnet.io.cif import read_structure
    from blochnet.physics.crystal_model import CrystalModel

    model = CrystalModel(read_structure(example_path("silicon")), voltage=200e3)
    return not model.centrosymmetric_at_origin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zone", type=float, nargs=3, default=[1.0, 1.0, 0.0])
    parser.add_argument("--g-max", type=float, default=4.5)
    parser.add_argument("--sg-max", type=float, default=0.1)
    parser.add_argument("--thickness", type=float, nargs="+", default=[100.0, 300.0, 500.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="folder for pattern.json")
    args = parser.parse_args(argv)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out = args.out or Path(tempfile.mkdtemp(prefix="blochnet-pattern-"))
    out.mkdir(parents=True, exist_ok=True)
    zone = [f"{v:g}" for v in args.zone]
    command = [
        sys.executable, "-m", "blochnet", "pattern", "--example", "silicon", "--zone", *zone,
        "--thickness", *[f"{t:g}" for t in args.thickness], "--g-max", f"{args.g_max:g}",
        "--sg-max", f"{args.sg_max:g}", "--format", "json",
    ]  # fmt: skip
    blochnet = run_child(command, env=env, stdout=out / "pattern.json")
    n_beams = int(json.loads((out / "pattern.json").read_text())["n_beams"])
    is_complex = matrix_is_complex()
    kind = "complex" if is_complex else "real"
    bare = run_child(
        [sys.executable, "-c", _BARE, str(n_beams), kind, "0"], env=env, stdout=out / "bare.json"
    )
    bare |= json.loads((out / "bare.json").read_text())

    print(f"silicon [{' '.join(zone)}], |g| ≤ {args.g_max:g} Å⁻¹, |s_g| ≤ {args.sg_max:g} Å⁻¹: "
          f"{n_beams} beams, {kind} matrix, {args.threads} threads")  # fmt: skip
    print(f"{'':32}{'wall s':>10}{'peak GB':>10}")
    print(f"{'blochnet pattern (command)':32}{blochnet['wall_s']:10.2f}{blochnet['peak_gb']:10.3f}")
    print(f"{'bare eigh (process)':32}{bare['wall_s']:10.2f}{bare['peak_gb']:10.3f}")
    print(f"{'bare eigh (the call alone)':32}{bare['eigh_s']:10.2f}{'':>10}")
    print(f"ratio command / bare process: {blochnet['wall_s'] / bare['wall_s']:.2f} in time, "
          f"{blochnet['peak_gb'] / bare['peak_gb']:.2f} in peak memory; "
          f"command / the eigh call alone: {blochnet['wall_s'] / bare['eigh_s']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
