"""The sampling loop: overflow re-runs, stop/reset semantics, modifiers in the loop, H5MD output,
the ASE-calculator path, biases inside MD, reproducibility and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from lotf.dynamics import checks
from lotf.dynamics.biases import ERBS, UDD
from lotf.dynamics.integrators import Langevin, StochasticCellRescaling, VelocityVerlet
from lotf.dynamics.md import MDRun
from lotf.dynamics.modifiers import DensityRamp, PressureRamp, TemperatureRamp, eq9
from lotf.dynamics.potential import AseBase, ForceField
from lotf.dynamics.state import AMU_PER_A3_TO_G_PER_CM3, MDState, ThermostatState
from lotf.potential import neighbors
from lotf.potential.calculator import EnergyTerm, LotfCalculator
from tests.dynamics.helpers import EPS, RC, SIGMA, argon_fcc, argon_liquid, lj_energy_fn, lj_forcefield, neighbor_lists


def md(atoms, ff=None, integrator=None, steps=200, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("keep_frames", True)
    return MDRun(atoms, ff or lj_forcefield(), integrator or VelocityVerlet(timestep=2.0), steps=steps, **kw)


def test_overflow_mid_run_loses_and_duplicates_no_frames():
    atoms = argon_liquid(3, density=1.3, seed=4)
    i, _, _ = neighbors.find_pairs(atoms.positions, atoms.cell.array, (True,) * 3, RC + 0.5)
    exact = int(np.bincount(i).max())
    squeeze = [DensityRamp(rho_start=1.3, rho_end=1.45)]  # more neighbours per atom as the run goes on
    reference = md(atoms, steps=600, temperature=150.0, sampling_rate=10, block_steps=200, seed=3, modifiers=squeeze)
    ref_summary = reference.run()
    tight = md(atoms, steps=600, temperature=150.0, sampling_rate=10, block_steps=200, seed=3, neighbor_capacity=exact,
               modifiers=squeeze)
    summary = tight.run()
    assert summary.block_reruns >= 1  # an overflow really happened mid-run
    assert ref_summary.block_reruns == 0
    steps = [a.info["step"] for a in tight.frames]
    assert steps == list(range(10, 601, 10))
    assert summary.frames_written == 60
    for a, b in zip(tight.frames, reference.frames):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-9)


def _uncertainty_forcefield():
    """A two-member LJ 'ensemble' (ε and 1.3 ε): the force uncertainty is 0.15 |F| per component."""
    return lj_forcefield(members=(1.0, 1.3))


@pytest.fixture(scope="module")
def trigger_threshold():
    atoms = argon_liquid(3, density=1.3, seed=5)
    run = md(atoms, _uncertainty_forcefield(), Langevin(timestep=5.0, friction=0.02), steps=400, temperature=120.0,
             sampling_rate=10, seed=7)
    run.run()
    values = np.array([a.calc.results["forces_uncertainty"].max() for a in run.frames])
    return atoms, float(np.quantile(values, 0.7))


def test_stop_keeps_frames_up_to_the_last_accepted_one(trigger_threshold):
    atoms, threshold = trigger_threshold
    run = md(atoms, _uncertainty_forcefield(), Langevin(timestep=5.0, friction=0.02), steps=2000, temperature=120.0,
             sampling_rate=10, seed=7, checks=[checks.ForcesUncertaintyCheck(threshold)], on_trigger="stop")
    s = run.run()
    assert s.stopped and s.stop_reason == "forces_uncertainty"
    assert s.steps_done == s.steps_before_stop < 2000
    steps = [a.info["step"] for a in run.frames]
    assert steps == list(range(10, s.steps_before_stop, 10))  # every frame before the trigger, not the trigger
    assert all(a.calc.results["forces_uncertainty"].max() <= threshold for a in run.frames)


def test_keep_trigger_frame_writes_the_uncertain_frame_but_never_a_broken_one(trigger_threshold):
    """keep_trigger_frame (the campaign-era IPSuite ASEMD): the frame that failed the uncertainty
    check is the run's last frame, at the stop step, above the threshold; the same trajectory
    otherwise. A frame that fails a physical check (here the bond graph, with a bond-forming
    form factor) is not written even so."""
    atoms, threshold = trigger_threshold
    common = dict(steps=2000, temperature=120.0, sampling_rate=10, seed=7, on_trigger="stop")
    plain = md(atoms, _uncertainty_forcefield(), Langevin(timestep=5.0, friction=0.02),
               checks=[checks.ForcesUncertaintyCheck(threshold)], **common)
    plain.run()
    keep = md(atoms, _uncertainty_forcefield(), Langevin(timestep=5.0, friction=0.02),
              checks=[checks.ForcesUncertaintyCheck(threshold)], keep_trigger_frame=True, **common)
    s = keep.run()
    assert s.stop_reason == "forces_uncertainty" and s.frames_written == len(plain.frames) + 1
    last = keep.frames[-1]
    assert last.info["step"] == s.steps_before_stop
    assert last.calc.results["forces_uncertainty"].max() > threshold
    for a, b in zip(keep.frames, plain.frames):
        np.testing.assert_array_equal(a.positions, b.positions)
    # argon "bonds" at 1.7 x the covalent radii sum (3.6 Å, the first-neighbour shell), with no
    # hysteresis: the graph changes within a few steps; the changed frame is never kept
    bonds = checks.BondGraphCheck(bond_factor=1.7, break_factor=1.7, form_factor=1.7)
    physical = md(atoms, _uncertainty_forcefield(), Langevin(timestep=5.0, friction=0.02),
                  checks=[checks.ForcesUncertaintyCheck(1e9), bonds],
                  keep_trigger_frame=True, **common)
    s = physical.run()
    assert s.stop_reason == "bond_graph"
    assert [a.info["step"] for a in physical.frames] == list(range(10, s.steps_before_stop, 10))


def test_safe_sampling_resets_and_finishes_the_requested_steps(trigger_threshold):
    atoms, threshold = trigger_threshold
    run = md(atoms, _uncertainty_forcefield(), Langevin(timestep=5.0, friction=0.02), steps=2000, temperature=120.0,
             sampling_rate=10, seed=7, checks=[checks.ForcesUncertaintyCheck(threshold)], on_trigger="reset",
             block_steps=500)
    s = run.run()
    assert not s.stopped
    assert s.steps_done == 2000
    assert s.n_resets >= 2
    assert s.steps_before_stop < 2000
    assert s.frames_written + s.n_resets == 2000 // 10  # each trigger rejects exactly one frame
    steps = [a.info["step"] for a in run.frames]
    assert steps == sorted(set(steps))
    assert all(a.calc.results["forces_uncertainty"].max() <= threshold for a in run.frames)
    # after a rejected frame the trajectory restarts from the start structure
    missing = sorted(set(range(10, 2001, 10)) - set(steps))
    assert len(missing) == s.n_resets
    after = [a for a in run.frames if a.info["step"] - 10 in missing]
    for a in after:
        assert np.abs(a.positions - atoms.positions).max() < 0.5


def test_modifiers_follow_eq9_in_the_loop():
    atoms = argon_liquid(3, density=1.3)
    t_ramp = TemperatureRamp(T_start=80.0, T_end=140.0, T_amp=15.0, t_per=40.0)
    rho_ramp = DensityRamp(rho_start=1.30, rho_end=1.20, rho_amp=0.02, n_oscillations=2)
    run = md(atoms, integrator=Langevin(timestep=2.0, friction=0.02), steps=300, sampling_rate=10,
             modifiers=[t_ramp, rho_ramp])
    run.run()
    t_end = 300 * 2.0
    for a in run.frames:
        t = (a.info["step"] - 1) * 2.0  # targets are set at the start of each step
        expected_t = 80 + t / t_end * 60 + 15 * np.sin(t / 40.0)
        assert a.info["target_temperature"] == pytest.approx(expected_t, rel=1e-12)
        expected_rho = 1.30 + t / t_end * (1.20 - 1.30) + 0.02 * np.sin(t / (t_end / (2 * np.pi * 2)))
        rho = a.get_masses().sum() / a.get_volume() * AMU_PER_A3_TO_G_PER_CM3
        assert rho == pytest.approx(expected_rho, rel=1e-9)


def test_pressure_ramp_sets_the_barostat_target():
    integ = StochasticCellRescaling(Langevin(timestep=5.0), pressure=1.0, compressibility=3e-5)
    ramp = PressureRamp(p_start=1.0, p_end=1000.0)
    run = md(argon_fcc(2), integrator=integ, steps=100, sampling_rate=20, temperature=40.0, modifiers=[ramp])
    run.run()
    got = [a.info["target_pressure"] for a in run.frames]
    assert got == pytest.approx([float(eq9((a.info["step"] - 1) * 5.0, 1.0, 1000.0, 0.0, 1.0, 500.0)) for a in run.frames])
    with pytest.raises(ValueError, match="PressureRamp needs"):
        md(argon_fcc(2), steps=10, modifiers=[ramp]).run()


def test_h5md_trajectory_is_written_per_block(tmp_path):
    import znh5md

    path = tmp_path / "traj.h5"
    run = md(argon_fcc(2), integrator=Langevin(timestep=5.0), steps=120, sampling_rate=10, block_steps=40,
             trajectory=path, keep_frames=False)
    s = run.run()
    frames = znh5md.IO(path)[:]
    assert len(frames) == s.frames_written == 12
    assert [int(a.info["step"]) for a in frames] == list(range(10, 121, 10))
    keys = set(frames[0].calc.results)
    assert {"energy", "forces", "stress", "energy_uncertainty", "forces_uncertainty", "energy_bias",
            "forces_bias"} <= keys
    assert frames[0].get_momenta().any()


def test_ase_calculator_path_matches_the_jax_path():
    atoms = argon_liquid(3, density=1.3, seed=2)
    term = EnergyTerm(lj_energy_fn((1.0, 1.2)), (EPS, SIGMA, RC), RC)
    calc = LotfCalculator([term], species=(18,), members=True, skin=0.5)
    udd = UDD(height=0.5, width=0.02)
    jax_run = md(atoms, lj_forcefield(members=(1.0, 1.2), bias=udd), steps=60, sampling_rate=10, temperature=100.0)
    ase_run = md(atoms, ForceField(AseBase(calc), udd), steps=60, sampling_rate=10, temperature=100.0,
                 checks=[checks.ForcesUncertaintyCheck(10.0)])
    jax_run.run()
    ase_run.run()
    assert len(ase_run.frames) == len(jax_run.frames) == 6
    for a, b in zip(ase_run.frames, jax_run.frames):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-9)
        np.testing.assert_allclose(a.calc.results["forces_bias"], b.calc.results["forces_bias"], atol=1e-10)
        np.testing.assert_allclose(a.calc.results["forces_uncertainty"], b.calc.results["forces_uncertainty"], atol=1e-10)
        assert a.calc.results["energy_bias"] < 0


def test_ase_path_without_uncertainty_refuses_uncertainty_checks():
    from ase.build import bulk
    from ase.calculators.emt import EMT

    cu = bulk("Cu", cubic=True).repeat(2)
    with pytest.raises(ValueError, match="needs ensemble uncertainties"):
        md(cu, ForceField(AseBase(EMT())), steps=10, checks=[checks.ForcesUncertaintyCheck()]).run()
    run = md(cu, ForceField(AseBase(EMT())), steps=20, sampling_rate=10, temperature=300.0,
             integrator=Langevin(timestep=2.0))
    s = run.run()
    assert s.frames_written == 2 and run.frames[-1].calc.results["forces_uncertainty"].max() == 0.0


def test_erbs_in_md_deposits_without_recompiling_and_runs_under_npt():
    atoms = argon_fcc(2, rattle=0.1)
    erbs = ERBS(temperature=60.0, barrier=0.05, per_atom=True, bandwidth=0.05, n_components=2, interval=20,
                n_basis=3, r_max=5.0, contractions=(0, 1, 2))
    integ = StochasticCellRescaling(Langevin(timestep=5.0, friction=0.02), compressibility=3e-5)
    run = md(atoms, lj_forcefield(bias=erbs), integ, steps=200, sampling_rate=10, temperature=60.0, block_steps=50)
    s = run.run()
    assert s.steps_done == 200
    assert len(run._compiled) == 1  # one compiled block for all depositions
    bias = run.carry.state.bias
    assert int(bias.n_refs) == 200 // 20 + 1
    assert 1 <= int(bias.kernels.count) <= 11
    e_bias = np.array([a.calc.results["energy_bias"] for a in run.frames])
    assert np.all(e_bias >= -1e-12) and e_bias.max() > 0
    assert np.abs(run.frames[-1].calc.results["forces_bias"]).max() > 0


def test_same_seed_same_trajectory_and_seed_matters():
    a = md(argon_fcc(2), integrator=Langevin(timestep=5.0), steps=50, sampling_rate=10, seed=11)
    b = md(argon_fcc(2), integrator=Langevin(timestep=5.0), steps=50, sampling_rate=10, seed=11)
    c = md(argon_fcc(2), integrator=Langevin(timestep=5.0), steps=50, sampling_rate=10, seed=12)
    for r in (a, b, c):
        r.run()
    np.testing.assert_array_equal(a.frames[-1].positions, b.frames[-1].positions)
    assert np.abs(a.frames[-1].positions - c.frames[-1].positions).max() > 1e-4


def _fake_state(ff, atoms) -> MDState:
    cell = jnp.asarray(atoms.cell.array)
    n = len(atoms)
    z = jnp.zeros(1)
    return MDState(jnp.asarray(atoms.positions), jnp.zeros((n, 3)), jnp.ones(n), cell, None,
                   neighbor_lists(ff, atoms), (), ThermostatState(z, z), jax.random.PRNGKey(0))


def test_bond_graph_check_detects_broken_and_new_bonds():
    mols = molecule("CH4")
    other = molecule("CH4")
    other.translate([4.0, 0, 0])
    atoms = mols + other
    atoms.cell = [12.0, 12.0, 12.0]
    atoms.pbc = True
    atoms.center()
    ff = lj_forcefield()
    check = checks.BondGraphCheck()
    aux = check.setup(atoms, ff)
    assert float(check.value(_fake_state(ff, atoms), aux, 3)) == 0
    broken = atoms.copy()
    broken.positions[1] += (broken.positions[1] - broken.positions[0]) * 1.0  # C-H doubled
    assert float(check.value(_fake_state(ff, broken), aux, 3)) > 0
    formed = atoms.copy()
    formed.positions[5] = formed.positions[1] + [0.3, 0.6, 0.0]  # C of molecule 2 onto an H of molecule 1
    assert float(check.value(_fake_state(ff, formed), aux, 3)) > 0
    # vibrations within the hysteresis band are not changes
    shaken = atoms.copy()
    shaken.positions[1] += (shaken.positions[1] - shaken.positions[0]) * 0.2
    assert float(check.value(_fake_state(ff, shaken), aux, 3)) == 0


def test_bond_graph_contact_factor_catches_a_non_bonded_contact():
    """With contact_factor, an atom of another molecule inside factor x (vdW sum) counts as a new
    bond although it is beyond the covalent test (the tenth BMIM-BF4 oracle run's H inside BF4-)."""
    atoms = molecule("CH4") + Atoms("Ar", positions=[[4.5, 0.0, 0.0]])
    atoms.cell = [12.0, 12.0, 12.0]
    atoms.pbc = True
    atoms.center()
    ff = lj_forcefield()
    covalent, contact = checks.BondGraphCheck(), checks.BondGraphCheck(contact_factor=0.55)
    aux_covalent, aux_contact = covalent.setup(atoms, ff), contact.setup(atoms, ff)
    assert float(covalent.value(_fake_state(ff, atoms), aux_covalent, 3)) == 0
    assert float(contact.value(_fake_state(ff, atoms), aux_contact, 3)) == 0  # bonds and H-C-H pairs pass
    close = atoms.copy()
    u = close.positions[1] - close.positions[0]
    close.positions[5] = close.positions[1] + 1.6 * u / np.linalg.norm(u)  # H-Ar 1.6 Å: 0.52 x (1.2 + 1.88)
    assert float(covalent.value(_fake_state(ff, close), aux_covalent, 3)) == 0
    assert float(contact.value(_fake_state(ff, close), aux_contact, 3)) > 0
    with pytest.raises(ValueError, match="contact_factor must be in"):
        checks.BondGraphCheck(contact_factor=1.5)


def test_bad_input_fails_with_one_clear_line():
    with pytest.raises(ValueError, match="'steps' must be a positive integer"):
        md(argon_fcc(2), steps=0).run()
    with pytest.raises(ValueError, match="'on_trigger'"):
        md(argon_fcc(2), on_trigger="panic").run()
    gas = Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]])
    with pytest.raises(ValueError, match="NPT needs a periodic structure"):
        md(gas, integrator=StochasticCellRescaling(Langevin())).run()
    with pytest.raises(ValueError, match="unknown element"):
        md(Atoms("Ne", positions=[[0, 0, 0]]), steps=10).run()
    with pytest.raises(ValueError, match="check 'kind'"):
        checks.from_dict({"kind": "vibes"})


