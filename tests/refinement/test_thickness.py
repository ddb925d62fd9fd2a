"""Thickness models: the (samples, weights) interface, starting values, and fits."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import pydantic
import pytest
import torch

from blochnet.errors import ConfigurationError
from blochnet.refinement.networks import LearnedFrameComponent, mlp, normalised_angles
from blochnet.refinement.thickness import (
    FrameThickness,
    GlobalThickness,
    NeuralGaussianThickness,
    NeuralGridThickness,
    ProfileThickness,
    ThicknessConfig,
    ThicknessModel,
    make_thickness_model,
)

ANGLES = np.linspace(-60.0, 60.0, 121)
T0 = 600.0
KINDS = ["global", "frame", "profile", "neural", "neural-grid"]
SAMPLES = {"global": 1, "frame": 1, "profile": 1, "neural": 40, "neural-grid": 48}


@pytest.fixture
def one_thread():
    """Tiny networks train fastest (and time reliably) on one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(kind: str, **options) -> ThicknessModel:
    return make_thickness_model(kind, angles_deg=ANGLES, t0=T0, **options)


def directions() -> np.ndarray:
    a = np.radians(ANGLES)
    return np.stack([np.sin(a), np.zeros_like(a), np.cos(a)], axis=1)


@pytest.mark.parametrize("kind", KINDS)
def test_samples_and_weights_have_shape_frame_by_sample_and_weights_sum_to_one(kind):
    samples, weights = build(kind)()
    assert samples.shape == weights.shape == (len(ANGLES), SAMPLES[kind])
    assert samples.dtype == weights.dtype == torch.float64
    assert torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(ANGLES), dtype=torch.float64))


@pytest.mark.parametrize("kind", KINDS)
def test_thickness_stays_positive_for_extreme_parameters(kind):
    model = build(kind)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-50.0)
    samples, weights = model()
    assert torch.all(samples > 0) and torch.all(torch.isfinite(weights))


@pytest.mark.parametrize("kind", KINDS)
def test_initial_mean_is_t0_within_two_percent_for_every_frame(kind):
    summary = build(kind).summary()
    assert set(summary) == {"mean", "width"}
    assert summary["mean"].shape == summary["width"].shape == (len(ANGLES),)
    np.testing.assert_allclose(summary["mean"], T0, rtol=0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_is_deterministic_and_the_same_seed_gives_the_same_model(kind):
    model = build(kind)
    first, second = model(), model()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    twin = build(kind)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True)
    )


def test_different_seeds_draw_different_fixed_noise():
    a = NeuralGaussianThickness(ANGLES, t0=T0, seed=0, nodes="random")
    b = NeuralGaussianThickness(ANGLES, t0=T0, seed=1, nodes="random")
    assert not torch.equal(a.eps, b.eps)
    assert not torch.equal(a.network[0].weight, b.network[0].weight)


def test_quantile_nodes_are_the_standardised_normal_quantiles():
    model = NeuralGaussianThickness(ANGLES, t0=T0, n_samples=50)
    u = (np.arange(50) + 0.5) / 50
    expected = statistics.NormalDist().inv_cdf
    z = np.array([expected(x) for x in u])
    np.testing.assert_allclose(model.eps.numpy(), z / z.std(), rtol=1e-12)
    np.testing.assert_allclose(
        model.flat.numpy(), np.linspace(-1, 1, 50) / np.linspace(-1, 1, 50).std()
    )


def _flexible(lam: float, **kwargs) -> NeuralGaussianThickness:
    model = NeuralGaussianThickness(ANGLES, t0=T0, width0=60.0, shape="flexible", **kwargs)
    with torch.no_grad():
        model.prior[:, 2] = math.log(lam / (1 - lam))
    return model


@pytest.mark.parametrize("lam", [1e-9, 0.3, 1 - 1e-9])
def test_flexible_shape_keeps_mean_and_width_and_spans_gaussian_to_uniform(lam):
    model = _flexible(lam, n_samples=30)
    samples, weights = model()
    summary = model.summary()
    np.testing.assert_allclose(summary["mean"], T0, rtol=2e-3)
    np.testing.assert_allclose(summary["width"], 60.0, rtol=5e-3)
    np.testing.assert_allclose(summary["flatness"], lam, atol=2e-3)
    gaussian = NeuralGaussianThickness(ANGLES, t0=T0, width0=60.0, n_samples=30)()[0]
    steps = torch.diff(samples, dim=-1)
    if lam < 1e-6:  # the Gaussian's nodes
        torch.testing.assert_close(samples, gaussian, rtol=1e-6, atol=0)
    elif lam > 1 - 1e-6:  # evenly spaced: the uniform distribution
        torch.testing.assert_close(steps, steps[:, :1].expand_as(steps), rtol=1e-4, atol=0)
        assert torch.all(
            samples.amax(-1) - samples.amin(-1) < gaussian.amax(-1) - gaussian.amin(-1)
        )
    else:
        assert torch.all(steps > 0)


