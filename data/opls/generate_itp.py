"""Write the GROMACS OPLS-AA (CL&P) topologies for BMIM+ and BF4- in this folder.

Run from the repository root: `.venv/bin/python data/opls/generate_itp.py`.

Parameters: the CL&P force field of Canongia Lopes and Padua, an OPLS-AA extension for ionic
liquids (same functional form and combination rules as OPLS-AA, fudgeLJ = fudgeQQ = 0.5):
  - J. N. Canongia Lopes, J. Deschamps, A. A. H. Padua, J. Phys. Chem. B 108, 2038-2047 (2004),
    erratum J. Phys. Chem. B 108, 11250 (2004): 1-alkyl-3-methylimidazolium cations.
  - J. N. Canongia Lopes, A. A. H. Padua, J. Phys. Chem. B 108, 16893-16898 (2004) and the CL&P
    database file il.ff (version 2016/02/03, https://github.com/paduagroup/clandp): BF4- entry.
  - Alkyl bonded terms are OPLS-AA: W. L. Jorgensen, D. S. Maxwell, J. Tirado-Rives,
    J. Am. Chem. Soc. 118, 11225-11236 (1996).
The numbers below are those published values (units: kJ/mol, Angstrom, degree; bond and angle
constants as k/2 (x - x0)^2). C-H bonds, constrained in CL&P, are kept flexible here with the
published force constant, because the seed trajectories are training data for a flexible MLP.

Atom order of each molecule is RDKit's order for the SMILES below (heavy atoms in SMILES order,
then hydrogens by parent), so structures built by `lotf.reference.structures` from the same
SMILES map one-to-one onto these topologies. Angles, proper dihedrals, impropers and 1-4 pairs
are generated from the bond graph, so no term can be forgotten by hand.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from rdkit import Chem
from scipy.sparse.csgraph import shortest_path

HERE = Path(__file__).resolve().parent

# name: (element, atomic number, mass, charge, sigma/A, epsilon/kJ mol-1, bonded class)
ATOMTYPES = {
    "C1": ("C", 6, 12.011, -0.17, 3.50, 0.27614, "CT"),  # N-CH2 / N-CH3
    "C2": ("C", 6, 12.011, 0.01, 3.50, 0.27614, "CT"),  # second chain carbon
    "CS": ("C", 6, 12.011, -0.12, 3.50, 0.27614, "CT"),  # inner CH2
    "CT": ("C", 6, 12.011, -0.18, 3.50, 0.27614, "CT"),  # terminal CH3
    "CR": ("C", 6, 12.011, -0.11, 3.55, 0.29288, "CR"),  # ring C2 (between the N)
    "CW": ("C", 6, 12.011, -0.13, 3.55, 0.29288, "CW"),  # ring C4/C5
    "HCR": ("H", 1, 1.008, 0.21, 2.42, 0.12552, "HA"),
    "HCW": ("H", 1, 1.008, 0.21, 2.42, 0.12552, "HA"),
    "HC": ("H", 1, 1.008, 0.06, 2.50, 0.12552, "HC"),
    "H1": ("H", 1, 1.008, 0.13, 2.50, 0.12552, "HC"),  # H on carbons bound to N
    "NA": ("N", 7, 14.007, 0.15, 3.25, 0.71128, "NA"),
    "B": ("B", 5, 10.811, 0.96, 3.58, 0.39750, "B"),
    "FB": ("F", 9, 18.998, -0.49, 3.12, 0.25520, "F"),
}

# (class_i, class_j): (r0/A, k/kJ mol-1 A-2)
BONDS = {
    ("HC", "CT"): (1.090, 2845.0),
    ("CT", "CT"): (1.529, 2242.0),
    ("CR", "HA"): (1.080, 2845.0),
    ("CW", "HA"): (1.080, 2845.0),
    ("CR", "NA"): (1.315, 3992.0),
    ("CW", "NA"): (1.378, 3574.0),
    ("CW", "CW"): (1.341, 4352.0),
    ("NA", "CT"): (1.466, 2820.0),
    ("B", "F"): (1.394, 3235.0),
}

# (i, j, k) with j central: (theta0/deg, k/kJ mol-1 rad-2)
ANGLES = {
    ("CT", "CT", "CT"): (112.7, 488.3),
    ("CT", "CT", "HC"): (110.7, 313.8),
    ("HC", "CT", "HC"): (107.8, 276.1),
    ("CW", "NA", "CR"): (108.0, 585.8),
    ("CW", "NA", "CT"): (125.6, 585.8),
    ("CR", "NA", "CT"): (126.4, 585.8),
    ("NA", "CR", "HA"): (125.1, 292.9),
    ("NA", "CR", "NA"): (109.8, 585.8),
    ("NA", "CW", "CW"): (107.1, 585.8),
    ("NA", "CW", "HA"): (122.0, 292.9),
    ("CW", "CW", "HA"): (130.9, 292.9),
    ("NA", "CT", "HC"): (110.7, 313.8),
    ("NA", "CT", "CT"): (112.7, 488.3),
    ("F", "B", "F"): (109.5, 669.5),
}

# OPLS Fourier coefficients V1..V4 / kJ mol-1 (GROMACS dihedral function 5)
DIHEDRALS = {
    ("HC", "CT", "CT", "HC"): (0.0, 0.0, 1.2552, 0.0),
    ("CT", "CT", "CT", "HC"): (0.0, 0.0, 1.2552, 0.0),
    ("CT", "CT", "CT", "CT"): (5.4392, -0.2092, 0.8368, 0.0),
    ("CW", "NA", "CR", "NA"): (0.0, 19.46, 0.0, 0.0),
    ("CW", "NA", "CR", "HA"): (0.0, 19.46, 0.0, 0.0),
    ("CT", "NA", "CR", "NA"): (0.0, 19.46, 0.0, 0.0),
    ("CT", "NA", "CR", "HA"): (0.0, 19.46, 0.0, 0.0),
    ("CR", "NA", "CW", "CW"): (0.0, 12.55, 0.0, 0.0),
    ("CR", "NA", "CW", "HA"): (0.0, 12.55, 0.0, 0.0),
    ("CT", "NA", "CW", "CW"): (0.0, 12.55, 0.0, 0.0),
    ("CT", "NA", "CW", "HA"): (0.0, 12.55, 0.0, 0.0),
    ("NA", "CW", "CW", "NA"): (0.0, 44.98, 0.0, 0.0),
    ("NA", "CW", "CW", "HA"): (0.0, 44.98, 0.0, 0.0),
    ("HA", "CW", "CW", "HA"): (0.0, 44.98, 0.0, 0.0),
    ("CW", "NA", "CT", "HC"): (0.0, 0.0, 0.519, 0.0),
    ("CR", "NA", "CT", "HC"): (0.0, 0.0, 0.0, 0.0),
    ("CW", "NA", "CT", "CT"): (-7.1535, 6.1064, 0.7939, 0.0),
    ("CR", "NA", "CT", "CT"): (-5.2691, 0.0, 0.0, 0.0),
    ("NA", "CT", "CT", "CT"): (-7.4797, 3.1642, -1.2026, 0.0),
    ("NA", "CT", "CT", "HC"): (0.0, 0.0, 0.367, 0.0),
}

# Impropers, the third atom is the central one; V2 / kJ mol-1 of V2/2 (1 - cos 2 phi)
IMPROPERS = {
    ("CR", "CW", "NA", "CT"): 8.37,
    ("NA", "NA", "CR", "HA"): 9.20,
    ("NA", "CW", "CW", "HA"): 9.20,
}

# molecule name, residue name, SMILES, CL&P type of every atom in RDKit order
MOLECULES = {
    "bmim": (
        "BMIM",
        "BMI",
        "CCCCn1cc[n+](C)c1",
        ["CT", "CS", "C2", "C1", "NA", "CW", "CW", "NA", "C1", "CR"]
        + ["HC"] * 7
        + ["H1"] * 2
        + ["HCW", "HCW"]
        + ["H1"] * 3
        + ["HCR"],
    ),
    "bf4": ("BF4", "BF4", "F[B-](F)(F)F", ["FB", "B", "FB", "FB", "FB"]),
}

PREFIX = "il_"  # keeps our type names apart from oplsaa.ff's


def _lookup(table: dict, key: tuple, what: str):
    if key in table:
        return table[key]
    if key[::-1] in table:
        return table[key[::-1]]
    raise KeyError(f"no CL&P {what} parameters for {key}")


def write_atomtypes(path: Path) -> None:
    lines = [
        "; CL&P (OPLS-AA for ionic liquids) atom types, see generate_itp.py for sources.",
        "; Use with the OPLS-AA [ defaults ]: nbfunc 1, comb-rule 3, gen-pairs yes, fudgeLJ = fudgeQQ = 0.5.",
        "[ atomtypes ]",
        "; name  bond_type  at.num  mass  charge  ptype  sigma/nm  epsilon/kJ mol-1",
    ]
    for name, (_, z, mass, q, sig, eps, _) in ATOMTYPES.items():
        t = PREFIX + name
        lines.append(f"{t:<8s} {t:<8s} {z:3d} {mass:9.4f} {q:8.4f}  A  {sig / 10:.5e}  {eps:.5e}")
    path.write_text("\n".join(lines) + "\n")


def write_molecule(key: str, path: Path) -> None:
    molname, resname, smiles, types = MOLECULES[key]
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if mol.GetNumAtoms() != len(types):
        raise ValueError(f"{key}: {mol.GetNumAtoms()} atoms but {len(types)} types")
    for atom, t in zip(mol.GetAtoms(), types):
        if atom.GetSymbol() != ATOMTYPES[t][0]:
            raise ValueError(f"{key}: atom {atom.GetIdx()} is {atom.GetSymbol()}, type {t}")
    edges = sorted(tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds())
    graph: dict[int, list[int]] = {i: [] for i in range(len(types))}  # atom -> bonded atoms
    for i, j in edges:
        graph[i].append(j)
        graph[j].append(i)
    cls = [ATOMTYPES[t][6] for t in types]
    for i, t in enumerate(types):  # hydrogen types follow from their carbon (CL&P naming)
        if t in ("HC", "H1", "HCR", "HCW"):
            (c,) = graph[i]
            on_n = any(types[n] == "NA" for n in graph[c])
            want = {"CR": "HCR", "CW": "HCW"}.get(types[c], "H1" if on_n else "HC")
            if t != want:
                raise ValueError(f"{key}: hydrogen {i} on {types[c]} should be {want}, not {t}")
    total_q = sum(ATOMTYPES[t][3] for t in types)

    out = [
        f"; {molname}: CL&P / OPLS-AA topology written by data/opls/generate_itp.py",
        "; Sources: Canongia Lopes, Deschamps, Padua, J. Phys. Chem. B 108, 2038 (2004);",
        ";          Canongia Lopes, Padua, J. Phys. Chem. B 108, 16893 (2004); CL&P il.ff 2016/02/03;",
        ";          Jorgensen, Maxwell, Tirado-Rives, J. Am. Chem. Soc. 118, 11225 (1996).",
        f"; Atom order: RDKit order of SMILES {smiles} with explicit hydrogens.",
        f"; Net charge {total_q:+.2f} e.",
        "[ moleculetype ]",
        "; name  nrexcl",
        f"{molname}  3",
        "",
        "[ atoms ]",
        "; nr  type  resnr  residue  atom  cgnr  charge  mass",
    ]
    counter: dict[str, int] = {}
    for i, t in enumerate(types):
        el, _, mass, q, *_ = ATOMTYPES[t]
        counter[el] = counter.get(el, 0) + 1
        out.append(
            f"{i + 1:5d} {PREFIX + t:<8s} 1 {resname:<5s} {el + str(counter[el]):<5s} {i + 1:5d} {q:8.4f} {mass:9.4f}"
        )

    out += ["", "[ bonds ]", "; i  j  funct  b0/nm  kb/kJ mol-1 nm-2"]
    for i, j in edges:
        r0, k = _lookup(BONDS, (cls[i], cls[j]), "bond")
        out.append(f"{i + 1:5d} {j + 1:5d} 1 {r0 / 10:.5f} {k * 100:.1f}")

    adjacency = np.zeros((len(types), len(types)))
    for i, j in edges:
        adjacency[i, j] = adjacency[j, i] = 1
    lengths = shortest_path(adjacency, unweighted=True)
    pairs = [(i, j) for i, j in itertools.combinations(range(len(types)), 2) if lengths[i, j] == 3]
    if pairs:  # 1-4 by the shortest path: ring atoms also 1-2 or 1-3 get no pair
        out += ["", "[ pairs ]", "; 1-4 pairs, scaled by fudgeLJ/fudgeQQ from [ defaults ]"]
        out += [f"{i + 1:5d} {j + 1:5d} 1" for i, j in pairs]

    out += ["", "[ angles ]", "; i  j  k  funct  theta0/deg  k/kJ mol-1 rad-2"]
    for j in sorted(graph):
        for i, k in itertools.combinations(sorted(graph[j]), 2):
            th, ka = _lookup(ANGLES, (cls[i], cls[j], cls[k]), "angle")
            out.append(f"{i + 1:5d} {j + 1:5d} {k + 1:5d} 1 {th:.2f} {ka:.2f}")

    proper_lines = []
    for j, k in edges:
        for i in sorted(graph[j]):
            for m in sorted(graph[k]):
                if i in (j, k) or m in (j, k) or i == m:
                    continue
                v = _lookup(DIHEDRALS, (cls[i], cls[j], cls[k], cls[m]), "dihedral")
                if any(v):
                    proper_lines.append(
                        f"{i + 1:5d} {j + 1:5d} {k + 1:5d} {m + 1:5d} 5 " + " ".join(f"{x:.4f}" for x in v)
                    )
    if proper_lines:
        out += ["", "[ dihedrals ]", "; proper, OPLS Fourier: i  j  k  l  funct=5  V1..V4/kJ mol-1", *proper_lines]

    improper_lines = []
    for c in sorted(graph):
        nbrs = sorted(graph[c])
        if len(nbrs) != 3:
            continue
        for (a, b, central, d), v2 in IMPROPERS.items():
            if central != cls[c] or sorted([a, b, d]) != sorted(cls[n] for n in nbrs):
                continue
            left = list(nbrs)
            order = []
            for want in (a, b, d):
                pick = next(n for n in left if cls[n] == want)
                left.remove(pick)
                order.append(pick)
            i, j, m = order
            # periodic improper (funct 4): k (1 + cos(2 phi - 180)) = V2/2 (1 - cos 2 phi)
            improper_lines.append(f"{i + 1:5d} {j + 1:5d} {c + 1:5d} {m + 1:5d} 4 180.0 {v2 / 2:.4f} 2")
    if improper_lines:
        out += ["", "[ dihedrals ]", "; improper, central atom third: funct=4  phi_s  k/kJ mol-1  n"]
        out += improper_lines
    path.write_text("\n".join(out) + "\n")


def main(out: Path = HERE) -> None:
    """Write clandp_atomtypes.itp, bmim.itp and bf4.itp into `out`."""
    write_atomtypes(out / "clandp_atomtypes.itp")
    for key in MOLECULES:
        write_molecule(key, out / f"{key}.itp")


if __name__ == "__main__":
    main()
