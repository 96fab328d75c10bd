"""`lotf build`: deterministic graphs that match the committed root files; build-time errors."""

import filecmp
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT_FILES = ("dvc.yaml", "params.yaml", "zntrack.json")


def fresh_project(path: Path) -> Path:
    path.mkdir()
    for name in ("stages", "models", "data", "campaigns"):
        shutil.copytree(REPO / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=path, check=True)
    return path


def lotf(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lotf.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_paper_build_is_deterministic_and_matches_committed_files(tmp_path):
    # the committed files came from another process and checkout: equal bytes show determinism too
    project = fresh_project(tmp_path / "p")
    assert lotf("build", "--profile", "paper", cwd=project).returncode == 0
    first = {name: (project / name).read_bytes() for name in ROOT_FILES}
    for name in ROOT_FILES:
        assert filecmp.cmp(project / name, REPO / name, shallow=False), f"committed {name} is stale: run lotf build"
    dvc_yaml = first["dvc.yaml"].decode()
    for stage in ("bmim-bf4_ML15_TrainModel", "bmim-bf4_ML17_ModelDFT-D3-20", "water_erbs_AL10_MDSampling",
                  "water_md_AL10_TrainModel", "bmim-bf4_report_CampaignReport"):
        assert f"{stage}:" in dvc_yaml


def test_smoke_build_has_the_same_graph_shape_per_iteration(tmp_path):
    project = fresh_project(tmp_path / "s")
    run = lotf("build", "water", "--profile", "smoke", cwd=project)
    assert run.returncode == 0, run.stderr
    stages = (project / "dvc.yaml").read_text()
    assert "water_erbs_AL1_MDSampling:" in stages and "water_md_AL1_MaxDistSelection:" in stages
    assert "bmim-bf4" not in stages


def test_stages_run_without_zntracks_second_lock_process(tmp_path):
    import json

    import yaml

    from lotf.build import NO_STAGE_LOCK, skip_stage_locks

    project = fresh_project(tmp_path / "l")
    assert lotf("build", "water", "--profile", "smoke", cwd=project).returncode == 0
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert all(s["cmd"].startswith("zntrack run ") and s["cmd"].endswith(f" {NO_STAGE_LOCK}") for s in stages.values())
    graph = {"stages": {"a": {"cmd": "zntrack run m.A --name a"}, "b": {"cmd": "echo b"}}}
    assert skip_stage_locks(graph) == 1 and skip_stage_locks(graph) == 0  # once, and only ZnTrack's commands
    assert graph["stages"]["b"]["cmd"] == "echo b"

    run = subprocess.run(["dvc", "repro", "water_bootstrap_Water"], cwd=project, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    meta = json.loads((project / "nodes/water/bootstrap/Water/node-meta.json").read_text())
    assert meta["run_count"] == 1 and "lockfile" not in meta  # the stage ran, without the lock copy
    status = subprocess.run(["dvc", "status", "water_bootstrap_Water"], cwd=project, capture_output=True, text=True)
    assert "up to date" in status.stdout.lower()
    load = ("import zntrack; node = zntrack.from_rev('water_bootstrap_Water'); "
            "print(type(node).__name__, len(node.frames))")  # from_rev reads the command it ran
    loaded = subprocess.run([sys.executable, "-c", load], cwd=project, capture_output=True, text=True)
    assert loaded.returncode == 0 and loaded.stdout.split()[0] == "SmilesConformers", loaded.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (("build", "argon"), "unknown campaign 'argon'"),
    (("build", "water", "--profile", "huge"), "unknown profile 'huge'"),
])
def test_bad_campaign_or_profile_fails_naming_it(tmp_path, args, message):
    project = fresh_project(tmp_path / "e")
    run = lotf(*args, cwd=project)
    assert run.returncode != 0 and message in run.stderr and run.stderr.strip().count("\n") == 0
    assert not (project / "dvc.yaml").exists()


def test_unknown_iteration_setting_fails_at_build_time():
    sys.path.insert(0, str(REPO))
    from stages.common import BuildError, check_row

    with pytest.raises(BuildError, match="bmim_bf4 iteration ML3: unknown setting 'temprature'"):
        check_row("bmim_bf4", {"name": "ML3", "sampling": {}, "n_select": 5, "temprature": 300})


