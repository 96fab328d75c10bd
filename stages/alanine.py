"""Alanine dipeptide coverage benchmark (seed 2 §3.1, Fig. 2) and dataset cross-validation (Fig. 3).

Graph: for every point of the scan one :class:`~lotf.nodes.alanine.AlanineCoverage` run of
ACE-ALA-NME in vacuum on Amber99SB (Langevin, 0.5 fs, a kernel every 10,000 steps, 80 ps in the
paper profile), the unbiased baselines at 300 K and 1200 K, and a
:class:`~lotf.nodes.alanine.CoverageSummary` (best coverage and its parameters, dissociated runs,
the Fig. 2 plot). Runs that dissociate are recorded and left out of the best, never fatal.

Paper profile: ΔE ∈ {5, 10, 15, 20, 25}, σ ∈ {0.05, 0.1, 0.2, 0.5}, k ∈ {2, 4, 6, 8, 10}
(100 ERBS runs) read in the erbs code's convention (``convention`` "code": ΔE in k_B T, σ the
kernel variance; README "ERBS benchmark"). Smoke profile: MD 300/1200 K and ERBS A and B, 2 ps
each with a kernel every 500 steps.

Fig. 3 (paper profile only; ``crossval`` in the profile): 1800 training and 200 validation frames
of MD-300K, MD-1200K, ERBS A and ERBS B are the subject of the follow-up nodes, which are not
built yet (see README).
"""

from __future__ import annotations

import itertools

import zntrack

from lotf.nodes.alanine import AlanineCoverage, CoverageSummary
from stages.common import BuildError, check_profile

NAME = "alanine"
GROUP = "alanine"
ERBS_A = (25.0, 0.1, 10)  # ΔE, σ, k (seed 2 "ERBS A")
ERBS_B = (20.0, 0.05, 4)  # the best of seed 2's scan ("ERBS B")

PROFILES = {
    "paper": dict(steps=160_000, interval=10_000, sampling_rate=20, barriers=(5.0, 10.0, 15.0, 20.0, 25.0),
                  bandwidths=(0.05, 0.1, 0.2, 0.5), components=(2, 4, 6, 8, 10), convention="code"),
    "smoke": dict(steps=4_000, interval=500, sampling_rate=20, points=(ERBS_A, ERBS_B), convention="code"),
}


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
    runs = []
    with project.group(GROUP, "baselines"):
        for t in (300.0, 1200.0):
            runs.append(AlanineCoverage(method="md", temperature=t, name=f"MD{int(t)}K", **common))
    with project.group(GROUP, "scan"):
        for dE, s, k in scan_points(p):
            runs.append(AlanineCoverage(method="erbs", temperature=300.0, barrier=dE, bandwidth=s, n_components=k,
                                        name=run_name(dE, s, k), **common))
    with project.group(GROUP, "summary"):
        CoverageSummary(runs=runs, name="CoverageSummary")
