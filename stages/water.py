"""Liquid-water active learning, plain MD vs ERBS (seed 2 §3.2).

Graph: 32 waters packed at 0.997 g/cm³ -> 200 bootstrapped structures -> B0 (10 train / 6
validation, random) -> B1 (+5 by MaxDist from the bootstrap pool) -> two 10-iteration workflows
that differ only in the bias: 25 ps at 0.5 fs, Berendsen 500 fs, safe sampling (reset on the
uncertainty threshold), 4 random validation and 10 MaxDist training points per iteration.
Production (seed 2 §3.2, Fig. 5b): with the model of every iteration, NVT of 256 waters at 300 K
(200 ps equilibration, 5 ns), centre-of-mass diffusion with the Yeh-Hummer correction, the O-O
RDF (Fig. S2), and D per iteration for both workflows against the experimental 241 Å²/ns.
The ``oracle`` profile labels with the SPC/Fw force field instead and compares the models' MD
with the force field's own MD (README "Ground truth").
"""

from __future__ import annotations

import zntrack

from lotf.nodes import CP2KLabel, MaxDistSelection, RandomSelection, TrainModel
from lotf.nodes.analysis import RDF, Diffusion, ObservableTrend
from lotf.nodes.frames import MergeFrames
from lotf.nodes.production import ProductionMD
from lotf.nodes.reference import ReferenceMD
from lotf.nodes.sampling import GeometryOptimisation
from lotf.nodes.seed import Bootstrap, PackBox, SmilesConformers
from lotf.nodes.validation import ReferenceComparison
from stages.common import CampaignState, check_profile, check_row, labeller, learning_step, report

NAME = "water"
GROUP = "water"
# Seed 2 states "a force uncertainty threshold of 3.0 meV/Å" with reset-and-continue (safe
# sampling). A 16-member ensemble's force spread is far above 3 meV/Å everywhere, so every
# check would fail and no frame would ever be accepted; we read it as 3.0 eV/Å.
SAFE_SAMPLING = [{"kind": "forces_uncertainty", "max_value": 3.0}]
TIMESTEP = 0.5
EXPERIMENTAL_D = 241.0  # Å²/ns at 300 K, as quoted by seed 2 (data/experimental/water_self_diffusion.csv)
VISCOSITY_300K = 0.854  # mPa s, for the Yeh-Hummer correction (same table)


def sampling(steps: int, rate: int, bias: str, erbs_interval_fs: float, checks=SAFE_SAMPLING,
             erbs_barrier: float = 0.5) -> dict:
    base = {"method": "md", "ensemble": "nvt", "thermostat": "berendsen", "thermostat_params": {"tau": 500.0},
            "temperature": 300.0, "timestep": TIMESTEP, "steps": steps, "sampling_rate": rate,
            "checks": checks, "on_trigger": "reset"}
    if bias == "erbs":  # a kernel every 5 ps, ΔE 0.5 eV/atom, bandwidth 1.0, 3 principal components
        base["method"] = "erbs"
        base["bias"] = {"interval": int(round(erbs_interval_fs / TIMESTEP)), "barrier": erbs_barrier, "per_atom": True,
                        "bandwidth": 1.0, "n_components": 3}
    return base


def iterations(bias: str, n_iter: int, steps: int, rate: int, n_val: int, n_train: int, erbs_interval_fs: float,
               checks=SAFE_SAMPLING, erbs_barrier: float = 0.5):
    return [{"name": f"AL{k}", "start": "bootstrap",
             "sampling": sampling(steps, rate, bias, erbs_interval_fs, checks, erbs_barrier),
             "n_select": n_train, "n_validation": n_val} for k in range(1, n_iter + 1)]


STARTS = ("bootstrap",)  # structure sources a row's "start" may name (checked at build time)

