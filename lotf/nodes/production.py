"""Production MD (seed 1): compress to a density, equilibrate, then a long NVT or NPT run.

One node per run keeps the protocol together and the graph small: a packed, relaxed box is
compressed by rescaling the cell over ``compress_steps`` (the density modifier, NVT) to the
target ``density`` (seed 1: the experimental density at T over 5 ps), equilibrated for
``equilibration_steps`` in NVT (5 ps before NVT production, 200 ps before NPT), and then run for
``steps`` in ``ensemble``. Only the production frames are stored.

A production run of a potential that breaks molecules yields no observables: diffusion
coefficients of atoms hopping between fragments are not diffusion. Like the NaN check, a
bond-graph check is always on in the production of a molecular system (more than one molecule
in the start structure's bond graph; the run stops at the first changed bond),
and a box whose molecules already changed during compression or equilibration (molecule kinds
differ from the start structure's) gets no production run at all. Both are recorded in the
metrics (``stop_reason``, ``molecules_intact``), and the analysis nodes report NaN for a run
left with fewer than two frames.

Long runs survive being killed: the run works in a scratch folder outside DVC's outputs (DVC
deletes a stage's outputs before it runs it again), keyed by everything that determines the
trajectory (:mod:`lotf.nodes.scratch`). Every phase checkpoints there and the prepared start
state is kept, so ``dvc repro`` after a kill continues where the run stopped. The folder is
removed when the run finishes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import ase
import numpy as np
import zntrack

from lotf.dynamics.state import AMU_PER_A3_TO_G_PER_CM3
from lotf.nodes.frames import read_h5md
from lotf.nodes.scratch import finish, scratch_dir
from lotf.nodes.sampling import _start_structure, forcefield_for

PHASES = ("compress", "equilibrate", "production")


def phase_seed(seed: int, phase: str) -> int:
    """The PRNG seed of one phase: deterministic in (node seed, phase name), distinct per phase.

    Every phase draws its own start momenta and thermostat noise, so the phases must not share a
    seed (the equilibration would otherwise replay the noise sequence of the compression).
    """
    if phase not in PHASES:
        raise ValueError(f"unknown ProductionMD phase {phase!r} (one of {', '.join(PHASES)})")
    digest = hashlib.sha256(f"lotf.ProductionMD:{int(seed)}:{PHASES.index(phase)}:{phase}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def state_atoms(template: ase.Atoms, state) -> ase.Atoms:
    """The MD state (unwrapped positions, momenta, cell) as Atoms."""
    atoms = template.copy()
    atoms.calc = None
    atoms.positions = np.asarray(state.positions)
    if atoms.pbc.all():
        atoms.cell = np.asarray(state.cell)
    atoms.set_momenta(np.asarray(state.momenta))
    return atoms


def _save_atoms(path: Path, atoms: ase.Atoms) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=atoms.pbc,
             momenta=atoms.get_momenta())
    os.replace(tmp, path)


def _load_atoms(path: Path) -> ase.Atoms:
    with np.load(path) as data:
        atoms = ase.Atoms(numbers=data["numbers"], positions=data["positions"], cell=data["cell"],
                          pbc=data["pbc"])
        atoms.set_momenta(data["momenta"])
    return atoms


def trajectory_averages(path) -> dict:
    """Mean temperature (and density, periodic runs) of a stored trajectory, read without loading
    positions; empty when the run left no frames. Shared by every MD node's metrics."""
    import h5py

    from lotf.analysis.io import read_cells, read_info

    path = Path(path)
    with h5py.File(path, "r") as f:
        if "observables" not in f:
            return {}
        group = next(iter(f["observables"]))
        temperature = np.asarray(f[f"observables/{group}/temperature/value"])
    out = {"temperature_mean_K": float(temperature.mean())}
    info = read_info(path)
    if info.has_cell and info.pbc.all():
        volumes = np.abs(np.linalg.det(read_cells(path)))
        out["density_mean_g_cm3"] = float(np.mean(info.masses.sum() / volumes) * AMU_PER_A3_TO_G_PER_CM3)
    return out


def is_molecular(atoms: ase.Atoms) -> bool:
    """More than one molecule in the covalent bond graph (a liquid, not a metal or a network solid,
    whose single 'molecule' changes its bond count with every vibration)."""
    from lotf.selection.screening import molecule_kinds

    return len(molecule_kinds(atoms)) > 1


