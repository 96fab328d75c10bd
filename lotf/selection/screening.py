"""Screening of candidate structures before selection: unphysical contacts and broken molecules.

Two tests, each optional, run on every pool structure before a selection rule sees it:

* **minimum distance**: a structure fails when any two atoms (minimum image) are closer than
  the threshold of their element pair. The default threshold is ``min_distance_factor`` times the
  sum of the covalent radii (ASE's Cordero radii; 0.6 gives 0.37 Å for H-H, 0.64 Å for C-H,
  0.85 Å for B-F, far below any distance a physical liquid visits); ``pair_distances`` sets
  pairs explicitly, e.g. ``{"H-H": 0.6}`` (Å, element order does not matter). With
  ``contact_factor``, a pair that is not covalently bonded (d >= ``bond_factor`` × the covalent
  sum) also fails closer than ``contact_factor`` × the sum of the van der Waals radii (ASE's): an
  intermolecular contact no liquid makes, such as a cation H pushed 1.3 Å into a BF4- (see
  :class:`~lotf.dynamics.checks.BondGraphCheck`, which uses the same rule during MD).
* **intact molecules**: the covalent bond graph (a bond where d < ``bond_factor`` × (r_i + r_j))
  is split into molecules, and each molecule is described by its Hill formula and its number of
  bonds. A structure fails when it contains a molecule that the reference structures do not
  have: a broken BMIM+ (two fragments), a proton moved from cation to anion (C8H14N2 and HBF4),
  two ions fused by a new bond (more atoms or more bonds). The test compares molecule kinds,
  not atom indices, so it works for structures of any size or atom order (packed boxes, MD).

Structures that fail are dropped from the pool before selection and counted per reason. The
point is that a collapsed FIRE structure or a dissociated MD frame is never sent to the
reference (where CP2K fails on it or, worse, labels it) and never enters the training set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.data import covalent_radii, vdw_radii
from ase.neighborlist import neighbor_list

SCREENING_KEYS = ("min_distance_factor", "pair_distances", "intact_molecules", "bond_factor", "contact_factor")


class ScreeningError(ValueError):
    """Bad screening settings, reported as one line."""


def _pair_key(a: str, b: str) -> tuple[str, str]:
    return tuple(sorted((a, b)))  # type: ignore[return-value]


@dataclass
class Screening:
    """Settings of the two tests (``None`` / ``False`` switches a test off)."""

    min_distance_factor: float | None = 0.6
    pair_distances: dict = field(default_factory=dict)
    intact_molecules: bool = False
    bond_factor: float = 1.2
    contact_factor: float | None = None

    @classmethod
    def from_dict(cls, settings: dict | None) -> "Screening | None":
        """``None`` or ``{}`` means no screening at all."""
        if not settings:
            return None
        unknown = set(settings) - set(SCREENING_KEYS)
        if unknown:
            raise ScreeningError(f"screening: unknown setting '{sorted(unknown)[0]}' "
                                 f"(known: {', '.join(SCREENING_KEYS)})")
        out = cls(**settings)
        if out.min_distance_factor is not None and not 0 < out.min_distance_factor < 1:
            raise ScreeningError(f"screening: min_distance_factor must be in (0, 1), got {out.min_distance_factor}")
        if out.contact_factor is not None and not 0 < out.contact_factor < 1:
            raise ScreeningError(f"screening: contact_factor must be in (0, 1), got {out.contact_factor}")
        if not out.bond_factor > 1:
            raise ScreeningError(f"screening: bond_factor must be > 1, got {out.bond_factor}")
        pairs = {}
        for name, value in (out.pair_distances or {}).items():
            parts = str(name).split("-")
            if len(parts) != 2 or not float(value) > 0:
                raise ScreeningError(f"screening: pair_distances entry '{name}: {value}' is not 'A-B: distance > 0'")
            pairs[_pair_key(*parts)] = float(value)
        out.pair_distances = pairs
        return out

    def threshold(self, a: str, b: str, za: int, zb: int) -> float:
        explicit = self.pair_distances.get(_pair_key(a, b))
        if explicit is not None:
            return explicit
        if self.min_distance_factor is None:
            return 0.0
        return self.min_distance_factor * (covalent_radii[za] + covalent_radii[zb])


def closest_contact(atoms: Atoms, screening: Screening) -> tuple[float, tuple[int, int] | None]:
    """Smallest ratio distance / threshold over all pairs (< 1 fails) and the pair it belongs to."""
    numbers = atoms.numbers
    symbols = atoms.get_chemical_symbols()
    radius = max([*screening.pair_distances.values(), 0.0,
                  (screening.min_distance_factor or 0.0) * 2 * float(covalent_radii[np.unique(numbers)].max()),
                  (screening.contact_factor or 0.0) * 2 * float(vdw_radii[np.unique(numbers)].max())])
    if radius <= 0 or len(atoms) < 2:
        return np.inf, None
    i, j, d = neighbor_list("ijd", atoms, radius)
    keep = i < j
    i, j, d = i[keep], j[keep], d[keep]
    if len(d) == 0:
        return np.inf, None
    limits = np.array([screening.threshold(symbols[a], symbols[b], numbers[a], numbers[b]) for a, b in zip(i, j)])
    if screening.contact_factor is not None:  # non-bonded pairs: also the van der Waals contact
        bonded = d < screening.bond_factor * (covalent_radii[numbers[i]] + covalent_radii[numbers[j]])
        contact = screening.contact_factor * (vdw_radii[numbers[i]] + vdw_radii[numbers[j]])
        limits = np.where(bonded, limits, np.maximum(limits, contact))
    with np.errstate(divide="ignore"):
        ratio = np.where(limits > 0, d / np.where(limits > 0, limits, 1.0), np.inf)
    k = int(np.argmin(ratio))
    return float(ratio[k]), (int(i[k]), int(j[k]))


def molecule_kinds(atoms: Atoms, bond_factor: float = 1.2) -> list[tuple[str, int]]:
    """(Hill formula, number of bonds) of every molecule of the covalent bond graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(atoms)
    if n == 0:
        return []
    cutoffs = bond_factor * covalent_radii[atoms.numbers]
    i, j = neighbor_list("ij", atoms, cutoffs)
    keep = i < j
    i, j = i[keep], j[keep]
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    symbols = np.array(atoms.get_chemical_symbols())
    bonds = np.bincount(labels[i], minlength=labels.max() + 1)
    kinds = []
    for m in range(labels.max() + 1):
        formula = Atoms(symbols=list(symbols[labels == m])).get_chemical_formula(mode="hill")
        kinds.append((formula, int(bonds[m])))
    return kinds