PROFILES = {
    "paper": dict(molecules=32, n_bootstrap=200, b0_train=10, b0_val=6, b1_train=5,
                  reference={"cp2k": "data/cp2k/revpbe0-d3-water.yaml", "n_ranks": 1, "n_threads": 1},
                  model="models/water_erbs.yaml", overrides={},
                  n_iter=10, steps=50_000, rate=10, n_val=4, n_train=10, erbs_interval_fs=5000.0,
                  production=dict(molecules=256, equilibration_steps=400_000, steps=10_000_000, rate=100,
                                  max_lag_ps=500.0, fit_window_ps=[50.0, 500.0], group="com:H2O", fire_steps=5000,
                                  thermostat="nose_hoover", rdf=True)),
    "smoke": dict(molecules=4, n_bootstrap=12, b0_train=3, b0_val=2, b1_train=1,
                  reference={"cp2k": "data/cp2k/test-xtb.yaml", "n_ranks": 1, "n_threads": 1},
                  model="models/smoke.yaml", overrides={"model": {"n_members": 4}}, n_iter=1, steps=100, rate=10,
                  n_val=1, n_train=1, erbs_interval_fs=10.0,
                  production=dict(molecules=8, equilibration_steps=20, steps=200, rate=5, max_lag_ps=0.0175,
                                  fit_window_ps=[0.005, 0.0175], group="O", fire_steps=10,
                                  # smoke models break molecules: follow O atoms, couple strongly
                                  thermostat="langevin", rdf=False)),
    # ground truth: labels and observables from the SPC/Fw force field in OpenMM (4.8 Å cutoff,
    # PME; the 32-water box needs no supercell), the same graph at reduced scale, plus the
    # reference's own MD (test set at 300 and 400 K; the truth run) and the comparison
    "oracle": dict(molecules=32, n_bootstrap=100, b0_train=20, b0_val=6, b1_train=10,
                   reference={"forcefield": "water", "cutoff": 4.8},
                   model="models/water_oracle.yaml", overrides={}, n_iter=2, steps=3000, rate=20, n_val=2,
                   # the paper's 0.5 eV/atom barrier with a kernel every 5 ps; our 1.5 ps runs deposit a
                   # kernel every 1 ps, so the barrier is scaled down (0.5 eV/atom tore the box apart)
                   n_train=10, erbs_interval_fs=1000.0, erbs_barrier=0.05,
                   checks=[{"kind": "forces_uncertainty", "max_value": 2.0}, {"kind": "bond_graph"}],
                   bootstrap={"translation": 0.25},
                   # the truth run: 30 ps (a 10 ps run of 32 waters read 290 K and D +-23 %)
                   truth=dict(steps=60_000, equilibration_steps=4000, interval=20, test_temperatures=[300.0, 400.0],
                              test_steps=4000, n_test=15, xtb_check=1),
                   production=dict(molecules=32, equilibration_steps=1000, steps=20_000, rate=20, max_lag_ps=1.5,
                                   fit_window_ps=[0.5, 1.5], group="com:H2O", thermostat="nose_hoover", rdf=True,
                                   first_and_last_only=True)),
}


