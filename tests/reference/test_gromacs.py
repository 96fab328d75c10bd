"""GROMACS OPLS-AA seed: topologies, a short real run, units checked by `gmx mdrun -rerun`."""

from __future__ import annotations

import importlib.util
import re
import shutil

import ase
import numpy as np
import pytest

from lotf.reference import gromacs as gmx
from lotf.reference import structures as st

pytestmark = pytest.mark.skipif(shutil.which("gmx") is None, reason="GROMACS (gmx) not installed")

SPECIES = {"bmim": 2, "bf4": 2}
EV_IN_KJMOL = 96.48533212  # CODATA 2018: 1 eV * N_A in kJ/mol; independent of ase.units


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    """2 ion pairs at 0.6 g/cm^3 (10.8 A box), minimised, 300 NVT steps at 500 K."""
    work = tmp_path_factory.mktemp("seed")
    frames = gmx.run_seed(
        SPECIES, 0.6, work, temperature=500.0, n_steps=300, timestep=1.0, interval=50, seed=3, progress=False
    )
    return frames, work


@pytest.fixture(scope="module")
def rerun(seed_run, tmp_path_factory):
    frames, _ = seed_run
    return gmx.single_points(frames, SPECIES, tmp_path_factory.mktemp("rerun"))


def test_topologies_match_smiles_and_are_neutral_ions():
    for name, charge in (("bmim", 1.0), ("bf4", -1.0)):
        mol = gmx.molecule_type(name)
        rows = gmx._itp_atoms(gmx.OPLS_DIR / f"{name}.itp")
        assert sum(float(r[6]) for r in rows) == pytest.approx(charge, abs=1e-9)
        conf = st.smiles_to_conformers(st.SPECIES_SMILES[name])[0]
        assert tuple(conf.get_chemical_symbols()) == mol.symbols
    water = gmx.molecule_type("water", "spce")
    assert water.name == "SOL" and water.symbols == ("O", "H", "H")


