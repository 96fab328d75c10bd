"""D3(BJ) dispersion: reference data, CN, derivatives, invariances, and two independent programs.

References: simple-dftd3 (the ``dftd3`` package, convention "dftd3") and CP2K 2023's own D3(BJ)
(convention "cp2k", read from CP2K's verbose dispersion output), plus hand formulas, finite
differences and invariances.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

from lotf.potential import neighbors
from lotf.potential.d3 import (
    BOHR,
    CP2K_PAIR_FILE,
    FUNCTIONALS,
    HARTREE,
    PACKAGED_DATA,
    BJParams,
    D3Term,
    load_reference,
    read_dftd3_dat,
    reference_from_records,
)
from lotf.potential.d3_calculator import (
    D3Calculator,
    graph_from_neighbors,
    recompute_labels,
)
from lotf.potential.predict import make_predict

B97_3C = BJParams(s6=1.0, s8=1.5, a1=0.37, a2=4.1)  # Brandenburg et al. 2018
TRICLINIC = np.array([[8.5, 0.3, 0.1], [0.9, 8.0, -0.4], [0.4, -0.6, 9.0]])


def cluster() -> Atoms:
    """Ethylamine, BF3 and water (17 atoms of H, B, C, N, O, F)."""
    bf3 = molecule("BF3")
    bf3.translate([0.0, 0.0, 3.6])
    water = molecule("H2O")
    water.translate([3.2, 0.5, 1.0])
    return molecule("CH3CH2NH2") + bf3 + water


def periodic() -> Atoms:
    """Ethylamine and BF3 in a small triclinic cell: pairs and triangles across images."""
    mol = molecule("CH3CH2NH2") + molecule("BF3")
    mol.positions[-4:] += [0.0, 0.0, 3.5]
    return Atoms(mol.numbers, positions=mol.positions + 0.3, cell=TRICLINIC, pbc=True)


class Evaluator:
    """Energy, forces, stress through make_predict on one neighbour list (built with a skin), so
    displaced or strained copies of the structure reuse the compiled function."""

    def __init__(self, term: D3Term, atoms: Atoms, skin: float = 0.5):
        cell = atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3))
        _, nbrs = neighbors.allocate(atoms.positions, cell, atoms.pbc, term.list_cutoff, skin)
        self.graph = graph_from_neighbors(atoms.positions, cell, atoms.numbers, nbrs)
        if term.three_body:
            legs, triangles = (int(x) for x in term.three_body_sizes(self.graph))
            term = term.with_capacity(legs + 64, triangles + 256)
        self.term, self.params = term, term.params()
        self.fn = jax.jit(make_predict([term.structure_energies], members=False))

    def __call__(self, positions=None, cell=None) -> dict:
        graph = self.graph
        if positions is not None:
            graph = graph._replace(positions=jax.numpy.asarray(positions))
        if cell is not None:
            graph = graph._replace(cells=jax.numpy.asarray(cell)[None])
        out = self.fn([self.params], [graph])
        return {key: np.asarray(value) for key, value in out.items()}


def predict(term: D3Term, atoms: Atoms) -> dict:
    return Evaluator(term, atoms)()


# -- reference data ---------------------------------------------------------------------------


def test_reference_tables_hold_published_values():
    ref = load_reference()
    # Q = sqrt(0.5 <r4>/<r2> sqrt(Z)): 2.00734898 (H) and 3.10492822 (C) in Grimme's dftd3 code
    assert ref.sqrt_q[1] == pytest.approx(2.00734898, abs=2e-8)
    assert ref.sqrt_q[6] == pytest.approx(3.10492822, abs=2e-8)
    assert ref.rcov[6] == pytest.approx(4.0 / 3.0 * 0.75 / BOHR)
    assert list(ref.n_ref[[1, 2, 6, 7, 8, 9]]) == [2, 1, 5, 4, 3, 2]
    assert ref.c6[1, 1, 0, 0] == pytest.approx(3.0267) and ref.cn[1, 0] == pytest.approx(0.9118)
    assert np.array_equal(ref.c6, np.swapaxes(np.swapaxes(ref.c6, 0, 1), 2, 3))
    assert ref.r0ab[1, 1] == pytest.approx(2.1823 / BOHR) and ref.r0ab[94, 94] == pytest.approx(4.4341 / BOHR)
    # packed row by row: (Z_a, Z_b <= Z_a) at a (a - 1) / 2 + b - 1
    assert ref.r0ab[6, 1] == ref.r0ab[1, 6] == pytest.approx(2.4492 / BOHR)
    assert ref.r0ab[5, 1] == pytest.approx(2.5141 / BOHR) and ref.r0ab[3, 3] == pytest.approx(3.4956 / BOHR)


@pytest.mark.skipif(not CP2K_PAIR_FILE.exists(), reason="CP2K's dftd3.dat is not installed")
def test_packaged_data_equals_cp2k_file():
    with np.load(PACKAGED_DATA) as data:
        packaged = data["records"]
        tables = data["r0ab"], data["rcov"], data["r2r4"]
    assert np.array_equal(read_dftd3_dat(CP2K_PAIR_FILE), packaged)
    a = reference_from_records(packaged, *tables, source="npz")
    b = load_reference(str(CP2K_PAIR_FILE))
    assert np.array_equal(a.c6, b.c6) and np.array_equal(a.cn, b.cn)


def test_bad_parameter_file_names_the_file(tmp_path):
    bad = tmp_path / "dftd3.dat"
    bad.write_text("10 2\n1.0 2.0 3.0\n")
    with pytest.raises(ValueError, match="dftd3.dat"):
        read_dftd3_dat(bad)


def test_bad_input_fails_naming_the_field():
    with pytest.raises(ValueError, match="unknown functional 'b3lyp-x'"):
        D3Calculator("b3lyp-x")
    with pytest.raises(ValueError, match="'convention'"):
        D3Term(convention="vasp")
    atoms = Atoms("HOg", positions=[[0, 0, 0], [0, 0, 1.5]])
    atoms.calc = D3Calculator()
    with pytest.raises(ValueError, match="element Og"):
        atoms.get_potential_energy()
    assert set(FUNCTIONALS) >= {"b97-3c", "pbe", "revpbe", "revpbe0"}


# -- coordination numbers -----------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["dftd3", "cp2k"])
def test_coordination_numbers_by_hand(convention):
    """H2 and a distant He: CN from the counting function written out here."""
    atoms = Atoms("H2He", positions=[[0, 0, 0], [0, 0, 0.74], [0, 2.5, 0.37]])
    term = D3Term(B97_3C, cutoff=8.0, cn_cutoff=8.0, convention=convention)
    params = term.params()
    _, nbrs = neighbors.allocate(atoms.positions, np.zeros((3, 3)), False, term.list_cutoff)
    graph = graph_from_neighbors(atoms.positions, np.zeros((3, 3)), atoms.numbers, nbrs)
    cn = np.asarray(term.coordination_numbers(params, graph))

    def count(r, a, b):
        rco = 4.0 / 3.0 * (a + b) / BOHR
        r = r / BOHR
        value = 1.0 / (1.0 + np.exp(-16.0 * (rco / r - 1.0)))
        if convention == "cp2k":
            value *= 0.5 * (1.0 - np.tanh(r - 2.0 * rco))
            value = value if value > 1e-6 else 0.0
        return value

    d_hhe = np.hypot(2.5, 0.37 - 0.0)
    h = count(0.74, 0.32, 0.32) + count(d_hhe, 0.32, 0.46)
    he = 2 * count(d_hhe, 0.32, 0.46)
    assert cn == pytest.approx([h, h, he], rel=1e-12)
    assert 0.85 < cn[0] < 1.0  # H2 at 0.74 A: a single bond


def test_methane_carbon_is_fourfold():
    atoms = molecule("CH4")
    term = D3Term(B97_3C, cutoff=8.0)
    _, nbrs = neighbors.allocate(atoms.positions, np.zeros((3, 3)), False, term.list_cutoff)
    graph = graph_from_neighbors(atoms.positions, np.zeros((3, 3)), atoms.numbers, nbrs)
    cn = np.asarray(term.coordination_numbers(term.params(), graph))
    assert cn[0] == pytest.approx(4.0, abs=0.05) and np.all(np.abs(cn[1:] - 1.0) < 0.05)


# -- derivatives and invariances ----------------------------------------------------------------


@pytest.fixture(scope="module")
def full():
    """Every feature (CP2K conventions, three-body with CP2K's screening, SRB) on a triclinic cell."""
    atoms = periodic()
    term = D3Term(B97_3C, cutoff=9.0, three_body=True, three_body_cutoff=6.0, short_range_correction=True)
    return atoms, Evaluator(term, atoms)


def test_forces_and_stress_match_finite_differences(full):
    atoms, evaluate = full
    out = evaluate()
    cell = atoms.cell.array
    h = 1e-4
    rng = np.random.default_rng(3)
    for atom in rng.choice(len(atoms), 3, replace=False):
        for c in range(3):
            plus, minus = atoms.positions.copy(), atoms.positions.copy()
            plus[atom, c] += h
            minus[atom, c] -= h
            fd = -(evaluate(plus)["energy"][0] - evaluate(minus)["energy"][0]) / (2 * h)
            assert out["forces"][atom, c] == pytest.approx(fd, abs=2e-7)
    volume = atoms.get_volume()
    for a, b in [(0, 0), (2, 2), (0, 1), (1, 2)]:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h
        e_plus = evaluate(atoms.positions @ (np.eye(3) + eps), cell @ (np.eye(3) + eps))["energy"][0]
        e_minus = evaluate(atoms.positions @ (np.eye(3) - eps), cell @ (np.eye(3) - eps))["energy"][0]
        fd = (e_plus - e_minus) / (2 * h) / volume / (1 if a == b else 2)
        assert out["stress"][0, a, b] == pytest.approx(fd, abs=1e-8)
    assert np.abs(out["forces"].sum(axis=0)).max() < 1e-10
    assert abs(out["energy"][0]) > 0.1


def test_rotation_and_translation_invariance(full):
    """Rotating positions and cell together, or translating all atoms (same pair list)."""
    atoms, evaluate = full
    ref = evaluate()
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    out = evaluate(atoms.positions @ rot.T, atoms.cell.array @ rot.T)
    assert out["energy"][0] == pytest.approx(ref["energy"][0], abs=1e-10)
    assert np.allclose(out["forces"], ref["forces"] @ rot.T, atol=1e-10)
    assert np.allclose(out["stress"][0], rot @ ref["stress"][0] @ rot.T, atol=1e-12)
    out = evaluate(atoms.positions + [1.3, -7.1, 2.2])
    assert out["energy"][0] == pytest.approx(ref["energy"][0], abs=1e-10)
    assert np.allclose(out["forces"], ref["forces"], atol=1e-10)


def test_fast_kernels_equal_plain_autodiff():
    """The hand-written VJPs (row kernels) against autodiff on flat pairs, on a cell with images."""
    atoms = periodic()
    atoms.positions[3] += [0.2, -0.1, 0.3]
    fast = D3Term(B97_3C, cutoff=10.0, cn_cutoff=7.0, short_range_correction=True)
    evaluate = Evaluator(fast, atoms)
    a, b = evaluate(), predict(fast.replace(implementation="reference"), atoms)
    assert a["energy"][0] == pytest.approx(b["energy"][0], rel=1e-13)
    assert np.allclose(a["forces"], b["forces"], rtol=0, atol=1e-11)
    assert np.allclose(a["stress"], b["stress"], rtol=0, atol=1e-13)
    # the ensemble path of make_predict (one reverse pass per member, vmapped)
    members = jax.jit(make_predict([fast.structure_energies], members=True))([evaluate.params], [evaluate.graph])
    assert np.allclose(np.asarray(members["forces"]), a["forces"], rtol=0, atol=1e-12)


def test_long_list_gathers_the_coordination_pairs(monkeypatch):
    """A 20 A list: the CN reads only the pairs within cn_cutoff, gathered at each call. Same
    numbers as the full rows and plain autodiff, also for rows of odd width in any slot order,
    when a row holds more such pairs than the columns kept (the call then takes the full rows),
    and for forces without the virial (MD steps between frames)."""
    atoms = periodic()
    atoms.positions[3] += [0.2, -0.1, 0.3]
    term = D3Term(B97_3C, cutoff=20.0, short_range_correction=True, elements=(1, 5, 6, 7, 9))  # CN: 5.2 A
    evaluate = Evaluator(term, atoms)
    graph, params = evaluate.graph, evaluate.params
    n_cols = graph.neighbors.shape[1]
    columns = term._cn_capacity(n_cols)
    assert columns is not None and 2 * columns <= n_cols  # the gathered path is taken
    data = term._row_data(graph, params.lookup[graph.numbers])
    near, overflow = term._near_columns(graph.positions, graph.cells, data, columns)
    assert not bool(overflow) and near.idx.shape == (len(atoms), columns)
    out = evaluate()
    full = Evaluator(term.replace(cn_columns=n_cols), atoms)()  # every column of every row
    ref = predict(term.replace(implementation="reference"), atoms)
    for other in (full, ref):
        assert out["energy"][0] == pytest.approx(other["energy"][0], rel=1e-13)
        assert np.allclose(out["forces"], other["forces"], rtol=0, atol=1e-11)
        assert np.allclose(out["stress"], other["stress"], rtol=0, atol=1e-13)
    assert np.allclose(np.asarray(term.coordination_numbers(params, graph)),
                       np.asarray(term.replace(implementation="reference").coordination_numbers(params, graph)),
                       rtol=0, atol=1e-13)

    def forces_only(t):  # the cell is not differentiated: no cell sums
        energy = lambda r: t.structure_energies(params, graph._replace(positions=r))[0]  # noqa: E731
        return -np.asarray(jax.jit(jax.grad(energy))(graph.positions))

    assert np.allclose(forces_only(term), out["forces"], rtol=0, atol=1e-12)
    # rows of odd width, padded slots dropped, slots in any order: a near pair in the last column
    width = n_cols - 5
    idx, shifts, mask = (np.array(x) for x in (graph.neighbors, graph.shifts, graph.pair_mask))
    assert not mask[:, width:].any()
    idx, shifts, mask = idx[:, :width], shifts[:, :width], mask[:, :width]
    vec = atoms.positions[idx] - atoms.positions[:, None] + shifts @ atoms.cell.array
    near = mask & (np.linalg.norm(vec, axis=-1) < term.cn_cutoff)
    rows = np.arange(len(atoms))
    first = np.argmax(near, axis=1)
    for x in (idx, shifts, mask):
        x[rows, first], x[rows, -1] = x[rows, -1].copy(), x[rows, first].copy()
    narrow = graph._replace(neighbors=jax.numpy.asarray(idx), shifts=jax.numpy.asarray(shifts),
                            pair_mask=jax.numpy.asarray(mask))
    assert term._cn_capacity(width) is not None
    shuffled = jax.jit(make_predict([term.structure_energies], members=False))([params], [narrow])
    assert float(shuffled["energy"][0]) == pytest.approx(out["energy"][0], rel=1e-13)
    assert np.allclose(np.asarray(shuffled["forces"]), out["forces"], rtol=0, atol=1e-12)
    monkeypatch.setattr(D3Term, "_cn_capacity", lambda self, n: 8)  # fewer columns than near pairs
    assert bool(term._near_columns(graph.positions, graph.cells, data, 8)[1])
    small = Evaluator(term.replace(), atoms)()
    assert small["energy"][0] == pytest.approx(out["energy"][0], rel=1e-13)
    assert np.allclose(small["forces"], out["forces"], rtol=0, atol=1e-11)
    assert np.allclose(small["stress"], out["stress"], rtol=0, atol=1e-13)
    assert np.allclose(forces_only(term.replace()), out["forces"], rtol=0, atol=1e-12)


def test_coordination_numbers_from_a_short_list_equal_the_long_list():
    """D3 in MD reads its CN pairs from a second, short list (the MLP's): same energy, forces
    and stress as the 20 A list alone; the hybrid force field shares the MLP's list for it, and
    the ASE calculator of the same terms gives the same numbers."""
    from lotf.dynamics.potential import ForceField, JaxBase
    from lotf.potential.calculator import EnergyTerm, LotfCalculator
    from lotf.potential.d3_calculator import d3_energy_term
    from lotf.potential.predict import WithShortList

    atoms = periodic()
    atoms.positions[3] += [0.2, -0.1, 0.3]
    elements = (1, 5, 6, 7, 9)
    term = D3Term(B97_3C, cutoff=20.0, short_range_correction=True, elements=elements)
    long_only = Evaluator(term, atoms)
    cell = atoms.cell.array
    _, short_nbrs = neighbors.allocate(atoms.positions, cell, atoms.pbc, 5.5, 0.5)
    short = graph_from_neighbors(atoms.positions, cell, atoms.numbers, short_nbrs)
    assert short.neighbors.shape[1] < long_only.graph.neighbors.shape[1] // 10
    both = jax.jit(make_predict([term.structure_energies], members=False))(
        [long_only.params], [WithShortList(long_only.graph, short)])
    ref = long_only()
    assert float(both["energy"][0]) == pytest.approx(ref["energy"][0], rel=1e-13)
    assert np.allclose(np.asarray(both["forces"]), ref["forces"], rtol=0, atol=1e-11)
    assert np.allclose(np.asarray(both["stress"]), ref["stress"], rtol=0, atol=1e-13)
    # a short list that misses CN pairs changes the numbers: the short list is really read
    _, too_short = neighbors.allocate(atoms.positions, cell, atoms.pbc, 1.5, 0.0)
    cut = jax.jit(make_predict([term.structure_energies], members=False))(
        [long_only.params], [WithShortList(long_only.graph, graph_from_neighbors(
            atoms.positions, cell, atoms.numbers, too_short))])
    assert abs(float(cut["energy"][0]) - ref["energy"][0]) > 1e-4

    d3 = d3_energy_term(elements, "b97-3c", 20.0, short_range_correction=True)
    assert d3.short_cutoff == pytest.approx(term.cn_cutoff)
    mlp_like = EnergyTerm(lambda p, g: jax.numpy.zeros(g.cells.shape[0]), (), 5.5)  # a stand-in MLP list
    ff = ForceField(JaxBase([mlp_like, d3], elements))
    assert ff.list_cutoffs == [5.5, pytest.approx(d3.cutoff)] and ff.term_lists == [0, (1, 0)]
    calc = LotfCalculator([mlp_like, d3], elements, members=False)
    work = atoms.copy()
    work.calc = calc
    assert work.get_potential_energy() == pytest.approx(ref["energy"][0], rel=1e-13)
    assert np.allclose(work.get_forces(), ref["forces"], rtol=0, atol=1e-11)
    assert len(calc._lists) == 2  # the MLP's 5.5 A list serves the coordination numbers


# -- independent programs -----------------------------------------------------------------------


def _simple_dftd3(atoms, cutoff, three_body_cutoff, cn_cutoff, s9):
    interface = pytest.importorskip("dftd3.interface")
    periodic_ = atoms.pbc.any()
    model = interface.DispersionModel(atoms.numbers, atoms.positions / BOHR,
                                      atoms.cell.array / BOHR if periodic_ else None,
                                      np.asarray(atoms.pbc) if periodic_ else None)
    model.set_realspace_cutoff(cutoff / BOHR, three_body_cutoff / BOHR, cn_cutoff / BOHR)
    param = interface.RationalDampingParam(s6=1.0, s8=1.5, a1=0.37, a2=4.1, s9=s9, alp=14.0)
    res = model.get_dispersion(param, grad=True)
    return res["energy"] * HARTREE, -res["gradient"] * HARTREE / BOHR, res["virial"] * HARTREE


@pytest.mark.parametrize("system, three_body", [
    ("molecule", False), ("triclinic", False), ("triclinic", True),
    pytest.param("molecule", True, marks=pytest.mark.slow),
])
def test_matches_simple_dftd3(system, three_body):
    atoms = cluster() if system == "molecule" else periodic()
    cutoff, cutoff3, cn_cutoff = 15.0, 7.0, 12.0
    energy, forces, virial = _simple_dftd3(atoms, cutoff, cutoff3, cn_cutoff, 1.0 if three_body else 0.0)
    atoms.calc = D3Calculator(B97_3C, cutoff=cutoff, cn_cutoff=cn_cutoff, three_body=three_body,
                              three_body_cutoff=cutoff3, convention="dftd3")
    assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-9)
    assert np.abs(atoms.get_forces() - forces).max() <= 1e-9 * np.abs(forces).max()
    if atoms.pbc.all():
        ours = atoms.get_stress(voigt=False) * atoms.get_volume()  # = dE/d(strain) = virial
        assert np.abs(ours - virial).max() <= 1e-9 * np.abs(virial).max()


