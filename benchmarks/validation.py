"""The water oracle campaign end to end against its ground truth (`lotf bench validation`).

Builds the `oracle` profile of the water campaign in a fresh git + DVC project, runs `dvc repro`
(labels, truth MD and observables from the SPC/Fw force field in OpenMM; both active-learning
workflows; every model's MD) and prints one JSON object: the final models' D over the
reference's D, the O-O RDF deviation of the better final model, its mean temperature and stable
time, the test force MAE (reference-labelled frames from the reference's own MD) of the first
and the last model, and the wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def water_summary(directory: Path) -> dict:
    """The benchmark's numbers from a finished oracle project (also used by the demo)."""
    nodes = Path(directory) / "nodes" / "water"
    comparison = json.loads((nodes / "production" / "Comparison" / "metrics.json").read_text())
    models = comparison["models"]
    out = {"water_reference_D_A2_per_ns": comparison["reference"]["D_A2_per_ns"]}
    finals = {}
    for bias in ("md", "erbs"):
        table = pd.read_csv(nodes / bias / "report" / "CampaignReport" / "report" / "iterations.csv")
        final = models[f"{bias}-{table['iteration'].iloc[-1]}"]
        finals[bias] = final
        out[f"water_{bias}_D_ratio"] = final["D_ratio"]
        out[f"water_{bias}_test_forces_mae"] = float(table["test_forces_mae"].iloc[-1])
        if bias == "md":  # both workflows start from the same bootstrap model
            out["water_test_forces_mae_first"] = float(table["test_forces_mae"].iloc[0])
    deviation = {b: finals[b].get("rdf_max_abs_dev") for b in finals}
    best = min(finals, key=lambda b: deviation[b] if deviation[b] == deviation[b] else float("inf"))  # NaN last
    out.update(water_best=best, water_rdf_max_abs_dev=finals[best].get("rdf_max_abs_dev"),
               water_T_mean_K=finals[best]["T_mean_K"], water_stable_ps=finals[best]["stable_ps"],
               water_test_forces_mae_last=out[f"water_{best}_test_forces_mae"])
    return out


def validation_benchmark(directory: str | None = None) -> dict:
    from lotf.demo import prepare_project

    start = time.perf_counter()
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    project = Path(directory or tempfile.mkdtemp(prefix="lotf-validation-")) / "project"
    prepare_project(project, ["water"], "oracle")
    subprocess.run(["dvc", "repro", "-q"], cwd=project, check=True)
    out = water_summary(project)
    out["wall_s"] = time.perf_counter() - start
    out["project"] = str(project)
    return out


if __name__ == "__main__":
    print(json.dumps(validation_benchmark()))
