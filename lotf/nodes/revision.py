"""Read a node's output files from the revision the node was loaded from.

A node loaded with ``zntrack.from_rev(name, rev=..., remote=...)`` keeps the output paths of its
stage (``nodes/<name>/model``), and the same paths in the local workspace may hold another
revision's files, or nothing. Checking the local disk (``Path(p).is_dir()``) therefore hands back
the workspace's files for a node of another revision. Everything that reads an output of a node
goes through :func:`local_path` instead: a node of the workspace (no ``rev``, no ``remote``: the
node a stage runs, its dependencies, or ``from_rev(name)``) reads its paths as they are; a node of
another revision or repository gets a copy made through its DVC file system (``node.state.fs``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_COPIES: dict[tuple, Path] = {}


def from_other_revision(node: Any) -> bool:
    """True for a zntrack node loaded with ``rev`` or ``remote`` (its files are not the workspace's)."""
    try:
        state = node.state
    except Exception:  # noqa: BLE001 - not a zntrack node (a path, a calculator, a plain object)
        return False
    return getattr(state, "rev", None) is not None or getattr(state, "remote", None) is not None


def _revision_key(node: Any) -> tuple:
    state = node.state
    try:  # the commit, so that a moving name ("HEAD", a branch) never reuses a stale copy
        commit = state.fs.repo.get_rev()
    except Exception:  # noqa: BLE001
        commit = state.rev
    return state.remote, commit


def local_path(node: Any, path: str | os.PathLike) -> Path:
    """``path``, an output file or folder of ``node``, readable on the local disk.

    For a workspace node this is ``path`` itself. For a node of another revision it is a copy
    (file or whole folder) taken from that revision through ``node.state.fs``, made once per
    process and revision and removed at exit. A path the revision does not have raises
    ``FileNotFoundError`` naming the node and the revision.
    """
    path = Path(path)
    if not from_other_revision(node):
        return path
    key = (*_revision_key(node), str(path))
    if key in _COPIES and _COPIES[key].exists():
        return _COPIES[key]
    fs = node.state.fs
    where = f"{getattr(node, 'name', type(node).__name__)} at rev {node.state.rev or 'HEAD'}" + (
        f" of {node.state.remote}" if node.state.remote else "")
    try:
        is_dir = fs.isdir(str(path))
        exists = is_dir or fs.exists(str(path))
    except Exception as exc:  # noqa: BLE001
        raise FileNotFoundError(f"{where}: cannot read {path}: {exc}") from exc
    if not exists:
        raise FileNotFoundError(f"{where}: {path} does not exist in that revision")
    root = Path(tempfile.mkdtemp(prefix="lotf-rev-"))
    atexit.register(shutil.rmtree, root, True)
    target = root / path.name
    if is_dir:
        target.mkdir()
        prefix = str(path).strip("/") + "/"
        for rpath in fs.find(str(path)):
            relative = str(rpath).lstrip("/")
            if not relative.startswith(prefix):
                raise FileNotFoundError(f"{where}: unexpected file {rpath} under {path}")
            out = target / relative[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            with fs.open(rpath, "rb") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    else:
        with fs.open(str(path), "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    _COPIES[key] = target
    return target


def model_directory(model: Any) -> Path | None:
    """The local model folder of ``model``: a path, or a node with ``model_dir`` (copied out of
    its revision when loaded from another one); None when ``model`` has neither."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model)
    model_dir = getattr(model, "model_dir", None)
    if not isinstance(model_dir, (str, os.PathLike)):
        return None
    if from_other_revision(model):
        return local_path(model, model_dir)
    return Path(model_dir) if Path(model_dir).is_dir() else None
