"""Label many structures with CP2K: resumable, failure-tolerant, dispatched through Dask.

* Resumable: every finished single point (converged or failed) is written at once, atomically, to
  a content-addressed store outside any DVC output (``$LOTF_CP2K_STORE``, else
  ``~/.cache/lotf/cp2k``), keyed by the structure (numbers, positions, cell, pbc, rounded to
  1e-6 Å), the settings tree, the CP2K version and the vacuum padding. A run killed at any point
  and started again recomputes nothing that had finished.
* Failures (SCF not converged, CP2K crash, timeout) are recorded with their reason, cached like
  results (``retry_failed=True`` runs them again), left out of the labelled frames and counted.
  A CP2K killed by a signal (a cancelled batch job, Ctrl-C) is not a failure of the structure:
  nothing is recorded and it runs again.
* Distributed: pending structures are cut into contiguous chunks; each chunk is one Dask task
  that runs its structures one after another in one working directory, so the wavefunction of
  one structure seeds the next. A LocalCluster, a dask-jobqueue SLURM/PBS cluster or an existing
  scheduler come from a small config dict (see :func:`make_cluster`). With one local worker
  everything runs in this process, without Dask.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from lotf.reference.cp2k import (
    CP2KRunError,
    CP2KRunner,
    CP2KSettings,
    CP2KSetupError,
    attach_results,
    check_executable,
    check_input,
    load_settings,
    periodicity,
)

__all__ = [
    "STORE_ENV",
    "LabelReport",
    "ResultStore",
    "default_store",
    "structure_key",
    "make_cluster",
    "label_frames",
    "label_file",
    "read_frames",
    "write_frames",
]

STORE_ENV = "LOTF_CP2K_STORE"
_KEY_SCHEMA = 1  # bump when the meaning of a stored record changes
# bump when the input rendered for molecules in vacuum changes (version 2: the electrostatics
# follow pbc; before, settings with a periodic Poisson solver failed and those failures were stored)
_VACUUM_INPUT = 2
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# store


def default_store() -> Path:
    """``$LOTF_CP2K_STORE`` if set, else ``~/.cache/lotf/cp2k``."""
    env = os.environ.get(STORE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lotf" / "cp2k"


def structure_key(atoms: Atoms, settings_digest: str, version: str, vacuum: float) -> str:
    """sha256 of everything that determines a CP2K result for ``atoms``."""

    def rounded(x: np.ndarray) -> list:
        return (np.round(np.asarray(x, dtype=float), 6) + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0

    periodic = bool(np.all(atoms.pbc))
    blob = {
        "schema": _KEY_SCHEMA,
        "settings": settings_digest,
        "cp2k": version,
        "numbers": atoms.numbers.tolist(),
        "positions": rounded(atoms.positions),
        "cell": rounded(atoms.cell.array),
        "pbc": np.asarray(atoms.pbc, dtype=bool).tolist(),
        "vacuum": None if periodic else float(vacuum),
    }
    if not periodic:  # only molecules: the keys (and stored results) of periodic structures stay
        blob["vacuum_input"] = _VACUUM_INPUT
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


class ResultStore:
    """One JSON record per key under ``root/<key[:2]>/<key>.json``, written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "w") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # readers see the old state or the whole record, never a part


# --------------------------------------------------------------------------------------------
# report


@dataclass
class LabelReport:
    """What a labelling run did. ``n_cached`` came from the store, ``n_computed`` are CP2K runs
    made by this call (failed ones included), ``cp2k_s`` their summed wall time."""

    n_total: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_cached: int = 0
    n_computed: int = 0
    wall_s: float = 0.0
    cp2k_s: float = 0.0
    store: str = ""
    failures: list[dict] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if isinstance(v, (int, float))}

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# work


def _record(result: Mapping[str, Any] | None, error: CP2KRunError | None, n_atoms: int) -> dict:
    if error is not None:
        rec = {"status": "failed", "reason": error.reason, "log_tail": error.log_tail}
    else:
        rec = {
            "status": "ok",
            "energy": float(result["energy"]),
            "forces": np.asarray(result["forces"]).tolist(),
            "stress": None if result.get("stress") is None else np.asarray(result["stress"]).tolist(),
            "scf_steps": result.get("scf_steps"),
            "restart": bool(result.get("restart")),
            "wall_s": float(result["wall_s"]),
        }
    rec.update(n_atoms=n_atoms, finished=time.time(),
               worker=f"{socket.gethostname()}:{os.getpid()}")
    return rec


