"""CP2K single points and labelling, with the real cp2k.psmp and cheap settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import molecule

from lotf.reference.cp2k import (
    CP2KRunner,
    CP2KSetupError,
    check_input,
    load_settings,
    render_input,
    single_point,
)
from lotf.reference.labelling import (
    ResultStore,
    label_file,
    label_frames,
    make_cluster,
    read_frames,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "cp2k"
CHEAP = DATA / "test-pbe-szv.yaml"


def cheap_tree() -> dict:
    return yaml.safe_load(CHEAP.read_text())


def water_box(seed: int = 0, triclinic: bool = False) -> Atoms:
    """One water molecule in a small periodic box (about 2 s with the cheap settings)."""
    atoms = molecule("H2O")
    atoms.cell = [[5.0, 0, 0], [0.3, 5.2, 0], [0.1, 0.2, 4.8]] if triclinic else [5.0, 5.0, 5.0]
    atoms.pbc = True
    atoms.center()
    atoms.rattle(0.05, seed=seed)
    return atoms


def stored_records(store: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in store.glob("*/*.json")}


# --------------------------------------------------------------------------------------------
# settings files


@pytest.mark.parametrize(
    "name, atoms, expected, absent",
    [
        ("b97-3c.yaml", molecule("BF3"),
         ["CUTOFF 800", "REL_CUTOFF 60", "NGRIDS 5", "PARAMETRIZATION B97-3C", "TYPE DFTD3(BJ)",
          "R_CUTOFF 7.93766", "CALCULATE_C9_TERM .TRUE.", "SHORT_RANGE_CORRECTION .TRUE.",
          "REFERENCE_FUNCTIONAL B97-3c", "MINIMIZER DIIS", "PRECONDITIONER FULL_SINGLE_INVERSE",
          "BASIS_SET TZVP-GTH-q3", "POTENTIAL GTH-PBE-q7", "EPS_SCF 1e-06", "MAX_SCF 100"], []),
        ("b97-3c-nod3.yaml", molecule("CH3CH2NH2"),
         ["CUTOFF 800", "PARAMETRIZATION B97-3C", "BASIS_SET TZVP-GTH-q5"], ["VDW_POTENTIAL"]),
        ("revpbe0-d3-water.yaml", molecule("H2O"),
         ["CUTOFF 400", "PARAMETRIZATION REVPBE", "FRACTION 0.25", "SCALE_X 0.75",
          "BASIS_SET AUX_FIT cpFIT3", "BASIS_SET ORB TZV2P-GTH-q6", "REFERENCE_FUNCTIONAL revPBE0",
          "TYPE DFTD3"], []),
        ("test-pbe-szv.yaml", molecule("H2O"), ["CUTOFF 200", "BASIS_SET SZV-MOLOPT-GTH"], []),
    ],
)
def test_settings_files_render_and_pass_cp2k_check(name, atoms, expected, absent):
    settings = load_settings(DATA / name)
    atoms.cell = [10.0, 10.0, 10.0]
    atoms.pbc = True
    settings.check_elements(atoms.get_chemical_symbols())
    text = render_input(settings, atoms, restart=True)
    for line in expected:
        assert line in text, line
    for word in absent:
        assert word not in text
    for line in ["RUN_TYPE ENERGY_FORCE", "STRESS_TENSOR ANALYTICAL", "SCF_GUESS RESTART",
                 "WFN_RESTART_FILE_NAME lotf-RESTART.wfn", "PERIODIC XYZ"]:
        assert line in text
    coord = text.split("&COORD")[1].split("&END COORD")[0].split()
    assert coord[::4] == atoms.get_chemical_symbols()
    np.testing.assert_allclose(np.reshape(coord, (-1, 4))[:, 1:].astype(float), atoms.positions)
    check_input(settings, atoms)  # the installed CP2K parses the rendered input


# --------------------------------------------------------------------------------------------
# one single point: parsing, units, sign conventions


def test_single_point_matches_ase_cp2k_shell_interface(tmp_path, monkeypatch):
    """Energy, forces and stress against ASE's own CP2K calculator (cp2k_shell protocol, CP2K's
    own unit conversion, ASE's stress sign): an independent path through the same program."""
    from ase.calculators.cp2k import CP2K

    from lotf.reference.cp2k import _render_tree

    tree = cheap_tree()
    tree["force_eval"]["dft"]["scf"].update(scf_guess="atomic", eps_scf=1e-8)
    atoms = water_box(seed=1, triclinic=True)
    t0 = time.perf_counter()
    ours = single_point(atoms, tree)
    elapsed = time.perf_counter() - t0

    monkeypatch.chdir(tmp_path)
    calc = CP2K(command="cp2k.psmp --shell", inp=_render_tree({"force_eval": tree["force_eval"]}),
                basis_set=None, basis_set_file=None, xc=None, cutoff=None, max_scf=None,
                potential_file=None, poisson_solver=None, pseudo_potential=None,
                print_level=None, force_eval_method=None, stress_tensor=True, label="ase")
    ref = atoms.copy()
    ref.calc = calc
    e_ref, f_ref, s_ref = ref.get_potential_energy(), ref.get_forces(), ref.get_stress()
    calc.close()  # stop the cp2k_shell process

    # CP2K converts with CODATA 2006 constants, ase.units uses CODATA 2014: 8e-8 relative
    assert ours.get_potential_energy() == pytest.approx(e_ref, rel=1e-6)
    assert abs(ours.get_potential_energy()) > 400  # eV, not Hartree (-17.1 Ha)
    np.testing.assert_allclose(ours.get_forces(), f_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.get_stress(), s_ref, rtol=1e-5, atol=1e-7)
    assert np.abs(ours.get_forces()).max() > 1.0  # rattled: forces of eV/Å size
    print(f"cheap single point (water, 5 Å box): {elapsed:.1f} s")


