"""Alanine dipeptide (ACE-ALA-NME) in vacuum with Amber99SB: the molecular-mechanics base of the
ERBS coverage benchmark (seed 2 §3.1).

Three pieces:

* :func:`build_alanine_dipeptide`: the 22-atom structure generated here from standard internal
  coordinates (bond lengths, angles, trans peptide bonds, L chirality, chosen Φ/Ψ) and relaxed
  with OpenMM; ``data/alanine/alanine_dipeptide.pdb`` was written by :func:`write_structure`.
* :class:`AmberSystem`: the OpenMM system of ``amber99sb.xml`` (shipped with OpenMM), NoCutoff, no
  constraints, no centre-of-mass remover; :meth:`AmberSystem.calculator` is an ASE calculator on
  it (for the calculator-backed MD path and for labelling), double-precision Reference platform
  by default.
* :meth:`AmberSystem.energy_term`: the same Hamiltonian in JAX, its parameters read from the
  OpenMM system (harmonic bonds and angles, periodic torsions incl. impropers, Coulomb and
  Lennard-Jones over all non-excluded pairs, 1-4 exceptions with their own charge products and
  LJ parameters), so the MD loop runs it inside its jitted step with no host round trip. The tests
  hold its forces to OpenMM's own to 1e-6 relative.

Units out: eV and eV/Å. 1 eV = 96.48533212 kJ/mol (e·N_A), 1 nm = 10 Å, as
:mod:`lotf.reference.forcefield`.

Bad input: a structure whose atoms do not match the topology (count or element) fails before any
compute, naming the first mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

KJ_PER_EV = 96.48533212
ONE_4PI_EPS0 = 138.935457644  # kJ/mol nm e^-2 (OpenMM 8)
FORCE_FIELD = "amber99sb.xml"
DATA = Path(__file__).resolve().parents[2] / "data" / "alanine"
STRUCTURE = DATA / "alanine_dipeptide.pdb"

# PDB order: residue, atom name, element. NME's methyl carbon is "CH3" as in amber99sb.xml.
ATOMS = (
    ("ACE", "HH31", "H"), ("ACE", "CH3", "C"), ("ACE", "HH32", "H"), ("ACE", "HH33", "H"), ("ACE", "C", "C"),
    ("ACE", "O", "O"),
    ("ALA", "N", "N"), ("ALA", "H", "H"), ("ALA", "CA", "C"), ("ALA", "HA", "H"), ("ALA", "CB", "C"),
    ("ALA", "HB1", "H"), ("ALA", "HB2", "H"), ("ALA", "HB3", "H"), ("ALA", "C", "C"), ("ALA", "O", "O"),
    ("NME", "N", "N"), ("NME", "H", "H"), ("NME", "CH3", "C"), ("NME", "HH31", "H"), ("NME", "HH32", "H"),
    ("NME", "HH33", "H"),
)
# Φ = C(ACE)-N-CA-C, Ψ = N-CA-C-N(NME) (atom indices in ATOMS)
PHI = (4, 6, 8, 14)
# covalent bonds (the residue templates of amber99sb.xml plus the two peptide bonds)
BONDS = ((0, 1), (1, 2), (1, 3), (1, 4), (4, 5), (4, 6), (6, 7), (6, 8), (8, 9), (8, 10), (8, 14), (10, 11),
         (10, 12), (10, 13), (14, 15), (14, 16), (16, 17), (16, 18), (18, 19), (18, 20), (18, 21))
PSI = (6, 8, 14, 16)


def _place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """Position d with |cd| = bond (Å), angle b-c-d and dihedral a-b-c-d (degrees)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d_local = bond * np.array([-np.cos(angle), np.sin(angle) * np.cos(torsion), np.sin(angle) * np.sin(torsion)])
    return c + d_local[0] * bc + d_local[1] * m + d_local[2] * n


def dihedral(p: np.ndarray, quad) -> float:
    """IUPAC dihedral (degrees) of four atoms of positions (N, 3)."""
    p0, p1, p2, p3 = (np.asarray(p[i], float) for i in quad)
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    y = np.linalg.norm(b2) * np.dot(b1, n2)
    return float(np.degrees(np.arctan2(y, np.dot(n1, n2))))