def _run_chunk(items: list[tuple[int, str, Atoms]], settings: CP2KSettings, store_root: str,
               options: Mapping[str, Any], since: float = math.inf,
               callback: Callable[[], None] | None = None) -> list[tuple[int, str, dict]]:
    """Label ``items`` one after another in one working directory (wavefunction reuse).
    Runs in a Dask worker or in-process; each record is stored as soon as it exists. Records
    finished after ``since`` are taken as they are (Dask re-running a task of a lost worker)."""
    store = ResultStore(store_root)
    out = []
    with tempfile.TemporaryDirectory(prefix="lotf-cp2k-") as tmp:
        runner = CP2KRunner(settings, Path(tmp), **options)
        for index, key, atoms in items:
            rec = store.get(key)
            if rec is not None and rec.get("finished", -math.inf) >= since:
                out.append((index, key, rec))
                continue
            try:
                rec = _record(runner.compute(atoms), None, len(atoms))
            except CP2KRunError as exc:
                rec = _record(None, exc, len(atoms))
            try:
                store.put(key, rec)
            except OSError as exc:  # e.g. store not shared with this worker: the client stores it
                log.warning("could not write %s: %s", store.path(key), exc)
            out.append((index, key, rec))
            if callback is not None:
                callback()
    return out


def make_cluster(config: Mapping[str, Any], *, scale: bool = True) -> tuple[Any, int]:
    """Build a Dask cluster from a config dict; returns (cluster or scheduler address, n_workers).

    ``{"kind": "local", "n_workers": 2, "processes": True}``: a LocalCluster (one thread per worker);
    ``{"kind": "slurm" | "pbs", "cores": .., "memory": .., "jobs": N, ...}``: dask-jobqueue
    SLURMCluster/PBSCluster with one worker per job (other keys go to the cluster class, e.g.
    ``queue`` (the partition), ``walltime``, ``account``, ``job_extra_directives``,
    ``job_script_prologue``, ``log_directory``), with ``jobs`` jobs submitted before this returns:
    a job the scheduler refuses (unknown partition or account, ...) raises a
    :class:`CP2KSetupError` of one line naming the queue. ``start_timeout`` (seconds, default: wait
    as long as the queue takes) is read by :func:`label_frames`, not by the cluster;
    ``{"kind": "address", "address": "tcp://host:8786", "n_workers": N}``: an existing scheduler.
    ``scale=False`` builds a jobqueue cluster without submitting jobs (to inspect its job script).
    """
    cfg = dict(config)
    kind = str(cfg.pop("kind", "local")).lower()
    cfg.pop("start_timeout", None)
    if kind == "local":
        from distributed import LocalCluster

        n = int(cfg.pop("n_workers", 1))
        cluster = LocalCluster(n_workers=n, threads_per_worker=int(cfg.pop("threads_per_worker", 1)),
                               processes=bool(cfg.pop("processes", True)),
                               dashboard_address=cfg.pop("dashboard_address", ":0"), **cfg)
        return cluster, n
    if kind in ("slurm", "pbs"):
        import dask_jobqueue

        cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
        jobs = int(cfg.pop("jobs", 1))
        cfg.setdefault("processes", 1)  # one worker per job: CP2K uses the job's cores via MPI/OpenMP
        # ... and one task at a time per worker (dask-jobqueue gives a worker cores/processes
        # threads, which would run that many chunks, each CP2K on all the cores, at once); the
        # last --nthreads on the worker's command line wins
        cfg["worker_extra_args"] = [*cfg.get("worker_extra_args", []), "--nthreads", "1"]
        # the scheduler runs in this process: its dashboard on a free port unless one is given
        cfg["scheduler_options"] = {"dashboard_address": ":0", **(cfg.get("scheduler_options") or {})}
        for required in ("cores", "memory"):
            if required not in cfg:
                raise CP2KSetupError(f"cluster config (kind {kind}) needs '{required}'")
        cluster = cls(**cfg)
        if scale:
            _submit_jobs(cluster, jobs, kind, cfg)
        return cluster, jobs * int(cfg["processes"])
    if kind == "address":
        if "address" not in cfg:
            raise CP2KSetupError("cluster config (kind address) needs 'address'")
        return cfg["address"], int(cfg.get("n_workers", 1))
    raise CP2KSetupError(f"cluster config: unknown kind '{kind}' (local, slurm, pbs, address)")


