"""The smoke campaigns end to end (real GROMACS, CP2K, JAX) through `lotf demo`; slow tier."""

import subprocess
import sys

import pandas as pd
import yaml
import pytest


@pytest.mark.slow
def test_demo_runs_both_smoke_campaigns_and_second_run_is_a_no_op(tmp_path):
    project = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "lotf.cli", "demo", str(project)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    tables = sorted(project.glob("nodes/**/CampaignReport/report/iterations.csv"))
    assert len(tables) == 3  # bmim-bf4, water/md, water/erbs
    for table in tables:
        frame = pd.read_csv(table)
        assert frame["n_train"].is_monotonic_increasing
        assert frame["test_forces_mae"].notna().all()
    status = subprocess.run(["dvc", "status"], cwd=project, capture_output=True, text=True)
    assert "up to date" in status.stdout.lower()
    again = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True)
    assert again.returncode == 0 and "Running stage" not in again.stdout

    # one iteration's parameter changed: only that iteration's stage is out of date upstream-wise
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["bmim-bf4_ML12_MDSampling"]["steps"] += 20
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = subprocess.run(["dvc", "status"], cwd=project, capture_output=True, text=True).stdout
    changed = [line.rstrip(":") for line in status.splitlines() if line and not line.startswith((" ", "\t"))]
    assert changed == ["bmim-bf4_ML12_MDSampling"]
    rerun = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True)
    assert rerun.returncode == 0
    assert "bmim-bf4_classical" not in rerun.stdout and "bmim-bf4_ML0" not in rerun.stdout
    assert "Running stage 'bmim-bf4_ML12_MDSampling'" in rerun.stdout
