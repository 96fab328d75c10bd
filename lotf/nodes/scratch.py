"""Scratch folders that let long MD nodes continue after a kill.

DVC deletes a stage's outputs before it runs the stage again, so an MD node cannot resume from
its own ``frames.h5``. The node instead writes its trajectory and checkpoints into a scratch
folder outside DVC's outputs, named after the node and a hash of everything that decides the
trajectory (settings, start structure, model files), and moves the finished trajectory into its
output at the end. A changed setting gives a new folder, so a stale state is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import ase
import numpy as np

SCRATCH_ENV = "LOTF_SCRATCH"


def scratch_root() -> Path:
    """Where interrupted runs keep their state: ``$LOTF_SCRATCH`` or ``.lotf/scratch`` (cwd)."""
    return Path(os.environ.get(SCRATCH_ENV) or ".lotf/scratch")


def model_fingerprint(model: Any) -> str:
    """Content hash of a model directory (or the model's name when it has none)."""
    from lotf.nodes.revision import model_directory

    model_dir = model_directory(model)  # a node of another revision: that revision's files
    digest = hashlib.sha256()
    if model_dir is not None and model_dir.is_dir():
        for path in sorted(Path(model_dir).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode())
                digest.update(path.read_bytes())
    else:
        digest.update(repr(getattr(model, "name", type(model).__name__)).encode())
    return digest.hexdigest()


def atoms_fingerprint(atoms: ase.Atoms) -> str:
    digest = hashlib.sha256()
    for array in (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def scratch_dir(node_name: str, settings: dict, start: ase.Atoms, model: Any) -> Path:
    """The (created) scratch folder of one run of a node."""
    key = hashlib.sha256(json.dumps([settings, atoms_fingerprint(start), model_fingerprint(model)],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = scratch_root() / f"{node_name}-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def finish(scratch: Path, trajectory: Path, output: Path) -> None:
    """Move the finished trajectory to the node's output (an empty, valid file if there is none)
    and remove the scratch folder."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if Path(trajectory).exists():
        shutil.move(trajectory, output)
    else:  # stopped before the first frame
        import h5py

        h5py.File(output, "w").close()
    shutil.rmtree(scratch, ignore_errors=True)