def _submit_jobs(cluster, jobs: int, kind: str, cfg: Mapping[str, Any]) -> None:
    """Submit ``jobs`` worker jobs and wait until sbatch/qsub has answered for each.

    ``cluster.scale()`` submits in the background: a job the scheduler refuses only logs a
    traceback, and the run would wait for its worker forever. Here the refusal raises a
    CP2KSetupError of one line, and the cluster is closed."""
    from distributed.core import Status

    async def submit() -> None:
        for _ in range(jobs):
            cluster.worker_spec.update(cluster.new_worker_spec())
        await cluster._correct_state()  # what scale() schedules, awaited here

    try:
        cluster.sync(submit)
    except RuntimeError as exc:
        for job in list(cluster.workers.values()):
            if job.status == Status.created:  # never submitted: nothing to cancel
                job.status = Status.failed
        cluster.close()
        raise CP2KSetupError(_refusal(kind, cfg, exc)) from None


def _refusal(kind: str, cfg: Mapping[str, Any], exc: Exception) -> str:
    """One line for a worker job that sbatch/qsub refused: the queue, then the scheduler's reason
    (dask-jobqueue raises a RuntimeError holding the command's whole stdout and stderr)."""
    text = str(exc)
    stderr = text.split("stderr:", 1)[1] if "stderr:" in text else text
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    reason = next((line for line in lines if "error" in line.lower()), lines[0] if lines else text)
    queue = cfg.get("queue")
    where = f"partition '{queue}'" if kind == "slurm" else f"queue '{queue}'"
    if queue is None:
        where = "the default partition" if kind == "slurm" else "the default queue"
    return f"{kind.upper()} refused the worker job for {where}: {reason}"


def _chunks(items: list, n_workers: int, chunk_size: int | None) -> list[list]:
    """Contiguous chunks (consecutive frames are similar: the wavefunction carries over);
    by default about four per worker to balance the load."""
    size = chunk_size or max(1, math.ceil(len(items) / (4 * n_workers)))
    return [items[i: i + size] for i in range(0, len(items), size)]


def _validate(frames: list[Atoms], settings: CP2KSettings, *, executable: str, n_ranks: int,
              mpirun: str, vacuum: float, check: bool) -> str:
    """All checks that must pass before any structure runs; returns the CP2K version."""
    version = check_executable(executable, n_ranks, mpirun)
    first: dict[bool, int] = {}
    where: dict[str, str] = {}
    for i, atoms in enumerate(frames):
        first.setdefault(periodicity(atoms, i), i)
        for sym in set(atoms.get_chemical_symbols()):
            where.setdefault(sym, f"frame {i}")
    settings.check_elements(where.keys(), executable, where)
    for periodic, i in sorted(first.items()):
        settings.template(periodic, executable)  # unknown keywords against CP2K's schema
        if check:
            check_input(settings, frames[i], executable=executable, vacuum=vacuum)
    return version


