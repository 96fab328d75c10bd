"""The BMIM-BF4 oracle profile: every Table 1 row at reduced scale, labelled by the CL&P force field,
with the reference's own MD as ground truth (README "Ground truth: the oracle profile")."""

import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ase import units

from lotf.campaign import load_campaign
from tests.campaigns.test_build import REPO, lotf

CAMPAIGN = REPO / "campaigns" / "bmim_bf4.yaml"


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict:
    """The built oracle graph: stages and params."""
    out = tmp_path_factory.mktemp("bmim") / "oracle"
    run = lotf("build", "--config", str(CAMPAIGN), "--profile", "oracle", "--out", str(out), cwd=REPO)
    assert run.returncode == 0, run.stderr
    return {"stages": yaml.safe_load((out / "dvc.yaml").read_text())["stages"],
            "params": yaml.safe_load((out / "params.yaml").read_text())}


def test_the_oracle_keeps_every_table_1_row():
    paper, oracle = load_campaign(CAMPAIGN), load_campaign(CAMPAIGN, "oracle")
    assert [row["name"] for row in oracle.iterations] == [row["name"] for row in paper.iterations]
    assert [row["name"] for row in oracle.iterations] == [f"ML{k}" for k in range(1, 18)]
    for old, new in zip(paper.iterations, oracle.iterations):
        assert new.get("kind") == old.get("kind") and new.get("start") == old.get("start")
        if "sampling" in old:
            assert new["sampling"]["steps"] < old["sampling"]["steps"]  # reduced scale
            assert new["sampling"].get("modifiers") == old["sampling"].get("modifiers")
            # Table 1's uncertainty stop (at 2.0 eV/Å) plus a stop when a covalent bond breaks or forms
            assert [check["kind"] for check in old["sampling"]["checks"]] == ["forces_uncertainty"]
            assert [check["kind"] for check in new["sampling"]["checks"]] == ["forces_uncertainty", "bond_graph"]
    rows = {row["name"]: row for row in oracle.iterations}
    assert [sampler["sampling"]["checks"] for sampler in rows["ML16"]["options"]["samplers"]] == [[]]  # as published
    # the NPT samplers start from the seed's frame, not from the loop model's FIRE result (published:
    # geo_opt), which puts a cation H into an anion (README "Ground truth", fourteenth run)
    assert [sampler["start"] for sampler in rows["ML16"]["options"]["samplers"]] == ["seed"]
    assert [sampler["start"] for sampler in rows["ML17"]["options"]["samplers"]] == ["seed", "seed"]


def test_the_oracle_graph_has_every_row_and_the_same_stage_kinds(oracle):
    stages = oracle["stages"]
    for k in range(1, 18):
        assert any(name.startswith(f"bmim-bf4_ML{k}_") for name in stages), f"ML{k}"
    for stage in ("bmim-bf4_classical_GromacsSeed", "bmim-bf4_ML0_TrainModel", "bmim-bf4_ML11_PackedLabel",
                  "bmim-bf4_ML13_VolumeScan0", "bmim-bf4_ML16_ModelNoD3", "bmim-bf4_ML17_ModelDFT",
                  "bmim-bf4_report_CampaignReport"):
        assert stage in stages, stage
    assert not any("D3-" in name for name in stages)  # no invented D3
    for md in ("bmim-bf4_ML16_MD0", "bmim-bf4_ML17_MD1"):  # the NPT samplers, from the seed's frames
        assert "nodes/bmim-bf4/classical/GromacsSeed/frames.h5" in stages[md]["deps"], md
        assert not any("GeoOpt" in dep for dep in stages[md]["deps"]), md


def test_the_force_field_labels_everything(oracle):
    stages, params = oracle["stages"], oracle["params"]
    assert not any("CP2K" in name for name in stages)
    labelled = [name for name, values in params.items() if "forcefield" in values]  # labels and reference MD
    assert len(labelled) > 20 and "bmim-bf4_ML16_TrainDFT" in labelled and "bmim-bf4_reference_TestSet" in labelled
    for name in labelled:
        assert params[name]["forcefield"] == "bmim_bf4" and params[name]["cutoff"] == 7.0, name
    # ML17's hybrid MLP+D3 NPT runs without D3 (the force field has none)
    assert not params["bmim-bf4_ML17_MD1"].get("d3")