KINDS = {1: "q1", 5: "q3", 6: "q4", 7: "q5", 8: "q6", 9: "q7"}


def _cp2k_dispersion(atoms, workdir, r_cutoff):
    """Run CP2K (cheapest QS settings; the dispersion does not depend on them) and parse its
    verbose D3 report: CN per atom, E6, E8, E9, total energy (Hartree) and gradient (Hartree/bohr)."""
    a, b, c = atoms.cell.array
    kinds = "\n".join(f"&KIND {s}\nBASIS_SET SZV-GTH\nPOTENTIAL GTH-PADE-{KINDS[z]}\n&END KIND"
                      for z, s in sorted({(z, s) for z, s in zip(atoms.numbers, atoms.get_chemical_symbols())}))
    symbols = atoms.get_chemical_symbols()
    coords = "\n".join(f"{s} {x:.12f} {y:.12f} {z:.12f}" for s, (x, y, z) in zip(symbols, atoms.positions))
    text = f"""&GLOBAL
PROJECT d3
RUN_TYPE ENERGY_FORCE
PRINT_LEVEL LOW
&END GLOBAL
&FORCE_EVAL
METHOD QS
STRESS_TENSOR ANALYTICAL
&DFT
BASIS_SET_FILE_NAME GTH_BASIS_SETS
POTENTIAL_FILE_NAME GTH_POTENTIALS
&MGRID
CUTOFF 60
REL_CUTOFF 20
&END MGRID
&SCF
MAX_SCF 1
&END SCF
&XC
&XC_FUNCTIONAL PADE
&END XC_FUNCTIONAL
&VDW_POTENTIAL
POTENTIAL_TYPE PAIR_POTENTIAL
&PAIR_POTENTIAL
TYPE DFTD3(BJ)
PARAMETER_FILE_NAME {CP2K_PAIR_FILE}
REFERENCE_FUNCTIONAL B97-3c
R_CUTOFF {r_cutoff}
CALCULATE_C9_TERM
SHORT_RANGE_CORRECTION
VERBOSE_OUTPUT
&PRINT_DFTD ON
&END PRINT_DFTD
&END PAIR_POTENTIAL
&END VDW_POTENTIAL
&END XC
&END DFT
&SUBSYS
&CELL
A {a[0]:.10f} {a[1]:.10f} {a[2]:.10f}
B {b[0]:.10f} {b[1]:.10f} {b[2]:.10f}
C {c[0]:.10f} {c[1]:.10f} {c[2]:.10f}
PERIODIC XYZ
&END CELL
&COORD
{coords}
&END COORD
{kinds}
&END SUBSYS
&END FORCE_EVAL
"""
    (workdir / "d3.inp").write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run(["cp2k.psmp", "-i", "d3.inp", "-o", "d3.out"], cwd=workdir, env=env, check=True,
                   capture_output=True, timeout=600)
    report = (workdir / "d3-1_0.dftd").read_text()
    number = r"([-+0-9.E]+)"
    cn_table = report.split("Coordination")[1].split("E6")[0]
    cn = [float(x) for x in re.findall(r"^\s+\d+\s+([0-9.]+)\s+\d+\s*$", cn_table, re.MULTILINE)]
    gradient_table = report.split("Dispersion Forces")[1]
    grad = re.findall(r"^\s+\d+\s+\d+\s+" + r"\s+".join([number] * 3) + r"\s*$", gradient_table, re.MULTILINE)
    get = lambda label: float(re.search(label + r"\s*:\s*" + number, report).group(1))
    return {"cn": np.array(cn), "e6": get(r"E6 vdW energy \[au/kcal\]"), "e8": get(r"E8 vdW energy \[au/kcal\]"),
            "e9": get(r"E9 vdW energy \[au/kcal\]"), "total": get(r"Total vdW energy \[au\]"),
            "gradient": np.array(grad, dtype=float)}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cp2k.psmp") is None or not CP2K_PAIR_FILE.exists(), reason="needs CP2K")
