"""Prediction metrics of a model against reference labels, and the molecular force split.

Units of the reported metrics: energy per atom in meV/atom, forces in meV/Angstrom, stress
in meV/Angstrom^3 (inputs in eV, eV/Angstrom, eV/Angstrom^3).

Force metrics (both conventions in use are reported):

* ``*_mae`` / ``*_rmse`` over Cartesian components (IPSuite HEAD);
* ``vector_mae``: mean over atoms of |F_pred - F_ref| (length of the error vector);
* ``norm_mae``: mean over atoms of | |F_pred| - |F_ref| | (the campaign-era IPSuite metric).

:func:`decompose_forces` splits atomic forces of a molecular liquid into translational,
rotational and vibrational parts (seed 2, section 3.3): the translational part is the net
force on the molecule distributed by mass, the rotational part is m_i (alpha x r_i) with
alpha = I^-1 tau from the torque about the centre of mass, the vibrational part is the rest
(it carries neither net force nor torque).  The three sum to the total force exactly.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import ase
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from lotf.analysis.diffusion import WholeMaker, bond_graph, find_molecules

_MEV = 1000.0


@dataclasses.dataclass
class Labels:
    """Stacked labels of a list of structures (None where a property is missing)."""

    energy: np.ndarray | None  # (n_structures,) eV
    n_atoms: np.ndarray  # (n_structures,)
    forces: np.ndarray | None  # (sum n_atoms, 3) eV/A
    stress: np.ndarray | None  # (n_structures, 6) Voigt eV/A^3


def _voigt(stress: np.ndarray) -> np.ndarray:
    s = np.asarray(stress, float)
    if s.shape == (3, 3):
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    if s.shape == (6,):
        return s
    raise ValueError(f"stress: expected shape (6,) or (3, 3), got {s.shape}")


def _get(atoms: ase.Atoms, key: str):
    if atoms.calc is not None and key in atoms.calc.results:
        return atoms.calc.results[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    return atoms.info.get(key)


def collect_labels(frames: Sequence[ase.Atoms], name: str = "frames") -> Labels:
    """Energies, forces and stresses stored on ``frames`` (calculator results or info/arrays).

    A property counts as present only if every frame has it.
    """
    if len(frames) == 0:
        raise ValueError(f"{name}: no structures")
    energies, forces, stresses = [], [], []
    for atoms in frames:
        energies.append(_get(atoms, "energy"))
        forces.append(_get(atoms, "forces"))
        stresses.append(_get(atoms, "stress"))
    n_atoms = np.array([len(a) for a in frames])
    e = None if any(v is None for v in energies) else np.array(energies, float)
    f = None
    if not any(v is None for v in forces):
        for k, (v, n) in enumerate(zip(forces, n_atoms)):
            if np.shape(v) != (n, 3):
                raise ValueError(f"{name}[{k}]: forces shape {np.shape(v)}, expected ({n}, 3)")
        f = np.concatenate([np.asarray(v, float) for v in forces])
    s = None if any(v is None for v in stresses) else np.stack([_voigt(v) for v in stresses])
    return Labels(e, n_atoms, f, s)


def _mae_rmse(err: np.ndarray) -> dict[str, float]:
    err = np.asarray(err, float)
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "max": float(np.max(np.abs(err))),
    }


def energy_metrics(e_ref, e_pred, n_atoms) -> dict[str, float]:
    """MAE/RMSE/max of the per-atom energy error in meV/atom."""
    e_ref, e_pred, n = (np.asarray(v, float) for v in (e_ref, e_pred, n_atoms))
    if not e_ref.shape == e_pred.shape == n.shape:
        raise ValueError(
            f"energy: shapes differ: ref {e_ref.shape}, pred {e_pred.shape}, n_atoms {n.shape}"
        )
    return _mae_rmse((e_pred - e_ref) / n * _MEV)


def force_metrics(f_ref, f_pred) -> dict[str, float]:
    """Component MAE/RMSE/max, per-atom error-vector MAE and |F| MAE, in meV/Angstrom."""
    f_ref, f_pred = np.asarray(f_ref, float), np.asarray(f_pred, float)
    if f_ref.shape != f_pred.shape or f_ref.shape[-1] != 3:
        raise ValueError(
            f"forces: shapes differ or not (..., 3): ref {f_ref.shape}, pred {f_pred.shape}"
        )
    err = (f_pred - f_ref) * _MEV
    out = _mae_rmse(err)
    vec = np.linalg.norm(err, axis=-1)
    out["vector_mae"] = float(vec.mean())
    out["vector_rmse"] = float(np.sqrt(np.mean(vec**2)))
    out["norm_mae"] = float(
        np.mean(np.abs(np.linalg.norm(f_pred, axis=-1) - np.linalg.norm(f_ref, axis=-1))) * _MEV
    )
    return out


def stress_metrics(s_ref, s_pred) -> dict[str, float]:
    """MAE/RMSE/max over Voigt components and of the pressure, in meV/Angstrom^3."""
    s_ref = np.atleast_2d(np.asarray(s_ref, float))
    s_pred = np.atleast_2d(np.asarray(s_pred, float))
    if s_ref.shape != s_pred.shape or s_ref.shape[-1] != 6:
        raise ValueError(
            f"stress: expected matching (n, 6) Voigt arrays, got {s_ref.shape}, {s_pred.shape}"
        )
    out = _mae_rmse((s_pred - s_ref) * _MEV)
    p_err = -(s_pred[:, :3].mean(axis=1) - s_ref[:, :3].mean(axis=1)) * _MEV
    out["pressure_mae"] = float(np.mean(np.abs(p_err)))
    return out


def prediction_metrics(
    reference: Sequence[ase.Atoms], predicted: Sequence[ase.Atoms]
) -> dict[str, dict[str, float]]:
    """Metrics for every property present in both lists (keys ``energy``, ``forces``, ``stress``)."""
    if len(reference) != len(predicted):
        raise ValueError(f"predicted: {len(predicted)} structures, reference has {len(reference)}")
    ref = collect_labels(reference, "reference")
    pred = collect_labels(predicted, "predicted")
    if not np.array_equal(ref.n_atoms, pred.n_atoms):
        raise ValueError("predicted: atom counts differ from the reference structures")
    out: dict[str, dict[str, float]] = {}
    if ref.energy is not None and pred.energy is not None:
        out["energy"] = energy_metrics(ref.energy, pred.energy, ref.n_atoms)
    if ref.forces is not None and pred.forces is not None:
        out["forces"] = force_metrics(ref.forces, pred.forces)
    if ref.stress is not None and pred.stress is not None:
        out["stress"] = stress_metrics(ref.stress, pred.stress)
    if not out:
        raise ValueError(
            "no property (energy, forces, stress) is labelled in both reference and predicted"
        )
    return out


def predict(
    frames: Sequence[ase.Atoms], calc, properties: Sequence[str] = ("energy", "forces")
) -> list[ase.Atoms]:
    """Copies of ``frames`` carrying ``calc``'s results as single-point calculators."""
    out = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = calc
        results = {}
        for p in properties:
            if p == "stress" and not np.all(a.pbc):
                continue
            results[p] = copy.deepcopy(a.calc.get_property(p, a))
        a.calc = SinglePointCalculator(a, **results)
        out.append(a)
    return out


