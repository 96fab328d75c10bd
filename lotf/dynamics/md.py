"""The sampling loop: jitted blocks of MD steps, checks, resets, frames streamed to H5MD.

One block is a jitted ``lax.scan`` over *groups*; a group is ``sampling_rate`` steps whose last
step is a "full" evaluation (member forces, uncertainties) followed by the checks and one
frame. Inside a step the neighbour lists are rebuilt (``lax.cond`` around the vesin callback)
only when an atom moved more than half the skin (or the cell changed enough).

Neighbour-list overflow: builds record the largest neighbour count they saw. If any build of a
block overflowed its capacity, the whole block is discarded, the lists are reallocated with room
for that count, and the block is re-run from the state it started from (same PRNG key, so the
same trajectory). Frames are only written after a block succeeded, so none is lost or duplicated.

Checks and triggers (``on_trigger``): "stop" ends the run and keeps the frames up to the last
accepted one; "reset" restarts from the start structure and cell with new Maxwell–Boltzmann
momenta (a fresh key), keeping the bias and the modifier clock, until ``steps`` steps are done
(seed 2 safe sampling). A failing frame is not written, except with ``keep_trigger_frame`` a
frame that fails uncertainty checks only (the campaign-era IPSuite ASEMD appended the frame that
triggered its stop: the structure the model is least sure of is the one to label). A frame that
fails a NaN, bond-graph or other physical check is never written. A NaN check is always added.

The same loop drives an ASE calculator (``ForceField(AseBase(calc), bias)``): the calculator is
called from inside the jitted step through ``jax.pure_callback``, so checks, modifiers, biases and
frames are identical; only the speed differs.

Frames are written every ``sampling_rate`` steps (not the start structure) with energy, forces
(totals, bias included), stress (periodic; with an ASE calculator only under NPT, the only case
where the calculator is asked for it, so no uncomputed zero stress is ever stored),
``energy_uncertainty``, ``forces_uncertainty``,
``energy_bias``, ``forces_bias`` and ``info`` entries ``step``, ``time`` (fs), ``temperature``
(instantaneous, K), ``target_temperature`` (K) and, under NPT, ``target_pressure`` (bar).

Checkpoints (``checkpoint=path``, needs a trajectory): after every block, once its frames are in
the H5MD file, the whole loop state (every leaf of the carry, PRNG key included; the neighbour-list
specs; frame and re-run counters) and a fingerprint of the configuration (structure, steps,
sampling, seed, temperature, integrator, modifiers, checks, bias, and the parameters of a JAX
potential; only the class of an ASE calculator) are saved to an ``.npz`` file, atomically
(temporary file + ``os.replace``), so a kill at any moment leaves either the old or the new
checkpoint. A run that finds a checkpoint with the same fingerprint truncates the trajectory to
the checkpointed frames (dropping frames written after it) and continues from there, giving the
same trajectory as an uninterrupted run. A checkpoint that does not match, or a trajectory
shorter than it, is ignored with a warning (fresh start). The checkpoint is deleted when a run
finishes (all steps done or stopped by a check).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms, units
from ase.calculators import calculator as _ase_calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress
from tqdm import tqdm

from lotf.dynamics import checks as checks_mod
from lotf.dynamics.biases import ERBS, UDD, bias_kind, erbs_capacity
from lotf.dynamics.integrators import StochasticCellRescaling
from lotf.dynamics.modifiers import Control, DensityRamp, PressureRamp, TemperatureRamp
from lotf.dynamics.potential import ForceField, JaxBase, make_graph
from lotf.dynamics.state import (MDState, Prediction, ThermostatState, maxwell_boltzmann, remove_com_momentum,
                                 temperature)
from lotf.potential import neighbors

for _name in ("energy_uncertainty", "forces_uncertainty", "energy_bias", "forces_bias"):
    if _name not in _ase_calculator.all_properties:
        _ase_calculator.all_properties.append(_name)


class Carry(NamedTuple):
    state: MDState
    step: jax.Array  # () int: steps done in this run
    n_resets: jax.Array  # () int
    first_stop: jax.Array  # () int: step of the first trigger, -1 if none
    stop_check: jax.Array  # () int: index of the check that fired first, -1 if none
    stopped: jax.Array  # () bool
    overflow: jax.Array  # () bool: some neighbour build of this block overflowed
    max_neighbors: jax.Array  # (L,) largest neighbour count seen per list


@dataclass
class MDSummary:
    """What a run did. ``steps_before_stop`` equals ``steps_done`` if no check ever fired.

    After a resume from a checkpoint the counts (steps, frames, resets, re-runs) are totals of the
    whole run; ``wall_s`` and ``ms_per_step`` cover only this process (and the steps it ran).
    """

    steps: int
    steps_done: int
    steps_before_stop: int
    stopped: bool
    n_resets: int
    frames_written: int
    stop_reason: str | None
    wall_s: float
    ms_per_step: float
    block_reruns: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(x) -> jax.Array:
    return jnp.all(jnp.isfinite(x))


CHECKPOINT_VERSION = 1


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _h5md_per_frame(name: str, obj) -> bool:
    """Datasets with one entry per frame: ``value`` (and ``step``/``time`` when not scalars)."""
    return (isinstance(obj, h5py.Dataset) and name.split("/")[0] in ("particles", "observables")
            and name.rsplit("/", 1)[-1] in ("value", "step", "time") and obj.ndim >= 1)


def _h5md_frames(path: Path) -> int | None:
    """Frames every per-frame dataset holds (0 without a file); None if the file is unreadable."""
    if not path.exists():
        return 0
    counts = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: counts.append(obj.shape[0]) if _h5md_per_frame(name, obj) else None)
    except OSError:
        return None
    return min(counts, default=0)


def _h5md_truncate(path: Path, n_frames: int) -> None:
    """Drop frames beyond ``n_frames`` (written after the last checkpoint) from every dataset."""
    if not path.exists():
        return
    with h5py.File(path, "r+") as f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append(obj) if _h5md_per_frame(name, obj) else None)
        for d in datasets:
            if d.shape[0] > n_frames:
                d.resize(n_frames, axis=0)


@dataclass
class MDRun:
    """A configured sampling run. ``run()`` executes it; see the module docstring.

    Attributes:
        atoms: start structure (periodic in all directions or in none).
        forcefield: base potential + bias (:class:`lotf.dynamics.potential.ForceField`).
        integrator: from :mod:`lotf.dynamics.integrators`.
        steps: number of MD steps; timestep comes from the integrator (fs).
        temperature: K, for the start momenta and the thermostat (a TemperatureRamp overrides).
        sampling_rate: a frame (and the checks) every this many steps.
        seed: PRNG seed of momenta, thermostat noise and resets.
        modifiers, checks: see :mod:`~lotf.dynamics.modifiers`, :mod:`~lotf.dynamics.checks`.
        on_trigger: "stop" or "reset".
        keep_trigger_frame: write the frame that fails uncertainty checks only (see above).
        trajectory: H5MD output path (None: frames are kept in memory only, ``self.frames``).
        pca_frames: configurations whose ERBS descriptors feed the PCA only (never deposited).
        block_steps: steps per jitted block (rounded up to whole groups); default ~1000 for JAX
            potentials and one group for ASE calculators.
        skin: neighbour-list skin in Å. ``capacity_factor``: headroom of the row capacity.
        neighbor_capacity: force the row capacity (tests use it to provoke overflows).
        use_momenta: start from the momenta stored in ``atoms`` instead of drawing new ones; their
            centre-of-mass momentum is removed when the integrator counts 3N - 3 degrees of freedom.
        progress: show a tqdm bar.
        keep_frames: also keep the written frames in ``self.frames`` (always when there is no
            trajectory). After a resume it holds only the frames of this process.
        checkpoint: ``.npz`` path of the resumable state (see the module docstring); needs
            ``trajectory``. None: no checkpoints, the trajectory is always started afresh.
    """

    atoms: Atoms
    forcefield: ForceField
    integrator: Any
    steps: int
    temperature: float = 300.0
    sampling_rate: int = 10
    seed: int = 0
    modifiers: Sequence[Any] = ()
    checks: Sequence[Any] = ()
    on_trigger: str = "stop"
    keep_trigger_frame: bool = False
    trajectory: str | os.PathLike | None = None
    pca_frames: Sequence[Atoms] | None = None
    block_steps: int | None = None
    skin: float = 0.5
    capacity_factor: float = 1.25
    neighbor_capacity: int | None = None
    use_momenta: bool = False
    progress: bool = True
    keep_frames: bool = False
    checkpoint: str | os.PathLike | None = None
    frames: list[Atoms] = field(default_factory=list, init=False)

    # ------------------------------------------------------------------ setup
    def _validate(self) -> None:
        if not isinstance(self.steps, (int, np.integer)) or self.steps < 1:
            raise ValueError(f"'steps' must be a positive integer, got {self.steps!r}")
        if not isinstance(self.sampling_rate, (int, np.integer)) or self.sampling_rate < 1:
            raise ValueError(f"'sampling_rate' must be a positive integer, got {self.sampling_rate!r}")
        if not self.temperature >= 0:
            raise ValueError(f"'temperature' must be >= 0 K, got {self.temperature}")
        if self.on_trigger not in ("stop", "reset"):
            raise ValueError(f"'on_trigger' must be 'stop' or 'reset', got {self.on_trigger!r}")
        if len(self.atoms) == 0:
            raise ValueError("the start structure has no atoms")
        pbc = np.asarray(self.atoms.pbc, bool)
        if pbc.any() and not pbc.all():
            raise ValueError("mixed periodicity is not supported; use pbc=True or pbc=False")
        if not np.all(np.isfinite(self.atoms.positions)):
            raise ValueError("the start structure has non-finite positions")
        self.npt = isinstance(self.integrator, StochasticCellRescaling)
        if self.npt and not pbc.all():
            raise ValueError("NPT needs a periodic structure")
        for m in self.modifiers:
            if isinstance(m, DensityRamp) and not pbc.all():
                raise ValueError("DensityRamp needs a periodic structure")
            if isinstance(m, DensityRamp) and self.npt:
                raise ValueError("DensityRamp conflicts with NPT (the barostat sets the volume)")
            if isinstance(m, PressureRamp) and not self.npt:
                raise ValueError("PressureRamp needs ensemble 'npt'")
        if self.skin <= 0:
            raise ValueError(f"'skin' must be > 0 Å, got {self.skin}")
        if self.checkpoint is not None and self.trajectory is None:
            raise ValueError("a checkpoint needs a trajectory (frames kept in memory would be lost with the process)")

    def _setup(self) -> None:
        self._validate()
        atoms = self.atoms
        ff = self.forcefield
        ff.setup(atoms, need_stress=self.npt)
        self.pbc = bool(atoms.pbc.all())
        self.n_atoms = len(atoms)
        self.dt_fs = float(self.integrator.timestep)
        self.t_end = self.steps * self.dt_fs
        self.dof = 3 * self.n_atoms - (3 if self.integrator.remove_com and self.n_atoms > 1 else 0)

        # a stress is written to the frames only where it was computed: always for JAX potentials
        # (frames come from full evaluations), for an ASE calculator only when NPT asked it for one
        self.frame_stress = self.pbc and (not ff.is_ase or ff.base.need_stress)

        checks = list(self.checks)
        if not any(isinstance(c, checks_mod.NaNCheck) for c in checks):
            checks.append(checks_mod.NaNCheck())
        if isinstance(ff.bias, UDD) and ff.is_ase and self.npt:
            raise ValueError("UDD under NPT needs member stresses, which ASE calculators do not give; use a JAX potential")
        self.check_list = checks
        self.check_aux = [c.setup(atoms, ff) for c in checks]

        cell = atoms.cell.array.copy() if self.pbc else np.zeros((3, 3))
        positions = atoms.positions.copy()
        self.positions0, self.cell0 = positions, cell
        self.specs, nbrs = [], []
        for cutoff in ff.list_cutoffs:
            spec, nb = self._allocate(positions, cell, cutoff)
            self.specs.append(spec)
            nbrs.append(nb)
        self.specs = tuple(self.specs)
        self._check_ensemble(positions, cell, nbrs)

        self.masses = np.asarray(atoms.get_masses(), np.float64)
        if np.any(self.masses <= 0):
            raise ValueError("all masses must be positive")
        self.base_pressure = units.bar * self.integrator.pressure if self.npt else 0.0
        key = jax.random.PRNGKey(int(self.seed))
        key, k_mom = jax.random.split(key)
        control0 = self._control(0.0)
        if self.use_momenta and np.any(atoms.get_momenta() != 0):
            momenta = jnp.asarray(atoms.get_momenta(), jnp.float64)
            if self.integrator.remove_com:  # the thermostat counts 3N - 3 degrees of freedom
                momenta = remove_com_momentum(momenta, jnp.asarray(self.masses))
        else:
            momenta = maxwell_boltzmann(k_mom, jnp.asarray(self.masses), control0.kT, self.integrator.remove_com)

        bias_state = ()
        if isinstance(ff.bias, ERBS):
            aux = self._pca_descriptors() if self.pca_frames else None
            bias_state = ff.bias.init_state(erbs_capacity(self.steps, ff.bias.interval), aux)
        nbrs = tuple(jax.tree_util.tree_map(jnp.asarray, nb) for nb in nbrs)
        pred = self._zero_prediction()
        z = jnp.zeros(max(self.integrator.chain_length, 1))
        state = MDState(jnp.asarray(positions), momenta, jnp.asarray(self.masses), jnp.asarray(cell), pred, nbrs,
                        bias_state, ThermostatState(z, z), key)
        state = self.integrator.init(state, control0.kT)
        state = jax.jit(lambda s: self._initial(s))(state)
        n_lists = len(self.specs)
        self.carry = Carry(state, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), -jnp.ones((), jnp.int32),
                           -jnp.ones((), jnp.int32), jnp.zeros((), bool), jnp.zeros((), bool),
                           jnp.asarray([int(nb.max_neighbors) for nb in nbrs], jnp.int32).reshape(n_lists))
        if self.block_steps is None:
            self.block_steps = self.sampling_rate if ff.is_ase else max(1000, self.sampling_rate)
        self.groups_per_block = max(1, math.ceil(self.block_steps / self.sampling_rate))
        self._compiled: dict = {}

    def _ensemble_size(self, positions, cell, nbrs) -> int:
        """Members of the base potential (ASE: what the calculator reported; JAX: traced shape)."""
        ff = self.forcefield
        if ff.is_ase:
            return ff.base.n_members
        lists = ff.term_neighbors(nbrs)
        shape = jax.eval_shape(lambda r, c, nb: ff.base.member_energies(r, c, nb, virial=False)[0],
                               positions, cell, lists)
        return int(shape.shape[0])

    def _check_ensemble(self, positions, cell, nbrs) -> None:
        """Uncertainty checks and UDD need an ensemble: with one member σ is 0 and they never act."""
        ff = self.forcefield
        n_members = self._ensemble_size(positions, cell, nbrs)
        kind = f"the ASE calculator {type(ff.base.calc).__name__}" if ff.is_ase else "the JAX potential"
        has_uncertainty = ff.base.has_uncertainty if ff.is_ase else n_members > 1
        for c in self.check_list:
            if c.needs_uncertainty and not has_uncertainty:
                given = "gives no ensemble" if ff.is_ase else f"has {n_members} member"
                raise ValueError(f"check '{c.name}' needs ensemble uncertainties, but {kind} {given}; "
                                 "use an ensemble (n_members >= 2) or drop the check")
        if isinstance(ff.bias, UDD) and n_members < 2:
            given = "gives no energy_ensemble/forces_ensemble" if ff.is_ase else f"has {n_members} member"
            raise ValueError(f"UDD needs an ensemble (at least 2 members), but {kind} {given}")

    def _allocate(self, positions, cell, cutoff, min_capacity: int = 0):
        pbc = (self.pbc,) * 3
        if self.neighbor_capacity is not None and min_capacity == 0:
            spec = neighbors.NeighborSpec(float(cutoff), float(self.skin), int(self.neighbor_capacity), pbc)
            nb = neighbors.build_host(spec, positions, cell)
            if not bool(nb.overflow):
                return spec, nb
            min_capacity = int(nb.max_neighbors)
        return neighbors.allocate(positions, cell, pbc, cutoff, self.skin, capacity_factor=self.capacity_factor,
                                  min_capacity=min_capacity)

    def _pca_descriptors(self) -> np.ndarray:
        erbs = self.forcefield.bias
        out = []
        fn = jax.jit(lambda r, c, nb: erbs.descriptor(make_graph(r, c, jnp.zeros(r.shape[0], jnp.int32),
                                                                 jnp.zeros(r.shape[0], jnp.int32), nb)))
        cells = [a.cell.array if a.pbc.any() else np.zeros((3, 3)) for a in self.pca_frames]
        # one row capacity for all frames, so equally sized structures share one compilation
        capacity = max(neighbors.allocate(a.positions, c, a.pbc, erbs.r_max, 0.0, capacity_factor=1.0)[0].capacity
                       for a, c in zip(self.pca_frames, cells))
        for a, cell in zip(self.pca_frames, cells):
            spec = neighbors.NeighborSpec(float(erbs.r_max), 0.0, capacity, tuple(bool(p) for p in a.pbc))
            nb = jax.tree_util.tree_map(jnp.asarray, neighbors.build_host(spec, a.positions, cell))
            out.append(np.asarray(fn(jnp.asarray(a.positions), jnp.asarray(cell), nb)))
        return np.stack(out)

    def _zero_prediction(self) -> Prediction:
        n = self.n_atoms
        z = jnp.zeros(())
        return Prediction(z, jnp.zeros((n, 3)), jnp.zeros((3, 3)), z, jnp.zeros((n, 3)), z, jnp.zeros((n, 3)))

    # ------------------------------------------------------------------ pure pieces of a step
    def _control(self, t) -> Control:
        """Targets at time t (fs) without touching the state (start and resets)."""
        control = Control(kT=units.kB * self.temperature, pressure=self.base_pressure)
        for m in self.modifiers:
            if isinstance(m, TemperatureRamp):
                control = control._replace(kT=units.kB * m.value(t, self.t_end))
            if isinstance(m, PressureRamp):
                control = control._replace(pressure=units.bar * m.value(t, self.t_end))
        return control

    def _apply_modifiers(self, state: MDState, t) -> tuple[MDState, Control]:
        control = Control(kT=units.kB * self.temperature, pressure=self.base_pressure)
        for m in self.modifiers:
            state, control = m.apply(state, control, t, self.t_end)
        return state, control

    def _update_lists(self, state: MDState, specs, force_rebuild: bool = False) -> MDState:
        ok = _finite(state.positions) & _finite(state.cell)
        new = []
        for spec, nb in zip(specs, state.nbrs):
            if force_rebuild:
                new.append(neighbors.build(spec, state.positions, state.cell))
                continue
            do = neighbors.needs_rebuild(nb, state.positions, state.cell, spec.skin) & ok
            new.append(jax.lax.cond(do, lambda r, c, nb, spec=spec: neighbors.build(spec, r, c),
                                    lambda r, c, nb: nb, state.positions, state.cell, nb))
        return state._replace(nbrs=tuple(new))

    def _force_fn(self, specs, full: bool):
        ff = self.forcefield
        virial = full or self.npt  # between frames only a barostat needs the virial

        def force(state: MDState) -> MDState:
            state = self._update_lists(state, specs)
            pred = ff(state.positions, state.cell, state.nbrs, state.bias, full, virial)
            return state._replace(pred=pred)

        return force

    def _initial(self, state: MDState) -> MDState:
        """Full prediction at the start and, for ERBS, the first deposition (step 0)."""
        ff = self.forcefield
        state = state._replace(pred=ff(state.positions, state.cell, state.nbrs, state.bias, True))
        if isinstance(ff.bias, ERBS):
            g = ff.erbs_descriptor(state.positions, state.cell, state.nbrs)
            bias = ff.bias.deposit(state.bias, g)
            state = state._replace(bias=bias, pred=ff(state.positions, state.cell, state.nbrs, bias, True))
        return state

    def _track_lists(self, carry: Carry, state: MDState) -> Carry:
        overflow = carry.overflow
        counts = []
        for nb in state.nbrs:
            overflow = overflow | nb.overflow
            counts.append(nb.max_neighbors)
        if not counts:  # an ASE calculator without JAX terms needs no lists
            return carry
        return carry._replace(overflow=overflow, max_neighbors=jnp.maximum(carry.max_neighbors, jnp.stack(counts)))

    def _one_step(self, carry: Carry, specs, full: bool) -> tuple[Carry, Control]:
        t = carry.step.astype(jnp.float64) * self.dt_fs
        state, control = self._apply_modifiers(carry.state, t)
        state = self.integrator.step(state, self._force_fn(specs, full), control.kT, control.pressure)
        step = carry.step + 1
        ff = self.forcefield
        if isinstance(ff.bias, ERBS):
            def deposit(s: MDState) -> MDState:
                g = ff.erbs_descriptor(s.positions, s.cell, s.nbrs)
                bias = ff.bias.deposit(s.bias, g)
                return s._replace(bias=bias, pred=ff(s.positions, s.cell, s.nbrs, bias, full, full or self.npt))

            state = jax.lax.cond(step % ff.bias.interval == 0, deposit, lambda s: s, state)
        carry = self._track_lists(carry, state)
        return carry._replace(state=state, step=step), control

    def _reset(self, carry: Carry, specs) -> Carry:
        """Start structure and cell, new momenta, thermostat re-initialised; bias kept."""
        t = carry.step.astype(jnp.float64) * self.dt_fs
        control = self._control(t)
        key, k_mom = jax.random.split(carry.state.key)
        masses = carry.state.masses
        momenta = maxwell_boltzmann(k_mom, masses, control.kT, self.integrator.remove_com)
        z = jnp.zeros_like(carry.state.thermostat.xi)
        state = carry.state._replace(positions=jnp.asarray(self.positions0), cell=jnp.asarray(self.cell0),
                                     momenta=momenta, key=key, thermostat=ThermostatState(z, z))
        state = self.integrator.init(state, control.kT)
        state = self._update_lists(state, specs, force_rebuild=True)
        ff = self.forcefield
        state = state._replace(pred=ff(state.positions, state.cell, state.nbrs, state.bias, True))
        carry = self._track_lists(carry, state)
        return carry._replace(state=state, n_resets=carry.n_resets + 1)

    def _group(self, specs, carry: Carry, n_steps) -> tuple[Carry, dict]:
        """``n_steps`` (0..sampling_rate) steps, the last one full, then checks and a frame."""
        def cheap(i, c):
            return jax.lax.cond(c.stopped, lambda c: c, lambda c: self._one_step(c, specs, False)[0], c)

        carry = jax.lax.fori_loop(0, jnp.maximum(n_steps - 1, 0), cheap, carry)
        ran = (n_steps > 0) & ~carry.stopped
        dummy = Control(jnp.zeros(()), jnp.zeros(()))

        def full_step(c):
            c, control = self._one_step(c, specs, True)
            return c, Control(jnp.asarray(control.kT, jnp.float64), jnp.asarray(control.pressure, jnp.float64))

        carry, control = jax.lax.cond(ran, full_step, lambda c: (c, dummy), carry)
        state = carry.state
        values = jnp.stack([jnp.asarray(c.value(state, aux, self.dof), jnp.float64)
                            for c, aux in zip(self.check_list, self.check_aux)])
        oks = jnp.stack([jnp.asarray(c.passes(v), bool) for c, v in zip(self.check_list, values)])
        triggered = ran & ~jnp.all(oks)
        uncertain_only = jnp.all(oks | jnp.asarray([bool(getattr(c, "needs_uncertainty", False))
                                                    for c in self.check_list]))
        keep = ~triggered | (self.keep_trigger_frame & uncertain_only)
        first = triggered & (carry.first_stop < 0)
        frame = {
            "positions": state.positions, "momenta": state.momenta, "cell": state.cell,
            "energy": state.pred.energy, "forces": state.pred.forces, "virial": state.pred.virial,
            "energy_bias": state.pred.energy_bias, "forces_bias": state.pred.forces_bias,
            "energy_uncertainty": state.pred.energy_uncertainty, "forces_uncertainty": state.pred.forces_uncertainty,
            "step": carry.step, "kT": control.kT, "pressure": control.pressure,
            "temperature": temperature(state.momenta, state.masses, self.dof),
            "accepted": ran & keep & (n_steps == self.sampling_rate),
        }
        carry = carry._replace(first_stop=jnp.where(first, carry.step, carry.first_stop),
                               stop_check=jnp.where(first, jnp.argmin(oks).astype(jnp.int32), carry.stop_check))
        if self.on_trigger == "stop":
            carry = carry._replace(stopped=carry.stopped | triggered)
        else:
            carry = jax.lax.cond(triggered, lambda c: self._reset(c, specs), lambda c: c, carry)
        return carry, frame

    def _block_fn(self, specs):
        if specs not in self._compiled:
            def block(carry: Carry, n_steps: jax.Array):
                carry = carry._replace(overflow=jnp.zeros((), bool))
                return jax.lax.scan(lambda c, n: self._group(specs, c, n), carry, n_steps)

            self._compiled[specs] = jax.jit(block)
        return self._compiled[specs]

    # ------------------------------------------------------------------ host side
    def _reallocate(self, start: Carry, failed: Carry) -> Carry:
        """Grow every overflowing list to fit the largest count seen, rebuilt at the block start."""
        state = start.state
        positions, cell = np.asarray(state.positions), np.asarray(state.cell)
        specs, nbrs = [], []
        seen = np.asarray(failed.max_neighbors)
        for i, (spec, nb) in enumerate(zip(self.specs, state.nbrs)):
            if seen[i] > spec.capacity:
                spec, nb = self._allocate(positions, cell, spec.cutoff,
                                          min_capacity=max(spec.capacity, int(math.ceil(seen[i] * self.capacity_factor))))
                nb = jax.tree_util.tree_map(jnp.asarray, nb)
            specs.append(spec)
            nbrs.append(nb)
        self.specs = tuple(specs)
        return start._replace(state=state._replace(nbrs=tuple(nbrs)), overflow=jnp.zeros((), bool))

    def _frames_to_atoms(self, frames: dict) -> list[Atoms]:
        frames = jax.device_get(frames)
        out = []
        for k in np.nonzero(frames["accepted"])[0]:
            atoms = Atoms(numbers=self.atoms.numbers, positions=frames["positions"][k], pbc=self.atoms.pbc,
                          cell=frames["cell"][k] if self.pbc else self.atoms.cell, momenta=frames["momenta"][k])
            results = {
                "energy": float(frames["energy"][k]), "forces": frames["forces"][k],
                "energy_uncertainty": float(frames["energy_uncertainty"][k]),
                "forces_uncertainty": frames["forces_uncertainty"][k],
                "energy_bias": float(frames["energy_bias"][k]), "forces_bias": frames["forces_bias"][k],
            }
            if self.frame_stress:
                results["stress"] = full_3x3_to_voigt_6_stress(frames["virial"][k] / abs(np.linalg.det(frames["cell"][k])))
            atoms.calc = SinglePointCalculator(atoms, **results)
            step = int(frames["step"][k])
            atoms.info.update(step=step, time=step * self.dt_fs, temperature=float(frames["temperature"][k]),
                              target_temperature=float(frames["kT"][k]) / units.kB)
            if self.npt:
                atoms.info["target_pressure"] = float(frames["pressure"][k]) / units.bar
            out.append(atoms)
        return out

    def _write(self, atoms_list: list[Atoms]) -> None:
        if self.keep_frames or self.trajectory is None:
            self.frames.extend(atoms_list)
        if self.trajectory is not None and atoms_list:
            import znh5md

            znh5md.IO(self.trajectory, timestep=self.sampling_rate * self.dt_fs).extend(atoms_list)

    # ------------------------------------------------------------------ checkpoints
    def _fingerprint(self) -> str:
        """Hash of everything that decides the trajectory (called after ``_setup``)."""
        base = self.forcefield.base
        if isinstance(base, JaxBase):
            params = [np.asarray(x) for t in base.terms for x in jax.tree_util.tree_leaves(t.params)]
            base_id = [type(base).__name__, list(base.species), list(base.cutoffs), base.ddof, _digest(*params)]
        else:
            base_id = [type(base).__name__, type(base.calc).__name__]
        integrator = type(self.integrator)
        config = {
            "version": CHECKPOINT_VERSION,
            "numbers": self.atoms.numbers.tolist(),
            "structure": _digest(self.positions0, self.cell0, self.masses, np.asarray(self.atoms.pbc)),
            "momenta": _digest(self.atoms.get_momenta()) if self.use_momenta else None,
            "steps": int(self.steps), "sampling_rate": int(self.sampling_rate), "timestep": self.dt_fs,
            "seed": int(self.seed), "temperature": float(self.temperature),
            "integrator": [f"{integrator.__module__}.{integrator.__qualname__}", repr(self.integrator)],
            "modifiers": [repr(m) for m in self.modifiers], "checks": [repr(c) for c in self.checks],
            "bias": [bias_kind(self.forcefield.bias), repr(self.forcefield.bias)],
            "pca_frames": _digest(*(a.positions for a in self.pca_frames)) if self.pca_frames else None,
            "base": base_id, "on_trigger": self.on_trigger,
            "keep_trigger_frame": bool(self.keep_trigger_frame), "n_lists": len(self.specs),
        }
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def _checkpoint_tmp(self) -> Path:
        path = Path(self.checkpoint)
        return path.with_name(path.name + ".tmp")  # same folder, so os.replace is a rename

    def _save_checkpoint(self, carry: Carry, written: int, reruns: int) -> None:
        path = Path(self.checkpoint)
        meta = {
            "version": CHECKPOINT_VERSION, "fingerprint": self._config_hash, "frames_written": written,
            "block_reruns": reruns,
            "specs": [[s.cutoff, s.skin, s.capacity, list(s.pbc)] for s in self.specs],
        }
        leaves = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(carry))}
        tmp = self._checkpoint_tmp()
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, meta=np.asarray(json.dumps(meta)), **leaves)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a kill leaves the old or the new checkpoint, never half of one

    def _resume(self) -> tuple[Carry, int, int] | None:
        """(carry, frames written, block re-runs) from a usable checkpoint, else None (warned)."""
        path, trajectory = Path(self.checkpoint), Path(self.trajectory)
        if not path.exists():
            return None

        def ignore(why: str) -> None:
            warnings.warn(f"checkpoint {path} ignored ({why}); starting the run from scratch", stacklevel=4)

        template, treedef = jax.tree_util.tree_flatten(self.carry)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                n_leaves = sum(k.startswith("leaf_") for k in data.files)
                leaves = [data[f"leaf_{i}"] for i in range(n_leaves)]
        except (OSError, ValueError, KeyError) as err:
            ignore(f"unreadable: {err}")
            return None
        if meta.get("version") != CHECKPOINT_VERSION or meta.get("fingerprint") != self._config_hash:
            ignore("it belongs to a different run configuration")
            return None
        # shapes may differ from the template (lists grown after an overflow), dtypes may not
        if len(leaves) != len(template) or any(a.dtype != b.dtype for a, b in zip(leaves, template)):
            ignore("its state does not fit this run")
            return None
        written = int(meta["frames_written"])
        on_disk = _h5md_frames(trajectory)
        if on_disk is None or on_disk < written:
            ignore(f"the trajectory {trajectory} holds {on_disk} of its {written} frames")
            return None
        _h5md_truncate(trajectory, written)
        self.specs = tuple(neighbors.NeighborSpec(float(c), float(skin), int(cap), tuple(bool(p) for p in pbc))
                           for c, skin, cap, pbc in meta["specs"])
        carry = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in leaves])
        return carry, written, int(meta["block_reruns"])

    # ------------------------------------------------------------------ the loop
    def run(self) -> MDSummary:
        """Run all steps (or until a stop); frames are on disk after every block.

        With a ``checkpoint`` the run continues from it when it matches (see the module docstring).
        """
        start_time = time.perf_counter()
        self._setup()
        resumed = None
        if self.checkpoint is not None:
            self._config_hash = self._fingerprint()
            resumed = self._resume()
        if resumed is not None:
            carry, written, reruns = resumed
        else:
            carry, written, reruns = self.carry, 0, 0
            if self.trajectory is not None:
                Path(self.trajectory).parent.mkdir(parents=True, exist_ok=True)
                Path(self.trajectory).unlink(missing_ok=True)
        done = first_step = int(carry.step)
        bar = tqdm(total=self.steps, initial=done, desc="sampling", unit="step", disable=not self.progress)
        while done < self.steps and not bool(carry.stopped):
            n_groups = self.groups_per_block
            schedule = np.zeros(n_groups, np.int32)
            remaining = self.steps - done
            for g in range(n_groups):
                schedule[g] = min(self.sampling_rate, remaining)
                remaining -= schedule[g]
            start = carry
            while True:
                new = self._block_fn(self.specs)(start, jnp.asarray(schedule))
                carry, frames = new
                if not bool(carry.overflow):
                    break
                reruns += 1
                start = self._reallocate(start, carry)
            atoms_list = self._frames_to_atoms(frames)
            self._write(atoms_list)
            written += len(atoms_list)
            step_now = int(carry.step)
            bar.update(step_now - done)
            done = step_now
            bar.set_postfix(T=f"{atoms_list[-1].info['temperature']:.0f}K" if atoms_list else "-",
                            frames=written, resets=int(carry.n_resets))
            if self.checkpoint is not None:
                self._save_checkpoint(carry, written, reruns)
        bar.close()
        self.carry = carry
        if self.checkpoint is not None:  # finished: nothing to resume
            Path(self.checkpoint).unlink(missing_ok=True)
            self._checkpoint_tmp().unlink(missing_ok=True)
        wall = time.perf_counter() - start_time
        first = int(carry.first_stop)
        stop_check = int(carry.stop_check)
        return MDSummary(
            steps=int(self.steps), steps_done=done, steps_before_stop=first if first >= 0 else done,
            stopped=bool(carry.stopped), n_resets=int(carry.n_resets), frames_written=written,
            stop_reason=self.check_list[stop_check].name if stop_check >= 0 else None, wall_s=wall,
            ms_per_step=1e3 * wall / max(done - first_step, 1), block_reruns=reruns)


def run_md(atoms: Atoms, forcefield: ForceField, integrator, steps: int, **options) -> MDSummary:
    """Configure and run :class:`MDRun` in one call (options as its attributes)."""
    return MDRun(atoms, forcefield, integrator, steps, **options).run()