def test_paper_production_follows_seed_1_and_seed_2():
    """The committed paper graph: the production protocols of seed 1 and the observables of seed 2."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    nvt = {k: v for k, v in params.items() if k.startswith("bmim-bf4_production_nvt-") and "_NVT" in k}
    assert len(nvt) == 15  # 5 temperatures x 8/16/32 pairs
    assert {v["temperature"] for v in nvt.values()} == {283.0, 293.0, 313.0, 333.0, 353.0}
    for v in nvt.values():
        assert v["thermostat"] == "nose_hoover" and v["ensemble"] == "nvt" and v["timestep"] == 0.5
        assert v["steps"] * v["timestep"] == 20e6 and v["equilibration_steps"] * v["timestep"] == 5000.0  # 20 ns, 5 ps
        assert v["compress_steps"] * v["timestep"] == 5000.0 and v["density"] is None  # experimental density ...
        assert v["d3"] == {}
    for name in nvt:  # ... read from the table (a dependency) when the stage runs
        assert "data/experimental/bmim_bf4_density.csv" in stages[name]["deps"]
    boxes = {k: v for k, v in params.items() if re.match(r"bmim-bf4_production_.*_Box\d+$", k)}
    assert sorted(v["count"][0] for v in boxes.values()) == [8, 10, 16, 32]
    assert all(v["density"] == 0.9 for v in boxes.values())
    # NVT production uses MLP(D3(8 Å)); NPT densities: trained and hybrid models at every temperature
    assert "nodes/bmim-bf4/ML17/ModelDFT-D3-8/model" in stages["bmim-bf4_production_nvt-16_NVT353K"]["deps"]
    npt = {k: v for k, v in params.items() if k.startswith("bmim-bf4_production_npt_NPT")}
    assert len(npt) == 25 and all(v["ensemble"] == "npt" and v["steps"] * v["timestep"] == 1e6 for v in npt.values())
    assert all(v["equilibration_steps"] * v["timestep"] == 200e3 for v in npt.values())  # 200 ps NVT first
    hybrid = {k: v["d3"]["cutoff"] for k, v in npt.items() if v["d3"]}
    assert sorted(set(hybrid.values())) == [8.0, 20.0] and len(hybrid) == 10
    for name in hybrid:  # the hybrid adds D3 to the model trained without it
        assert "nodes/bmim-bf4/ML17/ModelDFT/model" in stages[name]["deps"]
    assert sorted(params["bmim-bf4_production_npt_Densities"]["labels"]) == sorted(
        ["MLP", "MLP(D3(8 Å))", "MLP(D3(20 Å))", "MLP+D3(8 Å)", "MLP+D3(20 Å)"] * 5)
    assert len(params["bmim-bf4_production_diffusion_Arrhenius"]["groups"]) == 4
    # seed 2: the BMIM exploration scan (MD, 6 x 4 UDD grid, ERBS one parameter at a time) and water D
    runs = [k for k in params if k.startswith("bmim-bf4_exploration_")
            and not k.endswith(("Metrics", "_Model", "_TrainSubset"))]  # the runs, not their model
    assert sum("UDD" in k for k in runs) == 24 and sum("ERBS" in k for k in runs) == 10 and len(runs) == 35
    trend = params["water_production_DiffusionTrend"]
    assert trend["reference"] == 241.0 and trend["series"].count("erbs") == trend["series"].count("md") == 11
    water = params["water_production_erbs_AL10_NVT300K"]
    assert water["steps"] * water["timestep"] == 5e6 and water["temperature"] == 300.0


def test_validation_truth_and_production_use_their_own_larger_box(tmp_path):
    # 32-water truth runs are no truth (D_ref 118-304 Å²/ns between runs): the validation profile
    # trains on 32-water boxes but runs the reference's NVT, and the models' production from its
    # last frame, in a 64-water box equilibrated by the reference
    import yaml

    project = fresh_project(tmp_path / "v")
    run = lotf("build", "water", "--profile", "validation", cwd=project)
    assert run.returncode == 0, run.stderr
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["water_reference_TruthBox"]["count"] == [64]
    assert "nodes/water/reference/TruthEquilibrated/frames.h5" in stages["water_reference_NVT300K"]["deps"]
    assert "nodes/water/reference/NVT300K/frames.h5" in stages["water_production_md_AL4_NVT300K"]["deps"]
    # four iterations (the demo runs two); only the final model of each workflow runs production
    assert {s for s in stages if s.endswith("_TrainModel")} >= {f"water_{w}_AL{k}_TrainModel"
                                                                 for w in ("md", "erbs") for k in (1, 2, 3, 4)}
    assert not any(s.startswith("water_production_") and "_AL3_" in s for s in stages)
    # the test set still comes from the training boxes (32 waters)
    assert "nodes/water/bootstrap/Equilibrated/frames.h5" in stages["water_reference_Test300K"]["deps"]
    # its warm starts: 150 epochs at the preset's rates (the demo's oracle keeps the preset's 30)
    assert params["water_md_AL4_TrainModel"]["overrides"]["training"] == {"warm_start_lr_factor": 1.0,
                                                                         "warm_start_epochs": 150}
    assert params["water_bootstrap_B1Model"]["overrides"]["training"]["warm_start_epochs"] == 150
    # D_ref from three independent truth runs (seeds 0-2, the same box and length): one run's D
    # scatters by about 20 % between runs; the models start from the first run's last frame
    truths = ["water_reference_NVT300K", "water_reference_NVT300K_2", "water_reference_NVT300K_3"]
    assert [params[name]["seed"] for name in truths] == [0, 1, 2]
    assert len({str({k: v for k, v in params[name].items() if k != "seed"}) for name in truths}) == 1
    comparison = " ".join(stages["water_production_Comparison"]["deps"])
    trend = " ".join(stages["water_production_DiffusionTrend"]["deps"])
    for diffusion in ("Diffusion", "Diffusion_2", "Diffusion_3"):
        assert f"nodes/water/reference/{diffusion}/metrics.json" in comparison.split()
        assert f"nodes/water/reference/{diffusion}/metrics.json" in trend.split()
    assert "water_reference_TruthBox" not in yaml.safe_load(
        (REPO / "tests" / "campaigns" / "snapshots" / "water-oracle.json").read_text()).get("params", {})
