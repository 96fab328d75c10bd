"""`water_summary` (lotf bench validation, the demo) on the files a finished water oracle project
holds, written by hand here."""

import json

import pytest


def _project(tmp_path, md_mae, erbs_mae, md_rdf, erbs_rdf):
    nodes = tmp_path / "nodes" / "water"
    models = {}
    for bias, maes, rdf in (("md", md_mae, md_rdf), ("erbs", erbs_mae, erbs_rdf)):
        report = nodes / bias / "report" / "CampaignReport" / "report"
        report.mkdir(parents=True)
        rows = ["iteration,test_forces_mae"] + [f"{it},{m}" for it, m in zip(["B1", "AL1", "AL2"], maes)]
        (report / "iterations.csv").write_text("\n".join(rows) + "\n")
        models[f"{bias}-AL2"] = {"D_ratio": 0.9, "rdf_max_abs_dev": rdf, "T_mean_K": 300.0, "stable_ps": 50.0}
    comparison = nodes / "production" / "Comparison"
    comparison.mkdir(parents=True)
    (comparison / "metrics.json").write_text(json.dumps(
        {"models": models, "reference": {"D_A2_per_ns": 190.0, "rdf_noise_floor": 0.06}}))
    return tmp_path


def test_water_summary_reads_the_final_models_and_each_workflows_error_ratio(tmp_path):
    from benchmarks.validation import water_summary

    out = water_summary(_project(tmp_path, [46.0, 30.0, 24.0], [46.0, 25.0, 18.4], 0.07, float("nan")))
    # the better final model by RDF (a NaN deviation comes last) gives the headline numbers
    assert out["water_best"] == "md" and out["water_rdf_max_abs_dev"] == 0.07
    assert out["water_test_forces_mae_first"] == 46.0 and out["water_test_forces_mae_last"] == 24.0
    # each workflow's final test error over the shared first model's
    assert out["water_md_test_forces_mae_ratio"] == pytest.approx(24.0 / 46.0)
    assert out["water_erbs_test_forces_mae_ratio"] == pytest.approx(0.4)
