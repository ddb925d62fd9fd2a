"""The configuration of a refinement: everything that changes its result (saved with it).

:class:`RefineConfig` holds the simulation settings, the thickness and orientation models,
the learning rates per parameter group (:class:`LearningRates`), what is refined and how;
run-time settings (device, threads, paths) are not here. ``blochnet refine --config
FILE.toml`` sets any field (unknown keys are refused).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from blochnet.experiment.config import SimulationConfig
from blochnet.refinement.orientation import OrientationConfig
from blochnet.refinement.thickness import ThicknessConfig

AbsoluteStructureMode = Literal["check", "given", "inverted"]
Optimiser = Literal["adam", "lbfgs"]
Precision = Literal["float64", "float32", "mixed"]


class LearningRates(BaseModel):
    """Adam learning rates per parameter group (0 fixes the group)."""

    model_config = ConfigDict(extra="forbid")

    xyz: float = Field(5e-4, ge=0, description="free coordinates [fractional]")
    adp: float = Field(3e-4, ge=0, description="Uiso / free Uij [Å²]")
    occupancy: float = Field(0.0, ge=0)
    charge: float = Field(3e-2, ge=0, description="partial charges [e]")
    absorption: float = Field(1e-3, ge=0, description="κ (when refine_absorption)")
    orientation: float = Field(3e-4, ge=0, description="frame rotation vectors [rad]")
    orientation_network: float = Field(
        3e-3, ge=0, description="weights of a learned orientation drift ([orientation] neural)"
    )
    thickness: float = Field(3e-3, ge=0, description="thickness-model parameters")


class RefineConfig(BaseModel):
    """Everything that changes the result of a refinement (saved with it)."""

    model_config = ConfigDict(extra="forbid")

    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    thickness: ThicknessConfig = Field(default_factory=ThicknessConfig)
    orientation: OrientationConfig = Field(default_factory=OrientationConfig)
    learning_rates: LearningRates = Field(default_factory=LearningRates)
    epochs: int = Field(30, ge=1)
    precision: Precision = Field(
        "float64",
        description=(
            "float64 throughout (result files identical between runs); float32 throughout "
            "(epochs about 1.9× faster, intensities to ~1e-5, results that differ between "
            "runs in the sixth digit); mixed: float32 for every epoch but the last "
            "final_float64_epochs, then float64 for them, the s.u. and the outputs"
        ),
    )
    final_float64_epochs: int = Field(
        10, ge=0, description="epochs in float64 at the end of a mixed-precision refinement"
    )
    final_converged_epochs: int = Field(
        5,
        ge=0,
        description=(
            "when the set-up refines the beam set, every epoch but the last "
            "final_converged_epochs runs with the beams it started from (cheaper), the last "
            "ones, the s.u. and the outputs with the converged beams (≥ epochs: all of them)"
        ),
    )
    recompute: Literal["auto", "always", "never"] = Field(
        "auto",
        description=(
            "memory: 'always' keeps nothing of an orientation batch for the backward pass "
            "and solves it again there (one more eigendecomposition per orientation and "
            "epoch, the same results); 'auto' does so for a data set whose epochs would "
            "otherwise keep more than a quarter of this machine's memory (shared among "
            "the processes of a run on it)"
        ),
    )
    kept_eigenvectors: Literal["single", "full"] = Field(
        "single",
        description=(
            "memory: the precision of the eigenvectors each orientation batch keeps for "
            "the backward pass of an Adam epoch and of the convergence test's exact "
            "gradients in a double-precision refinement: 'single' halves the largest part "
            "of their memory, the gradients then to about 1e-7 of the largest component "
            "(1e-4 relative for weak beams; the intensities and the loss are unchanged); "
            "'full' keeps them as computed. Reverse-mode Jacobians always keep them in full"
        ),
    )
    thickness_steps: int = Field(
        50,
        ge=0,
        description=(
            "thickness models on a fixed grid of samples (neural-grid): at every epoch the "
            "model is fitted in this many Adam steps (rate thickness_rate) on the "
            "intensities of that epoch's one solve, before the step of the other "
            "parameters (the thickness profiled out: fewer epochs to the same fit); 0: "
            "the thickness model is one more group of the optimiser"
        ),
    )
    thickness_rate: float = Field(
        1e-2, gt=0, description="Adam's rate of the thickness fits of thickness_steps"
    )
    structure_steps: Literal["gauss-newton", "adam"] = Field(
        "gauss-newton",
        description=(
            "how the structure parameters step in the epochs: from epoch "
            "gauss_newton_after on, Gauss–Newton steps (JᵀJ + λ diag JᵀJ) δ = −Jᵀr with the "
            "epoch's exact gradient and the normal matrix of a forward-mode Jacobian "
            "(made at the first such epoch, again after each threefold drop of the loss and "
            "when the settings change; λ = gauss_newton_damping), the epoch that makes it "
            "also stepping every frame's rotation by Gauss–Newton, the other parameters "
            "with Adam; or Adam for every parameter"
        ),
    )
    gauss_newton_after: int = Field(5, ge=0, description="Adam epochs before the first one")
    gauss_newton_damping: float = Field(0.1, ge=0, description="λ of those steps")
    optimiser: Optimiser = Field(
        "adam",
        description="first stage: Adam with per-group learning rates, or L-BFGS (one "
        "line-searched step per epoch over the groups with a learning rate > 0)",
    )
    lr_final: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Adam: the learning rates decay along a cosine to this fraction of "
        "themselves at the last epoch (1: constant)",
    )
    lm_iterations: int = Field(
        0,
        ge=0,
        description=(
            "Levenberg–Marquardt iterations on the physical parameters after Adam (each "
            "builds a Jacobian: one backward pass per structure parameter and per colour "
            "and component of the per-frame ones)"
        ),
    )
    convergence: float = Field(
        0.01,
        ge=0,
        description=(
            "after the epochs, Gauss–Newton steps on the structure parameters until the "
            "largest |shift|/s.u. of the next step is below this (least squares' "
            "convergence test; each step costs one s.u. Jacobian); 0: none"
        ),
    )
    convergence_steps: int = Field(3, ge=0, description="at most this many of those steps")
    refine_xyz: str = "all"
    refine_adp: str = "all"
    refine_occupancy: str = "none"
    refine_charge: str = Field(
        "all",
        description=(
            "atoms whose partial charge is refined (the last one selected keeps the cell "
            "neutral; 'all' on a structure of one atom refines none); 'none': neutral "
            "atoms, or the charges the structure file gives"
        ),
    )
    refine_orientation: bool = True
    refine_absorption: bool = Field(
        False, description="refine κ, starting from simulation.absorption (0.05 when that is 0)"
    )
    holdout_fraction: float = Field(0.0, ge=0, lt=0.9, description="frames held out")
    instability: float = Field(
        0.0, ge=0, le=1, description="u of the weights w = 1/(σ² + (u·Io)²) of the objective"
    )
    robust: float = Field(
        2.385,
        ge=0,
        description=(
            "b of the robust (Cauchy) loss, c = b × the robust scale of the weighted "
            "residuals (see blochnet.refinement.objective); 0: plain weighted least squares"
        ),
    )
    absolute_structure: AbsoluteStructureMode = Field(
        "check",
        description=(
            "non-centrosymmetric structures: 'check' scans the thickness with the structure "
            "as given and inverted and refines the hand with the lower R1(obs); 'given' or "
            "'inverted' refine that hand"
        ),
    )
    auto_setup: bool = Field(
        True,
        description=(
            "choose the starting thickness (scan) and check the beam set and rocking "
            "sampling for convergence, for what the configuration does not set"
        ),
    )
    checkpoint_every: int = Field(5, ge=1)
    seed: int = 0
    plot: bool = Field(
        True,
        description="draw refinement.png (thickness distributions, per-frame R and scale, "
        "Io against Ic, convergence) when matplotlib is installed (the plot extra)",
    )
