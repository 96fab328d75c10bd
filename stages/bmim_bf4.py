"""BMIM-BF4 learning-on-the-fly campaign (seed 1, Table 1; reference notes §3.3).

Graph: GROMACS OPLS-AA seed -> CP2K B97-3c labels -> outlier filter -> test/validation/train
splits -> classical model -> ML0 (MaxDist from the labelled seed pool) -> ML1..ML15 from the
iteration table (NVT, temperature and density modifiers, conformer packing, rigid volume scan,
NPT) -> final models on DFT, DFT+D3(8 Å), DFT+D3(20 Å) -> production (seed 1 "Production
simulations"): boxes packed at 0.9 g/cm³, FIRE, compressed to the experimental density;
NVT (Nosé-Hoover chain) at 283-353 K for 8/16/32 pairs with MLP(D3(8 Å)) -> RDF, diffusion,
box-size extrapolation, Arrhenius plot, butyl dihedrals; NPT densities of 10 pairs with the
trained and the hybrid MLP+D3 models -> density comparison (Fig. 7).
"""

from __future__ import annotations

import zntrack

from lotf.analysis.density import experimental_density
from lotf.nodes import CP2KLabel, MaxDistSelection, RandomSelection, TrainModel
from lotf.nodes.analysis import (RDF, ArrheniusPlot, BoxSizeExtrapolation, Density, DensityComparison, Diffusion,
                                 Dihedrals, ExplorationMetrics, PredictionMetrics)
from lotf.nodes.d3 import RecomputeD3
from lotf.nodes.frames import FilterOutliers, MergeFrames
from lotf.nodes.production import ProductionMD
from lotf.nodes.sampling import GeometryOptimisation, MDSampling
from lotf.nodes.seed import GromacsSeed, PackBox, SmilesConformers, VolumeScan
from stages.common import CampaignState, check_profile, check_row, labeller, learning_step, report

NAME = "bmim_bf4"
GROUP = "bmim-bf4"  # ZnTrack joins group names with "_", so the group avoids it
BMIM, BF4 = "CCCCn1cc[n+](C)c1", "F[B-](F)(F)F"
UNCERTAINTY_STOP = [{"kind": "forces_uncertainty", "max_value": 0.5}]  # eq. 8, 0.5 eV/Å
PRODUCTION_MODEL = "DFT-D3-8"  # seed 1: RDFs and diffusion with MLP(D3(8 Å))
# density models of seed 1 Fig. 7: label -> (final model, D3 added at run time)
DENSITY_MODELS = {
    "MLP": ("DFT", {}),
    "MLP(D3(8 Å))": ("DFT-D3-8", {}),
    "MLP(D3(20 Å))": ("DFT-D3-20", {}),
    "MLP+D3(8 Å)": ("DFT", {"functional": "b97-3c", "cutoff": 8.0}),
    "MLP+D3(20 Å)": ("DFT", {"functional": "b97-3c", "cutoff": 20.0}),
}
DIFFUSION_GROUPS = ["H", "B", "com:BF4", "com:C8H15N2"]  # seed 1 Fig. 6: H and B atoms; ion centres of mass
EXPERIMENT_SPECIES = {"B": "BF4-", "com:BF4": "BF4-", "H": "BMIM+", "com:C8H15N2": "BMIM+"}  # NMR: 11B/19F, 1H


def _nvt(steps: int, rate: int, **extra) -> dict:
    return {"method": "md", "ensemble": "nvt", "thermostat": "langevin", "temperature": 298.15, "timestep": 0.5,
            "steps": steps, "sampling_rate": rate, "checks": UNCERTAINTY_STOP, "on_trigger": "stop", **extra}