def test_frames_store_a_stress_only_where_it_was_computed(tmp_path):
    import znh5md
    from ase.build import bulk
    from ase.calculators.emt import EMT

    cu = bulk("Cu", cubic=True, a=3.5).repeat(2)  # compressed: EMT's stress is far from zero
    cu.rattle(0.02, seed=1)
    nvt = md(cu, ForceField(AseBase(EMT())), Langevin(timestep=2.0), steps=20, sampling_rate=10, temperature=300.0,
             trajectory=tmp_path / "nvt.h5")
    nvt.run()
    assert len(nvt.frames) == 2
    # NVT never asks the calculator for a stress: none may be stored (it used to be exactly zero)
    assert all("stress" not in a.calc.results for a in nvt.frames)
    assert all("stress" not in a.calc.results for a in znh5md.IO(tmp_path / "nvt.h5")[:])

    npt = md(cu, ForceField(AseBase(EMT())), StochasticCellRescaling(Langevin(timestep=2.0), compressibility=1e-4),
             steps=20, sampling_rate=10, temperature=300.0, trajectory=tmp_path / "npt.h5")
    npt.run()
    stored = znh5md.IO(tmp_path / "npt.h5")[:]
    assert len(stored) == len(npt.frames) == 2
    for frame, back in zip(npt.frames, stored):
        ref = frame.copy()
        ref.calc = EMT()
        expected = ref.get_stress()
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(frame.calc.results["stress"], expected, atol=1e-10)
        np.testing.assert_allclose(back.calc.results["stress"], expected, atol=1e-10)

    # a JAX potential computes the stress on every frame, NVT or not: it stays
    atoms = argon_fcc(2, a=5.0, rattle=0.05)  # compressed argon
    run = md(atoms, integrator=Langevin(timestep=2.0), steps=20, sampling_rate=10, temperature=50.0)
    run.run()
    frame = run.frames[-1]
    term = EnergyTerm(lj_energy_fn(), (EPS, SIGMA, RC), RC)
    ref = frame.copy()
    ref.calc = LotfCalculator([term], species=(18,))
    expected = ref.get_stress()
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(frame.calc.results["stress"], expected, atol=1e-9)


