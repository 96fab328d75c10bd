"""A force field as the reference: OpenMM in this process labels frames and runs the truth MD.

Two force fields, both flexible (no constraints), both with PME:

* ``spcfw`` (alias ``water``): SPC/Fw flexible water (Wu, Tepper, Voth, J. Chem. Phys. 124,
  024503 (2006)): O-H bond k = 1059.162 kcal/mol/Å², r0 = 1.012 Å; H-O-H angle
  k = 75.90 kcal/mol/rad², θ0 = 113.24° (both with the 1/2: V = k/2 (x - x0)²); q_O = -0.82 e,
  q_H = +0.41 e; LJ on O only, σ = 3.165492 Å, ε = 0.1554253 kcal/mol. All intramolecular
  nonbonded pairs excluded. Default cutoff 9 Å.
* ``bmim_bf4``: the CL&P OPLS-AA topology of the GROMACS seed, read from ``data/opls``
  (``clandp_atomtypes.itp``, ``bmim.itp``, ``bf4.itp``) with the ``[ defaults ]`` that
  :func:`lotf.reference.gromacs.write_topology` writes: geometric combination (comb-rule 3),
  gen-pairs, fudgeLJ = fudgeQQ = 0.5, nrexcl 3. Default cutoff 7 Å: a box of 10 ion pairs
  (14.6 Å at 1.21 g/cm³) needs no supercell (the GROMACS seed's own cutoff for that box is
  0.42 x 14.6 = 6.1 Å; 12 Å, its largest, costs 30x more per label through a 2x2x2 supercell).

Nonbonded treatment, the GROMACS seed's mdp (``lotf.reference.gromacs.make_mdp``) rebuilt in
OpenMM: one cutoff ``rc`` for LJ and real-space Coulomb; LJ potential-shifted at ``rc``
(``vdw-modifier = Potential-shift``); PME with the real-space potential also shifted at ``rc``
(GROMACS's default ``coulomb-modifier``), Ewald coefficient β from erfc(β rc) = ``ewald_rtol``
(GROMACS's rule, 1e-5), PME grid spacing 0.3/β (GROMACS's 0.12 nm at a 1 nm cutoff, scaled with
the cutoff so that short cutoffs keep their accuracy; OpenMM's B-splines are of order 5,
GROMACS's of order 4); 1-4 pairs in full, without cutoff; the
long-range dispersion correction for energy and pressure (``DispCorr = EnerPres``) with
GROMACS's average C6 (all atom pairs less self pairs and excluded pairs) of the frame itself, so
labelling through a supercell (below) changes nothing. (GROMACS handed the explicit 2x2x2
supercell counts 8x the atoms and gets a <C6> different by O(1/N): 0.35 kJ/mol per 10 ion pairs
at 12 Å.) Measured against ``gmx mdrun -rerun`` of the seed's mdp on a BMIM-BF4 frame: energy
within 0.1 kJ/mol of 2000 once both PME grids are converged (the tests).

The dispersion correction is GROMACS's in full: the energy of the uniform fluid beyond the
cutoff plus the energy that undoes the LJ shift inside it (-2π/3 N² <C6> / (V rc³) each, so
-4π/3 N² <C6> / (V rc³) in all, in OpenMM's long-range correction of the LJ force) and the
constant 1/2 N <C6> / rc^6 (added to the energy only). Its volume derivative is GROMACS's
pressure correction, so the energy, the finite-difference stress and the Monte-Carlo barostat
all agree with GROMACS's virial and barostat; the energy is GROMACS's ``Potential``.

Boxes: any periodic cell. Frames are rotated to OpenMM's lower-triangular, reduced box form
(forces and stress are rotated back), and a box narrower than twice the cutoff is labelled
through a periodic supercell (``replication``): energy per copy, forces averaged over the copies,
stress unchanged. That is the same periodic system, so the cutoff is one number for all frames
and the labels of a 96-atom box and of the 1536-atom MD box come from one Hamiltonian.
Non-periodic frames (pbc all False) are computed without cutoff, without stress.

Stress: OpenMM reports no virial, so the stress is the central finite difference of the energy
under a homogeneous deformation F = I + h e_i e_j^T of positions and box, with F upper
triangular (it keeps the box lower triangular; for a rotation-invariant energy dE/dF_ij at F = I
is the symmetric virial), six components, ``strain_step`` h = 1e-3 by default. The CPU
platform sums energies of single-precision terms, so smaller steps amplify its noise: measured
on a 768-atom water box against the double-precision Reference platform, h = 1e-5 / 1e-4 / 1e-3
give errors up to 200 / 40 / 5 bar; the O(h²) truncation error at 1e-3 is far below that. The
PME grid of a frame is kept for its strained copies, and both the LJ and the real-space Coulomb
potentials are shifted to zero at the cutoff, so the energy is a continuous function of the
strain (pairs crossing the cutoff make no jumps).

Units out: eV, eV/Å, eV/Å³ (ASE sign: stress = dE/dε / V; Voigt order xx yy zz yz xz xy).
1 eV = 96.48533212 kJ/mol (e·N_A, exact in SI 2019), 1 nm = 10 Å.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.singlepoint import SinglePointCalculator
from tqdm.auto import tqdm

from lotf.reference.labelling import LabelReport, ResultStore, collect_labelled, structure_key

__all__ = [
    "EV_IN_KJ_PER_MOL",
    "FF_STORE_ENV",
    "ForceField",
    "ForceFieldError",
    "ForceFieldSettings",
    "Molecule",
    "Engine",
    "MDSummary",
    "default_store",
    "force_field",
    "gromacs_dispersion_energy",
    "label_frames",
    "molecule_sequence",
    "run_md",
]

log = logging.getLogger(__name__)

EV_IN_KJ_PER_MOL = 96.48533212  # e * N_A / 1000, exact since SI 2019
KJ_PER_MOL_TO_EV = 1.0 / EV_IN_KJ_PER_MOL
NM = 10.0  # Å per nm
KCAL = 4.184  # kJ per kcal
ONE_4PI_EPS0 = 138.935457644  # kJ/mol nm e^-2 (the constant OpenMM 8 uses)
AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660
FF_STORE_ENV = "LOTF_FF_STORE"
_SCHEMA = 1  # bump when the meaning of a stored label changes
OPLS_DIR = Path(__file__).resolve().parents[2] / "data" / "opls"


class ForceFieldError(ValueError):
    """A frame the force field cannot describe, or bad settings: one line, naming the first problem."""


# ============================================================================================
# topology


@dataclass(frozen=True)
class Molecule:
    """One molecule type in OpenMM units (nm, kJ/mol, rad, e, amu); atom indices from 0.

    ``torsions`` are periodic terms (i, j, k, l, periodicity, phase, k): k (1 + cos(nφ - phase)).
    ``exclusions`` are the intramolecular pairs without normal nonbonded interaction, ``pairs``
    the 1-4 pairs computed in full with fudgeLJ/fudgeQQ.
    """

    name: str
    symbols: tuple[str, ...]
    masses: tuple[float, ...]
    charges: tuple[float, ...]
    sigma: tuple[float, ...]
    epsilon: tuple[float, ...]
    bonds: tuple[tuple[int, int, float, float], ...] = ()
    angles: tuple[tuple[int, int, int, float, float], ...] = ()
    torsions: tuple[tuple[int, int, int, int, int, float, float], ...] = ()
    pairs: tuple[tuple[int, int], ...] = ()
    exclusions: tuple[tuple[int, int], ...] = ()

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def c6_root(self) -> np.ndarray:
        """sqrt(C6) per atom (geometric combination: C6_ij = sqrt(C6_i C6_j))."""
        sig, eps = np.asarray(self.sigma), np.asarray(self.epsilon)
        return np.sqrt(4.0 * eps * sig**6)

    @property
    def c12_root(self) -> np.ndarray:
        sig, eps = np.asarray(self.sigma), np.asarray(self.epsilon)
        return np.sqrt(4.0 * eps * sig**12)


@dataclass(frozen=True)
class ForceField:
    """Molecule types and the rules that combine them."""

    name: str
    molecules: tuple[Molecule, ...]
    fudge_lj: float
    fudge_qq: float
    default_cutoff: float  # Å
    source: str  # everything the parameters were read from (part of the label digest)

    def molecule(self, name: str) -> Molecule:
        for mol in self.molecules:
            if mol.name.lower() == name.lower():
                return mol
        raise ForceFieldError(f"force field {self.name!r} has no molecule {name!r} "
                              f"(has {', '.join(m.name for m in self.molecules)})")


def _exclusions(n_atoms: int, bonds: Iterable[tuple[int, int]], nrexcl: int) -> tuple[tuple[int, int], ...]:
    """Pairs within ``nrexcl`` bonds (GROMACS's rule)."""
    neighbours = [set() for _ in range(n_atoms)]
    for i, j in bonds:
        neighbours[i].add(j)
        neighbours[j].add(i)
    out = set()
    for start in range(n_atoms):
        seen, frontier = {start}, {start}
        for _ in range(nrexcl):
            frontier = {k for f in frontier for k in neighbours[f]} - seen
            seen |= frontier
        out |= {(start, k) for k in seen if k > start}
    return tuple(sorted(out))


def spcfw() -> ForceField:
    """SPC/Fw flexible water (parameters in the module docstring)."""
    sigma_o, eps_o = 3.165492 / NM, 0.1554253 * KCAL
    water = Molecule(
        name="water",
        symbols=("O", "H", "H"),
        masses=(15.9994, 1.008, 1.008),
        charges=(-0.82, 0.41, 0.41),
        sigma=(sigma_o, 0.1, 0.1),
        epsilon=(eps_o, 0.0, 0.0),
        bonds=((0, 1, 1.012 / NM, 1059.162 * KCAL * NM**2), (0, 2, 1.012 / NM, 1059.162 * KCAL * NM**2)),
        angles=((1, 0, 2, math.radians(113.24), 75.90 * KCAL),),
        exclusions=((0, 1), (0, 2), (1, 2)),
    )
    return ForceField("spcfw", (water,), 1.0, 1.0, 9.0, source=repr(water))


# --------------------------------------------------------------------------------------------
# GROMACS itp files (the subset the CL&P topologies use, and a little more)


def _itp_sections(text: str) -> list[tuple[str, list[list[str]]]]:
    sections: list[tuple[str, list[list[str]]]] = []
    for raw in text.splitlines():
        line = raw.split(";")[0].strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"\[\s*(\w+)\s*\]", line)
        if m:
            sections.append((m.group(1).lower(), []))
        elif sections:
            sections[-1][1].append(line.split())
    return sections


