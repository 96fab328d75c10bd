"""Checks evaluated on sampling steps; a failing check stops the run or resets it.

Every check is a small frozen dataclass with

* ``setup(atoms, forcefield) -> aux``: host-side preparation (e.g. the bond graph of the start
  structure); the MD loop closes over it as constants;
* ``value(state, aux, dof) -> scalar``: a jit-compatible measurement;
* ``passes(value) -> bool``: the acceptance rule.

Checks run on sampling steps, where the full ensemble prediction (member forces) is available.
Checks with ``needs_uncertainty`` are refused when the MD run is set up if the potential has no
ensemble (a one-member JAX model, an ASE calculator without ``energy_ensemble``/``forces_ensemble``
or ``forces_uncertainty``): σ would be 0 and the check could never fire.
What happens on a failure is decided by the MD loop (``on_trigger``): "stop" keeps the frames up
to the last accepted one and ends the run; "reset" restarts from the start structure with new
momenta and continues until the requested number of steps is done (seed 2's safe sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.data import covalent_radii, vdw_radii

from lotf.dynamics.state import MDState, density, temperature
from lotf.potential import neighbors


@dataclass(frozen=True)
class ForcesUncertaintyCheck:
    """Seed-1 eq. 8: max over atoms and components of the member-force standard deviation.

    Fails when it exceeds ``max_value`` (eV/Å; seed 1: 0.5). The standard deviation uses the
    model's ddof (1/M, as in eq. 8, for our models).
    """

    max_value: float = 0.5
    name: str = "forces_uncertainty"
    needs_uncertainty: bool = True

    def setup(self, atoms: Atoms, forcefield) -> Any:
        return ()

    def value(self, state: MDState, aux, dof: int) -> jax.Array:
        return jnp.max(state.pred.forces_uncertainty)

    def passes(self, value):
        return value <= self.max_value


@dataclass(frozen=True)
class EnergyUncertaintyCheck:
    """Ensemble energy standard deviation, per atom by default (eV or eV/atom)."""

    max_value: float = 0.05
    per_atom: bool = True
    name: str = "energy_uncertainty"
    needs_uncertainty: bool = True

    def setup(self, atoms: Atoms, forcefield) -> Any:
        return ()

    def value(self, state: MDState, aux, dof: int) -> jax.Array:
        sigma = state.pred.energy_uncertainty
        return sigma / state.positions.shape[0] if self.per_atom else sigma

    def passes(self, value):
        return value <= self.max_value


@dataclass(frozen=True)
class NaNCheck:
    """Fails when positions, momenta, energy or forces are not finite (value: 1 if so)."""

    name: str = "nan"
    needs_uncertainty: bool = False

    def setup(self, atoms: Atoms, forcefield) -> Any:
        return ()

    def value(self, state: MDState, aux, dof: int) -> jax.Array:
        finite = (jnp.all(jnp.isfinite(state.positions)) & jnp.all(jnp.isfinite(state.momenta))
                  & jnp.isfinite(state.pred.energy) & jnp.all(jnp.isfinite(state.pred.forces)))
        return jnp.where(finite, 0.0, 1.0)

    def passes(self, value):
        return value == 0


@dataclass(frozen=True)
class TemperatureCheck:
    """Instantaneous kinetic temperature within [min_value, max_value] K."""

    max_value: float = 10_000.0
    min_value: float = 0.0
    name: str = "temperature"
    needs_uncertainty: bool = False

    def setup(self, atoms: Atoms, forcefield) -> Any:
        return ()

    def value(self, state: MDState, aux, dof: int) -> jax.Array:
        return temperature(state.momenta, state.masses, dof)

    def passes(self, value):
        return (value >= self.min_value) & (value <= self.max_value)


@dataclass(frozen=True)
class DensityCheck:
    """Mass density within [min_value, max_value] g/cm³ (periodic systems)."""

    max_value: float = 10.0
    min_value: float = 0.0
    name: str = "density"
    needs_uncertainty: bool = False

    def setup(self, atoms: Atoms, forcefield) -> Any:
        if not atoms.pbc.all():
            raise ValueError("DensityCheck needs a periodic structure")
        return ()

    def value(self, state: MDState, aux, dof: int) -> jax.Array:
        return density(state.masses, state.cell)

    def passes(self, value):
        return (value >= self.min_value) & (value <= self.max_value)


@dataclass(frozen=True)
class BondGraphCheck:
    """Fails when the covalent bond graph differs from the start structure's.

    Bonds of the start structure: pairs closer than ``bond_factor`` × (r_cov,i + r_cov,j). Later a
    bond counts as broken beyond ``break_factor`` × the radii sum, and a new bond forms when a pair
    that was not bonded comes closer than ``form_factor`` × the radii sum (the gap between the
    factors is hysteresis against vibrations). With ``contact_factor`` a pair that was not bonded
    also counts as a new bond when it comes closer than ``contact_factor`` × (r_vdW,i + r_vdW,j): an
    intermolecular contact no liquid makes (BMIM-BF4 oracle: a cation H pushed to 1.3-1.4 Å from
    the B and F of an anion, ratio 0.44-0.51, labels of 270-640 eV/Å, passed the covalent test;
    the closest non-bonded pair of the 500 K classical seed sits at 0.60-0.63). At 0.55 no
    geminal (1-3) pair of BMIM+ or BF4- comes near it (H-C-H 1.78 Å against 1.32). The value is
    the number of changed bonds (each counted from both atoms). New bonds are found with the MD
    neighbour list; positions are kept unwrapped during MD, so the image shifts of the start
    bonds stay valid.
    """

    bond_factor: float = 1.2
    break_factor: float = 1.5
    form_factor: float = 1.0
    contact_factor: float | None = None
    name: str = "bond_graph"
    needs_uncertainty: bool = False

    def __post_init__(self):
        if not 0 < self.form_factor <= self.bond_factor <= self.break_factor:
            raise ValueError("BondGraphCheck needs 0 < form_factor <= bond_factor <= break_factor")
        if self.contact_factor is not None and not 0 < self.contact_factor < 1:
            raise ValueError(f"BondGraphCheck: contact_factor must be in (0, 1), got {self.contact_factor}")

    def setup(self, atoms: Atoms, forcefield) -> Any:
        radii = covalent_radii[atoms.get_atomic_numbers()]
        # per-atom half of the contact distance (0 without contact_factor: the covalent test decides)
        contact = vdw_radii[atoms.get_atomic_numbers()] * (self.contact_factor or 0.0)
        if not np.all(np.isfinite(contact)):
            raise ValueError("BondGraphCheck: contact_factor needs van der Waals radii of every element")
        pbc = np.asarray(atoms.pbc, bool)
        cell = atoms.cell.array if pbc.any() else np.zeros((3, 3))
        cutoff = self.bond_factor * 2.0 * radii.max()
        i, j, s = neighbors.find_pairs(atoms.positions, cell, pbc, cutoff)
        vec = atoms.positions[j] - atoms.positions[i] + s @ cell
        rsum = radii[i] + radii[j]
        keep = np.linalg.norm(vec, axis=1) < self.bond_factor * rsum
        i, j, s, rsum = i[keep], j[keep], s[keep].astype(float), rsum[keep]
        mask = np.ones(len(i), bool)
        if len(i) == 0:  # keep static shapes non-empty
            i, j, s, rsum, mask = np.zeros(1, int), np.zeros(1, int), np.zeros((1, 3)), np.ones(1), np.zeros(1, bool)
        list_index = forcefield.require_cutoff(2.0 * max(self.form_factor * radii.max(), contact.max()) + 1e-6,
                                               at_least=True)
        limit = np.maximum(self.form_factor * rsum, contact[i] + contact[j])  # start bonds: close_now's test
        return (list_index, jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32), jnp.asarray(s),
                jnp.asarray(rsum), jnp.asarray(mask), jnp.asarray(radii), jnp.asarray(contact), jnp.asarray(limit))

    def value(self, state: MDState, aux, dof: int) -> jax.Array:
        list_index, bi, bj, bs, rsum, bmask, radii, contact, limit = aux
        d_bond = jnp.linalg.norm(state.positions[bj] - state.positions[bi] + bs @ state.cell, axis=1)
        broken = jnp.sum(bmask & (d_bond > self.break_factor * rsum))
        init_close = jax.ops.segment_sum((bmask & (d_bond < limit)).astype(jnp.int32), bi,
                                         num_segments=state.positions.shape[0])
        nb = state.nbrs[list_index]
        vec = state.positions[nb.idx] - state.positions[:, None, :] + nb.shifts @ state.cell
        d = jnp.linalg.norm(vec, axis=-1)
        pair_limit = jnp.maximum(self.form_factor * (radii[:, None] + radii[nb.idx]),
                                 contact[:, None] + contact[nb.idx])
        close_now = jnp.sum(nb.mask & (d < pair_limit), axis=1)
        formed = jnp.sum(jnp.maximum(close_now - init_close, 0))
        return (broken + formed).astype(jnp.float64)

    def passes(self, value):
        return value == 0


CHECKS = {"forces_uncertainty": ForcesUncertaintyCheck, "energy_uncertainty": EnergyUncertaintyCheck,
          "nan": NaNCheck, "temperature": TemperatureCheck, "density": DensityCheck, "bond_graph": BondGraphCheck}


def from_dict(spec: dict):
    """A check from ``{"kind": "forces_uncertainty", "max_value": 0.5}``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in CHECKS:
        raise ValueError(f"check 'kind' must be one of {', '.join(CHECKS)}, got {kind!r}")
    try:
        return CHECKS[kind](**spec)
    except TypeError as err:
        raise ValueError(f"{kind} check: {err}") from None