def test_nonperiodic_molecule():
    atoms = molecule("H2O")  # pbc False, no cell
    settings = load_settings(CHEAP)
    text = render_input(settings, atoms, vacuum=3.0)
    assert text.count("PERIODIC NONE") == 2 and "POISSON_SOLVER WAVELET" in text
    assert "STRESS_TENSOR NONE" in text and "&CENTER_COORDINATES" in text
    out = single_point(atoms, settings, vacuum=3.0)
    f = out.get_forces()
    assert "stress" not in out.calc.results
    # C2v symmetry of the molecule (mirror y -> -y) must show in the forces
    np.testing.assert_allclose(f[1], f[2] * [1, -1, 1], atol=2e-3)
    # same molecule in a 5 Å periodic box: periodic images change the energy, but not by much
    box = water_box()
    box.positions = atoms.positions + 2.5
    e_box = single_point(box, settings).get_potential_energy()
    assert 1e-3 < abs(out.get_potential_energy() - e_box) < 0.5


XTB = DATA / "test-xtb.yaml"  # written for periodic boxes: POISSON_SOLVER PERIODIC, DO_EWALD


def test_xtb_settings_follow_pbc_for_a_molecule_in_vacuum(tmp_path):
    water = molecule("H2O")  # pbc False, no cell
    settings = load_settings(XTB)
    text = render_input(settings, water, vacuum=4.0)
    assert text.count("PERIODIC NONE") == 2 and "POISSON_SOLVER WAVELET" in text
    assert "POISSON_SOLVER PERIODIC" not in text and "DO_EWALD .FALSE." in text
    cell = [line.split()[1:] for line in text.splitlines() if line.strip()[:2] in ("A ", "B ", "C ")]
    extent = np.ptp(water.positions, axis=0).max()
    np.testing.assert_allclose(np.asarray(cell, float), np.eye(3) * (extent + 8.0))  # vacuum padding
    # the periodic rendering of the same settings is untouched
    box = water.copy()
    box.cell, box.pbc = [8.0, 8.0, 8.0], True
    box.center()
    periodic_text = render_input(settings, box)
    assert "POISSON_SOLVER PERIODIC" in periodic_text and "DO_EWALD .TRUE." in periodic_text
    assert periodic_text.count("PERIODIC XYZ") == 2

    # real CP2K: the molecule is labelled (it used to fail: "Illegal combination of periodicity and
    # Poisson solver periodic3d")
    labelled, report = label_frames([water], XTB, store=tmp_path / "store", vacuum=4.0, progress=False)
    assert (report.n_ok, report.n_failed) == (1, 0), report.failures
    out = labelled[0]
    assert "stress" not in out.calc.results
    f = out.get_forces()
    np.testing.assert_allclose(f.sum(axis=0), 0.0, atol=1e-3)  # isolated: no net force
    np.testing.assert_allclose(f[1], f[2] * [1, -1, 1], atol=1e-4)  # C2v mirror y -> -y
    assert np.abs(f).max() > 1e-2
    # the forces are the gradient of the energy (central difference along the O z coordinate)
    h = 2e-3
    energies = []
    for sign in (1, -1):
        moved = water.copy()
        moved.positions[0, 2] += sign * h
        energies.append(single_point(moved, settings, vacuum=4.0).get_potential_energy())
    assert f[0, 2] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=1e-3)
    # the same molecule in an 8 Å periodic box (Ewald, periodic solver): close, not identical
    e_box = single_point(box, settings).get_potential_energy()
    assert 1e-5 < abs(out.get_potential_energy() - e_box) < 0.5