def _read_atomtypes(path: Path) -> dict[str, tuple[float, float]]:
    """name -> (sigma nm, epsilon kJ/mol) of an [ atomtypes ] file (comb-rule 2/3 layout)."""
    types = {}
    for name, rows in _itp_sections(path.read_text()):
        if name == "atomtypes":
            for row in rows:
                types[row[0]] = (float(row[-2]), float(row[-1]))
    return types


def read_itp(path: Path, atomtypes: Mapping[str, tuple[float, float]]) -> Molecule:
    """One [ moleculetype ] of a GROMACS itp: bonds (1), angles (1), dihedrals (1, 4, 9: periodic;
    5: Fourier/OPLS; 3: Ryckaert-Bellemans is refused), pairs (1, from gen-pairs)."""
    path = Path(path)
    sections = _itp_sections(path.read_text())
    names = [rows for name, rows in sections if name == "moleculetype"]
    if len(names) != 1:
        raise ForceFieldError(f"{path}: expected one [ moleculetype ], found {len(names)}")
    mol_name, nrexcl = names[0][0][0], int(names[0][0][1])
    atoms = [row for name, rows in sections if name == "atoms" for row in rows]
    symbols, masses, charges, sigma, epsilon = [], [], [], [], []
    for row in atoms:
        if row[1] not in atomtypes:
            raise ForceFieldError(f"{path}: atom type {row[1]} not in the atom types")
        sig, eps = atomtypes[row[1]]
        charges.append(float(row[6]))
        masses.append(float(row[7]))
        sigma.append(sig)
        epsilon.append(eps)
        symbols.append(_element_of(row[4], float(row[7])))
    bonds, angles, torsions, pairs = [], [], [], []
    for name, rows in sections:
        for row in rows:
            if name == "bonds":
                if row[2] != "1":
                    raise ForceFieldError(f"{path}: bond function {row[2]} not supported (only 1)")
                bonds.append((int(row[0]) - 1, int(row[1]) - 1, float(row[3]), float(row[4])))
            elif name == "angles":
                if row[3] != "1":
                    raise ForceFieldError(f"{path}: angle function {row[3]} not supported (only 1)")
                angles.append((int(row[0]) - 1, int(row[1]) - 1, int(row[2]) - 1, math.radians(float(row[4])),
                               float(row[5])))
            elif name == "pairs":
                if row[2] != "1" or len(row) > 3:
                    raise ForceFieldError(f"{path}: only generated pairs (function 1, no parameters) are supported")
                pairs.append((int(row[0]) - 1, int(row[1]) - 1))
            elif name == "dihedrals":
                idx = tuple(int(v) - 1 for v in row[:4])
                funct = row[4]
                if funct in ("1", "4", "9"):
                    torsions.append((*idx, int(row[7]), math.radians(float(row[5])), float(row[6])))
                elif funct == "5":
                    # V = 1/2 [C1 (1 + cos φ) + C2 (1 - cos 2φ) + C3 (1 + cos 3φ) + C4 (1 - cos 4φ)]
                    for n, c in enumerate(row[5:9], start=1):
                        if float(c) != 0.0:
                            torsions.append((*idx, n, 0.0 if n % 2 else math.pi, 0.5 * float(c)))
                else:
                    raise ForceFieldError(f"{path}: dihedral function {funct} not supported (1, 4, 5, 9)")
    return Molecule(
        name=mol_name.lower(), symbols=tuple(symbols), masses=tuple(masses), charges=tuple(charges),
        sigma=tuple(sigma), epsilon=tuple(epsilon), bonds=tuple(bonds), angles=tuple(angles),
        torsions=tuple(torsions), pairs=tuple(pairs),
        exclusions=_exclusions(len(symbols), [(b[0], b[1]) for b in bonds], nrexcl),
    )


def _element_of(atom_name: str, mass: float) -> str:
    from ase.data import atomic_masses, chemical_symbols

    z = int(np.argmin(np.abs(atomic_masses[1:] - mass))) + 1
    return chemical_symbols[z]


def clandp_bmim_bf4(itp_dir: Path | None = None) -> ForceField:
    """CL&P OPLS-AA BMIM+ and BF4- as the GROMACS seed uses them (see the module docstring)."""
    itp_dir = Path(itp_dir or OPLS_DIR)
    files = [itp_dir / n for n in ("clandp_atomtypes.itp", "bmim.itp", "bf4.itp")]
    for f in files:
        if not f.exists():
            raise ForceFieldError(f"force field bmim_bf4: {f} not found")
    types = _read_atomtypes(files[0])
    mols = (read_itp(files[1], types), read_itp(files[2], types))
    source = "".join(f.read_text() for f in files)
    return ForceField("bmim_bf4", mols, 0.5, 0.5, 7.0, source=source)