def reference_kinds(frames: Iterable[Atoms], bond_factor: float = 1.2) -> set[tuple[str, int]]:
    """The molecule kinds of intact reference structures (e.g. the seed trajectory's first frame)."""
    kinds: set[tuple[str, int]] = set()
    for atoms in frames:
        kinds.update(molecule_kinds(atoms, bond_factor))
    return kinds


@dataclass
class ScreeningResult:
    keep: np.ndarray  # (N,) bool
    reasons: list  # per structure: None (kept), "min_distance" or "molecules"
    details: list  # per structure: a short text, '' when kept

    def counts(self) -> dict[str, int]:
        return {"n_screened": int((~self.keep).sum()),
                "n_screened_min_distance": sum(r == "min_distance" for r in self.reasons),
                "n_screened_molecules": sum(r == "molecules" for r in self.reasons)}


def screen(frames: Sequence[Atoms], screening: Screening | None,
           reference: set[tuple[str, int]] | None = None) -> ScreeningResult:
    """Which ``frames`` pass (``keep``) and why the others do not (first failing test)."""
    n = len(frames)
    if screening is None:
        return ScreeningResult(np.ones(n, bool), [None] * n, [""] * n)
    if screening.intact_molecules and not reference:
        raise ScreeningError("screening: intact_molecules needs reference structures with intact molecules")
    keep = np.ones(n, bool)
    reasons: list = [None] * n
    details: list = [""] * n
    for k, atoms in enumerate(frames):
        ratio, pair = closest_contact(atoms, screening)
        if ratio < 1.0:
            a, b = pair
            keep[k], reasons[k] = False, "min_distance"
            details[k] = (f"atoms {a} ({atoms[a].symbol}) and {b} ({atoms[b].symbol}) at "
                          f"{atoms.get_distance(a, b, mic=True):.2f} Å")
            continue
        if screening.intact_molecules:
            new = sorted({kind for kind in molecule_kinds(atoms, screening.bond_factor) if kind not in reference})
            if new:
                keep[k], reasons[k] = False, "molecules"
                details[k] = "molecules not in the reference: " + ", ".join(f"{f} ({b} bonds)" for f, b in new[:3])
    return ScreeningResult(keep, reasons, details)
