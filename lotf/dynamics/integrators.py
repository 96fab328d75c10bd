"""Integrators, thermostats and barostats as pure ``init``/``step`` functions of an :class:`MDState`.

``step(state, force, kT, pressure) -> state`` advances one time step. ``force(state) -> state``
re-evaluates ``state.pred`` at the state's positions and cell (the MD loop supplies it; it also
rebuilds neighbour lists when needed). ``kT`` (eV) and ``pressure`` (eV/Å³) are the current
targets, so modifiers can change them every step without recompiling.

Available:

* :class:`VelocityVerlet` – NVE.
* :class:`Langevin` – BAOAB splitting (Leimkuhler & Matthews), exact Ornstein–Uhlenbeck step.
* :class:`Berendsen` – weak-coupling velocity rescaling (seed 2 uses τ = 500 fs); mean temperature
  is right, fluctuations are too small (not canonical).
* :class:`NoseHooverChain` – NVT with a Nosé–Hoover chain (Martyna, Klein, Tuckerman 1992),
  Trotter-factorised with Suzuki–Yoshida weights; every option (τ, chain length, substeps,
  SY order) is honoured (the reference ignores them, notes §4.3).
* :class:`Bussi` – stochastic velocity rescaling (CSVR, Bussi, Donadio, Parrinello 2007).
* :class:`StochasticCellRescaling` – NPT barostat wrapping any of the thermostats above.

Why stochastic cell rescaling for NPT (Bernetti & Bussi 2020; anisotropic variant Del Tatto,
Raiteri, Bernetti & Bussi 2022): it is first order (no barostat mass, so no slow volume
oscillations or blow-ups when an uncertain model starts far from equilibrium, which is the common
case in learning on the fly), yet it samples the isothermal–isobaric ensemble correctly because
of its noise term (unlike Berendsen). It composes with any thermostat, and the fully flexible
variant only adds a symmetric traceless deformation, so both cell modes share one code path.
We write it as an overdamped Langevin equation for λ = √V (additive noise) plus, for flexible
cells, for the deviatoric strain:

    dλ = −(β_T λ / 2τ_p) (P₀ − P_int − k_BT/(2V)) dt + sqrt(k_BT β_T / (2τ_p)) dW
    dε_dev = (β_T / 3τ_p) dev(P_int) dt + sqrt(2 k_BT β_T / (3 τ_p V)) dW_dev

(P_int: instantaneous pressure with the kinetic part; dW_dev: symmetric traceless Wiener matrix
with unit variance per independent component). The cell, positions and momenta are then mapped
with the symmetric deformation μ (rows: h ← h μ, r ← r μ, p ← p μ⁻¹), so no rotation is
introduced. The stationary volume distribution is ∝ exp(−β(F(V) + P₀V)), so ⟨P_int⟩ = P₀.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
from ase import units

from lotf.dynamics.state import MDState, ThermostatState, kinetic_energy, pressure_tensor, volume

ForceFn = Callable[[MDState], MDState]


def _kick(state: MDState, dt: float) -> MDState:
    return state._replace(momenta=state.momenta + dt * state.pred.forces)


def _drift(state: MDState, dt: float) -> MDState:
    return state._replace(positions=state.positions + dt * state.momenta / state.masses[:, None])


def _velocity_verlet(state: MDState, force: ForceFn, dt: float) -> MDState:
    state = _drift(_kick(state, 0.5 * dt), dt)
    return _kick(force(state), 0.5 * dt)


@dataclass(frozen=True)
class VelocityVerlet:
    """NVE velocity Verlet. ``timestep`` in fs."""

    timestep: float = 0.5
    remove_com: bool = True
    chain_length: int = 1

    @property
    def dt(self) -> float:
        return self.timestep * units.fs

    def init(self, state: MDState, kT) -> MDState:
        return state

    def step(self, state: MDState, force: ForceFn, kT, pressure) -> MDState:
        return _velocity_verlet(state, force, self.dt)


@dataclass(frozen=True)
class Langevin:
    """Langevin dynamics (BAOAB). ``friction`` γ in 1/fs (0.01/fs = 100 fs relaxation)."""

    timestep: float = 0.5
    friction: float = 0.01
    remove_com: bool = False  # the noise does not conserve total momentum: 3N degrees of freedom
    chain_length: int = 1

    def __post_init__(self):
        if not self.friction > 0:
            raise ValueError(f"Langevin 'friction' must be > 0 (1/fs), got {self.friction}")

    @property
    def dt(self) -> float:
        return self.timestep * units.fs

    def init(self, state: MDState, kT) -> MDState:
        return state

    def step(self, state: MDState, force: ForceFn, kT, pressure) -> MDState:
        dt = self.dt
        c1 = jnp.exp(-self.friction * self.timestep)
        state = _drift(_kick(state, 0.5 * dt), 0.5 * dt)
        key, sub = jax.random.split(state.key)
        noise = jax.random.normal(sub, state.momenta.shape, dtype=state.momenta.dtype)
        momenta = c1 * state.momenta + jnp.sqrt((1.0 - c1**2) * state.masses * kT)[:, None] * noise
        state = _drift(state._replace(momenta=momenta, key=key), 0.5 * dt)
        return _kick(force(state), 0.5 * dt)


def _dof(state: MDState, remove_com: bool) -> int:
    n = state.masses.shape[0]
    return max(3 * n - (3 if remove_com and n > 1 else 0), 1)


@dataclass(frozen=True)
class Berendsen:
    """Berendsen weak-coupling thermostat, τ in fs (seed 2: 500 fs); scaling clipped to [0.9, 1.1]."""

    timestep: float = 0.5
    tau: float = 500.0
    remove_com: bool = True
    chain_length: int = 1

    def __post_init__(self):
        if not self.tau > 0:
            raise ValueError(f"Berendsen 'tau' must be > 0 fs, got {self.tau}")

    @property
    def dt(self) -> float:
        return self.timestep * units.fs

    def init(self, state: MDState, kT) -> MDState:
        return state

    def step(self, state: MDState, force: ForceFn, kT, pressure) -> MDState:
        state = _velocity_verlet(state, force, self.dt)
        dof = _dof(state, self.remove_com)
        kT_now = 2.0 * kinetic_energy(state.momenta, state.masses) / dof
        lam2 = 1.0 + self.timestep / self.tau * (kT / jnp.maximum(kT_now, 1e-300) - 1.0)
        lam = jnp.clip(jnp.sqrt(jnp.maximum(lam2, 0.0)), 0.9, 1.1)
        return state._replace(momenta=state.momenta * lam)


_SY_WEIGHTS = {
    1: (1.0,),
    3: (1.0 / (2.0 - 2.0 ** (1.0 / 3.0)), -(2.0 ** (1.0 / 3.0)) / (2.0 - 2.0 ** (1.0 / 3.0)),
        1.0 / (2.0 - 2.0 ** (1.0 / 3.0))),
}
_w5 = 1.0 / (4.0 - 4.0 ** (1.0 / 3.0))
_SY_WEIGHTS[5] = (_w5, _w5, 1.0 - 4.0 * _w5, _w5, _w5)


@dataclass(frozen=True)
class NoseHooverChain:
    """Nosé–Hoover chain NVT. τ in fs sets the masses Q₁ = N_f k_BT τ², Q_j = k_BT τ²."""

    timestep: float = 0.5
    tau: float = 100.0
    chain_length: int = 3
    chain_steps: int = 2
    sy_order: int = 3
    remove_com: bool = True

    def __post_init__(self):
        if not self.tau > 0:
            raise ValueError(f"NoseHooverChain 'tau' must be > 0 fs, got {self.tau}")
        if self.chain_length < 1 or self.chain_steps < 1:
            raise ValueError("NoseHooverChain 'chain_length' and 'chain_steps' must be >= 1")
        if self.sy_order not in _SY_WEIGHTS:
            raise ValueError(f"NoseHooverChain 'sy_order' must be one of {sorted(_SY_WEIGHTS)}, got {self.sy_order}")

    @property
    def dt(self) -> float:
        return self.timestep * units.fs

    def masses(self, kT, dof):
        tau = self.tau * units.fs
        q = jnp.full(self.chain_length, kT * tau**2)
        return q.at[0].multiply(dof)

    def init(self, state: MDState, kT) -> MDState:
        z = jnp.zeros(self.chain_length)
        return state._replace(thermostat=ThermostatState(z, z))

    def _half(self, state: MDState, kT, delta: float) -> MDState:
        """Propagate the chain and scale the momenta for a time ``delta``."""
        dof = _dof(state, self.remove_com)
        q = self.masses(kT, dof)
        length = self.chain_length
        xi, p_xi = state.thermostat.xi, state.thermostat.p_xi
        ke2 = 2.0 * kinetic_energy(state.momenta, state.masses)
        scale_total = 1.0

        def force_j(j, p_xi, ke2):
            if j == 0:
                return ke2 - dof * kT
            return p_xi[j - 1] ** 2 / q[j - 1] - kT

        for w in _SY_WEIGHTS[self.sy_order]:
            h = w * delta / self.chain_steps
            for _ in range(self.chain_steps):
                p_xi = p_xi.at[length - 1].add(0.5 * h * force_j(length - 1, p_xi, ke2))
                for j in range(length - 2, -1, -1):
                    damp = jnp.exp(-0.25 * h * p_xi[j + 1] / q[j + 1])
                    p_xi = p_xi.at[j].set(p_xi[j] * damp)
                    p_xi = p_xi.at[j].add(0.5 * h * force_j(j, p_xi, ke2))
                    p_xi = p_xi.at[j].set(p_xi[j] * damp)
                s = jnp.exp(-h * p_xi[0] / q[0])
                scale_total = scale_total * s
                ke2 = ke2 * s**2
                xi = xi + h * p_xi / q
                for j in range(length - 1):
                    damp = jnp.exp(-0.25 * h * p_xi[j + 1] / q[j + 1])
                    p_xi = p_xi.at[j].set(p_xi[j] * damp)
                    p_xi = p_xi.at[j].add(0.5 * h * force_j(j, p_xi, ke2))
                    p_xi = p_xi.at[j].set(p_xi[j] * damp)
                p_xi = p_xi.at[length - 1].add(0.5 * h * force_j(length - 1, p_xi, ke2))
        return state._replace(momenta=state.momenta * scale_total, thermostat=ThermostatState(xi, p_xi))

    def step(self, state: MDState, force: ForceFn, kT, pressure) -> MDState:
        state = self._half(state, kT, 0.5 * self.dt)
        state = _velocity_verlet(state, force, self.dt)
        return self._half(state, kT, 0.5 * self.dt)

    def conserved_energy(self, state: MDState, kT) -> jax.Array:
        """H + Σ p_ξ²/2Q + N_f kT ξ₁ + kT Σ_{j>1} ξ_j (constant along an exact trajectory)."""
        dof = _dof(state, self.remove_com)
        q = self.masses(kT, dof)
        xi, p_xi = state.thermostat.xi, state.thermostat.p_xi
        return (state.pred.energy + kinetic_energy(state.momenta, state.masses) + jnp.sum(p_xi**2 / (2 * q))
                + dof * kT * xi[0] + kT * jnp.sum(xi[1:]))


@dataclass(frozen=True)
class Bussi:
    """Stochastic velocity rescaling (CSVR), τ in fs; half a thermostat step on each side of VV."""

    timestep: float = 0.5
    tau: float = 100.0
    remove_com: bool = True
    chain_length: int = 1

    def __post_init__(self):
        if not self.tau > 0:
            raise ValueError(f"Bussi 'tau' must be > 0 fs, got {self.tau}")

    @property
    def dt(self) -> float:
        return self.timestep * units.fs

    def init(self, state: MDState, kT) -> MDState:
        return state

    def _rescale(self, state: MDState, kT, dt_fs: float) -> MDState:
        dof = _dof(state, self.remove_com)
        kin = kinetic_energy(state.momenta, state.masses)
        target = 0.5 * dof * kT
        c = jnp.exp(-dt_fs / self.tau)
        key, k1, k2 = jax.random.split(state.key, 3)
        r1 = jax.random.normal(k1, dtype=jnp.float64)
        rest = jnp.sum(jax.random.normal(k2, (dof - 1,), dtype=jnp.float64) ** 2)  # chi² with dof − 1
        kin_safe = jnp.maximum(kin, 1e-300)
        new = (kin + (1.0 - c) * (target * (r1**2 + rest) / dof - kin)
               + 2.0 * r1 * jnp.sqrt(c * (1.0 - c) * target * kin_safe / dof))
        alpha = jnp.sqrt(jnp.maximum(new, 0.0) / kin_safe)
        return state._replace(momenta=state.momenta * alpha, key=key)

    def step(self, state: MDState, force: ForceFn, kT, pressure) -> MDState:
        state = self._rescale(state, kT, 0.5 * self.timestep)
        state = _velocity_verlet(state, force, self.dt)
        return self._rescale(state, kT, 0.5 * self.timestep)


def _random_symmetric_traceless(key) -> jax.Array:
    a = jax.random.normal(key, (3, 3), dtype=jnp.float64)
    s = 0.5 * (a + a.T)  # off-diagonal variance 1/2, diagonal variance 1
    return s - jnp.trace(s) / 3.0 * jnp.eye(3)


def _expm_symmetric(a: jax.Array) -> jax.Array:
    w, v = jnp.linalg.eigh(a)
    return (v * jnp.exp(w)) @ v.T


@dataclass(frozen=True)
class StochasticCellRescaling:
    """NPT: stochastic cell rescaling barostat around any thermostat (see the module docstring).

    Attributes:
        thermostat: the NVT integrator for the particles (Langevin, Bussi, NoseHooverChain, ...).
        pressure: target pressure in bar (1.01325 bar = 1 atm), overridable by a pressure modifier.
        tau_p: barostat relaxation time in fs.
        compressibility: β_T in 1/bar (4.57e-5: water; only sets the relaxation speed).
        anisotropic: fully flexible cell (all six strain components); else isotropic.
    """

    thermostat: object
    pressure: float = 1.01325
    tau_p: float = 1000.0
    compressibility: float = 4.57e-5
    anisotropic: bool = False

    def __post_init__(self):
        if not self.tau_p > 0:
            raise ValueError(f"barostat 'tau_p' must be > 0 fs, got {self.tau_p}")
        if not self.compressibility > 0:
            raise ValueError(f"barostat 'compressibility' must be > 0 1/bar, got {self.compressibility}")
        if isinstance(self.thermostat, (StochasticCellRescaling, VelocityVerlet)):
            raise ValueError("the NPT barostat needs a thermostat (langevin, nose_hoover, bussi, berendsen)")

    @property
    def timestep(self) -> float:
        return self.thermostat.timestep

    @property
    def remove_com(self) -> bool:
        return self.thermostat.remove_com

    @property
    def chain_length(self) -> int:
        return self.thermostat.chain_length

    def init(self, state: MDState, kT) -> MDState:
        return self.thermostat.init(state, kT)

    def rescale(self, state: MDState, kT, pressure) -> MDState:
        """One Euler–Maruyama step of the cell equations and the induced scaling."""
        dt = self.timestep * units.fs
        tau = self.tau_p * units.fs
        beta = self.compressibility / units.bar  # Å³/eV
        vol = volume(state.cell)
        p_tensor = pressure_tensor(state)
        p_sym = 0.5 * (p_tensor + p_tensor.T)
        p_int = jnp.trace(p_sym) / 3.0
        key, k_vol, k_dev = jax.random.split(state.key, 3)
        lam = jnp.sqrt(vol)
        drift = -beta * lam / (2.0 * tau) * (pressure - p_int - kT / (2.0 * vol))
        lam_new = lam + drift * dt + jnp.sqrt(kT * beta * dt / (2.0 * tau)) * jax.random.normal(k_vol, dtype=jnp.float64)
        mu = jnp.eye(3) * (lam_new**2 / vol) ** (1.0 / 3.0)
        if self.anisotropic:
            vol_new = lam_new**2
            dev = p_sym - p_int * jnp.eye(3)
            strain = (beta / (3.0 * tau) * dev * dt
                      + jnp.sqrt(2.0 * kT * beta * dt / (3.0 * tau * vol_new)) * _random_symmetric_traceless(k_dev))
            mu = mu @ _expm_symmetric(strain)
        mu_inv = jnp.linalg.inv(mu)
        return state._replace(positions=state.positions @ mu, cell=state.cell @ mu,
                              momenta=state.momenta @ mu_inv, key=key)

    def step(self, state: MDState, force: ForceFn, kT, pressure) -> MDState:
        state = self.rescale(state, kT, pressure)
        return self.thermostat.step(state, force, kT, pressure)


THERMOSTATS = {"nve": VelocityVerlet, "langevin": Langevin, "berendsen": Berendsen,
               "nose_hoover": NoseHooverChain, "nhc": NoseHooverChain, "bussi": Bussi}


def make_integrator(thermostat: str = "langevin", timestep: float = 0.5, ensemble: str = "nvt",
                    thermostat_params: dict | None = None, barostat_params: dict | None = None):
    """Integrator from names and parameter dicts (for nodes and configs).

    ``thermostat``: nve | langevin | berendsen | nose_hoover (nhc) | bussi. ``ensemble``: nvt | npt
    (NPT wraps the thermostat in :class:`StochasticCellRescaling`; ``barostat_params`` takes
    ``pressure`` (bar), ``tau_p`` (fs), ``compressibility`` (1/bar), ``anisotropic``).
    """
    if thermostat not in THERMOSTATS:
        raise ValueError(f"unknown thermostat '{thermostat}': use one of {', '.join(sorted(THERMOSTATS))}")
    if ensemble not in ("nvt", "npt", "nve"):
        raise ValueError(f"unknown ensemble '{ensemble}': use 'nvt' or 'npt'")
    if not timestep > 0:
        raise ValueError(f"'timestep' must be > 0 fs, got {timestep}")
    try:
        inner = THERMOSTATS[thermostat](timestep=timestep, **(thermostat_params or {}))
    except TypeError as err:
        raise ValueError(f"thermostat '{thermostat}': {err}") from None
    if ensemble == "npt":
        try:
            return StochasticCellRescaling(inner, **(barostat_params or {}))
        except TypeError as err:
            raise ValueError(f"barostat: {err}") from None
    if barostat_params:
        raise ValueError("barostat parameters given but ensemble is not 'npt'")
    return inner
