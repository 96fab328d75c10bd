"""Structure generation: RDKit conformers, Packmol boxes, bootstrap and rigid-molecule volume scans.

Units: Angstrom, g/cm^3, degree. Every random choice takes a seed.
Molecules are found from the bond graph (atoms closer than `mult` = 1.2 times the sum of their
ASE natural covalent radii are bonded), so any structure can be scanned or bootstrapped without
a topology.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import ase
import numpy as np
from ase.neighborlist import natural_cutoffs, neighbor_list
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components
from scipy.spatial.transform import Rotation

# amu/Angstrom^3 -> g/cm^3
AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660

# Species known by name. Atom orders (RDKit, explicit H appended) match data/opls/*.itp and
# GROMACS's water models (O, H, H).
SPECIES_SMILES: dict[str, str] = {
    "bmim": "CCCCn1cc[n+](C)c1",
    "bf4": "F[B-](F)(F)F",
    "water": "O",
}


def species_smiles(name: str) -> str:
    """SMILES of a known species (case-insensitive); clear error for unknown names."""
    key = name.lower()
    if key not in SPECIES_SMILES:
        raise ValueError(f"unknown species {name!r} (known: {', '.join(SPECIES_SMILES)})")
    return SPECIES_SMILES[key]


def density(atoms: ase.Atoms) -> float:
    """Mass density of a periodic structure in g/cm^3."""
    volume = atoms.get_volume()
    if volume <= 0:
        raise ValueError("density: structure has no cell volume")
    return float(atoms.get_masses().sum() / volume * AMU_PER_A3_TO_G_PER_CM3)


def cubic_box_length(total_mass: float, target_density: float) -> float:
    """Edge in Angstrom of the cube holding `total_mass` (amu) at `target_density` (g/cm^3)."""
    if not target_density > 0:
        raise ValueError(f"density must be positive, got {target_density}")
    return float((total_mass * AMU_PER_A3_TO_G_PER_CM3 / target_density) ** (1.0 / 3.0))


# --------------------------------------------------------------------------------------- RDKit


def smiles_to_conformers(
    smiles: str,
    n_conformers: int = 1,
    seed: int = 42,
    max_attempts: int = 1000,
    optimize: bool = True,
) -> list[ase.Atoms]:
    """Embed `n_conformers` 3D conformers (ETKDGv3, explicit H) of a SMILES string.

    Atom order is RDKit's: heavy atoms in SMILES order, then hydrogens by parent atom.
    With `optimize`, each conformer is relaxed with MMFF94 (UFF where MMFF lacks parameters,
    e.g. boron). Each Atoms has `info["smiles"]` and the formal charges as initial charges.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles!r}")
    if n_conformers < 1:
        raise ValueError(f"n_conformers must be >= 1, got {n_conformers}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.maxIterations = int(max_attempts)  # embedding attempts per conformer
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n_conformers, params=params))
    if len(ids) != n_conformers:
        raise RuntimeError(f"RDKit embedded {len(ids)} of {n_conformers} conformers of {smiles!r}")
    if optimize:
        if AllChem.MMFFHasAllMoleculeParams(mol):
            AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)
        else:
            AllChem.UFFOptimizeMoleculeConfs(mol, maxIters=2000)
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    charges = [a.GetFormalCharge() for a in mol.GetAtoms()]
    frames = []
    for cid in ids:
        atoms = ase.Atoms(symbols, positions=mol.GetConformer(cid).GetPositions())
        atoms.set_initial_charges(charges)
        atoms.info["smiles"] = smiles
        frames.append(atoms)
    return frames


# ------------------------------------------------------------------------------------- Packmol


