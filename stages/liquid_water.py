"""Liquid-water template (``template: liquid_water``): active learning with plain MD vs ERBS (seed 2 §3.2).

Written for ``campaigns/water.yaml``. Graph: ``system.molecules`` molecules packed at
``system.density`` -> ``seed.n_configurations`` bootstrapped structures -> B0 (``seed.n_train``
random training, ``seed.n_validation`` validation) -> B1 (+``seed.n_maxdist`` by MaxDist from the
bootstrap pool) -> one workflow per entry of ``workflows`` (seed 2: ``md`` and ``erbs``), each
running the ``iterations`` table with its MDSampling keys set (e.g. the ERBS bias). Production
(seed 2 Fig. 5b): with the model of every iteration, NVT at ``system.temperature``,
centre-of-mass diffusion with the Yeh-Hummer correction, the O-O RDF, and D per iteration
against ``experimental.self_diffusion``. With a ``truth`` section (the ``oracle`` profile, a
force-field reference) the reference's own MD gives the test set and the truth the models' MD
is compared with (README "Ground truth").
"""

from __future__ import annotations

import copy

import zntrack

from lotf.campaign import Campaign
from lotf.nodes import CP2KLabel, MaxDistSelection, RandomSelection, TrainModel
from lotf.nodes.analysis import RDF, Diffusion, ObservableTrend
from lotf.nodes.frames import MergeFrames
from lotf.nodes.production import ProductionMD
from lotf.nodes.reference import ReferenceMD
from lotf.nodes.sampling import GeometryOptimisation
from lotf.nodes.seed import Bootstrap, PackBox, SmilesConformers
from lotf.nodes.validation import ReferenceComparison
from stages.common import BuildError, CampaignState, check_row, labeller, learning_step, replica_name, report

TIMESTEP = 0.5  # fs: production and reference MD
STARTS = ("bootstrap",)  # structure sources a row's "start" may name (checked at build time)
BOOTSTRAP_OPTIONS = ("translation", "rotation", "rattle")  # seed keys passed to Bootstrap


def workflow_rows(c: Campaign) -> dict[str, list[dict]]:
    """The iteration table of every workflow: each row with the workflow's MDSampling keys set.

    Every row gets its own copy of the MD settings (as each row had before campaign files: ZnTrack
    writes shared objects as YAML aliases in params.yaml); the stop criteria stay one shared list.
    """
    branches = {}
    for bias, change in c["workflows"].items():
        rows = []
        for row in c.iterations:
            sampling = row.get("sampling", {})
            keep = {id(sampling["checks"]): sampling["checks"]} if "checks" in sampling else {}
            rows.append({**row, "sampling": {**copy.deepcopy(sampling, keep), **copy.deepcopy(change)}})
        branches[bias] = rows
    return branches


def check(c: Campaign) -> dict[str, list[dict]]:
    """Everything a build needs from the file, checked before any node is made; returns the rows."""
    if "structure" in (c.sections.get("system") or {}):
        raise BuildError(f"{c.where('system')}: 'structure' is not supported by the liquid_water template "
                         f"(it packs 'molecules' copies of 'molecule' at 'density'); use those keys")
    c.require("system", "molecule", "molecules", "density", "temperature")
    seed = c.require("seed", "n_configurations", "n_train", "n_validation", "n_maxdist")
    if seed.get("kind", "bootstrap") != "bootstrap":
        raise BuildError(f"{c.where('seed')}: unknown kind '{seed['kind']}' (known: bootstrap)")
    c.require("model", "initial")
    c.require("workflows")
    reference = c["reference"]
    if "truth" in c.sections:
        if "forcefield" not in reference:
            raise BuildError(f"{c.where('reference')}: a 'truth' section needs a force-field reference (forcefield)")
        c.require("truth", "steps", "equilibration_steps", "interval", "test_temperatures", "test_steps", "n_test")
        c.require("production", "equilibration_steps", "steps", "rate", "max_lag_ps", "fit_window_ps", "group",
                  "thermostat")
    else:
        c.require("production", "molecules", "equilibration_steps", "steps", "rate", "max_lag_ps", "fit_window_ps",
                  "group", "fire_steps", "thermostat", "rdf")
        c.require("experimental", "self_diffusion", "viscosity_mpas")
    branches = workflow_rows(c)
    for rows in branches.values():
        for row in rows:
            check_row(c.where("iterations"), row, starts=STARTS, label="")
    return branches


