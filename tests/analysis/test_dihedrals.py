"""Dihedral angles of constructed geometries (value and sign), the BMIM butyl chain,
time-window distributions and (Phi, Psi) coverage."""

import ase
import numpy as np
import pytest

from lotf.analysis.dihedrals import (
    butyl_chains,
    butyl_dihedral_quads,
    dihedral_angles,
    dihedral_distributions,
    ramachandran_coverage,
    ramachandran_histogram,
)


def four_points(phi_deg: float) -> np.ndarray:
    """p1 at the origin, p2 on +z; p0 on +x; p3 rotated by phi about +z.

    Looking along p1->p2 (towards +z) the front bond (to +x) turns clockwise by phi onto the
    rear bond, so the IUPAC dihedral is +phi.
    """
    phi = np.radians(phi_deg)
    return np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1.5], [np.cos(phi), np.sin(phi), 1.5]])


@pytest.mark.parametrize("phi", [0.0, 60.0, -60.0, 120.0, -150.0, 180.0, 179.0, -179.0, 90.0])
def test_constructed_dihedrals_with_sign(phi):
    got = dihedral_angles(four_points(phi), [[0, 1, 2, 3]])[0]
    expected = 180.0 if phi == 180.0 else phi
    assert got == pytest.approx(expected, abs=1e-9)


def test_matches_ase_and_is_invariant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)) * 2
    quads = rng.permutation(40)[:36].reshape(9, 4)
    atoms = ase.Atoms("H40", positions=x)
    ours = dihedral_angles(x, quads)
    theirs = np.array([atoms.get_dihedral(*q) for q in quads])  # ASE: [0, 360)
    np.testing.assert_allclose(np.mod(ours, 360.0), theirs, atol=1e-8)
    # mirror image flips the sign; a rotation changes nothing
    np.testing.assert_allclose(dihedral_angles(x * [1, 1, -1], quads), -ours, atol=1e-8)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    np.testing.assert_allclose(dihedral_angles(x @ q.T + 3.0, quads), ours, atol=1e-8)


def test_minimum_image_across_the_box():
    p = four_points(-75.0) + [4.2, 4.2, 4.2]
    cell = np.diag([5.0, 5.0, 5.0])
    wrapped = ase.Atoms("C4", positions=p, cell=cell, pbc=True)
    wrapped.wrap()
    assert np.ptp(wrapped.positions[:, 2]) > 2.5  # the molecule is split by the boundary
    got = dihedral_angles(wrapped.positions, [[0, 1, 2, 3]], cell)
    assert got[0] == pytest.approx(-75.0, abs=1e-9)
    frames = np.stack([wrapped.positions] * 3)
    assert dihedral_angles(frames, [[0, 1, 2, 3]], np.stack([cell] * 3)).shape == (3, 1)


@pytest.fixture(scope="module")
def bmim():
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCCCN1C=C[N+](=C1)C"))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    AllChem.MMFFOptimizeMolecule(mol)
    pos = mol.GetConformer().GetPositions()
    return ase.Atoms([a.GetSymbol() for a in mol.GetAtoms()], positions=pos), mol


def test_butyl_chain_of_bmim(bmim):
    atoms, mol = bmim
    chains = butyl_chains(atoms)
    assert len(chains) == 1
    ring_c, n, c1, c2, c3, c4 = chains[0]
    sym = atoms.get_chemical_symbols()
    assert [sym[i] for i in chains[0]] == ["C", "N", "C", "C", "C", "C"]
    # RDKit numbering follows the SMILES: C0 C1 C2 C3 N4 ...; the chain is N4-C3-C2-C1-C0
    assert (n, c1, c2, c3, c4) == (4, 3, 2, 1, 0)
    ring = mol.GetAtomWithIdx(int(ring_c))
    assert ring.IsInRing()
    assert sum(nb.GetSymbol() == "N" for nb in ring.GetNeighbors()) == 2
    quads = butyl_dihedral_quads(atoms)
    assert list(quads) == ["C2-N1-C1-C2'", "N1-C1-C2-C3", "C1-C2-C3-C4"]
    ang = dihedral_angles(atoms.positions, quads["C1-C2-C3-C4"])[0]
    assert ang == pytest.approx(np.degrees(_rdkit_dihedral(mol, 3, 2, 1, 0)), abs=1e-6)


def _rdkit_dihedral(mol, a, b, c, d):
    from rdkit.Chem import rdMolTransforms

    return np.radians(rdMolTransforms.GetDihedralDeg(mol.GetConformer(), a, b, c, d))


def test_no_butyl_chain_is_an_error():
    with pytest.raises(ValueError, match="butyl"):
        butyl_dihedral_quads(ase.Atoms("BF4", positions=np.eye(5, 3) * 1.4))


def test_distributions_over_time_windows():
    # 65 deg for the first 100 frames, -125 deg afterwards
    frames = [
        ase.Atoms(
            "C4", positions=four_points(65.0 if k < 100 else -125.0), cell=[20.0] * 3, pbc=True
        )
        for k in range(300)
    ]
    res = dihedral_distributions(
        frames,
        {"phi": np.array([[0, 1, 2, 3]])},
        windows_fs=[(0, 50), (0, 300), (100, 300)],
        n_bins=36,
        timestep_fs=0.5,
    )
    h = res.histograms["phi"]
    width = 10.0
    np.testing.assert_allclose(h.sum(axis=1) * width, 1.0)
    k60 = np.searchsorted(res.edges, 65.0, side="right") - 1
    k120 = np.searchsorted(res.edges, -125.0, side="right") - 1
    assert h[0, k60] * width == pytest.approx(1.0)  # 0-50 fs: frames 0-99 -> all at 65
    assert h[1, k60] * width == pytest.approx(100 / 300)
    assert h[1, k120] * width == pytest.approx(200 / 300)
    assert h[2, k120] * width == pytest.approx(1.0)  # 100-300 fs = frames 200-599 -> 200-299
    np.testing.assert_array_equal(res.n_samples["phi"], [100, 300, 100])
    df = res.to_dataframe()
    assert set(df["window"]) == {"0-0.05 ps", "0-0.3 ps", "0.1-0.3 ps"}


def test_ramachandran_coverage():
    # one point in each of 3 distinct 15-deg cells, one repeated, one wrapped (+190 = -170)
    phi = np.array([-179.0, -179.5, 0.1, 100.0, 190.0])
    psi = np.array([-179.0, -170.0, 0.1, -40.0, 10.0])
    h = ramachandran_histogram(phi, psi)
    assert h.shape == (24, 24) and h.sum() == 5
    assert ramachandran_coverage(phi, psi) == pytest.approx(4 / 576)
    grid = np.linspace(-180, 180, 24, endpoint=False) + 7.5
    P, S = np.meshgrid(grid, grid)
    assert ramachandran_coverage(P, S) == 1.0
    assert ramachandran_coverage(P[:12], S[:12]) == 0.5
    with pytest.raises(ValueError, match="divide 360"):
        ramachandran_coverage(phi, psi, 7.0)