def test_flexible_shape_learns_a_flat_distribution():
    """Matched quantile by quantile to uniform distributions, λ goes to the uniform end and
    the misfit is a small fraction of the best Gaussian's."""
    u = (torch.arange(20, dtype=torch.float64) + 0.5) / 20
    target = torch.full((len(ANGLES), 1), T0) * (1 + 0.3 * (2 * u - 1))  # flat, ±30 %

    def fit(model) -> float:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            optimizer.zero_grad()
            loss = ((model()[0] - target) ** 2).mean()
            loss.backward()
            optimizer.step()
        return loss.item()

    flexible = _flexible(0.5, n_samples=20)
    misfit = fit(flexible)
    gaussian = fit(NeuralGaussianThickness(ANGLES, t0=T0, width0=60.0, n_samples=20))
    assert flexible.summary()["flatness"].min() > 0.9
    assert misfit < 0.1 * gaussian, (misfit, gaussian)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter_and_are_finite(kind):
    model = build(kind)
    samples, weights = model()
    target = torch.as_tensor(np.linspace(500.0, 700.0, len(ANGLES)))
    mean = (weights * samples).sum(-1)
    loss = (mean - target).pow(2).mean() + (weights * (samples - mean[:, None]) ** 2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.all(torch.isfinite(p.grad)), name
        assert torch.any(p.grad != 0), name


def test_zero_width_models_report_zero_width_with_a_finite_derivative():
    model = FrameThickness(len(ANGLES), T0)
    mean, width = model.moments()
    (mean.sum() + width.sum()).backward()
    assert torch.all(width == 0) and torch.all(torch.isfinite(model.log_ratio.grad))


@pytest.mark.parametrize("kind", KINDS)
def test_models_convert_to_float32(kind):
    model = build(kind).to(torch.float32)
    samples, weights = model()
    assert samples.dtype == weights.dtype == torch.float32
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(ANGLES)))
    np.testing.assert_allclose(model.summary()["mean"], T0, rtol=0.02)


