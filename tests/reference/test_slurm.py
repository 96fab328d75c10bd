"""CP2K labelling through dask-jobqueue on a real (single-node, throw-away) SLURM cluster.

Slow tier (all but the first test). The module starts munged, slurmctld and slurmd
(tests/reference/slurm_cluster.py) and skips, naming the reason, where this machine cannot run
them (not root, packages missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from lotf.reference.cp2k import CP2KInterrupted, CP2KSetupError
from lotf.reference.labelling import ResultStore, label_frames

from .slurm_cluster import running_slurm, why_not

ROOT = Path(__file__).resolve().parents[2]
XTB = ROOT / "data" / "cp2k" / "test-xtb.yaml"


def water_box(seed: int) -> Atoms:
    """Eight rattled water molecules in a 6 Å periodic box (about 1.5 s of GFN1-xTB)."""
    rng = np.random.default_rng(seed)
    atoms = Atoms(cell=[6.0, 6.0, 6.0], pbc=True)
    for i in range(8):
        w = molecule("H2O")
        w.rotate(rng.uniform(0, 360), rng.normal(size=3))
        w.translate([1.5 + 3 * (i % 2), 1.5 + 3 * (i // 2 % 2), 1.5 + 3 * (i // 4)])
        atoms += w
    atoms.rattle(0.05, seed=seed)
    return atoms


FRAMES = [water_box(seed) for seed in range(6)]


@pytest.fixture(scope="module")
def slurm():
    reason = why_not()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="lotf-slurm-"))  # not under pytest's 0700 tmp: munged checks
    try:
        with running_slurm(root) as cluster:
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)  # key, state, logs: after the daemons stopped


@pytest.fixture
def on_slurm(slurm, tmp_path, monkeypatch):
    """SLURM_CONF for sbatch/squeue/scancel called by dask-jobqueue; jobs start in tmp_path."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.chdir(tmp_path)
    return slurm


def slurm_config(tmp_path: Path, **extra) -> dict:
    return {"kind": "slurm", "queue": "debug", "cores": 1, "memory": "1GB", "walltime": "00:10:00",
            "log_directory": str(tmp_path / "jobs"), **extra}


def stored(store: Path) -> dict[str, tuple[int, dict]]:
    """key -> (mtime_ns, record) of every record in the store."""
    rs = ResultStore(store)
    return {p.stem: (p.stat().st_mtime_ns, rs.get(p.stem)) for p in store.glob("*/*.json")}


def test_a_cp2k_killed_by_a_signal_is_not_recorded_as_a_failure(tmp_path, monkeypatch):
    """scancel sends SIGTERM to CP2K and to the Dask worker at once: CP2K's death must not become
    a cached 'failed' record of a structure that never got its chance (fast, no SLURM)."""
    import lotf.reference.cp2k as cp2k

    real_run = subprocess.run

    def killed(cmd, *args, **kwargs):
        if "-i" in cmd:  # the single point, not --version / --check
            return subprocess.CompletedProcess(cmd, -15, "", "")
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(cp2k.subprocess, "run", killed)
    with pytest.raises(CP2KInterrupted, match="killed by signal 15"):
        label_frames(FRAMES[:1], XTB, store=tmp_path / "store", progress=False)
    assert list((tmp_path / "store").glob("*/*.json")) == []
    monkeypatch.setattr(cp2k.subprocess, "run", real_run)
    _, rep = label_frames(FRAMES[:1], XTB, store=tmp_path / "store", progress=False)
    assert (rep.n_ok, rep.n_cached, rep.n_computed) == (1, 0, 1)


@pytest.mark.slow
@pytest.mark.timeout(300)  # a run that waits for a worker forever fails here
def test_slurm_labels_equal_local_cluster_labels(on_slurm, tmp_path):
    local, rep_local = label_frames(FRAMES, XTB, store=tmp_path / "local", chunk_size=3,
                                    cluster={"kind": "local", "n_workers": 2}, progress=False)
    t0 = time.perf_counter()
    labelled, rep = label_frames(FRAMES, XTB, store=tmp_path / "slurm", chunk_size=3,
                                 cluster=slurm_config(tmp_path, jobs=2), progress=False)
    print(f"SLURM: 6 structures in {time.perf_counter() - t0:.1f} s")
    assert (rep.n_ok, rep.n_failed, rep.n_computed) == (6, 0, 6)
    assert (rep_local.n_ok, rep_local.n_failed) == (6, 0)
    for a, b in zip(labelled, local):
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-10, rel=0)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-10, rtol=0)
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-10, rtol=0)
    # the single points ran in the worker jobs: two jobs, each a Dask worker that registered
    logs = sorted((tmp_path / "jobs").glob("*.err"))
    assert len(logs) == 2, logs
    assert all("Registered to" in p.read_text() for p in logs)
    workers = {rec["worker"] for _, rec in stored(tmp_path / "slurm").values()}
    assert len(workers) == 2 and all(w.split(":")[1] != str(os.getpid()) for w in workers)


