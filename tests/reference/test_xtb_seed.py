"""xTB seed (lotf.reference.xtb, XTBSeed node) with the real tblite: units, a tiny ion-pair run,
resuming from the checkpoint, and one-line errors."""

import numpy as np
import pytest
from ase.build import molecule

from lotf.reference import structures as st
from lotf.reference import xtb

EMIM, BF4 = "CC[n+]1ccn(C)c1", "F[B-](F)(F)F"


def _fd_forces(atoms, h=1e-3):
    forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.calc = atoms.calc
                moved.positions[i, k] += sign * h
                energies.append(moved.get_potential_energy())
            forces[i, k] = -(energies[0] - energies[1]) / (2 * h)
    return forces


def _fd_stress(atoms, h=1e-4):
    stress = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            energies = []
            for sign in (1, -1):
                strained = atoms.copy()
                strained.calc = atoms.calc
                eps = np.eye(3)
                eps[i, j] += sign * h
                strained.set_cell(atoms.cell @ eps, scale_atoms=True)
                energies.append(strained.get_potential_energy())
            stress[i, j] = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
    return stress


def test_calculator_forces_and_stress_match_finite_differences():
    water = molecule("H2O")
    water.calc = xtb.calculator("GFN1-xTB")
    np.testing.assert_allclose(water.get_forces(), _fd_forces(water), atol=2e-4)
    assert "stress" not in water.calc.results

    box = st.pack_box([st.smiles_to_conformers("O")[0]], [4], 0.9, seed=1)
    box.calc = xtb.calculator("GFN1-xTB")
    forces = box.get_forces()
    assert np.abs(forces).max() > 0.1  # not a trivially relaxed structure
    np.testing.assert_allclose(forces, _fd_forces(box), atol=2e-4)
    np.testing.assert_allclose(box.get_stress(voigt=False), _fd_stress(box), atol=1e-5)


def test_ion_pair_seed_frames():
    frames = xtb.xtb_seed([EMIM, BF4], [1, 1], 1.28, 400.0, 20, timestep=0.5, interval=10, seed=3,
                          relax_steps=30)
    assert [f.info["step"] for f in frames] == [10, 20]
    expected = sorted(st.smiles_to_conformers(EMIM)[0].get_chemical_symbols()
                      + st.smiles_to_conformers(BF4)[0].get_chemical_symbols())
    for f in frames:
        assert len(f) == 24 and sorted(f.get_chemical_symbols()) == expected
        assert f.info["charge"] == 0
        assert np.isfinite(f.get_potential_energy())
        assert f.get_forces().shape == (24, 3) and np.isfinite(f.get_forces()).all()
        assert f.get_stress().shape == (6,)
        assert 50.0 < f.info["temperature"] < 1500.0  # 24 atoms: wide but physical
    # the stored labels are xTB's for the stored positions (neutral box)
    last = frames[-1].copy()
    last.calc = xtb.calculator("GFN1-xTB", charge=0)
    assert last.get_potential_energy() == pytest.approx(frames[-1].get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(last.get_forces(), frames[-1].get_forces(), atol=1e-3)  # SCC restart vs fresh guess


def test_resume_from_checkpoint(tmp_path):
    ck = tmp_path / "ck.traj"
    args = (["O"], [4], 0.9, 300.0)
    first = xtb.xtb_seed(*args, 20, interval=10, seed=5, relax_steps=20, checkpoint=ck)
    assert len(first) == 2
    # a longer rerun keeps what is on disk and only runs steps 21-30
    longer = xtb.xtb_seed(*args, 30, interval=10, seed=5, relax_steps=20, checkpoint=ck)
    assert [f.info["step"] for f in longer] == [10, 20, 30]
    for a, b in zip(first, longer):
        np.testing.assert_array_equal(a.positions, b.positions)
    # other inputs start over
    other = xtb.xtb_seed(*args, 10, interval=10, seed=6, relax_steps=20, checkpoint=ck)
    assert len(other) == 1 and not np.allclose(other[0].positions, longer[0].positions)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "GFN3-xTB"}, "unknown method"),
        ({"density": 0.0}, "density must be positive"),
        ({"temperature": -1.0}, "temperature must be positive"),
        ({"n_steps": 0}, "n_steps must be a positive integer"),
        ({"smiles": ["C1CC("]}, "cannot parse SMILES"),
        ({"counts": [1, 2]}, "1 SMILES but 2 counts"),
        ({"smiles": ["[CH3]"], "counts": [1]}, "radicals are not supported"),
    ],
)
def test_bad_input_fails_in_one_line(kwargs, message):
    args = {"smiles": ["O"], "counts": [2], "density": 1.0, "temperature": 300.0, "n_steps": 10} | kwargs
    with pytest.raises(ValueError, match=message) as err:
        xtb.xtb_seed(**args)
    assert "\n" not in str(err.value)


def test_xtb_seed_node(tmp_path, monkeypatch):
    from lotf.nodes.seed import XTBSeed

    monkeypatch.chdir(tmp_path)
    node = XTBSeed(name="xtbseed", smiles=["O"], count=[4], density=0.9, temperature=300.0, n_steps=20)
    assert (node.timestep, node.interval, node.seed, node.method) == (0.5, 10, 42, "GFN1-xTB")
    node.run()
    frames = node.frames
    assert len(frames) == 2 and all(len(f) == 12 for f in frames)
    assert np.isfinite(frames[-1].get_forces()).all() and frames[-1].get_stress().shape == (6,)
    assert node.metrics["n_frames"] == 2 and node.metrics["wall_s"] > 0
    assert 30.0 < node.metrics["temperature_mean"] < 1000.0
    nwd = tmp_path / node.nwd
    assert nwd.is_dir() and not (nwd / "checkpoint.traj").exists()  # removed once frames.h5 is written


@pytest.mark.slow
def test_four_ion_pairs_run():
    frames = xtb.xtb_seed([EMIM, BF4], [4, 4], 1.28, 400.0, 200, interval=50, seed=1)
    assert len(frames) == 4 and all(len(f) == 96 and f.info["charge"] == 0 for f in frames)
    assert 200.0 < np.mean([f.info["temperature"] for f in frames]) < 600.0
