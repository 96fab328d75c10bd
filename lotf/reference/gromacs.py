"""GROMACS OPLS-AA driver: topologies, grompp/mdrun, TRR/EDR reading, frames in eV and Angstrom.

GROMACS works in nm, ps, kJ/mol; everything leaving this module is in Angstrom, fs, eV, eV/A,
eV/A^3 (ASE sign convention). Molecule order in a structure must follow the species order given
to the topology, with each molecule's atoms in the order of its itp (RDKit order of the species'
SMILES, see `lotf.reference.structures.SPECIES_SMILES`).

Forces and coordinates are read from the binary .trr directly (XDR, big-endian); energies and
virials through `gmx energy -dp`. `single_points` evaluates the force field on any frames with
`gmx mdrun -rerun`, which is also the independent check of the units.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ase
import ase.units
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from tqdm.auto import tqdm

from lotf.reference import structures

KJMOL_TO_EV = ase.units.kJ / ase.units.mol  # 1 kJ/mol in eV
FORCE_TO_EV_A = KJMOL_TO_EV / 10.0  # kJ/mol/nm -> eV/A
# GROMACS virial Xi = -1/2 sum r (x) F, so the ASE stress of the potential is 2 Xi / V
VIRIAL_TO_EV = 2.0 * KJMOL_TO_EV

OPLS_DIR = Path(__file__).resolve().parents[2] / "data" / "opls"
WATER_MODELS = ("tip3p", "spce", "spc")
VIRIAL_TERMS = [f"Vir-{a}{b}" for a in "XYZ" for b in "XYZ"]


class GromacsError(RuntimeError):
    """A GROMACS program failed; the message ends with the tail of its output."""


# -------------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class MoleculeType:
    """One GROMACS molecule type: its [ moleculetype ] name, include file and atoms."""

    name: str
    include: str
    resname: str
    atom_names: tuple[str, ...]
    types: tuple[str, ...]
    symbols: tuple[str, ...]


def _itp_atoms(path: Path) -> list[list[str]]:
    """Rows of the first [ atoms ] section of an itp (comments and preprocessor lines dropped)."""
    rows, section = [], None
    for raw in path.read_text().splitlines():
        line = raw.split(";")[0].strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"\[\s*(\w+)\s*\]", line)
        if m:
            if section == "atoms" and m.group(1) != "atoms":
                break
            section = m.group(1)
            continue
        if section == "atoms":
            rows.append(line.split())
    return rows


def _symbols_of(smiles: str) -> tuple[str, ...]:
    from rdkit import Chem

    return tuple(a.GetSymbol() for a in Chem.AddHs(Chem.MolFromSmiles(smiles)).GetAtoms())


def molecule_type(species: str, water_model: str = "tip3p", itp_dir: Path | None = None) -> MoleculeType:
    """GROMACS molecule type of a species name (bmim, bf4: CL&P itps in data/opls; water: oplsaa.ff)."""
    smiles = structures.species_smiles(species)  # raises for unknown species
    key = species.lower()
    if key == "water":
        if water_model not in WATER_MODELS:
            raise ValueError(f"unknown water_model {water_model!r} (known: {', '.join(WATER_MODELS)})")
        path = gromacs_topdir() / "oplsaa.ff" / f"{water_model}.itp"
    else:
        path = (itp_dir or OPLS_DIR) / f"{key}.itp"
        if not path.exists():
            raise FileNotFoundError(f"topology for species {species!r} not found: {path}")
    rows = _itp_atoms(path)
    name = _moleculetype_name(path)
    symbols = _symbols_of(smiles)
    if len(rows) != len(symbols):
        raise ValueError(f"{path}: {len(rows)} atoms, but SMILES {smiles} has {len(symbols)}")
    return MoleculeType(name, str(path), rows[0][3], tuple(r[4] for r in rows), tuple(r[1] for r in rows), symbols)


def _moleculetype_name(path: Path) -> str:
    lines = [ln.split(";")[0].strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    for k, line in enumerate(lines):
        if re.match(r"\[\s*moleculetype\s*\]", line):
            return lines[k + 1].split()[0]
    raise ValueError(f"{path}: no [ moleculetype ]")


def gromacs_topdir() -> Path:
    """GROMACS's force-field directory (GMXDATA/top or next to the gmx binary)."""
    candidates = []
    if "GMXDATA" in os.environ:
        candidates.append(Path(os.environ["GMXDATA"]) / "top")
    candidates.append(Path(gmx_binary()).resolve().parents[1] / "share" / "gromacs" / "top")
    candidates.append(Path("/usr/share/gromacs/top"))
    for c in candidates:
        if (c / "oplsaa.ff" / "forcefield.itp").exists():
            return c
    raise FileNotFoundError("GROMACS oplsaa.ff not found (looked in GMXDATA/top and share/gromacs/top)")


