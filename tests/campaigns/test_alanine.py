"""The alanine coverage campaign (seed 2 §3.1): scan definition, coverage bookkeeping, a short run."""

import numpy as np
import pytest

from lotf.nodes import alanine as nodes
from stages import alanine


def test_paper_profile_is_the_seed2_grid_with_a_and_b():
    points = alanine.scan_points(alanine.PROFILES["paper"])
    assert len(points) == 5 * 4 * 5 == len(set(points))
    assert {p[0] for p in points} == {5.0, 10.0, 15.0, 20.0, 25.0}
    assert {p[1] for p in points} == {0.05, 0.1, 0.2, 0.5}
    assert {p[2] for p in points} == {2, 4, 6, 8, 10}
    assert alanine.ERBS_A in points and alanine.ERBS_B in points
    p = alanine.PROFILES["paper"]
    assert p["steps"] * 0.5 == 80_000 and p["interval"] == 10_000  # 80 ps at 0.5 fs, a kernel every 10,000 steps


def test_smoke_profile_always_has_a_and_b_and_bad_points_fail_in_one_line():
    assert set(alanine.scan_points(alanine.PROFILES["smoke"])) == {alanine.ERBS_A, alanine.ERBS_B}
    assert alanine.ERBS_B in alanine.scan_points({"points": [(5.0, 0.1, 2)]})
    with pytest.raises(ValueError, match=r"bad scan point .*k=0"):
        alanine.scan_points({"points": [(5.0, 0.1, 0)]})


def test_fig3_profile_is_the_four_seed2_trajectories_and_the_full_cross_validation_sets():
    p = alanine.PROFILES["fig3"]
    assert set(alanine.scan_points(p)) == {alanine.ERBS_A, alanine.ERBS_B}  # with MD 300 K and 1200 K: Fig. 3's four
    assert p["steps"] * 0.5 == 80_000 and p["interval"] == 10_000
    assert (p["crossval"]["n_train"], p["crossval"]["n_val"]) == (1800, 200)


def test_run_names_are_unique_and_stage_safe():
    names = {alanine.run_name(*p) for p in alanine.scan_points(alanine.PROFILES["paper"])}
    assert len(names) == 100 and all("." not in n for n in names)


def test_conventions_convert_seed2_numbers():
    from ase import units

    code = nodes.erbs_bias(20.0, 0.05, 4, 10_000, "code")
    assert code.barrier == pytest.approx(20.0 * units.kB * 300.0)  # ΔE in k_B T
    assert code.bandwidth == pytest.approx(np.sqrt(0.05))  # σ read as the kernel variance
    assert (code.r_min, code.r_max, code.n_basis, code.per_atom) == (1.5, 6.0, 4, False)
    text = nodes.erbs_bias(20.0, 0.05, 4, 10_000, "text")
    assert text.barrier == 20.0 and text.bandwidth == 0.05
    with pytest.raises(ValueError, match="convention must be one of"):
        nodes.erbs_bias(20.0, 0.05, 4, 10_000, "paper")


def test_coverage_curve_counts_15_degree_cells():
    phi = np.array([-179.0, -170.0, 0.0, 10.0, 179.0])
    psi = np.array([-179.0, -170.0, 0.0, 20.0, 179.0])
    t = np.array([500.0, 1000.0, 1500.0, 2000.0, 2500.0])
    curve = nodes.coverage_curve(phi, psi, t)
    # cells: (-180,-180) twice, (0,0), (0,15), (165,165) -> 1, 1, 2, 3, 4 of 576
    assert [c for _, c in curve] == pytest.approx([1 / 576, 3 / 576, 4 / 576])
    assert [tt for tt, _ in curve] == pytest.approx([1.0, 2.0, 2.5])


def test_summary_skips_dissociated_runs():
    runs = [
        {"method": "md", "temperature": 300.0, "coverage": 0.05, "dissociated": False},
        {"method": "md", "temperature": 1200.0, "coverage": 0.3, "dissociated": False},
        {"method": "erbs", "barrier": 10.0, "bandwidth": 0.1, "n_components": 2, "convention": "code",
         "coverage": 0.9, "dissociated": True, "steps_done": 1234},
        {"method": "erbs", "barrier": 20.0, "bandwidth": 0.05, "n_components": 4, "convention": "code",
         "coverage": 0.6, "dissociated": False, "steps_done": 160000},
    ]
    s = nodes.summarise(runs)
    assert s["coverage_erbs_best"] == 0.6 and s["erbs_best_params"]["barrier"] == 20.0
    assert s["n_dissociated"] == 1 and s["dissociated"][0]["steps_done"] == 1234
    assert s["coverage_md"] == {"300": 0.05, "1200": 0.3}


