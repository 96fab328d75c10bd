"""FIRE geometry optimisation (Bitzek et al. 2006) in JAX, optionally with the cell.

Same force field and neighbour-list handling as the MD loop (jitted chunks of steps, lists
rebuilt inside, a chunk re-run after an overflow), so any base potential, an ASE calculator
included, can be relaxed.

Variable cell: the degrees of freedom are the positions u in the undeformed frame and a
deformation D = I + X/N of the start cell (r = u Dᵀ, cell = cell₀ Dᵀ; N atoms, the usual
scaling that gives cell "forces" per-atom magnitudes). The enthalpy H = E + p V is minimised
with exact generalised forces F_u = F D and F_X = −(W + p V I) D⁻ᵀ / N (W = dE/dε, the virial).
Convergence: the largest force row (atoms and, with the cell, the three rows of F_X) below ``fmax``.

FIRE parameters are the usual ones (ASE's defaults: dt 0.1, dt_max 1.0 in ASE time units with
unit masses, N_min 5, f_inc 1.1, f_dec 0.5, α_start 0.1, f_α 0.99); ``max_step`` caps the
displacement norm of one step (Å) and ``max_steps`` the number of steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress
from tqdm import tqdm

from lotf.dynamics.potential import ForceField
from lotf.dynamics.state import Prediction
from lotf.potential import neighbors


class FIREState(NamedTuple):
    u: jax.Array  # (N, 3) positions in the undeformed frame
    x_cell: jax.Array  # (3, 3) cell degrees of freedom, D = I + x_cell / N
    v: jax.Array  # (N + 3, 3) velocities of all degrees of freedom
    dt: jax.Array
    alpha: jax.Array
    n_positive: jax.Array  # steps since the last uphill step
    nbrs: tuple
    pred: Prediction
    fmax: jax.Array
    step: jax.Array
    converged: jax.Array
    overflow: jax.Array
    max_neighbors: jax.Array


@dataclass
class FIREResult:
    """Relaxed structure (with energy/forces/stress attached), the path, and how it ended."""

    atoms: Atoms
    frames: list[Atoms]
    converged: bool
    steps: int
    fmax: float
    energies: list[float] = field(default_factory=list)


@dataclass
class FIRE:
    """FIRE minimiser; ``run(atoms)`` relaxes a structure with ``forcefield``."""

    forcefield: ForceField
    fmax: float = 0.05
    max_step: float = 0.2
    max_steps: int = 1000
    relax_cell: bool = False
    pressure: float = 0.0  # bar, for relax_cell
    dt: float = 0.1
    dt_max: float = 1.0
    n_min: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    alpha_start: float = 0.1
    f_alpha: float = 0.99
    skin: float = 0.5
    chunk: int = 50
    sampling_rate: int = 1
    progress: bool = False

    def __post_init__(self):
        for name in ("fmax", "max_step", "dt", "dt_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FIRE '{name}' must be > 0, got {getattr(self, name)}")
        if not isinstance(self.max_steps, (int, np.integer)) or self.max_steps < 0:
            raise ValueError(f"FIRE 'max_steps' must be a non-negative integer, got {self.max_steps!r}")
        if self.sampling_rate < 1:
            raise ValueError(f"FIRE 'sampling_rate' must be >= 1, got {self.sampling_rate}")
        if self.forcefield.kind == "erbs":
            raise ValueError("FIRE with an ERBS bias is not meaningful; use a force field without bias")

    # -------------------------------------------------------------------------------------------
    def _geometry(self, u, x_cell):
        d = jnp.eye(3) + x_cell / self.n_atoms
        return u @ d.T, self.cell0 @ d.T, d

    def _evaluate(self, s: FIREState, specs) -> FIREState:
        r, cell, d = self._geometry(s.u, s.x_cell)
        ok = jnp.all(jnp.isfinite(r)) & jnp.all(jnp.isfinite(cell))
        nbrs = []
        for spec, nb in zip(specs, s.nbrs):
            do = neighbors.needs_rebuild(nb, r, cell, spec.skin) & ok
            nbrs.append(jax.lax.cond(do, lambda r, c, nb, spec=spec: neighbors.build(spec, r, c),
                                     lambda r, c, nb: nb, r, cell, nb))
        nbrs = tuple(nbrs)
        pred = self.forcefield(r, cell, nbrs, (), False)
        f_u, f_x = self._generalised_forces(pred, cell, d)
        fmax = jnp.sqrt(jnp.max(jnp.sum(jnp.concatenate([f_u, f_x]) ** 2, axis=1)))
        overflow = s.overflow
        counts = []
        for nb in nbrs:
            overflow = overflow | nb.overflow
            counts.append(nb.max_neighbors)
        seen = jnp.maximum(s.max_neighbors, jnp.stack(counts)) if counts else s.max_neighbors
        return s._replace(nbrs=nbrs, pred=pred, fmax=fmax, overflow=overflow, max_neighbors=seen)

    def _generalised_forces(self, pred: Prediction, cell, d):
        f_u = pred.forces @ d
        if not self.relax_cell:
            return f_u, jnp.zeros((3, 3))
        vol = jnp.abs(jnp.linalg.det(cell))
        p = self.pressure * units.bar
        f_x = -(pred.virial + p * vol * jnp.eye(3)) @ jnp.linalg.inv(d).T / self.n_atoms
        return f_u, f_x

    def _step(self, s: FIREState, specs) -> FIREState:
        r, cell, d = self._geometry(s.u, s.x_cell)
        f_u, f_x = self._generalised_forces(s.pred, cell, d)
        f = jnp.concatenate([f_u, f_x])
        v = s.v
        f_norm = jnp.linalg.norm(f)
        v_norm = jnp.linalg.norm(v)
        power = jnp.vdot(f, v)
        uphill = power <= 0
        mixed = (1.0 - s.alpha) * v + s.alpha * f / jnp.maximum(f_norm, 1e-300) * v_norm
        speed_up = s.n_positive > self.n_min
        dt = jnp.where(uphill, s.dt * self.f_dec, jnp.where(speed_up, jnp.minimum(s.dt * self.f_inc, self.dt_max), s.dt))
        alpha = jnp.where(uphill, self.alpha_start, jnp.where(speed_up, s.alpha * self.f_alpha, s.alpha))
        n_positive = jnp.where(uphill, 0, s.n_positive + 1)
        v = jnp.where(uphill, jnp.zeros_like(v), mixed)
        v = v + dt * f
        dr = dt * v
        norm = jnp.linalg.norm(dr)
        dr = jnp.where(norm > self.max_step, dr * self.max_step / norm, dr)
        n = self.n_atoms
        s = s._replace(u=s.u + dr[:n], x_cell=s.x_cell + (dr[n:] if self.relax_cell else 0.0), v=v, dt=dt,
                       alpha=alpha, n_positive=n_positive, step=s.step + 1)
        s = self._evaluate(s, specs)
        return s._replace(converged=s.fmax < self.fmax)

    def _chunk_fn(self, specs):
        if specs not in self._compiled:
            def chunk(s: FIREState, limit):
                s = s._replace(overflow=jnp.zeros((), bool))

                def body(s, _):
                    active = ~s.converged & (s.step < limit)
                    s = jax.lax.cond(active, lambda s: self._step(s, specs), lambda s: s, s)
                    r, cell, _ = self._geometry(s.u, s.x_cell)
                    return s, {"positions": r, "cell": cell, "energy": s.pred.energy, "forces": s.pred.forces,
                               "virial": s.pred.virial, "step": s.step, "active": active}

                return jax.lax.scan(body, s, None, length=self.chunk)

            self._compiled[specs] = jax.jit(chunk)
        return self._compiled[specs]

    # -------------------------------------------------------------------------------------------
    def _to_atoms(self, r, cell, energy, forces, virial) -> Atoms:
        atoms = self.template.copy()
        atoms.positions = np.asarray(r)
        if self.pbc:
            atoms.cell = np.asarray(cell)
        results = {"energy": float(energy), "forces": np.asarray(forces)}
        if self.pbc:
            results["stress"] = full_3x3_to_voigt_6_stress(np.asarray(virial) / atoms.get_volume())
        atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def run(self, atoms: Atoms, trajectory: str | Path | None = None) -> FIREResult:
        """Relax ``atoms`` (not modified); frames every ``sampling_rate`` steps, plus the last."""
        pbc = np.asarray(atoms.pbc, bool)
        if pbc.any() and not pbc.all():
            raise ValueError("mixed periodicity is not supported; use pbc=True or pbc=False")
        if self.relax_cell and not pbc.all():
            raise ValueError("relax_cell needs a periodic structure")
        self.pbc = bool(pbc.all())
        self.template = atoms.copy()
        self.template.calc = None
        self.n_atoms = len(atoms)
        ff = self.forcefield
        ff.setup(atoms, need_stress=self.relax_cell)
        cell0 = atoms.cell.array.copy() if self.pbc else np.zeros((3, 3))
        self.cell0 = jnp.asarray(cell0)
        self._compiled = {}
        specs, nbrs = [], []
        for cutoff in ff.list_cutoffs:
            spec, nb = neighbors.allocate(atoms.positions, cell0, (self.pbc,) * 3, cutoff, self.skin)
            specs.append(spec)
            nbrs.append(jax.tree_util.tree_map(jnp.asarray, nb))
        specs = tuple(specs)
        n = self.n_atoms
        zero = jnp.zeros(())
        pred0 = Prediction(zero, jnp.zeros((n, 3)), jnp.zeros((3, 3)), zero, jnp.zeros((n, 3)), zero, jnp.zeros((n, 3)))
        s = FIREState(jnp.asarray(atoms.positions), jnp.zeros((3, 3)), jnp.zeros((n + 3, 3)), jnp.asarray(self.dt),
                      jnp.asarray(self.alpha_start), jnp.zeros((), jnp.int32), tuple(nbrs), pred0, jnp.asarray(np.inf),
                      jnp.zeros((), jnp.int32), jnp.zeros((), bool), jnp.zeros((), bool),
                      jnp.asarray([int(nb.max_neighbors) for nb in nbrs], jnp.int32).reshape(len(nbrs)))
        s = jax.jit(lambda s: self._evaluate(s, specs))(s)
        s = s._replace(converged=s.fmax < self.fmax)
        r0, c0, _ = self._geometry(s.u, s.x_cell)
        frames = [self._to_atoms(r0, c0, s.pred.energy, s.pred.forces, s.pred.virial)]
        energies = [float(s.pred.energy)]
        written = 0
        if trajectory is not None:
            import znh5md

            Path(trajectory).parent.mkdir(parents=True, exist_ok=True)
            Path(trajectory).unlink(missing_ok=True)
            znh5md.IO(trajectory).extend(frames)
            written = len(frames)
        bar = tqdm(total=self.max_steps, desc="FIRE", unit="step", disable=not self.progress)
        while not bool(s.converged) and int(s.step) < self.max_steps:
            start = s
            while True:
                s, out = self._chunk_fn(specs)(start, jnp.asarray(self.max_steps))
                if not bool(s.overflow):
                    break
                seen = np.asarray(s.max_neighbors)
                r, cell, _ = self._geometry(start.u, start.x_cell)
                new_specs, new_nbrs = [], []
                for i, (spec, nb) in enumerate(zip(specs, start.nbrs)):
                    if seen[i] > spec.capacity:
                        spec, nb = neighbors.allocate(np.asarray(r), np.asarray(cell), spec.pbc, spec.cutoff, spec.skin,
                                                      min_capacity=int(math.ceil(seen[i] * 1.25)))
                        nb = jax.tree_util.tree_map(jnp.asarray, nb)
                    new_specs.append(spec)
                    new_nbrs.append(nb)
                specs = tuple(new_specs)
                start = start._replace(nbrs=tuple(new_nbrs), overflow=jnp.zeros((), bool))
            out = jax.device_get(out)
            for k in np.nonzero(out["active"])[0]:
                energies.append(float(out["energy"][k]))
                step = int(out["step"][k])
                if step % self.sampling_rate == 0:
                    frames.append(self._to_atoms(out["positions"][k], out["cell"][k], out["energy"][k],
                                                 out["forces"][k], out["virial"][k]))
            bar.update(int(s.step) - bar.n)
            bar.set_postfix(fmax=f"{float(s.fmax):.3g}")
            if trajectory is not None and len(frames) > written:
                import znh5md

                znh5md.IO(trajectory).extend(frames[written:])
                written = len(frames)
        bar.close()
        r, cell, _ = self._geometry(s.u, s.x_cell)
        final = self._to_atoms(r, cell, s.pred.energy, s.pred.forces, s.pred.virial)
        if int(s.step) % self.sampling_rate != 0:  # the last step was not sampled: add it
            frames.append(final)
            if trajectory is not None:
                import znh5md

                znh5md.IO(trajectory).extend([final])
        return FIREResult(final, frames, bool(s.converged), int(s.step), float(s.fmax), energies)


def optimise(atoms: Atoms, forcefield: ForceField, **options) -> FIREResult:
    """Relax ``atoms`` with FIRE (options: :class:`FIRE` attributes plus ``trajectory``)."""
    trajectory = options.pop("trajectory", None)
    return FIRE(forcefield, **options).run(atoms, trajectory=trajectory)
