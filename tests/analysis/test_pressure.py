"""Atomic and molecular pressure: intramolecular forces drop out of the molecular virial,
monatomic molecules make both equal, and with forces between molecules the molecular virial is
sum_m R_m . F_m computed by hand; close contacts exclude pairs within a molecule."""

import ase
import numpy as np
import pytest
from ase.calculators.lj import LennardJones
from ase.units import GPa, kB

from lotf.analysis.pressure import intermolecular_contacts, pressures

LJ = dict(sigma=1.2, epsilon=0.1, rc=2.5, smooth=True)


def _dimers(centres, bond, box, direction=(1.0, 0.0, 0.0)):
    u = np.asarray(direction) / np.linalg.norm(direction)
    positions = [c + s * 0.5 * bond * u for c in np.asarray(centres, float) for s in (-1, 1)]
    atoms = ase.Atoms("N" * len(positions), positions=positions, cell=[box] * 3, pbc=True)
    atoms.calc = LennardJones(**LJ)
    return atoms


def test_intramolecular_forces_leave_the_molecular_pressure_kinetic():
    # compressed N2-like dimers (1.0 A against sigma 1.2 A), 5 A apart: only bond forces act
    centres = [[2.5 + 5 * i, 2.5 + 5 * j, 2.5] for i in range(2) for j in range(2)]
    atoms = _dimers(centres, 1.0, 10.0, direction=(1.0, 0.3, -0.2))
    atoms.positions[0] -= [2.6, 0.0, 0.0]  # a molecule cut by the box edge is made whole
    atoms.wrap()
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 1.0
    atomic, molecular = pressures(atoms, forces, stress, temperature=300.0)
    volume = atoms.get_volume()
    assert molecular == pytest.approx(4 * kB * 300.0 / volume / GPa, rel=1e-10)
    assert atomic - 8 * kB * 300.0 / volume / GPa > 0.1  # a compressed bond pushes out the box


def test_monatomic_molecules_give_equal_pressures():
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3), -1).reshape(-1, 3) * 3.7
    atoms = ase.Atoms("Ar" * 27, positions=grid + rng.normal(scale=0.2, size=grid.shape), cell=[11.1] * 3, pbc=True)
    atoms.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=6.0, smooth=True)
    atoms.set_momenta(rng.normal(scale=2.0, size=(27, 3)))
    atomic, molecular = pressures(atoms, atoms.get_forces(), atoms.get_stress(voigt=False))
    assert abs(atomic) > 1e-3
    assert molecular == pytest.approx(atomic, rel=1e-12)


def test_molecular_virial_equals_the_centre_of_mass_sum():
    # two dimers 2.6 A apart in a big box: forces within and between them, none through images
    atoms = _dimers([[9.0, 10.0, 10.0], [11.0, 11.6, 10.3]], 1.1, 20.0, direction=(0.2, 1.0, 0.4))
    forces, stress = atoms.get_forces(), atoms.get_stress()
    masses = atoms.get_masses()
    virial = 0.0
    for m in (slice(0, 2), slice(2, 4)):
        centre = np.average(atoms.positions[m], axis=0, weights=masses[m])
        total = forces[m].sum(axis=0)
        assert np.linalg.norm(total) > 0.01  # the molecules do push each other
        virial += centre @ total
    volume = atoms.get_volume()
    expected = (2 * kB * 250.0 + virial / 3.0) / volume / GPa
    assert pressures(atoms, forces, stress, temperature=250.0)[1] == pytest.approx(expected, rel=1e-9)
    # and the atomic virial from the stress is sum_i r_i . F_i here
    atomic = (4 * kB * 250.0 + np.sum(atoms.positions * forces) / 3.0) / volume / GPa
    assert pressures(atoms, forces, stress, temperature=250.0)[0] == pytest.approx(atomic, rel=1e-9)


def test_contacts_are_intermolecular_and_keyed_by_elements():
    atoms = ase.Atoms("NNO", positions=[[5.0, 5.0, 5.0], [6.1, 5.0, 5.0], [6.1, 8.0, 5.0]], cell=[12.0] * 3, pbc=True)
    contacts = intermolecular_contacts(atoms, cutoff=3.5)
    assert sorted(contacts) == ["N-O"]  # the N-N bond is one molecule
    assert contacts["N-O"] == pytest.approx([3.0, np.hypot(3.0, 1.1)])


def test_bad_frames_are_refused():
    atoms = ase.Atoms("N2", positions=[[0, 0, 0], [1.1, 0, 0]])
    with pytest.raises(ValueError, match="periodic"):
        pressures(atoms, np.zeros((2, 3)), np.zeros(6), temperature=300.0)
    atoms.pbc, atoms.cell = True, [8.0] * 3
    with pytest.raises(ValueError, match=r"forces of shape \(3, 3\) for 2 atoms"):
        pressures(atoms, np.zeros((3, 3)), np.zeros(6), temperature=300.0)
