"""ASE calculator for D3(BJ) dispersion: a thin adapter over :class:`lotf.potential.d3.D3Term`.

Energy, forces and stress come from one jitted :func:`lotf.potential.predict.make_predict` pass,
exactly as for the GMNN; to add D3 to a GMNN in one jitted function, put both terms in
``make_predict([model.structure_energies, d3_term.structure_energies], ...)`` with one graph each.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator

from lotf.potential import neighbors
from lotf.potential.d3 import (
    BJParams,
    D3Term,
    PairGraph,
    check_elements,
    cp2k_cn_cutoff,
    damping_parameters,
    sort_rows_by_distance,
)
from lotf.potential.predict import make_predict

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def graph_from_neighbors(positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray, nbrs) -> PairGraph:
    """A one-structure :class:`PairGraph` over padded neighbour rows (padded slots stay masked)."""
    n = len(numbers)
    return PairGraph(
        positions=jnp.asarray(positions, dtype=jnp.float64), cells=jnp.asarray(cell, dtype=jnp.float64)[None],
        numbers=jnp.asarray(numbers, jnp.int32), atom_mask=jnp.ones(n, bool), structure=jnp.zeros(n, jnp.int32),
        neighbors=jnp.asarray(nbrs.idx, jnp.int32), shifts=jnp.asarray(nbrs.shifts), pair_mask=jnp.asarray(nbrs.mask),
    )


def sorted_rows(positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray, nbrs,
                short_cutoff: float) -> tuple[PairGraph, int]:
    """Row graph with each row sorted by distance, and the columns holding every pair < short_cutoff.

    Integer shifts are stored as int8 (int16 for huge shift ranges) to cut memory traffic.
    """
    idx, shifts, mask, columns = sort_rows_by_distance(positions, cell, nbrs.idx, nbrs.shifts, nbrs.mask,
                                                       short_cutoff)
    shift_type = np.int8 if np.abs(shifts).max(initial=0) < 127 else np.int16
    n = len(numbers)
    graph = PairGraph(
        positions=jnp.asarray(positions, dtype=jnp.float64), cells=jnp.asarray(cell, dtype=jnp.float64)[None],
        numbers=jnp.asarray(numbers, jnp.int32), atom_mask=jnp.ones(n, bool), structure=jnp.zeros(n, jnp.int32),
        neighbors=jnp.asarray(idx, jnp.int32), shifts=jnp.asarray(np.rint(shifts).astype(shift_type)),
        pair_mask=jnp.asarray(mask),
    )
    return graph, columns


class D3Calculator(Calculator):
    """DFT-D3(BJ) dispersion as an ASE calculator (eV, A; stress in eV/A^3, ASE sign and Voigt order).

    Parameters
    ----------
    functional: name of the functional the damping parameters belong to (``b97-3c``, ``pbe``,
        ``revpbe``, ``revpbe0``, ... see :data:`lotf.potential.d3.FUNCTIONALS`) or a ``BJParams``.
    cutoff: sharp two-body cutoff in A. CP2K's ``R_CUTOFF`` X means ``cutoff=2 X`` (CP2K's default
        R_CUTOFF 10.58 A is a 21.17 A cutoff; the seed-1 CP2K input's 7.93766 A is 15.875 A).
    cn_cutoff: cutoff of the coordination numbers in A. None: with ``convention="cp2k"`` the
        range beyond which CP2K's switched counting function stays below EPS_CN = 1e-6 for the
        elements present (5.2 A for H, B, C, N, F), so results equal CP2K's; with "dftd3" 40 bohr.
    three_body: add the Axilrod-Teller-Muto term (C9 = -sqrt(C6ij C6jk C6ik), zero damping).
    three_body_cutoff: longest triangle side (A). None: ``cutoff`` (cp2k, plus CP2K's screening of
        side products above 0.1 cutoff^3) or 40 bohr (dftd3). The cost grows with its sixth power.
    convention: ``"cp2k"`` (CP2K 2023 DFTD3(BJ)) or ``"dftd3"`` (dftd3 program / simple-dftd3).
    short_range_correction: add CP2K's SHORT_RANGE_CORRECTION (the B97-3c SRB term).
    cp2k_triangle_weights: reproduce CP2K's wrapping-dependent weights of triangles that contain
        periodic images of one atom (off: every triangle counts once).
    skin: neighbour-list skin in A; the list is rebuilt only when atoms moved more than skin/2.
    max_triangles: refuse three-body enumerations larger than this (memory: ~1 kB per triangle).
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, functional: str | BJParams = "b97-3c", cutoff: float = 20.0, cn_cutoff: float | None = None,
                 three_body: bool = False, three_body_cutoff: float | None = None, convention: str = "cp2k",
                 short_range_correction: bool = False, cp2k_triangle_weights: bool = False, skin: float = 1.0,
                 max_triangles: int = 20_000_000, parameter_file: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.damping = damping_parameters(functional)
        self.options = {"cutoff": float(cutoff), "cn_cutoff": cn_cutoff, "three_body": bool(three_body),
                        "three_body_cutoff": three_body_cutoff, "convention": convention,
                        "short_range_correction": bool(short_range_correction),
                        "cp2k_triangle_weights": bool(cp2k_triangle_weights), "parameter_file": parameter_file}
        if skin < 0:
            raise ValueError(f"D3Calculator: 'skin' must be >= 0 (got {skin})")
        self.skin = float(skin)
        self.max_triangles = int(max_triangles)
        D3Term(self.damping, elements=(1,), **self.options)  # validate the options now
        self._term: D3Term | None = None
        self._elements: tuple[int, ...] = ()
        self._key = None
        self._spec = self._nbrs = self._graph = None

    @property
    def term(self) -> D3Term:
        """The energy term in use (rebuilt when the elements or capacities change)."""
        return self._term

    def _set_term(self, term: D3Term):
        self._term = term
        self._params = term.params()
        self._predict = jax.jit(make_predict([term.structure_energies], members=False))
        self._sizes = jax.jit(term.three_body_sizes)

    def _set_elements(self, elements: tuple[int, ...]):
        options = dict(self.options)
        if options["cn_cutoff"] is None and options["convention"] == "cp2k":
            options["cn_cutoff"] = cp2k_cn_cutoff(elements)
        self._elements = elements
        self._set_term(D3Term(self.damping, elements=elements, **options))
        self._spec = self._nbrs = self._graph = None

    def _update_graph(self, positions, cell, pbc, numbers):
        """(Re)build the neighbour rows when needed; sort them so the CN reads few columns."""
        term = self._term
        if self._nbrs is None:  # keep the previous row capacity: similar frames share compiled code
            keep = self._spec.capacity if self._spec is not None and self._spec.pbc == pbc else 0
            self._spec, self._nbrs = neighbors.allocate(positions, cell, pbc, term.list_cutoff, self.skin,
                                                        min_capacity=keep)
        elif self._moved_beyond_skin(positions, cell):
            build = getattr(neighbors, "build_host", neighbors.build)
            self._nbrs = build(self._spec, positions, cell)
            if bool(self._nbrs.overflow):
                self._spec, self._nbrs = neighbors.reallocate(self._spec, self._nbrs, positions, cell)
        else:
            return self._graph._replace(positions=jnp.asarray(positions), cells=jnp.asarray(cell)[None])
        shifts, mask = np.asarray(self._nbrs.shifts), np.asarray(self._nbrs.mask)
        self._built = (positions.copy(), cell.copy(), float(np.max(np.abs(shifts).sum(-1) * mask, initial=0.0)))
        self._graph, short = sorted_rows(positions, cell, numbers, self._nbrs, term.cn_cutoff + self.skin)
        if term.cn_columns is None or short > term.cn_columns:
            self._set_term(term.replace(cn_columns=_round_up(int(1.2 * short) + 1, 8)))
        return self._graph

    def _moved_beyond_skin(self, positions, cell) -> bool:
        """The criterion of :func:`lotf.potential.neighbors.needs_rebuild`, on the host with the
        list's largest image shift cached at build time (the list itself stays untouched)."""
        ref_positions, ref_cell, max_shift = self._built
        disp = np.sqrt(np.max(np.sum((positions - ref_positions) ** 2, axis=-1)))
        dcell = np.max(np.linalg.norm(cell - ref_cell, axis=-1))
        return bool(2.0 * disp + max_shift * dcell > self.skin)

    # -- ASE -----------------------------------------------------------------------------------

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        numbers = atoms.get_atomic_numbers()
        if len(numbers) == 0:
            raise ValueError("D3Calculator: the structure has no atoms")
        check_elements(numbers)
        positions = np.asarray(atoms.positions, dtype=float)
        if not np.all(np.isfinite(positions)):
            raise ValueError("D3Calculator: the structure has non-finite positions")
        pbc = tuple(bool(p) for p in atoms.pbc)
        cell = np.asarray(atoms.cell.array, dtype=float) if any(pbc) else np.zeros((3, 3))
        if any(pbc) and abs(np.linalg.det(cell)) < 1e-8:
            raise ValueError("D3Calculator: periodic structure has a zero-volume cell")
        elements = tuple(sorted({int(z) for z in numbers}))
        if self._term is None or elements != self._elements:
            self._set_elements(elements)
        key = (pbc, numbers.tobytes())
        if key != self._key:  # another system: allocate a new list
            self._nbrs = self._graph = None
            self._key = key
        graph = self._update_graph(positions, cell, pbc, numbers)
        if self._term.three_body:
            legs, triangles = (int(x) for x in self._sizes(graph))
            if triangles > self.max_triangles:
                raise ValueError(f"D3Calculator: {triangles} triangles within three_body_cutoff "
                                 f"{self._term.three_body_cutoff:.3g} A exceed max_triangles={self.max_triangles}; "
                                 "choose a shorter three_body_cutoff (e.g. 7 A)")
            if legs > self._term.max_legs or triangles > self._term.max_triplets:
                self._set_term(self._term.with_capacity(_grow(legs), _grow(triangles)))
        out = self._predict([self._params], [graph])
        energy = float(out["energy"][0])
        self.results = {"energy": energy, "free_energy": energy, "forces": np.asarray(out["forces"])}
        if all(pbc):
            stress = np.asarray(out["stress"][0])
            self.results["stress"] = np.array([stress[a, b] for a, b in VOIGT])


