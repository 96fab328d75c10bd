"""ZnTrack nodes for seed data: GROMACS OPLS-AA trajectories, RDKit conformers, Packmol boxes,
bootstrap and rigid-molecule volume scans. Thin wrappers over `lotf.reference`.

Every node writes `frames.h5` (H5MD, znh5md) and exposes it as `frames` (IPSuite convention).
"""

from __future__ import annotations

import pathlib
import time

import ase
import numpy as np
import zntrack

from lotf.inputs import input_file, opls_topologies
from lotf.nodes.frames import read_h5md, write_h5md
from lotf.reference import gromacs, structures


class _FramesNode(zntrack.Node):
    """Base: an H5MD `frames.h5` output read back through `frames`."""

    frames_path: pathlib.Path = zntrack.outs_path(zntrack.nwd / "frames.h5")

    def _write(self, frames: list[ase.Atoms]) -> None:
        write_h5md(self.frames_path, frames)

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)


def _pick(frames: list[ase.Atoms], ids: list[int] | None, field: str) -> list[ase.Atoms]:
    if ids is None:
        return list(frames)
    for i in ids:
        if not -len(frames) <= i < len(frames):
            raise IndexError(f"{field}: frame index {i} out of range for {len(frames)} frames")
    return [frames[i] for i in ids]


class GromacsSeed(_FramesNode):
    """Classical OPLS-AA (CL&P) seed trajectory with GROMACS, labelled in eV and eV/A.

    Packmol box of `species` (name -> count, in topology order) at `density` (g/cm^3),
    steepest descent, then NVT at `temperature` (K) for `n_steps` x `timestep` (fs); one frame
    every `interval` steps, with force-field energy, forces and virial stress.
    Seed 1: {"bmim": 10, "bf4": 10}, 1.210 g/cm^3, 500 K, 5 ns.

    `topologies` are the itp files the run reads (DVC dependencies, relative to the project): one
    per non-water species and the CL&P atom types, in one folder (default: bmim and bf4 in
    data/opls, see :func:`lotf.inputs.opls_topologies`). Water comes from GROMACS's oplsaa.ff.
    """

    species: dict = zntrack.params(default_factory=lambda: {"bmim": 10, "bf4": 10})
    density: float = zntrack.params(1.210)
    temperature: float = zntrack.params(500.0)
    n_steps: int = zntrack.params(5_000_000)
    timestep: float = zntrack.params(1.0)
    interval: int = zntrack.params(1000)
    seed: int = zntrack.params(42)
    tolerance: float = zntrack.params(2.0)
    cutoff: float | None = zntrack.params(None)
    constraints: str = zntrack.params("none")
    water_model: str = zntrack.params("tip3p")
    n_threads: int | None = zntrack.params(None)
    topologies: list = zntrack.deps_path(default_factory=lambda: opls_topologies(["bmim", "bf4"]))

    gromacs_dir: pathlib.Path = zntrack.outs_path(zntrack.nwd / "gromacs")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        for name, value in (("density", self.density), ("temperature", self.temperature), ("timestep", self.timestep)):
            if not value > 0:
                raise ValueError(f"GromacsSeed.{name} must be positive, got {value}")
        settings = gromacs.GromacsSettings(
            cutoff=self.cutoff, constraints=self.constraints, water_model=self.water_model, n_threads=self.n_threads,
            itp_dir=self._itp_dir(),
        )
        start = time.perf_counter()
        frames = gromacs.run_seed(
            dict(self.species),
            self.density,
            pathlib.Path(self.gromacs_dir),
            self.temperature,
            self.n_steps,
            self.timestep,
            self.interval,
            self.seed,
            self.tolerance,
            settings,
        )
        wall = time.perf_counter() - start
        self._write(frames)
        ps = self.n_steps * self.timestep / 1000.0
        self.metrics = {
            "n_frames": len(frames),
            "wall_s": wall,
            "s_per_ps": wall / ps if ps else 0.0,
            "temperature_mean": float(np.mean([a.info.get("temperature", np.nan) for a in frames])),
        }


    def _itp_dir(self) -> pathlib.Path:
        """The one folder of the declared topologies; every itp the run reads must be declared."""
        files = [input_file(p, "GromacsSeed.topologies") for p in self.topologies or []]
        by_name = {f.name: f for f in files}
        needed = [pathlib.Path(p).name for p in opls_topologies(self.species)]
        missing = [name for name in needed if name not in by_name]
        if missing:
            raise ValueError(f"GromacsSeed.topologies: {', '.join(missing)} not among {[str(f) for f in files]} "
                             f"(the seed reads {', '.join(needed)})")
        folders = {by_name[name].resolve().parent for name in needed}
        if len(folders) != 1:
            raise ValueError(f"GromacsSeed.topologies: the itp files must lie in one folder, got {sorted(map(str, folders))}")
        return folders.pop()