def label_frames(
    frames: Iterable[Atoms],
    settings: str | Path | Mapping | CP2KSettings,
    *,
    n_ranks: int = 1,
    n_threads: int = 1,
    store: str | Path | None = None,
    cluster: Mapping[str, Any] | None = None,
    retry_failed: bool = False,
    chunk_size: int | None = None,
    executable: str = "cp2k.psmp",
    mpirun: str = "mpirun",
    timeout: float | None = None,
    vacuum: float = 5.0,
    check: bool = True,
    progress: bool = True,
) -> tuple[list[Atoms], LabelReport]:
    """Label ``frames`` with CP2K single points.

    Args:
        frames: structures (fully periodic, or molecules with pbc all False).
        settings: settings YAML path, tree, or :class:`CP2KSettings`.
        n_ranks, n_threads: MPI ranks and OpenMP threads of each CP2K run.
        store: result store directory (default :func:`default_store`).
        cluster: Dask cluster config (:func:`make_cluster`); None or one local worker runs in
            this process.
        retry_failed: run structures again whose cached record is a failure.
        chunk_size: structures per Dask task (default: about four tasks per worker).
        executable, mpirun: programs to run.
        timeout: seconds per single point before it counts as failed (None: no limit).
        vacuum: Å of vacuum around a molecule when its own cell is missing or too small.
        check: let the installed CP2K parse the input (``--check``) before running anything.
        progress: show a progress bar.

    Returns:
        The labelled frames (input order, failures left out) and a :class:`LabelReport`.
    """
    t0 = time.perf_counter()
    frames = list(frames)
    settings = load_settings(settings)
    version = _validate(frames, settings, executable=executable, n_ranks=n_ranks, mpirun=mpirun,
                        vacuum=vacuum, check=check)
    store_ = ResultStore(store if store is not None else default_store())
    report = LabelReport(n_total=len(frames), store=str(store_.root))

    keys = [structure_key(a, settings.digest, version, vacuum) for a in frames]
    records: dict[str, dict] = {}
    pending: list[tuple[int, str, Atoms]] = []
    pending_keys: set[str] = set()  # identical structures in the input run once
    for i, (atoms, key) in enumerate(zip(frames, keys)):
        if key in records or key in pending_keys:
            continue
        rec = store_.get(key)
        usable = rec is not None and rec.get("n_atoms") == len(atoms)
        if usable and not (retry_failed and rec["status"] == "failed"):
            records[key] = rec
        else:
            pending.append((i, key, atoms))
            pending_keys.add(key)
    report.n_cached = sum(k in records for k in keys)

    options = dict(n_ranks=n_ranks, n_threads=n_threads, executable=executable, mpirun=mpirun,
                   timeout=timeout, vacuum=vacuum)
    errors: dict[str, str] = {}  # not CP2K failures (a lost worker): reported, never cached
    n_repeats = sum(k in pending_keys for k in keys) - len(pending)  # run with their first copy
    bar = tqdm(total=len(frames), initial=report.n_cached + n_repeats, desc=f"CP2K {settings.name}",
               unit="structure", disable=not progress)
    try:
        if pending:
            local = cluster is None or (str(cluster.get("kind", "local")).lower() == "local"
                                        and int(cluster.get("n_workers", 1)) == 1)
            if local:
                done = _run_chunk(pending, settings, str(store_.root), options,
                                  callback=lambda: bar.update(1))
            else:
                done = _run_dask(pending, settings, store_, options, cluster, chunk_size, bar, errors)
            for _, key, rec in done:
                records[key] = rec
                if store_.get(key) is None:
                    store_.put(key, rec)
                report.n_computed += 1
                report.cp2k_s += rec.get("wall_s", 0.0) or 0.0
    finally:
        bar.close()

    labelled = collect_labelled(frames, keys, records, attach_results, report, errors)
    report.wall_s = time.perf_counter() - t0
    if report.n_failed:
        log.warning("CP2K: %d of %d structures failed", report.n_failed, report.n_total)
    return labelled, report