def find_packmol() -> str:
    """Path of a Packmol >= 20.15 binary (the `packmol` PyPI wheel ships one)."""
    try:  # the wheel's real binary, not its Python wrapper script
        from packmol.cli import get_binary_path

        return str(get_binary_path())
    except (ImportError, FileNotFoundError):
        pass
    for candidate in (Path(sys.executable).parent / "packmol", shutil.which("packmol")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError("packmol not found: install the `packmol` package (>= 21) from PyPI")


def _write_xyz(path: Path, atoms: ase.Atoms) -> None:
    lines = [str(len(atoms)), "lotf"]
    lines += [f"{s} {x:.10f} {y:.10f} {z:.10f}" for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions)]
    path.write_text("\n".join(lines) + "\n")


def _read_packmol_xyz(path: Path, n_atoms: int) -> np.ndarray:
    lines = path.read_text().splitlines()[2 : 2 + n_atoms]
    return np.array([[float(v) for v in line.split()[1:4]] for line in lines])


def pack_box(
    molecules: Sequence[ase.Atoms | Sequence[ase.Atoms]],
    counts: Sequence[int],
    density: float,
    tolerance: float = 2.0,
    seed: int = 42,
    pbc: bool = True,
) -> ase.Atoms:
    """Pack `counts[k]` copies of `molecules[k]` into a cube at `density` (g/cm^3) with Packmol.

    `molecules[k]` may be one Atoms or a list of conformers; each copy then draws a conformer
    with a seeded generator. Output order: species in the given order, molecules contiguous,
    atoms in the order of the input molecule. With `pbc`, Packmol's `pbc` keyword applies the
    `tolerance` (minimum intermolecular distance, Angstrom) across the periodic boundaries.
    The same inputs and seed give identical positions.
    """
    if len(molecules) != len(counts):
        raise ValueError(f"pack_box: {len(molecules)} molecules but {len(counts)} counts")
    if not density > 0:
        raise ValueError(f"pack_box: density must be positive, got {density}")
    if tolerance < 0:
        raise ValueError(f"pack_box: tolerance must be >= 0, got {tolerance}")
    confs = [[m] if isinstance(m, ase.Atoms) else list(m) for m in molecules]
    for k, (c, n) in enumerate(zip(confs, counts)):
        if n < 0 or int(n) != n:
            raise ValueError(f"pack_box: counts[{k}] must be a non-negative integer, got {n}")
        if not c:
            raise ValueError(f"pack_box: molecules[{k}] has no conformers")
    if sum(counts) == 0:
        raise ValueError("pack_box: all counts are zero")

    rng = np.random.default_rng(seed)
    # (species k, conformer index, number of copies) blocks, species kept contiguous
    blocks = []
    for k, (c, n) in enumerate(zip(confs, counts)):
        picks = np.sort(rng.integers(len(c), size=int(n)))
        for ci, nn in zip(*np.unique(picks, return_counts=True)):
            blocks.append((k, int(ci), int(nn)))
    total_mass = sum(confs[k][ci].get_masses().sum() * nn for k, ci, nn in blocks)
    length = cubic_box_length(total_mass, density)

    with tempfile.TemporaryDirectory(prefix="lotf_packmol_") as tmp:
        tmp = Path(tmp)
        # packmol's seed must be a positive integer; keep it distinct per user seed
        inp = [f"tolerance {tolerance}", "filetype xyz", "output packed.xyz", f"seed {int(seed) % 2**31 + 1}"]
        if pbc:
            inp.append(f"pbc 0. 0. 0. {length:.8f} {length:.8f} {length:.8f}")
        symbols = []
        for b, (k, ci, nn) in enumerate(blocks):
            mol = confs[k][ci]
            _write_xyz(tmp / f"mol{b}.xyz", mol)
            inp += [f"structure mol{b}.xyz", f"  number {nn}"]
            if not pbc:
                inp.append(f"  inside box 0. 0. 0. {length:.8f} {length:.8f} {length:.8f}")
            inp.append("end structure")
            symbols += mol.get_chemical_symbols() * nn
        (tmp / "pack.inp").write_text("\n".join(inp) + "\n")
        with open(tmp / "pack.inp") as stdin:
            proc = subprocess.run([find_packmol()], stdin=stdin, cwd=tmp, capture_output=True, text=True, check=False)
        out = tmp / "packed.xyz"
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"packmol failed (exit {proc.returncode}) packing {list(counts)} molecules at "
                f"{density} g/cm^3 with tolerance {tolerance} A: lower the density or tolerance"
            )
        positions = _read_packmol_xyz(out, len(symbols))
    atoms = ase.Atoms(symbols, positions=positions, cell=[length] * 3, pbc=pbc)
    atoms.info.update(density=float(density), packmol_seed=int(seed))
    return atoms


