"""Ground truth comparisons: an MLP's MD against the reference force field's own MD.

Everything here works on the outputs the analysis nodes already write (RDF tables, diffusion
metrics, MD metrics), so any pair of runs of the same system, temperature and size compares.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def rdf_max_abs_dev(candidate: pd.DataFrame, reference: pd.DataFrame, pair: str) -> float:
    """max_r |g(r) − g_ref(r)| of one pair, the candidate interpolated onto the reference grid
    (up to the shorter of the two ranges)."""
    for name, table in (("candidate", candidate), ("reference", reference)):
        if pair not in table.columns:
            raise KeyError(f"{name} RDF has no pair {pair} (has {', '.join(map(str, table.columns))})")
    r_ref = np.asarray(reference.index, float)
    r_c = np.asarray(candidate.index, float)
    keep = r_ref <= min(r_ref.max(), r_c.max())
    g_c = np.interp(r_ref[keep], r_c, np.asarray(candidate[pair], float))
    return float(np.max(np.abs(g_c - np.asarray(reference[pair], float)[keep])))


NOISE_FLOOR_MIN_FRAMES = 4  # two halves of at least two frames each


def rdf_noise_floor(source, pair: str, grid: np.ndarray) -> float:
    """The statistical floor of :func:`rdf_max_abs_dev` at one binning: max_r |g_1(r) - g_2(r)| of
    the first and the second half of one run, on the bin centres ``grid`` (evenly spaced from dr/2).

    A candidate run compared with a reference run of twice its length carries about the same
    noise (σ_half·√2 against σ_full·√3 = σ_half·√1.5), so a deviation near this floor is noise,
    not a difference between the two potentials."""
    from lotf.analysis.io import read_info
    from lotf.analysis.rdf import compute_rdf, pair_key

    grid = np.asarray(grid, float)
    if len(grid) < 2:
        raise ValueError(f"rdf_noise_floor: need at least two bins, got {len(grid)}")
    dr = float(grid[1] - grid[0])
    n_frames = read_info(source).n_frames
    if n_frames < NOISE_FLOOR_MIN_FRAMES:
        raise ValueError(f"rdf_noise_floor: need at least {NOISE_FLOOR_MIN_FRAMES} frames to split in halves, "
                         f"got {n_frames}")
    key = pair_key(*pair.split("-"))
    r_max = float(grid[-1] + dr / 2)
    halves = [compute_rdf(source, r_max, len(grid), [key], total=False, start=a, stop=b).g[key]
              for a, b in ((0, n_frames // 2), (n_frames // 2, n_frames))]
    return float(np.max(np.abs(halves[0] - halves[1])))


def stable_ps(md_metrics: dict, timestep_fs: float) -> float:
    """Production time before a stop check fired (the whole run when none did), in ps."""
    return float(md_metrics.get("steps_done", 0)) * timestep_fs / 1000.0


def compare_run(md_metrics: dict, diffusion_metrics: dict, rdf: pd.DataFrame | None, *, reference_D: float,
                reference_rdf: pd.DataFrame | None, group: str, pair: str, target_temperature: float,
                timestep_fs: float) -> dict:
    """One candidate run against the reference: D ratio, RDF deviation, temperature, stability."""
    d = diffusion_metrics.get(group, {}).get("D_A2_per_ns", np.nan)
    out = {
        "D_A2_per_ns": float(d),
        "D_ratio": float(d / reference_D) if reference_D else np.nan,
        "T_mean_K": float(md_metrics.get("temperature_mean_K", np.nan)),
        "stable_ps": stable_ps(md_metrics, timestep_fs),
        "stopped": int(md_metrics.get("stopped", 0)),
        "stop_reason": str(md_metrics.get("stop_reason", "none")),
    }
    out["T_dev_K"] = out["T_mean_K"] - target_temperature
    if rdf is not None and reference_rdf is not None:
        out["rdf_max_abs_dev"] = rdf_max_abs_dev(rdf, reference_rdf, pair)
    return out


def density_runs(runs: list[dict]) -> dict:
    """The NPT density of independent runs (``Density`` metrics): their mean and its standard error.

    A viscous liquid's box of a few hundred atoms can stay at one density for tens of ps and at
    another in the next run (the BMIM-BF4 oracle's model: 1.15 and 1.02 g/cm³ from the same start
    with two seeds), so a density is read from several runs and their spread, not from the blocking
    error of one. A run whose molecules broke reports NaN; so does the mean (the potential failed).
    One run gives its own blocking error as the standard error.
    """
    rho = np.array([float(r.get("density_g_cm3", np.nan)) for r in runs])
    if len(rho) == 0:
        raise ValueError("density_runs: no runs")
    mean, sem = mean_of_runs(rho)
    if len(rho) == 1:
        sem = float(runs[0].get("sem_g_cm3", np.nan))
    return {"density_g_cm3": mean, "sem_g_cm3": sem, "runs_g_cm3": rho.tolist(), "n_runs": len(rho)}


def mean_of_runs(values) -> tuple[float, float]:
    """Mean of independent runs' values and its standard error (:func:`lotf.analysis.statistics.summarize`).
    A NaN run (a potential that failed) makes both NaN; one run has no spread (NaN error)."""
    from lotf.analysis.statistics import summarize

    values = np.asarray(values, float)
    if len(values) < 2 or not np.all(np.isfinite(values)):
        return float(np.mean(values)), float("nan")
    result = summarize(values)
    return result.mean, result.sem


def density_against_reference(runs: list[dict], reference_runs: list[dict]) -> dict:
    """NPT densities of a model's runs against the reference's own runs at the same T and pressure:
    both means (:func:`density_runs`), the relative error of the model's mean and its standard
    error (both means' errors propagated)."""
    model, ref = density_runs(runs), density_runs(reference_runs)
    rho, rho_ref = model["density_g_cm3"], ref["density_g_cm3"]
    rel = (rho - rho_ref) / rho_ref if rho_ref else np.nan
    rel_sem = float(np.hypot(model["sem_g_cm3"], rho / rho_ref * ref["sem_g_cm3"]) / rho_ref) if rho_ref else np.nan
    return {**model, "density_rel_err": rel, "density_rel_err_sem": rel_sem}
