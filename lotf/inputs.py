"""Input files of the campaigns (force-field topologies, experimental tables) as DVC dependencies.

Nodes name their input files by paths relative to the project (``data/opls/bmim.itp``,
``data/experimental/bmim_bf4_density.csv``) in ``zntrack.deps_path`` fields, so that DVC hashes
them and changing one puts exactly the stages that read it out of date. The campaign projects
carry a copy of the repository's ``data/`` folder (``lotf build --out``, ``lotf demo``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPLS = "data/opls"
EXPERIMENTAL = "data/experimental"
ATOMTYPES = "clandp_atomtypes.itp"


def input_file(path: str | os.PathLike, what: str = "input") -> Path:
    """``path`` as given when it exists (relative to the project, the working directory of a
    stage). Only outside a project (a node run by hand, where DVC checks no dependencies), a
    relative path missing here is taken from the lotf repository's copy of it."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_absolute() and (REPO / path).is_file():
        return REPO / path
    raise FileNotFoundError(f"{what} not found: {path}")


def experimental_table(name_or_path: str | os.PathLike) -> Path:
    """An experimental table by path (``data/experimental/x.csv``) or by its bare name (``x``)."""
    value = str(name_or_path)
    if not value.endswith(".csv") and "/" not in value:
        value = f"{EXPERIMENTAL}/{value}.csv"
    return input_file(value, "experimental table")


def read_experimental_table(name_or_path: str | os.PathLike, directory: str | os.PathLike | None = None):
    """An experimental table as a DataFrame (``#`` lines = citation): by path or bare name (see
    :func:`experimental_table`), or ``<directory>/<name>.csv`` when ``directory`` is given."""
    import pandas as pd

    if directory is not None:
        path = Path(directory) / f"{name_or_path}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"experimental table not found: {path}")
    else:
        path = experimental_table(name_or_path)
    return pd.read_csv(path, comment="#")


def opls_topologies(species, directory: str = OPLS) -> list[str]:
    """The itp files a GROMACS seed of ``species`` reads: one per non-water species and the CL&P
    atom types (written into every topology), as project-relative paths."""
    names = [str(s).lower() for s in species if str(s).lower() != "water"]
    return [f"{directory}/{name}.itp" for name in names] + [f"{directory}/{ATOMTYPES}"]


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: ``invalid YAML: <problem> (line L, column C)`` (settings
    files and campaign files report it this way)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    what = problem or (str(exc).splitlines() or ["syntax error"])[0]
    return f"invalid YAML: {what}{where}"