def test_summary_of_the_neural_gaussian_is_its_mean_and_width():
    model = NeuralGaussianThickness(ANGLES, t0=T0, width0=40.0)
    mu, sigma, _ = model.parameters_per_frame()
    summary = model.summary()
    np.testing.assert_allclose(summary["mean"], mu.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(summary["width"], sigma.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(summary["width"], 40.0, rtol=5e-3)


def test_default_width_of_the_neural_gaussian_is_five_percent_of_t0():
    np.testing.assert_allclose(build("neural").summary()["width"], 0.05 * T0, rtol=5e-3)


def test_neural_gaussian_fits_a_linear_wedge_within_three_percent_in_under_two_seconds(one_thread):
    model = NeuralGaussianThickness(ANGLES, t0=T0, t_range=(300.0, 1100.0))
    target = torch.as_tensor(np.linspace(400.0, 800.0, len(ANGLES)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = time.process_time()  # CPU time: other processes' load does not count
    for _ in range(100):
        optimizer.zero_grad()
        mean, _ = model.moments()
        loss = ((mean - target) / T0).pow(2).mean()
        loss.backward()
        optimizer.step()
    elapsed = time.process_time() - start
    np.testing.assert_allclose(model.summary()["mean"], target.numpy(), rtol=0.03)
    assert elapsed < 2.0


def fit_grid_weights(model: NeuralGridThickness, target: torch.Tensor, steps: int) -> None:
    """Minimise KL(target ‖ weights) summed over the grid, averaged over frames."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    log_target = torch.log(target.clamp_min(1e-300))
    for _ in range(steps):
        optimizer.zero_grad()
        _, weights = model()
        loss = (target * (log_target - torch.log(weights))).sum(-1).mean()
        loss.backward()
        optimizer.step()


def test_grid_model_represents_a_flat_distribution_between_500_and_700(one_thread):
    model = NeuralGridThickness(ANGLES, t0=T0, grid=(300.0, 1100.0, 48))
    grid = model.grid.numpy()
    inside = (grid >= 500) & (grid <= 700)
    target = torch.as_tensor(inside / inside.sum()).expand(len(ANGLES), -1)
    fit_grid_weights(model, target, steps=200)
    summary = model.summary()
    np.testing.assert_allclose(summary["mean"], grid[inside].mean(), atol=2.0)
    np.testing.assert_allclose(summary["width"], grid[inside].std(), rtol=0.03)
    np.testing.assert_allclose(summary["width"], 200 / np.sqrt(12), rtol=0.05)


def test_grid_model_represents_two_populations_that_change_with_angle(one_thread):
    model = NeuralGridThickness(ANGLES, t0=T0, grid=(300.0, 1100.0, 48))
    grid = model.grid.numpy()
    share = np.linspace(0.2, 0.8, len(ANGLES))[:, None]  # of the thick population
    target = (1 - share) * np.exp(-0.5 * ((grid - 450) / 30) ** 2) + share * np.exp(
        -0.5 * ((grid - 850) / 30) ** 2
    )
    target = torch.as_tensor(target / target.sum(1, keepdims=True))
    fit_grid_weights(model, target, steps=300)
    expected = (target * model.grid).sum(-1).numpy()
    np.testing.assert_allclose(model.summary()["mean"], expected, rtol=0.02)


def test_beam_directions_become_three_more_network_inputs():
    model = build("neural", directions=directions())
    assert model.n_features == 4 and model.network[0].in_features == 4
    np.testing.assert_allclose(model.summary()["mean"], T0, rtol=5e-3)
    with pytest.raises(ConfigurationError, match="directions"):
        build("frame", directions=directions())


def test_angles_are_scaled_onto_minus_one_to_one():
    np.testing.assert_allclose(normalised_angles([10.0, 20.0, 30.0]), [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(normalised_angles([5.0, 5.0]), [0.0, 0.0])
    component = LearnedFrameComponent(ANGLES)
    assert component.features.shape == (len(ANGLES), 1)
    assert component.features.min() == -1 and component.features.max() == 1


def test_mlp_factory_builds_the_papers_network_with_a_small_output_layer():
    net = mlp(1, 2, (64, 64), "tanh", output_scale=0.01, seed=3)
    assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)] == [64, 64, 2]
    assert net[0].weight.dtype == torch.float64 and torch.all(net[-1].bias == 0)
    reference = mlp(1, 2, (64, 64), "tanh", seed=3)
    torch.testing.assert_close(net[-1].weight, 0.01 * reference[-1].weight)
    torch.testing.assert_close(net[0].weight, reference[0].weight)
    zero = mlp(1, 2, output_scale=0.0)
    assert torch.equal(zero(torch.randn(5, 1, dtype=torch.float64)), torch.zeros(5, 2))
    with pytest.raises(ConfigurationError, match="activation"):
        mlp(1, 2, activation="sigmoidal")


def test_profile_model_follows_a_platelet_tilt_profile(one_thread):
    model = ProfileThickness(ANGLES, T0, degree=4)
    target = torch.as_tensor(T0 / np.cos(np.radians(ANGLES)))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    for _ in range(300):
        optimizer.zero_grad()
        loss = (torch.log(model()[0][:, 0] / target)).pow(2).mean()
        loss.backward()
        optimizer.step()
    np.testing.assert_allclose(model.summary()["mean"], target.numpy(), rtol=0.02)


def test_per_frame_starting_thickness_is_respected():
    t0 = np.linspace(400.0, 800.0, len(ANGLES))
    for kind in ("frame", "neural", "neural-grid"):
        summary = make_thickness_model(kind, angles_deg=ANGLES, t0=t0).summary()
        np.testing.assert_allclose(summary["mean"], t0, rtol=0.02, err_msg=kind)
    global_model = make_thickness_model("global", angles_deg=ANGLES, t0=t0)
    np.testing.assert_allclose(global_model.summary()["mean"], t0.mean())


def test_bad_options_are_reported_as_configuration_errors():
    with pytest.raises(ConfigurationError, match="unknown thickness model"):
        build("wedge")
    with pytest.raises(ConfigurationError, match="n_samples"):
        build("profile", n_samples=10)
    with pytest.raises(ConfigurationError, match="inside"):
        build("neural", t_range=(700.0, 1100.0))
    with pytest.raises(ConfigurationError, match="t0"):
        GlobalThickness(3, -1.0)
    with pytest.raises(ConfigurationError, match="t0"):
        FrameThickness(3, [500.0, 600.0])


def test_config_builds_every_kind_and_forbids_unknown_fields():
    for kind in KINDS:
        options = {"neural": {"n_samples": 8}, "neural-grid": {"n_grid": 16}}.get(kind, {})
        model = ThicknessConfig(kind=kind, t0=T0, **options).build(ANGLES)
        samples, _ = model()
        assert samples.shape[1] == {"neural": 8, "neural-grid": 16}.get(kind, 1)
        np.testing.assert_allclose(model.summary()["mean"], T0, rtol=0.02)
    with pytest.raises(pydantic.ValidationError):
        ThicknessConfig(kind="neural", thickness=500)
    with pytest.raises(pydantic.ValidationError):
        ThicknessConfig(t_range=(900.0, 300.0))


def test_config_builds_the_flexible_shape_and_reports_its_flatness():
    model = ThicknessConfig(kind="neural", t0=T0, shape="flexible", n_samples=8).build(ANGLES)
    assert model.network[-1].out_features == 3
    np.testing.assert_allclose(model.summary()["flatness"], 0.5, atol=2e-3)
    assert "flatness" not in ThicknessConfig(kind="neural", t0=T0).build(ANGLES).summary()
    with pytest.raises(pydantic.ValidationError):
        ThicknessConfig(shape="wedge")


def test_config_without_t0_starts_in_the_middle_of_the_range():
    model = ThicknessConfig(kind="neural", t_range=(400.0, 1000.0)).build(ANGLES)
    np.testing.assert_allclose(model.summary()["mean"], 700.0, rtol=5e-3)
    default = ThicknessConfig(kind="neural-grid").build(ANGLES)
    np.testing.assert_allclose(default.summary()["mean"], 700.0, rtol=0.02)
    data_t0 = ThicknessConfig(kind="frame").build(ANGLES, t0=450.0)
    np.testing.assert_allclose(data_t0.summary()["mean"], 450.0)


def test_config_passes_beam_directions_only_when_asked():
    config = ThicknessConfig(kind="neural", use_directions=True)
    assert config.build(ANGLES, directions=directions()).n_features == 4
    assert ThicknessConfig(kind="neural").build(ANGLES, directions=directions()).n_features == 1
    with pytest.raises(ConfigurationError, match="directions"):
        config.build(ANGLES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_models_move_to_the_gpu(kind):
    model = build(kind).to("cuda")
    samples, weights = model()
    assert samples.is_cuda and weights.is_cuda
    np.testing.assert_allclose(model.summary()["mean"], T0, rtol=0.02)


def test_flexible_shape_converts_to_float32_and_passes_gradients_to_every_parameter():
    model = build("neural", shape="flexible").to(torch.float32)
    samples, weights = model()
    assert samples.dtype == weights.dtype == torch.float32
    (samples * torch.linspace(0, 1, samples.shape[1])).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.all(torch.isfinite(p.grad)), name
        assert torch.any(p.grad != 0), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_flexible_shape_moves_to_the_gpu():
    model = build("neural", shape="flexible").to("cuda")
    samples, _ = model()
    assert samples.is_cuda
    np.testing.assert_allclose(model.summary()["flatness"], 0.5, atol=2e-3)


def test_default_grid_reaches_from_a_wedge_edge_to_beyond_twice_the_start():
    model = ThicknessConfig().build(ANGLES, t0=800.0)
    assert isinstance(model, NeuralGridThickness)
    np.testing.assert_allclose(model.grid.numpy()[[0, -1]], [40.0, 2000.0])
    np.testing.assert_allclose(model.summary()["mean"], 800.0, rtol=0.02)
    per_frame_start = np.linspace(600.0, 900.0, len(ANGLES))
    grid = NeuralGridThickness(ANGLES, t0=per_frame_start).grid.numpy()
    np.testing.assert_allclose(grid[[0, -1]], [30.0, 2250.0])
    explicit = ThicknessConfig(t_range=(100.0, 1500.0)).build(ANGLES, t0=800.0)
    np.testing.assert_allclose(explicit.grid.numpy()[[0, -1]], [100.0, 1500.0])


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"shape": "flexible"}, "shape"),  # the default kind is neural-grid
        ({"kind": "neural", "n_grid": 16}, "n_grid"),
        ({"kind": "frame", "hidden": (8,)}, "hidden"),
        ({"kind": "global", "degree": 3}, "degree"),
    ],
)
def test_a_setting_the_kind_does_not_use_is_refused_by_name(settings, named):
    with pytest.raises(pydantic.ValidationError, match=f"does not use {named}"):
        ThicknessConfig(**settings)
    dumped = ThicknessConfig(kind=settings.get("kind", "neural-grid")).model_dump()
    assert ThicknessConfig.model_validate(dumped).kind == dumped["kind"]  # defaults read back