def _round_up(n: int, multiple: int) -> int:
    return -(-max(n, 1) // multiple) * multiple


def _grow(n: int) -> int:
    return int(max(1024, 1.25 * n + 1) // 1024 + 1) * 1024


def recompute_labels(frames: Sequence[Atoms], calculator: D3Calculator, mode: str = "add") -> list[Atoms]:
    """Copies of ``frames`` with the D3 energy, forces and stress added to (or removed from) their labels.

    Every frame needs a calculator with at least an energy (DFT labels); forces and stress are
    shifted when present (stress only for periodic frames). The copies carry a
    SinglePointCalculator with the new labels; info and arrays are kept.
    """
    if mode not in ("add", "remove"):
        raise ValueError(f"recompute D3: 'mode' must be 'add' or 'remove' (got {mode!r})")
    sign = 1.0 if mode == "add" else -1.0
    for index, atoms in enumerate(frames):
        if atoms.calc is None or "energy" not in atoms.calc.results:
            raise ValueError(f"recompute D3: frame {index} has no energy label")
    out = []
    for atoms in frames:
        labels = dict(atoms.calc.results)
        new = atoms.copy()
        d3 = atoms.copy()
        d3.calc = calculator
        results = {"energy": labels["energy"] + sign * d3.get_potential_energy()}
        if "free_energy" in labels:
            results["free_energy"] = labels["free_energy"] + sign * d3.get_potential_energy()
        if "forces" in labels:
            results["forces"] = np.asarray(labels["forces"]) + sign * d3.get_forces()
        if "stress" in labels and all(atoms.pbc):
            stress = np.asarray(labels["stress"], dtype=float)
            d3_stress = d3.get_stress(voigt=stress.shape == (6,))
            results["stress"] = stress + sign * d3_stress
        for key, value in labels.items():
            results.setdefault(key, value)
        new.calc = SinglePointCalculator(new, **results)
        out.append(new)
    return out


D3_TERM_OPTIONS = ("functional", "cutoff", "cn_cutoff", "convention", "short_range_correction", "parameter_file")


def d3_energy_term(elements: Sequence[int], functional: str | BJParams = "b97-3c", cutoff: float = 20.0,
                   **options):
    """D3(BJ) two-body dispersion as an :class:`~lotf.potential.calculator.EnergyTerm` (hybrid MLP+D3).

    The same numbers as :class:`D3Calculator` with these options (``cn_cutoff``, ``convention``,
    ``short_range_correction``, ``parameter_file``), for the elements listed. The term takes the
    MD's unsorted neighbour rows as they are, and a second, short list for the coordination
    numbers (``short_cutoff`` = ``cn_cutoff``, 5.2 A with CP2K's convention: MD and
    :class:`~lotf.potential.calculator.LotfCalculator` hand it the MLP's list). The three-body term is not offered
    here: it needs fixed triangle capacities, which MD cannot know in advance.
    """
    from lotf.potential.calculator import EnergyTerm

    if options.pop("three_body", False):
        raise ValueError("d3: the three-body term is not available in MD (use three_body: false)")
    unknown = set(options) - set(D3_TERM_OPTIONS)
    if unknown:
        raise ValueError(f"d3: unknown option '{sorted(unknown)[0]}' (known: {', '.join(D3_TERM_OPTIONS)})")
    elements = tuple(sorted({int(z) for z in elements}))
    check_elements(elements, " (d3)")
    term = D3Term(damping_parameters(functional), cutoff=float(cutoff), elements=elements, **options)
    # the coordination numbers read a short list (in MD the MLP's) instead of searching the long one
    short = term.cn_cutoff if term.cn_cutoff < term.cutoff else None
    return EnergyTerm(fn=term.structure_energies, params=term.params(), cutoff=term.list_cutoff, short_cutoff=short)
