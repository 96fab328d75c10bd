"""CP2K single points: settings, input rendering, running ``cp2k.psmp`` and parsing its output.

Settings are YAML files holding a cp2k-input-tools *simplified* input tree (the format of IPSuite's
``cp2k.yaml``), without cell or coordinates. Per structure we add the cell, the coordinates, the
project name, ``RUN_TYPE ENERGY_FORCE``, force and stress printing and the wavefunction restart.
The electrostatics follow each structure's ``pbc``, whatever the settings file was written for:
a molecule in vacuum gets ``PERIODIC NONE`` (cell and Poisson solver) in a cell padded with vacuum,
a periodic Poisson solver is replaced by WAVELET and xTB's Ewald sum is switched off; a periodic
structure gets ``PERIODIC XYZ`` (a solver for isolated systems only is refused before CP2K runs).
Results are returned in eV, eV/Å and eV/Å³ (ASE sign convention, Voigt order).

KINDs are either listed per element under ``force_eval/subsys/kind`` or made for the elements of
each structure from a basis and a potential family, ``force_eval/subsys/kinds_from: {basis_set:
TZVP-GTH, potential: GTH-PBE}`` (a lotf-only key, removed before rendering; the rule is in
:meth:`CP2KSettings.family_kind`); listed KINDs win. :func:`check_elements` checks a system's
elements when a campaign is built.

Units at the boundary: CP2K prints the energy in Hartree, forces in Hartree/Bohr and the
analytical stress tensor in GPa with the pressure sign (positive = the system pushes outwards),
so ``stress_ase = -stress_cp2k``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers
from ase.units import Bohr, GPa, Hartree, bar

__all__ = [
    "CP2KError",
    "CP2KSetupError",
    "CP2KRunError",
    "CP2KInterrupted",
    "CP2KSettings",
    "CP2KRunner",
    "load_settings",
    "cp2k_version",
    "cp2k_data_dirs",
    "check_executable",
    "check_input",
    "check_elements",
    "render_input",
    "parse_output",
    "cp2k_command",
    "single_point",
    "attach_results",
]

PROJECT = "lotf"
INPUT_NAME = f"{PROJECT}.inp"
OUTPUT_NAME = f"{PROJECT}.out"
WFN_NAME = f"{PROJECT}-RESTART.wfn"

# Placeholders in the pre-rendered template, replaced per structure (the template is rendered
# once with cp2k-input-tools, which validates every keyword against CP2K's schema).
_TOK_A, _TOK_B, _TOK_C = "@LOTF_A@", "@LOTF_B@", "@LOTF_C@"
_TOK_COORD = "@LOTF_COORD@"
_TOK_GUESS = "@LOTF_GUESS@"

# Keywords holding file names, as (path of sections below FORCE_EVAL, keyword).
_FILE_KEYWORDS = [
    (("dft",), "basis_set_file_name"),
    (("dft",), "potential_file_name"),
    (("dft", "xc", "vdw_potential", "pair_potential"), "parameter_file_name"),
    (("dft", "xc", "hf", "interaction_potential"), "t_c_g_data"),
]

# Poisson solvers of CP2K for isolated systems only, and the one for periodic cells only.
_ISOLATED_ONLY_SOLVERS = ("mt", "analytic", "multipole")
_PERIODIC_ONLY_SOLVERS = ("periodic",)


class CP2KError(Exception):
    """Base class of the errors raised here."""


class CP2KSetupError(CP2KError, ValueError):
    """Bad settings, structures or installation, detected before any structure runs."""


class CP2KRunError(CP2KError):
    """One single point failed (SCF not converged, CP2K crashed, output unreadable)."""

    def __init__(self, reason: str, log_tail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


class CP2KInterrupted(CP2KError):
    """CP2K was killed by a signal (its batch job cancelled or at its walltime, Ctrl-C, the
    out-of-memory killer): says nothing about the structure, so it is never recorded as a
    failure; the structure runs again (a re-run Dask task or the next run)."""


# --------------------------------------------------------------------------------------------
# case-insensitive access to the input tree (CP2K keywords are case-insensitive)


def _key(d: Mapping, name: str) -> str | None:
    for k in d:
        if str(k).lstrip("+&").lower() == name.lower():
            return k
    return None


def _get(d: Mapping, name: str, default: Any = None) -> Any:
    k = _key(d, name)
    return default if k is None else d[k]


def _set(d: dict, name: str, value: Any) -> None:
    k = _key(d, name)
    if k is not None:
        del d[k]
    d[name] = value


def _section(d: dict, name: str) -> dict:
    """Return the sub-section ``name`` of ``d``, creating it if needed."""
    k = _key(d, name)
    if k is None:
        d[name] = {}
        return d[name]
    if not isinstance(d[k], dict):
        raise CP2KSetupError(f"section {name} must be a mapping, got {d[k]!r}")
    return d[k]


# --------------------------------------------------------------------------------------------
# installation


def _version_text(executable: str) -> str:
    exe = shutil.which(executable)
    if exe is None:
        raise CP2KSetupError(f"CP2K executable '{executable}' not found on PATH")
    return _version_of(exe)


@functools.lru_cache(maxsize=8)
def _version_of(exe: str) -> str:
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or "CP2K version" not in proc.stdout:
        raise CP2KSetupError(f"'{exe} --version' failed: {(proc.stderr or proc.stdout).strip()[:200]}")
    return proc.stdout


def cp2k_version(executable: str = "cp2k.psmp") -> str:
    """The ``CP2K version ...`` line of ``executable --version`` (raises if not installed)."""
    text = _version_text(executable)
    return next(line.strip() for line in text.splitlines() if "CP2K version" in line)


def check_executable(executable: str = "cp2k.psmp", n_ranks: int = 1, mpirun: str = "mpirun") -> str:
    """Check that CP2K (and mpirun for several ranks) can be found; return the version line."""
    if n_ranks > 1 and shutil.which(mpirun) is None:
        raise CP2KSetupError(f"MPI launcher '{mpirun}' not found on PATH (needed for n_ranks={n_ranks})")
    return cp2k_version(executable)


def cp2k_data_dirs(executable: str = "cp2k.psmp") -> list[Path]:
    """Directories where CP2K looks up relative data file names: ``$CP2K_DATA_DIR``, then the
    directory compiled into the executable (``__DATA_DIR``), then Debian's ``/usr/share/cp2k``."""
    dirs = []
    if os.environ.get("CP2K_DATA_DIR"):
        dirs.append(Path(os.environ["CP2K_DATA_DIR"]))
    try:
        # the flags are wrapped over several lines of fixed width: join them before searching
        flags = "".join(line.strip() for line in _version_text(executable).splitlines())
        m = re.search(r'__DATA_DIR="([^"]+)"', flags)
        if m:
            dirs.append(Path(m.group(1)))
    except CP2KSetupError:
        pass
    dirs += [Path("/usr/share/cp2k/data"), Path("/usr/share/cp2k")]
    unique = []
    for d in dirs:
        if d not in unique and d.is_dir():
            unique.append(d)
    return unique


