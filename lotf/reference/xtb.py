"""Seed trajectories for any molecule from semi-empirical MD: GFN-xTB through tblite, in process.

SMILES -> RDKit conformers -> Packmol box at a density -> FIRE relaxation -> Langevin NVT, one
labelled frame every `interval` steps. No classical topology is needed, only SMILES.

Units: eV, eV/Å, eV/Å³ (ASE sign convention, Voigt order), K, fs, g/cm^3. The total charge is
the sum of the molecules' formal charges (ion pairs are neutral boxes, single ions are not).

Checkpoint: with a `checkpoint` file, every sampled frame (positions, momenta, energy, forces,
stress, step) is appended to an ASE trajectory as soon as it is computed. A rerun with the same
inputs continues from the last frame written (the relaxation and the steps after that frame are
redone; the thermostat's random stream restarts from a seed derived from `seed` and the step, so a
resumed run is statistically, not bitwise, the same). Other inputs start the file over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import ase
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import Trajectory
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.optimize import FIRE
from ase.units import fs

from lotf.reference import structures

log = logging.getLogger(__name__)

METHODS = ("GFN1-xTB", "GFN2-xTB", "IPEA1-xTB")


def calculator(method: str = "GFN1-xTB", charge: int = 0, electronic_temperature: float = 300.0):
    """tblite's ASE calculator (energy eV, forces eV/Å, stress eV/Å³ when periodic), quiet."""
    from tblite.ase import TBLite

    if method not in METHODS:
        raise ValueError(f"unknown xTB method {method!r} (known: {', '.join(METHODS)})")
    return TBLite(method=method, charge=int(charge), electronic_temperature=electronic_temperature, verbosity=0)


def _labelled(atoms: ase.Atoms, step: int, timestep: float) -> ase.Atoms:
    """A copy with the calculator's energy, forces and stress frozen in, plus step, time and T."""
    frame = atoms.copy()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.any():
        results["stress"] = atoms.get_stress()
    frame.calc = SinglePointCalculator(frame, **results)
    frame.info.update(step=int(step), time_fs=float(step * timestep), temperature=float(atoms.get_temperature()))
    return frame


def _check(smiles, counts, density, temperature, n_steps, timestep, interval, method) -> None:
    if method not in METHODS:
        raise ValueError(f"xtb_seed: unknown method {method!r} (known: {', '.join(METHODS)})")
    if isinstance(smiles, str) or isinstance(counts, int):
        raise ValueError("xtb_seed: smiles and counts must be lists, e.g. ['O'] and [4]")
    if len(smiles) != len(counts) or not smiles:
        raise ValueError(f"xtb_seed: {len(smiles)} SMILES but {len(counts)} counts (need one count per SMILES)")
    for k, n in enumerate(counts):
        if int(n) != n or n < 1:
            raise ValueError(f"xtb_seed: counts[{k}] must be a positive integer, got {n}")
    for name, value in (("density", density), ("temperature", temperature), ("timestep", timestep)):
        if not value > 0:
            raise ValueError(f"xtb_seed: {name} must be positive, got {value}")
    for name, value in (("n_steps", n_steps), ("interval", interval)):
        if int(value) != value or value < 1:
            raise ValueError(f"xtb_seed: {name} must be a positive integer, got {value}")


def _resume(checkpoint: Path | None, key: dict) -> list[ase.Atoms]:
    """Frames of a checkpoint written with the same inputs; otherwise none (and the file is cleared)."""
    if checkpoint is None:
        return []
    meta = checkpoint.with_suffix(".json")
    if checkpoint.exists() and meta.exists() and json.loads(meta.read_text()) == key:
        try:
            with Trajectory(str(checkpoint)) as traj:
                return [traj[i] for i in range(len(traj))]
        except Exception as err:  # a file cut mid-header: start over rather than fail
            log.warning("xtb_seed: unreadable checkpoint %s (%s), starting over", checkpoint, err)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.unlink(missing_ok=True)
    meta.write_text(json.dumps(key))
    return []


