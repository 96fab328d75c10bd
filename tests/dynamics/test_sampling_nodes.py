"""The sampling nodes: run() on small inputs without DVC, and one DVC pipeline (slow)."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from lotf.demo import emt_frames
from lotf.nodes.sampling import GeometryOptimisation, MDSampling, forcefield_for


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def model_dir(emt_model_dir):
    return emt_model_dir


def test_md_sampling_node_udd_and_erbs(workdir, model_dir):
    frames = emt_frames(3)
    model = types.SimpleNamespace(model_dir=model_dir)
    node = MDSampling(data=frames, model=model, method="udd", bias={"height": 0.01, "width": 0.5, "per_atom": True},
                      steps=40, sampling_rate=10, timestep=1.0, temperature=300.0,
                      modifiers=[{"kind": "temperature", "T_start": 300, "T_end": 400}],
                      checks=[{"kind": "forces_uncertainty", "max_value": 100.0}, {"kind": "nan"}])
    node.run()
    assert node.metrics["frames"] == 4 and node.metrics["resets"] == 0 and node.metrics["steps_before_stop"] == 40
    out = node.frames
    assert len(out) == 4 and out[0].calc.results["energy_bias"] <= 0.0
    assert out[-1].info["target_temperature"] > 300

    erbs = MDSampling(data=frames, model=model, method="erbs", name="erbs", ensemble="npt",
                      bias={"barrier": 0.05, "bandwidth": 0.05, "n_components": 2, "interval": 10, "n_basis": 3,
                            "r_max": 4.5, "basis": "fixed", "pca_data": True},
                      barostat={"compressibility": 1e-6}, steps=30, sampling_rate=10, timestep=1.0, checks=[])
    erbs.run()
    assert erbs.metrics["frames"] == 3
    assert max(a.calc.results["energy_bias"] for a in erbs.frames) > 0


def test_md_sampling_refuses_uncertainty_checks_of_a_one_member_model(workdir):
    import jax
    import jax.numpy as jnp

    from lotf.potential.graph import collate, structure_arrays
    from lotf.potential.io import save_model
    from lotf.potential.model import Model, ModelConfig

    config = ModelConfig(species=(13, 29), hidden=(8,), n_radial=2, n_basis=3, r_max=4.5, n_members=1,
                         contractions=(0, 1, 2, 3))
    graph = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(emt_frames(1)[0], config.species,
                                                                          config.r_max)]))
    one = save_model(workdir / "one", config, dict(Model(config).init(jax.random.PRNGKey(0), graph)))
    node = MDSampling(data=emt_frames(1), model=types.SimpleNamespace(model_dir=one), steps=20, sampling_rate=10,
                      timestep=1.0)  # the default checks hold the forces-uncertainty stop
    with pytest.raises(ValueError, match="check 'forces_uncertainty' needs ensemble uncertainties, but the JAX "
                                         "potential has 1 member"):
        node.run()


def test_geometry_optimisation_node(workdir, model_dir):
    node = GeometryOptimisation(data=emt_frames(1), model=types.SimpleNamespace(model_dir=model_dir), fmax=1e-2,
                                max_steps=1000)
    node.run()
    frames = node.frames
    assert node.metrics["converged"] == 1
    # the path without the start structure, thinned to at most max_frames (default 50)
    assert node.metrics["steps"] > 0 and len(frames) == min(node.metrics["steps"], 50) == node.metrics["frames"]
    assert np.linalg.norm(frames[-1].get_forces(), axis=1).max() < 1e-2
    assert frames[-1].get_potential_energy() <= frames[0].get_potential_energy()


def test_forcefield_for_rejects_unknown_models():
    with pytest.raises(TypeError, match="neither 'model_dir'"):
        forcefield_for(object())


@pytest.mark.slow
def test_sampling_pipeline_with_dvc(tmp_path, monkeypatch):
    import ase.io
    import zntrack

    from lotf.nodes import LoadFrames, TrainModel

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@lotf"], ["git", "config", "user.name", "ci"],
                ["dvc", "init", "-q"]):
        subprocess.run(cmd, check=True)
    Path("models").mkdir()
    Path("models/tiny.yaml").write_text(json.dumps({
        "model": {"hidden": [16], "n_radial": 2, "n_basis": 4, "r_max": 4.5, "n_members": 2, "contractions": [0, 1, 2, 3]},
        "training": {"epochs": 3, "batch_size": 2}}))
    ase.io.write("data.extxyz", emt_frames(8, seed=3))
    project = zntrack.Project()
    with project:
        data = LoadFrames(file="data.extxyz", stop=6)
        val = LoadFrames(file="data.extxyz", start=6, name="val")
        model = TrainModel(data=data.frames, validation_data=val.frames, config="models/tiny.yaml")
        md = MDSampling(data=data.frames, model=model, steps=40, sampling_rate=10, timestep=1.0,
                        checks=[{"kind": "forces_uncertainty", "max_value": 50.0}])
        opt = GeometryOptimisation(data=md.frames, model=model, fmax=0.5, max_steps=50)
    project.repro()
    loaded = zntrack.from_rev(md.name)
    assert loaded.metrics["frames"] == len(loaded.frames) > 0
    assert len(zntrack.from_rev(opt.name).frames) >= 1


def test_md_sampling_hybrid_d3_matches_calculators(workdir, model_dir):
    """MLP+D3 in the jitted MD step equals the model calculator plus the D3 calculator."""
    from lotf.potential.d3_calculator import D3Calculator
    from lotf.potential.io import load_calculator

    node = MDSampling(data=emt_frames(1), model=types.SimpleNamespace(model_dir=model_dir), steps=20,
                      sampling_rate=10, timestep=1.0, temperature=300.0, checks=[], ensemble="npt",
                      barostat={"compressibility": 1e-6}, d3={"functional": "b97-3c", "cutoff": 8.0})
    node.run()
    frames = node.frames
    assert len(frames) == 2
    mlp, d3 = load_calculator(model_dir), D3Calculator("b97-3c", cutoff=8.0)
    for frame in frames:
        a, b = frame.copy(), frame.copy()
        a.calc, b.calc = mlp, d3
        e_d3 = b.get_potential_energy()
        assert abs(e_d3) > 1e-3  # the term is really there
        # The network runs in float32 and XLA fuses the MD step and the standalone calculator
        # differently per CPU, so they agree to float32 round-off, not bit for bit (a CI CPU gave
        # 1.3e-8 eV); the tolerances stay three orders below the D3 term checked above.
        assert frame.get_potential_energy() == pytest.approx(a.get_potential_energy() + e_d3, abs=1e-6)
        np.testing.assert_allclose(frame.get_forces(), a.get_forces() + b.get_forces(), atol=1e-6)
        np.testing.assert_allclose(frame.get_stress(), a.get_stress() + b.get_stress(), atol=1e-8)


def test_md_sampling_d3_rejects_bad_options(model_dir):
    model = types.SimpleNamespace(model_dir=model_dir)
    with pytest.raises(ValueError, match="unknown option 'cutof'"):
        forcefield_for(model, d3={"cutof": 8.0})
    with pytest.raises(ValueError, match="three-body"):
        forcefield_for(model, d3={"cutoff": 8.0, "three_body": True})


def test_md_sampling_killed_run_resumes(workdir, model_dir, monkeypatch):
    """A kill mid-run leaves a checkpoint outside the node's outputs; the rerun continues it."""
    from lotf.dynamics import md
    from lotf.nodes.scratch import scratch_root

    monkeypatch.delenv("LOTF_SCRATCH", raising=False)
    model = types.SimpleNamespace(model_dir=model_dir)

    def node(name):
        return MDSampling(data=emt_frames(1), model=model, steps=60, sampling_rate=10, timestep=1.0,
                          temperature=300.0, checks=[], name=name)

    setup = md.MDRun._setup

    def small_blocks(self):  # several blocks, so the kill comes mid-run
        self.block_steps = 20
        setup(self)

    monkeypatch.setattr(md.MDRun, "_setup", small_blocks)
    reference = node("reference")
    reference.run()
    save = md.MDRun._save_checkpoint

    def killed(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(md.MDRun, "_save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        node("sampler").run()
    (scratch,) = scratch_root().glob("sampler-*")
    assert (scratch / "checkpoint.npz").exists()
    monkeypatch.setattr(md.MDRun, "_save_checkpoint", save)
    resumed = node("sampler")
    resumed.run()
    assert resumed.metrics["frames"] == 6 and not scratch.exists()
    for a, b in zip(resumed.frames, reference.frames, strict=True):
        assert a.info["step"] == b.info["step"]
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)
