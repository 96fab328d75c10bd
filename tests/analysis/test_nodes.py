"""The analysis nodes run on small synthetic inputs and write their files (no DVC run)."""

import json
import pathlib
import subprocess
import sys
import types

import ase
import numpy as np
import pandas as pd
import pytest
import znh5md
import zntrack
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator

from lotf.nodes import analysis as nodes

BF4 = np.array(
    [
        [0, 0, 0],
        [0.81, 0.81, 0.81],
        [-0.81, -0.81, 0.81],
        [-0.81, 0.81, -0.81],
        [0.81, -0.81, -0.81],
    ]
)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def bf4_liquid(n_frames=120, seed=0, box=9.0, npt=False):
    rng = np.random.default_rng(seed)
    centres = np.array([[2, 2, 2], [6.5, 6.5, 2], [2, 6.5, 6.5], [6.5, 2, 6.5]], float)
    walk = np.cumsum(rng.normal(scale=0.15, size=(n_frames, 4, 3)), axis=0)
    frames = []
    for t in range(n_frames):
        L = box * (1.0 + (0.01 * np.sin(t) if npt else 0.0))
        pos = np.concatenate([BF4 + c + w for c, w in zip(centres, walk[t])]) * (L / box)
        a = ase.Atoms("BF4" * 4, positions=pos, cell=[L] * 3, pbc=True)
        a.wrap()
        frames.append(a)
    return frames


def test_resolve_source(workdir):
    frames = bf4_liquid(3)
    znh5md.IO("t.h5").extend(frames)
    assert nodes.resolve_source(types.SimpleNamespace(traj_file="t.h5")).name == "t.h5"
    (workdir / "frames").mkdir()
    znh5md.IO("frames/a.h5").extend(frames)
    assert (
        nodes.resolve_source(types.SimpleNamespace(frames_path=workdir / "frames")).name == "a.h5"
    )
    assert nodes.resolve_source(types.SimpleNamespace(frames=frames)) is not None
    with pytest.raises(TypeError, match="neither a trajectory file"):
        nodes.resolve_source(object())


def test_rdf_diffusion_density_nodes(workdir):
    frames = bf4_liquid()
    znh5md.IO("traj.h5", timestep=5.0).extend(frames)
    data = types.SimpleNamespace(traj_file="traj.h5")
    npt = bf4_liquid(npt=True)
    znh5md.IO("npt.h5", timestep=5.0).extend(npt)

    rdf = nodes.RDF(data=data, n_bins=30, pairs=["B-B", "B-F"])
    rdf.run()
    rdf.save()  # what `zntrack run` does after run(): writes plots and metrics
    df = pd.read_csv(rdf.nwd / "rdf.csv")
    assert (
        list(df.columns) == ["r", "B-B", "B-F", "F-F", "total"] and rdf.figure.stat().st_size > 1000
    )
    assert set(rdf.metrics["first_peak_A"]) == {"B-B", "B-F"}
    assert rdf.metrics["first_peak_A"]["B-F"] == pytest.approx(1.4, abs=0.1)  # B-F bond

    diff = nodes.Diffusion(
        data=data, max_lag_ps=0.1, n_blocks=2, temperature=300.0, viscosity_mpas=1.0
    )
    diff.run()
    assert set(diff.metrics) >= {"B", "F", "com:BF4", "box_length_A"}
    m = diff.metrics["com:BF4"]
    # rigid molecules: the COM and the B atom (at the COM) diffuse identically
    assert m["D_A2_per_ns"] == pytest.approx(diff.metrics["B"]["D_A2_per_ns"], rel=1e-6)
    assert m["D_yeh_hummer_A2_per_ns"] > m["D_A2_per_ns"]
    assert "com:BF4" in pd.read_csv(diff.msd_file).columns

    dens = nodes.Density(data=types.SimpleNamespace(traj_file="npt.h5"), temperature=298.15)
    dens.run()
    dens.save()
    mass = npt[0].get_masses().sum()
    expected = np.mean([mass / a.get_volume() * 1.66053906660 for a in npt])
    assert dens.metrics["density_g_cm3"] == pytest.approx(expected, rel=1e-8)
    assert dens.metrics["experimental_g_cm3"] == pytest.approx(1.2012, abs=1e-3)
    assert len(pd.read_csv(dens.nwd / "density.csv")) == len(npt)