_ALIASES = {"water": "spcfw", "spc/fw": "spcfw", "spcfw": "spcfw", "bmim_bf4": "bmim_bf4",
            "bmim-bf4": "bmim_bf4", "bmimbf4": "bmim_bf4", "clandp": "bmim_bf4"}


@lru_cache(maxsize=None)
def force_field(name: str) -> ForceField:
    """``spcfw`` (``water``) or ``bmim_bf4``."""
    key = _ALIASES.get(str(name).lower())
    if key is None:
        raise ForceFieldError(f"unknown force field {name!r} (known: spcfw/water, bmim_bf4)")
    return spcfw() if key == "spcfw" else clandp_bmim_bf4()


def _species_list(species: Mapping[str, int] | Sequence | None) -> list[tuple[str, int]] | None:
    if species is None:
        return None
    items = list(species.items()) if isinstance(species, Mapping) else [tuple(s) for s in species]
    for name, n in items:
        if int(n) != n or n < 0:
            raise ForceFieldError(f"species count for {name!r} must be a non-negative integer, got {n}")
    return [(str(name), int(n)) for name, n in items]


def molecule_sequence(atoms: Atoms, ff: ForceField, species=None, where: str = "frame") -> tuple[str, ...]:
    """Molecule names, in order, that make up ``atoms``; raises ForceFieldError at the first mismatch.

    With ``species`` (ordered name -> count, e.g. ``{"bmim": 10, "bf4": 10}``) the atoms must
    be those molecules in that order, each molecule's atoms in its topology order. Without it
    the molecules are read off the element sequence (each molecule type starts with its own
    element sequence; the first that fits is taken).
    """
    symbols = atoms.get_chemical_symbols()
    spec = _species_list(species)
    if spec is not None:
        sequence = [ff.molecule(name).name for name, n in spec for _ in range(n)]
        expected = [(m, k, s) for m in sequence for k, s in enumerate(ff.molecule(m).symbols)]
        for i, (got, (mol, k, want)) in enumerate(zip(symbols, expected)):
            if got != want:
                raise ForceFieldError(f"{where}: atom {i} is {got} but the topology expects {want} "
                                      f"(atom {k} of a {mol}): species or atom order differs")
        if len(symbols) != len(expected):
            raise ForceFieldError(f"{where}: {len(symbols)} atoms but the topology "
                                  f"({', '.join(f'{n} {c}' for n, c in spec)}) has {len(expected)}")
        return tuple(sequence)
    sequence, i = [], 0
    while i < len(symbols):
        for mol in ff.molecules:
            if tuple(symbols[i:i + len(mol)]) == mol.symbols:
                sequence.append(mol.name)
                i += len(mol)
                break
        else:
            known = ", ".join(f"{m.name} ({''.join(m.symbols)})" for m in ff.molecules)
            raise ForceFieldError(f"{where}: atom {i} ({symbols[i]}) starts no molecule of force field "
                                  f"{ff.name!r}; atoms {i}.. are {''.join(symbols[i:i + 12])}..., "
                                  f"molecules are {known}")
    return tuple(sequence)


def gromacs_average_c6(ff: ForceField, sequence: Sequence[str]) -> float:
    """GROMACS's <C6> for the dispersion correction: over all atom pairs less self pairs and
    excluded pairs (kJ/mol nm^6)."""
    roots, excl_sum, n_excl = [], 0.0, 0
    for name in sequence:
        mol = ff.molecule(name)
        b = mol.c6_root
        roots.append(b)
        excl_sum += sum(b[i] * b[j] for i, j in mol.exclusions)
        n_excl += len(mol.exclusions)
    b = np.concatenate(roots)
    n = len(b)
    pair_sum = 0.5 * (b.sum() ** 2 - (b**2).sum())
    n_pairs = n * (n - 1) // 2 - n_excl
    return float((pair_sum - excl_sum) / n_pairs) if n_pairs > 0 else 0.0


def tail_energy(ff: ForceField, sequence: Sequence[str], volume_nm3: float, cutoff_nm: float) -> float:
    """Dispersion energy beyond the cutoff for a uniform fluid, kJ/mol: -2π/3 N² <C6> / (V rc³)."""
    n = sum(len(ff.molecule(m)) for m in sequence)
    return -2.0 * math.pi / 3.0 * n * n * gromacs_average_c6(ff, sequence) / (volume_nm3 * cutoff_nm**3)


def dispersion_constant(ff: ForceField, sequence: Sequence[str], cutoff_nm: float) -> float:
    """The volume-independent part of GROMACS's correction with potential-shift, kJ/mol:
    1/2 N <C6> / rc^6 (the self pair that the uniform-fluid shift compensation counts)."""
    n = sum(len(ff.molecule(m)) for m in sequence)
    return 0.5 * n * gromacs_average_c6(ff, sequence) / cutoff_nm**6


def gromacs_dispersion_energy(ff: ForceField, sequence: Sequence[str], volume_nm3: float, cutoff_nm: float) -> float:
    """GROMACS's ``Disper. corr.`` energy (potential-shift LJ, DispCorr EnerPres), kJ/mol: twice
    the tail (tail + shift compensation) plus :func:`dispersion_constant`."""
    return (2.0 * tail_energy(ff, sequence, volume_nm3, cutoff_nm)
            + dispersion_constant(ff, sequence, cutoff_nm))


# ============================================================================================
# settings


@dataclass(frozen=True)
class ForceFieldSettings:
    """Everything that decides a label (all of it goes into the store key).

    Attributes:
        forcefield: ``spcfw`` (``water``) or ``bmim_bf4``.
        species: ordered molecule counts the frames must follow (None: read from each frame).
        cutoff: Å, LJ and real-space Coulomb (None: the force field's default, 9 Å water, 7 Å BMIM-BF4).
        ewald_rtol: erfc(β rc) (GROMACS's ewald-rtol).
        fourier_spacing: Å, largest PME grid spacing (None: 0.3/β, which is GROMACS's
            0.12 nm at its 1 nm cutoff scaled to the Ewald coefficient of this cutoff).
        dispersion_correction: GROMACS's long-range dispersion correction (energy and pressure).
        stress: compute the stress by finite differences (13 energies per frame instead of 1).
        strain_step: the finite-difference strain h.
        platform: OpenMM platform (``CPU``; ``Reference`` is double precision and slow).
        threads: CPU threads (None: OpenMM's default; not part of the label).
    """

    forcefield: str = "water"
    species: tuple | None = None
    cutoff: float | None = None
    ewald_rtol: float = 1e-5
    fourier_spacing: float | None = None
    dispersion_correction: bool = True
    stress: bool = True
    strain_step: float = 1e-3
    platform: str = "CPU"
    threads: int | None = None

    def __post_init__(self):
        ff = force_field(self.forcefield)  # raises for unknown names
        object.__setattr__(self, "forcefield", ff.name)
        spec = _species_list(self.species)
        object.__setattr__(self, "species", None if spec is None else tuple(spec))
        if spec is not None:
            for name, _ in spec:
                ff.molecule(name)
        if self.cutoff is None:
            object.__setattr__(self, "cutoff", ff.default_cutoff)
        if not self.cutoff > 0:
            raise ForceFieldError(f"cutoff must be > 0 Å, got {self.cutoff}")
        if not 0 < self.ewald_rtol < 1:
            raise ForceFieldError(f"ewald_rtol must be in (0, 1), got {self.ewald_rtol}")
        if self.fourier_spacing is not None and not self.fourier_spacing > 0:
            raise ForceFieldError(f"fourier_spacing must be > 0 Å, got {self.fourier_spacing}")
        if not 0 < self.strain_step < 0.01:
            raise ForceFieldError(f"strain_step must be in (0, 0.01), got {self.strain_step}")
        if self.platform not in ("CPU", "Reference"):
            raise ForceFieldError(f"platform must be CPU or Reference, got {self.platform!r}")

    @classmethod
    def of(cls, value: str | Mapping | ForceFieldSettings | None = None, **overrides) -> ForceFieldSettings:
        if isinstance(value, ForceFieldSettings):
            return cls(**{**asdict(value), **overrides}) if overrides else value
        if isinstance(value, Mapping):
            return cls(**{**dict(value), **overrides})
        return cls(**({"forcefield": value} if value is not None else {}), **overrides)

    @property
    def ff(self) -> ForceField:
        return force_field(self.forcefield)

    @property
    def digest(self) -> str:
        import openmm

        blob = {k: v for k, v in asdict(self).items() if k != "threads"}
        blob.update(schema=_SCHEMA, openmm=openmm.__version__,
                    source=hashlib.sha256(self.ff.source.encode()).hexdigest())
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=list).encode()).hexdigest()


