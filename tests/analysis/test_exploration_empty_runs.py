"""ExplorationMetrics with runs that stopped before their first frame (seed 2 reports such UDD runs)."""

import math
import types
from pathlib import Path

import pandas as pd

from lotf.demo import emt_frames
from lotf.nodes.analysis import ExplorationMetrics
from lotf.nodes.frames import write_h5md


def test_a_run_without_frames_is_recorded_not_fatal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5md("full.h5", emt_frames(5))
    write_h5md("empty.h5", [])  # what MDSampling leaves when the first check fails
    full = types.SimpleNamespace(frames_path=Path("full.h5"), name="MD")
    empty = types.SimpleNamespace(frames_path=Path("empty.h5"), name="UDD")
    node = ExplorationMetrics(data=[full, empty], names=["MD", "UDD"], group="Cu", descriptor_stride=1,
                              descriptor_r_max=4.0)
    node.run()
    assert node.metrics["UDD"]["n_frames"] == 0 and math.isnan(node.metrics["UDD"]["max_com_msd_A2"])
    assert node.metrics["MD"]["n_frames"] == 5 and node.metrics["MD"]["max_com_msd_A2"] > 0
    assert "pca_variance" in node.metrics["MD"]
    assert set(pd.read_csv(node.msd_file)["run"]) == {"MD"}

    alone = ExplorationMetrics(data=[empty], names=["UDD"], group="Cu", name="alone")
    alone.run()  # nothing to analyse at all: still no crash, no PCA
    assert alone.metrics == {"UDD": {"n_frames": 0, "max_com_msd_A2": alone.metrics["UDD"]["max_com_msd_A2"],
                                     "time_of_max_ps": alone.metrics["UDD"]["time_of_max_ps"]}}
    assert math.isnan(alone.metrics["UDD"]["max_com_msd_A2"])