def test_box_size_and_arrhenius_nodes(workdir):
    def fake(name, L, T, D):
        return types.SimpleNamespace(
            name=name,
            metrics={
                "box_length_A": L,
                "temperature_K": T,
                "B": {"D_A2_per_ns": D, "D_sem_A2_per_ns": 1.0},
            },
        )

    ext = nodes.BoxSizeExtrapolation(
        diffusions=[
            fake("a", 16.0, 353.0, 80.0),
            fake("b", 20.0, 353.0, 84.0),
            fake("c", 25.0, 353.0, 87.2),
        ],
        groups=["B"],
    )
    ext.run()
    # D(L) = D_inf - c/L exactly through the three points? fit by hand and compare
    inv_L = 1.0 / np.array([16.0, 20.0, 25.0])
    slope, intercept = np.polyfit(inv_L, [80.0, 84.0, 87.2], 1)
    assert ext.metrics["B"]["D_A2_per_ns"] == pytest.approx(intercept, rel=1e-6)
    assert ext.metrics["B"]["viscosity_mPa_s"] > 0 and ext.metrics["temperature_K"] == 353.0
    assert (ext.figures / "extrapolation_B.png").stat().st_size > 1000
    # D falling with L: the line crosses zero at 1/L -> 0; not a diffusion coefficient -> NaN
    broken = nodes.BoxSizeExtrapolation(diffusions=[fake("a", 16.0, 353.0, 90.0), fake("b", 20.0, 353.0, 40.0),
                                                    fake("c", 25.0, 353.0, 10.0)], groups=["B"], name="broken")
    broken.run()
    assert np.isnan(broken.metrics["B"]["D_A2_per_ns"]) and broken.metrics["B"]["D_intercept_A2_per_ns"] < 0
    # a run that broke or never started (Diffusion's placeholder: NaN, no box length) is left out
    stopped = types.SimpleNamespace(name="stopped", metrics={"box_length_A": None, "temperature_K": 353.0,
                                                             "B": {"D_A2_per_ns": np.nan, "D_sem_A2_per_ns": np.nan}})
    two = nodes.BoxSizeExtrapolation(diffusions=[fake("a", 16.0, 353.0, 80.0), stopped, fake("c", 25.0, 353.0, 87.2)],
                                     groups=["B"], name="two")
    two.run()
    _, intercept_two = np.polyfit(1.0 / np.array([16.0, 25.0]), [80.0, 87.2], 1)
    assert two.metrics["B"]["D_A2_per_ns"] == pytest.approx(intercept_two, rel=1e-9)
    one = nodes.BoxSizeExtrapolation(diffusions=[fake("a", 16.0, 353.0, 80.0), stopped], groups=["B"], name="one")
    one.run()
    assert np.isnan(one.metrics["B"]["D_A2_per_ns"]) and one.metrics["B"]["D_finite_A2_per_ns"] == [80.0]
    with pytest.raises(ValueError, match="at least 2 box sizes"):
        nodes.BoxSizeExtrapolation(diffusions=[fake("a", 16.0, 353.0, 80.0)], groups=["B"]).run()
    arr = nodes.ArrheniusPlot(
        diffusions=[
            fake("a", 16.0, 283.0, 5.0),
            fake("b", 16.0, 313.0, 25.0),
            fake("c", 16.0, 353.0, 100.0),
        ],
        groups=["B"],
        experimental={"B": "BF4-"},
    )
    arr.run()
    assert 20.0 < arr.metrics["B"]["Ea_kJ_mol"] < 60.0
    assert arr.figure.stat().st_size > 1000
    # extrapolated values plot the same way: the Arrhenius node reads the D_inf of each T
    cold = nodes.BoxSizeExtrapolation(
        diffusions=[
            fake("d", 16.0, 313.0, 30.0),
            fake("e", 20.0, 313.0, 32.0),
            fake("f", 25.0, 313.0, 33.5),
        ],
        groups=["B"],
        name="cold",
    )
    cold.run()
    _, intercept_cold = np.polyfit(inv_L, [30.0, 32.0, 33.5], 1)
    arr_inf = nodes.ArrheniusPlot(diffusions=[cold, ext], groups=["B"], name="inf")
    arr_inf.run()
    table = pd.read_csv(arr_inf.data_file)
    np.testing.assert_allclose(table["T_K"], [313.0, 353.0])
    np.testing.assert_allclose(table["D_A2_per_ns"], [intercept_cold, intercept], rtol=1e-9)
    # two points: the line goes through both, Ea = R ln(D2/D1) / (1/T1 - 1/T2)
    ea = 8.314462618e-3 * np.log(intercept / intercept_cold) / (1 / 313.0 - 1 / 353.0)
    assert arr_inf.metrics["B"]["Ea_kJ_mol"] == pytest.approx(ea, rel=1e-6)