def internal_geometry(phi: float = -80.0, psi: float = 75.0, chirality: float = 1.0) -> np.ndarray:
    """Unrelaxed positions (22, 3) in Å from standard internal coordinates.

    ``chirality`` ±1 picks the side of CB and HA; +1 gives L-alanine (checked by the tests through
    RDKit's CIP label S).
    """
    x = np.zeros((22, 3))
    x[1] = (0.0, 0.0, 0.0)  # ACE CH3
    x[4] = (1.52, 0.0, 0.0)  # ACE C
    x[6] = x[4] + 1.335 * np.array([np.cos(np.radians(64.0)), np.sin(np.radians(64.0)), 0.0])  # N, angle 116°
    x[8] = _place(x[1], x[4], x[6], 1.458, 121.9, 180.0)  # CA, ω = 180
    x[14] = _place(x[4], x[6], x[8], 1.525, 111.2, phi)  # C (Φ)
    x[16] = _place(x[6], x[8], x[14], 1.335, 116.2, psi)  # NME N (Ψ)
    x[18] = _place(x[8], x[14], x[16], 1.458, 121.9, 180.0)  # NME CH3, ω = 180
    x[5] = _place(x[8], x[6], x[4], 1.229, 122.7, 0.0)  # ACE O, cis to CA
    x[15] = _place(x[18], x[16], x[14], 1.229, 122.7, 0.0)  # ALA O
    x[7] = _place(x[5], x[4], x[6], 1.01, 119.8, 180.0)  # ALA H, trans to O
    x[17] = _place(x[15], x[14], x[16], 1.01, 119.8, 180.0)  # NME H
    x[10] = _place(x[14], x[6], x[8], 1.53, 110.5, -chirality * 122.5)  # CB
    x[9] = _place(x[14], x[6], x[8], 1.09, 109.5, chirality * 117.5)  # HA
    for k, t in zip((11, 12, 13), (60.0, 180.0, 300.0)):
        x[k] = _place(x[6], x[8], x[10], 1.09, 109.5, t)
    for k, t in zip((0, 2, 3), (0.0, 120.0, 240.0)):
        x[k] = _place(x[6], x[4], x[1], 1.09, 109.5, t)
    for k, t in zip((19, 20, 21), (60.0, 180.0, 300.0)):
        x[k] = _place(x[14], x[16], x[18], 1.09, 109.5, t)
    return x


def topology():
    """The OpenMM topology of ACE-ALA-NME with its covalent bonds."""
    from openmm import app

    top = app.Topology()
    chain = top.addChain()
    residues: dict[str, object] = {}
    atoms = []
    for res, name, element in ATOMS:
        if res not in residues:
            residues[res] = top.addResidue(res, chain)
        atoms.append(top.addAtom(name, app.Element.getBySymbol(element), residues[res]))
    for i, j in BONDS:
        top.addBond(atoms[i], atoms[j])
    return top


def build_alanine_dipeptide(phi: float = -80.0, psi: float = 75.0, relax: bool = True) -> Atoms:
    """ACE-ALA-NME from internal coordinates, relaxed with Amber99SB (OpenMM minimiser) if ``relax``."""
    atoms = Atoms([e for _, _, e in ATOMS], positions=internal_geometry(phi, psi))
    if relax:
        import openmm
        from openmm import unit

        system = AmberSystem()
        context = openmm.Context(system.system, openmm.VerletIntegrator(0.001), _platform("Reference"))
        context.setPositions(atoms.positions * 0.1 * unit.nanometer)
        openmm.LocalEnergyMinimizer.minimize(context, 1e-3, 0)
        pos = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        atoms.positions = np.asarray(pos) * 10.0
    atoms.positions -= atoms.get_center_of_mass()
    return atoms


def write_structure(path: str | Path = STRUCTURE, phi: float = -80.0, psi: float = 75.0) -> Path:
    """Write the relaxed structure as a PDB (the file shipped in data/alanine)."""
    from openmm import app, unit

    atoms = build_alanine_dipeptide(phi, psi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        app.PDBFile.writeFile(topology(), atoms.positions * 0.1 * unit.nanometer, fh)
    return path


def load_structure(path: str | Path = STRUCTURE) -> Atoms:
    """The shipped (or any) ACE-ALA-NME PDB as ASE atoms (vacuum, no cell), checked against the topology."""
    from openmm import app, unit

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"alanine dipeptide structure not found: {path}")
    pdb = app.PDBFile(str(path))
    symbols = [a.element.symbol for a in pdb.topology.atoms()]
    atoms = Atoms(symbols, positions=np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * 10)
    check_atoms(atoms, f"structure {path.name}")
    return atoms


def check_atoms(atoms: Atoms, where: str = "structure") -> None:
    """Raise one clear ValueError naming the first atom that does not match the topology."""
    expected = [e for _, _, e in ATOMS]
    got = list(atoms.get_chemical_symbols())
    if len(got) != len(expected):
        raise ValueError(f"{where}: {len(got)} atoms, the ACE-ALA-NME topology has {len(expected)}")
    for i, (g, (res, name, e)) in enumerate(zip(got, ATOMS)):
        if g != e:
            raise ValueError(f"{where}: atom {i} is {g}, the topology expects {e} ({res} {name})")
    if not np.all(np.isfinite(atoms.positions)):
        raise ValueError(f"{where}: non-finite positions")


