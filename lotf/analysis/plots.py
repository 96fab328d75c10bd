"""Figures of the analyses, written as PNG or SVG files (matplotlib Agg, no pyplot state).

Every function takes result objects or arrays plus an output path and returns the path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from lotf.analysis.diffusion import (
    A2_PER_NS_TO_1E9_M2_S,
    ArrheniusFit,
    BoxSizeExtrapolation,
    MSDResult,
)
from lotf.analysis.dihedrals import DihedralDistributions, ramachandran_histogram
from lotf.analysis.rdf import RDFResult


def _figure(ncols: int = 1, nrows: int = 1, size=(4.5, 3.5)):
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"plot path must end in .png, .svg or .pdf, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def plot_rdf(
    result: RDFResult, path, pairs: Sequence[tuple[str, str]] | None = None, ncols: int = 4
) -> Path:
    """One panel per element pair (all pairs by default)."""
    keys = list(pairs) if pairs is not None else list(result.g)
    keys = [k if isinstance(k, tuple) else tuple(k.split("-")) for k in keys]
    ncols = min(ncols, len(keys))
    nrows = int(np.ceil(len(keys) / ncols))
    fig, axes = _figure(ncols, nrows, (3.2, 2.6))
    for ax in axes.ravel()[len(keys) :]:
        ax.set_visible(False)
    for ax, key in zip(axes.ravel(), keys):
        ax.plot(result.r, result.g[tuple(sorted(key))], lw=1.2)
        ax.axhline(1.0, color="0.6", lw=0.6, ls="--")
        ax.set_title("-".join(key), fontsize=9)
        ax.set_xlabel("r / Å")
        ax.set_ylabel("g(r)")
    return _save(fig, path)


def plot_msd(
    results: Mapping[str, MSDResult] | Sequence[MSDResult],
    path,
    fits: Mapping[str, object] | None = None,
) -> Path:
    """MSD against lag time (ps) for several groups, with block curves faint."""
    items = list(results.values()) if isinstance(results, Mapping) else list(results)
    fig, axes = _figure()
    ax = axes[0, 0]
    for k, res in enumerate(items):
        color = f"C{k}"
        t = res.lag_fs / 1000.0
        for m in res.block_msd:
            ax.plot(t, m, color=color, alpha=0.2, lw=0.6)
        label = res.label
        if fits and res.label in fits:
            est = fits[res.label]
            label += f"  D = {est.D:.3g} ± {est.sem:.2g} Å²/ns"
            t0, t1 = est.fit_window_fs
            tt = np.array([t0, t1])
            ax.plot(tt / 1000.0, est.intercept + 6.0 * est.D / 1e6 * tt, color=color, ls="--", lw=1)
        ax.plot(t, res.msd, color=color, lw=1.5, label=label)
    ax.set_xlabel("lag time / ps")
    ax.set_ylabel("MSD / Å²")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_arrhenius(
    simulated: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    path,
    experimental: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    fits: Mapping[str, ArrheniusFit] | None = None,
) -> Path:
    """ln D against 1000/T; ``simulated[label] = (T, D, D_err)`` in K and Å²/ns."""
    fig, axes = _figure()
    ax = axes[0, 0]
    for k, (label, (T, D, err)) in enumerate(simulated.items()):
        T, D = np.asarray(T, float), np.asarray(D, float) * A2_PER_NS_TO_1E9_M2_S
        yerr = None if err is None else np.asarray(err, float) * A2_PER_NS_TO_1E9_M2_S
        ax.errorbar(1000.0 / T, D, yerr=yerr, fmt="o", color=f"C{k}", label=label, capsize=2)
        if fits and label in fits:
            tt = np.linspace(T.min(), T.max(), 50)
            ax.plot(1000.0 / tt, fits[label](tt) * A2_PER_NS_TO_1E9_M2_S, color=f"C{k}", lw=0.8)
    for k, (label, (T, D)) in enumerate((experimental or {}).items()):
        T = np.asarray(T, float)
        ax.plot(
            1000.0 / T,
            np.asarray(D, float) * A2_PER_NS_TO_1E9_M2_S,
            marker="s",
            ls="-",
            mfc="none",
            color=f"C{k + len(simulated)}",
            label=f"exp. {label}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("1000 K / T")
    ax.set_ylabel("D / 10⁻⁹ m² s⁻¹")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_box_size_extrapolation(
    box_lengths: Sequence[float],
    D: Sequence[float],
    D_err: Sequence[float] | None,
    fit: BoxSizeExtrapolation,
    path,
    label: str = "",
) -> Path:
    """D against 1/L with the linear Yeh-Hummer extrapolation to 1/L = 0."""
    fig, axes = _figure()
    ax = axes[0, 0]
    inv = 1.0 / np.asarray(box_lengths, float)
    ax.errorbar(inv, D, yerr=D_err, fmt="o", capsize=3, label=label or None)
    x = np.linspace(0.0, inv.max() * 1.05, 20)
    ax.plot(
        x,
        fit.D_inf + fit.slope * x,
        "k--",
        lw=1,
        label=f"D∞ = {fit.D_inf:.3g} ± {fit.D_inf_err:.2g}",
    )
    ax.set_xlabel("1/L / Å⁻¹")
    ax.set_ylabel("D / Å² ns⁻¹")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_density(
    temperatures: Sequence[float],
    densities: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path,
    experimental: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Path:
    """Density against T; ``densities[label] = (mean, ci_halfwidth)`` per temperature."""
    fig, axes = _figure()
    ax = axes[0, 0]
    T = np.asarray(temperatures, float)
    for k, (label, (mean, ci)) in enumerate(densities.items()):
        ax.errorbar(T + 1.5 * k, mean, yerr=ci, fmt="o", capsize=3, label=label, color=f"C{k}")
    if experimental is not None:
        ax.plot(*experimental, "k-", label="experiment")
    ax.set_xlabel("T / K")
    ax.set_ylabel("ρ / g cm⁻³")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_density_trace(time_ps, density, path, reference: float | None = None) -> Path:
    """Instantaneous and running-mean density of one run."""
    fig, axes = _figure(size=(6, 3.5))
    ax = axes[0, 0]
    d = np.asarray(density, float)
    ax.plot(time_ps, d, lw=0.5, alpha=0.6, label="instantaneous")
    ax.plot(time_ps, np.cumsum(d) / np.arange(1, len(d) + 1), lw=1.5, label="running mean")
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label=f"exp. {reference:.3f}")
    ax.set_xlabel("t / ps")
    ax.set_ylabel("ρ / g cm⁻³")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_dihedrals(dist: DihedralDistributions, path) -> Path:
    """One panel per dihedral, one curve per time window (seed 1 Fig. 5)."""
    names = list(dist.histograms)
    fig, axes = _figure(len(names), 1, (3.6, 3.0))
    for ax, name in zip(axes.ravel(), names):
        for w, (t0, t1) in enumerate(dist.window_fs):
            ax.plot(dist.centers, dist.histograms[name][w], label=f"{t0 / 1000:g}–{t1 / 1000:g} ps")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("φ / deg")
        ax.set_ylabel("density / deg⁻¹")
        ax.set_xlim(-180, 180)
    axes.ravel()[0].legend(fontsize=7)
    return _save(fig, path)


def plot_ramachandran(phi, psi, path, bin_deg: float = 15.0, coverage: float | None = None) -> Path:
    """Visited (Phi, Psi) cells on the ``bin_deg`` grid."""
    h = ramachandran_histogram(phi, psi, bin_deg)
    fig, axes = _figure(size=(4.2, 3.8))
    ax = axes[0, 0]
    edges = np.linspace(-180, 180, h.shape[0] + 1)
    masked = np.ma.masked_equal(h.T, 0)
    mesh = ax.pcolormesh(edges, edges, masked, norm=LogNorm(), cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="visits")
    ax.set_xlabel("Φ / deg")
    ax.set_ylabel("Ψ / deg")
    if coverage is not None:
        ax.set_title(f"coverage {100 * coverage:.1f} %", fontsize=9)
    return _save(fig, path)


def plot_parity(
    reference,
    predicted,
    path,
    quantity: str = "forces",
    unit: str = "eV/Å",
    title: str | None = None,
) -> Path:
    """Parity plot (point density coloured, yellow = dense) next to the error histogram."""
    ref = np.asarray(reference, float).ravel()
    pred = np.asarray(predicted, float).ravel()
    if ref.shape != pred.shape:
        raise ValueError(f"parity: reference {ref.shape} and predicted {pred.shape} differ")
    fig, axes = _figure(2, 1, (4.0, 3.6))
    ax, hx = axes[0, 0], axes[0, 1]
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    if len(ref) > 2000:
        hb = ax.hexbin(ref, pred, gridsize=80, bins="log", cmap="viridis", mincnt=1)
        fig.colorbar(hb, ax=ax, label="count")
    else:
        ax.scatter(ref, pred, s=6, alpha=0.7)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"reference {quantity} / {unit}")
    ax.set_ylabel(f"predicted {quantity} / {unit}")
    err = pred - ref
    mae = np.mean(np.abs(err))
    rmse = np.sqrt(np.mean(err**2))
    ax.set_title(title or f"MAE {mae:.3g}, RMSE {rmse:.3g} {unit}", fontsize=9)
    hx.hist(err, bins=80, color="C1")
    hx.set_xlabel(f"error / {unit}")
    hx.set_ylabel("count")
    hx.set_yscale("log")
    return _save(fig, path)


def plot_pca(
    projections: Mapping[str, np.ndarray], path, color_by_time: Sequence[str] = ()
) -> Path:
    """First two principal components per trajectory; sets in ``color_by_time`` are
    coloured by frame index (seed 2 Fig. 7)."""
    fig, axes = _figure(size=(5.0, 4.0))
    ax = axes[0, 0]
    for k, (label, p) in enumerate(projections.items()):
        p = np.asarray(p, float)
        if p.shape[1] < 2:
            raise ValueError(f"projections['{label}'] needs 2 components, got {p.shape[1]}")
        if label in color_by_time:
            sc = ax.scatter(p[:, 0], p[:, 1], c=np.arange(len(p)), s=4, cmap="plasma", label=label)
            fig.colorbar(sc, ax=ax, label=f"{label} frame")
        else:
            ax.scatter(p[:, 0], p[:, 1], s=4, alpha=0.6, color=f"C{k}", label=label)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7, markerscale=3)
    return _save(fig, path)


def plot_bars(
    values: Mapping[str, float], path, ylabel: str, errors: Mapping[str, float] | None = None
) -> Path:
    """Bar chart, e.g. maximum COM MSD per sampling run (seed 2 Fig. 6)."""
    fig, axes = _figure(size=(max(4.0, 0.5 * len(values) + 2), 3.5))
    ax = axes[0, 0]
    labels = list(values)
    yerr = None if errors is None else [errors.get(k, 0.0) for k in labels]
    ax.bar(range(len(labels)), [values[k] for k in labels], yerr=yerr, capsize=3)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    return _save(fig, path)


def plot_trend(table, path, ylabel: str, reference: float | None = None, reference_label: str = "") -> Path:
    """``table`` columns series, step, value, error: one line per series over the steps."""
    fig, axes = _figure()
    ax = axes[0, 0]
    for k, (series, sub) in enumerate(table.groupby("series", sort=False)):
        x = np.arange(len(sub))
        err = sub["error"].to_numpy(float)
        ax.errorbar(x, sub["value"], yerr=None if np.all(np.isnan(err)) else err, fmt="o-", capsize=3,
                    color=f"C{k}", label=str(series))
        ax.set_xticks(x, [str(s) for s in sub["step"]], rotation=45, ha="right", fontsize=7)
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=1, label=reference_label or None)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return _save(fig, path)
