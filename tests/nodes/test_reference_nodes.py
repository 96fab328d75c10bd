"""ForceFieldLabel and ReferenceMD nodes: the CP2KLabel contract, and a ground-truth trajectory
that the RDF, Diffusion and Density nodes read unchanged. Real OpenMM."""

import json

import numpy as np
import pytest

from lotf.nodes import ForceFieldLabel, ReferenceMD
from lotf.nodes.analysis import RDF, Density, Diffusion
from lotf.nodes.scratch import scratch_root
from lotf.reference import forcefield as ff
from lotf.reference import structures as st


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOTF_SCRATCH", raising=False)
    monkeypatch.setenv(ff.FF_STORE_ENV, str(tmp_path / "ff-store"))
    return tmp_path


@pytest.fixture(scope="module")
def water_box(tmp_path_factory):
    """32 SPC/Fw waters (9.86 Å box), minimised and run for 50 fs."""
    import znh5md

    path = tmp_path_factory.mktemp("water") / "md.h5"
    ff.run_md(st.pack_species({"water": 32}, 1.0, seed=1), "water", cutoff=4.5, trajectory=path, steps=100,
              interval=100, thermostat="langevin", replicate=1, progress=False, threads=1)
    atoms = znh5md.IO(str(path))[-1]
    atoms.calc = None
    return atoms


def test_forcefield_label_node(workdir, water_box):
    good = [water_box.copy() for _ in range(2)]
    good[1].positions[:3] += 0.05
    bad = water_box.copy()
    bad.positions[0] = np.nan
    node = ForceFieldLabel(name="label", data=[good, [bad]], forcefield="water", cutoff=4.5)
    node.run()
    frames = node.frames
    assert len(frames) == 2
    direct, _ = ff.label_frames(good, "water", cutoff=4.5, store=workdir / "other", progress=False)
    for a, b in zip(frames, direct):
        # DeterministicForces: two computations give the same numbers (H5MD keeps forces in float32)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), rtol=1e-6, atol=1e-12)
    assert node.metrics["n_ok"] == 2 and node.metrics["n_failed"] == 1 and node.metrics["n_computed"] == 3
    failures = json.loads(node.failures_path.read_text())
    assert failures[0]["index"] == 2 and "NaN" in failures[0]["reason"]
    again = ForceFieldLabel(name="label2", data=[good, [bad]], forcefield="water", cutoff=4.5)
    again.run()
    assert again.metrics["n_cached"] == 3 and again.metrics["n_computed"] == 0


def test_reference_md_node_is_read_by_the_analysis_nodes(workdir, water_box):
    md = ReferenceMD(name="truth", data=[water_box], forcefield="water", cutoff=4.5, thermostat="langevin",
                     friction=5.0, steps=600, equilibration_steps=200, interval=20, replicate=2, seed=1)
    md.run()
    frames = md.frames
    assert len(frames) == 30 and len(frames[0]) == 768 and md.metrics["replication"] == [2, 2, 2]
    assert md.metrics["density_mean_g_cm3"] == pytest.approx(1.0, rel=0.02)
    assert 200 < md.metrics["temperature_mean_K"] < 400
    assert not any(scratch_root().glob("*"))

    rdf = RDF(name="rdf", data=md, r_max=4.5, n_bins=90)
    rdf.run()
    assert 2.5 < rdf.metrics["first_peak_A"]["O-O"] < 3.1
    diffusion = Diffusion(name="diffusion", data=md, groups=["O"], n_blocks=2)
    diffusion.run()
    assert diffusion.metrics["O"]["D_A2_per_ns"] > 0
    density = Density(name="density", data=md, temperature=300.0, experimental="water_density")
    density.run()
    assert density.metrics["relative_error"] == pytest.approx(0.0, abs=0.05)


def test_reference_md_node_resumes_after_a_kill(workdir, water_box, monkeypatch):
    import znh5md

    options = dict(data=[water_box], forcefield="water", cutoff=4.5, thermostat="langevin", steps=400,
                   equilibration_steps=0, interval=20, replicate=1, seed=3, frames_per_block=5,
                   minimise_steps=0)  # a threaded minimisation is not bitwise reproducible
    reference = ReferenceMD(name="reference", **options)
    reference.run()

    extend, calls = znh5md.IO.extend, {"n": 0}

    def dying_extend(self, frames):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return extend(self, frames)

    monkeypatch.setattr(znh5md.IO, "extend", dying_extend)
    node = ReferenceMD(name="killed", **options)
    with pytest.raises(KeyboardInterrupt):
        node.run()
    monkeypatch.setattr(znh5md.IO, "extend", extend)
    assert len(list(scratch_root().glob("killed-*/checkpoint.npz"))) == 1
    node = ReferenceMD(name="killed", **options)
    node.run()
    assert node.metrics["resumed_from_step"] == 100
    for a, b in zip(reference.frames, node.frames, strict=True):  # threaded sums: not bitwise equal
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-3)
