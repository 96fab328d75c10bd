"""UDD and ERBS: closed forms and autodiff against finite differences, OPES by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units

from lotf.dynamics.biases import (
    ERBS,
    UDD,
    add_kernel,
    empty_kernels,
    fit_pca,
    log_density,
    log_normalisation,
    opes_bias,
)
from lotf.dynamics.potential import ForceField, JaxBase
from lotf.potential.calculator import EnergyTerm
from tests.dynamics.helpers import (RC, Evaluator, argon_fcc, descriptors_in_both_precisions, lj_forcefield,
                                    nonlinear_ensemble_fn, strained_atoms)

H = 1e-5  # finite-difference step (Å and strain), float64 central differences


def _ensemble_ff(bias=None):
    term = EnergyTerm(nonlinear_ensemble_fn(), (0.0104, 3.4, RC), RC)
    return ForceField(JaxBase([term], species=(18,)), bias)


def _member_energies(atoms):
    ev = Evaluator(_ensemble_ff(), atoms)
    e, _ = ev.ff.base.member_energies(jnp.asarray(atoms.positions), jnp.asarray(atoms.cell.array), [ev.lists(atoms)[0]])
    return np.asarray(e)


def _fd_forces(energy_of, atoms, indices):
    out = []
    for i, a in indices:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, a] += H
        minus.positions[i, a] -= H
        out.append(-(energy_of(plus) - energy_of(minus)) / (2 * H))
    return np.array(out)


def _fd_virial(energy_of, atoms):
    w = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            e = np.zeros((3, 3))
            e[a, b] = e[b, a] = 0.5 if a != b else 1.0
            d = (energy_of(strained_atoms(atoms, H * e)) - energy_of(strained_atoms(atoms, -H * e))) / (2 * H)
            w[a, b] = w[b, a] = d if a == b else d  # symmetric strain: dE/dε_ab = dE/dε_ba
    return w


@pytest.fixture(scope="module")
def system():
    atoms = argon_fcc(2, rattle=0.25, seed=3)
    e = _member_energies(atoms)
    var = np.var(e)  # ddof 0
    width = math.sqrt(var / (3 * len(atoms)))  # σ²/(M N B²) = 1: the steep part of the bias
    return atoms, width


@pytest.mark.parametrize("ddof", [0, 1])
def test_udd_energy_matches_eq11(system, ddof):
    atoms, width = system
    udd = UDD(height=0.7, width=width, ddof=ddof)
    e = _member_energies(atoms)
    var = np.sum((e - e.mean()) ** 2) / (len(e) - ddof)
    expected = 0.7 * (math.exp(-var / (3 * len(atoms) * width**2)) - 1.0)
    pred = Evaluator(_ensemble_ff(udd), atoms)(atoms)
    assert float(pred.energy_bias) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("full", [True, False])
def test_udd_forces_closed_form_against_finite_differences(system, full):
    atoms, width = system
    udd = UDD(height=0.7, width=width)
    ev = Evaluator(_ensemble_ff(udd), atoms)
    pred = ev(atoms, full=full)
    base = Evaluator(_ensemble_ff(), atoms)(atoms)
    idx = [(0, 0), (3, 1), (7, 2), (12, 0), (30, 1)]
    fd_bias = _fd_forces(lambda a: float(ev(a).energy_bias), atoms, idx)
    got_total = np.array([pred.forces[i, a] for i, a in idx])
    got_base = np.array([base.forces[i, a] for i, a in idx])
    assert np.abs(fd_bias).max() > 1e-3  # the bias force is not negligible
    np.testing.assert_allclose(got_total - got_base, fd_bias, rtol=1e-6, atol=1e-9)
    if full:
        np.testing.assert_allclose([pred.forces_bias[i, a] for i, a in idx], fd_bias, rtol=1e-6, atol=1e-9)


def test_udd_closed_form_with_bessel_correction_matches_the_notes(system):
    """F_UDD = −(2A/(M N B² (M−1))) exp(−σ²/(M N B²)) Σ_m (E_m − Ē) F_m for the M−1 variance."""
    atoms, width = system
    a_height, m, n = 0.7, 3, len(atoms)
    ev = Evaluator(_ensemble_ff(), atoms)
    ff, nbrs = ev.ff, ev.lists(atoms)
    cell = jnp.asarray(atoms.cell.array)

    def members(r):
        return ff.base.member_energies(r, cell, [nbrs[0]])[0]

    r0 = jnp.asarray(atoms.positions)
    e = np.asarray(members(r0))
    f_m = -np.asarray(jax.jit(jax.jacrev(members))(r0))  # (M, N, 3), independent of the force field's VJP path
    var = np.sum((e - e.mean()) ** 2) / (m - 1)
    expected = (-(2 * a_height / (m * n * width**2 * (m - 1))) * math.exp(-var / (m * n * width**2))
                * np.einsum("m,mna->na", e - e.mean(), f_m))
    udd = UDD(height=a_height, width=width, ddof=1)
    np.testing.assert_allclose(np.asarray(udd.forces(jnp.asarray(e), jnp.asarray(f_m), n)), expected, rtol=1e-12)
    pred = Evaluator(_ensemble_ff(udd), atoms)(atoms)
    np.testing.assert_allclose(np.asarray(pred.forces_bias), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("full", [True, False])
def test_udd_virial_against_finite_differences(system, full):
    atoms, width = system
    udd = UDD(height=0.7, width=width)
    ev = Evaluator(_ensemble_ff(udd), atoms, need_stress=True)
    pred = ev(atoms, full=full)
    fd = _fd_virial(lambda a: float(ev(a).energy), atoms)
    np.testing.assert_allclose(np.asarray(pred.virial), fd, rtol=1e-6, atol=1e-8)


def test_udd_per_atom_height_and_bad_input():
    assert UDD(height=0.1, per_atom=True).total_height(300) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="width"):
        UDD(width=0.0)
    with pytest.raises(ValueError, match="at least 2 members"):
        UDD().energy(jnp.zeros(1), 10)


# ---------------------------------------------------------------------------------------------- OPES


_log_density = jax.jit(log_density)
_log_normalisation = jax.jit(log_normalisation)
_add_kernel = jax.jit(add_kernel, static_argnums=4)


def _gauss(s, c, v):
    s, c, v = map(np.atleast_1d, (s, c, v))
    return np.prod(np.exp(-0.5 * (s - c) ** 2 / v) / np.sqrt(2 * np.pi * v))


def test_opes_density_and_normalisation_by_hand():
    sigma = 0.5
    k = empty_kernels(4, 1)
    for c in (0.0, 1.0, 3.0):
        k = _add_kernel(k, jnp.array([c]), jnp.array([sigma**2]), jnp.ones(()), threshold=0.4)
    assert int(k.count) == 3
    centres = [0.0, 1.0, 3.0]

    def p(s):
        return sum(_gauss(s, c, sigma**2) for c in centres) / 3

    for s in (-0.3, 0.5, 2.2):
        assert float(jnp.exp(_log_density(jnp.array([s]), k))) == pytest.approx(p(s), rel=1e-12)
    z = sum(p(c) for c in centres) / 3
    assert float(jnp.exp(_log_normalisation(k))) == pytest.approx(z, rel=1e-12)

    kT, barrier = units.kB * 300, 0.5
    gamma = barrier / kT
    eps = math.exp(-gamma / (gamma - 1))
    s = 0.4
    expected = (gamma - 1) * kT * math.log(p(s) / z + eps) + barrier
    assert float(opes_bias(_log_density(jnp.array([s]), k), _log_normalisation(k), barrier, kT)) == pytest.approx(expected, rel=1e-12)


def test_opes_bias_is_zero_without_kernels_and_bounded_below():
    kT, barrier = units.kB * 300, 0.5
    k = empty_kernels(3, 2)
    v = opes_bias(_log_density(jnp.zeros(2), k), _log_normalisation(k), barrier, kT)
    assert float(v) == pytest.approx(0.0, abs=1e-12)
    g = jax.grad(lambda s: opes_bias(_log_density(s, k), _log_normalisation(k), barrier, kT))(jnp.ones(2))
    assert np.all(np.isfinite(np.asarray(g))) and np.allclose(g, 0.0)
    k = _add_kernel(k, jnp.zeros(2), jnp.full(2, 0.25), jnp.ones(()), 0.4)
    far = opes_bias(_log_density(jnp.full(2, 50.0), k), _log_normalisation(k), barrier, kT)
    at = opes_bias(_log_density(jnp.zeros(2), k), _log_normalisation(k), barrier, kT)
    assert float(far) == pytest.approx(0.0, abs=1e-9)
    gamma = barrier / kT
    assert float(at) == pytest.approx((gamma - 1) * kT * math.log(1 + math.exp(-gamma / (gamma - 1))) + barrier, rel=1e-12)


def test_kernel_merging_by_hand():
    k = empty_kernels(4, 1)
    v0 = 0.5**2
    k = _add_kernel(k, jnp.array([0.0]), jnp.array([v0]), jnp.ones(()), 0.4)
    # Mahalanobis distance 0.1/0.5 = 0.2 < 0.4: merge
    k = _add_kernel(k, jnp.array([0.1]), jnp.array([v0]), jnp.ones(()), 0.4)
    assert int(k.count) == 1
    assert float(k.heights[0]) == 2.0
    assert float(k.centers[0, 0]) == pytest.approx(0.05)
    assert float(k.variances[0, 0]) == pytest.approx((v0 + 0.0 + v0 + 0.01) / 2 - 0.05**2)
    # distance (0.3 - 0.05)/sqrt(0.2525) = 0.4975 > 0.4: new kernel
    k = _add_kernel(k, jnp.array([0.3]), jnp.array([v0]), jnp.ones(()), 0.4)
    assert int(k.count) == 2
    # distance to the nearest (second) kernel 0.15/0.5 = 0.3: merged into it, not into the first
    k = _add_kernel(k, jnp.array([0.45]), jnp.array([v0]), jnp.ones(()), 0.4)
    assert int(k.count) == 2
    assert float(k.heights[1]) == 2.0 and float(k.centers[1, 0]) == pytest.approx(0.375)
    assert float(k.heights[0]) == 2.0


def test_pca_matches_numpy_svd():
    fit = jax.jit(fit_pca, static_argnums=3)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 5)) @ rng.normal(size=(5, 5))
    mean, comps = fit(jnp.asarray(data[:4]), jnp.asarray(4, jnp.int32), jnp.asarray(data[4:]), 2)
    centred = data - data.mean(0)
    _, _, vt = np.linalg.svd(centred)
    np.testing.assert_allclose(np.asarray(mean), data.mean(0), atol=1e-12)
    for j in range(2):  # same axes up to sign
        assert abs(abs(np.dot(np.asarray(comps[:, j]), vt[j])) - 1.0) < 1e-10
    # invalid reference rows (beyond n_refs) are ignored
    padded = np.vstack([data[:4], rng.normal(size=(3, 5)) * 100])
    mean2, comps2 = fit(jnp.asarray(padded), jnp.asarray(4, jnp.int32), jnp.asarray(data[4:]), 2)
    np.testing.assert_allclose(np.asarray(mean2), np.asarray(mean), atol=1e-12)
    np.testing.assert_allclose(np.abs(np.asarray(comps2)), np.abs(np.asarray(comps)), atol=1e-10)


# ---------------------------------------------------------------------------------------------- ERBS


def _erbs_setup(bandwidth=None, basis="variable"):
    """A small ERBS state with three deposits; returns (erbs, state, probe atoms)."""
    configs = [argon_fcc(2, rattle=0.3, seed=s) for s in range(4)]

    def build(bw):
        erbs = ERBS(temperature=300, barrier=1.0, per_atom=False, bandwidth=bw, n_components=2, interval=1,
                    n_basis=3, r_min=1.0, r_max=5.0, basis=basis, contractions=(0, 1, 2, 4), dtype="float64")
        ev = Evaluator(lj_forcefield(bias=erbs), configs[0])
        descriptor = jax.jit(ev.ff.erbs_descriptor)
        gs = [descriptor(jnp.asarray(a.positions), jnp.asarray(a.cell.array), ev.lists(a)) for a in configs]
        aux = np.stack([np.asarray(g) for g in gs[:3]]) if basis == "fixed" else None
        state = erbs.init_state(8, aux)
        deposit = jax.jit(erbs.deposit)
        for g in gs[:3]:
            state = deposit(state, g)
        return erbs, state, gs

    erbs, state, gs = build(1.0)
    probe = configs[3]
    s = [np.asarray(erbs.project(state, g)) for g in gs]
    spread = np.mean([np.linalg.norm(s[i] - s[j]) for i in range(4) for j in range(i)])
    erbs, state, _ = build(0.5 * spread)
    return erbs, state, probe


@pytest.fixture(scope="module")
def erbs_case():
    return _erbs_setup()


def test_erbs_forces_against_finite_differences(erbs_case):
    erbs, state, probe = erbs_case
    ev = Evaluator(lj_forcefield(bias=erbs), probe)
    pred = ev(probe, bias_state=state)
    assert float(pred.energy_bias) > 0.0
    idx = [(0, 0), (5, 1), (11, 2), (20, 0), (31, 2)]
    fd = _fd_forces(lambda a: float(ev(a, bias_state=state).energy_bias), probe, idx)
    assert np.abs(fd).max() > 1e-4
    np.testing.assert_allclose([pred.forces_bias[i, a] for i, a in idx], fd, rtol=1e-5, atol=1e-9)
    # forces of the sum = base + bias
    base = Evaluator(lj_forcefield(), probe)(probe)
    np.testing.assert_allclose(np.asarray(pred.forces), np.asarray(base.forces + pred.forces_bias), atol=1e-12)


def test_erbs_stress_against_finite_differences(erbs_case):
    erbs, state, probe = erbs_case
    ev = Evaluator(lj_forcefield(bias=erbs), probe, need_stress=True)
    pred = ev(probe, bias_state=state)
    base = Evaluator(lj_forcefield(), probe, need_stress=True)(probe)
    bias_virial = np.asarray(pred.virial - base.virial)
    fd = _fd_virial(lambda a: float(ev(a, bias_state=state).energy_bias), probe)
    assert np.abs(fd).max() > 1e-4
    np.testing.assert_allclose(bias_virial, fd, rtol=1e-5, atol=1e-8)


def test_erbs_fixed_basis_accumulates_kernels_and_aux_is_not_deposited():
    erbs, state, _ = _erbs_setup(basis="fixed")
    assert int(state.n_refs) == 3
    assert state.aux.shape[0] == 3
    assert float(jnp.sum(state.kernels.heights)) == 3.0  # only the deposits are kernels
    variable_erbs, variable_state, _ = _erbs_setup(basis="variable")
    assert float(jnp.sum(variable_state.kernels.heights)) == 3.0


def test_erbs_float32_descriptor_matches_float64():
    g64, g32, e64 = descriptors_in_both_precisions(argon_fcc(2, rattle=0.3, seed=1), n_basis=3, r_max=5.0)
    assert g32.dtype == np.float64 and g64.shape == (e64.n_features,)
    np.testing.assert_allclose(g32, g64, rtol=2e-5, atol=1e-6 * np.abs(g64).max())


def test_erbs_validation():
    with pytest.raises(ValueError, match="bandwidth"):
        ERBS(bandwidth=0)
    with pytest.raises(ValueError, match="basis"):
        ERBS(basis="sometimes")
    with pytest.raises(ValueError, match="must exceed"):
        ERBS(barrier=0.01, per_atom=False).total_barrier(10)
    with pytest.raises(ValueError, match="fixed"):
        ERBS(basis="fixed").init_state(4, None)
