"""``lotf build``: write dvc.yaml / params.yaml / zntrack.json for campaigns.

A campaign is a campaign file (``campaigns/<name>.yaml`` or any ``--config FILE``, see
:mod:`lotf.campaign`), built by its template in the project's ``stages/``, or a campaign written
in Python (``stages/alanine.py``: ``PROFILES`` and ``build``). The repository's committed
``dvc.yaml``, ``params.yaml`` and ``zntrack.json`` are the paper graph (``lotf build --profile
paper``, every built-in campaign). Any other build (another profile, or only some campaigns) would
replace them, so :func:`check_target` refuses it where ``dvc.yaml`` is committed to git, unless
forced; :func:`build_into` builds in a separate project instead.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

BUILT_IN = ("bmim_bf4", "water", "alanine")  # the paper graph, in this order
GRAPH_FILES = ("dvc.yaml", "params.yaml", "zntrack.json")
COPIED = ("stages", "models", "data", "campaigns")  # what a campaign graph needs beside it


class BuildRefused(RuntimeError):
    """A build that would silently replace a committed graph."""


def is_config(entry: str) -> bool:
    return str(entry).endswith((".yaml", ".yml"))


def _stages_module(name: str, root: Path):
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"stages.{name}")


def known_campaigns(root: Path) -> list[str]:
    """Campaign files of ``root/campaigns`` and the Python campaigns of ``root/stages``."""
    files = sorted(path.stem for path in (root / "campaigns").glob("*.yaml"))
    modules = [path.stem for path in sorted((root / "stages").glob("*.py"))  # NAME, PROFILES and build
               if path.stem not in files and all(mark in path.read_text() for mark in
                                                  ("\nNAME = ", "\nPROFILES = ", "\ndef build("))]
    return [*files, *modules]


def campaign_source(entry: str, root: Path) -> Path | object:
    """A campaign file (a path; by name: ``campaigns/<name>.yaml`` of ``root``) or a Python
    campaign module; unknown names fail in one line."""
    if is_config(entry):
        return Path(entry)
    config = root / "campaigns" / f"{entry}.yaml"
    if config.is_file():
        return config.relative_to(root) if Path.cwd().resolve() == root else config
    if entry in known_campaigns(root):
        return _stages_module(entry, root)
    raise ValueError(f"unknown campaign '{entry}' (known: {', '.join(known_campaigns(root))})")


def is_full_paper_build(campaigns: list[str] | None, profile: str) -> bool:
    return profile == "paper" and set(campaigns or BUILT_IN) == set(BUILT_IN)


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
        what = f"profile '{profile}'" + (f" of {', '.join(map(str, campaigns))}" if campaigns else "")
        raise BuildRefused(f"{root / 'dvc.yaml'} is committed (the paper graph); building {what} here would "
                           "replace it: use --out DIR to build elsewhere, or --force")


def plan(campaigns: list[str] | None, profile: str, root: Path) -> list[tuple]:
    """Read and check every campaign (names or campaign files; all built-in ones when empty) at
    ``profile`` with the templates of ``root/stages`` and the input files of ``root``: unknown
    names, profiles, keys and values fail in one line. Returns (name, build function, argument)."""
    from lotf.campaign import check_campaign, load_campaign

    plans = []
    for entry in list(campaigns) if campaigns else list(BUILT_IN):
        source = campaign_source(str(entry), root)
        if isinstance(source, Path):
            campaign = load_campaign(source, profile)
            if not (root / "stages" / f"{campaign.template}.py").is_file():
                raise FileNotFoundError(f"{source}: template '{campaign.template}' not found: no "
                                        f"{root / 'stages' / campaign.template}.py (lotf init DIR --config FILE "
                                        "makes a project with the templates)")
            template = _stages_module(campaign.template, root)
            check_campaign(campaign, root)
            template.check(campaign)
            plans.append((campaign.name, template.build, campaign))
        else:
            source.check_profile(source.NAME, profile, source.PROFILES)
            plans.append((source.NAME, source.build, profile))
    return plans


def build(campaigns: list[str] | None, profile: str, root: str | Path = ".") -> list[str]:
    """Build the ZnTrack graph of ``campaigns`` (names or campaign files; all built-in ones when
    empty) at ``profile`` in the current directory, with the templates of ``root/stages``.
    Every campaign is read and checked before any node is made. Returns the campaign names."""
    import zntrack

    plans = plan(campaigns, profile, Path(root).resolve())
    project = zntrack.Project()
    for _, build_campaign, argument in plans:
        build_campaign(project, argument)
    project.build()
    tidy_graph(Path("dvc.yaml"))
    return [name for name, _, _ in plans]


SUMMARY = "summary.json"  # a campaign's one metrics file (CampaignReport.summary)


def tidy_graph(dvc_yaml: Path) -> None:
    """Post-process ZnTrack's ``dvc.yaml``: :func:`quiet_node_metrics` and :func:`skip_stage_locks`."""
    import yaml

    graph = yaml.safe_load(dvc_yaml.read_text())
    quiet_node_metrics(graph)
    skip_stage_locks(graph)
    dvc_yaml.write_text(yaml.safe_dump(graph, width=1000))  # a stage command on one line


NO_STAGE_LOCK = "--no-save-lockfile"