def test_wavefunction_reuse_same_result(tmp_path):
    settings = load_settings(CHEAP)
    a, b = water_box(seed=2), water_box(seed=3)
    chain = CP2KRunner(settings, tmp_path / "chain")
    first, second = chain.compute(a), chain.compute(b)
    fresh = CP2KRunner(settings, tmp_path / "fresh").compute(b)
    assert not first["restart"] and second["restart"] and not fresh["restart"]
    assert second["scf_steps"] < fresh["scf_steps"]
    assert second["energy"] == pytest.approx(fresh["energy"], abs=1e-5)
    np.testing.assert_allclose(second["forces"], fresh["forces"], atol=1e-3)
    # other atoms: no restart from the water wavefunction
    nh3 = molecule("NH3", cell=[5.0, 5.0, 5.0], pbc=True)
    nh3.center()
    assert not chain.compute(nh3)["restart"]


# --------------------------------------------------------------------------------------------
# labelling: files, store, failures, early errors, resume, Dask


def test_label_file_h5_and_extxyz_and_cache(tmp_path):
    import ase.io

    inp = tmp_path / "in.xyz"
    frames = [water_box(seed=i) for i in range(2)]
    ase.io.write(inp, frames)
    store = tmp_path / "store"
    rep = label_file(CHEAP, inp, tmp_path / "out.h5", store=store)
    assert (rep.n_total, rep.n_ok, rep.n_failed, rep.n_computed, rep.n_cached) == (2, 2, 0, 2, 0)
    assert len(stored_records(store)) == 2

    labelled = read_frames(tmp_path / "out.h5")
    assert len(labelled) == 2
    for a, ref in zip(labelled, frames):
        np.testing.assert_allclose(a.positions, ref.positions)
        assert a.get_forces().shape == (3, 3) and a.get_stress().shape == (6,)

    rep2 = label_file(CHEAP, inp, tmp_path / "out.extxyz", store=store)
    assert (rep2.n_computed, rep2.n_cached) == (0, 2)
    again = read_frames(tmp_path / "out.extxyz")  # extxyz keeps 8 decimals
    for a, b in zip(again, labelled):
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-7)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-7)
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-7)