def build(project: zntrack.Project, c: Campaign) -> None:
    branches = check(c)
    system, s, m, group = c["system"], c["seed"], c["model"], c.group
    reference, truth_settings = c["reference"], c.get("truth")
    overrides = m.get("overrides", {})
    label = labeller(reference)

    with project.group(group, "bootstrap"):
        molecule = SmilesConformers(smiles=system["molecule"]["smiles"], n_conformers=1, seed=42,
                                    name=system["molecule"]["name"])
        box = PackBox(data=[molecule.frames], count=[system["molecules"]], density=system["density"], seed=42)
        if truth_settings:  # oracle: bootstrap from the box equilibrated by the reference (a classical seed)
            box = ReferenceMD(data=box.frames, temperature=system["temperature"], steps=truth_settings["interval"],
                              equilibration_steps=truth_settings["equilibration_steps"],
                              interval=truth_settings["interval"], forcefield=reference["forcefield"],
                              cutoff=reference.get("cutoff"), timestep=TIMESTEP, seed=7, name="Equilibrated")
        pool = Bootstrap(data=box.frames, n_configurations=s["n_configurations"], seed=0,
                         **{key: s[key] for key in BOOTSTRAP_OPTIONS if key in s})
        train_pick = RandomSelection(data=pool.frames, n_configurations=s["n_train"], seed=0, name="B0Train")
        val_pick = RandomSelection(data=train_pick.excluded_frames, n_configurations=s["n_validation"], seed=0,
                                   name="B0Validation")
        train = label(train_pick.frames, name="B0TrainLabel")
        val = label(val_pick.frames, name="B0ValidationLabel")
        model = TrainModel(data=train.frames, validation_data=val.frames, config=m["initial"], overrides=overrides,
                           name="B0Model")
        more = MaxDistSelection(data=val_pick.excluded_frames, train_data=train.frames, model=model,
                                n_configurations=s["n_maxdist"], name="B1Pick")
        more_labels = label(more.frames, name="B1Label")
        train_set = MergeFrames(data=[train.frames, more_labels.frames], name="B1TrainingSet")
        model = TrainModel(data=train_set.frames, validation_data=val.frames, config=m["initial"],
                           overrides=overrides, init_from=model, name="B1Model")

    # "bootstrap": every iteration starts from a bootstrapped structure the B0 model was trained on
    starts = {"bootstrap": train_pick}
    truth = _truth(project, c, box, molecule, label) if truth_settings else None
    models: dict[str, list[tuple[str, TrainModel]]] = {}
    for bias, rows in branches.items():
        state = CampaignState(model=model, train=train_set, validation=val, last_structure=box)
        state.record("B1")
        for k, row in enumerate(rows):
            with project.group(group, bias, row["name"]):
                state = learning_step(row, state, start=starts[row["start"]], label=label, model_config=m["initial"],
                                      model_overrides=overrides, seed=k)
        with project.group(group, bias, "report"):
            # oracle: a test set from the reference's own MD; else the fixed bootstrap validation set
            report(state, truth["test"] if truth else val)
        models[bias] = [(name, m) for name, m, _, _ in state.log]
    if truth:
        _oracle_production(project, c, truth, models)
    else:
        _production(project, c, molecule, models)