def write_topology(
    path: Path,
    species: Mapping[str, int],
    water_model: str = "tip3p",
    itp_dir: Path | None = None,
) -> list[tuple[MoleculeType, int]]:
    """Write a .top for `species` (ordered name -> count) with OPLS-AA defaults and CL&P types."""
    mols = [(molecule_type(name, water_model, itp_dir), int(n)) for name, n in species.items()]
    for name, n in species.items():
        if n < 0 or int(n) != n:
            raise ValueError(f"species count for {name!r} must be a non-negative integer, got {n}")
    # OPLS-AA [ defaults ]; only the atom types in use, not all of oplsaa.ff's ~800 (grompp
    # would build every pair of them, which takes tens of seconds)
    lines = [
        "; written by lotf.reference.gromacs",
        "[ defaults ]",
        "; nbfunc comb-rule gen-pairs fudgeLJ fudgeQQ",
        "1 3 yes 0.5 0.5",
        f'#include "{(itp_dir or OPLS_DIR) / "clandp_atomtypes.itp"}"',
    ]
    oplsaa_types = sorted({t for m, n in mols if "oplsaa.ff" in Path(m.include).parts for t in m.types})
    if oplsaa_types:
        lines += ["[ atomtypes ]", "; from oplsaa.ff/ffnonbonded.itp", *_oplsaa_atomtypes(oplsaa_types)]
    lines += [f'#include "{m.include}"' for m, _ in mols]
    lines += ["", "[ system ]", "lotf", "", "[ molecules ]"]
    lines += [f"{m.name} {n}" for m, n in mols if n > 0]
    Path(path).write_text("\n".join(lines) + "\n")
    return mols


def _oplsaa_atomtypes(names: Sequence[str]) -> list[str]:
    """Lines of oplsaa.ff/ffnonbonded.itp defining `names` (the normal-mass, not HEAVY_H, branch)."""
    path = gromacs_topdir() / "oplsaa.ff" / "ffnonbonded.itp"
    found, skip = {}, False
    for line in path.read_text().splitlines():
        word = line.split(";")[0].split()
        if not word:
            continue
        if word[0] == "#ifdef":
            skip = True
        elif word[0] in ("#else", "#endif"):
            skip = False
        elif not skip and word[0] in names and word[0] not in found:
            found[word[0]] = line.split(";")[0].rstrip()
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"{path}: atom types {missing} not found")
    return [found[n] for n in names]


def check_order(atoms: ase.Atoms, mols: Sequence[tuple[MoleculeType, int]]) -> None:
    """Raise if the atoms do not follow the topology's molecule and atom order."""
    expected = [s for m, n in mols for s in m.symbols * n]
    if len(expected) != len(atoms):
        raise ValueError(f"structure has {len(atoms)} atoms, topology {len(expected)}")
    got = atoms.get_chemical_symbols()
    for k, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            raise ValueError(f"atom {k} is {a} but the topology expects {b}: species order or atom order differs")


