"""Physics settings of a frame simulation: everything that changes the calculated intensities.

Run-time settings (device, threads, paths) are not here; they are command-line flags.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def format_hkl_list(hkls) -> str:
    """``"h k l, h k l, ..."`` for a list of Miller indices."""
    return ", ".join(" ".join(str(int(i)) for i in h) for h in hkls)


class SelectionRule(BaseModel):
    """Which observed reflections enter the comparison with the simulation.

    A reflection observed in a frame is compared when its resolution |g| ≤ ``g_max`` and it
    was excited in that frame:

    * rows recording what their frame saw (``frame`` rocking mode): its excitation-error
      ratio RSg = |s_g| / (|g| Δ) ≤ ``rsg_max`` (0.6 when not set), with s_g at the frame's
      central orientation and Δ the frame's integration semi-angle (continuous rotation) or
      precession angle [rad] (JANA2020's RSg, Palatinus et al. 2015, Acta Cryst. A71, 235,
      doi:10.1107/S2053273315001266);
    * rows holding whole rocking curves (``integrated`` mode): its Bragg crossing lies
      within ``crossing_max`` · Δ of the frame's rotation angle (and RSg ≤ ``rsg_max``
      only when that is set).

    ``omit`` lists reflections h k l left out by hand, as SHELXL's OMIT h k l does: every
    row of exactly these indices (not their symmetry equivalents), in every frame. It is
    empty by default; blochnet never leaves a measured reflection out on its own.

    Every excluded observation is counted with its reason.
    """

    model_config = ConfigDict(extra="forbid")

    g_max: float = Field(1.6, gt=0, description="resolution limit for scoring [Å⁻¹]")
    rsg_max: float | None = Field(
        None, gt=0, description="largest |s_g| / (|g| Δ); None: 0.6 for frame rows, unused else"
    )
    crossing_max: float = Field(
        1.0, gt=0, description="largest |φ_Bragg − α| / Δ of a whole-rocking-curve row"
    )
    omit: list[tuple[int, int, int]] = Field(
        default_factory=list,
        description="reflections h k l left out of every frame (SHELXL's OMIT), e.g. [[0, 0, 8]]",
    )

    @field_validator("omit")
    @classmethod
    def _no_origin(cls, value: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        if (0, 0, 0) in value:
            raise ValueError("0 0 0 is not a reflection that could be omitted")
        return sorted(set(value))

    def rsg_limit(self, rocking: str = "frame") -> float | None:
        """The RSg limit applied in ``rocking`` mode (None: none)."""
        if self.rsg_max is not None:
            return self.rsg_max
        return 0.6 if rocking == "frame" else None

    def describe(self, rocking: str = "frame") -> str:
        parts = [f"|g| ≤ {self.g_max:g} Å⁻¹"]
        if (rsg := self.rsg_limit(rocking)) is not None:
            parts.append(f"RSg = |s_g|/(|g|·Δ) ≤ {rsg:g}")
        if rocking == "integrated":
            parts.append(f"Bragg crossing within {self.crossing_max:g}·Δ of the frame angle")
        if self.omit:
            parts.append(f"not omitted by hand ({format_hkl_list(self.omit)})")
        return " and ".join(parts)


class SimulationConfig(BaseModel):
    """Settings of the Bloch-wave simulation of virtual frames."""

    model_config = ConfigDict(extra="forbid")

    g_max: float = Field(2.0, gt=0, description="largest |g| of a beam in the Bloch matrix [Å⁻¹]")
    sg_max: float = Field(
        0.01,
        gt=0,
        description=(
            "largest |s_g| of a beam [Å⁻¹] (the compared reflections are always included); "
            "the set-up checks the beam set against a finer one and refines it when needed"
        ),
    )
    rocking: Literal["auto", "frame", "integrated"] = Field(
        "auto",
        description=(
            "frame: a row is the intensity recorded within its frame (mean over n_tilts "
            "orientations across the frame); integrated: a row is the reflection's whole "
            "rocking curve, integrated along the rotation; auto: integrated for continuous "
            "rotation data whose rows repeat one intensity per reflection, else frame"
        ),
    )
    n_tilts: int = Field(
        41, ge=1, le=400, description="orientations across each frame (frame rocking mode)"
    )
    rocking_step: float = Field(
        0.025,
        gt=0,
        le=1,
        description=(
            "rotation step of the integrated rocking curves [deg]; a rocking curve is about "
            "1/t wide in |s_g|, so thick crystals and high-angle reflections need fine steps"
        ),
    )
    rocking_window: float = Field(
        0.015, gt=0, le=0.1, description="|s_g| range integrated around each Bragg crossing [Å⁻¹]"
    )
    max_rocking_width: float = Field(
        6.0,
        gt=0,
        le=45,
        description="rows whose integration window is wider are not compared [deg]",
    )
    absorption: float = Field(0.0, ge=0, description="κ in U'_g = κ U_g")
    scattering: Literal["lobato", "peng"] = "lobato"
    solver: Literal["eigh", "eig", "expm"] = "eigh"
    selection: SelectionRule = Field(default_factory=SelectionRule)