def _npt(steps: int, rate: int, **extra) -> dict:
    # 1 atm; seed 1 used Parrinello-Rahman-like ASE NPT, here stochastic cell rescaling
    return {"method": "md", "ensemble": "npt", "thermostat": "langevin", "temperature": 300.0, "timestep": 1.0,
            "barostat": {"pressure": 1.01325}, "steps": steps, "sampling_rate": rate, "checks": UNCERTAINTY_STOP,
            "on_trigger": "stop", **extra}


def temperature_ramp(start, end, amplitude, n_oscillations) -> dict:
    """Seed-1 eq. 9 for T (Table 1 ranges)."""
    return {"kind": "temperature", "T_start": start, "T_end": end, "T_amp": amplitude, "n_oscillations": n_oscillations}


def density_ramp(start, end, amplitude, n_oscillations) -> dict:
    """Seed-1 eq. 9 for the density (box scaled isotropically)."""
    return {"kind": "density", "rho_start": start, "rho_end": end, "rho_amp": amplitude,
            "n_oscillations": n_oscillations}


def _stage_name(label: str) -> str:
    """DVC stage names allow no punctuation but '-' and '_': 0.5 -> 0p5."""
    return label.replace(".", "p")


def exploration_runs(udd_heights, udd_widths, erbs_barriers, erbs_bandwidths, erbs_components,
                     interval: int = 10_000) -> dict[str, dict]:
    """Seed 2 §3.3: plain MD, UDD on an A x B grid and ERBS scanned one parameter at a time
    around ΔE 1.5 eV/atom, σ 2.0, k 2 (kernels every ``interval`` steps, 5 ps at 0.5 fs)."""
    runs: dict[str, dict] = {"MD": {"method": "md"}}
    for a in udd_heights:
        for b in udd_widths:
            runs[_stage_name(f"UDD-A{a:g}-B{b:g}")] = {"method": "udd", "bias": {"height": a, "width": b, "per_atom": True}}
    base = {"barrier": 1.5, "bandwidth": 2.0, "n_components": 2}
    scans = [("barrier", "dE", erbs_barriers), ("bandwidth", "sigma", erbs_bandwidths),
             ("n_components", "k", erbs_components)]
    for key, short, values in scans:
        for value in values:
            bias = {**base, key: value, "per_atom": True, "interval": interval}
            name = f"ERBS-dE{bias['barrier']:g}-sigma{bias['bandwidth']:g}-k{bias['n_components']}"
            runs[_stage_name(name)] = {"method": "erbs", "bias": bias}
    return runs


def iterations(steps: int, npt_steps: int, long_steps: int, rate: int, n: int) -> list[dict]:
    """Seed 1 Table 1 as rows; ``n`` scales the number of new points (50 in the paper)."""
    t_mod = temperature_ramp(230.0, 500.0, 150.0, 10)
    rho_mod = density_ramp(1.210, 1.210, 0.254, 3)  # oscillates over ~0.96-1.46 g/cm³ (Table 1: 0.992-1.499)
    rows = [{"name": f"ML{k}", "start": "seed" if k == 1 else "previous", "sampling": _nvt(steps, rate),
             "geo_opt": True, "n_select": n} for k in range(1, 5)]
    rows += [{"name": f"ML{k}", "start": "previous", "sampling": _nvt(steps, rate, modifiers=[t_mod]),
              "geo_opt": True, "n_select": n} for k in range(5, 8)]
    rows += [{"name": f"ML{k}", "start": "previous", "sampling": _nvt(steps, rate, modifiers=[rho_mod]),
              "geo_opt": True, "n_select": n} for k in range(8, 11)]
    rows += [{"name": "ML12", "start": "previous", "sampling": _nvt(steps, rate, modifiers=[rho_mod, t_mod]),
              "geo_opt": True, "n_select": n}]
    rows += [
        {"name": "ML13", "start": "volume_scan", "sampling": _npt(npt_steps, rate, temperature=300.0), "n_select": n},
        {"name": "ML14", "start": "volume_scan",
         "sampling": _npt(npt_steps, rate, modifiers=[temperature_ramp(300.0, 500.0, 150.0, 10)]), "n_select": n},
        {"name": "ML15", "start": "previous",
         "sampling": _npt(long_steps, 10 * rate, modifiers=[temperature_ramp(200.0, 300.0, 100.0, 10)]),
         "n_select": 2 * n},
    ]
    return rows


