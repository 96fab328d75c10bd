"""Alanine dipeptide coverage benchmark (seed 2 §3.1, Fig. 2) and dataset cross-validation (Fig. 3).

Graph: for every point of the scan one :class:`~lotf.nodes.alanine.AlanineCoverage` run of
ACE-ALA-NME in vacuum on Amber99SB (Langevin, 0.5 fs, a kernel every 10,000 steps, 80 ps in the
paper profile), the unbiased baselines at 300 K and 1200 K, and a
:class:`~lotf.nodes.alanine.CoverageSummary` (best coverage and its parameters, dissociated runs,
the Fig. 2 plot). Runs that dissociate are recorded and left out of the best, never fatal.

Paper profile: ΔE ∈ {5, 10, 15, 20, 25}, σ ∈ {0.05, 0.1, 0.2, 0.5}, k ∈ {2, 4, 6, 8, 10}
(100 ERBS runs) read in the erbs code's convention (``convention`` "code": ΔE in k_B T, σ the
kernel variance; README "ERBS benchmark"). Smoke profile: MD 300/1200 K and ERBS A and B, 2 ps
each with a kernel every 500 steps. ``fig3`` profile: only the four trajectories of Fig. 3 (80 ps) and the
cross-validation, trained for 100 epochs instead of 10,000.

Fig. 3 (``crossval``): 1800 random training frames (first 80 %) and 200 validation frames (last
20 %) of MD-300K, MD-1200K, ERBS A and ERBS B, labelled with Amber99SB
(:class:`~lotf.nodes.alanine.AlanineDataset`), one GMNN per set with seed 2's alanine
hyperparameters (``models/alanine.yaml``: Bessel 16, r_max 5 Å, 64-64, AdamW, Huber), and the
force MAE of every model on every validation set with the grouped bar plot
(:class:`~lotf.nodes.alanine.CrossValidation`). The smoke profile takes 40/10 frames, 3 epochs
and a tiny network.
"""

from __future__ import annotations

import itertools

import zntrack

from lotf.nodes import TrainModel
from lotf.nodes.alanine import AlanineCoverage, AlanineDataset, CoverageSummary, CrossValidation
from stages.common import BuildError, check_profile

NAME = "alanine"
GROUP = "alanine"
ERBS_A = (25.0, 0.1, 10)  # ΔE, σ, k (seed 2 "ERBS A")
ERBS_B = (20.0, 0.05, 4)  # the best of seed 2's scan ("ERBS B")

PROFILES = {
    "paper": dict(steps=160_000, interval=10_000, sampling_rate=20, barriers=(5.0, 10.0, 15.0, 20.0, 25.0),
                  bandwidths=(0.05, 0.1, 0.2, 0.5), components=(2, 4, 6, 8, 10), convention="code",
                  crossval=dict(n_train=1800, n_val=200, overrides={})),
    # Fig. 3 alone, at seed-2 scale but with 100 instead of 10,000 epochs (2 cosine cycles): the
    # four trajectories (80 ps) and the cross-validation, without the 100-run scan
    "fig3": dict(steps=160_000, interval=10_000, sampling_rate=20, points=(ERBS_A, ERBS_B), convention="code",
                 crossval=dict(n_train=1800, n_val=200, overrides={"training": {"epochs": 100}})),
    "smoke": dict(steps=4_000, interval=500, sampling_rate=20, points=(ERBS_A, ERBS_B), convention="code",
                  crossval=dict(n_train=40, n_val=10, overrides={"training": {"epochs": 3},
                                                                 "model": {"hidden": [16], "n_basis": 6,
                                                                           "n_radial": 2}})),
}
MODEL = "models/alanine.yaml"  # seed 2 Table S1, alanine dipeptide


def scan_points(p: dict) -> list[tuple[float, float, int]]:
    """The (ΔE, σ, k) of a profile: an explicit ``points`` list or the full grid; A and B always in."""
    if "points" in p:
        points = [tuple(x) for x in p["points"]]
    else:
        points = list(itertools.product(p["barriers"], p["bandwidths"], p["components"]))
    for must in (ERBS_A, ERBS_B):
        if must not in points:
            points.append(must)
    for dE, s, k in points:
        if not (dE > 0 and s > 0 and isinstance(k, int) and k >= 1):
            raise BuildError(f"{NAME}: bad scan point ΔE={dE}, σ={s}, k={k} (need ΔE > 0, σ > 0, integer k >= 1)")
    return points


def run_name(dE: float, s: float, k: int) -> str:
    return f"ERBS_dE{dE:g}_s{s:g}_k{k}".replace(".", "p")


def build(project: zntrack.Project, profile: str) -> None:
    check_profile(NAME, profile, PROFILES)
    p = PROFILES[profile]
    common = dict(steps=p["steps"], interval=p["interval"], sampling_rate=p["sampling_rate"], timestep=0.5,
                  convention=p["convention"])
    runs, named = [], {}
    with project.group(GROUP, "baselines"):
        for t in (300.0, 1200.0):
            runs.append(AlanineCoverage(method="md", temperature=t, name=f"MD{int(t)}K", **common))
            named[f"MD {int(t)}K"] = runs[-1]
    with project.group(GROUP, "scan"):
        for dE, s, k in scan_points(p):
            runs.append(AlanineCoverage(method="erbs", temperature=300.0, barrier=dE, bandwidth=s, n_components=k,
                                        name=run_name(dE, s, k), **common))
            if (dE, s, k) in (ERBS_A, ERBS_B):
                named["ERBS A" if (dE, s, k) == ERBS_A else "ERBS B"] = runs[-1]
    with project.group(GROUP, "summary"):
        CoverageSummary(runs=runs, name="CoverageSummary")
    if "crossval" in p:
        _cross_validation(project, p["crossval"], named)


def _cross_validation(project: zntrack.Project, q: dict, named: dict) -> None:
    """Fig. 3: a dataset and a GMNN per trajectory, every model on every validation set."""
    labels = ["MD 300K", "MD 1200K", "ERBS A", "ERBS B"]
    datasets, models = [], []
    with project.group(GROUP, "crossval"):
        for label in labels:
            tag = label.replace(" ", "")
            data = AlanineDataset(source=named[label], n_train=q["n_train"], n_val=q["n_val"], seed=0,
                                  name=f"{tag}Data")
            datasets.append(data)
            models.append(TrainModel(data=data.frames, validation_data=data.validation_frames, config=MODEL,
                                     overrides=q["overrides"], name=f"{tag}Model"))
        CrossValidation(models=models, datasets=datasets, labels=labels, name="CrossValidation")
