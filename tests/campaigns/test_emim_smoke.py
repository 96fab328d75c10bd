"""A second ionic liquid from one campaign file: examples/emim_bf4.yaml (EMIM-BF4) end to end with
`lotf init` and `dvc repro` (real tblite xTB seed, CP2K xTB labels, JAX); slow tier (~15 min)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_emim_bf4_smoke_campaign_runs_end_to_end_from_its_campaign_file(tmp_path):
    project = tmp_path / "emim"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    init = subprocess.run([sys.executable, "-m", "lotf.cli", "init", str(project), "--config",
                           str(REPO / "examples" / "emim_bf4.yaml")], capture_output=True, text=True, env=env)
    assert init.returncode == 0, init.stderr[-3000:]
    # the user's inputs live in the project, not in lotf: the campaign file and the settings it names
    assert (project / "campaigns" / "emim_bf4.yaml").is_file()
    assert (project / "data" / "cp2k" / "test-xtb-bmim-smoke.yaml").is_file()
    graph = (project / "dvc.yaml").read_text()
    assert "lotf.nodes.seed.XTBSeed" in graph and "GromacsSeed" not in graph  # no topology: xTB seed
    run = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, env=env)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])

    report = pd.read_csv(next(project.glob("nodes/emim-bf4/report/CampaignReport/report/iterations.csv")))
    assert {"ML1", "ML3"} <= set(report["iteration"])  # the two sampling iterations of the smoke profile
    assert report["n_train"].is_monotonic_increasing and report["test_forces_mae"].notna().all()
    seed = pd.read_json(next(project.glob("nodes/emim-bf4/classical/XTBSeed/metrics.json")), typ="series")
    assert seed["n_frames"] >= 10 and 200.0 < seed["temperature_mean"] < 800.0  # 500 K seed, GFN1-xTB
