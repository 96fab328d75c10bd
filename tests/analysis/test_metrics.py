"""Prediction metrics against hand-computed values; force decomposition identities."""

import ase
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from lotf.analysis import metrics as ml


def labelled(n_atoms, energy, forces, stress=None):
    a = ase.Atoms(
        f"H{n_atoms}",
        positions=np.arange(3 * n_atoms, dtype=float).reshape(-1, 3),
        cell=[10.0] * 3,
        pbc=True,
    )
    kw = {"energy": energy, "forces": np.asarray(forces, float)}
    if stress is not None:
        kw["stress"] = np.asarray(stress, float)
    a.calc = SinglePointCalculator(a, **kw)
    return a


def test_metrics_by_hand():
    ref = [
        labelled(2, -10.0, [[0, 0, 1.0], [0, 0, -1.0]], np.zeros(6)),
        labelled(4, -20.0, np.zeros((4, 3)), np.zeros(6)),
    ]
    pred = [
        labelled(2, -9.99, [[0, 0, 1.1], [0, 0, -1.0]], [0.001, 0.0, 0.0, 0.0, 0.0, 0.0]),
        labelled(
            4, -20.04, [[0.3, 0.4, 0.0]] + [[0, 0, 0]] * 3, [0.0, -0.002, 0.0, 0.0, 0.0, 0.003]
        ),
    ]
    m = ml.prediction_metrics(ref, pred)
    # energy per atom errors: +0.01/2 = 5 meV/atom, -0.04/4 = -10 meV/atom
    assert m["energy"]["mae"] == pytest.approx(7.5)
    assert m["energy"]["rmse"] == pytest.approx(np.sqrt((25 + 100) / 2))
    assert m["energy"]["max"] == pytest.approx(10.0)
    # force component errors (meV/A): 100, 300, 400 among 18 components
    assert m["forces"]["mae"] == pytest.approx(800 / 18)
    assert m["forces"]["rmse"] == pytest.approx(np.sqrt((100**2 + 300**2 + 400**2) / 18))
    # per atom: error vectors |.| = 100 and 500 among 6 atoms; |F| changes 100 and 500
    assert m["forces"]["vector_mae"] == pytest.approx(600 / 6)
    assert m["forces"]["norm_mae"] == pytest.approx(600 / 6)
    # stress errors (meV/A^3): 1, 2, 3 among 12 components
    assert m["stress"]["mae"] == pytest.approx(6 / 12)
    # pressure = -trace/3: errors -1/3 and +2/3 meV/A^3
    assert m["stress"]["pressure_mae"] == pytest.approx(0.5)


def test_norm_and_vector_mae_differ_for_rotated_force():
    f_ref = np.array([[1.0, 0.0, 0.0]])
    f_pred = np.array([[0.0, 1.0, 0.0]])  # same magnitude, different direction
    m = ml.force_metrics(f_ref, f_pred)
    assert m["norm_mae"] == pytest.approx(0.0)
    assert m["vector_mae"] == pytest.approx(np.sqrt(2) * 1000)


def test_predict_with_calculator():
    from ase.calculators.lj import LennardJones

    frames = [ase.Atoms("Ar2", positions=[[0, 0, 0], [0, 0, d]]) for d in (3.5, 3.8)]
    pred = ml.predict(
        frames, LennardJones(sigma=3.4, epsilon=0.01, rc=10.0), ("energy", "forces", "stress")
    )
    assert pred[0].calc.results["energy"] == pytest.approx(
        LennardJones(sigma=3.4, epsilon=0.01, rc=10.0).get_potential_energy(frames[0].copy())
    )
    assert "stress" not in pred[0].calc.results  # not periodic


def test_errors():
    a = labelled(2, 0.0, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="predicted: 0 structures"):
        ml.prediction_metrics([a], [])
    with pytest.raises(ValueError, match="shapes differ"):
        ml.force_metrics(np.zeros((2, 3)), np.zeros((3, 3)))
    bare = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="no property"):
        ml.prediction_metrics([bare], [bare])


# --------------------------------------------------------------------------- decomposition


def liquid(seed=0, box=9.0):
    """Two water-like molecules and a BF4-like molecule, some split by the boundary."""
    rng = np.random.default_rng(seed)
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    bf4 = np.array(
        [
            [0, 0, 0],
            [0.81, 0.81, 0.81],
            [-0.81, -0.81, 0.81],
            [-0.81, 0.81, -0.81],
            [0.81, -0.81, -0.81],
        ]
    )
    pos = np.concatenate([water + [8.7, 1.0, 1.0], water + [4.0, 8.8, 4.0], bf4 + [4.5, 4.5, 0.3]])
    atoms = ase.Atoms("OH2OH2BF4", positions=pos, cell=[box] * 3, pbc=True)
    atoms.wrap()
    return atoms, rng


