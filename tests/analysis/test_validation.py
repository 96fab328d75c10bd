"""Ground-truth comparisons: RDF deviation, D ratio, temperature and stability of a run."""

import numpy as np
import pandas as pd
import pytest

from lotf.analysis.validation import compare_run, density_against_reference, rdf_max_abs_dev, rdf_noise_floor


def rdf_table(r, g):
    return pd.DataFrame({"O-O": g}, index=pd.Index(r, name="r"))


def test_rdf_deviation_on_the_reference_grid():
    r = np.linspace(0.05, 6.0, 120)
    ref = rdf_table(r, 1 + np.exp(-((r - 2.8) ** 2) / 0.02))
    shifted = rdf_table(r + 0.1, 1 + np.exp(-((r - 2.8) ** 2) / 0.02))  # the peak moves by 0.1 Å
    same = rdf_max_abs_dev(ref, ref, "O-O")
    assert same == 0.0
    moved = rdf_max_abs_dev(shifted, ref, "O-O")
    expected = np.max(np.abs(np.interp(r[r <= 6.0], r + 0.1, shifted["O-O"]) - ref["O-O"]))
    assert moved == pytest.approx(expected) and moved > 0.3
    # a coarser candidate grid is interpolated, not compared bin by bin
    broad = lambda x: 1 + np.exp(-((x - 2.8) ** 2) / 0.5)  # noqa: E731
    assert rdf_max_abs_dev(rdf_table(r[::3], broad(r[::3])), rdf_table(r, broad(r)), "O-O") < 0.01
    with pytest.raises(KeyError, match="candidate RDF has no pair H-H"):
        rdf_max_abs_dev(ref, ref, "H-H")


def _crystal(n_frames: int, seed: int, spacing: float = 2.5, n: int = 4, jitter: float = 0.25):
    """A thermal simple-cubic crystal: g(r) is 0 below 1.5 Å, so the noise sits on the peaks."""
    import ase

    rng = np.random.default_rng(seed)
    sites = spacing * np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return [ase.Atoms(f"O{len(sites)}", positions=sites + rng.normal(0, jitter, sites.shape), cell=[spacing * n] * 3,
                      pbc=True) for _ in range(n_frames)]


def test_rdf_noise_floor_is_the_run_against_itself():
    """Two identical halves have no floor; a thermal crystal's floor shrinks as the run grows (the
    counting noise, about 1/sqrt(frames)); a run whose halves differ in structure has a large one."""
    from lotf.analysis.rdf import compute_rdf

    grid = compute_rdf(_crystal(2, 0), 4.0, 40, [("O", "O")]).r
    twice = _crystal(10, 1)
    assert rdf_noise_floor(twice + twice, "O-O", grid) == 0.0
    short, long = rdf_noise_floor(_crystal(20, 2), "O-O", grid), rdf_noise_floor(_crystal(1280, 3), "O-O", grid)
    assert long < short / 2 and long < 0.3
    # second half: the same crystal hotter, its peaks lower and broader
    assert rdf_noise_floor(_crystal(20, 4) + _crystal(20, 5, jitter=0.5), "O-O", grid) > 3 * short
    with pytest.raises(ValueError, match="at least 4 frames"):
        rdf_noise_floor(_crystal(3, 6), "O-O", grid)


def test_compare_run_reports_ratio_temperature_and_stability():
    md = {"temperature_mean_K": 296.0, "steps_done": 30_000, "stopped": 1, "stop_reason": "bond_graph"}
    diffusion = {"com:H2O": {"D_A2_per_ns": 180.0}}
    r = np.linspace(0.05, 6.0, 60)
    table = rdf_table(r, np.ones_like(r))
    out = compare_run(md, diffusion, table, reference_D=240.0, reference_rdf=rdf_table(r, np.ones_like(r) * 1.1),
                      group="com:H2O", pair="O-O", target_temperature=300.0, timestep_fs=0.5)
    assert out["D_ratio"] == pytest.approx(0.75)
    assert out["T_dev_K"] == pytest.approx(-4.0)
    assert out["stable_ps"] == pytest.approx(15.0) and out["stop_reason"] == "bond_graph"
    assert out["rdf_max_abs_dev"] == pytest.approx(0.1)


