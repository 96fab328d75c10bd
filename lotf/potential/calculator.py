"""ASE calculator: a thin adapter over energy terms and :func:`make_predict`.

The calculator keeps a padded neighbour list per term with a skin and rebuilds it only when
some atom moved more than half the skin, so MD through ASE neither rebuilds nor recompiles
every step. Extra terms (D3, biases) are added with ``extra_terms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators import calculator as ase_calculator
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from lotf.potential import neighbors
from lotf.potential.model import Graph, Model, species_index
from lotf.potential.predict import WithShortList, make_predict

# register the ensemble results so ASE (e.g. the extxyz writer) treats them as properties
for _name in ("energy_uncertainty", "forces_uncertainty", "energy_ensemble", "forces_ensemble"):
    if _name not in ase_calculator.all_properties:
        ase_calculator.all_properties.append(_name)


@dataclass
class EnergyTerm:
    """An energy function with its parameters and the neighbour-list cutoff it needs.

    A term with a ``short_cutoff`` also reads a second, shorter list: ``fn`` then gets a
    :class:`~lotf.potential.predict.WithShortList`. That list may be any list reaching at least
    ``short_cutoff``, e.g. the MLP's (D3's coordination numbers within 5.2 A of its 20 A).
    """

    fn: Callable  # fn(params, graph) -> (B,) or (B, M)
    params: Any
    cutoff: float
    short_cutoff: float | None = None

    @property
    def cutoffs(self) -> tuple[float, ...]:
        return (float(self.cutoff),) if self.short_cutoff is None else (float(self.cutoff), float(self.short_cutoff))


def list_index(list_cutoffs: list[float], cutoff: float, at_least: bool = False) -> int:
    """Index in ``list_cutoffs`` of the list with this cutoff, appended if missing; with
    ``at_least``, the shortest existing list reaching ``cutoff`` will do."""
    cutoff = float(cutoff)
    if at_least:
        bigger = [(c, i) for i, c in enumerate(list_cutoffs) if c >= cutoff]
        if bigger:
            return min(bigger)[1]
    for i, c in enumerate(list_cutoffs):
        if abs(c - cutoff) < 1e-12:
            return i
    list_cutoffs.append(cutoff)
    return len(list_cutoffs) - 1


def term_list_indices(terms: Sequence[EnergyTerm], list_cutoffs: list[float]) -> list[int | tuple[int, int]]:
    """Per term, the index of its list in ``list_cutoffs`` (filled in), or (own, short) indices.

    Own lists first, so that a short list can be another term's (the MLP's) list."""
    own = [list_index(list_cutoffs, t.cutoff) for t in terms]
    return [i if t.short_cutoff is None else (i, list_index(list_cutoffs, t.short_cutoff, at_least=True))
            for i, t in zip(own, terms)]


def per_term(items: Sequence, indices: Sequence[int | tuple[int, int]]) -> list:
    """``items`` (one per list) arranged per term: a :class:`WithShortList` for a term with two lists."""
    return [items[i] if isinstance(i, int) else WithShortList(items[i[0]], items[i[1]]) for i in indices]


class TermNeighbors:
    """Host-side neighbour list state of one term for one system (reused between calls)."""

    def __init__(self, cutoff: float, skin: float):
        self.cutoff = cutoff
        self.skin = skin
        self.spec: neighbors.NeighborSpec | None = None
        self.nbrs: neighbors.Neighbors | None = None
        self.key = None

    def update(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, key) -> neighbors.Neighbors:
        if self.spec is None or key != self.key:
            self.spec, nbrs = neighbors.allocate(positions, cell, pbc, self.cutoff, self.skin)
            self.key = key
            return self._keep(nbrs)
        if self._moved_too_far(positions, cell):
            nbrs = neighbors.build_host(self.spec, positions, cell)
            if bool(nbrs.overflow):
                self.spec, nbrs = neighbors.reallocate(self.spec, nbrs, positions, cell)
            self._keep(nbrs)
        return self.nbrs

    def _keep(self, nbrs: neighbors.Neighbors) -> neighbors.Neighbors:
        self.nbrs = nbrs
        self.max_shift = float((np.abs(nbrs.shifts).sum(-1) * nbrs.mask).max(initial=0.0))
        return nbrs

    def _moved_too_far(self, positions: np.ndarray, cell: np.ndarray) -> bool:
        """Host-side :func:`neighbors.needs_rebuild` with the largest image shift cached at build."""
        disp = np.sqrt(np.max(np.sum((positions - self.nbrs.reference_positions) ** 2, axis=-1)))
        dcell = np.max(np.linalg.norm(cell - self.nbrs.reference_cell, axis=-1))
        return bool(2.0 * disp + self.max_shift * dcell > self.skin)


class LotfCalculator(Calculator):
    """Energy, forces, stress and ensemble uncertainties of a sum of energy terms.

    Results follow DESIGN.md: ``energy``, ``forces``, ``stress`` (Voigt, ASE sign, periodic
    systems only), and with ``members=True`` also ``energy_uncertainty``,
    ``forces_uncertainty`` (per atom and component), ``energy_ensemble``, ``forces_ensemble``.
    """

    def __init__(self, terms: Sequence[EnergyTerm], species: tuple[int, ...], *, members: bool = True,
                 skin: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.terms = list(terms)
        self.species = tuple(species)
        self.members = members
        self.skin = skin
        self._predict = jax.jit(make_predict([t.fn for t in self.terms], members=members))
        cutoffs: list[float] = []
        self._term_lists = term_list_indices(self.terms, cutoffs)
        self._lists = [TermNeighbors(c, skin) for c in cutoffs]
        self.implemented_properties = ["energy", "free_energy", "forces", "stress"]
        if members:
            self.implemented_properties += ["energy_uncertainty", "forces_uncertainty", "energy_ensemble",
                                            "forces_ensemble"]

    def graphs(self, atoms) -> list[Graph | WithShortList]:
        numbers = atoms.get_atomic_numbers()
        spec_index = species_index(numbers, self.species)
        pbc = np.asarray(atoms.pbc, bool)
        if pbc.any() and not pbc.all():
            raise ValueError("mixed periodicity is not supported; use pbc=True or pbc=False")
        cell = atoms.cell.array.copy() if pbc.any() else np.zeros((3, 3))
        positions = atoms.positions
        n = len(atoms)
        key = (tuple(numbers), tuple(pbc))
        out = []
        for state in self._lists:
            nbrs = state.update(positions, cell, pbc, key)
            out.append(Graph(
                positions=jnp.asarray(positions), cells=jnp.asarray(cell)[None], species=jnp.asarray(spec_index),
                numbers=jnp.asarray(numbers, dtype=jnp.int32), atom_mask=jnp.ones(n, bool),
                structure=jnp.zeros(n, jnp.int32), neighbors=jnp.asarray(nbrs.idx),
                shifts=jnp.asarray(nbrs.shifts), pair_mask=jnp.asarray(nbrs.mask),
            ))
        return per_term(out, self._term_lists)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        graphs = self.graphs(self.atoms)
        out = jax.device_get(self._predict([t.params for t in self.terms], graphs))
        self.results = {"energy": float(out["energy"][0]), "forces": np.asarray(out["forces"])}
        self.results["free_energy"] = self.results["energy"]
        if self.atoms.pbc.all():
            self.results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(out["stress"][0]))
        if self.members:
            self.results["energy_uncertainty"] = float(out["energy_uncertainty"][0])
            self.results["forces_uncertainty"] = np.asarray(out["forces_uncertainty"])
            self.results["energy_ensemble"] = np.asarray(out["energy_ensemble"][0])
            self.results["forces_ensemble"] = np.asarray(out["forces_ensemble"])


def gmnn_term(model: Model, params) -> EnergyTerm:
    return EnergyTerm(fn=model.energy_term, params=params, cutoff=model.config.r_max)
