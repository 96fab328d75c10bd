"""Issue 12, item 7: one summary metrics file per campaign, per-node metrics out of `dvc exp show`."""

import json
import subprocess
import types

import numpy as np
import pytest
import yaml
from ase.calculators.emt import EMT

from lotf.demo import emt_frames
from tests.campaigns.test_build import fresh_project, lotf


class ScaledEMT(EMT):
    """EMT with energies, forces and stress scaled: a model with known errors against EMT labels."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, ["energy", "forces", "stress"], ["positions", "numbers", "cell", "pbc"])
        for key in ("energy", "forces", "stress"):
            self.results[key] = self.factor * np.asarray(self.results[key])


def test_campaign_report_writes_a_summary_with_final_errors(tmp_path, monkeypatch):
    from lotf.nodes.report import CampaignReport

    monkeypatch.chdir(tmp_path)
    test = emt_frames(3, seed=2)
    models = [types.SimpleNamespace(name=f"m{k}", metrics={"n_train": 10 * (k + 1)},
                                    get_calculator=lambda f=f: ScaledEMT(f)) for k, f in enumerate((1.1, 1.0))]
    sampler = types.SimpleNamespace(name="md", metrics={"steps_before_stop": 120})
    report = CampaignReport(iterations=["ML0", "ML1"], sampled_iterations=["ML1"], models=models,
                            samplers=[sampler], test_data=test)
    report.run()
    summary = report.summary
    assert summary["n_iterations"] == 2 and summary["final_iteration"] == "ML1"
    assert summary["n_train_final"] == 20 and summary["n_test"] == 3
    # the last model is EMT itself: no error; the first one's 10 % shows in the table
    assert summary["final_energy_mae_meV_atom"] == pytest.approx(0.0, abs=1e-9)
    assert summary["final_forces_mae_meV_A"] == pytest.approx(0.0, abs=1e-9)
    assert summary["final_stress_mae_meV_A3"] == pytest.approx(0.0, abs=1e-9)
    assert report.table["test_stress_mae"].iloc[0] > 0
    assert summary["steps_before_stop"] == {"ML1": 120.0}
    json.dumps(summary, allow_nan=False)  # a plain JSON metrics file, no NaN


def test_built_graph_shows_only_the_campaign_summary_as_metrics(tmp_path):
    project = fresh_project(tmp_path / "p")
    run = lotf("build", "water", "--profile", "smoke", cwd=project)
    assert run.returncode == 0, run.stderr
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    declared = {name: [m if isinstance(m, str) else next(iter(m)) for m in stage.get("metrics", [])]
                for name, stage in stages.items()}
    summaries = {f"water_{w}_report_CampaignReport": [f"nodes/water/{w}/report/CampaignReport/summary.json"]
                 for w in ("erbs", "md")}  # the campaign's two workflows, one report each
    assert {k: v for k, v in declared.items() if v} == summaries
    train = stages["water_md_AL1_TrainModel"]
    outs = [o if isinstance(o, str) else next(iter(o)) for o in train["outs"]]
    assert "nodes/water/md/AL1/TrainModel/metrics.json" in outs  # still tracked, only not a metric
    assert {"nodes/water/md/AL1/TrainModel/node-meta.json": {"cache": True}} in train["outs"]

    # with files in place, DVC's metrics view lists the summaries alone
    for path, content in (("nodes/water/md/report/CampaignReport/summary.json", {"n_test": 2}),
                          ("nodes/water/md/AL1/TrainModel/metrics.json", {"val_loss": 1.0}),
                          ("nodes/water/md/AL1/TrainModel/node-meta.json", {"run_time": 1.0})):
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(json.dumps(content))
    shown = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=project, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    files = json.loads(shown.stdout)[""]["data"]
    assert [f for f in files if "error" not in files[f]] == ["nodes/water/md/report/CampaignReport/summary.json"]
