"""Last-layer-gradient features against jax.grad of single-structure energies."""

import ase
import jax
import numpy as np
import pytest

from lotf.potential.graph import collate, structure_arrays
from lotf.selection.features import FeatureMap, n_features

from .conftest import tiny_model


def member_grads(model, params, frames):
    """grads[i][k]: jax.grad of frame i's energy E_k w.r.t. the whole readout layer, one
    structure per graph (padded to one shape so that it compiles once)."""

    @jax.jit
    def grads(params, graph):
        def energy(readout, member):
            return model.structure_energies({**params, "readout_out": readout}, graph)[0, member]

        return [jax.grad(energy)(params["readout_out"], k) for k in range(model.config.n_members)]

    items = [structure_arrays(a, model.config.species, model.config.r_max) for a in frames]
    n_atoms = max(s.n_atoms for s in items) + 3
    n_neighbors = max(s.max_neighbors for s in items) + 2
    return [jax.device_get(grads(params, collate([s], n_atoms=n_atoms, n_neighbors=n_neighbors)))
            for s in items]


def own_block(model, grad, member):
    """The part of a readout gradient that belongs to ``member``: [kernel column, bias]."""
    if model.config.ensemble == "full":
        return np.concatenate([grad["kernel"][member, :, 0], grad["bias"][member]])
    return np.concatenate([grad["kernel"][:, member], grad["bias"][member:member + 1]])


def flat(grad):
    return np.concatenate([np.ravel(grad["kernel"]), np.ravel(grad["bias"])])


@pytest.fixture(scope="module", params=["shallow", "full"])
def reference(request, frames):
    """(model, params, reference grads, FeatureMap features) for one ensemble kind."""
    model, params = tiny_model(request.param)
    features = FeatureMap(model, params, batch_size=3)(frames, progress=False)  # 7 frames: a partial batch
    return model, params, member_grads(model, params, frames), features


def test_features_equal_jax_grad_of_structure_energy(frames, reference):
    model, _, grads, features = reference
    full = model.config.ensemble == "full"
    assert features.shape == (len(frames), n_features(model)) == (len(frames), 34 if full else 17)
    for i in range(len(frames)):
        blocks = [own_block(model, grads[i][k], k) for k in range(2)]
        if full:
            expected = np.concatenate(blocks) / np.sqrt(2)
        else:
            np.testing.assert_allclose(blocks[0], blocks[1], rtol=1e-12)  # heads share the hidden layer
            expected = blocks[0]
        np.testing.assert_allclose(features[i], expected, rtol=1e-10, atol=1e-12)
    # bias entry of a member block: sum of the per-species scales (H: 0.5, O: 2.0)
    n_water = np.array([np.sum(a.numbers == 8) for a in frames])
    np.testing.assert_allclose(features[:, 16] * (np.sqrt(2) if full else 1), 3.0 * n_water, rtol=1e-12)


def test_feature_kernel_is_the_average_of_member_kernels(reference):
    model, _, grads, features = reference
    member = np.array([[flat(g[k]) for g in grads] for k in range(2)])  # (K, N, whole readout)
    average = np.mean([g @ g.T for g in member], axis=0)
    np.testing.assert_allclose(features @ features.T, average, rtol=1e-10)
    if model.config.ensemble == "full":  # apax sums the members' own gradients: cross terms
        summed = sum(np.array([own_block(model, g[k], k) for g in grads]) for k in range(2)) / np.sqrt(2)
        assert not np.allclose(summed @ summed.T, average, rtol=1e-3)


def test_batch_size_and_float32_do_not_change_features(frames, reference):
    model, params, _, ref = reference
    np.testing.assert_allclose(FeatureMap(model, params, batch_size=1)(frames, progress=False), ref, rtol=1e-12)
    if model.config.ensemble == "full":
        return
    model32, _ = tiny_model("shallow", dtype="float32")
    params32 = {k: v if k in ("scale", "shift") else jax.tree_util.tree_map(lambda x: x.astype(np.float32), v)
                for k, v in params.items()}
    out = FeatureMap(model32, params32, batch_size=4)(frames, progress=False)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=1e-5)  # same weights, network in float32


def test_unknown_element_names_the_frame(frames):
    model, params = tiny_model("shallow")
    bad = list(frames[:2]) + [ase.Atoms("NH3", positions=np.eye(4, 3) * 1.2)]
    with pytest.raises(ValueError, match=r"unknown element N \(pool frame 2\)"):
        FeatureMap(model, params)(bad, progress=False, desc="pool")


def test_bad_batch_size():
    model, params = tiny_model("shallow")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        FeatureMap(model, params, batch_size=0)