def test_scf_failure_and_crash_are_recorded_and_skipped(tmp_path):
    no_conv = cheap_tree()
    scf = no_conv["force_eval"]["dft"]["scf"]
    del scf["ot"]
    scf.update(max_scf=1, eps_scf=1e-10, scf_guess="atomic")
    crash = cheap_tree()  # passes the input check, aborts when CP2K sets up D3
    crash["force_eval"]["dft"]["xc"]["vdw_potential"] = {
        "potential_type": "pair_potential",
        "pair_potential": {"type": "dftd3", "parameter_file_name": "dftd3.dat",
                           "reference_functional": "NOSUCH"}}
    frames = [water_box(seed=i) for i in range(2)]
    store = tmp_path / "store"

    out, rep = label_frames(frames, no_conv, store=store, progress=False)
    assert out == [] and (rep.n_ok, rep.n_failed, rep.n_computed) == (0, 2, 2)
    assert [f["index"] for f in rep.failures] == [0, 1]
    assert all(f["reason"] == "SCF not converged" for f in rep.failures)

    _, rep = label_frames(frames, no_conv, store=store, progress=False)  # failures are cached
    assert (rep.n_failed, rep.n_cached, rep.n_computed) == (2, 2, 0)
    _, rep = label_frames(frames, no_conv, store=store, progress=False, retry_failed=True)
    assert (rep.n_failed, rep.n_cached, rep.n_computed) == (2, 0, 2)

    out, rep = label_frames(frames[:1], crash, store=store, progress=False)
    assert out == [] and rep.n_failed == 1
    assert "exited with code" in rep.failures[0]["reason"]
    assert "No DFT-D3 values available for this functional" in rep.failures[0]["reason"]


@pytest.mark.parametrize(
    "case, match",
    [
        ("no_executable", "CP2K executable 'cp2k.psmp' not found on PATH"),
        ("no_kind", r"no KIND for element Cl \(frame 1\)"),
        ("no_basis", "no basis set SZV-MOLOPT-GTH for element B .*in BASIS_MOLOPT"),
        ("no_potential", "no potential GTH-PBE-q9 for element O .*in GTH_POTENTIALS"),
        ("unknown_keyword", "unknown CP2K keyword or section EPS_SCFF in section SCF"),
        ("unknown_section", "unknown CP2K keyword or section SCFF in section DFT"),
        ("bad_value", "CP2K rejects the input: invalid value for enumeration:NOSUCHGUESS"),
        ("coords_in_settings", "force_eval/subsys/coord must not be set"),
        ("mixed_pbc", r"frame 1: mixed periodicity"),
        ("isolated_solver", r"POISSON_SOLVER MT is for molecules in vacuum, but a structure is periodic"),
    ],
)
def test_early_errors_before_any_structure_runs(tmp_path, monkeypatch, case, match):
    tree = cheap_tree()
    frames = [water_box(), water_box(seed=1)]
    dft = tree["force_eval"]["dft"]
    if case == "no_executable":
        monkeypatch.setenv("PATH", str(tmp_path))
    elif case == "no_kind":
        frames[1] = molecule("HCl", cell=[5, 5, 5], pbc=True)
    elif case == "no_basis":
        tree["force_eval"]["subsys"]["kind"]["B"] = {"basis_set": "SZV-MOLOPT-GTH",
                                                    "potential": "GTH-PBE-q3"}
        frames[1] = molecule("BF3", cell=[5, 5, 5], pbc=True)
    elif case == "no_potential":
        tree["force_eval"]["subsys"]["kind"]["O"]["potential"] = "GTH-PBE-q9"
    elif case == "unknown_keyword":
        dft["scf"]["eps_scff"] = 1e-6
    elif case == "unknown_section":
        dft["scff"] = {"eps_scf": 1e-6}
    elif case == "bad_value":
        dft["scf"]["scf_guess"] = "nosuchguess"
    elif case == "coords_in_settings":
        tree["force_eval"]["subsys"]["coord"] = {"*": ["H 0 0 0"]}
    elif case == "mixed_pbc":
        frames[1].pbc = [True, True, False]
    elif case == "isolated_solver":
        dft["poisson"] = {"periodic": "none", "poisson_solver": "mt"}
    settings = tree
    if case == "no_basis":  # also through a file, so the message names it
        settings = tmp_path / "settings.yaml"
        settings.write_text(yaml.safe_dump(tree))
    with pytest.raises(CP2KSetupError, match=match) as err:
        label_frames(frames, settings, store=tmp_path / "store", progress=False)
    assert "\n" not in str(err.value)
    assert stored_records(tmp_path / "store") == {}