def build(project: zntrack.Project, profile: str) -> None:
    check_profile(NAME, profile, PROFILES)
    p = PROFILES[profile]
    branches = {bias: iterations(bias, p["n_iter"], p["steps"], p["rate"], p["n_val"], p["n_train"],
                                 p["erbs_interval_fs"], p.get("checks", SAFE_SAMPLING), p.get("erbs_barrier", 0.5))
                for bias in ("md", "erbs")}
    for rows in branches.values():
        for row in rows:
            check_row(NAME, row, starts=STARTS)
    label = labeller(p["reference"])

    with project.group(GROUP, "bootstrap"):
        molecule = SmilesConformers(smiles="O", n_conformers=1, seed=42, name="Water")
        box = PackBox(data=[molecule.frames], count=[p["molecules"]], density=0.997, seed=42)
        if "truth" in p:  # oracle: bootstrap from the box equilibrated by the reference (a classical seed)
            box = ReferenceMD(data=box.frames, temperature=300.0, steps=p["truth"]["interval"],
                              equilibration_steps=p["truth"]["equilibration_steps"], interval=p["truth"]["interval"],
                              forcefield=p["reference"]["forcefield"], cutoff=p["reference"].get("cutoff"),
                              timestep=TIMESTEP, seed=7, name="Equilibrated")
        pool = Bootstrap(data=box.frames, n_configurations=p["n_bootstrap"], seed=0, **p.get("bootstrap", {}))
        train_pick = RandomSelection(data=pool.frames, n_configurations=p["b0_train"], seed=0, name="B0Train")
        val_pick = RandomSelection(data=train_pick.excluded_frames, n_configurations=p["b0_val"], seed=0,
                                   name="B0Validation")
        train = label(train_pick.frames, name="B0TrainLabel")
        val = label(val_pick.frames, name="B0ValidationLabel")
        model = TrainModel(data=train.frames, validation_data=val.frames, config=p["model"], overrides=p["overrides"],
                           name="B0Model")
        more = MaxDistSelection(data=val_pick.excluded_frames, train_data=train.frames, model=model,
                                n_configurations=p["b1_train"], name="B1Pick")
        more_labels = label(more.frames, name="B1Label")
        train_set = MergeFrames(data=[train.frames, more_labels.frames], name="B1TrainingSet")
        model = TrainModel(data=train_set.frames, validation_data=val.frames, config=p["model"],
                           overrides=p["overrides"], init_from=model, name="B1Model")

    # "bootstrap": every iteration starts from a bootstrapped structure the B0 model was trained on
    starts = {"bootstrap": train_pick}
    truth = _truth(project, p, box, label) if "truth" in p else None
    models: dict[str, list[tuple[str, TrainModel]]] = {}
    for bias, rows in branches.items():
        state = CampaignState(model=model, train=train_set, validation=val, last_structure=box)
        state.record("B1")
        for k, row in enumerate(rows):
            with project.group(GROUP, bias, row["name"]):
                state = learning_step(row, state, start=starts[row["start"]], label=label, model_config=p["model"],
                                      model_overrides=p["overrides"], seed=k)
        with project.group(GROUP, bias, "report"):
            # oracle: a test set from the reference's own MD; else the fixed bootstrap validation set
            report(state, truth["test"] if truth else val)
        models[bias] = [(name, m) for name, m, _, _ in state.log]
    if truth:
        _oracle_production(project, p["production"], truth, models)
    else:
        _production(project, p["production"], molecule, models)


def _truth(project: zntrack.Project, p: dict, box, label) -> dict:
    """The reference's own MD: a test set at several temperatures (never the campaign's data) and
    the 300 K truth run with its RDF and diffusion."""
    t, q, ff = p["truth"], p["production"], p["reference"]
    md = dict(forcefield=ff["forcefield"], cutoff=ff.get("cutoff"), timestep=TIMESTEP, interval=t["interval"])
    with project.group(GROUP, "reference"):
        picks = []
        for k, temperature in enumerate(t["test_temperatures"]):
            run = ReferenceMD(data=box.frames, temperature=temperature, steps=t["test_steps"],
                              equilibration_steps=t["equilibration_steps"], seed=100 + k, name=f"Test{temperature:.0f}K",
                              **md)
            picks.append(RandomSelection(data=run.frames, n_configurations=t["n_test"], seed=k,
                                         name=f"Test{temperature:.0f}KPick").frames)
        test = label(MergeFrames(data=picks, name="TestPool").frames, name="TestSet")
        if t.get("xtb_check"):  # keeps the DFT path exercised: real CP2K (GFN1-xTB) on a test structure
            xtb_pick = RandomSelection(data=test.frames, n_configurations=t["xtb_check"], seed=0, name="XTBPick")
            CP2KLabel(data=xtb_pick.frames, settings="data/cp2k/test-xtb.yaml", name="XTBCheck")
        truth = ReferenceMD(data=box.frames, temperature=300.0, steps=t["steps"],
                            equilibration_steps=t["equilibration_steps"], seed=0, name="NVT300K", **md)
        rdf = RDF(data=truth, pairs=["O-O"], name="RDF")
        diffusion = Diffusion(data=truth, groups=[q["group"]], max_lag_ps=q["max_lag_ps"],
                              fit_window_ps=q["fit_window_ps"], n_blocks=5, name="Diffusion")
    return {"test": test, "run": truth, "rdf": rdf, "diffusion": diffusion}