def test_the_d3_free_and_final_models_start_from_the_loop_model(oracle, tmp_path):
    """model.warm_start_final: the D3-free branch and the production model continue the loop's
    model; the paper profile trains them from scratch (seed 1); a final variant with another
    architecture cannot start from the loop's model and fails at build time."""
    deps = {name: [d for d in oracle["stages"][name]["deps"] if d.endswith("/model")]
            for name in ("bmim-bf4_ML16_ModelNoD3", "bmim-bf4_ML16_TrainModel", "bmim-bf4_ML17_ModelDFT")}
    assert deps == {"bmim-bf4_ML16_ModelNoD3": ["nodes/bmim-bf4/ML15/TrainModel/model"],
                    "bmim-bf4_ML16_TrainModel": ["nodes/bmim-bf4/ML16/ModelNoD3/model"],
                    "bmim-bf4_ML17_ModelDFT": ["nodes/bmim-bf4/ML16/TrainModel/model"]}
    paper = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert not [d for d in paper["bmim-bf4_ML16_ModelNoD3"]["deps"] if d.endswith("/model")]
    # the production model alone weighs energy and stress up (the density; README "Ground truth")
    training = oracle["params"]["bmim-bf4_ML17_ModelDFT"]["overrides"]["training"]
    assert training["energy_loss"]["weight"] == 20.0 and training["stress_loss"]["weight"] == 2.0
    assert oracle["params"]["bmim-bf4_ML16_TrainModel"]["overrides"] == {}
    campaign = yaml.safe_load(CAMPAIGN.read_text())
    campaign["profiles"]["oracle"]["model"]["final_variants"] = {"DFT": {"overrides": {"model": {"r_max": 6.0}}}}
    changed = tmp_path / "bmim_bf4.yaml"
    changed.write_text(yaml.safe_dump(campaign, sort_keys=False))
    run = lotf("build", "--config", str(changed), "--profile", "oracle", "--out", str(tmp_path / "out"), cwd=REPO)
    assert run.returncode != 0 and run.stderr.strip().count("\n") == 0
    assert "final_variants DFT: warm_start_final needs the loop's model architecture, but 'r_max' differs (5.0 vs 6.0)" in run.stderr


def test_the_truth_runs_and_the_comparison(oracle):
    stages, params = oracle["stages"], oracle["params"]
    nvt, npt = params["bmim-bf4_reference_NVT353K"], params["bmim-bf4_reference_NPT300K"]
    assert nvt["ensemble"] == "nvt" and nvt["temperature"] == 353.0
    assert npt["ensemble"] == "npt" and npt["temperature"] == 300.0 and npt["replicate"] == [1, 1, 1]
    tests = [name for name in stages if name.startswith("bmim-bf4_reference_Test") and name.endswith("K")]
    assert len(tests) >= 2  # the test set: the reference's MD at several temperatures
    report_deps = " ".join(stages["bmim-bf4_report_CampaignReport"]["deps"])
    assert "reference/TestSet" in report_deps and "classical/TestSet" not in report_deps
    production = params["bmim-bf4_production_NVT353K"]
    assert production["ensemble"] == "nvt"  # no uncertainty stop: only the bond and contact check
    assert [c["kind"] for c in production["checks"]] == ["bond_graph"]
    assert params["bmim-bf4_production_NPT300K"]["ensemble"] == "npt"
    # the model's density comes from an NPT as long as the reference's own (15 ps were still drifting)
    assert params["bmim-bf4_production_NPT300K"]["steps"] * params["bmim-bf4_production_NPT300K"]["timestep"] \
        >= npt["steps"] * npt["timestep"]
    for stage in ("bmim-bf4_production_Comparison", "bmim-bf4_production_DensityComparison",
                  "bmim-bf4_reference_Density", "bmim-bf4_production_Density"):
        assert stage in stages, stage
    # the density from independent NPT runs of the model and of the reference (distinct seeds, same
    # start), all of them read by the comparison
    model_runs = ["bmim-bf4_production_NPT300K", "bmim-bf4_production_NPT300K_2", "bmim-bf4_production_NPT300K_3"]
    reference_runs = [name.replace("production", "reference") for name in model_runs]
    for runs in (model_runs, reference_runs):
        assert len({params[name]["seed"] for name in runs}) == 3
        assert len({json.dumps({k: v for k, v in params[name].items() if k != "seed"}, sort_keys=True)
                    for name in runs}) == 1
    comparison_deps = " ".join(stages["bmim-bf4_production_DensityComparison"]["deps"])
    for density in ("production/Density", "production/Density_2", "production/Density_3",
                    "reference/Density", "reference/Density_2", "reference/Density_3"):
        assert f"{density}/" in comparison_deps or comparison_deps.endswith(density), density
    assert params["bmim-bf4_production_DensityComparison"]["names"] == ["DFT"] * 3