def _platform(name: str):
    import openmm

    return openmm.Platform.getPlatformByName(name)


@lru_cache(maxsize=1)
def _system_xml() -> str:
    import openmm
    from openmm import app

    ff = app.ForceField(FORCE_FIELD)
    system = ff.createSystem(topology(), nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False,
                             removeCMMotion=False)
    return openmm.XmlSerializer.serialize(system)


@dataclass(frozen=True)
class AmberParameters:
    """The Hamiltonian in OpenMM units (nm, kJ/mol, rad, e), read from the OpenMM system."""

    bonds: np.ndarray  # (B, 2) int
    bond_r0: np.ndarray
    bond_k: np.ndarray
    angles: np.ndarray  # (A, 3) int
    angle_t0: np.ndarray
    angle_k: np.ndarray
    torsions: np.ndarray  # (T, 4) int
    torsion_n: np.ndarray
    torsion_phase: np.ndarray
    torsion_k: np.ndarray
    pairs: np.ndarray  # (P, 2) int: non-excluded pairs and exceptions with nonzero parameters
    pair_qq: np.ndarray  # charge products (e²)
    pair_sigma: np.ndarray  # nm
    pair_eps: np.ndarray  # kJ/mol


class AmberSystem:
    """Amber99SB alanine dipeptide in vacuum (NoCutoff, flexible) as an OpenMM system."""

    n_atoms = len(ATOMS)

    def __init__(self):
        import openmm

        self.system = openmm.XmlSerializer.deserialize(_system_xml())

    @property
    def masses(self) -> np.ndarray:
        return np.array([self.system.getParticleMass(i)._value for i in range(self.system.getNumParticles())])

    def parameters(self) -> AmberParameters:
        import openmm

        forces = {type(f).__name__: f for f in self.system.getForces()}
        known = {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce"}
        extra = set(forces) - known
        if extra:
            raise ValueError(f"unexpected forces in the Amber system: {sorted(extra)}")
        hb = forces["HarmonicBondForce"]
        bonds = [hb.getBondParameters(i) for i in range(hb.getNumBonds())]
        ha = forces["HarmonicAngleForce"]
        angles = [ha.getAngleParameters(i) for i in range(ha.getNumAngles())]
        pt = forces["PeriodicTorsionForce"]
        tors = [pt.getTorsionParameters(i) for i in range(pt.getNumTorsions())]
        nb: openmm.NonbondedForce = forces["NonbondedForce"]
        if nb.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff:
            raise ValueError("the Amber system must be built with NoCutoff")
        n = nb.getNumParticles()
        q, sig, eps = (np.array(v) for v in zip(*[[p._value for p in nb.getParticleParameters(i)] for i in range(n)]))
        pairs, qq, ps, pe = [], [], [], []
        excluded = {}
        for k in range(nb.getNumExceptions()):
            i, j, cp, s, e = nb.getExceptionParameters(k)
            excluded[(min(i, j), max(i, j))] = (cp._value, s._value, e._value)
        for i in range(n):
            for j in range(i + 1, n):
                if (i, j) in excluded:
                    cp, s, e = excluded[(i, j)]
                    if cp == 0.0 and e == 0.0:
                        continue
                else:
                    cp, s, e = q[i] * q[j], 0.5 * (sig[i] + sig[j]), np.sqrt(eps[i] * eps[j])
                pairs.append((i, j))
                qq.append(cp)
                ps.append(s)
                pe.append(e)
        v = lambda x: x._value if hasattr(x, "_value") else x  # noqa: E731
        return AmberParameters(
            bonds=np.array([[b[0], b[1]] for b in bonds], int), bond_r0=np.array([v(b[2]) for b in bonds]),
            bond_k=np.array([v(b[3]) for b in bonds]),
            angles=np.array([[a[0], a[1], a[2]] for a in angles], int), angle_t0=np.array([v(a[3]) for a in angles]),
            angle_k=np.array([v(a[4]) for a in angles]),
            torsions=np.array([t[:4] for t in tors], int), torsion_n=np.array([t[4] for t in tors], float),
            torsion_phase=np.array([v(t[5]) for t in tors]), torsion_k=np.array([v(t[6]) for t in tors]),
            pairs=np.array(pairs, int), pair_qq=np.array(qq), pair_sigma=np.array(ps), pair_eps=np.array(pe))

    # -- OpenMM evaluation --------------------------------------------------------------------
    def context(self, platform: str = "Reference"):
        import openmm

        return openmm.Context(self.system, openmm.VerletIntegrator(0.0005), _platform(platform))

    def calculator(self, platform: str = "Reference") -> "AmberCalculator":
        return AmberCalculator(self, platform)

    def openmm_energy_forces(self, atoms: Atoms, platform: str = "Reference", context=None) -> tuple[float, np.ndarray]:
        """(energy eV, forces eV/Å) from OpenMM."""
        from openmm import unit

        if context is None:
            check_atoms(atoms)
            context = self.context(platform)
        context.setPositions(np.asarray(atoms.positions) * 0.1 * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        e = state.getPotentialEnergy()._value / KJ_PER_EV
        f = np.asarray(state.getForces(asNumpy=True)._value) / KJ_PER_EV / 10.0
        return e, f

    # -- JAX evaluation -----------------------------------------------------------------------
    def energy_fn(self):
        """E(positions Å (N, 3)) in eV, a pure JAX function of the Amber99SB parameters."""
        return jax_energy_fn(self.parameters())

    def energy_term(self, cutoff: float = 6.0):
        """An :class:`~lotf.potential.calculator.EnergyTerm` for :class:`lotf.dynamics.potential.JaxBase`.

        The Hamiltonian has no cutoff; ``cutoff`` only sizes the neighbour list the MD loop keeps
        for the term (unused by it; 6 Å lets the ERBS descriptor share it). One structure per graph.
        """
        from lotf.potential.calculator import EnergyTerm

        energy = self.energy_fn()

        def fn(params, graph):
            return energy(graph.positions)[None]

        return EnergyTerm(fn, (), float(cutoff))


def _dihedral_jax(p0, p1, p2, p3):
    import jax.numpy as jnp

    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    n1, n2 = jnp.cross(b1, b2), jnp.cross(b2, b3)
    y = jnp.linalg.norm(b2, axis=-1) * jnp.sum(b1 * n2, axis=-1)
    return jnp.arctan2(y, jnp.sum(n1 * n2, axis=-1))


def jax_energy_fn(p: AmberParameters):
    """E(positions Å) eV of the parameters (float64 throughout)."""
    import jax.numpy as jnp

    c = {k: jnp.asarray(getattr(p, k)) for k in p.__dataclass_fields__}

    def energy(positions):
        x = positions.astype(jnp.float64) * 0.1  # nm
        d = x[c["bonds"][:, 1]] - x[c["bonds"][:, 0]]
        r = jnp.sqrt(jnp.sum(d * d, axis=-1))
        e_bond = 0.5 * jnp.sum(c["bond_k"] * (r - c["bond_r0"]) ** 2)
        a = x[c["angles"][:, 0]] - x[c["angles"][:, 1]]
        b = x[c["angles"][:, 2]] - x[c["angles"][:, 1]]
        theta = jnp.arctan2(jnp.linalg.norm(jnp.cross(a, b), axis=-1), jnp.sum(a * b, axis=-1))
        e_angle = 0.5 * jnp.sum(c["angle_k"] * (theta - c["angle_t0"]) ** 2)
        t = c["torsions"]
        phi = _dihedral_jax(x[t[:, 0]], x[t[:, 1]], x[t[:, 2]], x[t[:, 3]])
        e_tors = jnp.sum(c["torsion_k"] * (1.0 + jnp.cos(c["torsion_n"] * phi - c["torsion_phase"])))
        d = x[c["pairs"][:, 1]] - x[c["pairs"][:, 0]]
        r = jnp.sqrt(jnp.sum(d * d, axis=-1))
        sr6 = (c["pair_sigma"] / r) ** 6
        e_pair = jnp.sum(ONE_4PI_EPS0 * c["pair_qq"] / r + 4.0 * c["pair_eps"] * (sr6 * sr6 - sr6))
        return (e_bond + e_angle + e_tors + e_pair) / KJ_PER_EV

    return energy


class AmberCalculator(Calculator):
    """ASE calculator of Amber99SB alanine dipeptide through OpenMM (energy eV, forces eV/Å)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, system: AmberSystem | None = None, platform: str = "Reference", **kwargs):
        super().__init__(**kwargs)
        self.amber = system or AmberSystem()
        self.platform = platform
        self._context = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self._context is None:
            check_atoms(self.atoms, "AmberCalculator")
            self._context = self.amber.context(self.platform)
        elif "numbers" in system_changes:
            check_atoms(self.atoms, "AmberCalculator")
        e, f = self.amber.openmm_energy_forces(self.atoms, context=self._context)
        self.results = {"energy": e, "forces": f}