def cp2k_command(
    n_ranks: int = 1, n_threads: int = 1, executable: str = "cp2k.psmp", mpirun: str = "mpirun"
) -> tuple[list[str], dict[str, str]]:
    """Command line (without ``-i/-o``) and environment for one CP2K run: ``mpirun -np N``
    (Open MPI: plus ``--allow-run-as-root --oversubscribe`` as root) or ``srun -n N`` for several
    ranks, ``OMP_NUM_THREADS`` for the threads."""
    if n_ranks < 1 or n_threads < 1:
        raise CP2KSetupError(f"n_ranks and n_threads must be >= 1, got {n_ranks} and {n_threads}")
    env = dict(os.environ, OMP_NUM_THREADS=str(n_threads))
    exe = shutil.which(executable) or executable
    if n_ranks == 1:
        return [exe], env
    launcher = shutil.which(mpirun) or mpirun
    if Path(launcher).name == "srun":
        return [launcher, "-n", str(n_ranks), exe], env
    cmd = [launcher, "-np", str(n_ranks)]
    if _is_openmpi(launcher):
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["--allow-run-as-root", "--oversubscribe"]
        cmd += ["-x", "OMP_NUM_THREADS"]  # forward the thread count to ranks on other nodes
    return cmd + [exe], env


@functools.lru_cache(maxsize=8)
def _is_openmpi(launcher: str) -> bool:
    try:
        proc = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return "Open MPI" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# basis-set and potential libraries


