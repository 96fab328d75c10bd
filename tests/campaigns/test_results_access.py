"""Results through a DVC remote: push, fresh clone, dvc pull, zntrack.from_rev, the example notebook."""

import subprocess
from pathlib import Path

import ase.io
import nbformat
import numpy as np
import zntrack
from nbclient import NotebookClient

from lotf.demo import emt_frames
from lotf.nodes import LoadFrames, TrainModel
from lotf.nodes.sampling import MDSampling

REPO = Path(__file__).resolve().parents[2]
TINY = ('{"model": {"hidden": [16], "n_radial": 2, "n_basis": 4, "r_max": 4.5, "n_members": 2, '
        '"contractions": [0, 1, 2, 3]}, "training": {"epochs": 2, "batch_size": 2}}')


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_push_clone_pull_and_load_with_from_rev(tmp_path, monkeypatch):
    origin, remote, clone = tmp_path / "origin", tmp_path / "remote", tmp_path / "clone"
    origin.mkdir()
    monkeypatch.chdir(origin)
    git("init", "-q", cwd=origin)
    git("config", "user.email", "ci@lotf", cwd=origin)
    git("config", "user.name", "ci", cwd=origin)
    subprocess.run(["dvc", "init", "-q"], check=True)
    subprocess.run(["dvc", "remote", "add", "-d", "local", str(remote)], check=True)
    Path("models").mkdir()
    Path("models/tiny.yaml").write_text(TINY)
    ase.io.write("data.extxyz", emt_frames(6, seed=5))

    project = zntrack.Project()
    with project:
        data = LoadFrames(file="data.extxyz")
        model = TrainModel(data=data.frames, validation_data=data.frames, config="models/tiny.yaml")
        md = MDSampling(model=model, data=data.frames, data_id=0, steps=40, sampling_rate=10, temperature=300.0,
                        checks=[])
    project.repro()
    git("add", "-A", cwd=origin)
    git("commit", "-qm", "results", cwd=origin)
    subprocess.run(["dvc", "push", "-q"], check=True)

    git("clone", "-q", str(origin), str(clone), cwd=tmp_path)
    monkeypatch.chdir(clone)
    assert not (clone / "nodes" / model.name).exists() or not any((clone / "nodes").rglob("params.msgpack"))
    subprocess.run(["dvc", "pull", "-q"], check=True)
    assert any((clone / "nodes").rglob("params.msgpack"))

    loaded = zntrack.from_rev(model.name)
    trajectory = zntrack.from_rev(md.name).frames
    assert len(trajectory) >= 4
    calc = loaded.get_calculator()
    calc.calculate(trajectory[-1].copy(), ["energy", "forces"])
    assert np.isfinite(calc.results["energy"])

    notebook = nbformat.read(REPO / "examples" / "load_results.ipynb", as_version=4)
    monkeypatch.setenv("LOTF_MODEL_NODE", model.name)
    monkeypatch.setenv("LOTF_TRAJECTORY_NODE", md.name)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(clone)}}).execute()
    assert (clone / "uncertainty.png").exists() and (clone / "learning_curve.png").exists()