@pytest.mark.parametrize("check", [checks.ForcesUncertaintyCheck(0.5), checks.EnergyUncertaintyCheck(0.05)])
def test_uncertainty_checks_need_an_ensemble_for_every_potential_kind(check):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    atoms = argon_fcc(2)
    # JAX potential with one member: σ is 0, the check could never fire
    with pytest.raises(ValueError, match=r"needs ensemble uncertainties, but the JAX potential has 1 member") as err:
        md(atoms, lj_forcefield(members=(1.0,)), steps=10, checks=[check]).run()
    assert "\n" not in str(err.value)
    # a lotf calculator of a one-member model reports a zero uncertainty: no ensemble either
    term = EnergyTerm(lj_energy_fn((1.0,)), (EPS, SIGMA, RC), RC)
    one = LotfCalculator([term], species=(18,), members=True)
    with pytest.raises(ValueError, match="needs ensemble uncertainties, but the ASE calculator LotfCalculator"):
        md(atoms, ForceField(AseBase(one)), steps=10, checks=[check]).run()
    with pytest.raises(ValueError, match="needs ensemble uncertainties, but the ASE calculator EMT"):
        md(bulk("Cu", cubic=True).repeat(2), ForceField(AseBase(EMT())), steps=10, checks=[check]).run()
    # two members: accepted on both paths
    assert md(atoms, lj_forcefield(members=(1.0, 1.1)), steps=10, sampling_rate=10, checks=[check]).run().steps_done == 10
    two = LotfCalculator([EnergyTerm(lj_energy_fn((1.0, 1.1)), (EPS, SIGMA, RC), RC)], species=(18,), members=True)
    assert md(atoms, ForceField(AseBase(two)), steps=10, sampling_rate=10, checks=[check]).run().steps_done == 10