def test_rdf_and_diffusion_nodes_record_a_run_that_left_no_frames(tmp_path, monkeypatch):
    import h5py

    from lotf.nodes.analysis import RDF, Diffusion

    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "frames.h5"
    h5py.File(empty, "w").close()  # what ProductionMD leaves when its first check stops it
    rdf = RDF(data=str(empty), pairs=["O-O"], name="rdf")
    rdf.run()
    assert rdf.metrics == {"n_frames": 0} and list(rdf.rdf.columns) == ["O-O"]
    diffusion = Diffusion(data=str(empty), groups=["com:H2O"], name="diffusion")
    diffusion.run()
    assert diffusion.metrics["n_frames"] == 0 and np.isnan(diffusion.metrics["com:H2O"]["D_A2_per_ns"])
    out = compare_run({"steps_done": 20, "stopped": 1, "stop_reason": "bond_graph"}, diffusion.metrics, rdf.rdf,
                      reference_D=240.0, reference_rdf=rdf_table(np.linspace(0.1, 5, 50), np.ones(50)),
                      group="com:H2O", pair="O-O", target_temperature=300.0, timestep_fs=0.5)
    assert np.isnan(out["D_ratio"]) and out["stable_ps"] == pytest.approx(0.01)


def test_diffusion_of_a_run_that_stopped_early_is_recorded_not_an_error(tmp_path, monkeypatch):
    from lotf.analysis.io import write_h5md_like_znh5md
    from lotf.nodes.analysis import Diffusion

    monkeypatch.chdir(tmp_path)
    # 14 frames 20 fs apart (a run that broke a molecule early): far too short for a 0.9 ps lag
    rng = np.random.default_rng(0)
    water = np.array([[0, 0, 0], [0.96, 0, 0], [0, 0.96, 0]]) + 4.0
    positions = water[None] + np.cumsum(rng.normal(scale=0.05, size=(14, 1, 3)), axis=0)
    cells = np.repeat(9.0 * np.eye(3)[None], 14, axis=0)
    path = write_h5md_like_znh5md(tmp_path / "short.h5", np.array([8, 1, 1]), 14, iter([(positions, cells)]),
                                  timestep_fs=20.0)
    short = Diffusion(data=str(path), groups=["com:H2O"], max_lag_ps=0.9, n_blocks=5, name="short")
    short.run()
    assert short.metrics["n_frames"] == 14 and np.isnan(short.metrics["com:H2O"]["D_A2_per_ns"])
    fits = Diffusion(data=str(path), groups=["com:H2O"], max_lag_ps=0.2, n_blocks=1, name="fits")
    fits.run()
    assert np.isfinite(fits.metrics["com:H2O"]["D_A2_per_ns"])


def test_density_against_the_reference_npt():
    out = density_against_reference([{"density_g_cm3": 1.26, "sem_g_cm3": 0.01}], [{"density_g_cm3": 1.20}])
    assert out["density_g_cm3"] == 1.26 and out["density_rel_err"] == pytest.approx(0.05)
    assert out["sem_g_cm3"] == 0.01 and out["n_runs"] == 1  # one run: its own blocking error
    # a broken run's Density reports NaN: so does the comparison, and NaN fails any tolerance
    broken = density_against_reference([{"density_g_cm3": float("nan")}], [{"density_g_cm3": 1.20}])
    assert np.isnan(broken["density_rel_err"]) and not abs(broken["density_rel_err"]) <= 0.05


def test_density_of_independent_runs_is_their_mean_with_its_standard_error():
    """Several NPT runs per potential: the means are compared, and the spread of the runs (not the
    blocking error of any one of them) sets the error, propagated through the ratio."""
    model = [{"density_g_cm3": x, "sem_g_cm3": 0.001} for x in (1.15, 1.02, 1.13)]
    reference = [{"density_g_cm3": x} for x in (1.156, 1.181)]
    out = density_against_reference(model, reference)
    mean, ref = np.mean([1.15, 1.02, 1.13]), np.mean([1.156, 1.181])
    sem, ref_sem = np.std([1.15, 1.02, 1.13], ddof=1) / np.sqrt(3), np.std([1.156, 1.181], ddof=1) / np.sqrt(2)
    assert out["runs_g_cm3"] == [1.15, 1.02, 1.13] and out["n_runs"] == 3
    assert out["density_g_cm3"] == pytest.approx(mean) and out["sem_g_cm3"] == pytest.approx(sem)
    assert out["density_rel_err"] == pytest.approx(mean / ref - 1)
    # independent errors of numerator and denominator, against a numerical propagation
    eps = 1e-7
    d_num = ((mean + eps) / ref - mean / ref) / eps
    d_den = (mean / (ref + eps) - mean / ref) / eps
    assert out["density_rel_err_sem"] == pytest.approx(np.hypot(d_num * sem, d_den * ref_sem), rel=1e-5)
    # one broken run of three: the potential failed, the mean is NaN
    model[1]["density_g_cm3"] = float("nan")
    assert np.isnan(density_against_reference(model, reference)["density_g_cm3"])


