"""The MD state and the small physical helpers every integrator shares.

Units are ASE's: positions in Å, masses in amu, energies in eV, momenta in amu·Å/t_ASE where
t_ASE = Å·sqrt(amu/eV) ≈ 10.18 fs (so ``p**2 / 2m`` is in eV and frames can hand momenta to
``Atoms.set_momenta`` unchanged). Time steps are given in fs and multiplied by ``ase.units.fs``
once, at the boundary. The cell holds lattice vectors as rows (ASE convention).

Everything here is a pure function of arrays, so it runs inside jitted loops.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

AMU_PER_A3_TO_G_PER_CM3 = units._amu * 1e27  # amu/Å³ -> g/cm³ (1 amu = _amu kg, 1 Å³ = 1e-24 cm³)
EV_PER_A3_TO_BAR = 1.0 / units.bar  # eV/Å^3 -> bar


class Prediction(NamedTuple):
    """What one force evaluation returns (all float64).

    ``energy``/``forces``/``virial`` are totals (base potential + bias). ``virial`` is
    dE/dε for a symmetric strain ε (ASE stress times volume). The uncertainties are valid
    only on "full" evaluations (sampling steps); elsewhere they are zero.
    """

    energy: jax.Array  # ()
    forces: jax.Array  # (N, 3)
    virial: jax.Array  # (3, 3)
    energy_bias: jax.Array  # ()
    forces_bias: jax.Array  # (N, 3)
    energy_uncertainty: jax.Array  # ()
    forces_uncertainty: jax.Array  # (N, 3)


class ThermostatState(NamedTuple):
    """Extended variables of a Nosé–Hoover chain (zeros, unused, for the other integrators)."""

    xi: jax.Array  # (L,) chain positions
    p_xi: jax.Array  # (L,) chain momenta


class MDState(NamedTuple):
    """Everything that changes during a run. A pytree, carried through ``lax.scan``."""

    positions: jax.Array  # (N, 3) unwrapped Cartesian positions
    momenta: jax.Array  # (N, 3)
    masses: jax.Array  # (N,)
    cell: jax.Array  # (3, 3) rows are lattice vectors
    pred: Prediction  # at the current positions and cell
    nbrs: tuple  # one lotf.potential.neighbors.Neighbors per cutoff the potential needs
    bias: Any  # bias state (ERBS kernels), () when there is none
    thermostat: ThermostatState
    key: jax.Array  # PRNG key for stochastic integrators and resets


def kinetic_energy(momenta: jax.Array, masses: jax.Array) -> jax.Array:
    return 0.5 * jnp.sum(momenta**2 / masses[:, None])


def kinetic_tensor(momenta: jax.Array, masses: jax.Array) -> jax.Array:
    """Σ_i p_i ⊗ p_i / m_i (twice the kinetic energy tensor), (3, 3)."""
    return jnp.einsum("na,nb->ab", momenta / masses[:, None], momenta)


def temperature(momenta: jax.Array, masses: jax.Array, dof: int) -> jax.Array:
    """Instantaneous kinetic temperature in K for ``dof`` degrees of freedom."""
    return 2.0 * kinetic_energy(momenta, masses) / (dof * units.kB)


def volume(cell: jax.Array) -> jax.Array:
    return jnp.abs(jnp.linalg.det(cell))


def pressure_tensor(state: MDState) -> jax.Array:
    """Instantaneous pressure tensor in eV/Å³, kinetic plus virial: (Σ p⊗p/m − dE/dε) / V."""
    vol = volume(state.cell)
    return (kinetic_tensor(state.momenta, state.masses) - state.pred.virial) / vol


def pressure(state: MDState) -> jax.Array:
    """Instantaneous scalar pressure in eV/Å³ (positive = the system pushes outwards)."""
    return jnp.trace(pressure_tensor(state)) / 3.0


def density(masses: jax.Array, cell: jax.Array) -> jax.Array:
    """Mass density in g/cm³."""
    return jnp.sum(masses) / volume(cell) * AMU_PER_A3_TO_G_PER_CM3


def degrees_of_freedom(n_atoms: int, remove_com: bool) -> int:
    """3N, or 3N − 3 when the centre-of-mass momentum is zero and conserved."""
    return max(3 * n_atoms - (3 if remove_com and n_atoms > 1 else 0), 1)


def remove_com_momentum(momenta: jax.Array, masses: jax.Array) -> jax.Array:
    """Momenta with the centre-of-mass momentum subtracted (each atom in proportion to its mass)."""
    if masses.shape[0] < 2:
        return momenta
    return momenta - masses[:, None] * (jnp.sum(momenta, axis=0) / jnp.sum(masses))


def maxwell_boltzmann(key: jax.Array, masses: jax.Array, kT: float | jax.Array, remove_com: bool) -> jax.Array:
    """Momenta drawn from the Maxwell–Boltzmann distribution at kT (eV).

    With ``remove_com`` the centre-of-mass momentum is subtracted (3 fewer degrees of freedom);
    momenta are not rescaled to the exact target temperature, so the start is a proper sample.
    """
    p = jax.random.normal(key, (masses.shape[0], 3), dtype=jnp.float64) * jnp.sqrt(masses * kT)[:, None]
    return remove_com_momentum(p, masses) if remove_com else p


def fs_to_ase(t_fs: float) -> float:
    """A time in fs in ASE time units."""
    return float(t_fs) * units.fs


def kelvin_to_ev(t_k: float | jax.Array) -> float | jax.Array:
    return t_k * units.kB


def bar_to_ev_per_a3(p_bar: float | jax.Array) -> float | jax.Array:
    return p_bar * units.bar


def as_numpy_state(state: MDState) -> MDState:
    """Device arrays to numpy (host copies), e.g. to keep a block's start state."""
    return jax.tree_util.tree_map(np.asarray, state)
