"""The training node in a real git + DVC repository, loaded back with zntrack.from_rev."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
import zntrack

from lotf.demo import emt_frames
from lotf.nodes import LoadFrames, TrainModel

TINY = {"model": {"hidden": [16], "n_radial": 2, "n_basis": 4, "r_max": 4.5, "n_members": 2,
                  "contractions": [0, 1, 2, 3]},
        "training": {"epochs": 3, "batch_size": 2}}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["git", "config", "user.email", "ci@lotf"], check=True)
    subprocess.run(["git", "config", "user.name", "ci"], check=True)
    subprocess.run(["dvc", "init", "-q"], check=True)
    Path("models").mkdir()
    Path("models/tiny.yaml").write_text(json.dumps(TINY))
    ase.io.write("data.extxyz", emt_frames(8, seed=3))
    return tmp_path


def test_train_node_runs_and_loads_with_from_rev(repo):
    project = zntrack.Project()
    with project:
        data = LoadFrames(file="data.extxyz", stop=6)
        val = LoadFrames(file="data.extxyz", start=6, name="val")
        model = TrainModel(data=data.frames, validation_data=val.frames, config="models/tiny.yaml")
    project.repro()

    assert Path("dvc.yaml").exists() and "TrainModel" in Path("dvc.yaml").read_text()
    loaded = zntrack.from_rev(model.name)
    assert loaded.metrics["n_train"] == 6 and loaded.metrics["n_val"] == 2
    assert list(loaded.learning_curve["epoch"]) == [0, 1, 2, 3]  # epoch 0: the starting parameters
    calc = loaded.get_calculator()
    atoms = loaded.validation_data[0].copy()
    calc.calculate(atoms, ["energy", "forces"])
    assert calc.results["forces_ensemble"].shape == (len(atoms), 3, 2)

    plots = subprocess.run(["dvc", "plots", "show", "--json"], capture_output=True, text=True)
    assert plots.returncode == 0 and "learning_curve" in plots.stdout

    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-qm", "trained"], check=True)
    committed = zntrack.from_rev(model.name, rev="HEAD")
    assert committed.metrics == loaded.metrics
