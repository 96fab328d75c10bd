"""Resumable MD runs: a run killed at any moment (SIGKILL included) and started again gives the
same trajectory as an uninterrupted one; stale frames are truncated; foreign checkpoints are ignored."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import znh5md

from lotf.dynamics.integrators import Langevin
from lotf.dynamics.md import MDRun
from lotf.dynamics.checks import TemperatureCheck
from lotf.dynamics.modifiers import DensityRamp, TemperatureRamp
from lotf.potential import neighbors
from tests.dynamics.helpers import RC, argon_fcc, lj_forcefield

REPO = Path(__file__).resolve().parents[2]

# an ignored checkpoint is an error unless a test expects it (pytest.warns)
pytestmark = pytest.mark.filterwarnings("error:checkpoint")

SCRIPT = """
import json
import sys
sys.path.insert(0, {repo!r})
from lotf.dynamics.integrators import Langevin
from lotf.dynamics.md import MDRun
from tests.dynamics.helpers import argon_fcc, lj_forcefield

folder = sys.argv[1]
run = MDRun(argon_fcc(2), lj_forcefield(), Langevin(timestep=5.0, friction=0.02), steps=200, temperature=120.0,
            sampling_rate=5, block_steps=20, seed=3, trajectory=folder + "/traj.h5",
            checkpoint=folder + "/md.ckpt", progress=False, keep_frames=True)