def _oracle_production(project: zntrack.Project, q: dict, truth: dict, models: dict) -> None:
    """Every iteration's model (``first_and_last_only``: the bootstrap and final models) in NVT at
    300 K from the truth run's last frame (same system and size as the reference run), D per
    iteration against the reference's D, and every model's MD side by side with the reference
    (D, O-O RDF, temperature, time before a molecule breaks)."""
    run = dict(temperature=300.0, timestep=TIMESTEP, thermostat=q["thermostat"], density=None,
               equilibration_steps=q["equilibration_steps"], steps=q["steps"], sampling_rate=q["rate"], seed=0,
               checks=[{"kind": "bond_graph"}])
    done: dict[str, tuple] = {}
    series, steps, trend_nodes = [], [], []
    for bias, entries in models.items():
        if q.get("first_and_last_only"):  # the bootstrap model and the final one of each workflow
            entries = [entries[0], entries[-1]]
        for name, model in entries:
            key = name if name == entries[0][0] else f"{bias}-{name}"
            if key not in done:
                group = (GROUP, "production", name) if key == name else (GROUP, "production", bias, name)
                with project.group(*group):
                    md = ProductionMD(data=truth["run"].frames, model=model, name="NVT300K", **run)
                    rdf = RDF(data=md, pairs=["O-O"], name="RDF")
                    diffusion = Diffusion(data=md, groups=[q["group"]], max_lag_ps=q["max_lag_ps"],
                                          fit_window_ps=q["fit_window_ps"], n_blocks=5, name="Diffusion")
                done[key] = (md, rdf, diffusion)
            series.append(bias)
            steps.append(name)
            trend_nodes.append(done[key][2])
    with project.group(GROUP, "production"):
        reference_d = truth["diffusion"]
        ObservableTrend(nodes=trend_nodes, key=f"{q['group']}/D_A2_per_ns", error_key=f"{q['group']}/D_sem_A2_per_ns",
                        series=series, steps=steps, reference_node=reference_d, reference_label="reference force field",
                        y_label="D / Å² ns⁻¹", name="DiffusionTrend")
        names = list(done)
        ReferenceComparison(names=names, runs=[done[k][0] for k in names], rdfs=[done[k][1] for k in names],
                            diffusions=[done[k][2] for k in names], reference_run=truth["run"],
                            reference_rdf=truth["rdf"], reference_diffusion=truth["diffusion"], group=q["group"],
                            pair="O-O", temperature=300.0, timestep=TIMESTEP, name="Comparison")


def _production(project: zntrack.Project, q: dict, molecule, models: dict[str, list[tuple[str, TrainModel]]]) -> None:
    """D of water with the model of every iteration of both workflows (seed 2 Fig. 5b)."""
    run = dict(temperature=300.0, timestep=TIMESTEP, thermostat=q["thermostat"], density=None,
               equilibration_steps=q["equilibration_steps"], steps=q["steps"], sampling_rate=q["rate"], seed=0)
    first_model = next(iter(models.values()))[0][1]
    with project.group(GROUP, "production"):
        box = PackBox(data=[molecule.frames], count=[q["molecules"]], density=0.997, seed=1, name="Box")
        start = GeometryOptimisation(model=first_model, data=box.frames, data_id=0, max_steps=q["fire_steps"],
                                     name="Relaxed")
    diffusion: dict[str, Diffusion] = {}  # one run per model: B1 starts both workflows
    series, steps, nodes = [], [], []
    for bias, entries in models.items():
        for name, model in entries:
            key = name if name == entries[0][0] else f"{bias}-{name}"
            if key not in diffusion:
                group = (GROUP, "production", name) if key == name else (GROUP, "production", bias, name)
                with project.group(*group):
                    md = ProductionMD(data=start.frames, model=model, name="NVT300K", **run)
                    if q["rdf"]:  # seed 2 Fig. S2
                        RDF(data=md, pairs=["O-O"], name="RDF")
                    diffusion[key] = Diffusion(data=md, groups=[q["group"]], temperature=300.0,
                                               viscosity_mpas=VISCOSITY_300K, max_lag_ps=q["max_lag_ps"],
                                               fit_window_ps=q["fit_window_ps"], n_blocks=5, name="Diffusion")
            series.append(bias)
            steps.append(name)
            nodes.append(diffusion[key])
    with project.group(GROUP, "production"):
        ObservableTrend(nodes=nodes, key=f"{q['group']}/D_yeh_hummer_A2_per_ns", error_key=f"{q['group']}/D_sem_A2_per_ns",
                        series=series, steps=steps, reference=EXPERIMENTAL_D, reference_label="experiment (241 Å²/ns)",
                        y_label="D / Å² ns⁻¹", name="DiffusionTrend")