def test_the_paper_and_smoke_profiles_have_no_truth():
    for profile in ("paper", "smoke"):
        assert "truth" not in load_campaign(CAMPAIGN, profile).sections


def check_physical(out: dict) -> None:
    """The oracle's numbers are physical (not the targets: a density within 15 %, T within 10 %)."""
    assert math.isfinite(out["bmim_density_g_cm3"]) and abs(out["bmim_density_rel_err"]) < 0.15
    assert 1.0 < out["bmim_reference_density_g_cm3"] < 1.4  # CL&P: about 1.2 g/cm³ at 300 K
    assert abs(out["bmim_reference_T_mean_K"] - 353.0) < 35.3
    assert abs(out["bmim_npt_T_mean_K"] - 300.0) < 30.0
    assert out["bmim_stable_ps"] > 0
    assert abs(out["bmim_T_mean_K"] - 353.0) < 35.3
    assert all(math.isfinite(v) and v > 0 for v in out["bmim_test_forces_mae"].values())
    # the loop learns: the final model's test force error is at most half the classical model's
    assert out["bmim_test_forces_mae_last"] <= 0.5 * out["bmim_test_forces_mae_first"]


@pytest.mark.slow
def test_the_oracle_runs_end_to_end_and_its_numbers_are_physical(tmp_path):
    """The whole campaign with `dvc repro` (80 min on 2 shared cores)."""
    sys.path.insert(0, str(REPO))
    from benchmarks.validation import _run_oracle, bmim_summary

    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    try:
        _run_oracle(tmp_path / "bmim", "bmim_bf4")
    except subprocess.CalledProcessError as err:
        pytest.fail(f"dvc repro failed: {err}")
    check_physical(bmim_summary(tmp_path / "bmim"))

def test_the_benchmark_summary_reads_the_finished_project(tmp_path):
    """`bmim_summary` on the files a finished oracle project holds (written by hand here)."""
    import json

    import pandas as pd

    sys.path.insert(0, str(REPO))
    from benchmarks.validation import bmim_summary

    nodes = tmp_path / "nodes" / "bmim-bf4"

    def write(where: str, metrics: dict) -> None:
        (nodes / where).mkdir(parents=True)
        (nodes / where / "metrics.json").write_text(json.dumps(metrics))

    write("production/DensityComparison", {"reference": {"density_g_cm3": 1.2, "runs_g_cm3": [1.19, 1.21]},
                                           "models": {"DFT": {"density_g_cm3": 1.23, "density_rel_err": 0.025,
                                                              "density_rel_err_sem": 0.01,
                                                              "runs_g_cm3": [1.22, 1.24]}}})
    write("production/Comparison", {"reference": {"D_A2_per_ns": 5.0, "T_mean_K": 352.0},
                                    "models": {"DFT": {"D_ratio": 1.4, "T_mean_K": 350.0, "stable_ps": 12.5,
                                                       "stop_reason": "bond_graph", "rdf_max_abs_dev": 0.3}}})
    write("production/NPT300K", {"temperature_mean_K": 301.0})
    (nodes / "report" / "CampaignReport" / "report").mkdir(parents=True)
    pd.DataFrame({"iteration": ["classical", "ML0", "ML17"], "test_forces_mae": [300.0, 200.0, 90.0],
                  "test_energy_mae": [9.0, 5.0, 2.0], "steps_before_stop": [float("nan"), float("nan"), 40.0]}
                 ).to_csv(nodes / "report" / "CampaignReport" / "report" / "iterations.csv", index=False)
    out = bmim_summary(tmp_path)
    assert out["bmim_density_rel_err"] == 0.025 and out["bmim_density_ok"]
    assert out["bmim_density_runs_g_cm3"] == [1.22, 1.24] and out["bmim_density_rel_err_sem"] == 0.01
    assert out["bmim_reference_density_runs_g_cm3"] == [1.19, 1.21]
    assert out["bmim_stable_ps"] == 12.5 and not out["bmim_stable_ok"] and out["bmim_stop_reason"] == "bond_graph"
    assert out["bmim_test_forces_mae"] == {"classical": 300.0, "ML0": 200.0, "ML17": 90.0}
    assert out["bmim_test_forces_mae_first"] == 300.0 and out["bmim_test_forces_mae_last"] == 90.0
    assert out["bmim_steps_before_stop"]["ML17"] == 40.0 and out["bmim_steps_before_stop"]["ML0"] is None
    json.dumps(out)  # the benchmark prints it as JSON
    assert "bmim_msd_ratio_erbs_vs_md" not in out  # no exploration runs in this project


