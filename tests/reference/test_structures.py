"""Structure generation: RDKit conformers, Packmol boxes, volume scans, bootstrap, seed nodes."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from ase.geometry import find_mic
from ase.neighborlist import neighbor_list
from scipy.spatial.transform import Rotation

from lotf.reference import structures as st

BMIM = "CCCCn1cc[n+](C)c1"
BF4 = "F[B-](F)(F)F"


@pytest.fixture(scope="module")
def ionic_box():
    """Seed-1 box: 10 BMIM + 10 BF4 at 1.210 g/cm^3, with the conformers used."""
    bmim = st.smiles_to_conformers(BMIM, 1, seed=1)[0]
    bf4 = st.smiles_to_conformers(BF4, 1, seed=1)[0]
    return st.pack_box([bmim, bf4], [10, 10], 1.210, tolerance=2.0, seed=7), bmim, bf4


@pytest.fixture(scope="module")
def water_box():
    return st.pack_species({"water": 32}, 0.997, seed=3)


def _intramolecular_distances(positions: np.ndarray, start: int, n: int) -> np.ndarray:
    p = positions[start : start + n]
    return np.linalg.norm(p[:, None] - p[None], axis=-1)


# ---------------------------------------------------------------------------------- RDKit


def test_conformers_are_reproducible_and_charged():
    a = st.smiles_to_conformers(BMIM, 3, seed=5)
    b = st.smiles_to_conformers(BMIM, 3, seed=5)
    assert len(a) == 3
    assert a[0].get_chemical_formula() == "C8H15N2"
    assert a[0].get_initial_charges().sum() == 1
    assert st.smiles_to_conformers(BF4)[0].get_initial_charges().sum() == -1
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
    # distinct conformers, each a single molecule by the bond graph
    assert np.abs(a[0].get_all_distances() - a[1].get_all_distances()).max() > 0.1
    assert all(st.molecule_ids(x).max() == 0 for x in a)


def test_bad_smiles_and_species_fail_clearly():
    with pytest.raises(ValueError, match="invalid SMILES 'C1CC'"):
        st.smiles_to_conformers("C1CC")
    with pytest.raises(ValueError, match=r"unknown species 'emim' \(known: bmim, bf4, water\)"):
        st.species_smiles("emim")
    with pytest.raises(ValueError, match="unknown species 'salt'"):
        st.pack_species({"salt": 2}, 1.0)


# -------------------------------------------------------------------------------- Packmol


def test_packmol_is_reproducible():
    water = st.smiles_to_conformers("O")[0]
    a = st.pack_box([water], [16], 0.997, seed=11)
    b = st.pack_box([water], [16], 0.997, seed=11)
    c = st.pack_box([water], [16], 0.997, seed=12)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert np.abs(a.positions - c.positions).max() > 0.5


def test_packed_box_density_and_size(ionic_box):
    box = ionic_box[0]
    assert len(box) == 300
    assert box.pbc.all()
    # seed 1: 10 pairs at 1.210 g/cm^3 is a 14.58 A cube
    np.testing.assert_allclose(box.cell.lengths(), 14.584, atol=0.005)
    assert box.cell.angles() == pytest.approx([90, 90, 90])
    # independent: molar mass of BMIM-BF4 (226.03 g/mol) x 10 / N_A / volume
    rho = 10 * 226.025 / 6.02214076e23 / (box.get_volume() * 1e-24)
    assert rho == pytest.approx(1.210, rel=2e-4)
    assert st.density(box) == pytest.approx(1.210, rel=1e-10)


def test_molecules_intact_and_apart_after_packing(ionic_box):
    box, bmim, bf4 = ionic_box
    mol = st.molecule_ids(box)
    sizes = np.bincount(mol)
    assert sorted(sizes.tolist()) == [5] * 10 + [25] * 10
    # packmol moves rigid bodies: every molecule has its conformer's internal distances
    for k in range(10):
        d = _intramolecular_distances(box.positions, 25 * k, 25)
        np.testing.assert_allclose(d, bmim.get_all_distances(), atol=1e-5)
        d = _intramolecular_distances(box.positions, 250 + 5 * k, 5)
        np.testing.assert_allclose(d, bf4.get_all_distances(), atol=1e-5)
    # the tolerance holds between molecules, across periodic boundaries too
    i, j, d = neighbor_list("ijd", box, 2.5)
    inter = mol[i] != mol[j]
    assert d[inter].min() > 2.0 - 0.05


def test_pack_bad_input_fails_clearly():
    water = st.smiles_to_conformers("O")[0]
    with pytest.raises(ValueError, match="density must be positive, got -1.0"):
        st.pack_box([water], [4], -1.0)
    with pytest.raises(ValueError, match="1 molecules but 2 counts"):
        st.pack_box([water], [4, 4], 1.0)
    with pytest.raises(ValueError, match=r"counts\[0\] must be a non-negative integer"):
        st.pack_box([water], [-3], 1.0)
    with pytest.raises(RuntimeError, match="packmol failed"):
        st.pack_box([water], [2], 5.0, tolerance=3.0)  # 2.3 A box: cannot hold two at 3 A


# ---------------------------------------------------------------------------- volume scan


def test_volume_scan_is_rigid_and_hits_densities(ionic_box):
    box = ionic_box[0]
    wrapped = box.copy()
    wrapped.wrap()  # break molecules across the boundaries: the scan must make them whole
    targets = [0.151, 0.9, 1.210, 1.661]
    frames = st.volume_scan(wrapped, targets)
    assert [len(f) for f in frames] == [300] * 4
    for f, rho in zip(frames, targets):
        assert st.density(f) == pytest.approx(rho, rel=1e-12)
        # output molecules are whole: plain distances equal the packed (rigid) molecules exactly
        for k in (0, 9):
            np.testing.assert_allclose(
                _intramolecular_distances(f.positions, 25 * k, 25),
                _intramolecular_distances(box.positions, 25 * k, 25),
                atol=1e-9,
            )
        np.testing.assert_allclose(
            _intramolecular_distances(f.positions, 295, 5), _intramolecular_distances(box.positions, 295, 5), atol=1e-9
        )
        assert np.bincount(st.molecule_ids(f)).size == 20 or rho > 1.5  # close contacts may merge at 1.66
    # centres of mass scale with the cell: the scaled fractional centres are unchanged mod 1
    masses = box.get_masses()[:25]
    c0 = box.positions[:25].T @ masses / masses.sum()
    c1 = frames[0].positions[:25].T @ masses / masses.sum()
    s0 = np.linalg.solve(box.cell.T, c0)
    s1 = np.linalg.solve(frames[0].cell.T, c1)
    diff = (s1 - s0) - np.round(s1 - s0)
    np.testing.assert_allclose(diff, 0.0, atol=1e-9)


def test_volume_scan_bad_input(ionic_box):
    box = ionic_box[0]
    with pytest.raises(ValueError, match=r"densities\[1\] = -0.5 must be positive"):
        st.volume_scan(box, [1.0, -0.5])
    molecule = st.smiles_to_conformers("O")[0]
    with pytest.raises(ValueError, match="must be periodic"):
        st.volume_scan(molecule, [1.0])


# ------------------------------------------------------------------------------ bootstrap


def test_bootstrap_rattle_respects_maximum(water_box):
    frames = st.bootstrap(water_box, 20, rotation=0.0, translation=0.0, rattle=0.1, seed=1)
    assert len(frames) == 20
    disp = np.concatenate([find_mic(f.positions - water_box.positions, water_box.cell)[1] for f in frames])
    assert disp.max() <= 0.1 + 1e-12
    assert disp.max() > 0.09  # uniform in the ball: the largest of 1920 draws is near the edge


def test_bootstrap_translation_moves_molecules_rigidly(water_box):
    frames = st.bootstrap(water_box, 10, rotation=0.0, translation=0.5, rattle=0.0, seed=2)
    for f in frames:
        vec = find_mic(f.positions - water_box.positions, water_box.cell)[0].reshape(32, 3, 3)
        np.testing.assert_allclose(vec, vec[:, :1].repeat(3, axis=1), atol=1e-9)
        assert np.linalg.norm(vec[:, 0], axis=1).max() <= 0.5 + 1e-12


def test_bootstrap_rotation_about_centre_within_maximum(water_box):
    frames = st.bootstrap(water_box, 5, rotation=20.0, translation=0.0, rattle=0.0, seed=3)
    ref, _ = st.unwrap_molecules(water_box)
    ref = ref.reshape(32, 3, 3)
    m = water_box.get_masses()[:3]
    angles = []
    for f in frames:
        new = f.positions.reshape(32, 3, 3)
        c_ref = np.einsum("j,mjk->mk", m, ref) / m.sum()
        c_new = np.einsum("j,mjk->mk", m, new) / m.sum()
        np.testing.assert_allclose(c_new, c_ref, atol=1e-9)
        for a, b, ca, cb in zip(ref, new, c_ref, c_new):
            rot, rmsd = Rotation.align_vectors(b - cb, a - ca)
            assert rmsd < 1e-6
            angles.append(rot.magnitude())
    assert np.rad2deg(max(angles)) <= 20.0 + 1e-6
    assert np.rad2deg(max(angles)) > 15.0


def test_bootstrap_keeps_molecules_and_is_seeded(water_box):
    a = st.bootstrap(water_box, 5, seed=4, include_original=True)
    b = st.bootstrap(water_box, 5, seed=4)
    c = st.bootstrap(water_box, 5, seed=5)
    assert len(a) == 6 and len(b) == 5
    np.testing.assert_array_equal(a[0].positions, water_box.positions)
    for x, y, z in zip(a[1:], b, c):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert np.abs(x.positions - z.positions).max() > 1e-3
        assert np.bincount(st.molecule_ids(x)).tolist() == [3] * 32
    with pytest.raises(ValueError, match="rattle must be >= 0, got -0.1"):
        st.bootstrap(water_box, 2, rattle=-0.1)


# --------------------------------------------------------------------------------- nodes


def test_seed_nodes_write_frames(tmp_path, monkeypatch):
    """SmilesConformers -> PackBox -> Bootstrap / VolumeScan in a ZnTrack project (run in-process)."""
    zntrack = pytest.importorskip("zntrack")
    from lotf.nodes.seed import Bootstrap, PackBox, SmilesConformers, VolumeScan

    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["dvc", "init", "-q"], check=True)
    project = zntrack.Project()
    with project:
        water = SmilesConformers(smiles="O", n_conformers=2, name="Water")
        box = PackBox(data=[water.frames], count=[8], density=0.997, n_configurations=2)
        boot = Bootstrap(data=box.frames, data_id=0, n_configurations=3)
        scan = VolumeScan(data=box.frames, data_ids=[1], densities=[0.5, 1.5])
    project.build()
    loaded = {}
    for node in (water, box, boot, scan):  # what `zntrack run` does, in this process
        running = type(node).from_rev(name=node.name, running=True)
        running.run()
        running.save()
        loaded[node.name] = type(node).from_rev(name=node.name)
    assert len(loaded["Water"].frames) == 2
    assert [len(a) for a in loaded["PackBox"].frames] == [24, 24]
    assert len(loaded["Bootstrap"].frames) == 3
    assert [st.density(a) for a in loaded["VolumeScan"].frames] == pytest.approx([0.5, 1.5])