@functools.lru_cache(maxsize=64)
def _library_headers(path: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Element -> the names of each of its entries (header lines "El NAME [ALIAS ...]"), in file
    order, as written."""
    headers: dict[str, list[tuple[str, ...]]] = {}
    with open(path, errors="replace") as fh:
        for line in fh:
            tokens = line.split()
            if len(tokens) < 2 or tokens[0].startswith("#"):
                continue
            sym = tokens[0].capitalize()
            # data lines start with numbers
            if sym in atomic_numbers and not re.match(r"^[-+\d.]", tokens[1]):
                headers.setdefault(sym, []).append(tuple(tokens[1:]))
    return {k: tuple(v) for k, v in headers.items()}


@functools.lru_cache(maxsize=64)
def _library_names(path: str) -> dict[str, frozenset[str]]:
    """Element -> upper-case names (with aliases) defined in a CP2K basis or potential file."""
    return {sym: frozenset(n.upper() for names in entries for n in names)
            for sym, entries in _library_headers(path).items()}


def _valence(name: str, family: str) -> int | None:
    """N if ``name`` is ``FAMILY-qN`` (case-insensitive), else None."""
    m = re.fullmatch(re.escape(family) + r"-q(\d+)", name, flags=re.I)
    return int(m.group(1)) if m else None


def _family_potential(entries: list[tuple[str, ...]], family: str) -> tuple[str, int | None]:
    """(name to write, valence q) of the ``family`` potential for one element; ValueError (the
    reason) if there is none.

    ``entries``: the element's header names over the potential files, in order. The entry CP2K
    itself takes for the bare family name (the first one carrying it as an alias) wins; without
    such an alias, the only ``FAMILY-qN`` entry (several: ambiguous, refused). The name written is
    the entry's ``FAMILY-qN`` (the valence stays visible in the input), else the family name; q
    is the N of the name written (None if it does not end in ``-qN``)."""
    up = family.upper()
    chosen = next((names for names in entries if up in (n.upper() for n in names)), None)
    if chosen is None:
        with_q = [names for names in entries if any(_valence(n, family) is not None for n in names)]
        if len(with_q) > 1:
            found = ", ".join(n for names in with_q for n in names if _valence(n, family) is not None)
            raise ValueError(f"several {family} potentials ({found}) and none is the alias {family}")
        if not with_q:
            raise ValueError(f"no {family} potential")
        chosen = with_q[0]
    name = next((n for n in chosen if _valence(n, family) is not None), family)
    m = re.search(r"-q(\d+)$", name, flags=re.I)  # also for a family named like GTH-PBE-q19
    return name, int(m.group(1)) if m else None


def _family_basis(entries: list[tuple[str, ...]], family: str, q: int | None) -> str:
    """Name to write for the ``family`` basis set of one element; ValueError if there is none.

    ``entries``: the element's header names over the basis files, in order. ``FAMILY-qN`` with
    N = the potential's valence q comes first; else the bare family name, provided its entry (the
    first one carrying it: the one CP2K takes) is not made for another valence."""
    if q is not None:
        for names in entries:
            for n in names:
                if _valence(n, family) == q:
                    return n
    up = family.upper()
    for names in entries:
        if up in (n.upper() for n in names):
            if q is not None and any(_valence(n, family) not in (None, q) for n in names):
                break
            return family
    raise ValueError(f"no {family} basis" + (f" for valence q{q}" if q is not None else ""))


def _basis_names(value: Any) -> list[str]:
    """Basis names from a KIND/BASIS_SET value: 'NAME', ['ORB', 'NAME'] or [['ORB', 'N'], ...]."""
    if isinstance(value, str):
        return [value.split()[-1]]
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, tuple)) for v in value):
            return [str(v[-1] if isinstance(v, (list, tuple)) else v) for v in value]
        return [str(value[-1])]
    return [str(value)]


# --------------------------------------------------------------------------------------------
# generator with error messages naming the section


@functools.lru_cache(maxsize=1)
def _generator():
    from cp2k_input_tools.generator import CP2KInputGenerator, KeywordNotFoundError

    class _Generator(CP2KInputGenerator):
        def _get_keyword(self, name, section_node):
            try:
                return super()._get_keyword(name, section_node)
            except KeywordNotFoundError:
                section = section_node.findtext("./NAME") or "the top level"
                raise KeywordNotFoundError(
                    f"unknown CP2K keyword or section {name.upper()} in section {section}"
                ) from None

    return _Generator()


def _render_tree(tree: dict) -> str:
    return "\n".join(_generator().line_iter(tree)) + "\n"


# --------------------------------------------------------------------------------------------
# settings


@dataclass
class CP2KSettings:
    """A validated CP2K settings tree (see the module docstring).

    Attributes:
        tree: the simplified cp2k-input-tools tree, as loaded.
        source: where it came from (file name), for error messages.
        base_dir: directory used to resolve relative data file names before CP2K's data dirs.
    """

    tree: dict
    source: str = "<dict>"
    base_dir: Path | None = None
    _templates: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def digest(self) -> str:
        """sha256 of the canonical settings tree (part of the result-store key)."""
        blob = json.dumps(self.tree, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def name(self) -> str:
        return Path(self.source).stem if self.source != "<dict>" else "settings"

    def _error(self, msg: str) -> CP2KSetupError:
        return CP2KSetupError(f"{self.source}: {msg}")

    @property
    def force_eval(self) -> dict:
        fe = _get(self.tree, "force_eval")
        if not isinstance(fe, dict):
            raise self._error("needs one FORCE_EVAL section (a mapping)")
        return fe

    def kinds(self) -> dict[str, dict]:
        """KIND sections by kind name (accepts the simplified and the canonical form)."""
        kind = _get(_get(self.force_eval, "subsys", {}), "kind", {})
        if isinstance(kind, dict) and "_" in kind:
            kind = [kind]
        if isinstance(kind, list):
            return {str(k["_"]): k for k in kind}
        return {str(name): sec for name, sec in kind.items()}

    def semi_empirical(self) -> bool:
        """xTB, DFTB and the NDDO methods carry their own element parameters (no basis sets or
        potentials)."""
        qs = _get(_get(self.force_eval, "dft", {}) or {}, "qs", {}) or {}
        return str(_get(qs, "method", "gpw")).lower() in ("xtb", "dftb", "pm6", "am1", "mndo")

    def kinds_from(self) -> dict[str, str] | None:
        """The checked lotf-only entry ``force_eval/subsys/kinds_from: {basis_set: FAMILY,
        potential: FAMILY}`` (None without one); see :meth:`family_kind`."""
        subsys = _get(self.force_eval, "subsys", {})
        k = _key(subsys, "kinds_from") if isinstance(subsys, dict) else None
        if k is None:
            return None
        at = "force_eval/subsys/kinds_from"
        value = subsys[k]
        if not isinstance(value, dict):
            raise self._error(f"{at} must be a mapping {{basis_set: FAMILY, potential: FAMILY}}, "
                              f"got {value!r}")
        families = {}
        for key, family in value.items():
            if str(key).lower() not in ("basis_set", "potential"):
                raise self._error(f"{at}: unknown key {key!r} (expected basis_set and potential)")
            if not isinstance(family, str) or len(family.split()) != 1:
                raise self._error(f"{at}/{key} must be one family name, got {family!r}")
            families[str(key).lower()] = family
        missing = [key for key in ("basis_set", "potential") if key not in families]
        if missing:
            raise self._error(f"{at} needs {' and '.join(missing)}")
        if self.semi_empirical():
            raise self._error(f"{at} is for basis-set methods; this method needs no KINDs")
        return families

    # -- data files --------------------------------------------------------------------------

    def resolve_file(self, name: str, executable: str = "cp2k.psmp") -> tuple[Path, bool]:
        """Find a data file; returns (path, local) where ``local`` means it was found relative
        to the settings file (so the rendered input must use its absolute path)."""
        p = Path(name).expanduser()
        if p.is_absolute():
            if not p.is_file():
                raise self._error(f"data file {name} does not exist")
            return p, True
        if self.base_dir is not None and (self.base_dir / p).is_file():
            return (self.base_dir / p).resolve(), True
        for d in cp2k_data_dirs(executable):
            if (d / p).is_file():
                return d / p, False
        dirs = ", ".join(str(d) for d in [self.base_dir, *cp2k_data_dirs(executable)] if d)
        raise self._error(f"data file {name} not found (looked in {dirs})")

    # -- validation --------------------------------------------------------------------------

    def check_structure_keys(self) -> None:
        fe = self.force_eval
        subsys = _get(fe, "subsys", {})
        for forbidden in ("cell", "coord"):
            if _key(subsys, forbidden) is not None:
                raise self._error(
                    f"force_eval/subsys/{forbidden} must not be set: it comes from each structure"
                )
        topo = _get(subsys, "topology", {})
        if isinstance(topo, dict) and _key(topo, "coord_file_name") is not None:
            raise self._error("force_eval/subsys/topology/coord_file_name must not be set")
        self.kinds_from()

    def _libraries(self, executable: str) -> dict[str, list[tuple[str, Path]]]:
        """(name as written, path) of the basis and of the potential files, in CP2K's order."""
        dft = _get(self.force_eval, "dft", {})
        libs = {}
        for kw in ("basis_set_file_name", "potential_file_name"):
            val = _get(dft, kw, "BASIS_SET" if kw.startswith("basis") else "POTENTIAL")
            names = val if isinstance(val, (list, tuple)) else [val]
            libs[kw] = [(str(n), self.resolve_file(str(n), executable)[0]) for n in names]
        return libs

    def family_kind(self, symbol: str, executable: str = "cp2k.psmp", where: str = "",
                    libs: Mapping | None = None) -> dict[str, str]:
        """The KIND made for ``symbol`` from ``kinds_from`` (raises if the families lack it).

        Rule, per element, searching the files in CP2K's order: the potential is the entry
        carrying the potential family's bare name as an alias (the one CP2K takes for that name),
        else the only ``FAMILY-qN`` entry; its ``FAMILY-qN`` name is written and N is the valence
        q. The basis set is the first ``FAMILY-qN`` with the same N, else the bare basis family
        name when its entry is not made for another valence. E.g. C with TZVP-GTH and GTH-PBE:
        ``{basis_set: TZVP-GTH-q4, potential: GTH-PBE-q4}``."""
        families = self.kinds_from()
        if families is None:
            raise self._error("no force_eval/subsys/kinds_from")
        libs = libs or self._libraries(executable)
        at = f" ({where})" if where else ""
        entries = {kw: [names for _, p in files for names in _library_headers(str(p)).get(symbol, ())]
                   for kw, files in libs.items()}
        kw = "potential_file_name"
        try:
            potential, q = _family_potential(entries[kw], families["potential"])
            kw = "basis_set_file_name"
            basis = _family_basis(entries[kw], families["basis_set"], q)
        except ValueError as exc:
            files = ", ".join(n for n, _ in libs[kw])
            raise self._error(f"element {symbol}{at}: {exc} in {files}") from None
        return {"basis_set": basis, "potential": potential}

    def generated_kinds(self, symbols: Iterable[str], executable: str = "cp2k.psmp") -> dict[str, dict]:
        """KINDs from ``kinds_from`` for the elements of ``symbols`` without an explicit KIND, in
        order of atomic number (explicit KINDs win)."""
        if self.kinds_from() is None:
            return {}
        explicit = {k.lower() for k in self.kinds()}
        todo = sorted({s for s in symbols if s.lower() not in explicit},
                      key=lambda s: (atomic_numbers.get(s, 0), s))
        libs = self._libraries(executable) if todo else None
        return {sym: self.family_kind(sym, executable, libs=libs) for sym in todo}

    def check_elements(self, symbols: Iterable[str], executable: str = "cp2k.psmp",
                       where: Mapping[str, str] | None = None) -> None:
        """Every element needs a KIND (explicit, or made from ``kinds_from``) whose basis sets and
        potential exist in the library files. Semi-empirical methods accept any element."""
        if self.semi_empirical():
            return
        kinds = {k.lower(): v for k, v in self.kinds().items()}
        family = self.kinds_from() is not None
        libs = self._libraries(executable)
        for sym in sorted(set(symbols)):
            at = f" ({where[sym]})" if where and sym in where else ""
            sec = kinds.get(sym.lower())
            if sec is None and family:
                sec = self.family_kind(sym, executable, where[sym] if where and sym in where else "", libs)
            if sec is None:
                raise self._error(f"no KIND for element {sym}{at}")
            basis = _get(sec, "basis_set")
            if basis is None:
                raise self._error(f"KIND {sym} has no BASIS_SET")
            for bname in _basis_names(basis):
                if bname.upper() == "NONE":
                    continue
                found = [n for n, p in libs["basis_set_file_name"]
                         if bname.upper() in _library_names(str(p)).get(sym, ())]
                if not found:
                    files = ", ".join(n for n, _ in libs["basis_set_file_name"])
                    raise self._error(f"no basis set {bname} for element {sym}{at} in {files}")
            pot = _get(sec, "potential", _get(sec, "pseudopotential"))
            if pot is None:
                raise self._error(f"KIND {sym} has no POTENTIAL")
            pname = str(pot[-1] if isinstance(pot, (list, tuple)) else pot).split()[-1]
            if pname.upper() != "ALL" and not any(
                pname.upper() in _library_names(str(p)).get(sym, ())
                for _, p in libs["potential_file_name"]
            ):
                files = ", ".join(n for n, _ in libs["potential_file_name"])
                raise self._error(f"no potential {pname} for element {sym}{at} in {files}")

    # -- rendering ---------------------------------------------------------------------------

    def _follow_periodicity(self, dft: dict, periodic: bool) -> None:
        """Make the electrostatics match the structure: a settings file is written for one kind of
        structure (e.g. ``POISSON_SOLVER PERIODIC`` for boxes), the labelled frames may be another."""
        poisson = _get(dft, "poisson")
        if poisson is not None and not isinstance(poisson, dict):
            raise self._error(f"force_eval/dft/poisson must be a mapping, got {poisson!r}")
        solver_key = None if poisson is None else (_key(poisson, "poisson_solver") or _key(poisson, "psolver"))
        solver = str(poisson[solver_key]).lower() if solver_key is not None else None
        if periodic:
            if solver in _ISOLATED_ONLY_SOLVERS:
                raise self._error(f"POISSON_SOLVER {solver.upper()} is for molecules in vacuum, but a structure "
                                  "is periodic; use PERIODIC or WAVELET")
            if poisson is not None and _key(poisson, "periodic") is not None:
                _set(poisson, "periodic", "xyz")
            return
        # a molecule in vacuum: PERIODIC NONE and a solver for isolated systems (wavelet by default)
        poisson = _section(dft, "poisson")
        _set(poisson, "periodic", "none")
        if solver is None or solver in _PERIODIC_ONLY_SOLVERS:
            if solver_key is not None:
                del poisson[solver_key]
            _set(poisson, "poisson_solver", "wavelet")
        # xTB's Ewald summation of the Coulomb terms assumes a periodic cell (CP2K 2023.1 crashes
        # with it in a non-periodic one); a molecule takes the direct sum
        qs = _get(dft, "qs")
        if isinstance(qs, dict) and str(_get(qs, "method", "")).lower() == "xtb":
            xtb = _get(qs, "xtb")
            if isinstance(xtb, dict) and _key(xtb, "do_ewald") is not None:
                _set(xtb, "do_ewald", False)

    def template(self, periodic: bool, executable: str = "cp2k.psmp",
                 symbols: Iterable[str] | None = None) -> tuple[str, str, bool]:
        """Rendered input with placeholders: (text, fallback SCF guess, stress computed).
        ``symbols``: the structure's elements, for the KINDs made from ``kinds_from`` (None: no
        such KINDs, e.g. to check the keywords only)."""
        elements = None
        if symbols is not None and self.kinds_from() is not None:
            elements = tuple(sorted(set(symbols)))
        key = (periodic, elements)
        if key not in self._templates:
            self._templates[key] = self._render_template(periodic, executable, elements or ())
        return self._templates[key]

    def _render_template(self, periodic: bool, executable: str,
                         elements: Iterable[str] = ()) -> tuple[str, str, bool]:
        self.check_structure_keys()
        generated = self.generated_kinds(elements, executable)
        tree = copy.deepcopy(self.tree)
        subsys = _get(_get(tree, "force_eval"), "subsys")
        if isinstance(subsys, dict) and _key(subsys, "kinds_from") is not None:
            del subsys[_key(subsys, "kinds_from")]  # lotf's own key, unknown to CP2K
            _add_kinds(subsys, generated)
        glob = _section(tree, "global")
        _set(glob, "project", PROJECT)
        _set(glob, "run_type", "energy_force")
        if _key(glob, "print_level") is None:
            _set(glob, "print_level", "low")

        fe = _section(tree, "force_eval")
        if periodic:
            if _key(fe, "stress_tensor") is None:
                _set(fe, "stress_tensor", "analytical")
        else:
            _set(fe, "stress_tensor", "none")  # no stress without a periodic cell
        stress = str(_get(fe, "stress_tensor")).lower() != "none"
        prints = _section(fe, "print")
        _set(prints, "forces", {"_": "on", "ndigits": 12})
        if stress:
            _set(prints, "stress_tensor", {"_": "on"})

        dft = _section(fe, "dft")
        _set(dft, "wfn_restart_file_name", WFN_NAME)
        scf = _section(dft, "scf")
        guess = str(_get(scf, "scf_guess", "atomic"))
        fallback = "ATOMIC" if guess.lower() == "restart" else guess.upper()
        _set(scf, "scf_guess", _TOK_GUESS)

        # make data files found next to the settings file absolute, keep CP2K's own data names
        for path, kw in _FILE_KEYWORDS:
            sec: Any = fe
            for s in path:
                sec = _get(sec, s) if isinstance(sec, dict) else None
            if not isinstance(sec, dict) or _key(sec, kw) is None:
                continue
            val = _get(sec, kw)
            names = list(val) if isinstance(val, (list, tuple)) else [val]
            resolved = []
            for n in names:
                p, local = self.resolve_file(str(n), executable)
                resolved.append(str(p) if local else str(n))
            _set(sec, kw, resolved if isinstance(val, (list, tuple)) else resolved[0])

        self._follow_periodicity(dft, periodic)

        subsys = _section(fe, "subsys")
        _set(subsys, "cell", {"a": _TOK_A, "b": _TOK_B, "c": _TOK_C,
                              "periodic": "xyz" if periodic else "none"})
        _set(subsys, "coord", {"*": [_TOK_COORD]})
        if not periodic:
            topo = _section(subsys, "topology")
            _set(topo, "center_coordinates", {})
        try:
            text = _render_tree(tree)
        except Exception as exc:  # cp2k-input-tools raises a zoo of exception types
            raise self._error(str(exc) or type(exc).__name__) from None
        return text, fallback, stress