def write_gro(path: Path, atoms: ase.Atoms, mols: Sequence[tuple[MoleculeType, int]]) -> None:
    """Write a .gro (nm) with residue and atom names from the topology (orthorhombic cells)."""
    check_order(atoms, mols)
    cell = atoms.cell.array / 10.0
    if np.abs(cell - np.diag(np.diag(cell))).max() > 1e-9:
        raise ValueError("write_gro: only orthorhombic cells are supported")
    lines, k, res = ["lotf", str(len(atoms))], 0, 0
    pos = atoms.positions / 10.0
    for m, n in mols:
        for _ in range(n):
            res += 1
            for name in m.atom_names:
                x, y, z = pos[k]
                lines.append(
                    f"{res % 100000:5d}{m.resname[:5]:<5s}{name[:5]:>5s}{(k + 1) % 100000:5d}{x:8.3f}{y:8.3f}{z:8.3f}"
                )
                k += 1
    lines.append("".join(f"{v:10.5f}" for v in np.diag(cell)))
    Path(path).write_text("\n".join(lines) + "\n")


# -------------------------------------------------------------------------------- mdp files


def auto_cutoff(atoms: ase.Atoms, maximum: float = 12.0) -> float:
    """Largest safe cutoff (Angstrom) for a box: 0.42 of the shortest edge (room for the
    Verlet buffer and NPT shrinkage below GROMACS's half-box limit), at most `maximum`."""
    return float(min(maximum, 0.42 * atoms.cell.lengths().min()))


def make_mdp(
    kind: str,
    cutoff: float,
    n_steps: int = 0,
    timestep: float = 1.0,
    temperature: float = 300.0,
    interval: int = 100,
    seed: int = 42,
    pressure: float = 1.0,
    tau_t: float = 100.0,
    tau_p: float = 2000.0,
    compressibility: float = 4.5e-5,
    constraints: str = "none",
    define: str = "",
    extra: Mapping[str, object] | None = None,
) -> str:
    """mdp text for `kind` in {"em", "nvt", "npt", "rerun"}.

    Arguments in lotf units: `cutoff` Angstrom, `timestep`, `tau_t`, `tau_p` fs, `pressure` bar,
    `compressibility` 1/bar. PME electrostatics, potential-shifted LJ with the same cutoff and the
    long-range dispersion correction for energy and pressure (OPLS-AA practice); v-rescale
    thermostat, C-rescale barostat. `define` holds preprocessor flags (e.g. "-DFLEXIBLE" for
    flexible water); `extra` entries override or add mdp keys.
    """
    if kind not in ("em", "nvt", "npt", "rerun"):
        raise ValueError(f"unknown mdp kind {kind!r}")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    mdp: dict[str, object] = {
        "cutoff-scheme": "Verlet",
        "pbc": "xyz",
        "coulombtype": "PME",
        "rcoulomb": cutoff / 10.0,
        "rvdw": cutoff / 10.0,
        "vdw-modifier": "Potential-shift",
        "DispCorr": "EnerPres",
        "fourierspacing": 0.12,
        "constraints": constraints,
    }
    if define:
        mdp["define"] = define
    if kind == "em":
        mdp.update(integrator="steep", nsteps=n_steps, emtol=100.0, emstep=0.001)
    elif kind == "rerun":
        mdp.update(integrator="md", nsteps=0, nstxout=1, nstfout=1, nstenergy=1, nstcalcenergy=1, nstlog=0)
    else:
        if n_steps < 0 or interval < 1:
            raise ValueError(f"n_steps must be >= 0 and interval >= 1, got {n_steps}, {interval}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        mdp.update(
            integrator="md",
            dt=timestep / 1000.0,
            nsteps=n_steps,
            nstxout=interval,
            nstvout=interval,
            nstfout=interval,
            nstenergy=interval,
            nstcalcenergy=math.gcd(interval, 100),
            nstlog=max(interval, 1000),
            tcoupl="v-rescale",
            **{"tc-grps": "System", "tau-t": tau_t / 1000.0, "ref-t": temperature},
            **{"gen-vel": "yes", "gen-temp": temperature, "gen-seed": seed % 2**31, "ld-seed": seed % 2**31},
        )
        if kind == "npt":
            mdp.update(
                pcoupl="C-rescale",
                pcoupltype="isotropic",
                **{"tau-p": tau_p / 1000.0, "ref-p": pressure, "compressibility": compressibility},
            )
    mdp.update(extra or {})
    return "".join(f"{k} = {v}\n" for k, v in mdp.items())