def ewald_coefficient(cutoff_nm: float, rtol: float) -> float:
    """β (1/nm) with erfc(β rc) = rtol, by bisection as GROMACS does."""
    lo, hi = 0.0, 5.0
    while math.erfc(hi * cutoff_nm) > rtol:
        hi *= 2.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if math.erfc(mid * cutoff_nm) > rtol:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _fft_size(n: int) -> int:
    """Smallest m >= n with no prime factor above 7."""
    m = max(int(n), 6)
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def pme_grid(box_nm: np.ndarray, settings: ForceFieldSettings) -> tuple[int, int, int]:
    """PME grid points along the reduced box's diagonal for the settings' spacing."""
    if settings.fourier_spacing is not None:
        spacing = settings.fourier_spacing / NM
    else:
        spacing = PME_BETA_SPACING / ewald_coefficient(settings.cutoff / NM, settings.ewald_rtol)
    return tuple(_fft_size(math.ceil(box_nm[k, k] / spacing - 1e-9)) for k in range(3))


PME_BETA_SPACING = 0.3  # β h: the grid spacing h in units of 1/β


# ============================================================================================
# geometry


def _tree_edges(mol: Molecule) -> tuple[tuple[int, int], ...]:
    """(parent, child) bonds of a breadth-first tree from atom 0 (children placed after parents)."""
    neighbours = [[] for _ in range(len(mol))]
    for i, j, *_ in mol.bonds:
        neighbours[i].append(j)
        neighbours[j].append(i)
    edges, done, queue = [], {0}, [0]
    while queue:
        i = queue.pop(0)
        for j in sorted(neighbours[i]):
            if j not in done:
                done.add(j)
                edges.append((i, j))
                queue.append(j)
    return tuple(edges)


def make_whole(atoms: Atoms, ff: ForceField, sequence: Sequence[str]) -> Atoms:
    """Copy with every molecule whole: each atom at the minimum image of its bonded parent
    (needed before a frame is replicated: a molecule cut by the small box would be bonded
    across copies in the supercell)."""
    out = atoms.copy()
    if not np.all(atoms.pbc):
        return out
    pos = out.positions.copy()
    cell = out.cell.array
    inv = np.linalg.inv(cell)
    starts: dict[str, list[int]] = {}
    offset = 0
    for name in sequence:
        starts.setdefault(name, []).append(offset)
        offset += len(ff.molecule(name))
    for name, offsets in starts.items():
        off = np.asarray(offsets)
        for i, j in _tree_edges(ff.molecule(name)):
            d = pos[off + j] - pos[off + i]
            d -= np.round(d @ inv) @ cell
            pos[off + j] = pos[off + i] + d
    out.positions = pos
    return out


def reduce_box(box: np.ndarray) -> np.ndarray:
    """OpenMM's reduced form of a lower-triangular box (rows a, b, c): |b_x| <= a_x/2,
    |c_x| <= a_x/2, |c_y| <= b_y/2; the same lattice."""
    a, b, c = (np.array(v, float) for v in box)
    c = c - b * round(c[1] / b[1])
    c = c - a * round(c[0] / a[0])
    b = b - a * round(b[0] / a[0])
    return np.array([a, b, c])


def standard_frame(atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions Å, reduced lower-triangular box Å, rotation Q) with new = old @ Q.T."""
    cell, q = atoms.cell.standard_form()
    cell = np.array(cell)
    if np.linalg.det(cell) <= 0:
        raise ForceFieldError("the cell is left-handed or degenerate")
    return atoms.positions @ q.T, reduce_box(cell), q


def replication_for(box: np.ndarray, cutoff: float, margin: float = 0.01) -> tuple[int, int, int]:
    """Copies along a, b, c so that the reduced supercell's diagonal is at least 2 cutoff (1 + margin)."""
    need = 2.0 * cutoff * (1.0 + margin)
    n = [1, 1, 1]
    for _ in range(64):
        sup = reduce_box(_standard(np.array([box[k] * n[k] for k in range(3)])))
        diag = np.diag(sup)
        if np.all(diag >= need):
            return tuple(n)
        k = int(np.argmin(diag / need))
        n[k] += 1
    raise ForceFieldError(f"no supercell found for cutoff {cutoff} Å and box {box.tolist()}")


def _standard(cell: np.ndarray) -> np.ndarray:
    from ase.cell import Cell

    return np.array(Cell(cell).standard_form()[0])


def _supercell_positions(positions: np.ndarray, box: np.ndarray, rep: tuple[int, int, int]) -> np.ndarray:
    shifts = [i * box[0] + j * box[1] + k * box[2] for i in range(rep[0]) for j in range(rep[1])
              for k in range(rep[2])]
    return np.concatenate([positions + s for s in shifts])


def _supercell_box(box: np.ndarray, rep: tuple[int, int, int]) -> np.ndarray:
    """The supercell's box, rows a n_a, b n_b, c n_c (still lower triangular), reduced."""
    return reduce_box(box * np.asarray(rep, float)[:, None])


# ============================================================================================
# the OpenMM system


