"""Every figure function writes a readable file."""

import ase
import numpy as np
import pytest
from matplotlib.image import imread

from lotf.analysis import plots
from lotf.analysis.diffusion import (
    MSDResult,
    arrhenius_fit,
    einstein_diffusion,
    extrapolate_box_size,
)
from lotf.analysis.dihedrals import DihedralDistributions
from lotf.analysis.rdf import compute_rdf


def _png_ok(path):
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0.01  # not blank


def test_all_plots(tmp_path):
    rng = np.random.default_rng(0)
    frames = [
        ase.Atoms("B2N2", scaled_positions=rng.random((4, 3)), cell=[8.0] * 3, pbc=True)
        for _ in range(5)
    ]
    rdf = compute_rdf(frames, n_bins=20)
    _png_ok(plots.plot_rdf(rdf, tmp_path / "rdf.png"))
    lags = np.arange(11) * 10.0
    msd = MSDResult("H", lags, 0.06 * lags, np.stack([0.05 * lags, 0.07 * lags]), 4, 100, 10.0)
    fit = einstein_diffusion(msd)
    _png_ok(plots.plot_msd({"H": msd}, tmp_path / "msd.png", {"H": fit}))
    T = np.array([283.0, 313.0, 353.0])
    D = np.array([5.0, 30.0, 120.0])
    _png_ok(
        plots.plot_arrhenius(
            {"B": (T, D, 0.1 * D)},
            tmp_path / "arr.png",
            {"BF4-": (T, D * 1.1)},
            {"B": arrhenius_fit(T, D)},
        )
    )
    ext = extrapolate_box_size([16.0, 20.0, 25.0], [90.0, 95.0, 99.0])
    _png_ok(
        plots.plot_box_size_extrapolation(
            [16.0, 20.0, 25.0], [90.0, 95.0, 99.0], None, ext, tmp_path / "ext.png"
        )
    )
    _png_ok(
        plots.plot_density(
            T,
            {"MLP": ([1.18, 1.16, 1.14], [0.01] * 3)},
            tmp_path / "rho.png",
            (T, [1.21, 1.19, 1.16]),
        )
    )
    _png_ok(
        plots.plot_density_trace(
            np.arange(50), 1.2 + 0.01 * rng.normal(size=50), tmp_path / "trace.png", 1.2
        )
    )
    edges = np.linspace(-180, 180, 37)
    dist = DihedralDistributions(
        edges, [(0.0, 1000.0)], {"a": rng.random((1, 36))}, {"a": np.array([10])}
    )
    _png_ok(plots.plot_dihedrals(dist, tmp_path / "dih.png"))
    _png_ok(
        plots.plot_ramachandran(
            rng.uniform(-180, 180, 200),
            rng.uniform(-180, 180, 200),
            tmp_path / "rama.png",
            coverage=0.3,
        )
    )
    _png_ok(
        plots.plot_parity(rng.normal(size=5000), rng.normal(size=5000), tmp_path / "parity.png")
    )
    _png_ok(
        plots.plot_pca(
            {"MD": rng.normal(size=(50, 2)), "ERBS": rng.normal(size=(50, 2))},
            tmp_path / "pca.png",
            ["ERBS"],
        )
    )
    _png_ok(plots.plot_bars({"MD": 1.0, "UDD": 1.8, "ERBS": 4.9}, tmp_path / "bars.png", "max MSD"))
    svg = plots.plot_bars({"MD": 1.0}, tmp_path / "bars.svg", "max MSD")
    assert svg.read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match=".png"):
        plots.plot_bars({"MD": 1.0}, tmp_path / "bars.txt", "x")