class SmilesConformers(_FramesNode):
    """RDKit conformers of one SMILES (ETKDGv3, then MMFF or UFF)."""

    smiles: str = zntrack.params()
    n_conformers: int = zntrack.params(1)
    seed: int = zntrack.params(42)
    max_attempts: int = zntrack.params(1000)
    optimize: bool = zntrack.params(True)

    def run(self) -> None:
        self._write(
            structures.smiles_to_conformers(self.smiles, self.n_conformers, self.seed, self.max_attempts, self.optimize)
        )


class PackBox(_FramesNode):
    """Packmol boxes: `count[k]` molecules drawn from the conformers in `data[k]`.

    `density` in g/cm^3 (IPSuite's Packmol takes kg/m^3); `n_configurations` boxes with seeds
    `seed`, `seed + 1`, ...; periodic packing through Packmol's `pbc` keyword.
    """

    data: list = zntrack.deps()
    count: list = zntrack.params()
    density: float = zntrack.params()
    tolerance: float = zntrack.params(2.0)
    seed: int = zntrack.params(42)
    n_configurations: int = zntrack.params(1)
    pbc: bool = zntrack.params(True)

    def run(self) -> None:
        if len(self.data) != len(self.count):
            raise ValueError(f"PackBox: {len(self.data)} data entries but {len(self.count)} counts")
        frames = [
            structures.pack_box(self.data, self.count, self.density, self.tolerance, self.seed + k, self.pbc)
            for k in range(self.n_configurations)
        ]
        self._write(frames)


Packmol = PackBox


class Bootstrap(_FramesNode):
    """Rotate and translate every molecule and rattle every atom (seed 2: 200 from 32 waters).

    `rotation` in degrees, `translation` and `rattle` in Angstrom (maximum per move).
    """

    data: list = zntrack.deps()
    data_id: int = zntrack.params(-1)
    n_configurations: int = zntrack.params(200)
    rotation: float = zntrack.params(10.0)
    translation: float = zntrack.params(0.5)
    rattle: float = zntrack.params(0.05)
    seed: int = zntrack.params(0)
    include_original: bool = zntrack.params(False)

    def run(self) -> None:
        atoms = _pick(self.data, [self.data_id], "Bootstrap.data_id")[0]
        self._write(
            structures.bootstrap(
                atoms,
                self.n_configurations,
                self.rotation,
                self.translation,
                self.rattle,
                self.seed,
                self.include_original,
            )
        )


class VolumeScan(_FramesNode):
    """Rigid-molecule volume scan of each selected frame over densities (g/cm^3).

    Either `densities` (a list) or `start`, `stop`, `num` (evenly spaced densities).
    Seed 1 scanned 0.151-1.661 g/cm^3.
    """

    data: list = zntrack.deps()
    data_ids: list | None = zntrack.params(None)
    densities: list | None = zntrack.params(None)
    start: float = zntrack.params(0.151)
    stop: float = zntrack.params(1.661)
    num: int = zntrack.params(100)

    def run(self) -> None:
        targets = self.densities if self.densities is not None else np.linspace(self.start, self.stop, self.num)
        frames = []
        for atoms in _pick(self.data, self.data_ids, "VolumeScan.data_ids"):
            frames += structures.volume_scan(atoms, list(targets))
        self._write(frames)


