"""ERBS against seed 2's own benchmark (``lotf bench erbs``): alanine dipeptide (Φ, Ψ) coverage.

Seed 2 §3.1 / Fig. 2: ACE-ALA-NME in vacuum on Amber99SB, Langevin at 300 K, 0.5 fs, 80 ps, a
kernel every 10,000 steps; coverage = visited 15° × 15° cells. Runs, in this order, until the
time budget is spent: MD 300 K, MD 1200 K, ERBS B (ΔE 20, σ 0.05, k 4), ERBS A (ΔE 25, σ 0.1,
k 10), then one-at-a-time sweeps around B over seed 2's grid, then the rest of the grid. The
parameters are read in the erbs code's convention by default (ΔE in k_B T, σ the kernel
variance; README "ERBS benchmark"); ``--convention reference`` adds the erbs code's kernel
arithmetic and few-reference projection, ``reference_bessel`` also its earlier Bessel descriptor.

``duration_ps`` shorter than 80 shortens every run and scales the deposition interval with it,
so every run still deposits 16 kernels (the interval used is reported). ``--friction`` sets the
Langevin friction (1/fs, default 0.01; seed 2 states none, and the ERBS runs' coverage depends on
it because every deposition does work on the molecule that the thermostat has to remove).

The BMIM-BF4 exploration gain (seed 2 §3.3, ``msd_ratio_*``) is read from a finished BMIM-BF4
oracle project (``--bmim-project``; its ``exploration`` group runs MD, UDD and ERBS with the
production model, see ``lotf bench validation --bmim``); without one those fields are null with a
``blocked`` reason.

Prints one JSON object; run as ``python benchmarks/erbs.py [--duration-ps 20] [--budget-s 3600]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

ERBS_A = (25.0, 0.1, 10)
ERBS_B = (20.0, 0.05, 4)
GRID = dict(barriers=(5.0, 10.0, 15.0, 20.0, 25.0), bandwidths=(0.05, 0.1, 0.2, 0.5), components=(2, 4, 6, 8, 10))
BLOCKED = ("no BMIM-BF4 oracle project given (--bmim-project): seed 2 §3.3's MD/UDD/ERBS runs are part of the "
           "oracle campaign (`lotf bench validation --bmim`), too long to run here")


def exploration_gain(project: str | Path | None) -> dict:
    """The MSD ratios of a finished BMIM-BF4 oracle project (benchmarks/validation.py reads them)."""
    if project is None:
        return {"msd_ratio_erbs_vs_md": None, "msd_ratio_udd_vs_md": None, "blocked": BLOCKED}
    from lotf.cli import _load_benchmark  # the benchmarks are scripts, loaded by path

    out = _load_benchmark("validation").bmim_exploration_summary(Path(project))
    if not out:
        raise ValueError(f"{project}: no finished BMIM-BF4 exploration runs (nodes/bmim-bf4/exploration/Metrics)")
    return out


def scan_order() -> list[tuple[float, float, int]]:
    """B, A, the one-at-a-time sweeps around B, then the rest of the grid (row order)."""
    order = [ERBS_B, ERBS_A]
    dE0, s0, k0 = ERBS_B
    order += [(dE, s0, k0) for dE in GRID["barriers"]] + [(dE0, s, k0) for s in GRID["bandwidths"]]
    order += [(dE0, s0, k) for k in GRID["components"]]
    order += list(itertools.product(GRID["barriers"], GRID["bandwidths"], GRID["components"]))
    seen, out = set(), []
    for p in order:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def erbs_benchmark(duration_ps: float = 80.0, budget_s: float = 3600.0, convention: str = "code",
                   max_erbs_runs: int | None = None, sampling_rate: int = 20, seed: int = 0,
                   friction: float = 0.01, bmim_project: str | Path | None = None) -> dict:
    from lotf.nodes.alanine import public, run_alanine

    gain = exploration_gain(bmim_project)  # first: a wrong path fails before an hour of MD

    if not duration_ps > 0:
        raise ValueError(f"duration_ps must be > 0, got {duration_ps}")
    from lotf.nodes.alanine import CONVENTIONS

    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    if not friction > 0:
        raise ValueError(f"friction must be > 0 (1/fs), got {friction}")
    steps = int(round(duration_ps * 1000 / 0.5))
    interval = max(1, int(round(10_000 * duration_ps / 80.0)))
    sampling_rate = max(1, min(sampling_rate, steps))
    t_start = time.perf_counter()
    common = dict(steps=steps, sampling_rate=sampling_rate, interval=interval, convention=convention, seed=seed,
                  keep_positions=False, friction=float(friction))
    runs = []
    md = {}
    for t in (300.0, 1200.0):
        r = run_alanine("md", t, **common)
        md[t] = r
        runs.append(public(r) | {"coverage_vs_time": r["coverage_vs_time"]})
    erbs_runs = []
    for k, (dE, s, nc) in enumerate(scan_order()):
        elapsed = time.perf_counter() - t_start
        mean = sum(r["wall_s"] for r in erbs_runs) / len(erbs_runs) if erbs_runs else 0.0
        must = (dE, s, nc) in (ERBS_A, ERBS_B)
        if not must and (elapsed + mean > budget_s or (max_erbs_runs is not None and len(erbs_runs) >= max_erbs_runs)):
            break
        r = run_alanine("erbs", 300.0, barrier=dE, bandwidth=s, n_components=nc, **common)
        erbs_runs.append(r)
        runs.append(public(r) | {"coverage_vs_time": r["coverage_vs_time"]})

    def find(p):
        for r in erbs_runs:
            if (r["barrier"], r["bandwidth"], r["n_components"]) == p:
                return r
        return None

    intact = [r for r in erbs_runs if not r["dissociated"]]
    best = max(intact, key=lambda r: r["coverage"], default=None)
    a, b = find(ERBS_A), find(ERBS_B)
    # a run that dissociated after a few steps costs its compile time only: time per run and per
    # step come from the runs that went the whole way (all runs if none did)
    full = intact or erbs_runs
    erbs_wall = [r["wall_s"] for r in full]
    return {
        "duration_ps": duration_ps, "steps": steps, "interval": interval, "timestep_fs": 0.5,
        "sampling_rate": sampling_rate, "convention": convention, "friction_per_fs": float(friction),
        "coverage_md_300": md[300.0]["coverage"], "coverage_md_1200": md[1200.0]["coverage"],
        "md_1200_dissociated": md[1200.0]["dissociated"],
        "coverage_erbs_best": best["coverage"] if best else None,
        "erbs_best_params": ({"barrier": best["barrier"], "bandwidth": best["bandwidth"],
                              "n_components": best["n_components"]} if best else None),
        "coverage_erbs_a": a["coverage"], "erbs_a_dissociated": a["dissociated"],
        "coverage_erbs_b": b["coverage"], "erbs_b_dissociated": b["dissociated"],
        "n_erbs_runs": len(erbs_runs), "n_dissociated": sum(r["dissociated"] for r in erbs_runs),
        "s_per_run": sum(erbs_wall) / len(erbs_wall),
        "s_per_run_md": (md[300.0]["wall_s"] + md[1200.0]["wall_s"]) / 2,
        "ms_per_step_erbs": 1e3 * sum(erbs_wall) / max(sum(r["steps_done"] for r in full), 1),
        **gain,
        "wall_s": time.perf_counter() - t_start,
        "targets": {"best_ge_0.6": bool(best and best["coverage"] >= 0.6),
                    "md300_below_half_best": bool(best and md[300.0]["coverage"] < 0.5 * best["coverage"])},
        "runs": runs,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-ps", type=float, default=80.0)
    parser.add_argument("--budget-s", type=float, default=3600.0)
    parser.add_argument("--convention", default="code",
                        choices=("code", "code_d", "text", "reference", "reference_bessel"))
    parser.add_argument("--max-erbs-runs", type=int, default=None)
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction in 1/fs (seed 2 gives none)")
    parser.add_argument("--bmim-project", default=None, help="finished BMIM-BF4 oracle project for the MSD ratios")
    args = parser.parse_args(argv)
    print(json.dumps(erbs_benchmark(args.duration_ps, args.budget_s, args.convention, args.max_erbs_runs,
                                    friction=args.friction, bmim_project=args.bmim_project)))


if __name__ == "__main__":
    main()