def test_matches_cp2k(tmp_path):
    """CP2K's own D3(BJ) of a cluster in a periodic box (images within the cutoff), with the C9
    term and the short-range bond correction, as in the seed-1 input (R_CUTOFF 7.93766 A)."""
    atoms = cluster()
    atoms.center(vacuum=4.0)
    atoms.pbc = True
    ref = _cp2k_dispersion(atoms, tmp_path, 7.93766)
    assert ref["e9"] > 0 and len(ref["cn"]) == len(atoms)
    two_body = D3Term(B97_3C, cutoff=2 * 7.93766)  # CP2K's cutoff is twice R_CUTOFF
    evaluate = Evaluator(two_body, atoms)
    assert evaluate()["energy"][0] / HARTREE == pytest.approx(ref["e6"] + ref["e8"], rel=1e-7)
    cn = np.asarray(two_body.coordination_numbers(evaluate.params, evaluate.graph))
    assert cn == pytest.approx(ref["cn"], abs=3e-8)  # CP2K: radii as float32 literals
    # everything, with CP2K's wrapping-dependent weights of triangles holding images of one atom
    atoms.calc = D3Calculator("b97-3c", cutoff=2 * 7.93766, three_body=True, short_range_correction=True,
                              cp2k_triangle_weights=True)
    assert atoms.get_potential_energy() / HARTREE == pytest.approx(ref["total"], rel=1e-7)
    # CP2K's gradient uses (switch)^2 where the CN derivative needs the switch: ~1e-4 relative off
    gradient = -atoms.get_forces() / (HARTREE / BOHR)
    assert np.abs(gradient - ref["gradient"]).max() < 2e-3 * np.abs(ref["gradient"]).max()
    # counting each triangle once (our default) differs from CP2K only through those triangles
    atoms.calc = D3Calculator("b97-3c", cutoff=2 * 7.93766, three_body=True, short_range_correction=True)
    e = atoms.get_potential_energy() / HARTREE
    assert e == pytest.approx(ref["total"], rel=2e-5) and e != pytest.approx(ref["total"], rel=1e-8)