def test_the_exploration_gain_is_read_from_the_finished_project(tmp_path):
    """`lotf bench erbs --bmim-project` and `bmim_summary` read seed 2 §3.3's MSD ratios from the
    oracle's exploration Metrics: the best ERBS and UDD run over plain MD; a run without frames
    (NaN) or of one frame (MSD 0) is not a candidate, and an MD of one frame gives no ratio; no
    project gives null ratios with a reason, a wrong one one error."""
    import json

    from lotf.cli import _load_benchmark

    erbs = _load_benchmark("erbs")
    metrics = tmp_path / "nodes" / "bmim-bf4" / "exploration" / "Metrics"
    metrics.mkdir(parents=True)
    (metrics / "metrics.json").write_text(json.dumps({
        "MD": {"max_com_msd_A2": 2.0, "n_frames": 501},
        "UDD-A1-B0p5": {"max_com_msd_A2": 3.0, "n_frames": 501},
        "UDD-A2-B0p5": {"max_com_msd_A2": float("nan"), "n_frames": 0},
        "ERBS-dE1p5-sigma2-k2": {"max_com_msd_A2": 9.0, "n_frames": 501},
        "ERBS-dE3-sigma2-k2": {"max_com_msd_A2": 5.0, "n_frames": 120},
        "ERBS-dE9-sigma2-k2": {"max_com_msd_A2": 0.0, "n_frames": 1},  # stopped at its first frame
        "pca_explained_variance": [0.5, 0.2]}))
    out = erbs.exploration_gain(tmp_path)
    assert out["msd_ratio_erbs_vs_md"] == 4.5 and out["msd_erbs_run"] == "ERBS-dE1p5-sigma2-k2"
    assert out["msd_ratio_udd_vs_md"] == 1.5 and out["msd_udd_run"] == "UDD-A1-B0p5"
    # a plain MD of one frame measured nothing: no ratio rather than a division by zero
    data = json.loads((metrics / "metrics.json").read_text())
    data["MD"] = {"max_com_msd_A2": 0.0, "n_frames": 1}
    data["ERBS-dE1p5-sigma2-k2"]["n_frames"] = 1
    (metrics / "metrics.json").write_text(json.dumps(data))
    out = erbs.exploration_gain(tmp_path)
    assert out["msd_ratio_erbs_vs_md"] is None and out["msd_erbs_run"] == "ERBS-dE3-sigma2-k2"
    assert erbs.exploration_gain(None)["msd_ratio_erbs_vs_md"] is None and erbs.exploration_gain(None)["blocked"]
    with pytest.raises(ValueError, match="no finished BMIM-BF4 exploration runs"):
        erbs.exploration_gain(tmp_path / "elsewhere")


def test_each_iteration_starts_from_the_last_intact_structure_of_the_one_before(oracle):
    """'previous' is the last pool structure (MD, then FIRE) that passes the row's screening
    (intact molecules), not the FIRE result as it is: one FIRE that formed a bond otherwise
    started every later iteration and every later pool was screened out (fifth oracle run)."""
    stages, params = oracle["stages"], oracle["params"]
    hand_on = stages["bmim-bf4_ML1_NextStart"]
    assert "nodes/bmim-bf4/ML1/Pool/frames.h5" in hand_on["deps"]
    assert params["bmim-bf4_ML1_NextStart"]["screening"]["intact_molecules"] is True
    assert "nodes/bmim-bf4/ML1/NextStart/frames.h5" in stages["bmim-bf4_ML2_MDSampling"]["deps"]
    assert not any(dep.startswith("nodes/bmim-bf4/ML1/GeometryOptimisation")
                   for dep in stages["bmim-bf4_ML2_MDSampling"]["deps"])


