"""ZnTrack nodes for sampling: MD / UDD / ERBS (NVT or NPT, modifiers, checks) and FIRE.

Thin wrappers over :mod:`lotf.dynamics`. Both start from ``data[data_id]`` (any node's ``frames``)
and use ``model``: a node with ``model_dir`` (our training node; the fast JAX path) or any node
with ``get_calculator()`` (IPSuite's protocol; a lotf calculator also runs on the JAX path, any
other ASE calculator through the slower callback path with the same loop, checks and biases).
Outputs are H5MD ``frames.h5`` read back through ``frames``, and metrics. A killed MD run
continues where it stopped when the stage runs again (:mod:`lotf.nodes.scratch`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ase
import numpy as np
import zntrack

from lotf.nodes.frames import flatten, read_h5md
from lotf.nodes.scratch import finish, scratch_dir


def forcefield_for(model: Any, bias=None, d3: dict | None = None):
    """A :class:`~lotf.dynamics.potential.ForceField` for a model node, directory or calculator.

    ``d3`` (options of :func:`lotf.potential.d3_calculator.d3_energy_term`, e.g. ``{"cutoff": 20.0}``)
    adds D3(BJ) dispersion to a JAX model: the hybrid MLP+D3 of seed 1, in the same jitted step.
    """
    from lotf.dynamics.potential import JaxBase

    base = _base_potential(model)
    if d3:
        from lotf.potential.d3_calculator import d3_energy_term

        if not isinstance(base, JaxBase):
            raise ValueError("d3: a D3 term can only be added to a lotf (JAX) model, not to an ASE calculator")
        base = JaxBase([*base.terms, d3_energy_term(base.species, **d3)], base.species, base.ddof)
    from lotf.dynamics.potential import ForceField

    return ForceField(base, bias)


def _base_potential(model: Any):
    from lotf.dynamics.potential import AseBase, JaxBase
    from lotf.potential.calculator import LotfCalculator

    from lotf.nodes.revision import model_directory

    model_dir = model_directory(model)  # a node of another revision: that revision's model
    if model_dir is not None:
        return JaxBase.from_model_dir(model_dir)
    if hasattr(model, "get_calculator"):
        calc = model.get_calculator()
    elif hasattr(model, "get_potential_energy") or hasattr(model, "calculate"):
        calc = model
    else:
        raise TypeError(f"model: {type(model).__name__} has neither 'model_dir' nor 'get_calculator()'")
    if isinstance(calc, LotfCalculator):
        return JaxBase(calc.terms, calc.species, getattr(calc, "ddof", 0))
    return AseBase(calc)


def _start_structure(data, data_id: int, node: str) -> ase.Atoms:
    frames = flatten(data)
    if not frames:
        raise ValueError(f"{node}.data: no structures to start from")
    if not -len(frames) <= data_id < len(frames):
        raise IndexError(f"{node}.data_id: {data_id} out of range for {len(frames)} structures")
    atoms = frames[data_id].copy()
    atoms.calc = None
    return atoms


class MDSampling(zntrack.Node):
    """Sampling MD from ``data[data_id]`` with ``model``; frames every ``sampling_rate`` steps.

    Attributes:
        method: "md", "udd" or "erbs"; ``bias`` holds the UDD (height, width, per_atom, ddof) or
            ERBS parameters (temperature defaults to ``temperature``; ``pca_data: true`` feeds
            all ``data`` structures to the PCA only, required for ``basis: fixed``).
        ensemble: "nvt" or "npt" (stochastic cell rescaling; ``barostat`` takes pressure in bar,
            tau_p in fs, compressibility in 1/bar, anisotropic).
        thermostat: langevin | berendsen | nose_hoover | bussi | nve, options in ``thermostat_params``
            (Langevin friction in 1/fs, τ in fs).
        temperature: K; timestep: fs (0.5); steps; sampling_rate; seed.
        modifiers: list of dicts, e.g. {"kind": "temperature", "T_start": 230, "T_end": 500,
            "T_amp": 150, "n_oscillations": 10} (seed 1 eq. 9; kinds temperature/density/pressure).
        checks: list of dicts, e.g. {"kind": "forces_uncertainty", "max_value": 0.5} (seed 1 eq. 8).
        on_trigger: "stop" (keep frames up to the last accepted one) or "reset" (safe sampling).
        keep_trigger_frame: also keep the frame that failed uncertainty checks only (the
            campaign-era IPSuite ASEMD did; it is the structure the model is least sure of).
        d3: empty, or D3(BJ) options ({"functional": "b97-3c", "cutoff": 20.0, ...}) to run the
            hybrid MLP+D3 (seed 1's MLP+D3(8 Å) and MLP+D3(20 Å) density runs).
    """

    data: list = zntrack.deps()
    model: Any = zntrack.deps()
    data_id: int = zntrack.params(-1)
    method: str = zntrack.params("md")
    bias: dict = zntrack.params(default_factory=dict)
    ensemble: str = zntrack.params("nvt")
    thermostat: str = zntrack.params("langevin")
    thermostat_params: dict = zntrack.params(default_factory=dict)
    barostat: dict = zntrack.params(default_factory=dict)
    temperature: float = zntrack.params(300.0)
    timestep: float = zntrack.params(0.5)
    steps: int = zntrack.params(10_000)
    sampling_rate: int = zntrack.params(10)
    seed: int = zntrack.params(42)
    modifiers: list = zntrack.params(default_factory=list)
    checks: list = zntrack.params(default_factory=lambda: [{"kind": "forces_uncertainty", "max_value": 0.5}])
    on_trigger: str = zntrack.params("stop")
    keep_trigger_frame: bool = zntrack.params(False)
    d3: dict = zntrack.params(default_factory=dict)

    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")
    metrics: dict = zntrack.metrics()

    def _settings(self) -> dict:
        return {key: getattr(self, key) for key in (
            "data_id", "method", "bias", "ensemble", "thermostat", "thermostat_params", "barostat", "temperature",
            "timestep", "steps", "sampling_rate", "seed", "modifiers", "checks", "on_trigger", "keep_trigger_frame",
            "d3")}

    def run(self) -> None:
        from lotf.dynamics import biases, checks, modifiers
        from lotf.dynamics.integrators import make_integrator
        from lotf.dynamics.md import MDRun

        atoms = _start_structure(self.data, self.data_id, "MDSampling")
        bias_params = dict(self.bias)
        pca_data = bool(bias_params.pop("pca_data", False))
        bias = biases.from_dict(self.method, bias_params, self.temperature)
        integrator = make_integrator(self.thermostat, self.timestep, self.ensemble, self.thermostat_params,
                                     self.barostat)
        # trajectory and checkpoints live outside DVC's outputs until the run is done (resumable)
        scratch = scratch_dir(self.name, self._settings(), atoms, self.model)
        run = MDRun(
            atoms, forcefield_for(self.model, bias, self.d3), integrator, steps=self.steps, temperature=self.temperature,
            sampling_rate=self.sampling_rate, seed=self.seed,
            modifiers=[modifiers.from_dict(m) for m in self.modifiers],
            checks=[checks.from_dict(c) for c in self.checks], on_trigger=self.on_trigger,
            keep_trigger_frame=self.keep_trigger_frame, trajectory=scratch / "frames.h5", checkpoint=scratch / "checkpoint.npz",
            pca_frames=flatten(self.data) if pca_data else None,
        )
        summary = run.run()
        finish(scratch, scratch / "frames.h5", self.frames_path)
        self.metrics = {
            "steps": summary.steps, "steps_done": summary.steps_done,
            "steps_before_stop": summary.steps_before_stop, "stopped": int(summary.stopped),
            "resets": summary.n_resets, "frames": summary.frames_written,
            "stop_reason": summary.stop_reason or "none", "ms_per_step": summary.ms_per_step,
        }

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)


class GeometryOptimisation(zntrack.Node):
    """FIRE relaxation of one structure, ``data[data_id]``, with ``model``.

    Converged when the largest force is below ``fmax`` (eV/Å; default 0.05, a tight relaxation
    such as the production start boxes), after at most ``max_steps`` steps. Seed 1's in-loop
    relaxation (the campaigns' ``geo_opt`` rows, ``stages.common.GEO_OPT``) uses fmax 0.5 on the
    last frame of the MD (``data=md.frames, data_id=-1``: the last frame the uncertainty check
    accepted). ``frames`` holds the optimisation path without the start structure (already in
    the MD pool): every ``sampling_rate``-th step, thinned to at most ``max_frames`` evenly
    spaced frames, always ending with the final (relaxed or last) structure. Seed 1's runs took
    35-48 steps at fmax 0.5, so 50 frames keep the whole path of a normal run, while a run that
    never converges adds 50 frames to the pool, not a thousand.

    If ``data`` is empty (a sampler that stopped before its first frame), the node relaxes
    ``fallback[-1]`` instead (e.g. the structure that MD started from), so the next iteration
    still has a start; with neither it writes no frames. Both cases are in the metrics
    (``n_input``, ``from_fallback``). ``relax_cell`` also relaxes the cell at ``pressure`` (bar).
    """

    data: list = zntrack.deps()
    model: Any = zntrack.deps()
    fallback: list | None = zntrack.deps(None)
    data_id: int = zntrack.params(-1)
    fmax: float = zntrack.params(0.05)
    max_step: float = zntrack.params(0.2)
    max_steps: int = zntrack.params(1000)
    max_frames: int = zntrack.params(50)
    relax_cell: bool = zntrack.params(False)
    pressure: float = zntrack.params(0.0)
    sampling_rate: int = zntrack.params(1)

    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        from lotf.dynamics.fire import FIRE
        from lotf.nodes.frames import write_h5md

        if self.max_frames < 1:
            raise ValueError(f"GeometryOptimisation.max_frames must be >= 1, got {self.max_frames}")
        data = flatten(self.data)
        from_fallback = not data and bool(flatten(self.fallback))
        if not data and not from_fallback:
            write_h5md(self.frames_path, [])
            self.metrics = {"n_input": 0, "from_fallback": 0, "converged": 0, "steps": 0, "frames": 0}
            return
        if from_fallback:
            atoms = _start_structure(self.fallback, -1, "GeometryOptimisation.fallback")
        else:
            atoms = _start_structure(data, self.data_id, "GeometryOptimisation")
        result = FIRE(forcefield_for(self.model), fmax=self.fmax, max_step=self.max_step, max_steps=self.max_steps,
                      relax_cell=self.relax_cell, pressure=self.pressure, sampling_rate=self.sampling_rate,
                      progress=True).run(atoms)
        path = result.frames[1:] or result.frames[-1:]  # frame 0 is the start structure
        if len(path) > self.max_frames:
            keep = np.unique(np.round(np.linspace(0, len(path) - 1, self.max_frames)).astype(int))
            path = [path[k] for k in keep]
        write_h5md(self.frames_path, path)
        self.metrics = {"n_input": len(data), "from_fallback": int(from_fallback), "converged": int(result.converged),
                        "steps": result.steps, "fmax": result.fmax, "frames": len(path),
                        "energy_start": result.energies[0], "energy_final": result.energies[-1]}

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)