PROFILES = {
    "paper": dict(
        pairs=10, seed_steps=5_000_000, seed_interval=3600, cp2k="data/cp2k/b97-3c.yaml",
        cp2k_nod3="data/cp2k/b97-3c-nod3.yaml", cp2k_run={"n_ranks": 1, "n_threads": 1}, n_test=500, n_val=100,
        n_train=100, n_ml0=400, model="models/bmim_initial.yaml", final="models/bmim_final.yaml", overrides={},
        rows=iterations(steps=50_000, npt_steps=100_000, long_steps=1_000_000, rate=10, n=50),
        n_conformers=200, n_boxes=20, vs_boxes=5, vs_points=100, vs_select=50,
        production=dict(
            temperatures=[283.0, 293.0, 313.0, 333.0, 353.0], sizes=[8, 16, 32], compress_steps=10_000,
            equilibration_steps=10_000, steps=40_000_000, rate=200, max_lag_ps=2000.0, fit_window_ps=[200.0, 2000.0],
            dihedral_windows_ps=[[0.0, 100.0], [0.0, 1000.0], [0.0, 20000.0]],
            npt_pairs=10, npt_temperatures=[283.0, 293.0, 313.0, 333.0, 353.0], npt_equilibration_steps=400_000,
            npt_steps=2_000_000, npt_rate=200, npt_models=list(DENSITY_MODELS), n_conformers=20, fire_steps=5000,
            diffusion_groups=DIFFUSION_GROUPS, thermostat="nose_hoover",
            rdf_temperatures=[283.0, 293.0, 313.0, 333.0, 353.0], arrhenius_per_size=True,
        ),
        exploration=dict(steps=200_000, rate=100, runs=exploration_runs(
            udd_heights=[0.1, 0.5, 1.0, 2.0, 5.0, 10.0], udd_widths=[0.1, 0.5, 1.0, 2.0],
            erbs_barriers=[0.1, 0.5, 1.5, 2.5], erbs_bandwidths=[0.5, 1.0, 2.0, 5.0], erbs_components=[1, 2, 3, 4])),
    ),
    "smoke": dict(
        pairs=4, seed_steps=2_000, seed_interval=200, cp2k="data/cp2k/test-xtb.yaml",
        cp2k_nod3="data/cp2k/test-xtb.yaml", cp2k_run={"n_ranks": 1, "n_threads": 1}, n_test=2, n_val=2,
        n_train=3, n_ml0=1, model="models/smoke.yaml", final="models/smoke.yaml", overrides={},
        rows=iterations(steps=100, npt_steps=100, long_steps=200, rate=10, n=2)[:1],
        n_conformers=2, n_boxes=1, vs_boxes=1, vs_points=4, vs_select=1,
        production=dict(
            temperatures=[313.0, 353.0], sizes=[4, 5], compress_steps=100, equilibration_steps=20, steps=200, rate=5,
            max_lag_ps=0.0175, fit_window_ps=[0.005, 0.0175], dihedral_windows_ps=[[0.0, 0.05], [0.0, 0.1]],
            npt_pairs=4, npt_temperatures=[353.0], npt_equilibration_steps=20, npt_steps=100, npt_rate=5,
            npt_models=["MLP+D3(20 Å)"], n_conformers=2, rdf_temperatures=[353.0], arrhenius_per_size=False,
            # the smoke models are trained on a handful of structures: a long FIRE run or MD breaks
            # molecules, so the smoke run relaxes briefly, follows atoms, not ion centres of mass,
            # and holds the temperature with a strongly coupled Langevin thermostat
            fire_steps=10, diffusion_groups=["H", "B"], thermostat="langevin",
        ),
        exploration=dict(steps=100, rate=10, runs=exploration_runs(  # MD and one ERBS run (UDD: the unit tests)
            udd_heights=[], udd_widths=[], erbs_barriers=[1.5], erbs_bandwidths=[], erbs_components=[],
            interval=20)),
    ),
}