def test_arrhenius_node_refuses_a_single_temperature(workdir):
    def fake(name, T, D):
        return types.SimpleNamespace(
            name=name, metrics={"temperature_K": T, "B": {"D_A2_per_ns": D, "D_sem_A2_per_ns": 1.0}}
        )

    # the same temperature twice (e.g. one extrapolation connected twice) gives no line to fit
    arr = nodes.ArrheniusPlot(diffusions=[fake("a", 353.0, 80.0), fake("b", 353.0, 84.0)], groups=["B"])
    with pytest.raises(ValueError, match=r"at least two distinct temperatures, got 353, 353 K"):
        arr.run()


def test_dihedrals_node(workdir):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCCCN1C=C[N+](=C1)C"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    base = ase.Atoms(
        [a.GetSymbol() for a in mol.GetAtoms()],
        positions=mol.GetConformer().GetPositions(),
        cell=[20.0] * 3,
        pbc=True,
    )
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(40):
        a = base.copy()
        a.positions += rng.normal(scale=0.02, size=a.positions.shape)
        frames.append(a)
    node = nodes.Dihedrals(
        data=types.SimpleNamespace(frames=frames),
        timestep_fs=10.0,
        windows_ps=[[0.0, 0.2], [0.0, 0.4]],
    )
    node.run()
    assert node.metrics["C1-C2-C3-C4"] == [20, 40]
    assert set(pd.read_csv(node.hist_file)["dihedral"]) == {
        "C2-N1-C1-C2'",
        "N1-C1-C2-C3",
        "C1-C2-C3-C4",
    }

    # a trajectory whose first frame has a broken chain: the topology frame still finds it
    broken = [a.copy() for a in frames]
    broken[0].positions[3] += [6.0, 0.0, 0.0]  # C4 of the butyl chain far away in frame 0
    with pytest.raises(ValueError):
        nodes.Dihedrals(data=types.SimpleNamespace(frames=broken), timestep_fs=10.0, name="nochain").run()
    fixed = nodes.Dihedrals(data=types.SimpleNamespace(frames=broken), topology=[base], timestep_fs=10.0,
                            windows_ps=[[0.0, 0.2], [0.0, 0.4]], name="withtopology")
    fixed.run()
    assert fixed.metrics["C1-C2-C3-C4"] == [20, 40]
    with pytest.raises(ValueError, match="topology: 3 atoms"):
        nodes.Dihedrals(data=types.SimpleNamespace(frames=frames), topology=[base[:3]], timestep_fs=10.0,
                        name="mismatch").run()