def build_system(ff: ForceField, sequence: Sequence[str], settings: ForceFieldSettings,
                 box_nm: np.ndarray | None, grid: tuple[int, int, int] | None = None,
                 n_copies: int = 1, for_md: bool = False):
    """An ``openmm.System`` for the molecules ``sequence`` (repeated ``n_copies`` times, the
    supercell). ``box_nm`` None: non-periodic, no cutoff. Force groups: 0 bonds, 1 angles,
    2 torsions, 3 Coulomb (PME + exceptions), 4 LJ (shifted, Coulomb shift, dispersion correction
    less its constant, see :func:`dispersion_constant`)."""
    import openmm

    system = openmm.System()
    periodic = box_nm is not None
    rc = settings.cutoff / NM
    bonds = openmm.HarmonicBondForce()
    angles = openmm.HarmonicAngleForce()
    torsions = openmm.PeriodicTorsionForce()
    coulomb = openmm.NonbondedForce()
    for f in (bonds, angles, torsions):
        f.setUsesPeriodicBoundaryConditions(periodic)
    if periodic:
        beta = ewald_coefficient(rc, settings.ewald_rtol)
        coulomb.setNonbondedMethod(openmm.NonbondedForce.PME)
        coulomb.setCutoffDistance(rc)
        coulomb.setPMEParameters(beta, *grid)
        coulomb.setExceptionsUsePeriodicBoundaryConditions(True)
        shift = ONE_4PI_EPS0 * math.erfc(beta * rc) / rc
        # shifted LJ + the constant that shifts PME's real-space Coulomb to zero at rc; beyond rc
        # (only the long-range correction integrates there) -tail C6 / r^6, tail set below
        lj = openmm.CustomNonbondedForce(
            "select(step(r - rc), -tail*b1*b2/r^6,"
            " a1*a2*(1/r^12 - 1/rc^12) - b1*b2*(1/r^6 - 1/rc^6) - qshift*q1*q2)")
        lj.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
        lj.setCutoffDistance(rc)
        lj.addGlobalParameter("rc", rc)
        lj.addGlobalParameter("qshift", shift)
        lj.addGlobalParameter("tail", 0.0)
    else:
        coulomb.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
        lj = openmm.CustomNonbondedForce("a1*a2/r^12 - b1*b2/r^6")
        lj.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    for name in ("a", "b", "q"):
        lj.addPerParticleParameter(name)
    coulomb.setUseDispersionCorrection(False)
    lj.setUseLongRangeCorrection(bool(periodic and settings.dispersion_correction))

    full = list(sequence) * n_copies
    offset = 0
    for name in full:
        mol = ff.molecule(name)
        a, b = mol.c12_root, mol.c6_root
        for k in range(len(mol)):
            system.addParticle(mol.masses[k])
            coulomb.addParticle(mol.charges[k], 0.1, 0.0)
            lj.addParticle([a[k], b[k], mol.charges[k]])
        for i, j, r0, kb in mol.bonds:
            bonds.addBond(offset + i, offset + j, r0, kb)
        for i, j, k, t0, ka in mol.angles:
            angles.addAngle(offset + i, offset + j, offset + k, t0, ka)
        for i, j, k, l, n, phase, kt in mol.torsions:
            torsions.addTorsion(offset + i, offset + j, offset + k, offset + l, n, phase, kt)
        pairs = {tuple(sorted(p)) for p in mol.pairs}
        for i, j in sorted(set(mol.exclusions) | pairs):
            if (i, j) in pairs:
                sig = math.sqrt(mol.sigma[i] * mol.sigma[j])
                eps = ff.fudge_lj * math.sqrt(mol.epsilon[i] * mol.epsilon[j])
                coulomb.addException(offset + i, offset + j, ff.fudge_qq * mol.charges[i] * mol.charges[j],
                                     sig, eps)
            else:
                coulomb.addException(offset + i, offset + j, 0.0, 0.1, 0.0)
            lj.addExclusion(offset + i, offset + j)
        offset += len(mol)
    for group, f in enumerate((bonds, angles, torsions, coulomb, lj)):
        f.setForceGroup(group)
        system.addForce(f)
    if periodic:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*v) for v in box_nm])
        if settings.dispersion_correction:
            # OpenMM's correction: 2π N² <∫_rc^∞ E r² dr> / V, averaged over the N(N+1)/2 pairs i <= j;
            # with E = -tail b_i b_j / r^6 it is -2π N² tail ((Σb)² + Σb²) / (6 rc³ N(N+1)/2 V).
            # "tail" makes it GROMACS's -4π/3 N² <C6> / (V rc³) (tests check it in the context).
            b = np.concatenate([ff.molecule(m).c6_root for m in full])
            n = len(b)
            openmm_avg = (b.sum() ** 2 + (b**2).sum()) / 2.0 / (n * (n + 1) / 2.0)
            target = gromacs_average_c6(ff, sequence)  # the frame's own <C6>, so copies change nothing
            lj.setGlobalParameterDefaultValue(2, 2.0 * target / openmm_avg if openmm_avg > 0 else 0.0)
    if for_md:
        system.addForce(openmm.CMMotionRemover())
    return system


def _platform(settings: ForceFieldSettings):
    import openmm

    platform = openmm.Platform.getPlatformByName(settings.platform)
    props = {}
    if settings.platform == "CPU":
        props["DeterministicForces"] = "true"  # the same numbers with any number of threads
        if settings.threads:
            props["Threads"] = str(int(settings.threads))
    return platform, props


@dataclass
class _Slot:
    context: Any
    sequence: tuple[str, ...]
    replication: tuple[int, int, int]
    n_atoms: int  # atoms of one copy