def _job_of(pid: int) -> str | None:
    """SLURM job id of a local process (from its environment), None when it is gone."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"SLURM_JOB_ID=")), None)


@pytest.mark.slow
@pytest.mark.timeout(300)  # a run that waits for a worker forever fails here
def test_scancel_mid_run_loses_nothing_and_recomputes_nothing(on_slurm, tmp_path):
    store = tmp_path / "store"
    seen: dict = {}

    def cancel_first_job():
        deadline = time.time() + 300
        while time.time() < deadline:
            records = stored(store)
            if records:
                rec = next(iter(records.values()))[1]
                job = _job_of(int(rec["worker"].split(":")[1]))
                if job is None:
                    return
                seen.update(job=job, before=stored(store))
                on_slurm.run("scancel", job)
                seen["after_cancel"] = stored(store)  # written between the snapshot and scancel
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=cancel_first_job, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    # one job, two chunks of three: the job dies inside the first chunk, the second has not started
    labelled, rep = label_frames(FRAMES, XTB, store=store, chunk_size=3,
                                 cluster=slurm_config(tmp_path, jobs=1), progress=False)
    wall = time.perf_counter() - t0
    watcher.join(10)
    assert "job" in seen, "no structure finished in a SLURM job"
    finished = seen["after_cancel"]
    after = stored(store)
    recomputed = [k for k, (mtime, _) in finished.items() if after[k][0] != mtime]
    lost = len(FRAMES) - rep.n_ok
    print(f"scancel: {len(finished)} finished before the cancel, {len(recomputed)} recomputed, "
          f"{lost} lost, {wall:.1f} s")
    assert 1 <= len(finished) < len(FRAMES)  # cancelled mid-run
    assert recomputed == [] and lost == 0 and rep.n_failed == 0
    assert sorted(a.get_potential_energy() for a in labelled) == sorted(
        rec["energy"] for _, rec in after.values())
    # the rest ran in a job submitted after the cancelled one
    rest = {rec["worker"] for k, (_, rec) in after.items() if k not in finished}
    assert rest and not rest & {rec["worker"] for _, rec in finished.values()}
    jobs = {p.stem.rsplit("-", 1)[-1] for p in (tmp_path / "jobs").glob("*.err")}  # <name>-<job id>
    assert seen["job"] in jobs and len(jobs) >= 2
    # and a rerun of the stage takes all six from the store
    again, rep2 = label_frames(FRAMES, XTB, store=store, chunk_size=3,
                               cluster=slurm_config(tmp_path, jobs=1), progress=False)
    assert (rep2.n_cached, rep2.n_computed, rep2.n_ok) == (6, 0, 6)
    assert stored(store) == after


@pytest.mark.slow
@pytest.mark.timeout(300)  # a run that waits for a worker forever fails here
def test_unknown_partition_fails_fast_with_one_line(on_slurm, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(CP2KSetupError) as info:
        label_frames(FRAMES[:2], XTB, store=tmp_path / "store", progress=False,
                     cluster=slurm_config(tmp_path, queue="nosuch", jobs=1))
    elapsed = time.perf_counter() - t0
    message = str(info.value)
    print(f"unknown partition: failed after {elapsed:.1f} s: {message}")
    assert elapsed < 60
    assert "\n" not in message and "'nosuch'" in message and "invalid partition" in message
    assert on_slurm.jobs() == []


@pytest.mark.slow
@pytest.mark.timeout(300)  # a run that waits for a worker forever fails here
def test_cli_unknown_partition_is_one_line_on_stderr(on_slurm, tmp_path):
    import ase.io
    import yaml

    ase.io.write(tmp_path / "in.xyz", FRAMES[:1])
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(slurm_config(tmp_path, queue="nosuch")))
    env = dict(os.environ, LOTF_CP2K_STORE=str(tmp_path / "store"))
    t0 = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "lotf"), "label", str(XTB), "in.xyz", "out.h5",
                           "--cluster-config", "cluster.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and elapsed < 60
    assert len(lines) == 1 and "'nosuch'" in lines[0], proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cp2k_label_node_on_slurm(on_slurm, tmp_path, monkeypatch):
    """CP2KLabel in a ZnTrack project, run by DVC, with cluster={"kind": "slurm", ...}."""
    import ase.io
    import ipsuite as ips
    import zntrack

    from lotf.nodes.label import CP2KLabel

    monkeypatch.setenv("LOTF_CP2K_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # dvc, zntrack
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    ase.io.write("in.xyz", FRAMES)
    (tmp_path / "cp2k.yaml").write_text(XTB.read_text())
    with zntrack.Project() as project:
        data = ips.AddData(file="in.xyz")
        label = CP2KLabel(data=data.frames, settings="cp2k.yaml", cluster=slurm_config(tmp_path, jobs=2))
    project.repro()
    node = label.from_rev()
    assert (node.metrics["n_ok"], node.metrics["n_computed"], node.metrics["n_failed"]) == (6, 6, 0)
    assert len(list((tmp_path / "jobs").glob("*.err"))) == 2  # two worker jobs ran
    # the same structures (as read back from in.xyz) on a LocalCluster, one per chunk as above
    local, _ = label_frames(ase.io.read("in.xyz", index=":"), XTB, store=tmp_path / "local",
                            cluster={"kind": "local", "n_workers": 2}, progress=False)
    for a, b in zip(node.frames, local):
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-10, rel=0)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-10, rtol=0)


@pytest.mark.slow
@pytest.mark.timeout(300)  # a run that waits for a worker forever fails here
def test_a_job_that_never_starts_gives_up_after_start_timeout(on_slurm, tmp_path):
    """A partition that accepts the job and never runs it (State=DOWN): start_timeout, one line,
    and the pending job is cancelled."""
    t0 = time.perf_counter()
    with pytest.raises(CP2KSetupError) as info:
        label_frames(FRAMES[:2], XTB, store=tmp_path / "store", progress=False,
                     cluster=slurm_config(tmp_path, queue="down", jobs=1, start_timeout=5))
    elapsed = time.perf_counter() - t0
    message = str(info.value)
    print(f"never starts: failed after {elapsed:.1f} s: {message}")
    assert 5 <= elapsed < 60
    assert "\n" not in message and "no worker job started within 5 s in queue 'down'" in message
    assert "PENDING (PartitionDown)" in message
    deadline = time.time() + 20
    while on_slurm.jobs() and time.time() < deadline:
        time.sleep(0.5)
    assert on_slurm.jobs() == []