def _truth(project: zntrack.Project, c: Campaign, box, molecule, label) -> dict:
    """The reference's own MD: a test set at several temperatures (never the campaign's data) and
    the 300 K truth run with its RDF and diffusion. The test set comes from the training box's
    size; the truth run (and the models' production from its last frame) from a box of
    ``production.molecules`` when that differs (with the 4.8 Å cutoff, three 40 ps runs of 32
    waters gave D_ref 129 to 304 Å²/ns, two of 64 waters 185 and 247: README "Ground truth")."""
    t, q, ff, system = c["truth"], c["production"], c["reference"], c["system"]
    temperature = system["temperature"]
    md = dict(forcefield=ff["forcefield"], cutoff=ff.get("cutoff"), timestep=TIMESTEP, interval=t["interval"])
    with project.group(c.group, "reference"):
        truth_box = box
        if q.get("molecules", system["molecules"]) != system["molecules"]:
            packed = PackBox(data=[molecule.frames], count=[q["molecules"]], density=system["density"], seed=43,
                             name="TruthBox")
            truth_box = ReferenceMD(data=packed.frames, temperature=temperature, steps=t["interval"],
                                    equilibration_steps=t["equilibration_steps"], seed=8, name="TruthEquilibrated",
                                    **md)
        picks = []
        for k, test_temperature in enumerate(t["test_temperatures"]):
            run = ReferenceMD(data=box.frames, temperature=test_temperature, steps=t["test_steps"],
                              equilibration_steps=t["equilibration_steps"], seed=100 + k,
                              name=f"Test{test_temperature:.0f}K", **md)
            picks.append(RandomSelection(data=run.frames, n_configurations=t["n_test"], seed=k,
                                         name=f"Test{test_temperature:.0f}KPick").frames)
        test = label(MergeFrames(data=picks, name="TestPool").frames, name="TestSet")
        if t.get("xtb_check"):  # keeps the DFT path exercised: real CP2K (GFN1-xTB) on a test structure
            xtb_pick = RandomSelection(data=test.frames, n_configurations=t["xtb_check"], seed=0, name="XTBPick")
            CP2KLabel(data=xtb_pick.frames, settings=t.get("xtb_settings", "data/cp2k/test-xtb.yaml"), name="XTBCheck")
        # independent truth runs (seeds) from the same box: D of one 100 ps run of 64 waters scatters
        # by about 20 % between runs, as much as the 25 % target. D_ref is their mean; the RDF, its
        # noise floor and the models' start frame come from the first run
        runs, diffusions = [], []
        for k in range(t.get("replicas", 1)):
            runs.append(ReferenceMD(data=truth_box.frames, temperature=temperature, steps=t["steps"],
                                    equilibration_steps=t["equilibration_steps"], seed=k,
                                    name=replica_name(f"NVT{temperature:.0f}K", k), **md))
            diffusions.append(Diffusion(data=runs[-1], groups=[q["group"]], max_lag_ps=q["max_lag_ps"],
                                        fit_window_ps=q["fit_window_ps"], n_blocks=5,
                                        name=replica_name("Diffusion", k)))
        rdf = RDF(data=runs[0], pairs=["O-O"], name="RDF")
    # one run: the node itself, so that the graph of a single truth run is the one it always was
    return {"test": test, "run": runs[0], "rdf": rdf, "diffusion": diffusions[0] if len(diffusions) == 1 else diffusions}


