"""RDF: ideal gas gives g = 1 (orthorhombic, triclinic, fluctuating volume); exact pair bins."""

import ase
import numpy as np
import pytest

from lotf.analysis.rdf import compute_rdf, perpendicular_widths

SYMBOLS = ["B"] * 16 + ["N"] * 24 + ["H"] * 40


def ideal_gas(cells, seed=0):
    rng = np.random.default_rng(seed)
    return [
        ase.Atoms(SYMBOLS, scaled_positions=rng.random((len(SYMBOLS), 3)), cell=c, pbc=True)
        for c in cells
    ]


def check_ideal(res, skip=4):
    for pair, g in res.g.items():
        counts = res.counts[pair][skip:]
        g = g[skip:]
        # Poisson error per bin: g / sqrt(counts); allow 5 sigma per bin, 3 sigma on the mean
        sigma = g / np.sqrt(np.maximum(counts, 1))
        assert np.all(np.abs(g - 1.0) < 5 * sigma + 1e-12), pair
        mean_sigma = 1.0 / np.sqrt(counts.sum())
        assert abs(np.average(g, weights=counts) - 1.0) < 4 * mean_sigma + 0.01, pair
    assert abs(res.g_total[skip:].mean() - 1.0) < 0.02


def test_ideal_gas_orthorhombic():
    cell = np.diag([10.0, 11.0, 12.0])
    res = compute_rdf(ideal_gas([cell] * 300), n_bins=25)
    assert res.edges[-1] == pytest.approx(5.0)  # half the smallest width
    assert set(res.g) == {("B", "B"), ("B", "H"), ("B", "N"), ("H", "H"), ("H", "N"), ("N", "N")}
    check_ideal(res)


def test_ideal_gas_triclinic():
    cell = np.array([[10.0, 0.0, 0.0], [4.0, 9.0, 0.0], [-3.0, 2.5, 11.0]])
    w = perpendicular_widths(cell)
    assert w.min() < 9.0  # genuinely skewed: the short width is not an edge length
    res = compute_rdf(ideal_gas([cell] * 300, seed=1), n_bins=25, chunk_size=37)
    assert res.edges[-1] == pytest.approx(w.min() / 2)
    check_ideal(res)


def test_ideal_gas_fluctuating_volume():
    scales = 1.0 + 0.15 * np.sin(np.arange(300))
    cells = [np.diag([10.0, 10.0, 10.0]) * s for s in scales]
    res = compute_rdf(ideal_gas(cells, seed=2), r_max=4.2, n_bins=20)
    check_ideal(res)


def test_pair_distances_land_in_the_right_bins():
    # B at origin, N at 3.25 A across the periodic boundary, H far away
    cell = np.diag([10.0, 10.0, 10.0])
    atoms = ase.Atoms(
        "BNH", positions=[[0.2, 0.0, 0.0], [6.95, 0.0, 0.0], [0.2, 5.0, 5.0]], cell=cell, pbc=True
    )
    res = compute_rdf([atoms, atoms], r_max=5.0, n_bins=50)
    k = int(3.25 / 0.1)
    assert res.counts[("B", "N")][k] == 2 and res.counts[("B", "N")].sum() == 2
    assert res.counts[("B", "H")].sum() == 0  # at 7.07 A, beyond r_max
    assert res.counts[("H", "N")].sum() == 0  # |(3.25, 5, 5)| = 7.7 A
    shell = 4 / 3 * np.pi * (res.edges[k + 1] ** 3 - res.edges[k] ** 3)
    assert res.g[("B", "N")][k] == pytest.approx(1000.0 / shell)


def test_selected_pairs_and_dataframe():
    res = compute_rdf(ideal_gas([np.eye(3) * 10.0] * 5), pairs=["N-B", ("B", "B")], n_bins=10)
    assert list(res.g) == [("B", "N"), ("B", "B")]
    assert res.g_total is None
    df = res.to_dataframe()
    assert list(df.columns) == ["r", "B-N", "B-B"] and len(df) == 10


def test_errors():
    frames = ideal_gas([np.eye(3) * 10.0] * 3)
    with pytest.raises(ValueError, match="r_max=6"):
        compute_rdf(frames, r_max=6.0)
    with pytest.raises(ValueError, match="F-F not in the trajectory"):
        compute_rdf(frames, pairs=["F-F"])
    with pytest.raises(ValueError, match="periodic"):
        compute_rdf([ase.Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]])])