def test_itp_files_are_those_the_generator_writes(tmp_path):
    """data/opls/*.itp are up to date with the published parameters in generate_itp.py."""
    spec = importlib.util.spec_from_file_location("generate_itp", gmx.OPLS_DIR / "generate_itp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in ("clandp_atomtypes.itp", "bmim.itp", "bf4.itp"):
        assert (tmp_path / name).read_text() == (gmx.OPLS_DIR / name).read_text(), name


def test_itp_bonds_are_the_rdkit_bond_graph():
    """The generated bonds section is exactly the molecule's covalent graph (atom order check)."""
    for name in ("bmim", "bf4"):
        conf = st.smiles_to_conformers(st.SPECIES_SMILES[name], seed=2)[0]
        d = conf.get_all_distances()
        text = (gmx.OPLS_DIR / f"{name}.itp").read_text().split("[ bonds ]")[1].split("[")[0]
        bonds = {
            tuple(int(v) - 1 for v in ln.split()[:2])
            for ln in text.splitlines()
            if ln.strip() and not ln.startswith(";")
        }
        graph = {(i, j) for i in range(len(conf)) for j in range(i + 1, len(conf)) if d[i, j] < 1.7}
        assert bonds == graph


def test_seed_frames_have_units_of_ev_and_angstrom(seed_run):
    frames, work = seed_run
    assert len(frames) == 7  # steps 0, 50, ..., 300
    box = frames[0]
    assert len(box) == 60 and box.get_chemical_formula() == "C16H30B2F8N4"
    # the cell is the Packmol cube in Angstrom (not nm)
    np.testing.assert_allclose(box.cell.lengths(), st.cubic_box_length(box.get_masses().sum(), 0.6), rtol=1e-5)
    assert [a.info["step"] for a in frames] == list(range(0, 301, 50))
    assert frames[-1].info["time_fs"] == pytest.approx(300.0)
    for a in frames:
        assert np.isfinite(a.get_potential_energy())
        assert a.get_forces().shape == (60, 3)
        assert a.get_stress().shape == (6,)
    # independent reading of the .trr: `gmx dump` prints the last frame's forces in kJ/mol/nm
    out = gmx.run_gmx(["dump", "-f", "md.trr"], work).stdout
    f_lines = out.split(" f (60x3):")[-1].splitlines()[1:61]
    f_dump = np.array([[float(v) for v in ln.split("{")[1].rstrip("}").split(",")] for ln in f_lines])
    np.testing.assert_allclose(frames[-1].get_forces() * EV_IN_KJMOL * 10.0, f_dump, rtol=2e-5, atol=1e-3)
    # velocities came along: the kinetic temperature is in the thermostat's range
    temps = [a.get_temperature() for a in frames[2:]]
    assert 300 < np.mean(temps) < 700


def test_seed1_box_runs(tmp_path):
    """Seed 1's system: 10 pairs at 1.210 g/cm^3 is a 14.58 A cube of 300 atoms, NVT at 500 K."""
    frames = gmx.run_seed(
        {"bmim": 10, "bf4": 10}, 1.210, tmp_path, temperature=500.0, n_steps=200, interval=100, seed=1, progress=False
    )
    assert len(frames) == 3 and len(frames[0]) == 300
    np.testing.assert_allclose(frames[-1].cell.lengths(), 14.584, atol=0.005)
    # OPLS-AA liquid: cohesive, so the potential energy is negative and O(-1 eV) per ion pair or below
    assert frames[-1].get_potential_energy() < -10.0


def test_rerun_reproduces_energies_and_forces(seed_run, rerun):
    frames, _ = seed_run
    e_md = np.array([a.get_potential_energy() for a in frames])
    e_rerun = np.array([a.get_potential_energy() for a in rerun])
    np.testing.assert_allclose(e_md, e_rerun, atol=2e-4)  # eV; float32 energies of ~ -5 eV
    for a, b in zip(frames, rerun):
        fa, fb = a.get_forces(), b.get_forces()
        # MD uses a buffered pair list, rerun builds it exactly: agreement to ~1e-3 of the forces
        assert np.abs(fa - fb).max() < 5e-3
        assert np.sqrt(np.mean((fa - fb) ** 2)) < 1e-3 * np.sqrt(np.mean(fa**2)) + 1e-4


def test_finished_run_is_reused_and_changed_input_recomputed(seed_run, tmp_path):
    frames, work = seed_run
    copy = tmp_path / "seed"
    shutil.copytree(work, copy)
    stamp = (copy / "md.log").stat().st_mtime_ns
    again = gmx.run_seed(
        SPECIES, 0.6, copy, temperature=500.0, n_steps=300, timestep=1.0, interval=50, seed=3, progress=False
    )
    assert (copy / "md.log").stat().st_mtime_ns == stamp  # nothing re-ran
    np.testing.assert_array_equal(again[-1].get_forces(), frames[-1].get_forces())
    shorter = gmx.run_seed(
        SPECIES, 0.6, copy, temperature=500.0, n_steps=100, timestep=1.0, interval=50, seed=3, progress=False
    )
    assert [a.info["step"] for a in shorter] == [0, 50, 100]


def test_forces_are_minus_gradient_of_rerun_energy(seed_run, tmp_path):
    frames, _ = seed_run
    atoms = frames[4]
    h = 2e-3  # Angstrom
    picks = [(0, 0), (4, 1), (9, 2), (24, 0), (50, 1), (51, 2)]  # C, N, C, H, F, B
    displaced = []
    for k, c in picks:
        for sign in (1, -1):
            b = atoms.copy()
            b.positions[k, c] += sign * h
            displaced.append(b)
    settings = gmx.GromacsSettings(cutoff=gmx.auto_cutoff(atoms))
    e = np.array([a.get_potential_energy() for a in gmx.single_points(displaced, SPECIES, tmp_path, settings)])
    fd = -(e[0::2] - e[1::2]) / (2 * h)
    analytic = np.array([atoms.get_forces()[k, c] for k, c in picks])
    np.testing.assert_allclose(fd, analytic, rtol=5e-3, atol=5e-3)


def test_virial_stress_is_strain_derivative_of_rerun_energy(seed_run, tmp_path):
    frames, _ = seed_run
    atoms = frames[3]
    h = 1e-4
    strained = []
    for axis in range(3):
        for sign in (1, -1):
            b = atoms.copy()
            eps = np.eye(3)
            eps[axis, axis] += sign * h
            b.set_cell(atoms.cell.array @ eps, scale_atoms=True)
            strained.append(b)
    settings = gmx.GromacsSettings(cutoff=gmx.auto_cutoff(atoms))
    e = np.array([a.get_potential_energy() for a in gmx.single_points(strained, SPECIES, tmp_path, settings)])
    fd = (e[0::2] - e[1::2]) / (2 * h) / atoms.get_volume()
    np.testing.assert_allclose(atoms.get_stress()[:3], fd, rtol=2e-2, atol=2e-5)


def test_energy_units_against_analytic_water(tmp_path):
    """A lone flexible TIP3P water: potential = bond + angle terms, computed here in eV."""
    r1, r2, theta = 1.05, 0.93, np.deg2rad(98.0)  # Angstrom, stretched and bent
    pos = np.array([[0, 0, 0], [r1, 0, 0], [r2 * np.cos(theta), r2 * np.sin(theta), 0]]) + 15.0
    water = ase.Atoms("OH2", positions=pos, cell=[30.0] * 3, pbc=True)
    settings = gmx.GromacsSettings(cutoff=12.0)
    e = gmx.single_points([water], {"water": 1}, tmp_path, settings)[0].get_potential_energy()
    # oplsaa.ff/tip3p.itp, FLEXIBLE: b0 0.09572 nm, kb 502416 kJ/mol/nm^2; 104.52 deg, 628.02 kJ/mol/rad^2
    bond = sum(0.5 * 502416.0 * (r / 10 - 0.09572) ** 2 for r in (r1, r2))
    angle = 0.5 * 628.02 * (theta - np.deg2rad(104.52)) ** 2
    # what is left is electrostatic: PME's grid residual of the excluded O-H/H-H pairs plus the
    # images' dipoles, 4e-4 eV here; a wrong unit (kcal, Hartree, nm) would be off by > 100 %
    assert e == pytest.approx((bond + angle) / EV_IN_KJMOL, rel=2e-3)


def test_bad_input_fails_with_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match=r"unknown species 'emim' \(known: bmim, bf4, water\)"):
        gmx.write_topology(tmp_path / "t.top", {"emim": 1})
    with pytest.raises(ValueError, match="unknown water_model 'tip9p'"):
        gmx.molecule_type("water", "tip9p")
    with pytest.raises(ValueError, match="density must be positive, got -1.2"):
        gmx.run_seed(SPECIES, -1.2, tmp_path)
    with pytest.raises(ValueError, match="species count for 'bmim' must be a non-negative integer"):
        gmx.write_topology(tmp_path / "t.top", {"bmim": -1})
    bf4 = st.smiles_to_conformers(st.SPECIES_SMILES["bf4"])[0]
    mols = gmx.write_topology(tmp_path / "t.top", {"bmim": 1})
    with pytest.raises(ValueError, match="structure has 5 atoms, topology 25"):
        gmx.check_order(bf4, mols)
    mols = gmx.write_topology(tmp_path / "t.top", {"bmim": 1, "bf4": 1})
    swapped = bf4 + st.smiles_to_conformers(st.SPECIES_SMILES["bmim"])[0]
    with pytest.raises(ValueError, match="atom 0 is F but the topology expects C"):
        gmx.check_order(swapped, mols)
    with pytest.raises(ValueError, match="ensemble must be 'nvt' or 'npt'"):
        gmx.run_md(swapped, {"bf4": 1, "bmim": 1}, tmp_path, ensemble="nve")
    with pytest.raises(ValueError, match="cutoff must be positive"):
        gmx.make_mdp("nvt", cutoff=-1.0)