summary = run.run().to_dict()
print(json.dumps([summary, [int(a.info["step"]) for a in run.frames]]))
"""


def assert_same_trajectory(path_a, path_b, steps):
    a, b = znh5md.IO(path_a)[:], znh5md.IO(path_b)[:]
    assert [int(x.info["step"]) for x in a] == [int(x.info["step"]) for x in b] == steps  # none missing or doubled
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.positions, y.positions, rtol=0, atol=1e-10)
        np.testing.assert_allclose(x.get_velocities(), y.get_velocities(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(x.cell.array, y.cell.array, rtol=0, atol=1e-10)
        assert abs(x.get_potential_energy() - y.get_potential_energy()) < 1e-10
        np.testing.assert_allclose(x.get_forces(), y.get_forces(), rtol=0, atol=1e-10)
        assert abs(x.info["temperature"] - y.info["temperature"]) < 1e-10


def test_run_killed_with_sigkill_resumes_to_the_uninterrupted_trajectory(tmp_path):
    script = tmp_path / "md.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    env = dict(os.environ)
    assert env.get("LOTF_JAX_CACHE")  # set by conftest: the subprocesses share the compilation cache
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    killed.mkdir()
    reference.mkdir()

    def start(folder):
        return subprocess.Popen([sys.executable, str(script), str(folder)], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    ref_proc = start(reference)  # in parallel with the run that gets killed
    victim = start(killed)
    deadline = time.monotonic() + 120
    while not (killed / "md.ckpt").exists():  # saved after a block's frames are in the H5MD file
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL  # it really died mid-run
    assert 4 <= len(znh5md.IO(killed / "traj.h5")) < 40

    out, err = ref_proc.communicate(timeout=120)
    assert ref_proc.returncode == 0, err
    resumed = subprocess.run([sys.executable, str(script), str(killed)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "ignored" not in resumed.stderr
    summary, steps_here = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["steps_done"] == 200 and summary["frames_written"] == 40  # totals of the whole run
    assert steps_here == list(range(steps_here[0], 201, 5)) and steps_here[0] > 5  # it resumed, no fresh start
    assert not (killed / "md.ckpt").exists()
    assert_same_trajectory(killed / "traj.h5", reference / "traj.h5", list(range(5, 201, 5)))


class Interrupt(Exception):
    pass


def interrupt_before_checkpoint(monkeypatch, n: int):
    """Make the n-th checkpoint save fail: the process 'dies' after that block's frames were
    written but before its checkpoint, as a kill between the two would."""
    save = MDRun._save_checkpoint
    calls = []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == n:
            raise Interrupt
        save(self, *args)

    monkeypatch.setattr(MDRun, "_save_checkpoint", failing)


def squeezed(tmp_path, name, **kw):
    """32 argon atoms squeezed by a density ramp with a tight list capacity: lists overflow mid-run."""
    atoms = argon_fcc(2, a=5.4, rattle=0.05)
    i, _, _ = neighbors.find_pairs(atoms.positions, atoms.cell.array, (True,) * 3, RC + 0.5)
    kw.setdefault("seed", 5)
    return MDRun(atoms, lj_forcefield(), Langevin(timestep=5.0, friction=0.02), steps=200, temperature=100.0,
                 sampling_rate=5, block_steps=20, modifiers=[DensityRamp(rho_start=1.62, rho_end=1.85)],
                 neighbor_capacity=int(np.bincount(i).max()), trajectory=tmp_path / f"{name}.h5",
                 progress=False, **kw)


def test_frames_after_the_last_checkpoint_are_truncated_and_grown_lists_restored(tmp_path, monkeypatch):
    reference = squeezed(tmp_path, "reference")
    ref = reference.run()
    assert ref.block_reruns >= 1  # the lists grow during the run

    ckpt = tmp_path / "md.ckpt"
    interrupt_before_checkpoint(monkeypatch, 7)
    with pytest.raises(Interrupt):
        squeezed(tmp_path, "run", checkpoint=ckpt).run()
    monkeypatch.undo()
    with np.load(ckpt) as data:  # the lists grew before the interruption
        assert json.loads(str(data["meta"]))["specs"][0][2] > squeezed(tmp_path, "x").neighbor_capacity
    # block 7's frames are on disk without a checkpoint; append a few more stale frames on top
    path = tmp_path / "run.h5"
    znh5md.IO(path).extend(znh5md.IO(path)[-3:])
    assert len(znh5md.IO(path)) == 7 * 4 + 3

    run = squeezed(tmp_path, "run", checkpoint=ckpt, keep_frames=True)
    s = run.run()
    assert [a.info["step"] for a in run.frames] == list(range(6 * 20 + 5, 201, 5))  # this process's frames only
    assert (s.steps_done, s.frames_written, s.block_reruns, s.n_resets) == (200, 40, ref.block_reruns, 0)
    assert not ckpt.exists() and not ckpt.with_name("md.ckpt.tmp").exists()
    assert_same_trajectory(path, reference.trajectory, list(range(5, 201, 5)))


def test_a_foreign_or_unusable_checkpoint_is_ignored_with_a_warning(tmp_path, monkeypatch):
    ckpt = tmp_path / "md.ckpt"
    interrupt_before_checkpoint(monkeypatch, 3)
    with pytest.raises(Interrupt):
        squeezed(tmp_path, "run", checkpoint=ckpt, seed=1).run()
    monkeypatch.undo()
    saved = ckpt.read_bytes()

    # another seed: another trajectory, the checkpoint must not be used
    other = squeezed(tmp_path, "run", checkpoint=ckpt, seed=2)
    with pytest.warns(UserWarning, match="different run configuration"):
        s = other.run()
    fresh = squeezed(tmp_path, "fresh", seed=2)
    fresh.run()
    assert s.frames_written == 40 and not ckpt.exists()
    assert_same_trajectory(other.trajectory, fresh.trajectory, list(range(5, 201, 5)))

    # the right configuration, but the trajectory lost frames the checkpoint counts
    ckpt.write_bytes(saved)
    znh5md.IO(tmp_path / "short.h5").extend(znh5md.IO(tmp_path / "run.h5")[:3])
    short = squeezed(tmp_path, "short", checkpoint=ckpt, seed=1)
    with pytest.warns(UserWarning, match="holds 3 of its 8 frames"):
        s = short.run()
    assert s.frames_written == 40 and len(znh5md.IO(short.trajectory)) == 40


@pytest.mark.parametrize("on_trigger, interrupt_at", [("reset", 8), ("stop", 3)])
def test_stop_and_reset_bookkeeping_survives_a_resume(tmp_path, monkeypatch, on_trigger, interrupt_at):
    """Heating 100 -> 300 K with a 200 K temperature check: it first fires around step 100, so the
    reset run is interrupted after its first trigger and the stop run before it."""
    def heated(name, **kw):
        return MDRun(argon_fcc(2), lj_forcefield(), Langevin(timestep=5.0, friction=0.02), steps=200,
                     temperature=100.0, sampling_rate=5, block_steps=20, seed=4, on_trigger=on_trigger,
                     modifiers=[TemperatureRamp(T_start=100.0, T_end=300.0)],
                     checks=[TemperatureCheck(max_value=200.0)], trajectory=tmp_path / f"{name}.h5",
                     progress=False, **kw)

    ref = heated("reference").run()
    assert 60 < ref.steps_before_stop < 160 and (ref.n_resets > 1 if on_trigger == "reset" else ref.stopped)
    ckpt = tmp_path / "md.ckpt"
    interrupt_before_checkpoint(monkeypatch, interrupt_at)
    with pytest.raises(Interrupt):
        heated("run", checkpoint=ckpt).run()
    monkeypatch.undo()
    s = heated("run", checkpoint=ckpt).run()
    same = ("steps_done", "steps_before_stop", "stopped", "n_resets", "frames_written", "stop_reason")
    assert {k: getattr(s, k) for k in same} == {k: getattr(ref, k) for k in same}
    assert_same_trajectory(tmp_path / "run.h5", tmp_path / "reference.h5",
                           [int(a.info["step"]) for a in znh5md.IO(tmp_path / "reference.h5")[:]])


def test_checkpoint_needs_a_trajectory():
    with pytest.raises(ValueError, match="checkpoint needs a trajectory"):
        MDRun(argon_fcc(2), lj_forcefield(), Langevin(timestep=5.0), steps=10, checkpoint="x.ckpt").run()