# ---------------------------------------------------------------------------- running gmx


def gmx_binary() -> str:
    """Path of the `gmx` binary (GROMACS >= 2021), from $GMX or PATH."""
    exe = os.environ.get("GMX") or shutil.which("gmx") or shutil.which("gmx_mpi")
    if not exe:
        raise FileNotFoundError("gmx not found: install GROMACS (apt-get install gromacs) or set $GMX")
    return exe


def run_gmx(args: Sequence[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `gmx ARGS` in `cwd`; raise GromacsError with the tail of the output on failure."""
    proc = subprocess.run(
        [gmx_binary(), "-quiet", "-nobackup", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        text = (proc.stdout + proc.stderr).strip()
        # grompp's WARNING/ERROR paragraphs say what is wrong; the tail says where it stopped
        notes = re.findall(r"^(?:WARNING|ERROR) \d+ \[.*?(?=\n\n)", text, flags=re.MULTILINE | re.DOTALL)
        tail = "\n".join(notes + text.splitlines()[-12:])
        raise GromacsError(f"gmx {args[0]} failed in {cwd} (exit {proc.returncode}):\n{tail}")
    return proc


def grompp(workdir: Path, name: str, mdp: str, gro: Path, top: Path, maxwarn: int = 0) -> Path:
    """Write `name.mdp` and preprocess it into `name.tpr`."""
    (workdir / f"{name}.mdp").write_text(mdp)
    run_gmx(
        [
            "grompp",
            "-f",
            f"{name}.mdp",
            "-c",
            str(gro),
            "-p",
            str(top),
            "-o",
            f"{name}.tpr",
            "-po",
            f"{name}.out.mdp",
            "-maxwarn",
            str(maxwarn),
        ],
        workdir,
    )
    return workdir / f"{name}.tpr"


def default_threads(n_atoms: int | None = None) -> int:
    """OpenMP threads for mdrun: one per 1000 atoms, at most the CPUs this process may use.

    Small boxes do not scale past one thread (measured: the 300-atom seed box runs 540 ns/day
    on 1 thread and 285 ns/day on 2 of this 2-core machine under load).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cpus if n_atoms is None else max(1, min(cpus, n_atoms // 1000))


def mdrun(
    workdir: Path,
    name: str,
    n_threads: int | None = None,
    rerun: Path | None = None,
    progress: Callable[[], None] | None = None,
) -> None:
    """Run `gmx mdrun -deffnm name` on one thread-MPI rank with `n_threads` OpenMP threads.

    Continues from `name.cpt` when it exists (a killed run resumes). `progress` is called
    every few seconds while it runs.
    """
    args = [
        gmx_binary(),
        "-quiet",
        "-nobackup",
        "mdrun",
        "-deffnm",
        name,
        "-ntmpi",
        "1",
        "-ntomp",
        str(n_threads or default_threads()),
        "-pin",
        "off",
    ]
    if rerun is not None:
        args += ["-rerun", str(rerun)]
    elif (workdir / f"{name}.cpt").exists():
        args += ["-cpi", f"{name}.cpt", "-append"]
    # Busy-waiting OpenMP threads collapse (20x here) when the machine is shared and busy;
    # sleeping waits cost little when it is not. The user's own setting wins.
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}
    with open(workdir / f"{name}.stdout", "w") as out:
        proc = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(0.1 if progress is None else 0.5)
            if progress is not None:
                progress()
    if progress is not None:
        progress()
    if proc.returncode != 0:
        tail = "\n".join((workdir / f"{name}.stdout").read_text().strip().splitlines()[-15:])
        raise GromacsError(f"gmx mdrun -deffnm {name} failed in {workdir} (exit {proc.returncode}):\n{tail}")


# -------------------------------------------------------------------------------- trr / edr


@dataclass
class TrrFrame:
    """One .trr frame in GROMACS units (nm, ps, nm/ps, kJ/mol/nm); absent arrays are None."""

    step: int
    time: float
    box: np.ndarray
    x: np.ndarray | None
    v: np.ndarray | None
    f: np.ndarray | None


_TRR_MAGIC = 1993
_TRR_VERSION = b"GMX_trn_file"


def _trr_header_layout(buf: bytes, off: int) -> tuple[dict, int]:
    magic, _, n2 = struct.unpack_from(">iii", buf, off)
    if magic != _TRR_MAGIC:
        raise ValueError(f"not a .trr frame at byte {off} (magic {magic})")
    off += 12 + ((n2 + 3) // 4) * 4
    keys = ("ir", "e", "box", "vir", "pres", "top", "sym", "x", "v", "f", "natoms", "step", "nre")
    h = dict(zip(keys, struct.unpack_from(">13i", buf, off)))
    off += 52
    natoms = h["natoms"]
    sizes = [h[k] for k in ("box", "x", "v", "f")]
    real = next(s // n for s, n in zip(sizes, (9, 3 * natoms, 3 * natoms, 3 * natoms)) if s and n)
    h["real"] = real
    fmt = ">d" if real == 8 else ">f"
    h["time"] = struct.unpack_from(fmt, buf, off)[0]
    off += 2 * real  # time, lambda
    return h, off


def read_trr(path: Path) -> list[TrrFrame]:
    """Read every frame of a GROMACS .trr file (single or double precision)."""
    buf = Path(path).read_bytes()
    frames, off = [], 0
    while off < len(buf):
        try:
            h, off = _trr_header_layout(buf, off)
        except struct.error:  # truncated last frame of a killed run
            break
        dtype = ">f8" if h["real"] == 8 else ">f4"
        arrays = {}
        for key, shape in (
            ("ir", None),
            ("e", None),
            ("box", (3, 3)),
            ("vir", (3, 3)),
            ("pres", (3, 3)),
            ("top", None),
            ("sym", None),
            ("x", (-1, 3)),
            ("v", (-1, 3)),
            ("f", (-1, 3)),
        ):
            size = h[key]
            if size and shape is not None:
                if off + size > len(buf):
                    return frames
                arrays[key] = np.frombuffer(buf, dtype, size // h["real"], off).reshape(shape).astype(float)
            off += size
        frames.append(
            TrrFrame(h["step"], h["time"], arrays.get("box"), arrays.get("x"), arrays.get("v"), arrays.get("f"))
        )
    return frames


def write_trr(path: Path, frames: Sequence[TrrFrame]) -> None:
    """Write single-precision .trr frames (box and x required; v, f optional)."""
    out = bytearray()
    for fr in frames:
        n = len(fr.x)
        sizes = {k: (0 if getattr(fr, k) is None else 3 * n * 4) for k in ("x", "v", "f")}
        out += struct.pack(">iii", _TRR_MAGIC, len(_TRR_VERSION) + 1, len(_TRR_VERSION)) + _TRR_VERSION
        out += struct.pack(">13i", 0, 0, 36, 0, 0, 0, 0, sizes["x"], sizes["v"], sizes["f"], n, int(fr.step), 0)
        out += struct.pack(">ff", fr.time, 0.0)
        for arr in (fr.box, fr.x, fr.v, fr.f):
            if arr is not None:
                out += np.asarray(arr, ">f4").tobytes()
    Path(path).write_bytes(bytes(out))


def read_energies(edr: Path, terms: Sequence[str]) -> dict[str, np.ndarray]:
    """Time series (GROMACS units) of the named .edr terms via `gmx energy -dp`, plus "Time" (ps).

    Terms absent from the file are left out of the result.
    """
    edr = Path(edr).resolve()
    xvg = edr.with_suffix(".energies.xvg")
    run_gmx(["energy", "-f", str(edr), "-o", str(xvg), "-dp"], edr.parent, stdin="\n".join(terms) + "\n\n")
    legends, rows = [], []
    for line in xvg.read_text().splitlines():
        if line.startswith("@") and " legend " in line and line.split()[1].startswith("s"):
            legends.append(line.split('"')[1])
        elif line and line[0] not in "#@":
            rows.append([float(v) for v in line.split()])
    data = np.array(rows).reshape(len(rows), 1 + len(legends))
    xvg.unlink()
    return {"Time": data[:, 0], **{k: data[:, i + 1] for i, k in enumerate(legends)}}


def frames_from_run(
    trr: Path,
    edr: Path,
    symbols: Sequence[str],
    stress: bool = True,
) -> list[ase.Atoms]:
    """ase.Atoms for every .trr frame that has forces, with GROMACS's potential energy (eV),
    forces (eV/A) and, with `stress`, the potential part of the stress from the virial (eV/A^3).

    Velocities become ASE momenta when present; `info` gets step, time_fs, temperature (K),
    pressure_bar and density (g/cm^3) where the .edr has them. Frames are matched to energies
    by time.
    """
    energies = read_energies(edr, ["Potential", "Temperature", "Pressure", "Density", *VIRIAL_TERMS])
    by_time = {round(t, 6): k for k, t in enumerate(energies["Time"])}
    symbols = list(symbols)
    out = []
    for fr in read_trr(trr):
        if fr.f is None or fr.x is None:
            continue
        k = by_time.get(round(fr.time, 6))
        if k is None:
            raise ValueError(f"{trr}: frame at t = {fr.time} ps has no energy in {edr}")
        if len(fr.x) != len(symbols):
            raise ValueError(f"{trr}: {len(fr.x)} atoms per frame, expected {len(symbols)}")
        atoms = ase.Atoms(symbols, positions=fr.x * 10.0, cell=fr.box * 10.0, pbc=True)
        if fr.v is not None:
            # nm/ps -> A/fs in ASE time units
            atoms.set_velocities(fr.v * 10.0 / (1000.0 * ase.units.fs))
        results = {"energy": energies["Potential"][k] * KJMOL_TO_EV, "forces": fr.f * FORCE_TO_EV_A}
        if stress and all(t in energies for t in VIRIAL_TERMS):
            vir = np.array([energies[t][k] for t in VIRIAL_TERMS]).reshape(3, 3)
            sigma = VIRIAL_TO_EV * vir / atoms.get_volume()
            results["stress"] = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info.update(step=int(fr.step), time_fs=fr.time * 1000.0)
        if "Temperature" in energies:
            atoms.info["temperature"] = float(energies["Temperature"][k])
        if "Pressure" in energies:
            atoms.info["pressure_bar"] = float(energies["Pressure"][k])
        if "Density" in energies:
            atoms.info["density"] = float(energies["Density"][k]) / 1000.0
        out.append(atoms)
    return out


# ------------------------------------------------------------------------------ workflows


@dataclass
class GromacsSettings:
    """Force-field and engine settings shared by every stage (lotf units)."""

    cutoff: float | None = None  # Angstrom; None: auto_cutoff of the starting box
    water_model: str = "tip3p"
    flexible_water: bool = True
    constraints: str = "none"  # "h-bonds" allows a 2 fs time step
    n_threads: int | None = None  # None: default_threads(number of atoms)
    itp_dir: Path | None = None
    extra_mdp: Mapping[str, object] | None = None

    def mdp(self, kind: str, cutoff: float, species: Mapping[str, int], **kw) -> str:
        flexible = self.flexible_water and any(k.lower() == "water" and n > 0 for k, n in species.items())
        return make_mdp(
            kind,
            cutoff,
            constraints=self.constraints,
            define="-DFLEXIBLE" if flexible else "",
            extra=self.extra_mdp,
            **kw,
        )


def _prepare(workdir: Path, atoms: ase.Atoms, species: Mapping[str, int], settings: GromacsSettings):
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    mols = write_topology(workdir / "topol.top", species, settings.water_model, settings.itp_dir)
    write_gro(workdir / "start.gro", atoms, mols)
    cutoff = settings.cutoff or auto_cutoff(atoms)
    return workdir, mols, cutoff


class _TrrProgress:
    """tqdm over MD steps, counting the frames already in the growing .trr file."""

    def __init__(self, trr: Path, n_atoms: int, n_steps: int, interval: int, desc: str, enabled: bool):
        self.trr, self.interval = trr, interval
        # single-precision frame with x, v, f: 84-byte header + 36-byte box + 3 arrays
        self.frame_bytes = 84 + 36 + 3 * 12 * n_atoms
        self.bar = tqdm(total=n_steps, desc=desc, unit="step", disable=not enabled)

    def __call__(self) -> None:
        done = (self.trr.stat().st_size // self.frame_bytes) if self.trr.exists() else 0
        self.bar.n = min(max(done - 1, 0) * self.interval, self.bar.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _run_stage(
    workdir: Path,
    name: str,
    mdp: str,
    gro: Path,
    top: Path,
    n_threads: int | None,
    progress: Callable[[], None] | None = None,
) -> None:
    """grompp + mdrun for one stage. A finished stage with identical inputs (mdp, coordinates,
    topology) is reused, a killed one continues from its checkpoint; otherwise it starts afresh."""
    signature = hashlib.sha256((mdp + gro.read_text() + top.read_text()).encode()).hexdigest()
    sig_file = workdir / f"{name}.sig"
    same = sig_file.exists() and sig_file.read_text() == signature
    if same and (workdir / f"{name}.gro").exists():
        return
    if not (same and (workdir / f"{name}.cpt").exists()):
        for old in workdir.glob(f"{name}.*"):
            old.unlink()
        grompp(workdir, name, mdp, gro, top)
        sig_file.write_text(signature)
    mdrun(workdir, name, n_threads, progress=progress)


def minimise(
    atoms: ase.Atoms,
    species: Mapping[str, int],
    workdir: Path,
    settings: GromacsSettings | None = None,
    n_steps: int = 5000,
) -> ase.Atoms:
    """Steepest-descent energy minimisation (to Fmax < 100 kJ/mol/nm); returns the minimised structure."""
    settings = settings or GromacsSettings()
    workdir, _, cutoff = _prepare(workdir, atoms, species, settings)
    _run_stage(
        workdir,
        "em",
        settings.mdp("em", cutoff, species, n_steps=n_steps),
        workdir / "start.gro",
        workdir / "topol.top",
        settings.n_threads or default_threads(len(atoms)),
    )
    return _read_gro_positions(workdir / "em.gro", atoms)


def _read_gro_positions(gro: Path, template: ase.Atoms) -> ase.Atoms:
    lines = gro.read_text().splitlines()
    n = int(lines[1])
    pos = np.array([[float(ln[20 + 8 * k : 28 + 8 * k]) for k in range(3)] for ln in lines[2 : 2 + n]]) * 10.0
    box = np.array(lines[2 + n].split()[:3], dtype=float) * 10.0
    out = template.copy()
    out.calc = None
    out.positions = pos
    out.set_cell(box, scale_atoms=False)
    out.pbc = True
    return out


def run_md(
    atoms: ase.Atoms,
    species: Mapping[str, int],
    workdir: Path,
    ensemble: str = "nvt",
    temperature: float = 500.0,
    n_steps: int = 1000,
    timestep: float = 1.0,
    interval: int = 100,
    seed: int = 42,
    pressure: float = 1.0,
    settings: GromacsSettings | None = None,
    minimise_steps: int = 5000,
    progress: bool = True,
) -> list[ase.Atoms]:
    """Energy minimisation (if `minimise_steps` > 0) then NVT or NPT MD with GROMACS.

    Returns one frame every `interval` steps (the starting frame included) with OPLS-AA energy,
    forces and virial stress in eV, eV/A, eV/A^3. `timestep` in fs, `pressure` in bar.
    A stage that finished in `workdir` with the same inputs is not redone; a killed MD run
    continues from its checkpoint.
    """
    settings = settings or GromacsSettings()
    if ensemble not in ("nvt", "npt"):
        raise ValueError(f"ensemble must be 'nvt' or 'npt', got {ensemble!r}")
    if not timestep > 0:
        raise ValueError(f"timestep must be positive, got {timestep}")
    workdir, _, cutoff = _prepare(workdir, atoms, species, settings)
    top = workdir / "topol.top"
    start = workdir / "start.gro"
    if minimise_steps > 0:
        _run_stage(
            workdir,
            "em",
            settings.mdp("em", cutoff, species, n_steps=minimise_steps),
            start,
            top,
            settings.n_threads or default_threads(len(atoms)),
        )
        start = workdir / "em.gro"
    mdp = settings.mdp(
        ensemble,
        cutoff,
        species,
        n_steps=n_steps,
        timestep=timestep,
        temperature=temperature,
        interval=interval,
        seed=seed,
        pressure=pressure,
    )
    bar = _TrrProgress(workdir / "md.trr", len(atoms), n_steps, interval, f"GROMACS {ensemble}", progress)
    try:
        _run_stage(workdir, "md", mdp, start, top, settings.n_threads or default_threads(len(atoms)), progress=bar)
    finally:
        bar.close()
    return frames_from_run(workdir / "md.trr", workdir / "md.edr", atoms.get_chemical_symbols())


def single_points(
    frames: Sequence[ase.Atoms],
    species: Mapping[str, int],
    workdir: Path,
    settings: GromacsSettings | None = None,
) -> list[ase.Atoms]:
    """OPLS-AA energy (eV) and forces (eV/A) of each frame via `gmx mdrun -rerun`.

    Frames must follow the topology's atom order; orthorhombic cells may differ between frames
    (volume scans). The cutoff defaults to `auto_cutoff` of the smallest cell and the PME grid
    is set from the largest. No stress: GROMACS 2022 writes no virial in reruns.
    """
    if not frames:
        return []
    settings = settings or GromacsSettings()
    for k, a in enumerate(frames):
        if a.get_chemical_symbols() != frames[0].get_chemical_symbols():
            raise ValueError(f"frame {k}: atoms differ from frame 0")
    smallest = min(frames, key=lambda a: a.cell.lengths().min())
    largest = max(frames, key=lambda a: a.get_volume())
    cutoff = settings.cutoff or auto_cutoff(smallest)
    workdir, _, _ = _prepare(workdir, largest, species, settings)
    trr_in = [TrrFrame(k, float(k), a.cell.array / 10.0, a.positions / 10.0, None, None) for k, a in enumerate(frames)]
    write_trr(workdir / "rerun_in.trr", trr_in)
    grompp(workdir, "rerun", settings.mdp("rerun", cutoff, species), workdir / "start.gro", workdir / "topol.top")
    mdrun(workdir, "rerun", settings.n_threads or default_threads(len(frames[0])), rerun=workdir / "rerun_in.trr")
    out = frames_from_run(workdir / "rerun.trr", workdir / "rerun.edr", frames[0].get_chemical_symbols(), stress=False)
    if len(out) != len(frames):
        raise GromacsError(f"rerun returned {len(out)} frames for {len(frames)} inputs")
    result = []
    for a, b in zip(frames, out):
        c = a.copy()
        c.calc = SinglePointCalculator(c, **b.calc.results)
        result.append(c)
    return result


def run_seed(
    species: Mapping[str, int],
    density: float,
    workdir: Path,
    temperature: float = 500.0,
    n_steps: int = 5_000_000,
    timestep: float = 1.0,
    interval: int = 1000,
    seed: int = 42,
    tolerance: float = 2.0,
    settings: GromacsSettings | None = None,
    progress: bool = True,
) -> list[ase.Atoms]:
    """Classical OPLS-AA seed trajectory (seed 1: 10 BMIM + 10 BF4, 1.210 g/cm^3, 500 K, 5 ns).

    Packmol box at `density` (g/cm^3) -> steepest descent -> NVT at `temperature` (K) for
    `n_steps` of `timestep` fs; one labelled frame every `interval` steps.
    """
    for name, value in (("density", density), ("temperature", temperature), ("timestep", timestep)):
        if not value > 0:
            raise ValueError(f"run_seed: {name} must be positive, got {value}")
    box = structures.pack_species(species, density, tolerance=tolerance, seed=seed)
    return run_md(
        box,
        species,
        workdir,
        "nvt",
        temperature,
        n_steps,
        timestep,
        interval,
        seed,
        settings=settings,
        progress=progress,
    )
