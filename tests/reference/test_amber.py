"""Amber99SB alanine dipeptide: structure, JAX port against OpenMM, the calculator path, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotf.reference import amber


@pytest.fixture(scope="module")
def system():
    return amber.AmberSystem()


@pytest.fixture(scope="module")
def atoms():
    return amber.load_structure()


def test_shipped_structure_is_l_alanine_dipeptide_in_the_c7eq_basin(atoms):
    assert len(atoms) == 22
    assert atoms.get_chemical_formula() == "C6H12N2O2"
    phi, psi = amber.dihedral(atoms.positions, amber.PHI), amber.dihedral(atoms.positions, amber.PSI)
    assert -110 < phi < -50 and 30 < psi < 110  # C7eq, the free-energy minimum seed 2 starts from
    d = atoms.get_all_distances()
    for i, j in amber.BONDS:
        assert 0.9 < d[i, j] < 1.6
    Chem = pytest.importorskip("rdkit.Chem")
    mol = Chem.MolFromPDBFile(str(amber.STRUCTURE), removeHs=False)
    Chem.AssignStereochemistryFrom3D(mol)
    assert mol.GetAtomWithIdx(8).GetProp("_CIPCode") == "S"  # L-alanine's CA


def test_regenerated_structure_matches_the_shipped_one(atoms):
    fresh = amber.build_alanine_dipeptide()
    a, b = fresh.positions - fresh.positions.mean(0), atoms.positions - atoms.positions.mean(0)
    assert np.abs(a - b).max() < 2e-3  # the PDB stores 3 decimals


def test_system_is_vacuum_amber99sb_without_constraints(system):
    import openmm

    assert system.system.getNumConstraints() == 0
    names = sorted(type(f).__name__ for f in system.system.getForces())
    assert names == ["HarmonicAngleForce", "HarmonicBondForce", "NonbondedForce", "PeriodicTorsionForce"]
    nb = [f for f in system.system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    p = system.parameters()
    assert len(p.bonds) == 21 and len(p.pairs) > 150
    assert abs(sum(nb.getParticleParameters(i)[0]._value for i in range(22))) < 1e-6  # neutral


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jax_forces_match_openmm_to_1e6_relative(system, atoms, seed):
    a = atoms.copy()
    a.rattle(0.05, seed=seed)
    e_ref, f_ref = system.openmm_energy_forces(a)
    energy = jax.jit(system.energy_fn())
    x = jnp.asarray(a.positions)
    e = float(energy(x))
    f = -np.asarray(jax.grad(energy)(x))
    assert np.abs(f_ref).max() > 0.5  # a meaningful force scale, not a minimum
    assert np.abs(f - f_ref).max() / np.abs(f_ref).max() < 1e-6
    assert abs(e - e_ref) < 1e-6 * max(1.0, abs(e_ref))


def test_jax_forces_match_finite_differences(system, atoms):
    a = atoms.copy()
    a.rattle(0.03, seed=5)
    energy = jax.jit(system.energy_fn())
    x = np.asarray(a.positions)
    f = -np.asarray(jax.grad(energy)(jnp.asarray(x)))
    h = 1e-5
    rng = np.random.default_rng(0)
    for _ in range(8):
        i, k = rng.integers(22), rng.integers(3)
        xp, xm = x.copy(), x.copy()
        xp[i, k] += h
        xm[i, k] -= h
        fd = -(float(energy(jnp.asarray(xp))) - float(energy(jnp.asarray(xm)))) / (2 * h)
        assert abs(fd - f[i, k]) < 1e-6 * max(1.0, abs(f[i, k]))


def test_calculator_matches_jax_and_finite_differences(system, atoms):
    a = atoms.copy()
    a.rattle(0.05, seed=3)
    a.calc = system.calculator()
    f = a.get_forces()
    energy = system.energy_fn()
    assert np.abs(f + np.asarray(jax.grad(energy)(jnp.asarray(a.positions)))).max() < 1e-6 * np.abs(f).max()
    h = 1e-5
    for i, k in ((8, 0), (14, 2), (0, 1)):
        b = a.copy()
        b.calc = system.calculator()
        b.positions[i, k] += h
        ep = b.get_potential_energy()
        b.positions[i, k] -= 2 * h
        em = b.get_potential_energy()
        assert abs(-(ep - em) / (2 * h) - f[i, k]) < 1e-5 * max(1.0, abs(f[i, k]))


def test_energy_term_evaluates_through_the_md_force_field(system, atoms):
    from lotf.dynamics.potential import ForceField, JaxBase
    from lotf.potential import neighbors

    ff = ForceField(JaxBase([system.energy_term(6.0)], (1, 6, 7, 8)))
    ff.setup(atoms, need_stress=False)
    _, nb = neighbors.allocate(atoms.positions, np.zeros((3, 3)), (False,) * 3, 6.0, 0.5)
    nb = jax.tree_util.tree_map(jnp.asarray, nb)
    pred = ff(jnp.asarray(atoms.positions), jnp.zeros((3, 3)), (nb,), (), True, need_virial=False)
    e_ref, f_ref = system.openmm_energy_forces(atoms)
    assert abs(float(pred.energy) - e_ref) < 1e-8
    assert np.abs(np.asarray(pred.forces) - f_ref).max() < 1e-8


def test_wrong_atoms_fail_before_compute_naming_the_first_mismatch(atoms, system):
    swapped = atoms.copy()
    swapped.symbols[5] = "N"
    with pytest.raises(ValueError, match=r"atom 5 is N, the topology expects O \(ACE O\)"):
        amber.check_atoms(swapped)
    with pytest.raises(ValueError, match="atom 5 is N"):
        system.openmm_energy_forces(swapped)
    with pytest.raises(ValueError, match="21 atoms, the ACE-ALA-NME topology has 22"):
        amber.check_atoms(atoms[:-1])
    bad = atoms.copy()
    bad.calc = system.calculator()
    bad.symbols[0] = "C"
    with pytest.raises(ValueError, match="atom 0 is C"):
        bad.get_potential_energy()


def test_missing_structure_file_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="alanine dipeptide structure not found"):
        amber.load_structure(tmp_path / "nope.pdb")


@pytest.mark.slow
def test_calculator_path_and_jax_path_give_the_same_erbs_trajectory(system, atoms):
    """Our MD driven by OpenMM through the ASE callback and by the JAX port: same trajectory."""
    from lotf.dynamics.integrators import Langevin
    from lotf.dynamics.md import MDRun
    from lotf.dynamics.potential import AseBase, ForceField, JaxBase
    from lotf.nodes.alanine import erbs_bias

    out = []
    for base in (JaxBase([system.energy_term(6.0)], (1, 6, 7, 8)), AseBase(system.calculator())):
        bias = erbs_bias(20.0, 0.05, 4, interval=10)
        run = MDRun(atoms, ForceField(base, bias), Langevin(0.5, 0.01), 40, 300.0, sampling_rate=10, seed=3,
                    progress=False, keep_frames=True)
        run.run()
        out.append(np.stack([f.positions for f in run.frames]))
    assert np.abs(out[0] - out[1]).max() < 1e-8