def test_trr_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    frames = [gmx.TrrFrame(k, 0.5 * k, np.eye(3) * 2.0, rng.random((7, 3)), None, rng.random((7, 3))) for k in range(3)]
    gmx.write_trr(tmp_path / "x.trr", frames)
    back = gmx.read_trr(tmp_path / "x.trr")
    assert [f.step for f in back] == [0, 1, 2] and back[2].time == pytest.approx(1.0)
    for a, b in zip(frames, back):
        np.testing.assert_allclose(a.x, b.x, rtol=1e-6)
        np.testing.assert_allclose(a.f, b.f, rtol=1e-6)
        assert b.v is None
    # GROMACS itself reads our file
    out = gmx.run_gmx(["check", "-f", "x.trr"], tmp_path)
    assert re.search(r"Last frame\s+2 time\s+1.000", out.stdout + out.stderr)


@pytest.mark.slow
def test_npt_density_of_bmim_bf4_within_5_percent(tmp_path):
    """CL&P OPLS-AA BMIM-BF4 at 298 K and 1 bar: density within 5 % of 1.20 g/cm^3 (experiment).

    20 pairs, 7.7 A cutoff, 300 ps (about a minute); benchmarks/opls_density.py runs the longer,
    larger version (32 pairs, 1 ns: 1.184 g/cm^3).
    """
    species = {"bmim": 20, "bf4": 20}
    box = st.pack_species(species, 1.10, seed=2)
    cutoff = gmx.auto_cutoff(box) * (1.10 / 1.20 / 1.03) ** (1 / 3)  # room for the box to shrink
    settings = gmx.GromacsSettings(cutoff=cutoff, constraints="h-bonds")
    frames = gmx.run_md(
        box,
        species,
        tmp_path,
        "npt",
        298.15,
        n_steps=150_000,
        timestep=2.0,
        interval=500,
        seed=2,
        pressure=1.01325,
        settings=settings,
        progress=False,
    )
    rho = np.array([a.info["density"] for a in frames])
    mean = rho[len(rho) // 2 :].mean()  # last 150 ps
    assert mean == pytest.approx(1.20, rel=0.05)


def test_seed_run_is_reproducible(seed_run, tmp_path):
    frames, _ = seed_run
    again = gmx.run_seed(
        SPECIES, 0.6, tmp_path, temperature=500.0, n_steps=300, timestep=1.0, interval=50, seed=3, progress=False
    )
    for a, b in zip(frames, again):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.get_forces(), b.get_forces())


def test_gromacs_seed_node(tmp_path, monkeypatch):
    """The ZnTrack node writes labelled frames and metrics (run in-process, as `zntrack run` does)."""
    zntrack = pytest.importorskip("zntrack")
    import subprocess

    from lotf.nodes.seed import GromacsSeed

    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["dvc", "init", "-q"], check=True)
    with zntrack.Project() as project:
        GromacsSeed(species={"bmim": 2, "bf4": 2}, density=0.6, n_steps=100, interval=50, seed=1)
    project.build()
    node = GromacsSeed.from_rev(name="GromacsSeed", running=True)
    node.run()
    node.save()
    done = GromacsSeed.from_rev(name="GromacsSeed")
    frames = done.frames
    assert len(frames) == 3 and len(frames[0]) == 60
    assert frames[1].get_forces().shape == (60, 3) and np.isfinite(frames[1].get_potential_energy())
    assert frames[2].info["step"] == 100
    assert done.metrics["n_frames"] == 3