def build(project: zntrack.Project, profile: str) -> None:
    check_profile(NAME, profile, PROFILES)
    p = PROFILES[profile]
    for row in p["rows"]:
        check_row(NAME, row)
    label_kw = dict(settings=p["cp2k"], **p["cp2k_run"])

    with project.group(GROUP, "classical"):
        seed = GromacsSeed(species={"bmim": p["pairs"], "bf4": p["pairs"]}, density=1.210, temperature=500.0,
                           n_steps=p["seed_steps"], timestep=1.0, interval=p["seed_interval"], seed=42)
        labelled = CP2KLabel(data=seed.frames, **label_kw)
        clean = FilterOutliers(data=labelled.frames, threshold=3.0)
        test = RandomSelection(data=clean.frames, n_configurations=p["n_test"], seed=1234, name="TestSet")
        val = RandomSelection(data=test.excluded_frames, n_configurations=p["n_val"], seed=1234, name="ValidationSet")
        train = RandomSelection(data=val.excluded_frames, n_configurations=p["n_train"], seed=1234, name="TrainSet")
        model = TrainModel(data=train.frames, validation_data=val.frames, config=p["model"], overrides=p["overrides"])
        classical = model

    with project.group(GROUP, "ML0"):  # MaxDist from the already-labelled classical pool
        pick = MaxDistSelection(data=train.excluded_frames, train_data=train.frames, model=model,
                                n_configurations=p["n_ml0"])
        train_set = MergeFrames(data=[train.frames, pick.frames], name="TrainingSet")
        model = TrainModel(data=train_set.frames, validation_data=val.frames, config=p["model"],
                           overrides=p["overrides"], init_from=model)
    state = CampaignState(model=model, train=train_set, validation=val, last_structure=seed)
    state.log.append(("classical", classical, None, None))
    state.record("ML0")

    volume_scan = None
    for k, row in enumerate(p["rows"]):
        with project.group(GROUP, row["name"]):
            if row["start"] == "volume_scan" and volume_scan is None:
                volume_scan = _conformers_and_volume_scan(p, state, label_kw)
                state.train, state.model = volume_scan["train"], volume_scan["model"]
                state.record("ML11+VS")
            start = {"seed": seed, "previous": state.last_structure}.get(row["start"])
            if start is None:
                start = volume_scan["start"]
            state = learning_step(row, state, start=start, label=labeller({"cp2k": p["cp2k"], **p["cp2k_run"]}),
                                  model_config=p["model"], model_overrides=p["overrides"], seed=k)

    finals = _final_models(project, p, state)
    with project.group(GROUP, "report"):
        report(state, test)
    _production(project, p["production"], finals)
    _exploration(project, p["exploration"], state.model, seed)


def _conformers_and_volume_scan(p: dict, state: CampaignState, label_kw: dict) -> dict:
    """ML11 (conformers packed at 0.900 g/cm³, all labelled) and VS (rigid volume scans 0.151-1.661)."""
    cation = SmilesConformers(smiles=BMIM, n_conformers=p["n_conformers"], seed=42, name="BMIM")
    anion = SmilesConformers(smiles=BF4, n_conformers=p["n_conformers"], seed=42, name="BF4")
    boxes = PackBox(data=[cation.frames, anion.frames], count=[p["pairs"], p["pairs"]], density=0.900,
                    n_configurations=p["n_boxes"], seed=42)
    box_labels = CP2KLabel(data=boxes.frames, name="PackedLabel", **label_kw)
    relaxed = GeometryOptimisation(model=state.model, data=boxes.frames, data_id=0)
    scan = VolumeScan(data=relaxed.frames, data_ids=[-1], start=0.151, stop=1.661, num=p["vs_points"])
    pick = RandomSelection(data=scan.frames, n_configurations=p["vs_select"], seed=42, name="ScanPick")
    scan_labels = CP2KLabel(data=pick.frames, name="ScanLabel", **label_kw)
    train = MergeFrames(data=[state.train.frames, box_labels.frames, scan_labels.frames], name="VSTrainingSet")
    model = TrainModel(data=train.frames, validation_data=state.validation.frames, config=p["model"],
                       overrides=p["overrides"], init_from=state.model, name="VSModel")
    return {"train": train, "model": model, "start": relaxed}