def _run_dask(pending, settings, store, options, cluster_cfg, chunk_size, bar, errors):
    """Run the chunks on a Dask cluster. Records are stored by the workers as they finish, and a
    chunk re-run after its worker was lost takes them from the store (``since``). A jobqueue
    cluster gets back the jobs it loses while chunks are left (a job cancelled, killed at its
    walltime): they are submitted again."""
    from distributed import Client, wait

    since = time.time()
    kind = str(cluster_cfg.get("kind", "local")).lower()
    cluster, n_workers = make_cluster(cluster_cfg)
    cores = n_workers * options["n_ranks"] * options["n_threads"]
    if kind == "local" and cores > (os.cpu_count() or 1):
        log.warning("%d local workers x %d ranks x %d threads oversubscribe %d cores", n_workers,
                    options["n_ranks"], options["n_threads"], os.cpu_count())
    jobqueue = kind in ("slurm", "pbs")
    done = []
    try:
        with Client(cluster) as client:
            if jobqueue and cluster_cfg.get("start_timeout") is not None:
                _wait_for_a_worker(client, cluster, cluster_cfg)
            futures = {
                # retries: a chunk whose CP2K was killed by a signal (CP2KInterrupted: its job is
                # being cancelled while the worker still answers) runs again elsewhere
                client.submit(_run_chunk, chunk, settings, str(store.root), options, since,
                              pure=False, retries=2): chunk
                for chunk in _chunks(pending, n_workers, chunk_size)
            }
            left = set(futures)
            while left:
                try:
                    finished, left = wait(left, timeout=5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    finished = set()
                for fut in finished:
                    chunk = futures[fut]
                    try:
                        out = fut.result()
                    except Exception as exc:  # worker lost too often, killed, ...: report, do not cache
                        for _, key, _ in chunk:
                            errors[key] = f"Dask task failed: {type(exc).__name__}: {exc}"
                        out = []
                    done += out
                    bar.update(len(chunk))
                if jobqueue and left:
                    # jobs whose worker left (scancel, walltime, node failure) are dropped from
                    # the cluster after distributed.deploy.lost-worker-timeout; this submits
                    # their replacements (a no-op while every job is there)
                    cluster.scale(jobs=int(cluster_cfg.get("jobs", 1)))
    finally:
        if not isinstance(cluster, str):
            cluster.close()
    return done


def _wait_for_a_worker(client, cluster, cluster_cfg) -> None:
    """Raise CP2KSetupError when no worker job has started within ``start_timeout`` seconds."""
    timeout = float(cluster_cfg["start_timeout"])
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        ids = [str(job.job_id) for job in getattr(cluster, "workers", {}).values()
               if getattr(job, "job_id", None)]
        queue = cluster_cfg.get("queue")
        where = f" in queue '{queue}'" if queue is not None else ""
        why = _pending_reasons(ids) if str(cluster_cfg.get("kind")).lower() == "slurm" else ""
        why = why or f"jobs {', '.join(ids) or 'none'}: see squeue/qstat for why they wait"
        raise CP2KSetupError(f"no worker job started within {timeout:g} s{where} ({why})") from None


def _pending_reasons(job_ids: list[str]) -> str:
    """'job 1 PENDING (PartitionDown), ...' from squeue, or '' when squeue cannot tell."""
    import subprocess

    if not job_ids:
        return ""
    try:
        proc = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "job %i %T (%r)"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return ", ".join(line.strip() for line in proc.stdout.splitlines() if line.strip())


# --------------------------------------------------------------------------------------------
# files


def collect_labelled(frames: list[Atoms], keys: list[str], records: Mapping[str, dict], attach: Callable,
                     report: LabelReport, errors: Mapping[str, str] | None = None) -> list[Atoms]:
    """Frames with their results attached, in input order; every other frame becomes a failure
    of ``report`` with its reason (shared by every reference's labeller)."""
    labelled = []
    for i, (atoms, key) in enumerate(zip(frames, keys)):
        rec = records.get(key)
        if rec is not None and rec["status"] == "ok":
            labelled.append(attach(atoms, rec))
        else:
            reason = rec["reason"] if rec is not None else (errors or {}).get(key, "not computed")
            report.failures.append({"index": i, "reason": reason, "key": key})
    report.n_ok, report.n_failed = len(labelled), len(report.failures)
    return labelled


def read_frames(path: str | Path) -> list[Atoms]:
    """Structures from an H5MD file (``.h5``/``.h5md``, znh5md) or anything ase.io reads.

    A missing file raises FileNotFoundError, an unreadable one a ValueError naming the file.
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file {path} does not exist")
    try:
        if path.suffix in (".h5", ".h5md"):
            import h5py
            import znh5md

            with h5py.File(path, "r") as fh:
                if "particles" not in fh:
                    return []
            return list(znh5md.IO(path)[:])
        return list(ase.io.read(path, index=":"))
    except Exception as exc:  # ase.io and h5py raise many types: one message naming the file
        message = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
        raise ValueError(f"{path}: cannot read structures: {message}") from exc


def write_frames(path: str | Path, frames: list[Atoms]) -> None:
    """Write structures (H5MD for ``.h5``/``.h5md``, else ase.io by suffix), replacing the file
    atomically."""
    import ase.io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}{path.suffix}")
    if path.suffix in (".h5", ".h5md"):
        import h5py
        import znh5md

        if frames:
            znh5md.IO(tmp).extend(frames)
        else:
            h5py.File(tmp, "w").close()
    else:
        ase.io.write(tmp, frames, format="extxyz" if path.suffix in (".xyz", ".extxyz") else None)
    os.replace(tmp, path)


def label_file(
    settings: str | Path,
    inp: str | Path,
    out: str | Path,
    *,
    n_ranks: int = 1,
    n_threads: int = 1,
    store: Path | None = None,
    cluster: dict | None = None,
    retry_failed: bool = False,
    **kwargs: Any,
) -> LabelReport:
    """``lotf label SETTINGS IN OUT``: label every structure of ``inp`` and write the labelled
    ones to ``out`` (H5MD for .h5, extxyz for .xyz/.extxyz, else by ase.io). Extra keyword
    arguments go to :func:`label_frames`."""
    frames = read_frames(inp)
    labelled, report = label_frames(frames, settings, n_ranks=n_ranks, n_threads=n_threads,
                                    store=store, cluster=cluster, retry_failed=retry_failed,
                                    **kwargs)
    write_frames(out, labelled)
    return report