class XTBSeed(_FramesNode):
    """Semi-empirical seed for any molecule: GFN-xTB MD (tblite, in process), no topology needed.

    Signature (parameters, all ZnTrack params)::

        XTBSeed(smiles: list[str], count: list[int], density: float, temperature: float,
                n_steps: int, timestep: float = 0.5, interval: int = 10, seed: int = 42,
                method: str = "GFN1-xTB")

    `count[k]` molecules of `smiles[k]` packed by Packmol at `density` (g/cm^3), FIRE-relaxed with
    xTB, Maxwell-Boltzmann velocities and `n_steps` Langevin NVT steps of `timestep` fs at
    `temperature` (K); one frame every `interval` steps with xTB energy (eV), forces (eV/Å) and
    stress (eV/Å³). `method`: GFN1-xTB, GFN2-xTB or IPEA1-xTB. Total charge: the sum of the
    formal charges. Outputs `frames` (H5MD) and metrics n_frames, temperature_mean (K), wall_s,
    s_per_step. A killed run resumes from `checkpoint.traj` in the node directory (deleted when done).
    See :func:`lotf.reference.xtb.xtb_seed`.
    """

    smiles: list = zntrack.params()
    count: list = zntrack.params()
    density: float = zntrack.params()
    temperature: float = zntrack.params()
    n_steps: int = zntrack.params()
    timestep: float = zntrack.params(0.5)
    interval: int = zntrack.params(10)
    seed: int = zntrack.params(42)
    method: str = zntrack.params("GFN1-xTB")

    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        from lotf.reference import xtb

        _run_xtb_seed(self, lambda checkpoint: xtb.xtb_seed(
            list(self.smiles), list(self.count), self.density, self.temperature, self.n_steps, self.timestep,
            self.interval, self.seed, self.method, checkpoint=checkpoint))


def _run_xtb_seed(node, simulate) -> None:
    """Run ``simulate(checkpoint) -> frames`` for an xTB seed node: progress lines, the resumable
    checkpoint in the node directory (deleted when done), frames and metrics."""
    import logging

    if not logging.getLogger().handlers:  # a `zntrack run` process: show the progress lines
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    checkpoint = pathlib.Path(node.nwd) / "checkpoint.traj"
    start = time.perf_counter()
    frames = simulate(checkpoint)
    wall = time.perf_counter() - start
    node._write(frames)
    checkpoint.unlink(missing_ok=True)
    checkpoint.with_suffix(".json").unlink(missing_ok=True)
    node.metrics = {
        "n_frames": len(frames),
        "wall_s": wall,
        "s_per_step": wall / node.n_steps,
        "temperature_mean": float(np.mean([a.info["temperature"] for a in frames])) if frames else float("nan"),
    }


class XTBStructureSeed(_FramesNode):
    """:class:`XTBSeed` from a given box instead of a Packmol one (a campaign's ``system.structure``).

    Signature (``data``: frames, e.g. ``LoadFrames(file=...).frames``; the rest ZnTrack params)::

        XTBStructureSeed(data: list[Atoms], temperature: float, n_steps: int, data_id: int = -1,
                         charge: int = 0, timestep: float = 0.5, interval: int = 10, seed: int = 42,
                         method: str = "GFN1-xTB")

    Frame `data_id` of `data` (periodic, with a cell) with total charge `charge`: FIRE-relaxed
    with xTB, then the Langevin NVT run of :class:`XTBSeed` (same outputs, metrics and checkpoint).
    See :func:`lotf.reference.xtb.xtb_seed_from`.
    """

    data: list = zntrack.deps()
    temperature: float = zntrack.params()
    n_steps: int = zntrack.params()
    data_id: int = zntrack.params(-1)
    charge: int = zntrack.params(0)
    timestep: float = zntrack.params(0.5)
    interval: int = zntrack.params(10)
    seed: int = zntrack.params(42)
    method: str = zntrack.params("GFN1-xTB")

    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        from lotf.nodes.frames import flatten
        from lotf.reference import xtb

        atoms = _pick(flatten(self.data), [self.data_id], "XTBStructureSeed.data_id")[0]
        _run_xtb_seed(self, lambda checkpoint: xtb.xtb_seed_from(
            atoms, self.temperature, self.n_steps, self.timestep, self.interval, self.seed, self.method,
            self.charge, checkpoint=checkpoint))


class StructureMolecules(_FramesNode):
    """The molecules of one Hill ``formula`` in a box (bond graph, ASE covalent radii x 1.2), each
    made whole and written as a non-periodic structure: a stand-in for :class:`SmilesConformers`
    when a campaign's system is a structure file (the "conformers" :class:`PackBox` draws from).
    At most ``n_molecules`` (the first ones in the box); frame ``data_id`` of ``data``."""

    data: list = zntrack.deps()
    formula: str = zntrack.params()
    n_molecules: int = zntrack.params(1)
    data_id: int = zntrack.params(-1)

    def run(self) -> None:
        from lotf.nodes.frames import flatten

        atoms = _pick(flatten(self.data), [self.data_id], "StructureMolecules.data_id")[0]
        molecules = [m for m in structures.split_molecules(atoms) if m.get_chemical_formula(mode="hill") == self.formula]
        if not molecules:
            raise ValueError(f"StructureMolecules: no molecule {self.formula} in the structure")
        self._write(molecules[: self.n_molecules])
