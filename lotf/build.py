"""``lotf build``: write dvc.yaml / params.yaml / zntrack.json for campaigns in ``stages/``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

CAMPAIGNS = ("bmim_bf4", "water")


def campaign_module(name: str, root: Path):
    if name not in CAMPAIGNS:
        raise ValueError(f"unknown campaign '{name}' (known: {', '.join(CAMPAIGNS)})")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"stages.{name}")


def build(campaigns: list[str] | None, profile: str, root: str | Path = ".") -> list[str]:
    """Build the ZnTrack graph of ``campaigns`` (all when empty) at ``profile`` in ``root``."""
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
    return names
