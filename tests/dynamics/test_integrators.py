"""Integrator statistics on Lennard-Jones argon (108 atoms): NVE drift, NVT temperature and
kinetic-energy distribution, NPT pressure; plus a float64 GMNN NVE run.

Statistical errors are block-averaging standard errors (10 blocks after 20 % equilibration);
every bound is stated as a multiple of them.
"""

import numpy as np
import pytest
from ase import units

from lotf.dynamics.integrators import (
    Berendsen,
    Bussi,
    Langevin,
    NoseHooverChain,
    StochasticCellRescaling,
    VelocityVerlet,
    make_integrator,
)
from lotf.dynamics.md import MDRun
from lotf.dynamics.state import EV_PER_A3_TO_BAR
from tests.dynamics.helpers import argon_fcc, argon_liquid, lj_forcefield


def block_se(x, n_blocks=10):
    means = [b.mean() for b in np.array_split(np.asarray(x), n_blocks)]
    return np.std(means, ddof=1) / np.sqrt(n_blocks)


def production(frames, skip=0.2):
    return frames[int(len(frames) * skip):]


def run(atoms, integrator, steps, temperature, sampling_rate=5, seed=1, **kw):
    md = MDRun(atoms, lj_forcefield(), integrator, steps=steps, temperature=temperature, sampling_rate=sampling_rate,
               seed=seed, progress=False, keep_frames=True, block_steps=2000, **kw)
    summary = md.run()
    assert summary.steps_done == steps and summary.n_resets == 0
    return md


def test_nve_energy_drift_float64():
    """Liquid argon, 2 fs, 5 ps: drift of the total energy below 1e-7 eV/atom/ps (measured ~1e-9)."""
    md = run(argon_liquid(3, density=1.3), VelocityVerlet(timestep=2.0), 2500, 100.0, seed=2)
    n = len(md.atoms)
    e = np.array([a.get_potential_energy() + a.get_kinetic_energy() for a in md.frames]) / n
    t_ps = np.array([a.info["time"] for a in md.frames]) / 1000.0
    drift = np.polyfit(t_ps, e, 1)[0]
    assert abs(drift) < 1e-7, drift
    assert np.abs(e - e[0]).max() < 1e-5
    # kinetic energy really is exchanged with the potential (not a frozen system)
    assert np.std([a.get_kinetic_energy() for a in md.frames]) / n > 1e-4


def test_nve_gmnn_float64_drift():
    """A small float64 GMNN (random weights) through the same loop conserves energy.

    Random weights put the lattice far from a minimum (it heats to ~950 K), so the bound is looser
    than for LJ: measured drift 1e-5 eV/atom/ps at 0.5 fs (2e-4 at 1 fs, 2e-6 at 0.25 fs: the
    integrator's dt-scaling, so the forces are conservative)."""
    import jax
    import jax.numpy as jnp
    from ase.build import bulk

    from lotf.dynamics.potential import ForceField, JaxBase
    from lotf.potential.calculator import gmnn_term
    from lotf.potential.graph import collate, structure_arrays
    from lotf.potential.model import Model, ModelConfig

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.02, seed=0)
    config = ModelConfig(species=(29,), hidden=(16,), n_radial=2, n_basis=3, r_max=4.0, dtype="float64", n_members=2)
    model = Model(config)
    graph = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(atoms, config.species, config.r_max)]))
    params = model.init(jax.random.PRNGKey(0), graph)
    ff = ForceField(JaxBase([gmnn_term(model, params)], config.species))
    md = MDRun(atoms, ff, VelocityVerlet(timestep=0.5), steps=1000, temperature=100.0, sampling_rate=5, seed=0,
               progress=False, keep_frames=True)
    md.run()
    e = np.array([a.get_potential_energy() + a.get_kinetic_energy() for a in md.frames]) / len(atoms)
    t_ps = np.array([a.info["time"] for a in md.frames]) / 1000.0
    assert np.std([a.get_kinetic_energy() for a in md.frames]) / len(atoms) > 1e-5
    assert abs(np.polyfit(t_ps, e, 1)[0]) < 5e-5
    assert np.abs(e - e[0]).max() < 5e-4


@pytest.fixture(scope="module", params=["langevin", "nose_hoover", "bussi"])
def nvt_run(request):
    integrators = {"langevin": Langevin(timestep=5.0, friction=0.05),
                   "nose_hoover": NoseHooverChain(timestep=5.0, tau=50.0),
                   "bussi": Bussi(timestep=5.0, tau=50.0)}
    return request.param, run(argon_fcc(3), integrators[request.param], 8000, 60.0)


def test_nvt_mean_temperature(nvt_run):
    name, md = nvt_run
    t = np.array([a.info["temperature"] for a in production(md.frames)])
    assert abs(t.mean() - 60.0) < 4 * block_se(t) + 0.05, (name, t.mean(), block_se(t))


