"""Streaming access to trajectories: H5MD files (znh5md layout) or lists of ``ase.Atoms``.

Long production runs (10^5 frames x 300 atoms = 720 MB of float64 positions) must not be
loaded at once.  :func:`iter_chunks` yields blocks of frames with positions, cells and
(optionally) potential energies; every analysis in :mod:`lotf.analysis` consumes these blocks.

znh5md layout (checked against znh5md 0.4.8)::

    particles/<group>/position/value      (n_frames, n_atoms, 3)  Angstrom, NaN-padded
    particles/<group>/position/time       scalar (time between frames) or (n_frames,)
    particles/<group>/box/edges/value     (n_frames, 3, 3)        Angstrom (cell rows)
    particles/<group>/box/pbc/value       (n_frames, 3)
    particles/<group>/species/value       (n_frames, n_atoms)     atomic numbers (float)
    observables/<group>/potential_energy/value  (n_frames,)        eV
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import ase
import ase.data
import h5py
import numpy as np
from tqdm.auto import tqdm

SourceLike = str | os.PathLike | Sequence[ase.Atoms]

_TIME_UNITS_TO_FS = {"fs": 1.0, "ps": 1000.0, "ns": 1.0e6, "s": 1.0e15}
_ENERGY_KEYS = ("potential_energy", "energy")


@dataclasses.dataclass(frozen=True)
class TrajectoryInfo:
    """Static description of a trajectory (taken from its first frame)."""

    n_frames: int
    numbers: np.ndarray
    masses: np.ndarray
    pbc: np.ndarray
    timestep_fs: float | None
    has_cell: bool
    has_energy: bool
    group: str | None = None

    @property
    def n_atoms(self) -> int:
        return int(len(self.numbers))

    @property
    def symbols(self) -> list[str]:
        return [ase.data.chemical_symbols[z] for z in self.numbers]


@dataclasses.dataclass
class Chunk:
    """A block of consecutive (possibly strided) frames.

    ``frames`` holds the indices of the frames in the original trajectory;
    ``positions`` is (n, n_atoms, 3) in Angstrom, ``cells`` (n, 3, 3) with the lattice
    vectors as rows (or None without a box) and ``energies`` (n,) in eV (or None).
    """

    frames: np.ndarray
    positions: np.ndarray
    cells: np.ndarray | None
    energies: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)


def is_path(source: SourceLike) -> bool:
    """True when ``source`` names a file rather than holding frames."""
    return isinstance(source, (str, os.PathLike))


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file not found: {path}")
    return path


def _pick_group(f: h5py.File, group: str | None, path: Path) -> str:
    if "particles" not in f:
        raise ValueError(f"{path}: no 'particles' group; not an H5MD file")
    groups = list(f["particles"].keys())
    if group is not None:
        if group not in groups:
            raise ValueError(f"{path}: particles group '{group}' not found (have {groups})")
        return group
    if len(groups) == 1:
        return groups[0]
    if "atoms" in groups:
        return "atoms"
    raise ValueError(f"{path}: several particles groups {groups}; pass group=")


def _energy_dataset(f: h5py.File, group: str) -> h5py.Dataset | None:
    obs = f.get(f"observables/{group}")
    if obs is None:
        return None
    for key in _ENERGY_KEYS:
        if key in obs and "value" in obs[key]:
            return obs[key]["value"]
    return None


def _timestep_from_h5(f: h5py.File, group: str) -> float | None:
    pos = f[f"particles/{group}/position"]
    if "time" not in pos:
        return None
    time = pos["time"]
    factor = 1.0
    unit = time.attrs.get("unit")
    if isinstance(unit, bytes):
        unit = unit.decode()
    if unit is not None:
        factor = _TIME_UNITS_TO_FS.get(str(unit), 1.0)
    if time.shape == ():
        return float(time[()]) * factor
    if time.shape[0] < 2:
        return None
    t0, t1 = time[0:2]
    return float(t1 - t0) * factor


def read_info(source: SourceLike, group: str | None = None) -> TrajectoryInfo:
    """Number of frames, atomic numbers, masses, pbc and frame interval of a trajectory."""
    if is_path(source):
        path = _check_file(source)
        with h5py.File(path, "r") as f:
            group = _pick_group(f, group, path)
            particles = f[f"particles/{group}"]
            if "position" not in particles:
                raise ValueError(f"{path}: particles/{group}/position missing")
            n_frames = int(particles["position/value"].shape[0])
            if n_frames == 0:
                raise ValueError(f"{path}: trajectory has no frames")
            if "species" not in particles:
                raise ValueError(f"{path}: particles/{group}/species missing")
            species = np.asarray(particles["species/value"][0], dtype=float)
            numbers = species[~np.isnan(species)].astype(int)
            if "mass" in particles:
                masses = np.asarray(particles["mass/value"][0], dtype=float)[: len(numbers)]
            else:
                masses = ase.data.atomic_masses[numbers]
            has_cell = "box" in particles and "edges" in particles["box"]
            if has_cell and "pbc" in particles["box"]:
                pbc = np.asarray(particles["box/pbc/value"][0], dtype=bool)
            else:
                boundary = particles["box"].attrs.get("boundary") if "box" in particles else None
                pbc = (
                    np.array([str(b) == "periodic" for b in boundary])
                    if boundary is not None
                    else np.zeros(3, bool)
                )
            return TrajectoryInfo(
                n_frames=n_frames,
                numbers=numbers,
                masses=np.asarray(masses, float),
                pbc=pbc,
                timestep_fs=_timestep_from_h5(f, group),
                has_cell=has_cell,
                has_energy=_energy_dataset(f, group) is not None,
                group=group,
            )
    frames = list(source) if not isinstance(source, Sequence) else source
    if len(frames) == 0:
        raise ValueError("frames: empty list of structures")
    first = frames[0]
    if not isinstance(first, ase.Atoms):
        raise TypeError(f"frames: expected ase.Atoms, got {type(first).__name__}")
    return TrajectoryInfo(
        n_frames=len(frames),
        numbers=first.numbers.copy(),
        masses=first.get_masses().copy(),
        pbc=first.pbc.copy(),
        timestep_fs=None,
        has_cell=bool(first.cell.rank == 3),
        has_energy=_atoms_energy(first) is not None,
    )


def _atoms_energy(atoms: ase.Atoms) -> float | None:
    if atoms.calc is not None:
        energy = atoms.calc.results.get("energy")
        if energy is not None:
            return float(energy)
    energy = atoms.info.get("energy")
    return None if energy is None else float(energy)


def _frame_range(n_frames: int, start: int, stop: int | None, stride: int) -> range:
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if start < 0 or start >= n_frames:
        raise ValueError(f"start must be in [0, {n_frames}), got {start}")
    stop = n_frames if stop is None else min(stop, n_frames)
    if stop <= start:
        raise ValueError(f"stop ({stop}) must be larger than start ({start})")
    return range(start, stop, stride)


def iter_chunks(
    source: SourceLike,
    chunk_size: int = 1000,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    group: str | None = None,
    energies: bool = False,
    progress: bool = False,
    desc: str = "frames",
) -> Iterator[Chunk]:
    """Yield :class:`Chunk` blocks of at most ``chunk_size`` frames from ``source``.

    Frames ``start, start + stride, ...`` below ``stop`` are read; only one block is in
    memory at a time for H5MD files.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    info = read_info(source, group)
    frames = _frame_range(info.n_frames, start, stop, stride)
    n_atoms = info.n_atoms
    bar = tqdm(total=len(frames), desc=desc, unit="frame", disable=not progress)
    try:
        if is_path(source):
            with h5py.File(Path(source), "r") as f:
                particles = f[f"particles/{info.group}"]
                pos_ds = particles["position/value"]
                box_ds = particles["box/edges/value"] if info.has_cell else None
                e_ds = _energy_dataset(f, info.group) if energies else None
                step = chunk_size * stride
                for a in range(frames.start, frames.stop, step):
                    b = min(a + step, frames.stop)
                    sel = slice(a, b, stride)
                    pos = np.asarray(pos_ds[sel, :n_atoms], dtype=np.float64)
                    cells = None
                    if box_ds is not None:
                        cells = np.asarray(box_ds[sel], dtype=np.float64)
                        if cells.ndim == 2:  # (n, 3) orthorhombic edges
                            cells = np.stack([np.diag(c) for c in cells])
                    en = np.asarray(e_ds[sel], dtype=np.float64) if e_ds is not None else None
                    idx = np.arange(a, b, stride)
                    bar.update(len(idx))
                    yield Chunk(frames=idx, positions=pos, cells=cells, energies=en)
        else:
            for a in range(0, len(frames), chunk_size):
                idx = np.asarray(frames[a : a + chunk_size])
                atoms_list = [source[i] for i in idx]
                for i, atoms in zip(idx, atoms_list):
                    if len(atoms) != n_atoms:
                        raise ValueError(
                            f"frames[{i}]: {len(atoms)} atoms, expected {n_atoms} as in frame 0"
                        )
                pos = np.stack([atoms.positions for atoms in atoms_list]).astype(np.float64)
                cells = None
                if info.has_cell:
                    cells = np.stack([atoms.cell.array for atoms in atoms_list]).astype(float)
                en = None
                if energies:
                    values = [_atoms_energy(atoms) for atoms in atoms_list]
                    en = np.array([np.nan if v is None else v for v in values])
                bar.update(len(idx))
                yield Chunk(frames=idx, positions=pos, cells=cells, energies=en)
    finally:
        bar.close()


