"""Figures of merit: R1, wR2, GoF and per-frame scales against independent numpy formulas."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from blochnet.experiment.merit import figures_of_merit, optimal_scales


def _tensors(*arrays, dtype=torch.float64):
    return [torch.as_tensor(np.asarray(a), dtype=dtype) for a in arrays]


@pytest.fixture
def small():
    """6 observations in 2 frames: one Io < 0, one 0 < Io < 3σ (frame 1, index 4)."""
    return {
        "io": np.array([100.0, 50.0, -4.0, 80.0, 5.0, 30.0]),
        "sigma": np.array([5.0, 4.0, 3.0, 6.0, 2.0, 3.0]),
        "ic": np.array([90.0, 55.0, 2.0, 70.0, 9.0, 36.0]),
        "frame": np.array([0, 0, 0, 1, 1, 1]),
        "ids": np.array([7, 12]),
    }


def _fom(d, **kwargs):
    io, sigma, ic = _tensors(d["io"], d["sigma"], d["ic"])
    frame = torch.as_tensor(d["frame"], dtype=torch.long)
    return figures_of_merit(io, sigma, ic, frame, d["ids"], **kwargs)


def test_perfect_agreement_gives_zero_for_every_r():
    rng = np.random.default_rng(1)
    io = rng.uniform(10, 100, 40)
    frame = rng.integers(0, 4, 40)
    fom = _fom({"io": io, "sigma": np.full(40, 2.0), "ic": io, "frame": frame, "ids": range(4)})
    values = [fom.r1_obs, fom.r1_all, fom.wr2, fom.gof, fom.r1_obs_frame_mean, fom.wr2_frame_mean]
    assert values == pytest.approx([0.0] * 6, abs=1e-12)
    assert np.allclose(fom.per_frame["r1_all"], 0) and np.allclose(fom.per_frame["scale"], 1)


def test_small_example_matches_the_formulas_computed_by_hand(small):
    io, s, ic, frame = small["io"], small["sigma"], small["ic"], small["frame"]
    fo, fc = np.sqrt(np.clip(io, 0, None)), np.sqrt(np.clip(ic, 0, None))
    w = 1 / s**2
    obs = io > 3 * s
    assert obs.tolist() == [True, True, False, True, False, True]

    def r1(mask):
        return np.abs(fo - fc)[mask].sum() / fo[mask].sum()

    def wr2(mask):
        return np.sqrt((w * (io - ic) ** 2)[mask].sum() / (w * io**2)[mask].sum())

    fom = _fom(small, n_parameters=2)
    every = np.ones(6, bool)
    assert fom.n_obs == 4 and fom.n_all == 6 and fom.n_parameters == 2
    assert fom.r1_obs == pytest.approx(r1(obs), rel=1e-12)
    assert fom.r1_all == pytest.approx(r1(every), rel=1e-12)
    assert fom.wr2 == pytest.approx(wr2(every), rel=1e-12)
    assert fom.gof == pytest.approx(np.sqrt((w * (io - ic) ** 2).sum() / (6 - 2)), rel=1e-12)
    per_r1_obs = [r1(obs & (frame == f)) for f in (0, 1)]
    per_wr2 = [wr2(frame == f) for f in (0, 1)]
    assert fom.per_frame["r1_obs"] == pytest.approx(per_r1_obs, rel=1e-12)
    assert fom.per_frame["r1_all"] == pytest.approx([r1(frame == f) for f in (0, 1)], rel=1e-12)
    assert fom.per_frame["wr2"] == pytest.approx(per_wr2, rel=1e-12)
    assert fom.r1_obs_frame_mean == pytest.approx(np.mean(per_r1_obs), rel=1e-12)
    assert fom.wr2_frame_mean == pytest.approx(np.mean(per_wr2), rel=1e-12)
    assert fom.per_frame["frame_id"].tolist() == [7, 12]
    assert fom.per_frame["n_obs"].tolist() == [2, 2]
    assert fom.per_frame["n_all"].tolist() == [3, 3]


def test_r_values_are_invariant_to_a_global_scale_of_ic_after_reoptimising_scales(small):
    io, sigma, ic = _tensors(small["io"], small["sigma"], small["ic"])
    frame = torch.as_tensor(small["frame"])

    def scaled_fom(c):
        k = optimal_scales(io, sigma, c * ic, frame, 2)
        return figures_of_merit(io, sigma, k[frame] * c * ic, frame, small["ids"])

    a, b = scaled_fom(1.0), scaled_fom(37.5)
    for name in ("r1_obs", "r1_all", "wr2", "gof", "r1_obs_frame_mean", "wr2_frame_mean"):
        assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-10)


def test_optimal_scales_equal_the_numpy_weighted_least_squares_minimiser():
    rng = np.random.default_rng(3)
    n, n_frames = 60, 5
    frame = rng.integers(0, n_frames, n)
    ic = rng.uniform(1, 50, n)
    sigma = rng.uniform(0.5, 3, n)
    io = rng.uniform(0.5, 2, n_frames)[frame] * ic + rng.normal(0, sigma)
    k = optimal_scales(*_tensors(io, sigma, ic), torch.as_tensor(frame), n_frames)
    k32 = optimal_scales(*_tensors(io, sigma, ic, dtype=torch.float32), torch.as_tensor(frame), 5)
    assert k32.dtype == torch.float32 and torch.allclose(k32.double(), k, rtol=1e-5)
    for f in range(n_frames):
        m = frame == f
        design = (ic[m] / sigma[m])[:, None]
        expected, *_ = np.linalg.lstsq(design, io[m] / sigma[m], rcond=None)
        assert k[f].item() == pytest.approx(expected[0], rel=1e-10)


def test_frames_without_reflections_give_zero_scale_and_no_nan(small):
    io, sigma, ic = _tensors(small["io"], small["sigma"], small["ic"])
    frame = torch.as_tensor(small["frame"]) * 2  # frames 0 and 2; 1 and 3 are empty
    ic = ic.clone().requires_grad_(True)
    k = optimal_scales(io, sigma, ic, frame, 4)
    assert torch.isfinite(k).all() and k[1] == 0 and k[3] == 0
    k.sum().backward()
    assert torch.isfinite(ic.grad).all()
    zero = optimal_scales(io, sigma, torch.zeros_like(ic), frame, 4)
    assert torch.equal(zero, torch.zeros(4, dtype=zero.dtype))

    fom = figures_of_merit(io, sigma, k[frame] * ic, frame, [1, 2, 3, 4], scales=k)
    assert fom.per_frame["scale"][[0, 2]] == pytest.approx(k[[0, 2]].tolist(), rel=1e-12)
    pooled = [fom.r1_obs, fom.r1_all, fom.wr2, fom.gof, fom.r1_obs_frame_mean, fom.wr2_frame_mean]
    assert np.isfinite(pooled).all()
    assert fom.per_frame["n_all"].tolist() == [3, 0, 3, 0]
    for key in ("r1_obs", "r1_all", "wr2", "scale"):
        assert np.isnan(fom.per_frame[key][[1, 3]]).all()
        assert np.isfinite(fom.per_frame[key][[0, 2]]).all()


def test_the_weighted_residual_with_optimal_scales_passes_gradcheck(small):
    io, sigma, ic = _tensors(small["io"], small["sigma"], small["ic"])
    frame = torch.as_tensor(small["frame"])

    def objective(i_calc):  # Σ w (Io − k Ic)², w = 1/σ², the scales profiled out
        k = optimal_scales(io, sigma, i_calc, frame, 2)
        return torch.sum((io - k[frame] * i_calc) ** 2 / sigma**2)

    assert torch.autograd.gradcheck(objective, (ic.clone().requires_grad_(True),))


def test_gof_is_one_on_average_for_gaussian_noise_with_the_right_sigma():
    rng = np.random.default_rng(20240611)
    n, n_frames = 200_000, 50
    frame = rng.integers(0, n_frames, n)
    ic = rng.uniform(1, 500, n)
    sigma = 0.5 + 0.05 * ic
    io = ic + rng.normal(0, sigma)
    fom = figures_of_merit(
        *_tensors(io, sigma, ic), torch.as_tensor(frame), np.arange(n_frames), n_parameters=10
    )
    assert fom.gof == pytest.approx(1.0, rel=0.03)


def test_gof_is_inf_not_nan_without_degrees_of_freedom(small):
    assert _fom(small, n_parameters=6).gof == float("inf")


def test_summary_mentions_the_counts_and_the_convention(small):
    text = _fom(small, n_parameters=2).summary()
    assert "pooled over 4 obs (I > 3σ)" in text
    assert "pooled over 6 reflections (all)" in text
    assert "mean of 2 frames" in text
    assert "2 parameters" in text
    assert all(
        line.count("%") == line.count("pooled") + line.count("mean of")
        for line in text.splitlines()
    )


def test_to_dict_is_strict_json(small):
    small = {**small, "frame": np.array([0, 0, 0, 2, 2, 2]), "ids": np.array([7, 8, 12])}
    d = _fom(small, n_parameters=6).to_dict()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back["n_obs"] == 4 and back["gof"] is None
    assert back["per_frame"]["frame_id"] == [7, 8, 12]
    assert back["per_frame"]["wr2"][1] is None