# -- calculator, fusion, labels -------------------------------------------------------------------


def test_calculator_skin_and_rebuilds_agree_with_fresh_lists():
    """The calculator keeps its sorted neighbour rows while atoms stay in the skin; a second
    calculator without skin rebuilds every call. Both must agree, before and after a rebuild."""
    atoms = periodic()
    atoms.calc = D3Calculator("pbe", cutoff=9.0, skin=1.0)
    fresh = atoms.copy()
    fresh.calc = D3Calculator("pbe", cutoff=9.0, skin=0.0)
    rng = np.random.default_rng(1)
    for step in range(3):  # 0.1 A moves stay in the skin; the last one forces a rebuild
        move = rng.normal(scale=0.1 if step < 2 else 0.6, size=atoms.positions.shape)
        atoms.positions += move
        fresh.positions += move
        assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), rel=1e-12)
        assert np.allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-12)
        assert np.allclose(atoms.get_stress(), fresh.get_stress(), atol=1e-14)
    mol = cluster()
    mol.calc = atoms.calc  # another structure through the same calculator; no stress without a cell
    assert mol.get_forces().shape == (len(mol), 3) and "stress" not in mol.calc.results


@pytest.mark.slow
def test_three_body_capacity_overflow_is_nan_and_the_calculator_grows_it():
    atoms = periodic()
    atoms.calc = D3Calculator(B97_3C, cutoff=8.0, three_body=True, three_body_cutoff=5.0)
    assert np.isfinite(atoms.get_potential_energy())
    calc = atoms.calc
    small = calc.term.with_capacity(64, 64)
    assert calc.term.max_triplets > 64
    assert np.isnan(np.asarray(small.structure_energies(calc._params, calc._graph))[0])


