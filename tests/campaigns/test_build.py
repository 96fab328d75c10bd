"""`lotf build`: deterministic graphs that match the committed root files; build-time errors."""

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT_FILES = ("dvc.yaml", "params.yaml", "zntrack.json")


def fresh_project(path: Path) -> Path:
    path.mkdir()
    for name in ("stages", "models", "data"):
        shutil.copytree(REPO / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=path, check=True)
    return path


def lotf(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lotf.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_paper_build_is_deterministic_and_matches_committed_files(tmp_path):
    project = fresh_project(tmp_path / "p")
    assert lotf("build", "--profile", "paper", cwd=project).returncode == 0
    first = {name: (project / name).read_bytes() for name in ROOT_FILES}
    assert lotf("build", "--profile", "paper", cwd=project).returncode == 0
    for name in ROOT_FILES:
        assert (project / name).read_bytes() == first[name], f"{name} differs between two builds"
        assert filecmp.cmp(project / name, REPO / name, shallow=False), f"committed {name} is stale: run lotf build"
    dvc_yaml = first["dvc.yaml"].decode()
    for stage in ("bmim-bf4_ML15_TrainModel", "bmim-bf4_final_ModelDFT-D3-20", "water_erbs_AL10_MDSampling",
                  "water_md_AL10_TrainModel", "bmim-bf4_report_CampaignReport"):
        assert f"{stage}:" in dvc_yaml


def test_smoke_build_has_the_same_graph_shape_per_iteration(tmp_path):
    project = fresh_project(tmp_path / "s")
    run = lotf("build", "water", "--profile", "smoke", cwd=project)
    assert run.returncode == 0, run.stderr
    stages = (project / "dvc.yaml").read_text()
    assert "water_erbs_AL1_MDSampling:" in stages and "water_md_AL1_MaxDistSelection:" in stages
    assert "bmim-bf4" not in stages


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
