"""The force field the MD loop calls: a base potential plus an optional bias, as one function.

``ForceField(positions, cell, nbrs, bias_state, full) -> Prediction``. Two kinds of base:

* :class:`JaxBase`: JAX energy terms (GMNN ensemble, D3, ZBL, any ``EnergyTerm``) evaluated on
  graphs built from the MD neighbour lists. One forward pass gives the member energies E_m;
  a cheap step is one reverse pass (cotangent 1/M, or the UDD weights), a full step (sampling
  steps) is one reverse pass per member, giving member forces and the force uncertainty.
* :class:`AseBase`: any ASE calculator, reached from inside the jitted loop through
  ``jax.pure_callback`` (slower: one host round trip per step). Member energies and forces are
  taken from ``energy_ensemble``/``forces_ensemble`` when the calculator provides them, so UDD and
  the uncertainty checks work with it as well; ERBS is added in JAX on top of it.

Each base term and the ERBS descriptor get a neighbour list for their cutoff; terms with equal
cutoffs share one. The lists are carried in the MD state (rebuilt there when needed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from lotf.dynamics.biases import ERBS, UDD, bias_kind
from lotf.dynamics.state import Prediction
from lotf.potential.calculator import EnergyTerm, list_index, per_term, term_list_indices
from lotf.potential.model import Graph, species_index
from lotf.potential.predict import WithShortList, member_derivatives, summed_energy_fn


def make_graph(positions: jax.Array, cell: jax.Array, species: jax.Array, numbers: jax.Array, nbrs) -> Graph:
    """A one-structure graph from MD arrays and a neighbour list."""
    n = positions.shape[0]
    return Graph(positions=positions, cells=cell[None], species=species, numbers=numbers,
                 atom_mask=jnp.ones(n, bool), structure=jnp.zeros(n, jnp.int32), neighbors=nbrs.idx,
                 shifts=nbrs.shifts, pair_mask=nbrs.mask)


class JaxBase:
    """Base potential from JAX energy terms (``EnergyTerm(fn, params, cutoff)``)."""

    def __init__(self, terms: Sequence[EnergyTerm], species: tuple[int, ...], ddof: int = 0):
        if not terms:
            raise ValueError("the force field needs at least one energy term")
        self.terms = list(terms)
        self.species = tuple(species)
        self.ddof = int(ddof)
        self._energy = summed_energy_fn([t.fn for t in self.terms])
        self.cutoffs = tuple(t.cutoffs for t in self.terms)  # per term: (own,) or (own, short)

    @classmethod
    def from_model_dir(cls, directory, extra_terms: Sequence[EnergyTerm] = ()) -> "JaxBase":
        from lotf.potential.calculator import gmnn_term
        from lotf.potential.io import load_model

        model, params, _ = load_model(directory)
        return cls([gmnn_term(model, params), *extra_terms], model.config.species)  # spread with 1/M, as the models

    def setup(self, atoms: Atoms) -> None:
        numbers = atoms.get_atomic_numbers()
        self.numbers = jnp.asarray(numbers, jnp.int32)
        self.species_idx = jnp.asarray(species_index(numbers, self.species, " (MD start structure)"))

    def _graphs(self, positions, cell, nbrs_per_term) -> list:
        def graph(nb):
            if isinstance(nb, WithShortList):
                return WithShortList(graph(nb.graph), graph(nb.short))
            return make_graph(positions, cell, self.species_idx, self.numbers, nb)

        return [graph(nb) for nb in nbrs_per_term]

    def member_energies(self, positions, cell, nbrs_per_term, virial: bool = True):
        """(E_m (M,), vjp) with vjp(cotangent (M,)) -> (d/dpositions, d/dstrain (3, 3)).

        ``nbrs_per_term``: each term's list, or a :class:`WithShortList` of its two lists
        (:meth:`ForceField.term_neighbors`). With ``virial`` False the strain is not
        differentiated (cheaper) and d/dstrain is zero.
        """
        graphs = self._graphs(positions, cell, nbrs_per_term)
        params = [t.params for t in self.terms]
        zero = jnp.zeros((3, 3), positions.dtype)

        def energy(r, strain):
            return self._energy(params, r, strain[None], graphs)[0]

        if virial:
            return jax.vjp(energy, positions, zero)
        e, vjp_pos = jax.vjp(lambda r: energy(r, zero), positions)
        return e, lambda ct: (vjp_pos(ct)[0], zero)


    def member_derivatives(self, positions, cell, nbrs_per_term, virial: bool = True):
        """(E_m (M,), dE_m/dpositions (M, N, 3), dE_m/dstrain (M, 3, 3)); full ensembles cost K
        single-model passes (:func:`lotf.potential.predict.member_derivatives`)."""
        graphs = self._graphs(positions, cell, nbrs_per_term)
        e, d_pos, d_strain = member_derivatives([t.fn for t in self.terms], [t.params for t in self.terms],
                                                positions, jnp.zeros((1, 3, 3), positions.dtype), graphs,
                                                virial=virial)
        return e[0], d_pos, d_strain[:, 0]


class AseBase:
    """Base potential from an ASE calculator, called through ``jax.pure_callback``.

    Attributes:
        calc: the calculator; ``energy``/``forces`` are required, ``stress`` for NPT, and
            ``energy_ensemble`` + ``forces_ensemble`` (or ``*_uncertainty``) for UDD and the
            uncertainty checks.
    """

    cutoffs: tuple[float, ...] = ()

    def __init__(self, calc, ddof: int = 0):
        self.calc = calc
        self.ddof = int(ddof)
        self.n_members = 1
        self.has_stress = False

    def setup(self, atoms: Atoms, need_stress: bool) -> None:
        self.atoms = atoms.copy()
        self.atoms.calc = self.calc
        self.need_stress = need_stress
        self.atoms.get_potential_energy()
        results = self.calc.results
        ens = results.get("energy_ensemble")
        self.n_members = int(np.size(ens)) if ens is not None and "forces_ensemble" in results else 1
        # a one-member "ensemble" (e.g. a lotf calculator of a single model) reports σ = 0
        one_member = ens is not None and np.size(ens) < 2
        self.has_uncertainty = self.n_members > 1 or ("forces_uncertainty" in results and not one_member)
        if need_stress:
            try:
                self.atoms.get_stress()
            except Exception as err:  # noqa: BLE001 - any failure means: no stress
                raise ValueError(f"the ASE calculator {type(self.calc).__name__} gives no stress, needed for NPT ({err})") from err

    def _host(self, positions, cell):
        atoms = self.atoms
        atoms.positions = np.asarray(positions)
        if atoms.pbc.any():
            atoms.cell = np.asarray(cell)
        n = len(atoms)
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), np.float64)
        virial = np.zeros((3, 3))
        if self.need_stress:
            virial = voigt_6_to_full_3x3_stress(np.asarray(atoms.get_stress())) * atoms.get_volume()
        res = self.calc.results
        if self.n_members > 1:
            e_m = np.asarray(res["energy_ensemble"], np.float64).reshape(self.n_members)
            f_m = np.moveaxis(np.asarray(res["forces_ensemble"], np.float64).reshape(n, 3, self.n_members), -1, 0)
        else:
            e_m = np.array([energy])
            f_m = forces[None]
        e_unc = np.float64(res.get("energy_uncertainty", 0.0))
        f_unc = np.asarray(res.get("forces_uncertainty", np.zeros((n, 3))), np.float64).reshape(n, 3)
        return (np.float64(energy), forces, virial, e_m, f_m, e_unc, f_unc)

    def evaluate(self, positions, cell):
        n, m = positions.shape[0], self.n_members
        f64 = jnp.float64
        shapes = (jax.ShapeDtypeStruct((), f64), jax.ShapeDtypeStruct((n, 3), f64), jax.ShapeDtypeStruct((3, 3), f64),
                  jax.ShapeDtypeStruct((m,), f64), jax.ShapeDtypeStruct((m, n, 3), f64),
                  jax.ShapeDtypeStruct((), f64), jax.ShapeDtypeStruct((n, 3), f64))
        return jax.pure_callback(self._host, shapes, positions, cell)


@dataclass
class ForceField:
    """Base potential + bias; knows which neighbour list each part uses.

    ``list_cutoffs`` are the distinct cutoffs (the MD keeps one list per entry); extra cutoffs
    (e.g. for a bond-graph check) can be requested with ``require_cutoff``.
    """

    base: JaxBase | AseBase
    bias: UDD | ERBS | None = None
    list_cutoffs: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.kind = bias_kind(self.bias)
        if self.kind == "erbs" and self.bias.r_max is None:  # share the first term's (the MLP's) list
            r_max = self.base.cutoffs[0][0] if self.base.cutoffs else 6.0
            self.bias = dataclasses.replace(self.bias, r_max=r_max)
        self.term_lists = term_list_indices(self.base.terms, self.list_cutoffs) if not self.is_ase else []
        self.bias_list = self.require_cutoff(self.bias.r_max) if self.kind == "erbs" else None

    def require_cutoff(self, cutoff: float, at_least: bool = False) -> int:
        """Index of the list with this cutoff (or, with ``at_least``, the smallest list ≥ it)."""
        return list_index(self.list_cutoffs, cutoff, at_least)

    def term_neighbors(self, nbrs: tuple) -> list:
        """The MD's lists arranged per base term (a :class:`WithShortList` for a term with two)."""
        return per_term(nbrs, self.term_lists)

    @property
    def is_ase(self) -> bool:
        return isinstance(self.base, AseBase)

    def setup(self, atoms: Atoms, need_stress: bool) -> None:
        if self.is_ase:
            self.base.setup(atoms, need_stress)
        else:
            self.base.setup(atoms)
        self.n_atoms = len(atoms)
        self.numbers = jnp.asarray(atoms.get_atomic_numbers(), jnp.int32)

    # -- the bias that depends on positions (ERBS) ----------------------------------------------
    def erbs_graph(self, positions, cell, nbrs) -> Graph:
        n = positions.shape[0]
        return make_graph(positions, cell, jnp.zeros(n, jnp.int32), self.numbers, nbrs[self.bias_list])

    def erbs_descriptor(self, positions, cell, nbrs) -> jax.Array:
        return self.bias.descriptor(self.erbs_graph(positions, cell, nbrs))

    def _erbs(self, positions, cell, nbrs, bias_state, virial: bool = True):
        from lotf.potential.predict import strained

        def energy(r, strain):
            g = strained(self.erbs_graph(r, cell, nbrs), strain[None])
            return self.bias.energy(bias_state, g, self.n_atoms)

        zero = jnp.zeros((3, 3))
        if not virial:
            v, g_pos = jax.value_and_grad(lambda r: energy(r, zero))(positions)
            return v, -g_pos, zero
        v, (g_pos, g_strain) = jax.value_and_grad(energy, argnums=(0, 1))(positions, zero)
        return v, -g_pos, g_strain

    # -- the full evaluation ------------------------------------------------------------------
    def __call__(self, positions, cell, nbrs: tuple, bias_state: Any, full: bool, need_virial: bool = True) -> Prediction:
        """Energy, forces, virial (totals), the bias parts and, if ``full``, the uncertainties.

        ``need_virial`` False skips the strain derivative (the virial is then zero): the MD loop does
        that on the steps between frames when no barostat needs it.
        """
        n = positions.shape[0]
        zeros_f, zeros_v = jnp.zeros((n, 3)), jnp.zeros((3, 3))
        ddof = self.base.ddof

        if self.is_ase:
            energy, forces, virial, e_m, f_m, e_unc, f_unc = self.base.evaluate(positions, cell)
            if e_m.shape[0] > 1:
                e_unc = jnp.std(e_m, ddof=ddof)
                f_unc = jnp.std(f_m, axis=0, ddof=ddof)
            e_bias, f_bias, v_bias = jnp.zeros(()), zeros_f, zeros_v
            if self.kind == "udd":
                e_bias, c = self.bias.energy_and_weights(e_m, n)
                f_bias = jnp.einsum("m,mna->na", c, f_m)  # closed form; ASE gives no member stresses
            energy, forces, virial = energy + e_bias, forces + f_bias, virial + v_bias
        else:
            term_nbrs = self.term_neighbors(nbrs)
            if full:  # member forces (cost: see predict.py), uncertainty, UDD in closed form
                e_m, d_pos, d_strain = self.base.member_derivatives(positions, cell, term_nbrs, need_virial)
            else:
                e_m, vjp = self.base.member_energies(positions, cell, term_nbrs, need_virial)
            m = e_m.shape[0]
            e_unc = jnp.std(e_m, ddof=ddof) if m > 1 else jnp.zeros(())
            e_bias, c = self.bias.energy_and_weights(e_m, n) if self.kind == "udd" else (jnp.zeros(()), jnp.zeros(m))
            energy = jnp.mean(e_m) + e_bias
            if full:
                f_m, v_m = -d_pos, d_strain  # (M, N, 3), (M, 3, 3)
                f_unc = jnp.std(f_m, axis=0, ddof=ddof) if m > 1 else zeros_f
                f_bias = jnp.einsum("m,mna->na", c, f_m)
                v_bias = jnp.einsum("m,mab->ab", c, v_m)
                forces = jnp.mean(f_m, axis=0) + f_bias
                virial = jnp.mean(v_m, axis=0) + v_bias
            else:  # one reverse pass with cotangent 1/M + c_m: mean force plus the UDD force
                g_pos, g_strain = vjp(jnp.full(m, 1.0 / m) + c)
                forces, virial = -g_pos, g_strain
                f_unc, f_bias = zeros_f, zeros_f

        if self.kind == "erbs":
            v, f_b, v_b = self._erbs(positions, cell, nbrs, bias_state, need_virial)
            energy, forces, virial = energy + v, forces + f_b, virial + v_b
            e_bias, f_bias = v, f_b
        return Prediction(energy, forces, virial, e_bias, f_bias, e_unc, f_unc)