_KILL_SCRIPT = """
import sys
from lotf.reference.labelling import label_file
label_file(sys.argv[1], sys.argv[2], sys.argv[3], store=sys.argv[4])
"""


def test_kill_and_resume_recomputes_nothing_finished(tmp_path):
    import ase.io

    inp = tmp_path / "in.xyz"
    ase.io.write(inp, [water_box(seed=i) for i in range(3)])
    store = tmp_path / "store"
    env = dict(os.environ, TMPDIR=str(tmp_path))  # leftovers of the killed run stay here
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(CHEAP), str(inp),
                             str(tmp_path / "out.h5"), str(store)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not stored_records(store):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no structure finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = stored_records(store)
    assert 1 <= len(before) <= 3 and not (tmp_path / "out.h5").exists()

    rep = label_file(CHEAP, inp, tmp_path / "out.h5", store=store)
    assert rep.n_ok == 3 and rep.n_cached == len(before) and rep.n_computed == 3 - len(before)
    after = stored_records(store)
    assert all(after[p] == mtime for p, mtime in before.items())  # finished ones untouched
    assert len(after) == 3 and len(read_frames(tmp_path / "out.h5")) == 3


def test_dask_local_cluster_two_workers(tmp_path):
    frames = [water_box(seed=i) for i in range(4)]
    store = tmp_path / "store"
    out, rep = label_frames(frames, CHEAP, store=store, chunk_size=2, progress=False,
                            cluster={"kind": "local", "n_workers": 2})
    assert (rep.n_ok, rep.n_computed, rep.n_failed) == (4, 4, 0)
    records = [json.loads(p.read_text()) for p in store.glob("*/*.json")]
    assert len({r["worker"] for r in records}) == 2  # both workers labelled
    assert sum(r["restart"] for r in records) == 2  # second of each chunk reused the wavefunction
    assert all(r["worker"].split(":")[1] != str(os.getpid()) for r in records)
    # same numbers as a plain single point
    ref = single_point(frames[3], CHEAP)
    assert out[3].get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(out[3].get_forces(), ref.get_forces(), atol=1e-3)


def test_slurm_cluster_from_config():
    cluster, n_workers = make_cluster({"kind": "slurm", "cores": 8, "memory": "16GB", "jobs": 3,
                                       "queue": "cpu", "walltime": "02:00:00"}, scale=False)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert n_workers == 3
    assert "#SBATCH -p cpu" in script and "--cpus-per-task=8" in script and "#SBATCH -t 02:00:00" in script
    with pytest.raises(CP2KSetupError, match="needs 'memory'"):
        make_cluster({"kind": "pbs", "cores": 8}, scale=False)


def test_result_store_is_atomic_and_keyed(tmp_path):
    from lotf.reference.labelling import structure_key

    a = water_box()
    k1 = structure_key(a, "s", "v", 5.0)
    b = a.copy()
    b.positions[0, 0] += 1e-8  # below the rounding
    assert structure_key(b, "s", "v", 5.0) == k1
    b.positions[0, 0] += 1e-4
    assert structure_key(b, "s", "v", 5.0) != k1
    assert structure_key(a, "other settings", "v", 5.0) != k1
    store = ResultStore(tmp_path)
    store.put(k1, {"status": "ok"})
    assert store.get(k1) == {"status": "ok"} and store.get(k1[::-1]) is None
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{k1}.json"]


