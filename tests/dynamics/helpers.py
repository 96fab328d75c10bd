"""Cheap analytic JAX energy terms and structures for the dynamics tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.build import bulk

from lotf.dynamics.potential import ForceField, JaxBase
from lotf.potential.calculator import EnergyTerm
from lotf.potential.descriptor import pair_geometry

# Argon-like Lennard-Jones
EPS, SIGMA, RC = 0.0104, 3.40, 7.0


def lj_pair(r, eps, sigma, rc):
    """Shifted-force LJ: energy and its derivative vanish at rc (smooth for NVE)."""
    def v(x):
        sr6 = (sigma / x) ** 6
        return 4.0 * eps * (sr6**2 - sr6)

    dv = jax.grad(v)
    return v(r) - v(rc) - (r - rc) * dv(rc)


def lj_energy_fn(members: tuple[float, ...] = (1.0,)):
    """Energy term (B, M): member m is LJ with ε scaled by members[m] (an artificial ensemble)."""
    scales = jnp.asarray(members)

    def fn(params, graph):
        eps, sigma, rc = params
        _, dist = pair_geometry(graph)
        within = graph.pair_mask & (dist < rc)
        safe = jnp.where(within, dist, rc)
        pair = jnp.where(within, lj_pair(safe, eps, sigma, rc), 0.0)  # (N, K)
        atom = 0.5 * jnp.sum(pair, axis=1) * graph.atom_mask
        e = jax.ops.segment_sum(atom, graph.structure, num_segments=graph.cells.shape[0])
        return e[:, None] * scales[None, :]

    return fn


def lj_forcefield(members=(1.0,), bias=None, eps=EPS, sigma=SIGMA, rc=RC) -> ForceField:
    term = EnergyTerm(lj_energy_fn(tuple(members)), (eps, sigma, rc), rc)
    return ForceField(JaxBase([term], species=(18,)), bias)


def nonlinear_ensemble_fn():
    """Two members with different *shapes* (LJ and a soft Gaussian-core pair), so member forces
    are not proportional (UDD forces then depend on all terms of the closed form)."""
    def fn(params, graph):
        eps, sigma, rc = params
        _, dist = pair_geometry(graph)
        within = graph.pair_mask & (dist < rc)
        safe = jnp.where(within, dist, rc)
        lj = jnp.where(within, lj_pair(safe, eps, sigma, rc), 0.0)
        soft = jnp.where(within, 0.02 * (jnp.exp(-((safe / 3.0) ** 2)) - jnp.exp(-((rc / 3.0) ** 2))), 0.0)
        per = jnp.stack([0.5 * jnp.sum(lj, 1), 0.5 * jnp.sum(lj + soft, 1), 0.5 * jnp.sum(0.9 * lj, 1)], axis=-1)
        per = per * graph.atom_mask[:, None]
        return jax.ops.segment_sum(per, graph.structure, num_segments=graph.cells.shape[0])

    return fn


def argon_fcc(repeat=3, a=5.26, seed=0, rattle=0.02) -> Atoms:
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def argon_liquid(n_side=3, density=1.3, seed=0) -> Atoms:
    """Argon at a liquid density (g/cm³) from an fcc lattice rattled strongly."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(n_side)
    mass = atoms.get_masses().sum()
    volume = mass / 0.60221408 / density
    atoms.set_cell(np.eye(3) * volume ** (1 / 3), scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


def neighbor_lists(ff: ForceField, atoms: Atoms, skin: float = 0.0) -> tuple:
    """Neighbour lists for every cutoff of a force field at ``atoms``."""
    from lotf.potential import neighbors

    pbc = tuple(bool(p) for p in atoms.pbc)
    cell = atoms.cell.array if any(pbc) else np.zeros((3, 3))
    out = []
    for cutoff in ff.list_cutoffs:
        _, nb = neighbors.allocate(atoms.positions, cell, pbc, cutoff, skin)
        out.append(jax.tree_util.tree_map(jnp.asarray, nb))
    return tuple(out)


class Evaluator:
    """Jitted force-field evaluation at many nearby configurations (same list capacity)."""

    def __init__(self, ff: ForceField, atoms: Atoms, need_stress: bool = False):
        from lotf.potential import neighbors

        ff.setup(atoms, need_stress=need_stress)
        self.ff = ff
        pbc = tuple(bool(p) for p in atoms.pbc)
        cell = atoms.cell.array if any(pbc) else np.zeros((3, 3))
        self.specs = [neighbors.allocate(atoms.positions, cell, pbc, c, 0.0, capacity_factor=1.5)[0]
                      for c in ff.list_cutoffs]
        self.fn = jax.jit(lambda r, c, nbrs, bias, full: ff(r, c, nbrs, bias, full), static_argnums=4)

    def lists(self, atoms: Atoms) -> tuple:
        from lotf.potential import neighbors

        cell = atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3))
        out = []
        for spec in self.specs:
            nb = neighbors.build_host(spec, atoms.positions, cell)
            assert not nb.overflow
            out.append(jax.tree_util.tree_map(jnp.asarray, nb))
        return tuple(out)

    def __call__(self, atoms: Atoms, bias_state=(), full: bool = True):
        cell = atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3))
        return self.fn(jnp.asarray(atoms.positions), jnp.asarray(cell), self.lists(atoms), bias_state, full)


def evaluate(ff: ForceField, atoms: Atoms, bias_state=(), full: bool = True, need_stress: bool = False):
    """One force-field evaluation at ``atoms``."""
    return Evaluator(ff, atoms, need_stress)(atoms, bias_state, full)


def strained_atoms(atoms: Atoms, strain: np.ndarray) -> Atoms:
    """Atoms with positions and cell multiplied by (I + ε) (row vectors), as in predict.strained."""
    out = atoms.copy()
    deform = np.eye(3) + strain
    out.positions = atoms.positions @ deform
    out.cell = atoms.cell.array @ deform
    return out


def descriptors_in_both_precisions(atoms, **erbs_options):
    """The ERBS descriptor of ``atoms`` with ``dtype`` float64 and float32: (g64, g32, ERBS64)."""
    from lotf.dynamics.biases import ERBS

    e64 = ERBS(dtype="float64", **erbs_options)
    ev = Evaluator(lj_forcefield(bias=e64), atoms)
    args = (jnp.asarray(atoms.positions), jnp.asarray(atoms.cell.array), ev.lists(atoms))
    g64 = np.asarray(jax.jit(ev.ff.erbs_descriptor)(*args))
    ff32 = lj_forcefield(bias=ERBS(dtype="float32", **erbs_options))
    ff32.setup(atoms, need_stress=False)
    return g64, np.asarray(jax.jit(ff32.erbs_descriptor)(*args)), e64
