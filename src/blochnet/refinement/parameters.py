"""Refinable structure parameters on top of the site-symmetry maps.

Only the selected free parameters are refined: each group (coordinates, ADPs, occupancies)
is the crystal's starting vector plus a refinable shift on a chosen subset, so the
refined vector is exactly the set of independent parameters whose s.u. are reported.
Selections name atoms by label (``None`` = every atom, ``()`` = none).

Partial charges keep the unit cell neutral: of the k atoms whose charge is refined, the
first k − 1 carry a free charge and the last one takes what neutrality leaves,
q_L = −(Σ_i m_i o_i q_i + fixed)/(m_L o_L), m the number of sites in the cell and o the
starting occupancy (SHELXL's SUMP with a zero sum).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor, nn

from blochnet.errors import ConfigurationError
from blochnet.lattice import cartesian_to_uij, uij_to_cartesian
from blochnet.physics.crystal_model import AtomTensors, CrystalModel, FreeParameters


class StructureParameters(nn.Module):
    """Refinable shifts of the free coordinates, ADPs and occupancies of a crystal.

    Parameters
    ----------
    model : the crystal model (its site-symmetry maps define the free parameters).
    xyz, adp, occupancy, charge : labels of the atoms whose coordinates / ADPs / occupancies
        / partial charges are refined; ``None`` means every atom, an empty collection none.
        Refined charges need at least two atoms (the cell stays neutral): ``charge=None``
        on a structure of one atom (silicon) refines none, an explicit single atom is refused.
    absorption : κ of U'_g = κ U_g (0: no absorption); with ``refine_absorption`` it is
        refined (a shift on κ, kept ≥ 0 by :meth:`keep_adps_positive_definite`).
    """

    def __init__(
        self,
        model: CrystalModel,
        *,
        xyz: Collection[str] | None = None,
        adp: Collection[str] | None = None,
        occupancy: Collection[str] | None = (),
        charge: Collection[str] | None = (),
        absorption: float = 0.0,
        refine_absorption: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        start = model.free_parameters()
        labels = [a.label for a in model.crystal.atoms]
        for chosen in (xyz, adp, occupancy, charge):
            unknown = set(chosen or ()) - set(labels)
            if unknown:
                raise ConfigurationError(f"no atom labelled {sorted(unknown)}; atoms: {labels}")
        n_xyz = len(start.xyz)
        owners = [label for label, _ in model.parameter_names]
        names = [name for _, name in model.parameter_names]
        xyz_index = [i for i in range(n_xyz) if xyz is None or owners[i] in xyz]
        adp_index = [
            i - n_xyz for i in range(n_xyz, len(owners)) if adp is None or owners[i] in adp
        ]
        occ_index = [i for i, label in enumerate(labels) if occupancy is None or label in occupancy]
        charge_index = [i for i, label in enumerate(labels) if charge is None or label in charge]
        if charge is None and len(labels) == 1:
            charge_index = []  # nothing could balance the one atom's charge
        self.names = (
            [(owners[i], names[i]) for i in xyz_index]
            + [(owners[n_xyz + i], names[n_xyz + i]) for i in adp_index]
            + [(labels[i], "occ") for i in occ_index]
            + [(labels[i], "charge") for i in charge_index[:-1]]
        )
        charge_start = (
            start.charge if start.charge is not None else torch.zeros_like(start.occupancy)
        )
        for name, value in (
            ("xyz_start", start.xyz),
            ("adp_start", start.adp),
            ("occ_start", start.occupancy),
            ("charge_start", charge_start),
            ("charge_map", _neutral_basis(model, charge_index, labels, start.occupancy)),
        ):
            self.register_buffer(name, value.detach().clone())
        for name, index in (
            ("xyz_index", xyz_index),
            ("adp_index", adp_index),
            ("occ_index", occ_index),
            ("charge_free", charge_index[:-1]),
        ):
            self.register_buffer(
                name, torch.as_tensor(index, dtype=torch.long, device=model.device)
            )
        zeros = lambda n: nn.Parameter(torch.zeros(n, dtype=model.dtype, device=model.device))  # noqa: E731
        self.xyz_shift = zeros(len(xyz_index))
        self.adp_shift = zeros(len(adp_index))
        self.occ_shift = zeros(len(occ_index))
        self.charge_shift = zeros(max(len(charge_index) - 1, 0))
        self.charged = start.charge is not None or bool(charge_index)
        total = float(model.cell_charge(charge_start, start.occupancy))
        if abs(total) > 1e-4:
            raise ConfigurationError(
                f"the starting charges make the unit cell charged ({total:+.4f} e); partial "
                "charges must add up to zero over the cell"
            )
        self.register_buffer(
            "kappa_start",
            torch.as_tensor(float(absorption), dtype=model.dtype, device=model.device),
        )
        self.kappa_shift = zeros(1 if refine_absorption else 0)
        if refine_absorption:
            self.names.append(("", "kappa"))

    def shifts(self) -> tuple[nn.Parameter, ...]:
        """The refinable shifts: coordinates, ADPs, occupancies, charges, κ (order of
        :attr:`names`)."""
        return (self.xyz_shift, self.adp_shift, self.occ_shift, self.charge_shift, self.kappa_shift)

    def absorption(self) -> Tensor | float:
        """κ: a tensor when refined (so that it is differentiated), else a number."""
        if self.kappa_shift.numel():
            return self.kappa_start + self.kappa_shift[0]
        return float(self.kappa_start)

    def free(self) -> FreeParameters:
        """All free parameters, refined ones shifted."""
        return self._free_at(self.xyz_shift, self.adp_shift, self.occ_shift, self.charge_shift)

    def _free_at(self, xyz, adp, occupancy, charge) -> FreeParameters:
        return FreeParameters(
            xyz=self.xyz_start.index_add(0, self.xyz_index, xyz),
            adp=self.adp_start.index_add(0, self.adp_index, adp),
            occupancy=self.occ_start.index_add(0, self.occ_index, occupancy),
            charge=self.charge_start + self.charge_map @ charge if self.charged else None,
        )

    def charges(self) -> Tensor:
        """(atom,) partial charges [e]: the start plus the refined shifts, cell kept neutral."""
        return self.charge_start + self.charge_map @ self.charge_shift

    def atom_tangents(self) -> list[AtomTensors]:
        """The change of :meth:`atoms` along each refined shift of coordinates, ADPs,
        occupancies and charges (order of :attr:`names`; groups whose shifts do not
        require gradients are fixed and left out; κ is not an atom parameter)."""
        shifts = [p.detach() for p in self.shifts()[:4]]
        out = []
        for n, shift in enumerate(shifts):
            if not self.shifts()[n].requires_grad:
                continue
            for k in range(shift.numel()):
                direction = torch.zeros_like(shift)
                direction[k] = 1
                with fwad.dual_level():
                    dual = list(shifts)
                    dual[n] = fwad.make_dual(shift, direction)
                    atoms = self.model.atoms_from_free(self._free_at(*dual))
                    out.append(AtomTensors(*(_tangent(x) for x in (
                        atoms.xyz, atoms.uij, atoms.occupancy, atoms.charge))))  # fmt: skip
        return out

    def atoms(self) -> AtomTensors:
        """Asymmetric-unit tensors for the forward model."""
        return self.model.atoms_from_free(self.free())

    def keep_adps_positive_definite(self, minimum: float = 1e-5) -> bool:
        """Project every atom's U onto eigenvalues ≥ ``minimum`` [Å²] (and a refined κ onto
        κ ≥ 0); True if anything moved."""
        with torch.no_grad():
            if self.kappa_shift.numel():
                self.kappa_shift.clamp_(min=-float(self.kappa_start))
            cell = self.model.crystal.cell
            u_cart = uij_to_cartesian(cell, self.atoms().uij)  # (atom, 3, 3)
            vals, vecs = torch.linalg.eigh(u_cart)
            if bool(vals.min() >= minimum):
                return False
            fixed = vecs @ torch.diag_embed(vals.clamp(min=minimum)) @ vecs.mT
            uij = torch.as_tensor(
                cartesian_to_uij(cell, fixed.cpu().numpy()),
                dtype=self.model.dtype,
                device=self.model.device,
            )
            target = torch.linalg.lstsq(self.model.adp_map, uij.reshape(-1, 1)).solution[:, 0]
            self.adp_shift.copy_((target - self.adp_start)[self.adp_index])
            return True


def _neutral_basis(
    model: CrystalModel, index: list[int], labels: list[str], occupancy: Tensor
) -> Tensor:
    """(atom, k − 1) map from the free charges (the first k − 1 refined atoms) to every
    atom's charge shift, the last refined atom balancing the cell's charge (weights
    :meth:`~blochnet.physics.crystal_model.CrystalModel.cell_weights` of ``occupancy``)."""
    n_atom = len(labels)
    basis = torch.zeros(n_atom, max(len(index) - 1, 0), dtype=model.dtype, device=model.device)
    if not index:
        return basis
    if len(index) == 1:
        raise ConfigurationError(
            f"refining the charge of {labels[index[0]]} alone would charge the cell; select "
            "at least two atoms (the last selected one keeps the cell neutral)"
        )
    weight = model.cell_weights(occupancy).cpu()
    last = index[-1]
    if weight[last] <= 0:
        raise ConfigurationError(f"atom {labels[last]} has occupancy 0; it cannot hold a charge")
    for column, i in enumerate(index[:-1]):
        basis[i, column] = 1.0
        basis[last, column] = -float(weight[i] / weight[last])
    return basis


def atom_selection(text: str | None, labels: list[str]) -> set[str] | None:
    """Parse a selection such as ``"all"``, ``"none"``, ``"O1 Si1"`` or ``"all -H"``.

    ``-X`` removes atoms of element X or the atom labelled X.
    """
    if text is None or text.strip() == "all":
        return None
    words = text.replace(",", " ").split()
    if words == ["none"]:
        return set()
    chosen = set(labels) if words[0] == "all" else set()
    for word in words[1:] if words[0] == "all" else words:
        target = word.lstrip("-")
        matching = {label for label in labels if label == target or _element(label) == target}
        if not matching:
            raise ConfigurationError(f"selection {text!r}: no atom or element {target!r}")
        chosen = chosen - matching if word.startswith("-") else chosen | matching
    return chosen


def _element(label: str) -> str:
    letters = "".join(ch for ch in label if ch.isalpha())
    return letters[:2] if len(letters) > 1 and letters[1].islower() else letters[:1]


def _tangent(value: Tensor | None) -> Tensor | None:
    """The tangent of a dual tensor (zeros where it has none); None stays None."""
    if value is None:
        return None
    tangent = fwad.unpack_dual(value).tangent
    return torch.zeros_like(fwad.unpack_dual(value).primal) if tangent is None else tangent