def _add_kinds(subsys: dict, kinds: Mapping[str, dict]) -> None:
    """Append KIND sections after the explicit ones, in whichever form those are written."""
    if not kinds:
        return
    k = _key(subsys, "kind")
    if k is None:
        subsys["kind"] = dict(kinds)
        return
    existing = subsys[k]
    listed = [{"_": sym, **sec} for sym, sec in kinds.items()]
    if isinstance(existing, list):
        existing.extend(listed)
    elif isinstance(existing, dict) and "_" in existing:
        subsys[k] = [existing, *listed]
    else:
        existing.update(kinds)


def check_elements(settings_file: str | Path | Mapping | CP2KSettings, elements: Iterable[str]) -> None:
    """Check at graph build time that the CP2K settings cover every element of a system.

    Each element needs an explicit KIND or one made from ``force_eval/subsys/kinds_from`` (see
    :meth:`CP2KSettings.family_kind`), with its basis set and potential present in the data files
    of the installed CP2K. Semi-empirical settings (xTB) accept any element. Raises
    :class:`CP2KSetupError` with one line naming the settings file and the first lacking element
    (alphabetically), e.g.
    ``data/cp2k/b97-3c.yaml: element Xe: no TZVP-GTH basis for valence q8 in GTH_BASIS_SETS``.
    The data files are looked up as for ``cp2k.psmp`` (``$CP2K_DATA_DIR``, its compiled-in
    directory, /usr/share/cp2k).
    """
    load_settings(settings_file).check_elements(elements)