def _oracle_production(project: zntrack.Project, c: Campaign, truth: dict, models: dict) -> None:
    """Every iteration's model (``last_only``: the final model of each workflow) in NVT at 300 K
    from the truth run's last frame (same system and size as the reference run), D per iteration
    against the reference's D, and every model's MD side by side with the reference (D, O-O RDF,
    temperature, time before a molecule breaks)."""
    q, group, temperature = c["production"], c.group, c["system"]["temperature"]
    run = dict(temperature=temperature, timestep=TIMESTEP, thermostat=q["thermostat"], density=None,
               equilibration_steps=q["equilibration_steps"], steps=q["steps"], sampling_rate=q["rate"], seed=0,
               checks=[{"kind": "bond_graph"}])
    done: dict[str, tuple] = {}
    series, steps, trend_nodes = [], [], []
    for bias, entries in models.items():
        shared = entries[0][0]  # the bootstrap model starts every workflow: one run for all
        if q.get("last_only"):  # the final model of each workflow
            entries = [entries[-1]]
        for name, model in entries:
            key = name if name == shared else f"{bias}-{name}"
            if key not in done:
                where = (group, "production", name) if key == name else (group, "production", bias, name)
                with project.group(*where):
                    md = ProductionMD(data=truth["run"].frames, model=model, name=f"NVT{temperature:.0f}K", **run)
                    rdf = RDF(data=md, pairs=["O-O"], name="RDF")
                    diffusion = Diffusion(data=md, groups=[q["group"]], max_lag_ps=q["max_lag_ps"],
                                          fit_window_ps=q["fit_window_ps"], n_blocks=5, name="Diffusion")
                done[key] = (md, rdf, diffusion)
            series.append(bias)
            steps.append(name)
            trend_nodes.append(done[key][2])
    with project.group(group, "production"):
        reference_d = truth["diffusion"]
        ObservableTrend(nodes=trend_nodes, key=f"{q['group']}/D_A2_per_ns", error_key=f"{q['group']}/D_sem_A2_per_ns",
                        series=series, steps=steps, reference_node=reference_d, reference_label="reference force field",
                        y_label="D / Å² ns⁻¹", name="DiffusionTrend")
        names = list(done)
        ReferenceComparison(names=names, runs=[done[k][0] for k in names], rdfs=[done[k][1] for k in names],
                            diffusions=[done[k][2] for k in names], reference_run=truth["run"],
                            reference_rdf=truth["rdf"], reference_diffusion=truth["diffusion"], group=q["group"],
                            pair="O-O", temperature=temperature, timestep=TIMESTEP, name="Comparison")


def _production(project: zntrack.Project, c: Campaign, molecule,
                models: dict[str, list[tuple[str, TrainModel]]]) -> None:
    """D with the model of every iteration of every workflow (seed 2 Fig. 5b)."""
    q, group, system, experimental = c["production"], c.group, c["system"], c["experimental"]
    temperature = system["temperature"]
    run = dict(temperature=temperature, timestep=TIMESTEP, thermostat=q["thermostat"], density=None,
               equilibration_steps=q["equilibration_steps"], steps=q["steps"], sampling_rate=q["rate"], seed=0)
    first_model = next(iter(models.values()))[0][1]
    with project.group(group, "production"):
        box = PackBox(data=[molecule.frames], count=[q["molecules"]], density=system["density"], seed=1, name="Box")
        start = GeometryOptimisation(model=first_model, data=box.frames, data_id=0, max_steps=q["fire_steps"],
                                     name="Relaxed")
    diffusion: dict[str, Diffusion] = {}  # one run per model: B1 starts both workflows
    series, steps, nodes = [], [], []
    for bias, entries in models.items():
        for name, model in entries:
            key = name if name == entries[0][0] else f"{bias}-{name}"
            if key not in diffusion:
                where = (group, "production", name) if key == name else (group, "production", bias, name)
                with project.group(*where):
                    md = ProductionMD(data=start.frames, model=model, name=f"NVT{temperature:.0f}K", **run)
                    if q["rdf"]:  # seed 2 Fig. S2
                        RDF(data=md, pairs=["O-O"], name="RDF")
                    diffusion[key] = Diffusion(data=md, groups=[q["group"]], temperature=temperature,
                                               viscosity_mpas=experimental["viscosity_mpas"], max_lag_ps=q["max_lag_ps"],
                                               fit_window_ps=q["fit_window_ps"], n_blocks=5, name="Diffusion")
            series.append(bias)
            steps.append(name)
            nodes.append(diffusion[key])
    with project.group(group, "production"):
        ObservableTrend(nodes=nodes, key=f"{q['group']}/D_yeh_hummer_A2_per_ns", error_key=f"{q['group']}/D_sem_A2_per_ns",
                        series=series, steps=steps, reference=experimental["self_diffusion"],
                        reference_label=f"experiment ({experimental['self_diffusion']:g} Å²/ns)",
                        y_label="D / Å² ns⁻¹", name="DiffusionTrend")