def skip_stage_locks(graph: dict) -> int:
    """Run every ZnTrack stage with ``--no-save-lockfile``; returns how many commands changed.

    By default ``zntrack run`` starts a second process that loads the DVC repository and hashes
    the stage's dependencies to copy the stage's lock entry into ``node-meta.json``, only for
    ``zntrack list`` to report whether a node changed. ``dvc.lock`` holds the same entry and
    ``dvc status`` reads that. The copy cost about 2 s per stage (two thirds of the water
    demo's stages run for less), and the hashing shares the cores with the node itself.
    """
    changed = 0
    for stage in (graph.get("stages") or {}).values():
        cmd = stage.get("cmd")
        if isinstance(cmd, str) and cmd.startswith("zntrack run ") and NO_STAGE_LOCK not in cmd.split():
            stage["cmd"] = f"{cmd} {NO_STAGE_LOCK}"  # appended: ZnTrack reads the node and name by position
            changed += 1
    return changed


def quiet_node_metrics(graph: dict) -> int:
    """Declare every stage's metrics files except the campaign summaries (``summary.json``) as
    plain outputs, with the same cache setting.

    ``dvc exp show`` and ``dvc metrics show`` list every metrics file of every stage as columns:
    thousands for a campaign, most of them ZnTrack's ``node-meta.json`` (run time, a copy of the
    lock entry). As outputs they stay tracked and hashed, and nodes still read them
    (``node.metrics``), but the default view shows each campaign's summary. Returns how many
    files were moved.
    """
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
    return moved


def build_into(out: str | Path, campaigns: list[str] | None, profile: str, source: str | Path = ".") -> list[str]:
    """Build in a separate git + DVC project ``out``: ``stages/``, ``models/``, ``data/`` and
    ``campaigns/`` are copied from ``source`` (replacing earlier copies; a campaign file from
    elsewhere is copied into ``out/campaigns/``), git and DVC are initialised when missing."""
    source, out = Path(source).resolve(), Path(out).resolve()
    if out == source:
        raise BuildRefused(f"--out {out} is the source project itself")
    entries = [str(e) for e in campaigns] if campaigns else list(BUILT_IN)
    plan(entries, profile, source)  # every problem, named as given, before anything is written
    missing = [name for name in COPIED[:3] if not (source / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{source}: no {', '.join(missing)} folder to copy (run lotf build in the project)")
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (out / name).exists():
            shutil.rmtree(out / name)
        if (source / name).is_dir():
            shutil.copytree(source / name, out / name, ignore=shutil.ignore_patterns("__pycache__"))
    entries = [copy_config(entry, source, out) if is_config(entry) else entry for entry in entries]
    init_project(out)
    cwd = os.getcwd()
    os.chdir(out)
    try:
        for module in [m for m in list(sys.modules) if m == "stages" or m.startswith("stages.")]:
            del sys.modules[module]  # the copied definitions, not ones imported from elsewhere
        return build(entries, profile, out)
    finally:
        os.chdir(cwd)


def copy_config(config: str | Path, source: Path, out: Path) -> str:
    """The campaign file ``config`` in project ``out``: at the same place when it lies in ``source``,
    else in ``out/campaigns/``. Returns its path relative to ``out``."""
    path = Path(config).resolve()
    try:
        relative = path.relative_to(source)
    except ValueError:
        relative = Path("campaigns") / path.name
    if not (out / relative).exists() or not (out / relative).samefile(path):
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / relative)
    return str(relative)


def init_project(out: Path) -> None:
    """``git init`` and ``dvc init`` in ``out`` unless done."""
    for command, marker in ((["git", "init", "-q"], ".git"), (["dvc", "init", "-q"], ".dvc")):
        if not (out / marker).exists():
            result = subprocess.run(command, cwd=out, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{out}: '{' '.join(command)}' failed: {result.stderr.strip()}")


def init(directory: str | Path, config: str | Path, profile: str = "smoke", source: str | Path | None = None) -> Path:
    """``lotf init DIR --config FILE``: a fresh git + DVC project in ``DIR`` around one campaign
    file, with what its template needs (``stages/`` and ``models/`` of ``source``, default the lotf
    repository, and the files the campaign file names, from the working directory or ``source``),
    built at ``profile``. Returns the campaign file's path in ``DIR``."""
    from lotf.campaign import files_named, load_campaign, profiles

    source = Path(source).resolve() if source else Path(__file__).resolve().parents[1]
    directory = Path(directory).resolve()
    load_campaign(config, profile)  # a bad file or profile fails before anything is written
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory}: not empty (lotf init creates a fresh project)")
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "models"):
        shutil.copytree(source / name, directory / name, ignore=shutil.ignore_patterns("__pycache__"))
    named = {path for name in profiles(config) for path in files_named(load_campaign(config, name))}
    for path in sorted(named):  # every profile's files, so that any profile builds there
        found = next((base / path for base in (Path.cwd(), source) if (base / path).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{config}: names {path}, which is neither here nor in {source}")
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found, directory / path)
    relative = Path("campaigns") / Path(config).name
    (directory / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, directory / relative)
    init_project(directory)
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        for module in [m for m in list(sys.modules) if m == "stages" or m.startswith("stages.")]:
            del sys.modules[module]
        build([str(relative)], profile, directory)
    finally:
        os.chdir(cwd)
    return directory / relative