def _final_models(project: zntrack.Project, p: dict, state: CampaignState) -> dict[str, TrainModel]:
    """Final models on DFT, DFT+D3(8 Å) and DFT+D3(20 Å), r_max 6.0 Å (seed 1).

    As in the published campaign, the D3-free labels are recomputed by CP2K without D3 (taking
    CP2K's three-body D3 out analytically is intractable in the condensed phase), and D3(BJ)
    two-body is then added in JAX at 8 and 20 Å.
    """
    with project.group(GROUP, "final"):
        no_d3 = {name: CP2KLabel(data=data.frames, settings=p["cp2k_nod3"], name=f"{name}DFT", **p["cp2k_run"])
                 for name, data in (("Train", state.train), ("Validation", state.validation))}
        models = {}
        for label, cutoff in (("DFT", None), ("DFT-D3-8", 8.0), ("DFT-D3-20", 20.0)):
            if cutoff is None:
                train, val = no_d3["Train"], no_d3["Validation"]
            else:
                train = RecomputeD3(data=no_d3["Train"].frames, mode="add", cutoff=cutoff, name=f"Train{label}")
                val = RecomputeD3(data=no_d3["Validation"].frames, mode="add", cutoff=cutoff, name=f"Validation{label}")
            models[label] = TrainModel(data=train.frames, validation_data=val.frames, config=p["final"],
                                       name=f"Model{label}")
            # seed 1 Fig. 1 (parity plots) and seed 2 §3.3 (translational/rotational/vibrational forces)
            PredictionMetrics(data=val.frames, model=models[label], decompose_forces=True, name=f"Metrics{label}")
    return models