def test_prediction_metrics_node(workdir):
    rng = np.random.default_rng(0)
    ref = []
    for _ in range(4):
        grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)]) * 3.7
        a = ase.Atoms(
            "Ar8", positions=grid + rng.normal(scale=0.15, size=(8, 3)), cell=[7.4] * 3, pbc=True
        )
        a.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=6.0)
        res = {k: a.calc.get_property(k, a) for k in ("energy", "forces", "stress")}
        a.calc = SinglePointCalculator(a, **res)
        ref.append(a)
    model = types.SimpleNamespace(
        get_calculator=lambda: LennardJones(sigma=3.4, epsilon=0.0110, rc=6.0)
    )
    node = nodes.PredictionMetrics(
        data=types.SimpleNamespace(frames=ref), model=model, decompose_forces=True
    )
    node.run()
    m = node.metrics
    assert m["energy"]["mae"] > 0 and m["forces"]["mae"] > 0 and "stress" in m
    # single atoms: all of the force is translational
    assert m["forces_decomposed"]["translational"]["mae"] == pytest.approx(m["forces"]["mae"])
    assert (node.figures / "forces.png").exists() and (node.figures / "stress.png").exists()


def test_exploration_node(workdir):
    runs = [
        types.SimpleNamespace(name=n, frames=bf4_liquid(60, seed=s))
        for n, s in (("md", 0), ("erbs", 1))
    ]
    model = types.SimpleNamespace(
        get_descriptor=lambda: lambda atoms: np.c_[atoms.positions, atoms.positions**2]
    )
    node = nodes.ExplorationMetrics(
        data=runs,
        model=model,
        timestep_fs=1.0,
        descriptor_stride=5,
        phi_atoms=[1, 0, 2, 3],
        psi_atoms=[6, 5, 7, 8],
    )
    node.run()
    m = node.metrics
    assert m["md"]["max_com_msd_A2"] > 0 and "pca_variance" in m["erbs"]
    assert 0 < m["md"]["phi_psi_coverage"] <= 1
    assert (node.figures / "pca.png").exists()

    # without a model: the model-free Gaussian moments in one common basis
    free = nodes.ExplorationMetrics(data=runs, timestep_fs=1.0, descriptor_stride=10, name="free")
    free.run()
    assert len(free.metrics["pca_explained_variance_ratio"]) == 2 and free.metrics["md"]["pca_variance"] > 0


class TrajSource(zntrack.Node):
    """Stand-in for an MD node that writes a trajectory file."""

    traj_file: pathlib.Path = zntrack.outs_path(zntrack.nwd / "traj.h5")

    def run(self) -> None:
        pass


def test_nodes_build_into_a_dvc_pipeline(workdir):
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)

    with zntrack.Project() as project:
        src = TrajSource()
        nodes.RDF(data=src, pairs=["B-B"])
        nodes.Diffusion(data=src, groups=["B", "com:BF4"], fit_window_ps=[1.0, 5.0])
        nodes.Density(data=src, n_blocks=6)
        nodes.Dihedrals(data=src, windows_ps=[[0.0, 10.0]])
    project.build()
    dvc = (workdir / "dvc.yaml").read_text()
    for name in ("RDF", "Diffusion", "Density", "Dihedrals"):
        assert f"{name}:" in dvc
    assert "rdf.csv" in dvc and "msd.png" in dvc
    assert "RDF_rdf" in dvc and "Density_density" in dvc  # dvc plots entries
    params = (workdir / "params.yaml").read_text()
    assert "fit_window_ps" in params and "com:BF4" in params
    json.loads((workdir / "zntrack.json").read_text())