def changed_molecules(before: ase.Atoms, after: ase.Atoms) -> str:
    """'' when both structures hold the same molecules (Hill formula and bond count of every
    molecule of the covalent bond graph), else a short description of what changed."""
    from collections import Counter

    from lotf.selection.screening import molecule_kinds

    old, new = Counter(molecule_kinds(before)), Counter(molecule_kinds(after))
    if old == new:
        return ""
    gone = ", ".join(f"{n} x {f} ({b} bonds)" for (f, b), n in sorted((old - new).items())[:2])
    came = ", ".join(f"{n} x {f} ({b} bonds)" for (f, b), n in sorted((new - old).items())[:2])
    return f"lost {gone or 'nothing'}; new {came or 'nothing'}"


class ProductionMD(zntrack.Node):
    """Compress (optional) -> NVT equilibration -> production; frames every ``sampling_rate`` steps.

    Attributes:
        data, data_id: start structure (e.g. a packed box relaxed with FIRE).
        model: a training node (or anything :func:`~lotf.nodes.sampling.forcefield_for` takes).
        d3: empty, or D3(BJ) options for the hybrid MLP+D3 (e.g. ``{"cutoff": 20.0}``).
        temperature: K. timestep: fs. thermostat/thermostat_params: as in ``MDSampling``
            (seed 1: Nosé-Hoover chain).
        ensemble: "nvt" or "npt" (stochastic cell rescaling, ``barostat`` as in ``MDSampling``).
        density: g/cm³ reached by isotropic rescaling over ``compress_steps`` (None: no compression,
            unless ``density_table`` is given).
        density_table: an experimental density table (a DVC dependency, relative to the project,
            e.g. ``data/experimental/bmim_bf4_density.csv``); with ``density`` None the target is
            the table's density at ``temperature``, read when the stage runs, so a changed table
            puts the run out of date.
        equilibration_steps: NVT steps before production. steps: production steps.
        checks: stop criteria of the production run (a NaN check is always on, and a bond-graph
            check for a molecular system).
        seed: node seed; each phase runs with its own seed derived from it (:func:`phase_seed`).
    """

    data: list = zntrack.deps()
    model: Any = zntrack.deps()
    data_id: int = zntrack.params(-1)
    d3: dict = zntrack.params(default_factory=dict)
    temperature: float = zntrack.params(300.0)
    timestep: float = zntrack.params(0.5)
    thermostat: str = zntrack.params("nose_hoover")
    thermostat_params: dict = zntrack.params(default_factory=dict)
    ensemble: str = zntrack.params("nvt")
    barostat: dict = zntrack.params(default_factory=dict)
    density: float | None = zntrack.params(None)
    density_table: str | None = zntrack.deps_path(None)
    compress_steps: int = zntrack.params(10_000)
    equilibration_steps: int = zntrack.params(10_000)
    steps: int = zntrack.params(100_000)
    sampling_rate: int = zntrack.params(100)
    seed: int = zntrack.params(0)
    checks: list = zntrack.params(default_factory=list)

    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")
    metrics: dict = zntrack.metrics()

    def _settings(self) -> dict:
        settings = {key: getattr(self, key) for key in (
            "d3", "temperature", "timestep", "thermostat", "thermostat_params", "ensemble", "barostat",
            "compress_steps", "equilibration_steps", "steps", "sampling_rate", "seed", "checks")}
        return {**settings, "density": self._target_density()}

    def _target_density(self) -> float | None:
        """``density``, else the table's density at ``temperature``, else None (no compression)."""
        if self.density is not None or not self.density_table:
            return self.density
        from lotf.analysis.density import experimental_density

        return experimental_density(self.temperature, self.density_table)

    def _validate(self) -> None:
        if self.ensemble not in ("nvt", "npt"):
            raise ValueError(f"ProductionMD.ensemble: 'nvt' or 'npt', got {self.ensemble!r}")
        if self.density is not None and not self.density > 0:
            raise ValueError(f"ProductionMD.density: must be > 0 g/cm³, got {self.density}")
        for key in ("compress_steps", "equilibration_steps"):
            if getattr(self, key) < 0:
                raise ValueError(f"ProductionMD.{key}: must be >= 0, got {getattr(self, key)}")
        if self.steps < 1:
            raise ValueError(f"ProductionMD.steps: must be >= 1, got {self.steps}")

    def run(self) -> None:
        from lotf.dynamics import checks as checks_mod
        from lotf.dynamics.integrators import make_integrator
        from lotf.dynamics.md import MDRun
        from lotf.dynamics.state import density as mass_density

        self._validate()
        start = _start_structure(self.data, self.data_id, "ProductionMD")
        scratch = scratch_dir(self.name, self._settings(), start, self.model)

        def phase(name, atoms, steps, ensemble, modifiers=(), **options):
            integrator = make_integrator(self.thermostat, self.timestep, ensemble, self.thermostat_params,
                                         self.barostat if ensemble == "npt" else None)
            run = MDRun(atoms, forcefield_for(self.model, None, self.d3), integrator, steps=steps,
                        temperature=self.temperature, seed=phase_seed(self.seed, name), modifiers=list(modifiers),
                        use_momenta=atoms.has("momenta"), **options)
            return run, run.run()

        def preparation(name: str, steps: int) -> dict:
            # frames and checkpoints in scratch, so a kill during a 200 ps equilibration loses little;
            # the production's frame rate makes an NVT equilibration the same program as an NVT
            # production, so the second one comes from the compilation cache
            return {"sampling_rate": min(steps, self.sampling_rate), "trajectory": scratch / f"{name}.h5",
                    "checkpoint": scratch / f"{name}.checkpoint.npz"}

        prepared = scratch / "prepared.npz"
        if prepared.exists():  # compression and equilibration were done before a kill
            atoms = _load_atoms(prepared)
        else:
            atoms = start
            target = self._target_density()
            if target is not None and self.compress_steps > 0:
                from lotf.dynamics.modifiers import DensityRamp

                rho0 = float(mass_density(atoms.get_masses(), atoms.cell.array))
                # the ramp reaches the target at the last step and is held there
                ramp = DensityRamp(rho_start=rho0, rho_end=float(target),
                                   t_end=max(self.compress_steps - 1, 1) * self.timestep)
                run, _ = phase("compress", atoms, self.compress_steps, "nvt", [ramp],
                               **preparation("compress", self.compress_steps))
                atoms = state_atoms(atoms, run.carry.state)
            if self.equilibration_steps > 0:
                run, _ = phase("equilibrate", atoms, self.equilibration_steps, "nvt",
                               **preparation("equilibrate", self.equilibration_steps))
                atoms = state_atoms(atoms, run.carry.state)
            _save_atoms(prepared, atoms)
        rho_start = float(mass_density(atoms.get_masses(), atoms.cell.array)) if atoms.pbc.all() else None

        trajectory = scratch / "frames.h5"
        molecular = is_molecular(start)
        changed = changed_molecules(start, atoms) if molecular else ""
        if changed:  # no production from a box the potential already broke
            finish(scratch, scratch / "none.h5", self.frames_path)
            self.metrics = {"steps": self.steps, "steps_done": 0, "stopped": 1, "molecules_intact": 0,
                            "stop_reason": f"molecules changed before production: {changed}", "frames": 0,
                            "density_start_production_g_cm3": rho_start}
            return
        checks = [checks_mod.from_dict(c) for c in self.checks]
        if molecular and not any(isinstance(c, checks_mod.BondGraphCheck) for c in checks):
            checks.append(checks_mod.BondGraphCheck())
        _, summary = phase("production", atoms, self.steps, self.ensemble, sampling_rate=self.sampling_rate,
                           checks=checks, trajectory=trajectory, checkpoint=scratch / "checkpoint.npz")
        finish(scratch, trajectory, self.frames_path)
        self.metrics = {
            "steps": summary.steps, "steps_done": summary.steps_done, "stopped": int(summary.stopped),
            "stop_reason": summary.stop_reason or "none", "frames": summary.frames_written,
            "molecules_intact": int(summary.stop_reason != "bond_graph"),
            "ms_per_step": summary.ms_per_step, "density_start_production_g_cm3": rho_start,
            **self._averages(),
        }

    def _averages(self) -> dict:
        return trajectory_averages(self.frames_path)

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)
