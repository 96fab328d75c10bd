"""Selection nodes run on small inputs and write their files (plus one DVC graph build)."""

import json
import pathlib
import subprocess
import sys
import types

import ase
import numpy as np
import pytest
import zntrack

import lotf.potential.calculator  # registers energy/forces_uncertainty as ASE properties
from lotf.nodes import selection as nodes
from lotf.potential.io import save_model
from lotf.selection import rules
from lotf.selection.features import FeatureMap

from .conftest import tiny_model, water_cluster


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def same(a: ase.Atoms, b: ase.Atoms) -> bool:
    return len(a) == len(b) and np.allclose(a.positions, b.positions)


def test_random_selection_node_chains_through_excluded_frames(workdir):
    rng = np.random.default_rng(0)
    frames = [water_cluster(1, rng) for _ in range(12)]
    test = nodes.RandomSelection(data=frames, n_configurations=4, seed=5)
    test.run()
    test.save()
    assert len(set(test.selected_ids)) == 4
    assert test.selected_ids == rules.random_selection(12, 4, 5).tolist()
    assert all(same(a, frames[i]) for a, i in zip(test.frames, test.selected_ids))  # pick order
    rest = [i for i in range(12) if i not in test.selected_ids]
    assert all(same(a, frames[i]) for a, i in zip(test.excluded_frames, rest))  # data order
    assert len(test.excluded_frames) == 8 and test.metrics["n_selected"] == 4
    assert json.loads((test.nwd / "selected_ids.json").read_text()) == test.selected_ids

    everything = nodes.RandomSelection(data=test.excluded_frames, n_configurations=8, seed=1, name="val")
    everything.run()
    assert everything.excluded_frames == [] and len(everything.frames) == 8

    # a short pool (a sampler that stopped or reset early) gives what it has and records the shortfall
    short = nodes.RandomSelection(data=test.excluded_frames, n_configurations=9, name="short")
    short.run()
    assert len(short.frames) == 8 and short.metrics["n_requested"] == 9 and short.metrics["n_selected"] == 8
    empty = nodes.RandomSelection(data=[], n_configurations=1, name="empty")
    empty.run()
    assert empty.frames == [] and empty.excluded_frames == [] and empty.metrics["n_selected"] == 0
    with pytest.raises(rules.SelectionError, match="n_configurations must be >= 1"):
        nodes.RandomSelection(data=frames, n_configurations=0, name="bad").run()


def test_max_dist_node(workdir, frames):
    model, params = tiny_model("full")
    save_model(workdir / "model", model.config, params)
    rng = np.random.default_rng(11)
    pool = [water_cluster(n, rng) for n in (2, 3, 1, 2, 3, 2, 1, 2)]
    node = nodes.MaxDistSelection(data=pool, train_data=frames, model=types.SimpleNamespace(model_dir="model"),
                                  n_configurations=4, batch_size=3)
    node.run()
    node.save()
    fm = FeatureMap(model, params, batch_size=4)
    expected = rules.max_dist_selection(fm(pool, progress=False), 4, fm(frames, progress=False), progress=False)
    assert node.selected_ids == expected.indices.tolist()
    np.testing.assert_allclose(node.distances["distance"], expected.distances, rtol=1e-8)
    assert all(same(a, pool[i]) for a, i in zip(node.frames, node.selected_ids))
    assert len(node.excluded_frames) == 4
    assert node.metrics["n_train"] == len(frames) and node.metrics["n_features"] == 34
    assert (node.nwd / "distances.csv").exists()

    # a node with only get_calculator() (a lotf calculator) gives the same model
    calc_node = types.SimpleNamespace(get_calculator=lambda: lotf.load_calculator("model"))
    m2, p2 = nodes.model_and_params(calc_node)
    assert m2.config == model.config
    np.testing.assert_allclose(FeatureMap(m2, p2, batch_size=4)(pool[:3], progress=False),
                               fm(pool[:3], progress=False), rtol=1e-12)
    with pytest.raises(TypeError, match="model: object is neither a lotf model directory"):
        nodes.model_and_params(object())
    short = nodes.MaxDistSelection(data=pool, train_data=frames, model="model", n_configurations=9, name="x")
    short.run()  # an NPT run that stopped early: every pool structure, the shortfall recorded
    assert sorted(short.selected_ids) == list(range(8)) and short.metrics["n_requested"] == 9


def test_uncertainty_node_from_stored_values_and_from_a_model(workdir, frames):
    from ase.calculators.singlepoint import SinglePointCalculator

    stored = []
    for i, u in enumerate([0.2, 0.9, 0.4, 0.7]):
        a = frames[i].copy()
        a.calc = SinglePointCalculator(a, energy=0.0, energy_uncertainty=u)
        stored.append(a)
    node = nodes.UncertaintySelection(data=stored, key="energy_uncertainty", threshold=0.3)
    node.run()
    node.save()
    assert node.selected_ids == [1, 3, 2]
    assert [a.calc.results["energy_uncertainty"] for a in node.frames] == [0.9, 0.7, 0.4]  # survives H5MD
    assert node.uncertainties["selected"].tolist() == [False, True, True, True]

    model, params = tiny_model("shallow")
    save_model(workdir / "model", model.config, params)
    rng = np.random.default_rng(5)
    pool = [water_cluster(2, rng) for _ in range(4)]  # one size: the calculator compiles once
    computed = nodes.UncertaintySelection(data=pool, model=types.SimpleNamespace(model_dir="model"),
                                          n_configurations=2, name="frommodel")
    computed.run()
    calc = lotf.load_calculator("model")
    values = []
    for a in pool:
        a.calc = calc
        values.append(np.linalg.norm(a.calc.get_property("forces_uncertainty", a), axis=1).max())
    np.testing.assert_allclose(computed.uncertainties["uncertainty"], values, rtol=1e-10)
    assert computed.selected_ids == np.argsort(values)[::-1][:2].tolist()
    with pytest.raises(rules.SelectionError, match="give n_configurations, threshold or both"):
        nodes.UncertaintySelection(data=stored, name="none").run()


class FramesSource(zntrack.Node):
    """Stand-in for a node with frames."""

    frames_path: pathlib.Path = zntrack.outs_path(zntrack.nwd / "frames.h5")

    def run(self) -> None:
        pass

    @property
    def frames(self) -> list:
        return []


class ModelSource(zntrack.Node):
    """Stand-in for the training node."""

    model_dir: pathlib.Path = zntrack.outs_path(zntrack.nwd / "model")

    def run(self) -> None:
        pass


def test_selection_nodes_build_into_a_dvc_pipeline(workdir):
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    with zntrack.Project() as project:
        data = FramesSource()
        model = ModelSource()
        test = nodes.RandomSelection(data=data.frames, n_configurations=5)
        train = nodes.RandomSelection(data=test.excluded_frames, n_configurations=3, seed=2)
        nodes.MaxDistSelection(data=data.frames, train_data=train.frames, model=model, n_configurations=2)
        nodes.UncertaintySelection(data=data.frames, model=model, threshold=0.1)
    project.build()
    dvc = (workdir / "dvc.yaml").read_text()
    for name in ("RandomSelection:", "RandomSelection_1:", "MaxDistSelection:", "UncertaintySelection:"):
        assert name in dvc
    assert "excluded_frames.h5" in dvc and "distances.csv" in dvc
    params = (workdir / "params.yaml").read_text()
    assert "n_configurations" in params and "seed" in params
