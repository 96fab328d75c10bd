"""Issue 12, item 1: a node loaded with ``zntrack.from_rev(name, rev=X)`` reads revision X's files.

A real git + DVC project with two commits whose models (and frames) differ; the workspace holds
the second. Everything read through a node of the first commit (its calculator, the JAX force
field of the samplers, MaxDist's model, the analysis nodes' trajectory file, the scratch-folder
fingerprint) must be the first commit's, and none of it may be the workspace's.
"""

import json
import subprocess
from pathlib import Path

import ase.io
import numpy as np
import pytest
import zntrack

from lotf.demo import emt_frames
from lotf.nodes import LoadFrames, TrainModel

TINY = {"model": {"hidden": [8], "n_radial": 2, "n_basis": 4, "r_max": 4.5, "n_members": 2,
                  "contractions": [0, 1, 2, 3]},
        "training": {"epochs": 2, "batch_size": 2}}


def git(*args):
    subprocess.run(["git", *args], check=True, capture_output=True)


def energy(calc, atoms) -> float:
    calc.calculate(atoms.copy(), ["energy", "forces"])
    return float(calc.results["energy"])


@pytest.mark.slow  # two trainings (about 40 s on two cores)
def test_from_rev_reads_the_revision_not_the_workspace(dvc_project):
    from lotf.nodes.analysis import resolve_source
    from lotf.nodes.sampling import forcefield_for
    from lotf.nodes.scratch import model_fingerprint
    from lotf.nodes.selection import model_and_params
    from lotf.potential.io import load_calculator

    Path("models").mkdir()
    Path("models/tiny.yaml").write_text(json.dumps(TINY))
    ase.io.write("data.extxyz", emt_frames(8, seed=3))
    probe = emt_frames(1, seed=99)[0]

    def build_and_run(seed: int, stop: int):
        project = zntrack.Project()
        with project:
            data = LoadFrames(file="data.extxyz", stop=stop)
            model = TrainModel(data=data.frames, validation_data=data.frames, config="models/tiny.yaml",
                               overrides={"training": {"seed": seed}})
        project.repro()
        git("add", "-A")
        git("commit", "-qm", f"seed {seed}")
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        # the model as the workspace of that commit has it, read straight from disk
        return sha, model.name, data.name, energy(load_calculator(Path(model.model_dir)), probe)

    rev_a, model_name, data_name, e_a = build_and_run(seed=1, stop=6)
    fingerprint_a = model_fingerprint(zntrack.from_rev(model_name))
    rev_b, _, _, e_b = build_and_run(seed=2, stop=4)
    assert abs(e_a - e_b) > 1e-6, "the two revisions must hold different models for this test to mean anything"

    old = zntrack.from_rev(model_name, rev=rev_a)
    assert energy(old.get_calculator(), probe) == pytest.approx(e_a, abs=1e-9)
    assert energy(zntrack.from_rev(model_name).get_calculator(), probe) == pytest.approx(e_b, abs=1e-9)

    # the samplers' JAX force field and MaxDist's model also come from revision A
    from lotf.dynamics.potential import JaxBase

    base = forcefield_for(old).base
    assert isinstance(base, JaxBase)
    _, params_a = model_and_params(old)
    _, params_b = model_and_params(zntrack.from_rev(model_name))
    leaves_a = [np.asarray(x) for x in __import__("jax").tree_util.tree_leaves(params_a)]
    leaves_b = [np.asarray(x) for x in __import__("jax").tree_util.tree_leaves(params_b)]
    assert any(not np.allclose(a, b) for a, b in zip(leaves_a, leaves_b))
    assert model_fingerprint(old) == fingerprint_a != model_fingerprint(zntrack.from_rev(model_name))

    # output files of other nodes: revision A had 6 frames, the workspace has 4
    assert len(zntrack.from_rev(data_name, rev=rev_a).frames) == 6
    source = resolve_source(zntrack.from_rev(data_name, rev=rev_a))
    assert len(ase.io.read(source, ":") if not str(source).endswith(".h5") else _h5(source)) == 6
    assert len(_h5(resolve_source(zntrack.from_rev(data_name)))) == 4

    # a revision that lacks the output says so in one line, naming node and revision
    from lotf.nodes.revision import local_path

    with pytest.raises(FileNotFoundError, match=f"{model_name} at rev {rev_a}: .* does not exist"):
        local_path(old, Path(old.model_dir) / "missing.bin")


def _h5(path):
    import znh5md

    return znh5md.IO(str(path))[:]
