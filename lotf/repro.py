"""``dvc repro`` on several cores: independent stages of a campaign run side by side.

``dvc repro`` runs one stage at a time. The water demo's MD (96 atoms) and training leave the
second core idle: XLA's threads gain nothing at that size (1000 MD steps took 6.1 s with two
threads and 5.4 s with one), while the MD and ERBS workflows are independent branches of the
graph. DVC supports running several ``dvc repro`` on independent stages of one project: it
releases its repository lock while a stage's command runs, guards the files with per-path
read/write locks, and writes ``dvc.lock`` under the repository lock, for which
``--wait-for-lock`` waits instead of failing.

:func:`repro` schedules ``dvc --wait-for-lock repro --single-item STAGE`` for every stage whose
upstream stages are done, ``jobs`` at a time, the stage with the most downstream stages first.
Each stage's output goes to ``.lotf/repro-logs/STAGE.log``; one line per finished stage is
printed. A failed stage stops the scheduling (running stages finish); the end of its log is
printed and a one-line error names the stage and the log. Only the stages ``dvc status``
reports as changed, and their downstream stages, are scheduled, so a second run of a finished
project starts nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

# one XLA thread per stage when stages share the cores (two threads each would oversubscribe)
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _paths(entries) -> list[str]:
    """Paths of a stage's ``deps``/``outs``/``metrics``/``plots`` list (a string or ``{path: options}``)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def _parents(path: str) -> list[str]:
    """The directories above ``path`` ("a/b/c" -> ["a/b", "a"])."""
    parts = path.split("/")
    return ["/".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]


def stage_graph(dvc_yaml: str | os.PathLike) -> dict[str, set[str]]:
    """Stage name -> the stages it depends on (a dependency is another stage's output, a file in
    an output directory, or a directory holding an output)."""
    import yaml

    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages") or {}
    producer: dict[str, str] = {}  # output path -> stage
    below: dict[str, set[str]] = {}  # directory -> stages with an output inside it
    for name, stage in stages.items():
        for out in _paths(stage.get("outs")) + _paths(stage.get("metrics")) + _paths(stage.get("plots")):
            out = out.rstrip("/")
            producer[out] = name
            for directory in _parents(out):
                below.setdefault(directory, set()).add(name)
    graph = {}
    for name, stage in stages.items():
        upstream: set[str] = set()
        for dep in _paths(stage.get("deps")):
            dep = dep.rstrip("/")
            upstream |= {producer[p] for p in [dep, *_parents(dep)] if p in producer}  # the output or its directory
            upstream |= below.get(dep, set())  # a directory holding outputs
        graph[name] = upstream - {name}
    return graph


def descendants(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Stage name -> every stage downstream of it."""
    children: dict[str, set[str]] = {name: set() for name in graph}
    for name, parents in graph.items():
        for parent in parents:
            children[parent].add(name)
    found: dict[str, set[str]] = {}

    def visit(name: str) -> set[str]:
        if name not in found:
            found[name] = set()
            for child in children[name]:
                found[name] |= {child} | visit(child)
        return found[name]

    for name in graph:
        visit(name)
    return found


def changed_stages(directory: Path) -> set[str]:
    """Stages ``dvc status`` reports as changed (never run, or changed deps, outs or params)."""
    run = subprocess.run(["dvc", "status", "--json"], cwd=directory, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"'dvc status' failed in {directory}: {run.stderr.strip()[-500:]}")
    return {name.split(":")[-1] for name in json.loads(run.stdout or "{}")}


def repro(directory: str | os.PathLike, jobs: int = 2, poll_s: float = 0.5) -> None:
    """Reproduce the DVC project in ``directory`` with up to ``jobs`` stages at a time."""
    directory = Path(directory)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1:
        result = subprocess.run(["dvc", "repro"], cwd=directory)
        if result.returncode != 0:
            raise RuntimeError(f"'dvc repro' failed with exit code {result.returncode} in {directory}")
        return
    graph = stage_graph(directory / "dvc.yaml")
    below = descendants(graph)
    todo = set()
    for name in changed_stages(directory) & set(graph):
        todo |= {name} | below[name]
    logs = directory / ".lotf" / "repro-logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    done: set[str] = set()
    failed: str | None = None
    total, start = len(todo), time.perf_counter()
    print(f"{total} stages to run, {jobs} at a time; logs in {logs}", flush=True)
    while todo or running:
        waiting = todo | set(running)
        ready = sorted((s for s in todo if not graph[s] & waiting), key=lambda s: (-len(below[s]), s))
        while failed is None and ready and len(running) < jobs:
            stage = ready.pop(0)
            todo.discard(stage)
            log = open(logs / f"{stage}.log", "w")
            process = subprocess.Popen(["dvc", "--wait-for-lock", "repro", "--single-item", stage], cwd=directory,
                                       stdout=log, stderr=subprocess.STDOUT, env=env)
            running[stage] = (process, time.perf_counter(), log)
        if failed is not None and not running:
            break
        time.sleep(poll_s)
        for stage, (process, started, log) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            del running[stage]
            if process.returncode != 0:
                failed = failed or stage
                todo.clear()
                continue
            done.add(stage)
            print(f"[{len(done)}/{total}] {stage}: {time.perf_counter() - started:.0f} s "
                  f"(total {time.perf_counter() - start:.0f} s)", flush=True)
    if failed is not None:
        log = logs / f"{failed}.log"
        print("\n".join(log.read_text(errors="replace").strip().splitlines()[-15:]), flush=True)
        raise RuntimeError(f"stage {failed} failed; its output is in {log}")