def load_settings(source: str | Path | Mapping | CP2KSettings) -> CP2KSettings:
    """Load CP2K settings from a YAML file (or take a mapping) and check their shape."""
    if isinstance(source, CP2KSettings):
        return source
    if isinstance(source, Mapping):
        settings = CP2KSettings(tree=copy.deepcopy(dict(source)))
    else:
        path = Path(source)
        if not path.is_file():
            raise CP2KSetupError(f"CP2K settings file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            from lotf.inputs import yaml_problem

            raise CP2KSetupError(f"{path}: {yaml_problem(exc)}") from None
        if not isinstance(tree, dict):
            raise CP2KSetupError(f"{path}: expected a mapping with a force_eval section")
        settings = CP2KSettings(tree=tree, source=str(path), base_dir=path.parent.resolve())
    _ = settings.force_eval
    settings.check_structure_keys()
    return settings


# --------------------------------------------------------------------------------------------
# structures -> input


def periodicity(atoms: Atoms, index: int | None = None) -> bool:
    """True for fully periodic, False for a molecule in vacuum; mixed periodicity is refused."""
    at = f"frame {index}: " if index is not None else ""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all():
        if abs(atoms.cell.volume) < 1e-6:
            raise CP2KSetupError(f"{at}periodic structure with a zero cell")
        return True
    if not pbc.any():
        return False
    raise CP2KSetupError(f"{at}mixed periodicity pbc={pbc.tolist()} is not supported")


def vacuum_cell(atoms: Atoms, vacuum: float) -> np.ndarray:
    """Cell for a molecule: its own orthorhombic cell if it has one and the molecule fits with
    ``vacuum`` Å on each side, else a cube of the molecule's extent plus 2*vacuum."""
    pos = atoms.get_positions()
    extent = pos.max(axis=0) - pos.min(axis=0) if len(atoms) else np.zeros(3)
    cell = atoms.cell.array
    if abs(atoms.cell.volume) > 1e-6 and np.allclose(cell, np.diag(np.diag(cell))):
        if np.all(np.diag(cell) >= extent + 2 * vacuum - 1e-9):
            return cell
    return np.eye(3) * (extent.max() + 2 * vacuum)


def render_input(settings: CP2KSettings, atoms: Atoms, *, restart: bool = False,
                 vacuum: float = 5.0, executable: str = "cp2k.psmp") -> str:
    """Complete CP2K input for one structure. ``restart`` switches SCF_GUESS to RESTART (the
    wavefunction file ``lotf-RESTART.wfn`` in the working directory)."""
    periodic = periodicity(atoms)
    text, fallback, _ = settings.template(periodic, executable, atoms.get_chemical_symbols())
    cell = atoms.cell.array if periodic else vacuum_cell(atoms, vacuum)
    vec = ["{:.10f} {:.10f} {:.10f}".format(*v) for v in cell]
    coord_lines = [
        f"{s} {x:.10f} {y:.10f} {z:.10f}"
        for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.get_positions())
    ]

    def coords(match: re.Match) -> str:
        return "\n".join(match.group(1) + line for line in coord_lines)

    text = re.sub(rf"^([ \t]*){re.escape(_TOK_COORD)}$", coords, text, flags=re.M)
    return (text.replace(_TOK_A, vec[0]).replace(_TOK_B, vec[1]).replace(_TOK_C, vec[2])
            .replace(_TOK_GUESS, "RESTART" if restart else fallback))


