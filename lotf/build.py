"""``lotf build``: write dvc.yaml / params.yaml / zntrack.json for campaigns in ``stages/``.

The repository's committed ``dvc.yaml``, ``params.yaml`` and ``zntrack.json`` are the paper
graph (``lotf build --profile paper``, every campaign). Any other build (another profile, or only
some campaigns) would replace them, so :func:`check_target` refuses it where ``dvc.yaml`` is
committed to git, unless forced; :func:`build_into` builds in a separate project instead.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

CAMPAIGNS = ("bmim_bf4", "water", "alanine")
GRAPH_FILES = ("dvc.yaml", "params.yaml", "zntrack.json")
COPIED = ("stages", "models", "data")  # what a campaign graph needs beside it


class BuildRefused(RuntimeError):
    """A build that would silently replace a committed graph."""


def campaign_module(name: str, root: Path):
    if name not in CAMPAIGNS:
        raise ValueError(f"unknown campaign '{name}' (known: {', '.join(CAMPAIGNS)})")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"stages.{name}")


def is_full_paper_build(campaigns: list[str] | None, profile: str) -> bool:
    return profile == "paper" and set(campaigns or CAMPAIGNS) == set(CAMPAIGNS)


def committed(path: Path) -> bool:
    """True when ``path`` is tracked by the git repository it lies in."""
    try:
        result = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent,
                                capture_output=True, text=True)
    except OSError:  # no git
        return False
    return result.returncode == 0


def check_target(root: str | Path, campaigns: list[str] | None, profile: str, force: bool = False) -> None:
    """Refuse (one line) a build into ``root`` that would replace a committed graph with something
    other than the full paper graph."""
    root = Path(root).resolve()
    if force or is_full_paper_build(campaigns, profile):
        return
    if (root / "dvc.yaml").exists() and committed(root / "dvc.yaml"):
        what = f"profile '{profile}'" + (f" of {', '.join(campaigns)}" if campaigns else "")
        raise BuildRefused(f"{root / 'dvc.yaml'} is committed (the paper graph); building {what} here would "
                           "replace it: use --out DIR to build elsewhere, or --force")


def build(campaigns: list[str] | None, profile: str, root: str | Path = ".") -> list[str]:
    """Build the ZnTrack graph of ``campaigns`` (all when empty) at ``profile`` in the current
    directory, with the campaign definitions of ``root``."""
    import zntrack

    root = Path(root).resolve()
    names = list(campaigns) if campaigns else list(CAMPAIGNS)
    modules = [campaign_module(name, root) for name in names]  # unknown names fail before any write
    for module in modules:
        module.check_profile(module.NAME, profile, module.PROFILES)
    project = zntrack.Project()
    for module in modules:
        module.build(project, profile)
    project.build()
    quiet_node_metrics(Path("dvc.yaml"))
    return names


SUMMARY = "summary.json"  # a campaign's one metrics file (CampaignReport.summary)


def quiet_node_metrics(dvc_yaml: Path) -> int:
    """Declare every stage's metrics files except the campaign summaries (``summary.json``) as
    plain outputs, with the same cache setting.

    ``dvc exp show`` and ``dvc metrics show`` list every metrics file of every stage as columns:
    thousands for a campaign, most of them ZnTrack's ``node-meta.json`` (run time, a copy of the
    lock entry). As outputs they stay tracked and hashed, and nodes still read them
    (``node.metrics``), but the default view shows each campaign's summary. Returns how many
    files were moved.
    """
    import yaml

    graph = yaml.safe_load(dvc_yaml.read_text())
    moved = 0

    def path_of(entry) -> str:
        return entry if isinstance(entry, str) else next(iter(entry))

    for stage in (graph.get("stages") or {}).values():
        metrics = stage.get("metrics") or []
        keep = [m for m in metrics if Path(path_of(m)).name == SUMMARY]
        quiet = [m for m in metrics if Path(path_of(m)).name != SUMMARY]
        if not quiet:
            continue
        moved += len(quiet)
        stage["outs"] = sorted([*(stage.get("outs") or []), *quiet], key=path_of)
        if keep:
            stage["metrics"] = keep
        else:
            del stage["metrics"]
    dvc_yaml.write_text(yaml.safe_dump(graph))
    return moved


def build_into(out: str | Path, campaigns: list[str] | None, profile: str, source: str | Path = ".") -> list[str]:
    """Build in a separate git + DVC project ``out``: ``stages/``, ``models/`` and ``data/`` are copied
    from ``source`` (replacing earlier copies), git and DVC are initialised when missing."""
    source, out = Path(source).resolve(), Path(out).resolve()
    if out == source:
        raise BuildRefused(f"--out {out} is the source project itself")
    for name in CAMPAIGNS if not campaigns else campaigns:  # unknown names fail before anything is written
        if name not in CAMPAIGNS:
            raise ValueError(f"unknown campaign '{name}' (known: {', '.join(CAMPAIGNS)})")
    missing = [name for name in COPIED if not (source / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{source}: no {', '.join(missing)} folder to copy (run lotf build in the project)")
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (out / name).exists():
            shutil.rmtree(out / name)
        shutil.copytree(source / name, out / name, ignore=shutil.ignore_patterns("__pycache__"))
    for command, marker in ((["git", "init", "-q"], ".git"), (["dvc", "init", "-q"], ".dvc")):
        if not (out / marker).exists():
            result = subprocess.run(command, cwd=out, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{out}: '{' '.join(command)}' failed: {result.stderr.strip()}")
    cwd = os.getcwd()
    os.chdir(out)
    try:
        for module in [m for m in list(sys.modules) if m == "stages" or m.startswith("stages.")]:
            del sys.modules[module]  # the copied definitions, not ones imported from elsewhere
        return build(campaigns, profile, out)
    finally:
        os.chdir(cwd)