class Engine:
    """Energies, forces and stresses of frames, one OpenMM Context per topology, replication and
    PME grid (reused across frames with setPositions / setPeriodicBoxVectors)."""

    def __init__(self, settings: ForceFieldSettings | str | Mapping | None = None, max_contexts: int = 8):
        self.settings = ForceFieldSettings.of(settings)
        self.ff = self.settings.ff
        self._slots: OrderedDict[tuple, _Slot] = OrderedDict()
        self.max_contexts = max_contexts

    # ---------------------------------------------------------------- preparation
    def sequence(self, atoms: Atoms, where: str = "frame") -> tuple[str, ...]:
        """The frame's molecules; ForceFieldError if the frame does not fit the topology."""
        pbc = np.asarray(atoms.pbc, bool)
        if pbc.any() and not pbc.all():
            raise ForceFieldError(f"{where}: periodic in some directions only (pbc={pbc.tolist()}); "
                                  "use a fully periodic or a non-periodic frame")
        if pbc.all() and atoms.cell.rank < 3:
            raise ForceFieldError(f"{where}: periodic without a full cell")
        return molecule_sequence(atoms, self.ff, self.settings.species, where)

    def _grid(self, box_nm: np.ndarray) -> tuple[int, int, int]:
        return pme_grid(box_nm, self.settings)

    def _slot(self, sequence: tuple[str, ...], box: np.ndarray | None) -> tuple[_Slot, np.ndarray | None]:
        """The context for ``sequence`` in ``box`` (Å, reduced, or None) and the box it simulates."""
        import openmm

        if box is None:
            key = (sequence, None)
            rep, sup_nm, grid = (1, 1, 1), None, None
        else:
            rep = replication_for(box, self.settings.cutoff)
            sup_nm = _supercell_box(box, rep) / NM
            grid = self._grid(sup_nm)
            key = (sequence, rep, grid)
        slot = self._slots.get(key)
        if slot is None:
            n_copies = int(np.prod(rep))
            system = build_system(self.ff, sequence, self.settings, sup_nm, grid, n_copies)
            platform, props = _platform(self.settings)
            context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, props)
            slot = _Slot(context, sequence, rep, system.getNumParticles() // n_copies)
            self._slots[key] = slot
            while len(self._slots) > self.max_contexts:
                self._slots.popitem(last=False)
        else:
            self._slots.move_to_end(key)
        return slot, sup_nm

    # ---------------------------------------------------------------- evaluation
    @staticmethod
    def _evaluate(context, positions_nm: np.ndarray, box_nm: np.ndarray | None, forces: bool = True,
                  groups: int = -1) -> tuple[float, np.ndarray | None]:
        import openmm

        if box_nm is not None:
            context.setPeriodicBoxVectors(*[openmm.Vec3(*v) for v in box_nm])
        context.setPositions(positions_nm)
        state = context.getState(getEnergy=True, getForces=forces, groups=groups)
        energy = state.getPotentialEnergy()._value  # kJ/mol
        f = np.asarray(state.getForces(asNumpy=True)._value) if forces else None  # kJ/mol/nm
        return float(energy), f

    def compute(self, atoms: Atoms, stress: bool | None = None, sequence=None) -> dict[str, Any]:
        """{"energy" eV, "forces" eV/Å, "stress" eV/Å³ Voigt or None, "replication"}."""
        stress = self.settings.stress if stress is None else stress
        sequence = tuple(sequence) if sequence is not None else self.sequence(atoms)
        periodic = bool(np.all(atoms.pbc))
        if not periodic:
            slot, _ = self._slot(sequence, None)
            e, f = self._evaluate(slot.context, atoms.positions / NM, None)
            return {"energy": e * KJ_PER_MOL_TO_EV, "forces": f * KJ_PER_MOL_TO_EV / NM, "stress": None,
                    "replication": (1, 1, 1)}
        pos, box, q = standard_frame(atoms)
        slot, sup_nm = self._slot(sequence, box)
        rep = slot.replication
        if rep != (1, 1, 1):
            pos = standard_frame(make_whole(atoms, self.ff, sequence))[0]
        copies = int(np.prod(rep))
        sup_pos_nm = _supercell_positions(pos, box, rep) / NM
        e, f = self._evaluate(slot.context, sup_pos_nm, sup_nm)
        n = len(atoms)
        forces = f.reshape(copies, n, 3).mean(axis=0) @ q  # rotate back: old = new @ Q
        e = e / copies + self.constant(sequence)
        out = {"energy": e * KJ_PER_MOL_TO_EV, "forces": forces * KJ_PER_MOL_TO_EV / NM,
               "stress": None, "replication": rep}
        if stress:
            h = self.settings.strain_step
            volume = abs(np.linalg.det(sup_nm))
            sigma = np.zeros((3, 3))
            for i, j in ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)):
                e_pm = []
                for sign in (1.0, -1.0):
                    deform = np.eye(3)
                    deform[i, j] += sign * h
                    box_s = reduce_box(sup_nm @ deform.T)  # rows: a' = F a
                    e_s, _ = self._evaluate(slot.context, sup_pos_nm @ deform.T, box_s, forces=False)
                    e_pm.append(e_s)
                sigma[i, j] = sigma[j, i] = (e_pm[0] - e_pm[1]) / (2.0 * h * volume)
            sigma = q.T @ sigma @ q  # kJ/mol/nm³, back to the frame's orientation
            sigma *= KJ_PER_MOL_TO_EV / NM**3
            out["stress"] = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        return out

    def constant(self, sequence: Sequence[str]) -> float:
        """kJ/mol added to the context's energy of one copy of a periodic frame (:func:`dispersion_constant`)."""
        if not self.settings.dispersion_correction:
            return 0.0
        return dispersion_constant(self.ff, sequence, self.settings.cutoff / NM)

    def energy_terms(self, atoms: Atoms) -> dict[str, float]:
        """Energy by force group (eV per copy): bonds, angles, torsions, coulomb (PME and 1-4
        pairs), lj (shifted LJ, the Coulomb shift and, periodic, the dispersion correction but
        its constant) and ``constant`` (:func:`dispersion_constant`); they sum to the energy."""
        sequence = self.sequence(atoms)
        names = ("bonds", "angles", "torsions", "coulomb", "lj")
        if not np.all(atoms.pbc):
            slot, _ = self._slot(sequence, None)
            out = {n: self._evaluate(slot.context, atoms.positions / NM, None, False, 1 << g)[0]
                   * KJ_PER_MOL_TO_EV for g, n in enumerate(names)}
            out["constant"] = 0.0
            return out
        pos, box, _ = standard_frame(atoms)
        slot, sup_nm = self._slot(sequence, box)
        copies = int(np.prod(slot.replication))
        if copies > 1:
            pos = standard_frame(make_whole(atoms, self.ff, sequence))[0]
        sup_pos = _supercell_positions(pos, box, slot.replication) / NM
        out = {n: self._evaluate(slot.context, sup_pos, sup_nm, False, 1 << g)[0] / copies * KJ_PER_MOL_TO_EV
               for g, n in enumerate(names)}
        out["constant"] = self.constant(sequence) * KJ_PER_MOL_TO_EV
        return out


