"""Forward + backward cost of the Bloch solver against a bare batched eigendecomposition.

For N ≈ 50, 100, 200, 400 beams and 100 orientations of α-quartz (complex Hermitian
structure matrices, the N beams closest to the Ewald sphere within g_max = 3 Å⁻¹), prints
the time of ``bloch_intensities`` forward + backward at 20 thicknesses divided by the time
of ``torch.linalg.eigh`` on the same matrices, measured in this run. A second table compares
the padded and grouped layouts for orientations whose beam counts differ.

    python benchmarks/forward.py [--threads 1] [--orientations 100] [--sizes 50 100 200 400]
                                 [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from blochnet.examples import example_path
from blochnet.io.cif import read_structure
from blochnet.physics.beams import excitation_errors, reciprocal_lattice_points
from blochnet.physics.bloch import bloch_intensities
from blochnet.physics.crystal_model import CrystalModel
from blochnet.physics.structure_matrix import BeamBatch, group_by_size, structure_matrix
from blochnet.units import energy_to_wavelength

N_THICK = 20


def quartz_matrices(sizes: list[int], *, seed: int = 0, device="cpu"):
    """Structure matrices of quartz in random orientations with the given beam counts."""
    crystal = read_structure(example_path("quartz"))
    model = CrystalModel(crystal, voltage=200e3, device=device)
    k = 1 / energy_to_wavelength(200e3)
    hkl_all = torch.as_tensor(reciprocal_lattice_points(crystal.cell, 3.0), device=device)
    g_all = model.g_vectors(hkl_all)
    rng = np.random.default_rng(seed)
    beam_sets, excitations = [], []
    for n in sizes:
        direction = rng.normal(size=3)
        k_vec = torch.as_tensor(k * direction / np.linalg.norm(direction), device=device)
        s = excitation_errors(g_all, k_vec)
        order = torch.argsort(s.abs())[:n]  # (0 0 0) has s = 0 and comes first
        beam_sets.append(hkl_all[order].cpu().numpy())
        excitations.append(s[order])
    batch = BeamBatch.from_lists(beam_sets, device=device)
    exc = torch.zeros(batch.mask.shape, dtype=torch.float64, device=device)
    for i, s in enumerate(excitations):
        exc[i, : len(s)] = s
    u = model.potential(batch.differences, model.atom_tensors())
    return structure_matrix(batch, u, exc, k).detach(), batch


def best_time(fn, repeats: int, device) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def forward_backward(matrices: torch.Tensor, thickness: torch.Tensor, weights: torch.Tensor):
    a = matrices.clone().requires_grad_()
    intensity = bloch_intensities(a, thickness, math.pi / 39.87)
    (intensity * weights[: intensity.shape[0], :, : intensity.shape[2]]).sum().backward()
    return a.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--orientations", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    thickness = torch.linspace(100.0, 2000.0, N_THICK, dtype=torch.float64, device=device)
    print(
        f"device {device}, {torch.get_num_threads()} thread(s), {args.orientations} "
        f"orientations, {N_THICK} thicknesses, float64, quartz complex Hermitian matrices"
    )
    print(f"{'N':>5} {'eigh ms/matrix':>15} {'fwd+bwd ms/matrix':>18} {'ratio':>7}")
    for n in args.sizes:
        matrices, _ = quartz_matrices([n] * args.orientations, device=device)
        weights = torch.rand(args.orientations, N_THICK, n, dtype=torch.float64, device=device)
        t_eigh = best_time(lambda m=matrices: torch.linalg.eigh(m), args.repeats, device)
        t_ours = best_time(
            lambda m=matrices, w=weights: forward_backward(m, thickness, w), args.repeats, device
        )
        per = 1e3 / args.orientations
        print(f"{n:>5} {t_eigh * per:>15.3f} {t_ours * per:>18.3f} {t_ours / t_eigh:>7.2f}")

    print("\nvarying beam counts (100–260 beams, forward + backward):")
    rng = np.random.default_rng(1)
    sizes = [int(x) for x in rng.integers(100, 261, size=args.orientations)]
    matrices, batch = quartz_matrices(sizes, device=device)
    weights = torch.rand(
        args.orientations, N_THICK, matrices.shape[-1], dtype=torch.float64, device=device
    )
    t_pad = best_time(lambda: forward_backward(matrices, thickness, weights), args.repeats, device)
    groups = group_by_size(sizes, tolerance=0.1)

    def grouped():
        for group in groups:
            n = max(sizes[i] for i in group)
            forward_backward(matrices[group][:, :n, :n], thickness, weights[group])

    t_group = best_time(grouped, args.repeats, device)
    print(
        f"  padded to {matrices.shape[-1]}: {t_pad:.3f} s   grouped ({len(groups)} groups, "
        f"≤10 % padding): {t_group:.3f} s   padded/grouped = {t_pad / t_group:.2f}"
    )


if __name__ == "__main__":
    main()