def net(forces, idx):
    return forces[idx].sum(axis=0)


def torque(x, forces, masses, idx):
    com = masses[idx] @ x[idx] / masses[idx].sum()
    return np.cross(x[idx] - com, forces[idx]).sum(axis=0)


def test_decomposition_sums_back_and_splits_force_and_torque():
    atoms, rng = liquid()
    forces = rng.normal(size=(len(atoms), 3))
    mols = ml.find_molecules(atoms)
    assert [len(m) for m in mols] == [3, 3, 5]
    trans, rot, vib = ml.decompose_frame(atoms, forces, mols)
    np.testing.assert_allclose(trans + rot + vib, forces, atol=1e-12)
    from lotf.analysis.diffusion import make_whole

    x = make_whole(atoms, mols)
    m = atoms.get_masses()
    for mol in mols:
        np.testing.assert_allclose(net(trans, mol), net(forces, mol), atol=1e-12)
        np.testing.assert_allclose(net(rot, mol), 0.0, atol=1e-12)
        np.testing.assert_allclose(net(vib, mol), 0.0, atol=1e-12)
        np.testing.assert_allclose(torque(x, trans, m, mol), 0.0, atol=1e-12)
        np.testing.assert_allclose(torque(x, rot, m, mol), torque(x, forces, m, mol), atol=1e-10)
        np.testing.assert_allclose(torque(x, vib, m, mol), 0.0, atol=1e-10)
    # the split does not depend on where the box cuts the molecules
    shifted = atoms.copy()
    shifted.positions += [3.3, -2.1, 4.4]
    shifted.wrap()
    for a, b in zip((trans, rot, vib), ml.decompose_frame(shifted, forces, mols)):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_rigid_body_forces_have_no_vibrational_part():
    atoms, rng = liquid(seed=1)
    mols = ml.find_molecules(atoms)
    from lotf.analysis.diffusion import make_whole

    x = make_whole(atoms, mols)
    m = atoms.get_masses()
    forces = np.zeros((len(atoms), 3))
    for mol in mols:
        a, alpha = rng.normal(size=3), rng.normal(size=3)  # linear and angular acceleration
        com = m[mol] @ x[mol] / m[mol].sum()
        forces[mol] = m[mol, None] * (a + np.cross(alpha, x[mol] - com))
    trans, rot, vib = ml.decompose_frame(atoms, forces, mols)
    np.testing.assert_allclose(vib, 0.0, atol=1e-10)
    assert np.abs(rot).max() > 0.1 and np.abs(trans).max() > 0.1
    # and purely internal forces (equal and opposite along a bond) are purely vibrational
    internal = np.zeros_like(forces)
    i, j = mols[0][0], mols[0][1]
    d = x[j] - x[i]
    internal[i], internal[j] = -d, d
    t2, r2, v2 = ml.decompose_frame(atoms, internal, mols)
    np.testing.assert_allclose(t2, 0.0, atol=1e-12)
    np.testing.assert_allclose(r2, 0.0, atol=1e-10)
    np.testing.assert_allclose(v2, internal, atol=1e-10)


def test_single_atoms_are_translational():
    atoms = ase.Atoms("ArNe", positions=[[0, 0, 0], [5, 5, 5]], cell=[10.0] * 3, pbc=True)
    f = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    trans, rot, vib = ml.decompose_frame(atoms, f)
    np.testing.assert_allclose(trans, f)
    np.testing.assert_allclose(rot + vib, 0.0, atol=1e-14)


def test_decomposed_force_metrics():
    atoms, rng = liquid(seed=2)
    f_ref = rng.normal(size=(len(atoms), 3))
    ref = atoms.copy()
    ref.calc = SinglePointCalculator(ref, forces=f_ref)
    pred = atoms.copy()
    # error proportional to mass = a rigid translation: only the translational part changes
    masses = atoms.get_masses()
    pred.calc = SinglePointCalculator(pred, forces=f_ref + 0.001 * masses[:, None])
    metrics, parts = ml.decomposed_force_metrics([ref], [pred])
    assert metrics["translational"]["mae"] == pytest.approx(masses.mean())  # meV/A
    assert metrics["rotational"]["mae"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["vibrational"]["mae"] == pytest.approx(0.0, abs=1e-9)
    assert parts["translational"][0].shape == (len(atoms), 3)