class ForceFieldCalculator(Calculator):
    """The reference as an ASE calculator (energy, forces; stress for periodic frames when asked),
    e.g. to drive lotf's own MD with it (``ForceField(AseBase(ForceFieldCalculator("bmim_bf4")))``)
    and check lotf's integrators against the engine's own MD."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, settings: ForceFieldSettings | str | Mapping | None = None, **overrides):
        super().__init__()
        self.engine = Engine(ForceFieldSettings.of(settings, **overrides))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        periodic = bool(np.all(self.atoms.pbc))
        res = self.engine.compute(self.atoms, stress=periodic and "stress" in properties)
        self.results = {"energy": res["energy"], "free_energy": res["energy"], "forces": res["forces"]}
        if res["stress"] is not None:
            self.results["stress"] = np.asarray(res["stress"])


# ============================================================================================
# labelling: the contract of lotf.reference.labelling.label_frames


def default_store() -> Path:
    """``$LOTF_FF_STORE`` if set, else ``~/.cache/lotf/forcefield``."""
    env = os.environ.get(FF_STORE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lotf" / "forcefield"


def _attach(atoms: Atoms, rec: Mapping[str, Any]) -> Atoms:
    out = atoms.copy()
    props = {"energy": float(rec["energy"]), "forces": np.asarray(rec["forces"], float)}
    if rec.get("stress") is not None:
        props["stress"] = np.asarray(rec["stress"], float)
    out.calc = SinglePointCalculator(out, **props)
    return out


def label_frames(
    frames: Iterable[Atoms],
    forcefield: str | Mapping | ForceFieldSettings = "water",
    *,
    store: str | Path | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    engine: Engine | None = None,
    **settings: Any,
) -> tuple[list[Atoms], LabelReport]:
    """Label ``frames`` with force-field single points (energy, forces, stress).

    Same contract as :func:`lotf.reference.labelling.label_frames`: every frame is first checked
    against the topology (a mismatch raises :class:`ForceFieldError` naming the first one,
    before anything is computed); finished labels go at once into a content-addressed store
    (``store``, default :func:`default_store`), keyed by the structure and the settings
    digest, so a killed run repeats nothing; a frame the engine cannot evaluate (an OpenMM
    error, a non-finite energy or force) is recorded as failed with its reason, left out and
    counted (``retry_failed`` runs cached failures again).

    Args:
        frames: structures (fully periodic, or non-periodic molecules).
        forcefield: a force-field name or :class:`ForceFieldSettings`; ``settings`` override fields
            (``species``, ``cutoff``, ``stress``, ...).
        engine: an :class:`Engine` to reuse (its settings win).

    Returns:
        The labelled frames (input order, failures left out) and a :class:`LabelReport`
        (``cp2k_s`` holds the engine's seconds).
    """
    t0 = time.perf_counter()
    frames = list(frames)
    engine = engine or Engine(ForceFieldSettings.of(forcefield, **settings))
    cfg = engine.settings
    sequences = [engine.sequence(a, f"frame {i}") for i, a in enumerate(frames)]
    store_ = ResultStore(store if store is not None else default_store())
    report = LabelReport(n_total=len(frames), store=str(store_.root))
    version = f"openmm-forcefield-{cfg.forcefield}"
    keys = [structure_key(a, cfg.digest, version, 0.0) for a in frames]
    records: dict[str, dict] = {}
    pending: list[int] = []
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if key in records or key in seen:
            continue
        rec = store_.get(key)
        if rec is not None and rec.get("n_atoms") == len(frames[i]) and not (
                retry_failed and rec.get("status") == "failed"):
            records[key] = rec
        else:
            pending.append(i)
            seen.add(key)
    report.n_cached = sum(k in records for k in keys)
    bar = tqdm(total=len(frames), initial=len(frames) - len(pending), desc=f"OpenMM {cfg.forcefield}",
               unit="structure", disable=not progress)
    try:
        for i in pending:
            t1 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    res = engine.compute(frames[i], sequence=sequences[i])
                bad = [k for k in ("energy", "forces", "stress")
                       if res.get(k) is not None and not np.all(np.isfinite(res[k]))]
                if bad:
                    rec = {"status": "failed", "reason": f"non-finite {', '.join(bad)} from OpenMM"}
                else:
                    rec = {"status": "ok", "energy": float(res["energy"]), "forces": res["forces"].tolist(),
                           "stress": None if res["stress"] is None else res["stress"].tolist(),
                           "replication": list(res["replication"])}
            except Exception as exc:  # noqa: BLE001  (OpenMMException and friends: the structure fails)
                if isinstance(exc, ForceFieldError):
                    raise
                rec = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"}
            wall = time.perf_counter() - t1
            rec.update(n_atoms=len(frames[i]), wall_s=wall, finished=time.time(),
                       worker=f"{socket.gethostname()}:{os.getpid()}")
            store_.put(keys[i], rec)
            records[keys[i]] = rec
            report.n_computed += 1
            report.cp2k_s += wall
            bar.update(1)
    finally:
        bar.close()
    labelled = collect_labelled(frames, keys, records, _attach, report)
    report.wall_s = time.perf_counter() - t0
    if report.n_failed:
        log.warning("force field: %d of %d structures failed", report.n_failed, report.n_total)
    return labelled, report


# ============================================================================================
# the reference's own MD (ground truth)


@dataclass
class MDSummary:
    """What :func:`run_md` did."""

    steps: int
    steps_done: int
    frames_written: int
    n_atoms: int
    replication: tuple[int, int, int]
    wall_s: float
    ns_per_day: float
    resumed_from_step: int = 0
    minimised: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _h5md_frames(path: Path) -> int:
    import h5py

    if not path.exists():
        return 0
    counts = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if (isinstance(obj, h5py.Dataset) and name.split("/")[0] in ("particles", "observables")
                    and name.rsplit("/", 1)[-1] in ("value", "step", "time") and obj.ndim >= 1):
                counts.append(obj)
        f.visititems(visit)
        return min((c.shape[0] for c in counts), default=0)


def _h5md_truncate(path: Path, n_frames: int) -> None:
    import h5py

    if not path.exists():
        return
    with h5py.File(path, "r+") as f:
        found = []
        def visit(name, obj):
            if (isinstance(obj, h5py.Dataset) and name.split("/")[0] in ("particles", "observables")
                    and name.rsplit("/", 1)[-1] in ("value", "step", "time") and obj.ndim >= 1):
                found.append(obj)
        f.visititems(visit)
        for d in found:
            if d.shape[0] > n_frames:
                d.resize(n_frames, axis=0)


def run_md(
    start: Atoms,
    forcefield: str | Mapping | ForceFieldSettings = "water",
    *,
    trajectory: str | Path,
    ensemble: str = "nvt",
    temperature: float = 300.0,
    steps: int = 1000,
    timestep: float = 0.5,
    interval: int = 100,
    pressure: float = 1.0,
    thermostat: str = "nose_hoover",
    friction: float = 1.0,
    barostat_interval: int = 25,
    equilibration_steps: int = 0,
    minimise_steps: int = 1000,
    replicate: Sequence[int] | int | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    frames_per_block: int = 10,
    progress: bool = True,
    **settings: Any,
) -> MDSummary:
    """NVT or NPT MD of ``start`` with the reference force field in OpenMM; frames to H5MD.

    The run: (optional) local energy minimisation (``minimise_steps`` iterations, 0: none),
    velocities from Maxwell-Boltzmann at ``temperature`` (the start's momenta when it has them,
    is not minimised and not replicated), ``equilibration_steps`` unrecorded with a Langevin
    thermostat (friction at least 5/ps), then ``steps`` steps with ``thermostat`` and one
    frame every ``interval`` steps, written like lotf's own MD (znh5md, unwrapped positions,
    momenta, energy eV, forces eV/Å, info step/time fs/temperature K/target_temperature and,
    NPT, target_pressure bar; the H5MD time step is ``interval`` x ``timestep``).

    Args:
        timestep: fs (flexible water needs about 0.5 fs).
        thermostat: ``nose_hoover`` (chain of 3, collision frequency ``friction`` 1/ps; the
            dynamics for transport properties) or ``langevin`` (LangevinMiddle, ``friction`` 1/ps;
            its kinetic temperature of flexible water reads about 3 % low at 0.5 fs: 291 K
            against 302 K at 0.25 fs and 303 K with Nosé-Hoover in 10 ps runs).
        ensemble: ``nvt`` or ``npt`` (isotropic Monte-Carlo barostat at ``pressure`` bar, a
            volume move every ``barostat_interval`` steps).
        replicate: copies of the start along a, b, c (an int: the same along all three); None:
            the fewest that make the box at least twice the cutoff wide.
        checkpoint: file for the OpenMM checkpoint (written atomically after every
            ``frames_per_block`` frames). A run that finds a checkpoint of the same
            configuration truncates the trajectory to the checkpointed frames and continues.

    Returns:
        An :class:`MDSummary`.
    """
    import openmm

    if ensemble not in ("nvt", "npt"):
        raise ForceFieldError(f"ensemble must be 'nvt' or 'npt', got {ensemble!r}")
    if thermostat not in ("nose_hoover", "langevin"):
        raise ForceFieldError(f"thermostat must be 'nose_hoover' or 'langevin', got {thermostat!r}")
    for name, value in (("temperature", temperature), ("timestep", timestep), ("friction", friction)):
        if not value > 0:
            raise ForceFieldError(f"{name} must be > 0, got {value}")
    if steps < 1 or interval < 1 or equilibration_steps < 0 or frames_per_block < 1:
        raise ForceFieldError("steps, interval, frames_per_block must be >= 1 and equilibration_steps >= 0")
    if not np.all(start.pbc):
        raise ForceFieldError("run_md needs a fully periodic start structure")
    cfg = ForceFieldSettings.of(forcefield, **settings)
    ff = cfg.ff
    sequence = molecule_sequence(start, ff, cfg.species, "start structure")
    pos, box, _ = standard_frame(make_whole(start, ff, sequence))
    if replicate is None:
        rep = replication_for(box, cfg.cutoff, margin=0.05 if ensemble == "npt" else 0.01)
    else:
        rep = (int(replicate),) * 3 if np.isscalar(replicate) else tuple(int(r) for r in replicate)
        if len(rep) != 3 or min(rep) < 1:
            raise ForceFieldError(f"replicate must be one or three positive integers, got {replicate}")
        diag = np.diag(_supercell_box(box, rep))
        if np.any(diag < 2 * cfg.cutoff):
            raise ForceFieldError(f"replicate {list(rep)} gives a box of widths {np.round(diag, 2).tolist()} Å, "
                                  f"less than twice the cutoff {cfg.cutoff} Å")
    copies = int(np.prod(rep))
    sup_box = _supercell_box(box, rep)
    sup_pos = _supercell_positions(pos, box, rep)
    numbers = np.tile(start.numbers, copies)
    grid = pme_grid(sup_box / NM, cfg)
    system = build_system(ff, sequence, cfg, sup_box / NM, grid, copies, for_md=True)
    masses = np.array([system.getParticleMass(i)._value for i in range(system.getNumParticles())])
    dt_ps = timestep / 1000.0
    # equilibration: Langevin (``friction``, at least 5/ps: it brings a minimised start to the
    # temperature within a picosecond, which a Nosé-Hoover chain does not); production: the thermostat
    integrator = openmm.CompoundIntegrator()
    warm = openmm.LangevinMiddleIntegrator(temperature, max(friction, 5.0) if thermostat != "langevin" else friction,
                                           dt_ps)
    warm.setRandomNumberSeed(int(seed) % 2**31 or 1)
    integrator.addIntegrator(warm)
    if thermostat == "langevin":
        production = openmm.LangevinMiddleIntegrator(temperature, friction, dt_ps)
        production.setRandomNumberSeed(int(seed) % 2**31 or 1)  # one generator per context
    else:
        production = openmm.NoseHooverIntegrator(temperature, friction, dt_ps)
    integrator.addIntegrator(production)
    if ensemble == "npt":
        barostat = openmm.MonteCarloBarostat(pressure, temperature, int(barostat_interval))
        barostat.setRandomNumberSeed(int(seed) % 2**31 or 1)
        system.addForce(barostat)
    platform, props = _platform(cfg)
    context = openmm.Context(system, integrator, platform, props)
    context.setPeriodicBoxVectors(*[openmm.Vec3(*v) for v in sup_box / NM])
    context.setPositions(sup_pos / NM)
    dof = 3 * len(numbers) - 3
    e_constant = copies * dispersion_constant(ff, sequence, cfg.cutoff / NM) if cfg.dispersion_correction else 0.0

    trajectory = Path(trajectory)
    fingerprint = hashlib.sha256(json.dumps({
        "settings": cfg.digest, "numbers": numbers.tolist(), "positions": np.round(sup_pos, 6).tolist(),
        "box": np.round(sup_box, 6).tolist(), "momenta": start.get_momenta().round(8).tolist(),
        "md": [ensemble, temperature, steps, timestep, interval, pressure, thermostat, friction,
               barostat_interval, equilibration_steps, minimise_steps, seed, list(rep)],
    }, sort_keys=True).encode()).hexdigest()
    written, done, minimised = 0, 0, False
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    resumed = False
    if checkpoint is not None and checkpoint.exists():
        try:
            with np.load(checkpoint, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                blob = data["state"].tobytes()
            if meta["fingerprint"] == fingerprint and _h5md_frames(trajectory) >= meta["frames"]:
                context.loadCheckpoint(blob)
                written, done = int(meta["frames"]), int(meta["step"])
                _h5md_truncate(trajectory, written)
                resumed = True
            else:
                warnings.warn(f"checkpoint {checkpoint} ignored (another configuration or a shorter "
                              "trajectory); starting afresh", stacklevel=2)
        except (OSError, ValueError, KeyError) as err:
            warnings.warn(f"checkpoint {checkpoint} unreadable ({err}); starting afresh", stacklevel=2)
    if not resumed:
        trajectory.parent.mkdir(parents=True, exist_ok=True)
        trajectory.unlink(missing_ok=True)
        if minimise_steps > 0:
            openmm.LocalEnergyMinimizer.minimize(context, 10.0, int(minimise_steps))
            minimised = True
        if start.has("momenta") and not minimised and copies == 1:  # copies: each its own velocities
            context.setVelocities(start.get_velocities() * 1000.0 * _ASE_FS / NM)
        else:
            context.setVelocitiesToTemperature(temperature, int(seed) % 2**31 or 1)

    def save_checkpoint() -> None:
        tmp = checkpoint.with_name(checkpoint.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.asarray(json.dumps({"fingerprint": fingerprint, "frames": written, "step": done})),
                     state=np.frombuffer(context.createCheckpoint(), dtype=np.uint8))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, checkpoint)

    def frame(step: int) -> Atoms:
        state = context.getState(getPositions=True, getVelocities=True, getEnergy=True, getForces=True,
                                 enforcePeriodicBox=False)
        cell = np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value) * NM
        atoms = Atoms(numbers=numbers, positions=np.asarray(state.getPositions(asNumpy=True)._value) * NM,
                      cell=cell, pbc=True)
        velocities = np.asarray(state.getVelocities(asNumpy=True)._value) * NM / (1000.0 * _ASE_FS)
        atoms.set_momenta(velocities * masses[:, None])
        atoms.calc = SinglePointCalculator(
            atoms, energy=(state.getPotentialEnergy()._value + e_constant) * KJ_PER_MOL_TO_EV,
            forces=np.asarray(state.getForces(asNumpy=True)._value) * KJ_PER_MOL_TO_EV / NM)
        kinetic = state.getKineticEnergy()._value  # kJ/mol
        t_inst = 2.0 * kinetic / (dof * _KB_KJ_PER_MOL)
        time_fs = (step - equilibration_steps) * timestep
        atoms.info.update(step=step - equilibration_steps, time=time_fs, temperature=t_inst,
                          target_temperature=float(temperature))
        if ensemble == "npt":
            atoms.info["target_pressure"] = float(pressure)
        return atoms

    import znh5md

    total = equilibration_steps + steps
    t0 = time.perf_counter()
    start_step = done
    bar = tqdm(total=total, initial=done, desc=f"OpenMM {cfg.forcefield} {ensemble.upper()}", unit="step",
               disable=not progress)
    buffer: list[Atoms] = []
    try:
        while done < total:
            if done < equilibration_steps:
                n = min(interval, equilibration_steps - done)
            else:
                n = interval - (done - equilibration_steps) % interval
                n = min(n, total - done)
            integrator.setCurrentIntegrator(0 if done < equilibration_steps else 1)
            integrator.step(n)
            done += n
            bar.update(n)
            if done > equilibration_steps and (done - equilibration_steps) % interval == 0:
                buffer.append(frame(done))
                bar.set_postfix(T=f"{buffer[-1].info['temperature']:.0f}K", frames=written + len(buffer))
            if buffer and (len(buffer) >= frames_per_block or done >= total):
                znh5md.IO(str(trajectory), timestep=interval * timestep).extend(buffer)
                written += len(buffer)
                buffer = []
                if checkpoint is not None:
                    save_checkpoint()
            elif checkpoint is not None and done <= equilibration_steps and done % (interval * frames_per_block) == 0:
                save_checkpoint()
    finally:
        bar.close()
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    wall = time.perf_counter() - t0
    ran = done - start_step
    return MDSummary(steps=steps, steps_done=max(done - equilibration_steps, 0), frames_written=written,
                     n_atoms=len(numbers), replication=rep, wall_s=wall,
                     ns_per_day=(ran * timestep * 1e-6) / (wall / 86400.0) if wall > 0 else 0.0,
                     resumed_from_step=start_step if resumed else 0, minimised=minimised)


_ASE_FS = 0.09822694788464063  # ase.units.fs: one fs in ASE time units (Å sqrt(amu/eV))
_KB_KJ_PER_MOL = 0.0083144626181532  # k_B N_A, kJ/mol/K