# --------------------------------------------------------------------------------------------
# slow: finite differences and the production settings


def _tight_tree() -> dict:
    """Cheap settings with tight SCF and screening: the default EPS_DEFAULT (1e-10) makes the GPW
    energy jump by ~1e-5 eV between strained cells, enough to spoil a finite difference."""
    tree = cheap_tree()
    tree["force_eval"]["dft"]["scf"]["eps_scf"] = 1e-9
    tree["force_eval"]["dft"]["qs"] = {"eps_default": 1e-14}
    return tree


@pytest.mark.slow
def test_forces_match_central_differences(tmp_path):
    runner = CP2KRunner(load_settings(_tight_tree()), tmp_path)
    atoms = water_box(seed=1, triclinic=True)
    ref = runner.compute(atoms)
    h = 1e-3
    for i, k in [(0, 0), (0, 2), (1, 1), (2, 2)]:
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, k] += sign * h
            e.append(runner.compute(moved)["energy"])
        assert -(e[0] - e[1]) / (2 * h) == pytest.approx(ref["forces"][i, k], abs=5e-4), (i, k)


@pytest.mark.slow
def test_stress_matches_finite_strain(tmp_path):
    """ASE stress = (1/V) dE/d(strain) for all six components of a triclinic cell."""
    runner = CP2KRunner(load_settings(_tight_tree()), tmp_path)
    atoms = water_box(seed=1, triclinic=True)
    ref = runner.compute(atoms)
    h, volume = 2e-3, atoms.get_volume()
    voigt = {(0, 0): 0, (1, 1): 1, (2, 2): 2, (1, 2): 3, (0, 2): 4, (0, 1): 5}
    for (i, j), v in voigt.items():
        e = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] += sign * h / 2
            eps[j, i] += sign * h / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            e.append(runner.compute(strained)["energy"])
        fd = (e[0] - e[1]) / (2 * h) / volume
        assert fd == pytest.approx(ref["stress"][v], rel=0.01, abs=2e-5), (i, j)
    assert np.abs(ref["stress"]).max() > 1e-2  # large enough for the check to mean something


@pytest.mark.slow
def test_b97_3c_production_settings_with_and_without_d3(tmp_path):
    """The seed-1 settings on one water molecule: the dispersion block adds a small attractive
    energy."""
    atoms = water_box()
    atoms.set_cell([6.0, 6.0, 6.0], scale_atoms=False)
    atoms.center()
    with_d3 = single_point(atoms, DATA / "b97-3c.yaml")
    without = single_point(atoms, DATA / "b97-3c-nod3.yaml")
    d3 = with_d3.get_potential_energy() - without.get_potential_energy()
    # D3(BJ) plus B97-3c's short-range bond correction: attractive, a fraction of an eV
    assert -0.5 < d3 < 0  # eV
    assert with_d3.get_stress().shape == (6,) and np.isfinite(with_d3.get_forces()).all()
    print(f"B97-3c water: E(D3+SRB) = {d3:.4f} eV")


@pytest.mark.slow
def test_node_repro(tmp_path, monkeypatch):
    """CP2KLabel inside a ZnTrack project, run by DVC, twice (second time from the store)."""
    import ase.io
    import ipsuite as ips
    import zntrack

    from lotf.nodes.label import CP2KLabel

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOTF_CP2K_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # dvc, zntrack
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    ase.io.write("in.xyz", [water_box(seed=i) for i in range(2)])
    (tmp_path / "cp2k.yaml").write_text(CHEAP.read_text())
    with zntrack.Project() as project:
        data = ips.AddData(file="in.xyz")
        label = CP2KLabel(data=data.frames, settings="cp2k.yaml")
    project.repro()
    node = label.from_rev()
    assert node.metrics["n_ok"] == 2 and node.metrics["n_computed"] == 2
    assert len(node.frames) == 2 and node.frames[0].get_stress().shape == (6,)
    assert json.loads(Path(node.failures_path).read_text()) == []
