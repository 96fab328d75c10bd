"""MSD, unwrapping, molecules, Einstein D, Yeh-Hummer and Arrhenius against known answers."""

import ase
import numpy as np
import pytest
from scipy import constants

from lotf.analysis import diffusion as dl


def wrapped_frames(x, cell, symbols):
    frames = []
    for pos in x:
        a = ase.Atoms(symbols, positions=pos, cell=cell, pbc=True)
        a.wrap()
        frames.append(a)
    return frames


def test_accumulator_equals_direct_double_sum():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(503, 7, 3)), axis=0)
    for max_lag, block in [(37, 41), (10, 1), (100, 503), (250, 60)]:
        acc = dl.MSDAccumulator(max_lag)
        for a in range(0, len(x), block):
            acc.push(x[a : a + block])
        sums, counts = acc.finish()
        np.testing.assert_allclose(
            sums / (counts * 7), dl.msd_direct(x, max_lag), rtol=1e-10, atol=1e-10
        )
        np.testing.assert_array_equal(counts, len(x) - np.arange(max_lag + 1))


def test_unwrapping_recovers_true_msd_and_blocks():
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(scale=0.4, size=(400, 6, 3)), axis=0)  # wanders over many boxes
    frames = wrapped_frames(x, [5.0, 6.0, 7.0], "H6")
    assert np.ptp(x) > 20.0
    res = dl.compute_msd(frames, ["H"], max_lag=30, n_blocks=4, timestep_fs=0.5, chunk_size=33)["H"]
    n = len(x) // 4
    for b in range(4):
        np.testing.assert_allclose(
            res.block_msd[b], dl.msd_direct(x[b * n : (b + 1) * n], 30), atol=1e-9
        )
    np.testing.assert_allclose(res.lag_fs, 0.5 * np.arange(31))


def test_unwrapping_with_fluctuating_triclinic_box():
    # NPT-like dynamics: the barostat rescales coordinates with the cell, the thermostat adds
    # random steps, positions are stored wrapped.  The true displacement of a step is
    # (rescaled + random step) - previous; unwrapping must add these up.
    rng = np.random.default_rng(2)
    base = np.array([[6.0, 0, 0], [1.5, 6.0, 0], [0.5, -1.0, 7.0]])
    cells = [(1.0 + 0.05 * np.sin(0.3 * k)) * base for k in range(300)]
    w = rng.random((4, 3)) @ cells[0]
    u = [w.copy()]
    frames = [ase.Atoms("H4", positions=w, cell=cells[0], pbc=True)]
    for k in range(1, 300):
        moved = w @ np.linalg.inv(cells[k - 1]) @ cells[k] + rng.normal(scale=0.3, size=(4, 3))
        u.append(u[-1] + moved - w)
        a = ase.Atoms("H4", positions=moved, cell=cells[k], pbc=True)
        a.wrap()
        w = a.positions.copy()
        frames.append(a)
    u = np.array(u)
    assert np.ptp(u) > 15.0
    res = dl.compute_msd(frames, ["H"], max_lag=20, n_blocks=1, timestep_fs=1.0)["H"]
    np.testing.assert_allclose(res.msd, dl.msd_direct(u, 20), atol=1e-9)


@pytest.mark.parametrize("seed", [3, 4])
def test_random_walk_diffusion_within_error_bar(seed):
    rng = np.random.default_rng(seed)
    dt, sigma = 10.0, 0.25  # fs, A per axis per frame
    D_true = sigma**2 / (2 * dt) * 1e6  # A^2/ns
    x = np.cumsum(rng.normal(scale=sigma, size=(4000, 40, 3)), axis=0)
    frames = wrapped_frames(x, [8.0, 8.0, 8.0], "H40")
    res = dl.compute_msd(frames, ["H"], max_lag_fs=1000.0, n_blocks=8, timestep_fs=dt)["H"]
    est = dl.einstein_diffusion(res, (100.0, 800.0))
    assert est.sem < 0.1 * D_true
    assert abs(est.D - D_true) < 3.0 * est.sem, (est.D, est.sem, D_true)
    assert est.D_1e9_m2_s == pytest.approx(est.D / 100)


def _dimers(n_mol, box, rng):
    """B-F 'molecules' 1.3 A long in random orientations, H2 molecules 0.74 A long."""
    pos, sym = [], []
    for k in range(n_mol):
        c = rng.random(3) * box
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        if k % 2:
            pos += [c, c + 1.3 * u]
            sym += ["B", "F"]
        else:
            pos += [c, c + 0.74 * u]
            sym += ["H", "H"]
    return np.array(pos), sym


def test_molecules_from_bond_graph_and_centres_of_mass():
    rng = np.random.default_rng(5)
    box = 12.0
    # place molecules on a grid so that they do not touch each other
    grid = (
        np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(2)], float) * 4.0
        + 1.0
    )
    pos, sym = [], []
    for k, g in enumerate(grid):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        if k % 2:
            pos += [g, g + 1.3 * u]
            sym += ["B", "F"]
        else:
            pos += [g, g + 0.74 * u]
            sym += ["H", "H"]
    pos = np.array(pos) - 1.5  # pushes some molecules across the box edge
    atoms = ase.Atoms(sym, positions=pos, cell=[box] * 3, pbc=True)
    atoms.wrap()
    mols = dl.find_molecules(atoms)
    assert len(mols) == len(grid)
    formulas = {dl.molecule_formula(sym, m) for m in mols}
    assert formulas == {"BF", "H2"}
    whole = dl.make_whole(atoms, mols)
    for m in mols:
        d = np.linalg.norm(whole[m[1]] - whole[m[0]])
        assert d == pytest.approx(1.3 if sym[m[0]] == "B" else 0.74)
    # rigid translation of every molecule by its own random walk -> COM MSD is known
    steps = rng.normal(scale=0.3, size=(200, len(mols), 3))
    traj = np.cumsum(steps, axis=0)
    true_com = []
    frames = []
    masses = atoms.get_masses()
    for t in range(len(traj)):
        p = whole.copy()
        for k, m in enumerate(mols):
            p[m] += traj[t, k]
        true_com.append([masses[m] @ p[m] / masses[m].sum() for m in mols if sym[m[0]] == "B"])
        a = ase.Atoms(sym, positions=p, cell=[box] * 3, pbc=True)
        a.wrap()
        frames.append(a)
    res = dl.compute_msd(frames, ["com:BF", "F"], max_lag=25, n_blocks=1, timestep_fs=1.0)
    np.testing.assert_allclose(res["com:BF"].msd, dl.msd_direct(np.array(true_com), 25), atol=1e-9)
    assert res["com:BF"].n_particles == 9 and res["F"].n_particles == 9