def read_cells(
    source: SourceLike,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    group: str | None = None,
) -> np.ndarray:
    """Cells (n, 3, 3) of the selected frames without reading positions."""
    info = read_info(source, group)
    if not info.has_cell:
        raise ValueError("trajectory has no cell")
    frames = _frame_range(info.n_frames, start, stop, stride)
    if is_path(source):
        with h5py.File(Path(source), "r") as f:
            cells = np.asarray(
                f[f"particles/{info.group}/box/edges/value"][frames.start : frames.stop : stride],
                float,
            )
        if cells.ndim == 2:
            cells = np.stack([np.diag(c) for c in cells])
        return cells
    return np.stack([source[i].cell.array for i in frames]).astype(float)


def read_frame(source: SourceLike, index: int = 0, group: str | None = None) -> ase.Atoms:
    """One frame as ``ase.Atoms`` (positions, cell, pbc, masses)."""
    info = read_info(source, group)
    if not 0 <= index < info.n_frames:
        raise IndexError(f"frame index {index} out of range [0, {info.n_frames})")
    chunk = next(iter_chunks(source, chunk_size=1, start=index, stop=index + 1, group=group))
    return chunk_atoms(chunk, info, 0)


def chunk_atoms(chunk: Chunk, info: TrajectoryInfo, i: int) -> ase.Atoms:
    """Frame ``i`` of a chunk as ``ase.Atoms``."""
    atoms = ase.Atoms(
        numbers=info.numbers,
        positions=chunk.positions[i],
        cell=None if chunk.cells is None else chunk.cells[i],
        pbc=info.pbc if chunk.cells is not None else False,
    )
    atoms.set_masses(info.masses)
    return atoms