# --------------------------------------------------------------------------- force decomposition


def decompose_forces(
    positions: np.ndarray,
    forces: np.ndarray,
    masses: np.ndarray,
    molecules: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Translational, rotational and vibrational parts (each (N, 3)) of atomic forces.

    ``positions`` must have whole molecules (see :func:`decompose_frame` for periodic
    structures); atoms in no molecule are treated as single-atom molecules.
    """
    x = np.asarray(positions, float)
    f = np.asarray(forces, float)
    m = np.asarray(masses, float)
    if x.shape != f.shape or x.ndim != 2 or x.shape[1] != 3 or m.shape != (len(x),):
        raise ValueError(f"positions {x.shape}, forces {f.shape}, masses {m.shape} do not match")
    trans = np.zeros_like(f)
    rot = np.zeros_like(f)
    covered = np.zeros(len(x), bool)
    for mol in molecules:
        mol = np.asarray(mol, int)
        covered[mol] = True
        mm = m[mol]
        M = mm.sum()
        r = x[mol] - (mm[:, None] * x[mol]).sum(axis=0) / M
        F = f[mol].sum(axis=0)
        trans[mol] = mm[:, None] * F / M
        torque = np.cross(r, f[mol]).sum(axis=0)
        inertia = np.einsum("i,ij->", mm, r * r) * np.eye(3) - np.einsum("i,ij,ik->jk", mm, r, r)
        alpha = np.linalg.pinv(inertia, rcond=1e-10) @ torque
        rot[mol] = mm[:, None] * np.cross(alpha, r)
    trans[~covered] = f[~covered]
    vib = f - trans - rot
    return trans, rot, vib


def decompose_frame(
    atoms: ase.Atoms,
    forces: np.ndarray,
    molecules: Sequence[np.ndarray] | None = None,
    scale: float = 1.2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`decompose_forces` for one (possibly periodic) structure; molecules from its
    bond graph unless given."""
    graph = bond_graph(atoms, scale)
    if molecules is None:
        molecules = find_molecules(atoms, scale)
    whole = WholeMaker.from_graph(graph, list(molecules))(
        atoms.positions, atoms.cell.array, atoms.pbc
    )
    return decompose_forces(whole, forces, atoms.get_masses(), molecules)


def decomposed_force_metrics(
    reference: Sequence[ase.Atoms],
    predicted: Sequence[ase.Atoms],
    scale: float = 1.2,
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Force metrics per component (``translational``, ``rotational``, ``vibrational``).

    Returns the metrics and, per component, the stacked (reference, predicted) forces for
    parity plots.  Molecules come from the bond graph of each reference structure.
    """
    names = ("translational", "rotational", "vibrational")
    parts: dict[str, tuple[list, list]] = {k: ([], []) for k in names}
    for k, (ref, pred) in enumerate(zip(reference, predicted)):
        f_ref, f_pred = _get(ref, "forces"), _get(pred, "forces")
        if f_ref is None or f_pred is None:
            raise ValueError(f"structure {k}: forces missing in reference or prediction")
        mols = find_molecules(ref, scale)
        for name, a, b in zip(
            names,
            decompose_frame(ref, f_ref, mols, scale),
            decompose_frame(ref, f_pred, mols, scale),
        ):
            parts[name][0].append(a)
            parts[name][1].append(b)
    stacked = {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in parts.items()}
    metrics = {}
    for k, (a, b) in stacked.items():
        metrics[k] = force_metrics(a, b)
        metrics[k]["mean_abs_reference"] = float(np.mean(np.abs(a)) * _MEV)
    return metrics, stacked