def test_density_comparison_and_trend_nodes(workdir):
    def dens(name, T, rho):
        return types.SimpleNamespace(name=name, metrics={"temperature_K": T, "density_g_cm3": rho,
                                                         "ci95_g_cm3": 0.01, "experimental_g_cm3": 1.2})

    comp = nodes.DensityComparison(
        densities=[dens("a", 283.0, 1.10), dens("b", 353.0, 1.05), dens("c", 283.0, 1.19)],
        labels=["MLP", "MLP", "MLP+D3(20 Å)"],
    )
    comp.run()
    table = pd.read_csv(comp.table)
    assert len(table) == 3 and set(table["model"]) == {"MLP", "MLP+D3(20 Å)"}
    assert comp.metrics["MLP"]["283K"]["relative_error"] == pytest.approx((1.10 - 1.2) / 1.2)
    assert (comp.figures / "density_vs_T.png").stat().st_size > 1000
    assert (comp.figures / "density_283K.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="labels"):
        nodes.DensityComparison(densities=[dens("a", 283.0, 1.1)], labels=[], name="bad").run()

    def diff(name, D):
        return types.SimpleNamespace(name=name, metrics={"com:H2O": {"D_A2_per_ns": D, "D_sem_A2_per_ns": 5.0}})

    trend = nodes.ObservableTrend(
        nodes=[diff("md1", 300.0), diff("md2", 280.0), diff("erbs1", 250.0), diff("erbs2", 245.0)],
        key="com:H2O/D_A2_per_ns", error_key="com:H2O/D_sem_A2_per_ns", series=["md", "md", "erbs", "erbs"],
        steps=["AL1", "AL2", "AL1", "AL2"], reference=241.0,
    )
    trend.run()
    assert trend.metrics["md"]["AL2"] == 280.0
    assert trend.metrics["erbs"]["last_relative_error"] == pytest.approx(4.0 / 241.0)
    assert trend.figure.stat().st_size > 1000
    # the reference from ground-truth runs: one node, or the mean of independent runs
    trend.reference, trend.reference_node = None, diff("truth", 250.0)
    trend.run()
    assert trend.metrics["reference"] == 250.0
    trend.reference_node = [diff("truth", 250.0), diff("truth_2", 230.0)]
    trend.run()
    assert trend.metrics["reference"] == pytest.approx(240.0)
    assert trend.metrics["md"]["last_relative_error"] == pytest.approx(40.0 / 240.0)
    with pytest.raises(ValueError, match="not found"):
        nodes.ObservableTrend(nodes=[diff("x", 1.0)], key="com:H2O/nope", series=["a"], steps=["1"],
                              name="bad").run()


def test_experimental_density_extends_one_kelvin():
    from lotf.analysis.density import experimental_density, load_experimental_density

    table = load_experimental_density("bmim_bf4_density").sort_values("T_K")
    (t0, t1), (r0, r1) = table["T_K"].iloc[:2], table["density_g_cm3"].iloc[:2]
    assert experimental_density(283.0) == pytest.approx(r0 + (r1 - r0) / (t1 - t0) * (283.0 - t0))
    assert experimental_density(t0) == pytest.approx(r0)
    with pytest.raises(ValueError, match="outside the table range"):
        experimental_density(270.0)


def test_arrhenius_node_leaves_out_temperatures_without_a_positive_d(workdir):
    def fake(name, T, D):
        return types.SimpleNamespace(
            name=name, metrics={"temperature_K": T, "B": {"D_A2_per_ns": D, "D_sem_A2_per_ns": 1.0}}
        )

    # a run that broke (NaN) and an unphysical extrapolation (negative) are named, not fitted
    runs = [fake("a", 300.0, 40.0), fake("b", 330.0, float("nan")), fake("c", 360.0, 90.0), fake("d", 390.0, -5.0)]
    arr = nodes.ArrheniusPlot(diffusions=runs, groups=["B"])
    arr.run()
    assert arr.metrics["B"]["dropped_T_K"] == [330.0, 390.0]
    ea = 8.314462618e-3 * np.log(90.0 / 40.0) / (1 / 300.0 - 1 / 360.0)
    assert arr.metrics["B"]["Ea_kJ_mol"] == pytest.approx(ea, rel=1e-6)
    alone = nodes.ArrheniusPlot(diffusions=runs[1:3], groups=["B"], name="alone")
    alone.run()  # one usable temperature: nothing to fit, no error
    assert alone.metrics["B"] == {"dropped_T_K": [330.0]}