def test_fused_with_gmnn_equals_the_sum_of_both():
    from lotf.potential.graph import collate, structure_arrays
    from lotf.potential.model import Model, ModelConfig

    atoms = periodic()
    config = ModelConfig(species=(1, 5, 6, 7, 9), hidden=(16,), dtype="float64")
    model = Model(config)
    d3 = D3Term(B97_3C, cutoff=10.0, elements=(1, 5, 6, 7, 9))
    g_mlp = collate([structure_arrays(atoms, config.species, config.r_max)])
    g_d3 = collate([structure_arrays(atoms, config.species, d3.list_cutoff)])
    params = [model.init(jax.random.PRNGKey(0), g_mlp), d3.params()]
    both = make_predict([model.structure_energies, d3.structure_energies], members=False)
    fused = jax.jit(both)(params, [g_mlp, g_d3])
    mlp = jax.jit(make_predict([model.structure_energies], members=False))(params[:1], [g_mlp])
    disp = jax.jit(make_predict([d3.structure_energies], members=False))(params[1:], [g_d3])
    for key in ("energy", "forces", "stress"):
        assert np.allclose(fused[key], np.asarray(mlp[key]) + np.asarray(disp[key]), rtol=1e-12, atol=1e-12)
    assert abs(float(disp["energy"][0])) > 0.1  # D3 is not negligible here