def test_yeh_hummer_against_formula():
    # water, 256 molecules (L = 19.7 A), 300 K, 0.854 mPa s
    T, eta, L = 300.0, 0.854, 19.7
    expected = constants.k * T * 2.837297 / (6 * np.pi * eta * 1e-3 * L * 1e-10)  # m^2/s
    assert dl.yeh_hummer_correction(T, eta, L) == pytest.approx(expected / 1e-11)
    assert dl.yeh_hummer_correction(T, eta, L) == pytest.approx(37.1, abs=0.1)  # A^2/ns, by hand
    assert dl.yeh_hummer(200.0, T, eta, L) == pytest.approx(200.0 + expected / 1e-11)
    assert dl.yeh_hummer_correction(T, eta, 2 * L) == pytest.approx(
        0.5 * dl.yeh_hummer_correction(T, eta, L)
    )
    with pytest.raises(ValueError, match="viscosity_mpas"):
        dl.yeh_hummer_correction(T, 0.0, L)


def test_box_size_extrapolation_recovers_limit_and_viscosity():
    T, eta, D_inf = 353.0, 15.0, 120.0
    L = np.array([16.0, 20.2, 25.4])  # 8 / 16 / 32 ion pairs
    D = np.array([D_inf - dl.yeh_hummer_correction(T, eta, length) for length in L])
    fit = dl.extrapolate_box_size(L, D, D_err=[2.0, 2.0, 2.0], temperature=T)
    assert fit.D_inf == pytest.approx(D_inf, rel=1e-10)
    assert fit.viscosity_mpas == pytest.approx(eta, rel=1e-8)
    assert fit.D_inf_err > 0
    fit2 = dl.extrapolate_box_size(L, D + np.array([0.5, -0.5, 0.2]))
    assert abs(fit2.D_inf - D_inf) < 5 * fit2.D_inf_err
    with pytest.raises(ValueError, match="two different box sizes"):
        dl.extrapolate_box_size([10.0, 10.0], [1.0, 2.0])


def test_arrhenius_fit_recovers_activation_energy():
    T = np.array([283.0, 293.0, 313.0, 333.0, 353.0])
    Ea, D0 = 35.0, 3.0e7  # kJ/mol, A^2/ns
    D = D0 * np.exp(-Ea / (constants.R / 1000 * T))
    fit = dl.arrhenius_fit(T, D, D_err=0.05 * D)
    assert fit.activation_energy_kj_mol == pytest.approx(Ea)
    assert fit.prefactor == pytest.approx(D0)
    assert fit.activation_energy_ev == pytest.approx(Ea / 96.485, rel=1e-4)
    np.testing.assert_allclose(fit(T), D)


def test_arrhenius_fit_needs_two_distinct_temperatures():
    with pytest.raises(ValueError, match=r"at least two distinct temperatures, got 353, 353, 353 K"):
        dl.arrhenius_fit([353.0, 353.0, 353.0], [80.0, 84.0, 82.0], D_err=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"at least two distinct temperatures, got 300, 300 K"):
        dl.arrhenius_fit([300.0, 300.0], [1.0, 2.0])
    # repeated temperatures are fine as long as there are two of them
    fit = dl.arrhenius_fit([300.0, 300.0, 350.0], [1.0, 1.0, 4.0])
    assert fit(350.0) / fit(300.0) == pytest.approx(4.0)


def test_experimental_tables_load():
    df = dl.load_experimental_diffusion("bmim_bf4_self_diffusion")
    assert {"T_K", "species", "D_A2_per_ns"} <= set(df.columns)
    water = dl.load_experimental_diffusion("water_self_diffusion")
    assert float(water.loc[water["T_K"] == 300.0, "D_A2_per_ns"].iloc[0]) == 241.0
    np.testing.assert_allclose(df["D_1e-9_m2_per_s"], df["D_A2_per_ns"] / 100)


def test_errors():
    frames = wrapped_frames(np.zeros((10, 2, 3)), [5.0] * 3, "H2")
    with pytest.raises(ValueError, match="timestep_fs"):
        dl.compute_msd(frames, ["H"], max_lag=2)
    with pytest.raises(ValueError, match="shorter than a block"):
        dl.compute_msd(frames, ["H"], max_lag=4, n_blocks=3, timestep_fs=1.0)
    with pytest.raises(ValueError, match="element 'O'"):
        dl.compute_msd(frames, ["O"], max_lag=2, n_blocks=1, timestep_fs=1.0)
    with pytest.raises(ValueError, match="no molecule matches"):
        dl.compute_msd(frames, ["com:BF4"], max_lag=2, n_blocks=1, timestep_fs=1.0)
