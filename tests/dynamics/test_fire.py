"""FIRE: convergence, the step cap, the maximum step, and the variable cell."""

import numpy as np
import pytest
from ase import units

from lotf.dynamics.fire import optimise
from tests.dynamics.helpers import argon_fcc, lj_forcefield


@pytest.fixture(scope="module")
def relaxed():
    atoms = argon_fcc(2, a=5.3, rattle=0.25, seed=1)
    return atoms, optimise(atoms, lj_forcefield(), fmax=1e-3, max_step=0.1, max_steps=2000)


def test_fire_converges_below_fmax(relaxed):
    atoms, result = relaxed
    assert result.converged
    assert np.linalg.norm(result.atoms.get_forces(), axis=1).max() < 1e-3
    assert result.energies[-1] < result.energies[0] - 0.05
    assert result.atoms.get_potential_energy() == pytest.approx(result.energies[-1])
    # the input is untouched
    assert np.abs(atoms.positions - argon_fcc(2, a=5.3, rattle=0.25, seed=1).positions).max() == 0


def test_fire_respects_the_maximum_step(relaxed):
    _, result = relaxed
    for a, b in zip(result.frames[:-1], result.frames[1:]):
        assert np.linalg.norm(b.positions - a.positions) <= 0.1 + 1e-9


def test_fire_step_cap():
    result = optimise(argon_fcc(2, rattle=0.25, seed=1), lj_forcefield(), fmax=1e-6, max_steps=7)
    assert not result.converged and result.steps == 7 and len(result.frames) == 8


@pytest.mark.parametrize("pressure_bar", [0.0, 2000.0])
def test_fire_with_cell_reaches_the_target_pressure(pressure_bar, tmp_path):
    atoms = argon_fcc(2, a=5.1, rattle=0.05, seed=2)
    path = tmp_path / "opt.h5"
    result = optimise(atoms, lj_forcefield(), fmax=1e-4, max_steps=3000, relax_cell=True, pressure=pressure_bar,
                      trajectory=path)
    assert result.converged
    stress = result.atoms.get_stress(voigt=False)
    target = -pressure_bar * units.bar  # ASE sign: compressive stress is negative
    np.testing.assert_allclose(stress, target * np.eye(3), atol=1e-4 * len(atoms) / result.atoms.get_volume() * 1.01)
    assert result.atoms.get_volume() > atoms.get_volume()  # started compressed
    import znh5md

    assert len(znh5md.IO(path)[:]) == len(result.frames)