def test_udd_needs_an_ensemble_for_every_potential_kind():
    atoms = argon_fcc(2)
    with pytest.raises(ValueError, match="UDD needs an ensemble .*the JAX potential has 1 member"):
        md(atoms, lj_forcefield(members=(1.0,), bias=UDD()), steps=10).run()
    term = EnergyTerm(lj_energy_fn((1.0,)), (EPS, SIGMA, RC), RC)
    one = LotfCalculator([term], species=(18,), members=False)
    with pytest.raises(ValueError, match="UDD needs an ensemble .*the ASE calculator LotfCalculator"):
        md(atoms, ForceField(AseBase(one), UDD()), steps=10).run()


def test_supplied_momenta_lose_their_centre_of_mass_motion():
    atoms = argon_fcc(2)
    rng = np.random.default_rng(3)
    masses = atoms.get_masses()
    drift = np.array([0.3, -0.2, 0.1])  # Å per ASE time unit, added to every atom
    momenta = rng.normal(scale=0.5, size=(len(atoms), 3)) + masses[:, None] * drift
    atoms.set_momenta(momenta)
    internal = momenta - masses[:, None] * (momenta.sum(0) / masses.sum())

    run = md(atoms, integrator=VelocityVerlet(timestep=2.0), steps=20, sampling_rate=10, use_momenta=True)
    run.run()
    # VelocityVerlet counts 3N - 3 degrees of freedom: the start momenta carry no net momentum ...
    assert np.abs(np.asarray(run.carry.state.momenta).sum(0)).max() < 1e-9
    assert np.abs(run.frames[0].get_momenta().sum(0)).max() < 1e-9
    # ... and only the centre-of-mass part was removed
    start = md(atoms, integrator=VelocityVerlet(timestep=2.0), steps=10, use_momenta=True)
    start._setup()
    np.testing.assert_allclose(np.asarray(start.carry.state.momenta), internal, atol=1e-12)
    # Langevin counts all 3N degrees of freedom and keeps the momenta as given
    kept = md(atoms, integrator=Langevin(timestep=2.0), steps=10, use_momenta=True)
    kept._setup()
    np.testing.assert_allclose(np.asarray(kept.carry.state.momenta), momenta, atol=1e-12)