def test_bad_run_settings_fail_in_one_line():
    with pytest.raises(ValueError, match="method must be 'md' or 'erbs'"):
        nodes.run_alanine("metad", steps=10)
    with pytest.raises(ValueError, match="'steps' must be a positive integer"):
        nodes.run_alanine("md", steps=0)
    from ase import Atoms

    with pytest.raises(ValueError, match="start structure: 3 atoms"):
        nodes.run_alanine("md", steps=10, structure=Atoms("H2O", positions=np.zeros((3, 3))))


@pytest.mark.slow
def test_short_runs_md_and_erbs_record_coverage_and_a_forced_dissociation():
    md = nodes.run_alanine("md", 300.0, steps=400, sampling_rate=10, keep_positions=False)
    assert md["frames"] == 40 and not md["dissociated"] and 0 < md["coverage"] < 0.05
    # ERBS in the text convention with a 25 eV barrier and a tiny bandwidth tears the molecule apart
    # within a few hundred steps; the run is recorded as dissociated, not raised
    erbs = nodes.run_alanine("erbs", 300.0, steps=2000, sampling_rate=10, interval=100, barrier=25.0,
                             bandwidth=0.005, n_components=2, convention="text", keep_positions=False)
    assert erbs["dissociated"] and erbs["stop_reason"] == "bond_graph"
    assert erbs["steps_done"] < 2000 and erbs["frames"] <= erbs["steps_done"] // 10 + 1
    assert nodes.summarise([md, erbs])["n_dissociated"] == 1


def test_split_takes_training_from_the_first_80_and_validation_from_the_last_20_percent():
    train, val = nodes.split_indices(1000, 180, 20, seed=1)
    assert len(train) == 180 and len(val) == 20 and len(set(train)) == 180
    assert train.max() < 800 <= val.min() and val.max() < 1000
    short_train, short_val = nodes.split_indices(30, 180, 20)  # a dissociated run: what there is
    assert len(short_train) == 24 and len(short_val) == 6


def test_amber_labels_match_openmm_and_a_perfect_model_has_zero_mae():
    from lotf.reference import amber

    atoms = amber.load_structure()
    frames = []
    for seed in range(3):
        a = atoms.copy()
        a.rattle(0.05, seed=seed)
        frames.append(a)
    labelled = nodes.amber_label(frames)
    system = amber.AmberSystem()
    for a in labelled:
        e, f = system.openmm_energy_forces(a)
        assert abs(a.get_potential_energy() - e) < 1e-8 and np.abs(a.get_forces() - f).max() < 1e-8
    assert nodes.force_mae(system.calculator(), labelled) < 1e-10
    shifted = [a.copy() for a in labelled]
    from ase.calculators.singlepoint import SinglePointCalculator

    for a, b in zip(shifted, labelled):
        a.calc = SinglePointCalculator(a, energy=0.0, forces=b.get_forces() + 0.1)
    assert nodes.force_mae(system.calculator(), shifted) == pytest.approx(0.1)
    bad = atoms.copy()
    bad.symbols[3] = "O"
    with pytest.raises(ValueError, match="frame to label: atom 3 is O"):
        nodes.amber_label([bad])


def test_smoke_profile_builds_the_cross_validation_of_the_four_datasets():
    p = alanine.PROFILES["smoke"]["crossval"]
    assert p["n_train"] < 160 and p["n_val"] <= 40  # fits the smoke trajectories (200 frames)
    assert alanine.PROFILES["paper"]["crossval"]["n_train"] == 1800
    assert alanine.PROFILES["paper"]["crossval"]["n_val"] == 200
    from lotf.training.config import load_preset

    model, train = load_preset(alanine.MODEL)
    assert (model["basis"], model["n_basis"], model["r_max"], model["hidden"]) == ("bessel", 16, 5.0, [64, 64])
    assert train.optimizer == "adamw"


