"""The structure matrix built in place (no gradients wanted) equals the differentiable one."""

import numpy as np
import torch

from blochnet.physics.structure_matrix import BeamBatch, structure_matrix


def _batch_and_inputs():
    rng = np.random.default_rng(2)
    lists = [np.vstack([[0, 0, 0], rng.integers(-3, 4, (n, 3))]) for n in (5, 8, 3)]
    batch = BeamBatch.from_lists([np.unique(b, axis=0) for b in lists])
    n_ref = batch.differences.shape[0]
    potential = torch.complex(
        torch.as_tensor(rng.normal(size=n_ref)), torch.as_tensor(rng.normal(size=n_ref))
    )
    shape = batch.mask.shape
    excitation = torch.as_tensor(rng.normal(scale=0.01, size=shape))
    factor = torch.as_tensor(1 + rng.uniform(-0.1, 0.1, size=shape))
    return batch, potential, excitation, factor


def test_the_in_place_matrix_is_the_differentiable_one_exactly():
    batch, potential, excitation, factor = _batch_and_inputs()
    k = torch.tensor(39.9, dtype=torch.float64)
    for f in (None, factor):
        with torch.no_grad():
            fast = structure_matrix(batch, potential, excitation, k, f)
        slow = structure_matrix(batch, potential.requires_grad_(), excitation, k, f)
        potential = potential.detach()
        assert slow.requires_grad and not fast.requires_grad
        assert torch.equal(fast, slow.detach())
