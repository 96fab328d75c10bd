"""Tiny GMNNs and structures shared by the selection tests (largest frame first, so the
grow-only padding of FeatureMap compiles once)."""

import functools

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotf.potential.graph import collate, structure_arrays
from lotf.potential.model import Model, ModelConfig

SPECIES = (1, 8)


def water_cluster(n_molecules: int, rng: np.random.Generator, periodic: bool = False) -> ase.Atoms:
    """Loose random water molecules (geometry only matters for having neighbours)."""
    mol = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    centres = rng.uniform(0.0, 2.5 * n_molecules ** (1 / 3) + 1.0, size=(n_molecules, 3))
    positions = np.concatenate([mol + c + rng.normal(scale=0.05, size=(3, 3)) for c in centres])
    atoms = ase.Atoms("OH2" * n_molecules, positions=positions)
    if periodic:
        atoms.cell = [6.0, 6.0, 6.0]
        atoms.pbc = True
    return atoms


@pytest.fixture(scope="session")
def frames():
    rng = np.random.default_rng(7)
    return [water_cluster(n, rng, periodic=(i % 3 == 0)) for i, n in enumerate([4, 2, 3, 1, 2, 3, 2])]


@functools.cache
def tiny_model(ensemble: str, dtype: str = "float64", seed: int = 0):
    """A random tiny GMNN with distinct per-species scales (so s_Z matters in the features)."""
    cfg = ModelConfig(species=SPECIES, hidden=(16,), n_radial=2, n_basis=3, n_members=2, ensemble=ensemble,
                      dtype=dtype)
    model = Model(cfg)
    rng = np.random.default_rng(seed)
    graph = collate([structure_arrays(water_cluster(2, rng), SPECIES, cfg.r_max)])
    params = jax.jit(model.init)(jax.random.PRNGKey(seed), graph)  # eager init takes ~15 s
    scale = jnp.array([[0.5], [2.0]])
    params = {**params, "scale": jnp.broadcast_to(scale, params["scale"].shape)}
    return model, params
