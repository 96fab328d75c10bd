"""IPSuite and lotf nodes in one DVC graph, in both directions (issue 12, "IPSuite, both ways").

* IPSuite consumes ours: ``ips.ApplyCalculator`` runs our ``TrainModel.get_calculator()`` on our
  ``LoadFrames.frames``, ``ips.PredictionMetrics`` compares them with the labels, and
  ``ips.RandomSelection`` selects from our ``MDSampling.frames``.
* We consume IPSuite's: ``TrainModel`` trains on ``ips.RandomSelection`` splits of
  ``ips.AddData.frames``, ``MDSampling`` starts from an ``ips.AddData`` frame, and
  ``MaxDistSelection`` picks from IPSuite frames.
"""

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import zntrack

from lotf.demo import emt_frames

ips = pytest.importorskip("ipsuite")

TINY = {"model": {"hidden": [8], "n_radial": 2, "n_basis": 4, "r_max": 4.5, "n_members": 2,
                  "contractions": [0, 1, 2, 3]},
        "training": {"epochs": 2, "batch_size": 2}}


@pytest.mark.slow  # a DVC graph of nine stages, one training, a short MD run (about a minute)
def test_ipsuite_and_lotf_nodes_consume_each_other(dvc_project):
    from lotf.nodes import LoadFrames, MaxDistSelection, TrainModel
    from lotf.nodes.sampling import MDSampling

    Path("models").mkdir()
    Path("models/tiny.yaml").write_text(json.dumps(TINY))
    ase.io.write("train.extxyz", emt_frames(6, seed=1))
    ase.io.write("test.extxyz", emt_frames(3, seed=2))

    with zntrack.Project() as project:
        # ours on IPSuite's frames
        ips_data = ips.AddData(file="train.extxyz")
        ips_split = ips.RandomSelection(data=ips_data.frames, n_configurations=2, seed=0, name="IpsValidation")
        model = TrainModel(data=ips_split.excluded_frames, validation_data=ips_split.frames, config="models/tiny.yaml")
        md = MDSampling(data=ips_data.frames, data_id=0, model=model, steps=20, sampling_rate=10,
                        temperature=300.0, checks=[])
        ours_pick = MaxDistSelection(data=ips_data.frames, train_data=[], model=model, n_configurations=2)
        # IPSuite on our frames and our model
        ours = LoadFrames(file="test.extxyz")
        predicted = ips.ApplyCalculator(data=ours.frames, model=model,
                                        implemented_properties=["energy", "forces", "stress"])
        metrics = ips.PredictionMetrics(x=ours.frames, y=predicted.frames)
        ips_pick = ips.RandomSelection(data=md.frames, n_configurations=1, seed=0, name="IpsPick")
    project.repro()

    trained = zntrack.from_rev(model.name)
    assert trained.metrics["n_train"] == 4 and trained.metrics["n_val"] == 2
    assert len(zntrack.from_rev(md.name).frames) == 2  # one frame every 10 of 20 steps
    assert len(zntrack.from_rev(ours_pick.name).frames) == 2

    # IPSuite's metrics of our model on our frames equal our own evaluation
    calc = trained.get_calculator()
    reference = zntrack.from_rev(ours.name).frames
    errors = []
    for atoms in reference:
        calc.calculate(atoms.copy(), ["energy", "forces"])
        errors.append(abs(calc.results["energy"] - atoms.get_potential_energy()) / len(atoms))
    ips_metrics = zntrack.from_rev(metrics.name)
    assert ips_metrics.energy["mae"] == pytest.approx(1e3 * np.mean(errors), rel=1e-5)  # meV/atom
    assert np.isfinite(ips_metrics.forces["mae"]) and np.isfinite(ips_metrics.stress["mae"])
    picked = zntrack.from_rev(ips_pick.name).frames
    sampled = zntrack.from_rev(md.name).frames
    assert len(picked) == 1 and any(np.allclose(picked[0].positions, a.positions) for a in sampled)