def check_input(settings: CP2KSettings, atoms: Atoms, *, executable: str = "cp2k.psmp",
                vacuum: float = 5.0) -> None:
    """Let the installed CP2K parse the rendered input (``--check``): catches keywords or values
    the bundled schema of cp2k-input-tools accepts but this CP2K build does not."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lotf-cp2k-check-") as tmp:
        inp = Path(tmp) / INPUT_NAME
        inp.write_text(render_input(settings, atoms, vacuum=vacuum, executable=executable))
        cmd, env = cp2k_command(1, 1, executable)
        proc = subprocess.run(cmd + ["--check", str(inp)], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 or "SUCCESS" not in text:
        msg = _abort_message(text) or (text.strip().splitlines() or ["no output"])[-1].strip()
        raise CP2KSetupError(f"{settings.source}: CP2K rejects the input: {msg}")


# --------------------------------------------------------------------------------------------
# output -> results

_ENERGY_RE = re.compile(r"ENERGY\|\s+Total FORCE_EVAL \(\s*\w+\s*\) energy \[([^\]]+)\]:\s+(\S+)")
_STRESS_RE = re.compile(r"STRESS\|\s+(Analytical|Numerical) stress tensor \[(\w+)\]")
_SCF_RE = re.compile(r"SCF run converged in\s+(\d+) steps|outer SCF loop converged in\s+\d+ "
                     r"iterations or\s+(\d+) steps")


_ART_RE = re.compile(r"^\s*(\[ABORT\]|___|/\s+\\|\\___/|O/\||/\| \||/ \\|\|)")


def _abort_message(text: str) -> str:
    """The message inside CP2K's ABORT box, on one line ('' if there is none)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "[ABORT]" in line), None)
    if start is None:
        return ""
    box = []
    for line in lines[max(start - 2, 0): start + 10]:
        s = line.strip()
        if not s.startswith("*") or set(s) <= {"*"}:
            continue
        # strip the border and the ASCII-art figure on the left
        body = _ART_RE.sub("", s.strip("*")).strip()
        body = re.sub(r"\S+\.F:\d+$", "", body).strip()
        if body:
            box.append(body)
    return " ".join(box)


