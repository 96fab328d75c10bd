"""ERBS options that reproduce the erbs code (issue 13): few-reference projection and Bessel descriptor."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotf.dynamics.biases import ERBS
from lotf.potential import descriptor as gm
from tests.dynamics.helpers import argon_fcc, descriptors_in_both_precisions


jax.config.update("jax_enable_x64", True)


def _deposits(erbs, n, seed=0):
    rng = np.random.default_rng(seed)
    state = erbs.init_state(n)
    out = []
    for _ in range(n):
        state = erbs.deposit(state, jnp.asarray(rng.normal(size=erbs.n_features)))
        out.append(state)
    return out


def test_few_refs_random_is_an_unnormalised_gaussian_projection_until_k_references():
    kw = dict(n_components=4, n_basis=3, contractions=(0, 1, 2, 4), r_max=5.0, bandwidth=0.3)
    random = _deposits(ERBS(few_refs="random", **kw), 5)
    svd = _deposits(ERBS(**kw), 5)
    f = ERBS(**kw).n_features
    for n, (r, s) in enumerate(zip(random, svd), start=1):
        norms_r = np.linalg.norm(np.asarray(r.components), axis=0)
        norms_s = np.linalg.norm(np.asarray(s.components), axis=0)
        np.testing.assert_allclose(norms_s, 1.0, atol=1e-9)  # lotf's default: orthonormal axes always
        if n < 4:  # erbs' global_flexible_pca: N(0, 1) entries, |column| ~ sqrt(F)
            assert np.all(norms_r > 0.4 * math.sqrt(f)) and np.all(norms_r < 2.0 * math.sqrt(f))
            # the kernels are the references projected with that matrix around their mean
            refs = np.asarray(r.refs[:n])
            cvs = (refs - refs.mean(0)) @ np.asarray(r.components)
            np.testing.assert_allclose(np.sort(np.asarray(r.kernels.centers[:int(r.kernels.count)]), axis=0),
                                       np.sort(cvs, axis=0), atol=1e-9)
        else:  # from k references on: the same PCA as the default
            np.testing.assert_allclose(norms_r, 1.0, atol=1e-9)
            np.testing.assert_allclose(np.abs(np.asarray(r.components)), np.abs(np.asarray(s.components)), atol=1e-9)
    with pytest.raises(ValueError, match="few_refs"):
        ERBS(few_refs="gaussian")


def test_bessel_descriptor_is_apax_bessel_basis_with_unit_normalisation():
    atoms = argon_fcc(2, rattle=0.3, seed=1)
    g64, g32, _ = descriptors_in_both_precisions(atoms, n_basis=4, r_max=5.0, radial_basis="bessel")
    np.testing.assert_allclose(g32, g64, rtol=2e-5, atol=1e-6 * np.abs(g64).max())
    # G0 (the first n_basis features) by hand: mean over atoms of sum_j phi_n(d_ij) f_c(d_ij), with
    # apax's phi_n = (-1)^n sqrt(2) pi / r_max^1.5 [sinc((n+1) d/r_max) + sinc((n+2) d/r_max)]
    pos, cell = atoms.positions, atoms.cell.array
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]) @ cell
    d = np.linalg.norm(pos[None, :, None] - pos[:, None, None] + shifts[None, None], axis=-1).ravel()
    d = d[(d > 1e-8) & (d < 5.0)]
    n = np.arange(4)
    phi = (-1.0) ** n * math.sqrt(2) * math.pi / 5.0**1.5 * (np.sinc((n + 1) * d[:, None] / 5.0)
                                                            + np.sinc((n + 2) * d[:, None] / 5.0))
    fc = 0.5 * (np.cos(np.pi * d / 5.0) + 1.0)
    np.testing.assert_allclose(g64[:4], (phi * fc[:, None]).sum(0) / len(atoms), rtol=1e-9)
    gauss, _, _ = descriptors_in_both_precisions(atoms, n_basis=4, r_max=5.0)
    assert not np.allclose(gauss, g64)  # the default stays the Gaussian basis
    with pytest.raises(ValueError, match="radial_basis"):
        ERBS(radial_basis="chebyshev")
    assert gm.averaged_descriptor.__kwdefaults__["basis"] == "gaussian"