def test_reference_comparison_node_reports_the_reference_noise_floor(tmp_path, monkeypatch):
    """The node puts each model beside the reference and states what the RDF deviation can resolve:
    the reference run's halves against each other on the reference RDF's own grid."""
    import types

    from lotf.analysis.rdf import compute_rdf
    from lotf.nodes.validation import ReferenceComparison

    monkeypatch.chdir(tmp_path)
    reference_frames, model_frames = _crystal(40, 7), _crystal(20, 8, jitter=0.5)

    def rdf_node(frames):
        result = compute_rdf(frames, 4.0, 40, [("O", "O")], total=False)
        return types.SimpleNamespace(rdf=result.to_dataframe().set_index("r"))

    node = ReferenceComparison(
        names=["AL1"], runs=[types.SimpleNamespace(metrics={"temperature_mean_K": 303.0, "steps_done": 2000})],
        rdfs=[rdf_node(model_frames)], diffusions=[types.SimpleNamespace(metrics={"O": {"D_A2_per_ns": 100.0}})],
        reference_run=types.SimpleNamespace(frames=reference_frames, metrics={"temperature_mean_K": 301.0}),
        reference_rdf=rdf_node(reference_frames),
        reference_diffusion=types.SimpleNamespace(metrics={"O": {"D_A2_per_ns": 200.0}}),
        group="O", pair="O-O", temperature=300.0, timestep=0.5, name="Comparison")
    node.run()
    grid = node.reference_rdf.rdf.index.to_numpy()
    floor = node.metrics["reference"]["rdf_noise_floor"]
    assert floor == pytest.approx(rdf_noise_floor(reference_frames, "O-O", grid)) and floor > 0
    model = node.metrics["models"]["AL1"]
    assert model["D_ratio"] == pytest.approx(0.5) and model["T_dev_K"] == pytest.approx(3.0)
    assert model["rdf_max_abs_dev"] > 2 * floor  # a hotter crystal is resolved above the floor
    assert "D_runs_A2_per_ns" not in node.metrics["reference"]  # one reference run: no spread to report
    # independent reference runs: D_ref is their mean, its standard error from their spread
    node.reference_diffusion = [types.SimpleNamespace(metrics={"O": {"D_A2_per_ns": d}}) for d in (180.0, 200.0, 250.0)]
    node.run()
    assert node.metrics["reference"]["D_A2_per_ns"] == pytest.approx(210.0)
    assert node.metrics["reference"]["D_runs_A2_per_ns"] == [180.0, 200.0, 250.0]
    assert node.metrics["reference"]["D_sem_A2_per_ns"] == pytest.approx(np.std([180, 200, 250], ddof=1) / np.sqrt(3))
    assert node.metrics["models"]["AL1"]["D_ratio"] == pytest.approx(100.0 / 210.0)
    node.reference_run = types.SimpleNamespace(frames=reference_frames[:3], metrics={"temperature_mean_K": 301.0})
    node.run()  # a reference of three frames has no halves: no floor, the comparison still stands
    assert node.metrics["reference"]["rdf_noise_floor"] is None
    assert node.metrics["models"]["AL1"]["D_ratio"] == pytest.approx(100.0 / 210.0)


def test_reference_density_node_groups_a_models_runs(tmp_path, monkeypatch):
    """Runs named by the same model are that model's independent runs: one mean per model, against
    the mean of the reference's runs (one node or several)."""
    import types

    from lotf.nodes.validation import ReferenceDensity

    monkeypatch.chdir(tmp_path)

    def density(rho):
        return types.SimpleNamespace(metrics={"density_g_cm3": rho, "sem_g_cm3": 0.002})

    node = ReferenceDensity(names=["DFT", "DFT", "other"], densities=[density(1.10), density(1.14), density(1.30)],
                            reference=[density(1.16), density(1.18)], name="Densities")
    node.run()
    assert node.metrics["reference"]["density_g_cm3"] == pytest.approx(1.17)
    dft, other = node.metrics["models"]["DFT"], node.metrics["models"]["other"]
    assert dft["runs_g_cm3"] == [1.10, 1.14] and dft["density_rel_err"] == pytest.approx(1.12 / 1.17 - 1)
    assert other["n_runs"] == 1 and other["sem_g_cm3"] == 0.002
    node.reference = density(1.20)  # a single reference node, as before
    node.run()
    assert node.metrics["models"]["DFT"]["density_rel_err"] == pytest.approx(1.12 / 1.20 - 1)
    node.names = ["DFT"]
    with pytest.raises(ValueError, match="one entry per run"):
        node.run()