def _production(project: zntrack.Project, q: dict, models: dict[str, TrainModel]) -> None:
    """Seed 1 "Production simulations": NVT for RDFs, diffusion and dihedrals; NPT for densities."""
    model = models[PRODUCTION_MODEL]
    run = dict(timestep=0.5, thermostat=q["thermostat"], compress_steps=q["compress_steps"])
    with project.group(GROUP, "production"):
        cation = SmilesConformers(smiles=BMIM, n_conformers=q["n_conformers"], seed=7, name="BMIM")
        anion = SmilesConformers(smiles=BF4, n_conformers=q["n_conformers"], seed=7, name="BF4")

    packed: dict[int, PackBox] = {}
    boxes: dict[int, GeometryOptimisation] = {}

    def relaxed_box(pairs: int) -> GeometryOptimisation:
        if pairs not in boxes:  # NVT and NPT runs of one size share their start structure
            packed[pairs] = PackBox(data=[cation.frames, anion.frames], count=[pairs, pairs], density=0.900,
                                    n_configurations=1, seed=pairs, name=f"Box{pairs}")
            boxes[pairs] = GeometryOptimisation(model=model, data=packed[pairs].frames, data_id=0,
                                                max_steps=q["fire_steps"], name=f"Relaxed{pairs}")
        return boxes[pairs]

    groups = q["diffusion_groups"]
    diffusion_by_T: dict[float, list] = {T: [] for T in q["temperatures"]}
    for pairs in q["sizes"]:
        with project.group(GROUP, "production", f"nvt-{pairs}"):
            start = relaxed_box(pairs)
            for T in q["temperatures"]:
                md = ProductionMD(data=start.frames, model=model, temperature=T, density=experimental_density(T),
                                  equilibration_steps=q["equilibration_steps"], steps=q["steps"],
                                  sampling_rate=q["rate"], seed=int(T), name=f"NVT{T:.0f}K", **run)
                if T in q["rdf_temperatures"]:
                    RDF(data=md, name=f"RDF{T:.0f}K")
                diffusion_by_T[T].append(Diffusion(
                    data=md, groups=groups, temperature=T, max_lag_ps=q["max_lag_ps"],
                    fit_window_ps=q["fit_window_ps"], n_blocks=5, name=f"Diffusion{T:.0f}K"))
                if pairs == q["sizes"][1] and T == q["temperatures"][-1]:  # seed 1 Fig. 5: one butyl chain
                    Dihedrals(data=md, topology=packed[pairs].frames, windows_ps=q["dihedral_windows_ps"], molecule=0,
                              name="ButylDihedrals")
    with project.group(GROUP, "production", "diffusion"):
        extrapolated = [BoxSizeExtrapolation(diffusions=nodes, groups=groups, temperature=T,
                                             name=f"BoxSize{T:.0f}K") for T, nodes in diffusion_by_T.items()]
        experiment = {g: s for g, s in EXPERIMENT_SPECIES.items() if g in groups}
        ArrheniusPlot(diffusions=extrapolated, groups=groups, experimental=experiment, name="Arrhenius")
        if q["arrhenius_per_size"]:  # the largest box without the finite-size correction
            ArrheniusPlot(diffusions=[nodes[-1] for nodes in diffusion_by_T.values()], groups=groups,
                          experimental=experiment, name=f"Arrhenius{q['sizes'][-1]}Pairs")

    densities, labels = [], []
    with project.group(GROUP, "production", "npt"):
        start = relaxed_box(q["npt_pairs"])
        for label in q["npt_models"]:
            final, d3 = DENSITY_MODELS[label]
            tag = label.replace(" ", "").replace("(", "").replace(")", "").replace("+", "-").replace("Å", "A")
            for T in q["npt_temperatures"]:
                md = ProductionMD(data=start.frames, model=models[final], d3=d3, temperature=T, ensemble="npt",
                                  barostat={"pressure": 1.01325}, density=experimental_density(T),
                                  equilibration_steps=q["npt_equilibration_steps"], steps=q["npt_steps"],
                                  sampling_rate=q["npt_rate"], seed=int(T), name=f"NPT{tag}{T:.0f}K", **run)
                densities.append(Density(data=md, temperature=T, name=f"Density{tag}{T:.0f}K"))
                labels.append(label)
        DensityComparison(densities=densities, labels=labels, name="Densities")


def _exploration(project: zntrack.Project, q: dict, model: TrainModel, seed) -> None:
    """Seed 2 §3.3: how far MD, UDD and ERBS move the BF4- centres of mass in 100 ps (Berendsen
    500 fs, 0.5 fs steps) from the last seed frame, with the last active-learning ensemble; the
    maximum COM MSD per run (Fig. 6) and the descriptor PCA in one basis (Fig. 7). A bond-graph
    check stops runs that break molecules."""
    common = {"ensemble": "nvt", "thermostat": "berendsen", "thermostat_params": {"tau": 500.0},
              "temperature": 300.0, "timestep": 0.5, "steps": q["steps"], "sampling_rate": q["rate"],
              "checks": [{"kind": "bond_graph"}], "on_trigger": "stop"}
    with project.group(GROUP, "exploration"):
        runs = [MDSampling(data=seed.frames, model=model, data_id=-1, seed=0, name=name, **common, **options)
                for name, options in q["runs"].items()]
        ExplorationMetrics(data=runs, names=list(q["runs"]), group="com:BF4", descriptor_stride=10, name="Metrics")