def parse_output(text: str, n_atoms: int, *, stress: bool = True) -> dict[str, Any]:
    """Energy (eV), forces (eV/Å), stress (eV/Å³, ASE sign, Voigt) and SCF steps from a CP2K
    output file. Raises :class:`CP2KRunError` for an unconverged SCF or incomplete output."""
    tail = "\n".join(text.splitlines()[-25:])
    abort = _abort_message(text)
    if abort:
        raise CP2KRunError(f"CP2K aborted: {abort}", tail)
    for marker in ("outer SCF loop FAILED to converge", "SCF run NOT converged"):
        if marker in text:
            before = text[: text.index(marker) + len(marker)].splitlines()[-25:]
            raise CP2KRunError("SCF not converged", "\n".join(before))
    energies = _ENERGY_RE.findall(text)
    if not energies:
        raise CP2KRunError("no total energy in the CP2K output", tail)
    unit, value = energies[-1]
    if unit.lower() not in ("a.u.", "hartree"):
        raise CP2KRunError(f"unexpected energy unit [{unit}] in the CP2K output", tail)
    result: dict[str, Any] = {"energy": float(value) * Hartree}

    lines = text.splitlines()
    start = max((i for i, line in enumerate(lines) if "ATOMIC FORCES in [a.u.]" in line), default=None)
    if start is None:
        raise CP2KRunError("no ATOMIC FORCES block in the CP2K output", tail)
    rows = []
    for line in lines[start + 1:]:
        tok = line.split()
        if not tok or tok[0] == "#":
            continue
        if tok[0] == "SUM" or len(rows) == n_atoms:
            break
        rows.append([float(t) for t in tok[-3:]])
    if len(rows) != n_atoms:
        raise CP2KRunError(f"read {len(rows)} forces for {n_atoms} atoms", tail)
    result["forces"] = np.array(rows) * (Hartree / Bohr)

    if stress:
        idx = max((i for i, line in enumerate(lines) if _STRESS_RE.search(line)), default=None)
        if idx is None:
            raise CP2KRunError("no stress tensor in the CP2K output", tail)
        unit = _STRESS_RE.search(lines[idx]).group(2)
        scale = {"gpa": GPa, "bar": bar}.get(unit.lower())
        if scale is None:
            raise CP2KRunError(f"unexpected stress unit [{unit}]", tail)
        rows = [line.split()[2:5] for line in lines[idx + 2: idx + 5]]
        try:
            sigma = np.array(rows, dtype=float)
        except ValueError:
            raise CP2KRunError("unreadable stress tensor in the CP2K output", tail) from None
        sigma = -sigma * scale  # CP2K prints the pressure tensor: ASE stress is its negative
        result["stress"] = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]

    steps = _SCF_RE.findall(text)
    if steps:
        last = steps[-1]
        result["scf_steps"] = int(last[0] or last[1])
    return result