def test_oracle_exploration_runs_md_udd_and_erbs_with_the_production_model(oracle):
    """Seed 2 §3.3 on the oracle: MD, UDD and ERBS from the same seed frame, driven by the
    production model itself (no extra model trained), kernels deposited 20 times per run."""
    stages, params = oracle["stages"], oracle["params"]
    runs = {"MD": "md", "UDD-A1-B0p5": "udd", "ERBS-dE1p5-sigma2-k2": "erbs"}
    assert not any(name.startswith("bmim-bf4_exploration_Model") or "TrainSubset" in name for name in stages)
    for name, method in runs.items():
        p = params[f"bmim-bf4_exploration_{name}"]
        assert p["method"] == method and p["thermostat"] == "berendsen" and p["timestep"] == 0.5
        assert p["steps"] == params["bmim-bf4_exploration_MD"]["steps"]
        deps = stages[f"bmim-bf4_exploration_{name}"]["deps"]
        assert "nodes/bmim-bf4/ML17/ModelDFT/model" in deps  # the production model
        assert "nodes/bmim-bf4/classical/GromacsSeed/frames.h5" in deps
    erbs = params["bmim-bf4_exploration_ERBS-dE1p5-sigma2-k2"]
    assert erbs["steps"] // erbs["bias"]["interval"] == 20
    assert params["bmim-bf4_exploration_Metrics"]["names"] == list(runs)
    # seed 2's (ΔE 1.5, σ 2) as the erbs code reads them: 1.5 k_B T for the whole box, σ a variance
    # (read as "1.5 eV per atom" the bias is 450 eV and broke a molecule within 0.24 ps)
    assert erbs["bias"]["barrier"] == pytest.approx(1.5 * units.kB * 300.0)
    assert erbs["bias"]["per_atom"] is False and erbs["bias"]["bandwidth"] == pytest.approx(2.0**0.5)


def test_exploration_runs_read_seed2_parameters_in_either_convention():
    """ERBS (ΔE, σ) and UDD's A, as the apax/erbs code reads them or as seed 2's text writes them."""
    from stages.ionic_liquid import exploration_runs

    runs = exploration_runs([1.0], [0.5], [0.5], [], [], interval=100)
    code = runs["ERBS-dE0p5-sigma2-k2"]["bias"]
    assert code["barrier"] == pytest.approx(0.5 * units.kB * 300.0) and code["per_atom"] is False
    assert code["bandwidth"] == pytest.approx(2.0**0.5) and code["interval"] == 100
    # apax's UncertaintyDrivenDynamics(height=A): E_UDD in [-A, 0] for the whole box, A in eV
    assert runs["UDD-A1-B0p5"]["bias"] == {"height": 1.0, "width": 0.5, "per_atom": False}
    runs = exploration_runs([1.0], [0.5], [], [5.0], [], interval=100, seed2_convention="text")
    text = runs["ERBS-dE1p5-sigma5-k2"]["bias"]
    assert (text["barrier"], text["per_atom"], text["bandwidth"]) == (1.5, True, 5.0)
    assert runs["UDD-A1-B0p5"]["bias"] == {"height": 1.0, "width": 0.5, "per_atom": True}  # 1 eV per atom
    for erbs in ([1.5], []):  # refused also when no ERBS run reads it
        with pytest.raises(ValueError, match="convention must be one of code, text, got 'paper'"):
            exploration_runs([1.0], [0.5], erbs, [], [], seed2_convention="paper")


def test_oracle_refuses_non_bonded_contacts_in_md_screening_and_production(oracle):
    """The contact rule (0.55 x the van der Waals sum) in every loop MD's bond check, every row's
    screening (selection and hand-on), and the production runs that measure stable_ps; the
    profile's `iterations.screening` is merged into each row's own screening."""
    stages, params = oracle["stages"], oracle["params"]
    loop = [name for name in stages if re.fullmatch(r"bmim-bf4_ML\d+_MDSampling", name)]
    assert len(loop) >= 10
    for name in loop:
        bond = [c for c in params[name]["checks"] if c["kind"] == "bond_graph"]
        assert bond and bond[0]["contact_factor"] == 0.55, name
    for name in ("bmim-bf4_ML5_MaxDistSelection", "bmim-bf4_ML5_NextStart"):
        screening = params[name]["screening"]
        assert screening["contact_factor"] == 0.55 and screening["intact_molecules"] is True
    for run in ("NVT353K", "NPT300K"):
        assert params[f"bmim-bf4_production_{run}"]["checks"] == [{"kind": "bond_graph", "contact_factor": 0.55}]
