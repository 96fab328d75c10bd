"""Seed-2 exploration metrics: COM displacement MSD and PCA in a common basis."""

import ase
import numpy as np
import pytest

from lotf.analysis.exploration import (
    com_displacement_msd,
    pca_common_basis,
    system_averaged_descriptors,
)

BF4 = np.array(
    [
        [0, 0, 0],
        [0.81, 0.81, 0.81],
        [-0.81, -0.81, 0.81],
        [-0.81, 0.81, -0.81],
        [0.81, -0.81, -0.81],
    ]
)


def test_max_com_msd_of_known_displacements():
    box = 10.0
    starts = np.array([[2.0, 2.0, 2.0], [7.0, 7.0, 7.0]])
    # molecule 0 drifts along x across the boundary; molecule 1 moves out and back
    shifts = [np.array([[0.4 * t, 0, 0], [0, 0.3 * min(t, 20 - t), 0]]) for t in range(21)]
    frames = []
    for s in shifts:
        pos = np.concatenate([BF4 + starts[0] + s[0], BF4 + starts[1] + s[1]])
        a = ase.Atoms("BF4BF4", positions=pos, cell=[box] * 3, pbc=True)
        a.wrap()
        frames.append(a)
    res = com_displacement_msd(frames, "com:BF4", timestep_fs=2.0)
    expected = np.array([((0.4 * t) ** 2 + (0.3 * min(t, 20 - t)) ** 2) / 2 for t in range(21)])
    np.testing.assert_allclose(res.msd, expected, atol=1e-10)
    assert res.max_msd == pytest.approx(expected.max())
    assert res.time_of_max_fs == pytest.approx(2.0 * np.argmax(expected))


def test_pca_common_basis_on_known_structure():
    rng = np.random.default_rng(0)
    # set A varies along e0, set B is offset along e1 and varies along e2 (small)
    a = np.zeros((200, 5))
    a[:, 0] = rng.normal(scale=3.0, size=200)
    b = np.zeros((100, 5))
    b[:, 1] = 10.0
    b[:, 2] = rng.normal(scale=0.5, size=100)
    res = pca_common_basis([a, b], n_components=2)
    assert res.components.shape == (2, 5)
    np.testing.assert_allclose(res.components @ res.components.T, np.eye(2), atol=1e-12)
    # the offset between the sets dominates the pooled variance: PC1 along e1, PC2 along e0
    assert abs(res.components[0, 1]) == pytest.approx(1.0, abs=1e-3)
    assert abs(res.components[1, 0]) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(res.projections[1], res.transform(b))
    # common basis: projections of B sit apart from A on PC1
    assert abs(res.projections[0][:, 0].mean() - res.projections[1][:, 0].mean()) == pytest.approx(
        10.0, rel=1e-2
    )
    assert res.spread()[0] > res.spread()[1]
    assert 0 < res.explained_variance_ratio.sum() <= 1.0 + 1e-12


def test_system_averaged_descriptor_callable():
    frames = [
        ase.Atoms("H3", positions=np.full((3, 3), float(k)), cell=[5.0] * 3, pbc=True)
        for k in range(4)
    ]

    def descriptor(atoms):  # per-atom features: (x, x^2)
        x = atoms.positions[:, 0]
        return np.stack([x, x**2], axis=1)

    d = system_averaged_descriptors(frames, descriptor)
    np.testing.assert_allclose(d, [[k, k * k] for k in range(4)])


def test_pca_errors():
    with pytest.raises(ValueError, match=r"descriptor_sets\[1\]"):
        pca_common_basis([np.zeros((3, 4)), np.zeros((3, 5))])
    with pytest.raises(ValueError, match="n_components"):
        pca_common_basis([np.ones((3, 4))], n_components=5)


def test_gaussian_moment_descriptor_is_intensive_and_invariant():
    from ase.build import bulk

    from lotf.analysis.exploration import gaussian_moment_descriptor

    atoms = bulk("NaCl", "rocksalt", a=5.6, cubic=True)
    atoms.rattle(0.1, seed=3)
    fn = gaussian_moment_descriptor(r_max=5.0)
    d = fn(atoms)
    assert d.ndim == 1 and np.all(np.isfinite(d)) and np.abs(d).max() > 0
    np.testing.assert_allclose(fn(atoms.repeat((2, 1, 2))), d, rtol=1e-10, atol=1e-12)  # an average over atoms
    moved = atoms.copy()
    moved.positions += [0.3, -1.2, 2.0]
    moved.wrap()
    np.testing.assert_allclose(fn(moved), d, rtol=1e-10, atol=1e-12)
    squeezed = atoms.copy()
    squeezed.set_cell(atoms.cell * 0.97, scale_atoms=True)
    assert np.abs(fn(squeezed) - d).max() > 1e-4  # and it sees the structure