def attach_results(atoms: Atoms, results: Mapping[str, Any]) -> Atoms:
    """Copy of ``atoms`` with energy/forces/(stress) attached as a SinglePointCalculator."""
    out = atoms.copy()
    props = {k: np.asarray(results[k]) if k != "energy" else float(results[k])
             for k in ("energy", "forces", "stress") if results.get(k) is not None}
    out.calc = SinglePointCalculator(out, **props)
    return out


# --------------------------------------------------------------------------------------------
# running


@dataclass
class CP2KRunner:
    """Runs CP2K single points one after another in ``workdir``, reusing the previous
    wavefunction when the next structure has the same atoms (same elements in the same order).

    After a failure the wavefunction is discarded, so a bad SCF never seeds the next one.
    """

    settings: CP2KSettings
    workdir: Path
    n_ranks: int = 1
    n_threads: int = 1
    executable: str = "cp2k.psmp"
    mpirun: str = "mpirun"
    timeout: float | None = None
    vacuum: float = 5.0
    _last: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _clean(self, wfn: bool) -> None:
        names = [OUTPUT_NAME] + ([WFN_NAME] if wfn else [])
        for path in self.workdir.iterdir():
            if path.name in names or path.name.startswith(f"{WFN_NAME}.bak"):
                path.unlink(missing_ok=True)

    def compute(self, atoms: Atoms) -> dict[str, Any]:
        """One single point; returns parse_output's dict plus ``wall_s`` and ``restart``.
        Raises :class:`CP2KRunError` on failure."""
        periodic = periodicity(atoms)
        signature = tuple(atoms.numbers.tolist())
        restart = self._last == signature and (self.workdir / WFN_NAME).is_file()
        self._clean(wfn=not restart)
        self._last = None
        inp = render_input(self.settings, atoms, restart=restart, vacuum=self.vacuum,
                           executable=self.executable)
        (self.workdir / INPUT_NAME).write_text(inp)
        cmd, env = cp2k_command(self.n_ranks, self.n_threads, self.executable, self.mpirun)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd + ["-i", INPUT_NAME, "-o", OUTPUT_NAME], cwd=self.workdir,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise CP2KRunError(f"CP2K ran longer than the timeout of {self.timeout} s") from None
        wall = time.perf_counter() - t0
        out_path = self.workdir / OUTPUT_NAME
        text = out_path.read_text(errors="replace") if out_path.is_file() else ""
        _, _, stress = self.settings.template(periodic, self.executable,
                                              atoms.get_chemical_symbols())
        if proc.returncode < 0:
            raise CP2KInterrupted(f"CP2K was killed by signal {-proc.returncode}")
        if proc.returncode != 0:
            reason = _abort_message(text) or _abort_message(proc.stderr)
            tail = "\n".join((text + "\n" + proc.stderr).strip().splitlines()[-25:])
            raise CP2KRunError(f"CP2K exited with code {proc.returncode}"
                               + (f": {reason}" if reason else ""), tail)
        result = parse_output(text, len(atoms), stress=stress)
        if "PROGRAM ENDED AT" not in text:
            raise CP2KRunError("CP2K output ends before PROGRAM ENDED", text[-2000:])
        result.update(wall_s=wall, restart=restart)
        self._last = signature
        return result


def single_point(atoms: Atoms, settings: str | Path | Mapping | CP2KSettings, *,
                 n_ranks: int = 1, n_threads: int = 1, executable: str = "cp2k.psmp",
                 workdir: str | Path | None = None, vacuum: float = 5.0) -> Atoms:
    """Label one structure with CP2K; returns a copy with a SinglePointCalculator attached.
    Raises :class:`CP2KRunError` if the single point fails."""
    import tempfile

    settings = load_settings(settings)
    check_executable(executable, n_ranks)
    settings.check_elements(atoms.get_chemical_symbols(), executable)
    with tempfile.TemporaryDirectory(prefix="lotf-cp2k-") as tmp:
        runner = CP2KRunner(settings, Path(workdir or tmp), n_ranks=n_ranks, n_threads=n_threads,
                            executable=executable, vacuum=vacuum)
        return attach_results(atoms, runner.compute(atoms))
