"""Shared pieces of nodes that store structures: H5MD out, `frames` in (IPSuite convention)."""

from __future__ import annotations

from pathlib import Path

import ase
import h5py
import zntrack
import znh5md


def write_h5md(path: str | Path, frames: list[ase.Atoms]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    if frames:
        znh5md.IO(str(path)).extend(frames)
    else:  # an empty, valid file so that downstream nodes see zero frames rather than a crash
        h5py.File(path, "w").close()


def read_h5md(node: zntrack.Node, path: str | Path) -> list[ase.Atoms]:
    """Read through the node's file system, so it also works for nodes loaded with from_rev."""
    with node.state.fs.open(str(path), "rb") as fh, h5py.File(fh) as h5:
        if "particles" not in h5:
            return []
        return znh5md.IO(file_handle=h5)[:]


class LoadFrames(zntrack.Node):
    """Structures from any ASE-readable file (or H5MD) as a node with `frames`."""

    file: str = zntrack.deps_path()
    start: int = zntrack.params(0)
    stop: int | None = zntrack.params(None)
    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")

    def run(self) -> None:
        from lotf.cli import read_frames

        write_h5md(self.frames_path, read_frames(self.file)[self.start:self.stop])

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)


def flatten(data) -> list[ase.Atoms]:
    """A list of Atoms, or a list of such lists (several ``node.frames`` connections), as one list."""
    out: list[ase.Atoms] = []
    for item in data or []:
        if isinstance(item, ase.Atoms):
            out.append(item)
        else:
            out.extend(item)
    return out


class MergeFrames(zntrack.Node):
    """Concatenate the frames of several nodes (e.g. last training set + new labels)."""

    data: list = zntrack.deps()
    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        frames = flatten(self.data)
        write_h5md(self.frames_path, frames)
        self.metrics = {"n_frames": len(frames)}

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)


class FilterOutliers(zntrack.Node):
    """Drop frames whose energy per atom is more than ``threshold`` standard deviations from the mean."""

    data: list = zntrack.deps()
    threshold: float = zntrack.params(3.0)
    frames_path: Path = zntrack.outs_path(zntrack.nwd / "frames.h5")
    metrics: dict = zntrack.metrics()

    def run(self) -> None:
        import numpy as np

        frames = flatten(self.data)
        if not frames:
            raise ValueError("FilterOutliers: no input frames")
        e = np.array([a.get_potential_energy() / len(a) for a in frames])
        z = np.abs(e - e.mean()) / max(e.std(), 1e-12)
        keep = [a for a, zi in zip(frames, z) if zi <= self.threshold]
        write_h5md(self.frames_path, keep)
        self.metrics = {"n_in": len(frames), "n_out": len(keep), "n_removed": len(frames) - len(keep)}

    @property
    def frames(self) -> list[ase.Atoms]:
        return read_h5md(self, self.frames_path)
