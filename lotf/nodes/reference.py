"""ZnTrack nodes for a force-field reference (:mod:`lotf.reference.forcefield`): labels with the
contract of ``CP2KLabel``, and the engine's own MD as ground truth for the analysis nodes."""

from __future__ import annotations

import json
from pathlib import Path

import ase
import zntrack

from lotf.nodes.frames import flatten, read_h5md
from lotf.nodes.scratch import finish, scratch_dir


def _settings(node) -> dict:
    out = {"forcefield": node.forcefield, "cutoff": node.cutoff}
    if node.species is not None:
        out["species"] = list(dict(node.species).items())
    return out


class ForceFieldLabel(zntrack.Node):
    """Force-field single points for ``data`` (see :func:`lotf.reference.forcefield.label_frames`).

    Finished labels live in the content-addressed store (``$LOTF_FF_STORE``, else
    ``~/.cache/lotf/forcefield``) outside the node's outputs, so a killed or re-run stage
    recomputes nothing that had finished. Failed structures are left out of ``frames``, counted
    in the metrics and listed with their reason in ``failures.json``.

    Attributes:
        data: structures to label (e.g. ``other_node.frames``, or a list of such lists).
        forcefield: ``water`` (SPC/Fw) or ``bmim_bf4`` (CL&P OPLS-AA).
        species: ordered molecule counts the frames must follow (None: read from each frame).
        cutoff: Å (None: the force field's default).
        stress: label the stress (finite differences; 13 energies per frame instead of 1).
        retry_failed: run cached failures again.
    """

    data: list = zntrack.deps()
    forcefield: str = zntrack.params("water")
    species: dict | None = zntrack.params(None)
    cutoff: float | None = zntrack.params(None)
    stress: bool = zntrack.params(True)
    retry_failed: bool = zntrack.params(False)

    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")
    failures_path: Path = zntrack.outs_path(zntrack.nwd / "failures.json")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        from lotf.reference.forcefield import label_frames
        from lotf.reference.labelling import write_frames

        labelled, report = label_frames(flatten(self.data), dict(_settings(self), stress=self.stress),
                                        retry_failed=self.retry_failed)
        write_frames(self.frames_path, labelled)
        Path(self.failures_path).write_text(json.dumps(report.failures, indent=1))
        metrics = report.metrics()
        self.metrics = {k: metrics[k] for k in ("n_total", "n_ok", "n_failed", "n_cached", "n_computed")}
        self.metrics["s_per_structure"] = metrics["cp2k_s"] / max(report.n_computed, 1)

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)  # empty when every structure failed


class ReferenceMD(zntrack.Node):
    """The reference force field's own NVT or NPT MD (OpenMM): the ground truth trajectory.

    Frames are written like lotf's own MD (unwrapped positions, momenta, energy, forces,
    temperature in ``info``), so ``RDF``, ``Diffusion`` and ``Density`` take this node as
    ``data``. The run works in a scratch folder (:mod:`lotf.nodes.scratch`) with an OpenMM
    checkpoint after every ``frames_per_block`` frames: a killed stage continues where it stopped.

    Attributes:
        data, data_id: start structure (``data`` a list of frames, e.g. ``node.frames``).
        forcefield, species, cutoff: as in :class:`ForceFieldLabel`.
        ensemble: ``nvt`` or ``npt`` (Monte-Carlo barostat at ``pressure`` bar).
        temperature: K. timestep: fs (flexible water: 0.5). steps: recorded steps after
            ``equilibration_steps``. interval: steps between frames.
        thermostat: ``nose_hoover`` or ``langevin``; ``friction`` its collision rate (1/ps).
        replicate: copies of the start along a, b, c (None: the fewest for the cutoff).
        minimise_steps: energy minimisation iterations before the run (0: none).
    """

    data: list = zntrack.deps()
    data_id: int = zntrack.params(-1)
    forcefield: str = zntrack.params("water")
    species: dict | None = zntrack.params(None)
    cutoff: float | None = zntrack.params(None)
    ensemble: str = zntrack.params("nvt")
    temperature: float = zntrack.params(300.0)
    pressure: float = zntrack.params(1.0)
    timestep: float = zntrack.params(0.5)
    steps: int = zntrack.params(100_000)
    equilibration_steps: int = zntrack.params(10_000)
    interval: int = zntrack.params(100)
    thermostat: str = zntrack.params("nose_hoover")
    friction: float = zntrack.params(1.0)
    replicate: list | int | None = zntrack.params(None)
    minimise_steps: int = zntrack.params(1000)
    seed: int = zntrack.params(0)
    frames_per_block: int = zntrack.params(10)

    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")
    metrics: dict = zntrack.metrics()

    def _md_params(self) -> dict:
        return {key: getattr(self, key) for key in (
            "ensemble", "temperature", "pressure", "timestep", "steps", "equilibration_steps", "interval",
            "thermostat", "friction", "replicate", "minimise_steps", "seed")}

    def run(self) -> None:
        from lotf.reference.forcefield import run_md

        frames = flatten(self.data)
        if not frames:
            raise ValueError("ReferenceMD.data: no frames")
        if not -len(frames) <= self.data_id < len(frames):
            raise IndexError(f"ReferenceMD.data_id {self.data_id} out of range for {len(frames)} frames")
        start = frames[self.data_id]
        settings = _settings(self)
        scratch = scratch_dir(self.name, {**settings, **self._md_params()}, start, None)
        trajectory = scratch / "frames.h5"
        summary = run_md(start, settings, trajectory=trajectory, checkpoint=scratch / "checkpoint.npz",
                         frames_per_block=self.frames_per_block, **self._md_params())
        finish(scratch, trajectory, self.frames_path)
        self.metrics = {
            "frames": summary.frames_written, "n_atoms": summary.n_atoms, "replication": list(summary.replication),
            "ns_per_day": summary.ns_per_day, "resumed_from_step": summary.resumed_from_step,
            **self._averages(),
        }

    def _averages(self) -> dict:
        from lotf.nodes.production import trajectory_averages

        return trajectory_averages(self.frames_path)

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)