def test_recompute_labels_add_then_remove_round_trips():
    frames = []
    rng = np.random.default_rng(2)
    for k in range(2):
        atoms = periodic()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 * k, forces=rng.normal(size=(len(atoms), 3)),
                                           stress=rng.normal(size=6))
        frames.append(atoms)
    calc = D3Calculator("b97-3c", cutoff=8.0)
    added = recompute_labels(frames, calc, "add")
    back = recompute_labels(added, calc, "remove")
    for original, plus, minus in zip(frames, added, back):
        d3 = original.copy()
        d3.calc = calc
        expected = original.get_potential_energy() + d3.get_potential_energy()
        assert plus.get_potential_energy() == pytest.approx(expected, rel=1e-12)
        assert np.allclose(plus.get_forces(), original.get_forces() + d3.get_forces(), atol=1e-12)
        assert np.allclose(plus.get_stress(), original.get_stress() + d3.get_stress(), atol=1e-12)
        assert minus.get_potential_energy() == pytest.approx(original.get_potential_energy(), abs=1e-10)
        assert np.allclose(minus.get_forces(), original.get_forces(), atol=1e-12)
    unlabelled = periodic()
    with pytest.raises(ValueError, match="frame 1 has no energy"):
        recompute_labels([frames[0], unlabelled], calc)
    with pytest.raises(ValueError, match="'mode'"):
        recompute_labels(frames, calc, "subtract")


