import os
import sys

import pytest

# the environment's own executables (dvc, zntrack, packmol, lotf) first, however pytest was started
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

os.environ.setdefault("LOTF_CP2K_STORE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "cp2k-store"))

# persistent XLA cache shared by the test session and its subprocesses (CLI tests)
os.environ.setdefault("LOTF_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"))

import lotf  # noqa: E402,F401  (enables float64 in JAX before any test builds arrays)



@pytest.fixture
def dvc_project(tmp_path, monkeypatch):
    """``tmp_path`` as the working directory of a fresh git + DVC project (a committer configured)."""
    import subprocess

    monkeypatch.chdir(tmp_path)
    for args in (["init", "-q"], ["config", "user.email", "ci@lotf"], ["config", "user.name", "ci"]):
        subprocess.run(["git", *args], check=True)
    subprocess.run(["dvc", "init", "-q"], check=True)
    return tmp_path


@pytest.fixture
def emt_model_dir(tmp_path):
    """A small untrained GMNN ensemble for the Cu/Al frames of ``lotf.demo.emt_frames`` (MD node tests)."""
    return make_emt_model(tmp_path / "model")


@pytest.fixture(scope="session")
def shared_emt_model_dir(tmp_path_factory):
    """The same model, made once for tests that only read it."""
    return make_emt_model(tmp_path_factory.mktemp("shared") / "model")


def make_emt_model(directory):
    import jax
    import jax.numpy as jnp

    from lotf.demo import emt_frames
    from lotf.potential.graph import collate, structure_arrays
    from lotf.potential.io import save_model
    from lotf.potential.model import Model, ModelConfig

    config = ModelConfig(species=(13, 29), hidden=(16,), n_radial=2, n_basis=3, r_max=4.5, n_members=2,
                         contractions=(0, 1, 2, 3))
    model = Model(config)
    graph = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(emt_frames(1)[0], config.species,
                                                                          config.r_max)]))
    params = dict(model.init(jax.random.PRNGKey(0), graph))
    params["scale"] = params["scale"] * 0.05  # a gentle random surface
    return save_model(directory, config, params)
