"""GeometryOptimisation: seed-1 settings in the loop, a bounded path, empty inputs."""

import types

import numpy as np
import pytest

from lotf.demo import emt_frames
from lotf.nodes.sampling import GeometryOptimisation


@pytest.fixture
def model(emt_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return types.SimpleNamespace(model_dir=emt_model_dir)


def test_path_is_bounded_and_starts_after_the_chosen_frame(model):
    frames = emt_frames(3)
    frames[2].rattle(0.3, seed=1)  # far from a minimum: many FIRE steps
    node = GeometryOptimisation(data=frames, model=model, data_id=-1, fmax=1e-4, max_steps=30, max_frames=7)
    node.run()
    out = node.frames
    assert node.metrics["steps"] == 30 and node.metrics["converged"] == 0
    assert len(out) == node.metrics["frames"] == 7  # 30 optimiser steps stored as 7 frames
    assert not np.allclose(out[0].positions, frames[2].positions)  # the start frame is not repeated
    assert node.metrics["n_input"] == 3 and node.metrics["from_fallback"] == 0
    # the last stored frame is the final structure of the run, with its energy
    assert out[-1].get_potential_energy() == pytest.approx(node.metrics["energy_final"])
    assert node.metrics["energy_final"] < node.metrics["energy_start"]


def test_loose_fmax_converges_quickly(model):
    node = GeometryOptimisation(data=emt_frames(1), model=model, fmax=50.0, max_frames=50, name="loose")
    node.run()
    assert node.metrics["converged"] == 1 and node.metrics["steps"] == 0 and len(node.frames) == 1


def test_empty_input_relaxes_the_fallback_or_writes_nothing(model):
    fallback = emt_frames(2)
    node = GeometryOptimisation(data=[], model=model, fallback=fallback, max_steps=5, name="fallback")
    node.run()
    assert node.metrics["n_input"] == 0 and node.metrics["from_fallback"] == 1 and len(node.frames) >= 1
    nothing = GeometryOptimisation(data=[[]], model=model, max_steps=5, name="nothing")
    nothing.run()  # a sampler that stopped before its first frame and no fallback: no crash
    assert nothing.frames == [] and nothing.metrics["n_input"] == 0 and nothing.metrics["frames"] == 0


def test_campaign_geometry_optimisation_uses_seed_1_settings():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from stages.common import GEO_OPT

    assert GEO_OPT["fmax"] == 0.5 and GEO_OPT["max_frames"] <= 100