def xtb_seed(
    smiles: Sequence[str],
    counts: Sequence[int],
    density: float,
    temperature: float,
    n_steps: int,
    timestep: float = 0.5,
    interval: int = 10,
    seed: int = 42,
    method: str = "GFN1-xTB",
    tolerance: float = 2.0,
    relax_steps: int = 200,
    fmax: float = 0.1,
    friction: float = 0.01,
    electronic_temperature: float = 300.0,
    checkpoint: str | Path | None = None,
    log_every: int | None = None,
) -> list[ase.Atoms]:
    """Semi-empirical seed trajectory: `counts[k]` molecules of `smiles[k]` at `density` (g/cm^3).

    RDKit conformer per SMILES, Packmol box (periodic, `tolerance` Å), at most `relax_steps` FIRE
    steps to `fmax` (eV/Å), Maxwell-Boltzmann velocities at `temperature` (K), then `n_steps`
    Langevin steps of `timestep` fs (friction in 1/fs) with xTB `method`. Returns the frames after
    steps `interval`, `2 interval`, ... with energy, forces, stress and info step, time_fs,
    temperature (K), charge. `checkpoint`: trajectory file to resume from (module docstring).
    """
    _check(smiles, counts, density, temperature, n_steps, timestep, interval, method)
    smiles, counts = [str(s) for s in smiles], [int(n) for n in counts]
    n_steps, interval = int(n_steps), int(interval)
    log_every = log_every or max(interval, n_steps // 20)

    mols = []
    for s in smiles:
        try:
            mols.append(structures.smiles_to_conformers(s, 1, seed=seed)[0])
        except ValueError as err:
            raise ValueError(f"xtb_seed: cannot parse SMILES {s!r}") from err
    charge = int(round(sum(m.get_initial_charges().sum() * n for m, n in zip(mols, counts))))
    _closed_shell(sum(int(m.numbers.sum()) * n for m, n in zip(mols, counts)), charge, "xtb_seed")

    # n_steps is left out so that a longer rerun extends the run already on disk
    key = dict(smiles=smiles, counts=counts, density=density, temperature=temperature,
               timestep=timestep, interval=interval, seed=seed, method=method, tolerance=tolerance,
               relax_steps=relax_steps, fmax=fmax, friction=friction, electronic_temperature=electronic_temperature)
    return _run(lambda: structures.pack_box(mols, counts, density, tolerance=tolerance, seed=seed, pbc=True), charge,
                key, temperature, n_steps, timestep, interval, seed, method, relax_steps, fmax, friction,
                electronic_temperature, checkpoint, log_every)


def xtb_seed_from(
    atoms: ase.Atoms,
    temperature: float,
    n_steps: int,
    timestep: float = 0.5,
    interval: int = 10,
    seed: int = 42,
    method: str = "GFN1-xTB",
    charge: int = 0,
    relax_steps: int = 200,
    fmax: float = 0.1,
    friction: float = 0.01,
    electronic_temperature: float = 300.0,
    checkpoint: str | Path | None = None,
    log_every: int | None = None,
) -> list[ase.Atoms]:
    """:func:`xtb_seed` from a given periodic box (e.g. a user's structure file) instead of a
    Packmol box: FIRE relaxation, velocities and Langevin NVT as there, total charge `charge`."""
    if not atoms.pbc.all() or atoms.cell.volume <= 0:
        raise ValueError("xtb_seed_from: the start structure needs a periodic cell (pbc and a cell with volume)")
    _check(["-"], [1], 1.0, temperature, n_steps, timestep, interval, method)
    n_steps, interval, charge = int(n_steps), int(interval), int(charge)
    _closed_shell(int(atoms.numbers.sum()), charge, "xtb_seed_from")
    start = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True)
    key = dict(structure=hashlib.sha256(np.concatenate([start.numbers.astype(float), start.positions.ravel(),
                                                        start.cell.array.ravel()]).tobytes()).hexdigest(),
               charge=charge, temperature=temperature, timestep=timestep, interval=interval, seed=seed,
               method=method, relax_steps=relax_steps, fmax=fmax, friction=friction,
               electronic_temperature=electronic_temperature)
    return _run(lambda: start.copy(), charge, key, temperature, n_steps, timestep, interval, seed, method,
                relax_steps, fmax, friction, electronic_temperature, checkpoint, log_every)


def _closed_shell(nuclear_charge: int, charge: int, who: str) -> None:
    """Refuse an odd electron count (the seeds run closed-shell xTB)."""
    electrons = nuclear_charge - charge
    if electrons % 2:
        raise ValueError(f"{who}: {electrons} electrons at total charge {charge}: radicals are not supported")


def _run(make_box, charge: int, key: dict, temperature, n_steps, timestep, interval, seed, method, relax_steps, fmax,
         friction, electronic_temperature, checkpoint, log_every) -> list[ase.Atoms]:
    """FIRE-relax the box ``make_box()`` (or resume from the checkpoint written with ``key``), then the NVT run."""
    n_steps, interval = int(n_steps), int(interval)
    log_every = log_every or max(interval, n_steps // 20)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    frames = [f for f in _resume(checkpoint, key) if f.info["step"] <= n_steps]

    calc = calculator(method, charge, electronic_temperature)
    if frames:  # continue from the last frame written, with its velocities
        atoms = frames[-1].copy()
        start = int(frames[-1].info["step"])
        log.info("xtb_seed: resuming at step %d with %d frames from %s", start, len(frames), checkpoint)
        atoms.calc = calc
    else:
        atoms = make_box()
        atoms.calc = calc
        opt = FIRE(atoms, logfile=None)
        converged = opt.run(fmax=fmax, steps=relax_steps)
        log.info("xtb_seed: %d atoms, charge %d, FIRE %d steps (%s), E = %.3f eV", len(atoms), charge,
                 opt.nsteps, "converged" if converged else "not converged", atoms.get_potential_energy())
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
        Stationary(atoms)
        start = 0

    # fixcm=False: ASE deprecates fixcm=True as it biases small boxes; the box may drift slowly
    md = Langevin(atoms, timestep * fs, temperature_K=temperature, friction=friction / fs, fixcm=False,
                  rng=np.random.default_rng([int(seed), start]))
    writer = Trajectory(str(checkpoint), "a") if checkpoint is not None else None
    t0 = time.perf_counter()
    try:
        for step in range(start + 1, n_steps + 1):
            md.run(1)
            if step % interval == 0:
                frame = _labelled(atoms, step, timestep)
                frame.info["charge"] = charge
                frames.append(frame)
                if writer is not None:
                    writer.write(frame)  # ASE's trajectory syncs its index after each frame
            if step % log_every == 0 or step == n_steps:
                rate = (time.perf_counter() - t0) / (step - start)
                log.info("xtb_seed: step %d/%d  T = %.0f K  E = %.4f eV  (%.3f s/step)", step, n_steps,
                         atoms.get_temperature(), atoms.get_potential_energy(), rate)
    finally:
        if writer is not None:
            writer.close()
    return frames