def test_code_kernel_bias_is_zero_when_unexplored_and_higher_by_ln_d_in_visited_regions():
    import jax.numpy as jnp

    d = 4
    lotf_bias = nodes.erbs_bias(20.0, 0.05, d, 10, "code")
    code_bias = nodes.erbs_bias(20.0, 0.05, d, 10, "code_d")
    assert type(code_bias).__name__ == "CodeKernelERBS" and code_bias.barrier == lotf_bias.barrier
    state = lotf_bias.init_state(4)
    g = jnp.linspace(0.0, 1.0, lotf_bias.n_features)
    state = lotf_bias.deposit(state, g)
    state = lotf_bias.deposit(state, g * 1.01)
    far = jnp.full(d, 1e3)
    assert float(code_bias.energy_from_cv(state, far, 22)) == pytest.approx(0.0, abs=1e-9)
    assert float(lotf_bias.energy_from_cv(state, far, 22)) == pytest.approx(0.0, abs=1e-9)
    at = lotf_bias.project(state, g)
    gamma = lotf_bias.barrier / lotf_bias.kT
    pre, eps = (gamma - 1) * lotf_bias.kT, np.exp(-gamma / (gamma - 1))
    ratio = np.exp((float(lotf_bias.energy_from_cv(state, at, 22)) - lotf_bias.barrier) / pre) - eps  # P/Z
    assert ratio > 0.5
    expected = pre * np.log(d * ratio + eps) + lotf_bias.barrier
    assert float(code_bias.energy_from_cv(state, at, 22)) == pytest.approx(expected, rel=1e-9)
    assert expected - float(lotf_bias.energy_from_cv(state, at, 22)) > 0.5 * pre * np.log(d)


def _erbs_code_bias(x, a, barrier, kT, s, thresh=0.4):
    """The erbs code's OPES-explore bias (HEAD 1684443: BiasState.initialize, kernel.compress,
    OPESExploreFactory.energy_fn) transcribed in numpy, for projected references x (N, D)."""
    n, d = x.shape
    h0 = 1.0 / np.sqrt(2.0 * np.pi * a**2) ** d
    height, cov = np.full((n, 1), h0), np.full((n, d), a)
    diff = x[:, None, :] - x[None, :, :]
    zn = np.sum(height * np.exp(-0.5 * np.einsum("ijd,ijd->ij", diff, diff / cov[:, None, :]))) / n
    if n > 2:  # kernel.compress
        gc, covc, hc = [x[0]], [cov[0]], [height[0]]
        for i in range(1, n):
            dist = np.sqrt(np.sum((np.array(gc) - x[i]) ** 2 / np.array(covc), axis=1))
            j = int(np.argmin(dist))
            if dist[j] >= thresh:
                gc.append(x[i]), covc.append(cov[i]), hc.append(height[i])
            else:
                h1, p1, v1 = hc[j], gc[j], covc[j]
                h = h1 + height[i]
                p = (h1 * p1 + height[i] * x[i]) / h
                covc[j] = (h1 * (v1 + p1**2) + height[i] * (cov[i] + x[i] ** 2)) / h - p**2
                gc[j], hc[j] = p, h
        x, cov, height = np.array(gc), np.array(covc), np.array(hc)
    kde = np.sum(height * np.exp(-np.sum((s - x) ** 2, axis=1)[:, None] / (cov * 2.0)))  # kernel.gaussian
    gamma = barrier / kT
    pre = (gamma - 1.0) * kT
    return pre * np.log(kde / zn + np.exp(-barrier / pre)) + barrier


def test_reference_convention_reproduces_the_erbs_code_bias_with_merged_kernels():
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    bias = nodes.erbs_bias(20.0, 0.05, 2, 10, "reference")
    assert type(bias).__name__ == "ReferenceERBS" and bias.few_refs == "random" and bias.radial_basis == "gaussian"
    assert nodes.erbs_bias(20.0, 0.05, 2, 10, "reference_bessel").radial_basis == "bessel"
    rng = np.random.default_rng(3)
    f = bias.n_features
    base, u, w = rng.normal(size=f), rng.normal(size=f), rng.normal(size=f)
    u, w = u / np.linalg.norm(u), w / np.linalg.norm(w)
    # six references, two of them within 0.4 kernel widths of an earlier one (merged, variances grow)
    coeffs = [(0, 0), (1.0, 0.2), (0.02, 0.03), (-0.7, 0.9), (1.05, 0.18), (0.3, -0.8)]
    state = bias.init_state(8)
    for cu, cw in coeffs:
        state = bias.deposit(state, jnp.asarray(base + cu * u + cw * w))
    assert int(state.kernels.count) == 4 and float(jnp.max(state.kernels.heights)) == 2.0
    x = np.asarray((state.refs[:6] - state.mean) @ state.components)
    kT = bias.kT
    for s in (x[0], x[1] + 0.1, x[3] * 0.5, np.array([5.0, -5.0])):
        expected = _erbs_code_bias(x, 0.05, bias.barrier, kT, s)
        assert float(bias.energy_from_cv(state, jnp.asarray(s), 22)) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # lotf's own kernels differ (normalised merged kernels, no D-fold sum, Z over the compressed kernels)
    plain = nodes.erbs_bias(20.0, 0.05, 2, 10, "code")
    assert abs(float(plain.energy_from_cv(state, jnp.asarray(x[1] + 0.1), 22))
               - _erbs_code_bias(x, 0.05, bias.barrier, kT, x[1] + 0.1)) > 1e-3