def pack_species(
    species: Mapping[str, int],
    density: float,
    tolerance: float = 2.0,
    seed: int = 42,
    n_conformers: int = 1,
    pbc: bool = True,
) -> ase.Atoms:
    """Packmol box from species names and counts, e.g. `{"bmim": 10, "bf4": 10}`.

    Conformers come from `smiles_to_conformers` with the same seed.
    """
    mols = [smiles_to_conformers(species_smiles(name), n_conformers, seed=seed) for name in species]
    return pack_box(mols, list(species.values()), density, tolerance=tolerance, seed=seed, pbc=pbc)


# ------------------------------------------------------------------------------ molecule graph


def _bonds(atoms: ase.Atoms, mult: float = 1.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bonded pairs (i, j) and vectors from i to the bonded image of j (Angstrom)."""
    i, j, d = neighbor_list("ijD", atoms, natural_cutoffs(atoms, mult=mult), self_interaction=False)
    return i, j, d


def molecule_ids(atoms: ase.Atoms, mult: float = 1.2) -> np.ndarray:
    """Molecule index of every atom: connected components of the covalent bond graph."""
    i, j, _ = _bonds(atoms, mult)
    n = len(atoms)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    return connected_components(graph, directed=False)[1]


def unwrap_molecules(atoms: ase.Atoms, mult: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Positions with every molecule made whole across periodic boundaries, and molecule ids.

    Walks each molecule's bond graph breadth-first from its first atom, placing each atom at
    its parent plus the minimum-image bond vector, so molecules longer than half the box work.
    """
    i, j, d = _bonds(atoms, mult)
    n = len(atoms)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    mol = connected_components(graph, directed=False)[1]
    bond_vec = {(a, b): v for a, b, v in zip(i.tolist(), j.tolist(), d)}
    pos = atoms.positions.copy()
    roots = np.unique(mol, return_index=True)[1]
    for root in roots:
        order, pred = breadth_first_order(graph, root, directed=False, return_predecessors=True)
        for child in order[1:]:
            parent = pred[child]
            pos[child] = pos[parent] + bond_vec[(parent, child)]
    return pos, mol


def _centres(positions: np.ndarray, masses: np.ndarray, mol: np.ndarray) -> np.ndarray:
    n_mol = mol.max() + 1
    m = np.bincount(mol, weights=masses, minlength=n_mol)
    com = np.stack([np.bincount(mol, weights=masses * positions[:, k], minlength=n_mol) for k in range(3)], axis=1)
    return com / m[:, None]


# --------------------------------------------------------------------------------- volume scan


def volume_scan(atoms: ase.Atoms, densities: Sequence[float], mult: float = 1.2) -> list[ase.Atoms]:
    """Rigid-molecule volume scan: one structure per target density (g/cm^3).

    The cell is scaled isotropically and each molecule's centre of mass is scaled with it,
    while every molecule keeps its internal geometry exactly (molecules from the bond graph).
    """
    if not atoms.pbc.all() or atoms.get_volume() <= 0:
        raise ValueError("volume_scan: structure must be periodic in 3D with a cell")
    densities = np.asarray(densities, dtype=float)
    if densities.ndim != 1 or len(densities) == 0:
        raise ValueError("volume_scan: densities must be a non-empty list")
    if not (densities > 0).all():
        bad = int(np.argmin(densities > 0))
        raise ValueError(f"volume_scan: densities[{bad}] = {densities[bad]} must be positive")
    pos, mol = unwrap_molecules(atoms, mult)
    com = _centres(pos, atoms.get_masses(), mol)
    rho0 = density(atoms)
    frames = []
    for rho in densities:
        s = (rho0 / rho) ** (1.0 / 3.0)
        new = atoms.copy()
        new.calc = None
        new.set_cell(atoms.cell * s, scale_atoms=False)
        new.positions = pos + (s - 1.0) * com[mol]
        new.info.update(density=float(rho), volume_scale=float(s**3))
        frames.append(new)
    return frames


# ----------------------------------------------------------------------------------- bootstrap


def _ball(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    """`n` points uniform in a ball of `radius`."""
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * (radius * rng.random(n) ** (1.0 / 3.0))[:, None]


def bootstrap(
    atoms: ase.Atoms,
    n_configurations: int,
    rotation: float = 10.0,
    translation: float = 0.5,
    rattle: float = 0.05,
    seed: int = 0,
    include_original: bool = False,
    mult: float = 1.2,
) -> list[ase.Atoms]:
    """Perturbed copies of a structure (the seed-2 water bootstrap).

    Each molecule (from the bond graph) is rotated about its centre of mass by an angle uniform
    in [0, `rotation`] degrees about a random axis and translated by a vector uniform in a ball
    of radius `translation` (Angstrom); then every atom is displaced by a vector uniform in a
    ball of radius `rattle` (Angstrom). Molecules are kept whole, positions are not wrapped.
    """
    if n_configurations < 0:
        raise ValueError(f"bootstrap: n_configurations must be >= 0, got {n_configurations}")
    for name, value in (("rotation", rotation), ("translation", translation), ("rattle", rattle)):
        if value < 0:
            raise ValueError(f"bootstrap: {name} must be >= 0, got {value}")
    rng = np.random.default_rng(seed)
    if atoms.pbc.any():
        pos, mol = unwrap_molecules(atoms, mult)
    else:
        pos, mol = atoms.positions.copy(), molecule_ids(atoms, mult)
    com = _centres(pos, atoms.get_masses(), mol)
    rel = pos - com[mol]
    n_mol = len(com)
    frames = [atoms.copy()] if include_original else []
    for k in range(n_configurations):
        axes = rng.normal(size=(n_mol, 3))
        axes /= np.linalg.norm(axes, axis=1, keepdims=True)
        angles = np.deg2rad(rotation) * rng.random(n_mol)
        rot = Rotation.from_rotvec(axes * angles[:, None]).as_matrix()
        shift = _ball(rng, n_mol, translation)
        new_pos = np.einsum("aij,aj->ai", rot[mol], rel) + com[mol] + shift[mol]
        new_pos += _ball(rng, len(atoms), rattle)
        new = atoms.copy()
        new.calc = None
        new.positions = new_pos
        new.info.update(bootstrap_index=k, bootstrap_seed=int(seed))
        frames.append(new)
    return frames


def split_molecules(atoms: ase.Atoms, mult: float = 1.2) -> list[ase.Atoms]:
    """Every molecule of a (periodic) structure, made whole, as a non-periodic Atoms centred at
    the origin, in the order of their first atoms (molecules from the covalent bond graph)."""
    positions, mol = unwrap_molecules(atoms, mult) if atoms.pbc.any() else (atoms.positions, molecule_ids(atoms, mult))
    out = []
    labels, first = np.unique(mol, return_index=True)
    for label in labels[np.argsort(first)]:  # in the order of their first atoms
        index = np.nonzero(mol == label)[0]
        molecule = ase.Atoms(atoms.numbers[index], positions[index])
        molecule.positions -= molecule.get_center_of_mass()
        out.append(molecule)
    return out


def species(atoms: ase.Atoms, mult: float = 1.2) -> dict[str, int]:
    """Molecule counts by Hill formula, in the order the formulas first appear."""
    counts: dict[str, int] = {}
    for molecule in split_molecules(atoms, mult):
        formula = molecule.get_chemical_formula(mode="hill")
        counts[formula] = counts.get(formula, 0) + 1
    return counts