def test_recompute_d3_node_writes_frames(tmp_path, monkeypatch):
    from lotf.nodes.d3 import RecomputeD3

    monkeypatch.chdir(tmp_path)
    atoms = periodic()
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)), stress=np.zeros(6))
    node = RecomputeD3(data=[atoms], mode="add", cutoff=8.0)
    node.run()
    (out,) = node.frames
    d3 = atoms.copy()
    d3.calc = D3Calculator("b97-3c", cutoff=8.0)
    assert out.get_potential_energy() == pytest.approx(-1.0 + d3.get_potential_energy(), rel=1e-10)
    assert np.allclose(out.get_forces(), d3.get_forces(), atol=1e-10)
    assert np.allclose(out.get_stress(), d3.get_stress(), atol=1e-12)


def test_recompute_d3_nodes_build_into_a_dvc_pipeline(tmp_path, monkeypatch):
    """Seed 1's three label sets as nodes: DFT+D3(8 A), DFT+D3(20 A) and CP2K's D3 removed."""
    import zntrack

    from lotf.nodes.d3 import RecomputeD3
    from lotf.nodes.frames import LoadFrames

    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    periodic().write("dft.extxyz")
    with zntrack.Project() as project:
        dft = LoadFrames(file="dft.extxyz")
        RecomputeD3(data=dft.frames, cutoff=8.0, name="D3short")
        RecomputeD3(data=dft.frames, cutoff=20.0, name="D3long")
        RecomputeD3(data=dft.frames, mode="remove", cutoff=15.87532, three_body=True, three_body_cutoff=7.0,
                    short_range_correction=True, name="NoD3")
    project.build()
    dvc = (tmp_path / "dvc.yaml").read_text()
    assert all(name in dvc for name in ("D3short:", "D3long:", "NoD3:")) and "frames.h5" in dvc
    params = (tmp_path / "params.yaml").read_text()
    assert "mode: remove" in params and "three_body_cutoff: 7.0" in params
