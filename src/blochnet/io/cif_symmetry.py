"""Space-group operators of a CIF file: an operator loop, a Hall or Hermann–Mauguin symbol,
or an International Tables number, interpreted and compared with gemmi.

An operator loop wins over symbols. Listed operators are closed under composition (a file
giving only the coset representatives of a centred group gets its centring translations
when a symbol confirms them); a symbol that disagrees with the operators is reported as a
warning, an unreadable operator as :class:`~blochnet.errors.InputFileError` naming the tag
and row.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import gemmi
import numpy as np
from gemmi import cif

from blochnet.crystal import SymOp
from blochnet.errors import InputFileError

_OPERATOR_TAGS = ("_space_group_symop_operation_xyz", "_symmetry_equiv_pos_as_xyz")
_HALL_TAGS = ("_space_group_name_Hall", "_symmetry_space_group_name_Hall")
_HM_TAGS = ("_space_group_name_H-M_alt", "_symmetry_space_group_name_H-M")
_NUMBER_TAGS = ("_space_group_IT_number", "_symmetry_Int_Tables_number")
_DEN = 24  # gemmi's denominator of operator translations


def read_symmetry(path: Path, blocks: list[cif.Block]) -> tuple[list[SymOp], str]:
    """Operators of the first block with symmetry: an operator loop wins over symbols."""
    for block in blocks:
        symbols = _symbols(block, _HALL_TAGS + _HM_TAGS)
        known = [s for s in symbols if s[2] is not None]  # a Hall symbol first
        loop = _operator_loop(path, block, known)
        if loop is None and not known:
            known = [s for s in _symbols(block, _NUMBER_TAGS) if s[2] is not None]
            if symbols and known:
                warnings.warn(
                    f"{path}: unknown space-group symbol {symbols[0][1]!r}; using the "
                    f"standard setting of {known[0][0]} {known[0][1]}",
                    stacklevel=3,
                )
            elif symbols:
                raise InputFileError(path, symbols[0][0], f"unknown symbol {symbols[0][1]!r}")
            else:
                continue
        if loop is not None:
            source, ops = "the operator loop", loop
        else:
            source, ops = f"{known[0][0]} {known[0][1]!r}", known[0][2]
        for tag, value, group in known:
            if not _same_group(ops, group, tag):
                message = f"{tag} {value!r} disagrees with {source}; using {source}"
                warnings.warn(f"{path}: {message}", stacklevel=3)
        return _finish(ops, symbols + known)
    raise InputFileError(
        path,
        "symmetry",
        "no space-group information; expected an operator loop "
        f"({' or '.join(_OPERATOR_TAGS)}) or a symbol ({', '.join(_HALL_TAGS + _HM_TAGS)})",
    )


def _same_group(ops: np.ndarray, other: np.ndarray, tag: str) -> bool:
    """Equal operator sets; for an H-M symbol, the same group in another origin choice."""
    if _keys(ops) == _keys(other):
        return True
    if tag not in _HM_TAGS:
        return False
    found = [gemmi.find_spacegroup_by_ops(_group_ops(o)) for o in (ops, other)]
    return None not in found and found[0].hm == found[1].hm


def _operator_loop(path: Path, block: cif.Block, known: list) -> np.ndarray | None:
    """The listed operators, completed to a group; None when the block has no loop.

    Completion may add centring translations only when a symbol of the block confirms
    them (files that list the coset representatives of a centred group).
    """
    for tag in _OPERATOR_TAGS:
        column = block.find_values(tag)
        if len(column) == 0:
            continue
        seitz = []
        for row, raw in enumerate(column, start=1):
            try:
                op = gemmi.Op(cif.as_string(raw))
                if np.any(np.array(op.rot) % _DEN) or abs(op.det_rot()) != _DEN**3:
                    raise RuntimeError("not a crystallographic operator")
            except RuntimeError as error:
                raise InputFileError(
                    path, f"{tag} row {row}", f"cannot read operator {raw!r} ({error})"
                ) from None
            seitz.append(_seitz(op))
        ops = np.array(seitz)
        complete = _complete_group(path, tag, ops)
        new_centring = _keys(_centrings(complete)) - _keys(_centrings(ops))
        confirmed = any(_same_group(complete, group, name) for name, _, group in known)
        if new_centring and not confirmed:
            raise InputFileError(
                path,
                tag,
                f"the {len(column)} operators generate translations that are not lattice "
                "vectors of the cell (a mistyped translation?)",
            )
        if len(complete) > len(_keys(ops)):
            message = f"{tag} lists {len(column)} operators, completed to {len(complete)}"
            warnings.warn(f"{path}: {message}", stacklevel=5)
        return complete
    return None


def _symbols(block: cif.Block, tags: tuple[str, ...]) -> list[tuple[str, str, np.ndarray | None]]:
    """(tag, symbol, operators or None if gemmi does not know it) for each symbol tag."""
    found = []
    for tag in tags:
        raw = block.find_value(tag)
        if raw is None or cif.is_null(raw):
            continue
        value = cif.as_string(raw).strip()
        try:
            if tag in _HALL_TAGS:
                group = gemmi.symops_from_hall(value)
            elif tag in _HM_TAGS:
                group = gemmi.find_spacegroup_by_name(value).operations()
            else:
                group = gemmi.find_spacegroup_by_number(int(value)).operations()
            ops = np.array([_seitz(op) for op in group])
        except (RuntimeError, ValueError, AttributeError):
            ops = None
        found.append((tag, value, ops))
    return found


def _finish(ops: np.ndarray, symbols: list) -> tuple[list[SymOp], str]:
    """SymOp records (identity first) and the space-group name."""
    identity = np.eye(4, dtype=int)
    identity[3, 3] = _DEN
    order = sorted(range(len(ops)), key=lambda i: not np.array_equal(ops[i], identity))
    operators = []
    for i in order:
        rot, tran = ops[i, :3, :3], ops[i, :3, 3] % _DEN
        operators.append(SymOp(rot.astype(int), tran / _DEN, _triplet(ops[i])))
    spacegroup = gemmi.find_spacegroup_by_ops(_group_ops(ops))
    if spacegroup is not None:
        return operators, spacegroup.xhm()
    names = [value for tag, value, _ in symbols if tag in _HM_TAGS + _HALL_TAGS]
    return operators, names[0] if names else ""


def _triplet(seitz: np.ndarray) -> str:
    op = gemmi.Op()
    op.rot = (seitz[:3, :3] * _DEN).tolist()
    op.tran = (seitz[:3, 3] % _DEN).tolist()
    return op.triplet()


def _group_ops(ops: np.ndarray) -> gemmi.GroupOps:
    return gemmi.GroupOps([gemmi.Op(_triplet(op)) for op in ops])


def _seitz(op: gemmi.Op) -> np.ndarray:
    """4x4 integer matrix: rotation (integer) and translation in units of 1/24."""
    matrix = np.zeros((4, 4), dtype=int)
    matrix[:3, :3] = np.array(op.rot) // _DEN
    matrix[:3, 3] = np.array(op.tran) % _DEN
    matrix[3, 3] = _DEN
    return matrix


def _centrings(ops: np.ndarray) -> np.ndarray:
    """The pure translations (centring vectors) among ``ops``."""
    return ops[np.all(ops[:, :3, :3] == np.eye(3, dtype=int), axis=(1, 2))]


def _keys(ops: np.ndarray) -> set[bytes]:
    return {np.ascontiguousarray(op).tobytes() for op in ops}


def _complete_group(path: Path, tag: str, ops: np.ndarray) -> np.ndarray:
    """Close a list of operators under composition (translations modulo 1)."""
    unique = {np.ascontiguousarray(op).tobytes(): op for op in ops}
    while True:
        current = np.array(list(unique.values()))
        rot = np.einsum("aij,bjk->abik", current[:, :3, :3], current[:, :3, :3])
        tran = np.einsum("aij,bj->abi", current[:, :3, :3], current[:, :3, 3])
        tran = (tran + current[:, None, :3, 3]) % _DEN
        products = np.zeros(rot.shape[:2] + (4, 4), dtype=int)
        products[..., :3, :3], products[..., :3, 3], products[..., 3, 3] = rot, tran, _DEN
        size = len(unique)
        for op in products.reshape(-1, 4, 4):
            unique.setdefault(op.tobytes(), op)
        if len(unique) > 192:
            raise InputFileError(path, tag, "the operators do not generate a space group")
        if len(unique) == size:
            return current