def read_all(
    source: SourceLike,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    group: str | None = None,
    energies: bool = False,
) -> Chunk:
    """Read the selected frames at once (for small trajectories and tests)."""
    chunks = list(iter_chunks(source, 10_000, start, stop, stride, group, energies))
    return Chunk(
        frames=np.concatenate([c.frames for c in chunks]),
        positions=np.concatenate([c.positions for c in chunks]),
        cells=None if chunks[0].cells is None else np.concatenate([c.cells for c in chunks]),
        energies=None
        if chunks[0].energies is None
        else np.concatenate([c.energies for c in chunks]),
    )


def write_h5md_like_znh5md(
    path: str | os.PathLike,
    numbers: np.ndarray,
    n_frames: int,
    chunk_iter: Iterator[tuple[np.ndarray, np.ndarray]],
    timestep_fs: float = 1.0,
    group: str = "atoms",
    compression: str | None = "gzip",
) -> Path:
    """Write a large trajectory block by block in the znh5md layout (used by benchmarks).

    ``chunk_iter`` yields ``(positions (n, n_atoms, 3), cells (n, 3, 3))`` blocks that
    together hold ``n_frames`` frames.  The file reads back with ``znh5md.IO``.
    """
    numbers = np.asarray(numbers)
    n_atoms = len(numbers)
    path = Path(path)
    with h5py.File(path, "w") as f:
        h5md = f.create_group("h5md")
        h5md.attrs["version"] = np.array([1, 1])
        h5md.create_group("author").attrs.update({"name": "N/A", "email": "N/A"})
        h5md.create_group("creator").attrs.update({"name": "lotf", "version": "0"})
        particles = f.create_group(f"particles/{group}")

        def element(parent: h5py.Group, name: str, shape: tuple, chunks: tuple, unit=None):
            g = parent.create_group(name)
            g.attrs["ASE_ENTRY_ORIGIN"] = "atoms"
            ds = g.create_dataset(
                "value",
                shape=shape,
                maxshape=(None,) * len(shape),
                dtype=np.float64,
                chunks=chunks,
                compression=compression,
                fillvalue=np.nan,
            )
            if unit:
                ds.attrs["unit"] = unit
            g.create_dataset("step", data=1)
            t = g.create_dataset("time", data=float(timestep_fs))
            t.attrs["unit"] = "fs"
            return ds

        box = particles.create_group("box")
        box.attrs["dimension"] = 3
        box.attrs["boundary"] = np.array(["periodic"] * 3, dtype=h5py.string_dtype())
        cframe = min(64, n_frames)
        pos_ds = element(
            particles, "position", (n_frames, n_atoms, 3), (cframe, min(64, n_atoms), 3), "Angstrom"
        )
        edge_ds = element(box, "edges", (n_frames, 3, 3), (cframe, 3, 3), "Angstrom")
        pbc_ds = element(box, "pbc", (n_frames, 3), (cframe, 3))
        spec_ds = element(particles, "species", (n_frames, n_atoms), (cframe, min(64, n_atoms)))
        i = 0
        for positions, cells in chunk_iter:
            n = len(positions)
            if i + n > n_frames:
                raise ValueError(f"chunk_iter yields more than n_frames={n_frames} frames")
            pos_ds[i : i + n] = positions
            edge_ds[i : i + n] = cells
            pbc_ds[i : i + n] = 1.0
            spec_ds[i : i + n] = numbers[None, :].astype(float)
            i += n
        if i != n_frames:
            raise ValueError(f"chunk_iter yielded {i} frames, expected n_frames={n_frames}")
    return path
