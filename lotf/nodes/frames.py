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