def test_nvt_kinetic_energy_distribution(nvt_run):
    """Canonical K has mean N_f kT/2 and variance N_f (kT)²/2 (Gamma distribution)."""
    name, md = nvt_run
    kT = units.kB * 60.0
    ke = np.array([a.info["temperature"] for a in production(md.frames)]) * md.dof * units.kB / 2
    expected_var = md.dof * kT**2 / 2
    ratio = ke.var() / expected_var
    blocks = np.array_split(ke, 10)  # jackknife over blocks for the error of the variance
    loo = np.array([np.concatenate(blocks[:i] + blocks[i + 1:]).var() / expected_var for i in range(10)])
    se = np.sqrt(9 / 10 * np.sum((loo - loo.mean()) ** 2))
    assert abs(ratio - 1.0) < 4 * se, (name, ratio, se)
    assert abs(ke.mean() / (md.dof * kT / 2) - 1.0) < 0.02
    # third central moment of a Gamma: 2 (kT)^3 N_f/2 -> skewness 2/sqrt(N_f/2) > 0
    skew = ((ke - ke.mean()) ** 3).mean() / ke.std() ** 3
    assert skew > -0.1


def test_berendsen_mean_temperature_and_suppressed_fluctuations():
    md = run(argon_fcc(3), Berendsen(timestep=5.0, tau=500.0), 4000, 60.0)
    t = np.array([a.info["temperature"] for a in production(md.frames, 0.5)])
    assert abs(t.mean() - 60.0) < 1.0
    assert t.std() < 0.8 * 60.0 * np.sqrt(2.0 / md.dof)  # not canonical: weak coupling damps fluctuations


def test_nose_hoover_chain_conserved_quantity():
    integ = NoseHooverChain(timestep=2.0, tau=50.0, chain_length=4)
    md = MDRun(argon_fcc(3), lj_forcefield(), integ, steps=1500, temperature=60.0, sampling_rate=500, progress=False)
    md._setup()
    kT = units.kB * 60.0
    h0 = float(integ.conserved_energy(md.carry.state, kT))
    carry, _ = md._block_fn(md.specs)(md.carry, np.full(3, 500, np.int32))
    h1 = float(integ.conserved_energy(carry.state, kT))
    ke_change = abs(float(carry.state.pred.energy) - float(md.carry.state.pred.energy))
    assert ke_change > 1e-3  # the system moved
    assert abs(h1 - h0) / len(md.atoms) < 2e-6, (h0, h1)


def _pressures(frames):
    out = []
    for a in frames:
        kinetic = (a.get_momenta() ** 2 / a.get_masses()[:, None]).sum() / (3 * a.get_volume())
        out.append((kinetic - np.trace(a.get_stress(voigt=False)) / 3) * EV_PER_A3_TO_BAR)
    return np.array(out)


@pytest.mark.parametrize("anisotropic", [False, True])
def test_npt_mean_pressure_near_target(anisotropic):
    """Solid argon at 40 K and 1 atm, started 2.5 % compressed (P of several kbar)."""
    integ = StochasticCellRescaling(Langevin(timestep=5.0, friction=0.02), pressure=1.01325, tau_p=500.0,
                                    compressibility=3e-5, anisotropic=anisotropic)
    atoms = argon_fcc(3, a=5.22)
    md = run(atoms, integ, 10000, 40.0)
    frames = production(md.frames, 0.3)
    p = _pressures(frames)
    p0 = _pressures(md.frames[:1])[0]
    assert p0 > 1000  # the start was far from the target
    assert abs(p.mean() - 1.01325) < 4 * block_se(p) + 10.0, (p.mean(), block_se(p))
    assert all(a.info["target_pressure"] == pytest.approx(1.01325) for a in frames)
    angles = np.array([a.cell.cellpar()[3:] for a in frames])
    if anisotropic:
        assert np.abs(angles - 90).max() < 5 and np.abs(angles - 90).max() > 1e-3  # shape fluctuates
    else:
        np.testing.assert_allclose(angles, 90.0, atol=1e-8)
        lengths = np.array([a.cell.cellpar()[:3] for a in frames])
        np.testing.assert_allclose(lengths[:, 0], lengths[:, 2], rtol=1e-12)


def test_make_integrator_names_and_errors():
    assert isinstance(make_integrator("nose_hoover", 0.5, "nvt"), NoseHooverChain)
    npt = make_integrator("langevin", 1.0, "npt", {"friction": 0.02}, {"anisotropic": True})
    assert isinstance(npt, StochasticCellRescaling) and npt.anisotropic and npt.timestep == 1.0
    with pytest.raises(ValueError, match="unknown thermostat"):
        make_integrator("andersen")
    with pytest.raises(ValueError, match="thermostat 'langevin'"):
        make_integrator("langevin", thermostat_params={"tau": 3})
    with pytest.raises(ValueError, match="not 'npt'"):
        make_integrator("langevin", barostat_params={"pressure": 1.0})
    with pytest.raises(ValueError, match="needs a thermostat"):
        StochasticCellRescaling(VelocityVerlet())
