"""BMIM-BF4 learning-on-the-fly campaign (seed 1, Table 1; reference notes §3.3).

Graph: GROMACS OPLS-AA seed -> CP2K B97-3c labels -> outlier filter -> test/validation/train
splits -> classical model -> ML0 (MaxDist from the labelled seed pool) -> ML1..ML17, one row of
Table 1 each (:func:`iterations`): NVT with FIRE (fmax 0.5), temperature and density modifiers,
20 conformer boxes (ML11), rigid volume scans of 5 relaxed boxes plus NPT (ML13), NPT with
modifiers (ML14, ML15); the D3-free branch of the published campaign: the training and
validation sets relabelled by CP2K without D3 and a model trained on them, ML16 (NPT with that
model plus FIRE; 5 + 100 points, 100 validation) and ML17 (FIRE of a 0.900 g/cm³ box, NVT at
500 K and 1.210 g/cm³, NPT at 298.15 K driven by the hybrid MLP + D3(8 Å); 4 + 80 + 80 points,
80 validation): 1589 training and 280 validation structures, as published. The four ML17 models
(DFT, DFT+D3(8 Å), DFT+D3(8 Å) with r_max 7.94 Å, DFT+D3(20 Å)) feed production (seed 1
"Production simulations"): boxes packed at 0.9 g/cm³, FIRE, compressed to the experimental
density; NVT (Nosé-Hoover chain) at 283-353 K for 8/16/32 pairs with MLP(D3(8 Å)) -> RDF,
diffusion, box-size extrapolation, Arrhenius plot, butyl dihedrals; NPT densities of 10 pairs
with the trained and the hybrid MLP+D3 models -> density comparison (Fig. 7). Seed 2's
exploration runs (MD, UDD, ERBS) use a 16-member NLL shallow ensemble trained on 200 structures
of the final data set.

Every pool is screened before selection: atoms closer than 0.6 x their covalent radii sum, and
molecules other than intact BMIM+ and BF4- (the campaign never breaks a molecule on purpose).
"""

from __future__ import annotations

import zntrack

from lotf.nodes import CP2KLabel, MaxDistSelection, RandomSelection, TrainModel
from lotf.nodes.analysis import (RDF, ArrheniusPlot, BoxSizeExtrapolation, Density, DensityComparison, Diffusion,
                                 Dihedrals, ExplorationMetrics, PredictionMetrics)
from lotf.nodes.d3 import RecomputeD3
from lotf.nodes.frames import FilterOutliers, MergeFrames
from lotf.nodes.production import ProductionMD
from lotf.nodes.sampling import GeometryOptimisation, MDSampling
from lotf.nodes.seed import GromacsSeed, PackBox, SmilesConformers, VolumeScan
from stages.common import (DEFAULT_SCREENING, GEO_OPT, BuildError, CampaignState, as_sources, check_profile,
                           check_row, labeller, learning_step, report)

NAME = "bmim_bf4"
GROUP = "bmim-bf4"  # ZnTrack joins group names with "_", so the group avoids it
BMIM, BF4 = "CCCCn1cc[n+](C)c1", "F[B-](F)(F)F"
# compression target of the production runs: the table's density at T, read when each stage runs
# (a DVC dependency of those stages, so replacing the table's estimates puts them out of date)
DENSITY_TABLE = "data/experimental/bmim_bf4_density.csv"
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
# the four ML17 models: label -> (D3 cutoff added to the D3-free labels, model overrides); the
# published "long cutoff" model is trained on the short-D3 labels with r_max 7.93766 Å
FINAL_MODELS = {
    "DFT": (None, {}),
    "DFT-D3-8": (8.0, {}),
    "DFT-D3-8-long": (8.0, {"model": {"r_max": 7.93766}}),
    "DFT-D3-20": (20.0, {}),
}
HYBRID_D3 = {"functional": "b97-3c", "cutoff": 8.0}  # ML17's NPT: MLP(no D3) + D3(8 Å) at run time
DIFFUSION_GROUPS = ["H", "B", "com:BF4", "com:C8H15N2"]  # seed 1 Fig. 6: H and B atoms; ion centres of mass
EXPERIMENT_SPECIES = {"B": "BF4-", "com:BF4": "BF4-", "H": "BMIM+", "com:C8H15N2": "BMIM+"}  # NMR: 11B/19F, 1H
SCREENING = {**DEFAULT_SCREENING, "intact_molecules": True}  # ionic liquid: molecules stay intact
# row kinds and the structures an MD or FIRE may start from
KINDS = ("sampling", "conformers", "volume_scan", "no_d3")
STARTS = ("seed", "previous", "volume_scan", "conformers", "geo_opt")
REFERENCES = ("dft-d3", "dft")  # CP2K B97-3c with D3 (ML0-ML15) and without (ML16, ML17)


def _nvt(steps: int, rate: int, temperature: float = 298.15, checks=UNCERTAINTY_STOP, **extra) -> dict:
    return {"method": "md", "ensemble": "nvt", "thermostat": "langevin", "temperature": temperature, "timestep": 0.5,
            "steps": steps, "sampling_rate": rate, "checks": checks, "on_trigger": "stop", **extra}


def _npt(steps: int, rate: int, temperature: float = 300.0, timestep: float = 1.0, checks=UNCERTAINTY_STOP,
         **extra) -> dict:
    # 1 atm; seed 1 used Parrinello-Rahman-like ASE NPT, here stochastic cell rescaling
    return {"method": "md", "ensemble": "npt", "thermostat": "langevin", "temperature": temperature,
            "timestep": timestep, "barostat": {"pressure": 1.01325}, "steps": steps, "sampling_rate": rate,
            "checks": checks, "on_trigger": "stop", **extra}


def temperature_ramp(start, end, amplitude, n_oscillations) -> dict:
    """Seed-1 eq. 9 for T (Table 1 ranges)."""
    return {"kind": "temperature", "T_start": start, "T_end": end, "T_amp": amplitude, "n_oscillations": n_oscillations}


def density_ramp(start, end, amplitude, n_oscillations) -> dict:
    """Seed-1 eq. 9 for the density (box scaled isotropically)."""
    return {"kind": "density", "rho_start": start, "rho_end": end, "rho_amp": amplitude,
            "n_oscillations": n_oscillations}


# Table 1: 0.992-1.499 g/cm³. Seed 1 oscillated the box length by ±1 Å around 14.58 Å (1.210
# g/cm³), which is asymmetric in density; eq. 9 in the density with this centre and amplitude
# spans exactly the published range.
RHO_MIN, RHO_MAX = 0.992, 1.499
DENSITY_MODIFIER = density_ramp((RHO_MIN + RHO_MAX) / 2, (RHO_MIN + RHO_MAX) / 2, (RHO_MAX - RHO_MIN) / 2, 3)

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


def iterations(steps: int, npt_steps: int, long_steps: int, rate: int, scale: float = 1.0,
               vs_boxes: int = 5, vs_points: int = 100) -> list[dict]:
    """Seed 1 Table 1 as rows, ML1-ML17. ``scale`` multiplies every number of new points (1.0:
    the published 50 per iteration, ..., 105 in ML16, 164 in ML17); ``vs_boxes`` x ``vs_points``
    is ML13's volume scan (5 x 100 in seed 1)."""
    def c(n: int) -> int:
        return max(1, round(n * scale))

    t_mod = temperature_ramp(230.0, 500.0, 150.0, 10)
    rows = [{"name": f"ML{k}", "start": "seed" if k == 1 else "previous", "sampling": _nvt(steps, rate),
             "geo_opt": True, "n_select": c(50)} for k in range(1, 5)]
    rows += [{"name": f"ML{k}", "start": "previous", "sampling": _nvt(steps, rate, modifiers=[t_mod]),
              "geo_opt": True, "n_select": c(50)} for k in range(5, 8)]
    rows += [{"name": f"ML{k}", "start": "previous", "sampling": _nvt(steps, rate, modifiers=[DENSITY_MODIFIER]),
              "geo_opt": True, "n_select": c(50)} for k in range(8, 11)]
    # ML11: 20 boxes of 10 ion pairs packed at 0.900 g/cm³ from RDKit conformers, all labelled
    rows += [{"name": "ML11", "kind": "conformers", "n_select": c(20),
              "options": {"density": 0.900, "n_conformers": 200}}]
    rows += [{"name": "ML12", "start": "previous", "geo_opt": True, "n_select": c(50),
              "sampling": _nvt(steps, rate, modifiers=[DENSITY_MODIFIER, t_mod])}]
    rows += [
        # ML13: 5 of the ML11 boxes relaxed, each scanned rigidly over 0.151-1.661 g/cm³ (50 of the
        # scans at random), and NPT from the last relaxed box (50 by MaxDist): 100 points
        {"name": "ML13", "kind": "volume_scan", "start": "volume_scan", "n_select": c(50),
         "sampling": _npt(npt_steps, rate, temperature=300.0),
         "options": {"boxes": vs_boxes, "points": vs_points, "rho_min": 0.151, "rho_max": 1.661, "n_select": c(50)}},
        {"name": "ML14", "start": "volume_scan", "n_select": c(50),
         "sampling": _npt(npt_steps, rate, modifiers=[temperature_ramp(300.0, 500.0, 150.0, 10)])},
        {"name": "ML15", "start": "previous", "n_select": c(100),
         "sampling": _npt(long_steps, 10 * rate, modifiers=[temperature_ramp(200.0, 300.0, 100.0, 10)])},
        # ML16: FIRE of ML15's last frame with the D3-free model (5 by MaxDist), NPT at 300 K and
        # 1 atm from it without modifiers or checks (100 random, 100 random for validation)
        {"name": "ML16", "kind": "no_d3", "reference": "dft", "start": "previous", "n_select": c(5),
         "options": {"samplers": [
             {"start": "geo_opt", "sampling": _npt(long_steps, 10 * rate, checks=[]), "n_select": c(100),
              "n_validation": c(100)}]}},
        # ML17: FIRE of a conformer box at 0.900 g/cm³ with the ML16 model (4 by MaxDist); NVT at
        # 500 K and 1.210 g/cm³ from the seed; NPT at 298.15 K and 1 atm from the relaxed box with
        # the hybrid ML16 model + D3(8 Å); 80 + 80 random, 40 + 40 random for validation
        {"name": "ML17", "kind": "no_d3", "reference": "dft", "start": "conformers", "n_select": c(4),
         "options": {"samplers": [
             {"start": "seed", "sampling": _nvt(long_steps, 10 * rate, temperature=500.0, checks=[]),
              "n_select": c(80), "n_validation": c(40)},
             {"start": "geo_opt", "sampling": _npt(long_steps, 10 * rate, temperature=298.15, timestep=0.5, checks=[],
                                                   d3=HYBRID_D3), "n_select": c(80), "n_validation": c(40)}]}},
    ]
    for row in rows:  # every MD and FIRE pool: no close contacts, every molecule intact
        if "sampling" in row:
            row["screening"] = SCREENING
    return rows


def check_rows(rows: list[dict]) -> None:
    """Build-time checks of every row (and of ML16/ML17's samplers): unknown keys, kinds, starts,
    references and option names fail in one line naming the iteration."""
    options = {"conformers": {"density", "n_conformers"},
               "volume_scan": {"boxes", "points", "rho_min", "rho_max", "n_select"}, "no_d3": {"samplers"}}
    sampler_keys = {"start", "sampling", "n_select", "n_validation"}
    for row in rows:
        check_row(NAME, row, starts=STARTS if row.get("kind") != "conformers" else None, kinds=KINDS,
                  references=REFERENCES)
        kind = row.get("kind", "sampling")
        if kind in ("volume_scan",) and "sampling" not in row:
            raise BuildError(f"{NAME} iteration {row['name']}: missing setting 'sampling'")
        known = options.get(kind, set())
        for key in row.get("options", {}):
            if key not in known:
                raise BuildError(f"{NAME} iteration {row['name']}: unknown option '{key}' "
                                 f"(known: {', '.join(sorted(known)) or 'none'})")
        for k, sampler in enumerate(row.get("options", {}).get("samplers", [])):
            unknown = set(sampler) - sampler_keys
            if unknown:
                raise BuildError(f"{NAME} iteration {row['name']} sampler {k}: unknown setting '{sorted(unknown)[0]}'")
            check_row(NAME, {"name": f"{row['name']} sampler {k}", **sampler}, starts=STARTS)


PROFILES = {
    "paper": dict(
        pairs=10, seed_steps=5_000_000, seed_interval=3600, cp2k="data/cp2k/b97-3c.yaml",
        cp2k_nod3="data/cp2k/b97-3c-nod3.yaml", cp2k_run={"n_ranks": 1, "n_threads": 1}, n_test=500, n_val=100,
        n_train=100, n_ml0=400, model="models/bmim_initial.yaml", final="models/bmim_final.yaml", overrides={},
        rows=iterations(steps=50_000, npt_steps=100_000, long_steps=1_000_000, rate=10),
        final_models=list(FINAL_MODELS), geo_opt=GEO_OPT,
        production=dict(
            temperatures=[283.0, 293.0, 313.0, 333.0, 353.0], sizes=[8, 16, 32], compress_steps=10_000,
            equilibration_steps=10_000, steps=40_000_000, rate=200, max_lag_ps=2000.0, fit_window_ps=[200.0, 2000.0],
            dihedral_windows_ps=[[0.0, 100.0], [0.0, 1000.0], [0.0, 20000.0]],
            npt_pairs=10, npt_temperatures=[283.0, 293.0, 313.0, 333.0, 353.0], npt_equilibration_steps=400_000,
            npt_steps=2_000_000, npt_rate=200, npt_models=list(DENSITY_MODELS), n_conformers=20, fire_steps=5000,
            diffusion_groups=DIFFUSION_GROUPS, thermostat="nose_hoover",
            rdf_temperatures=[283.0, 293.0, 313.0, 333.0, 353.0], arrhenius_per_size=True,
        ),
        # seed 2 §3.3: a 16-member NLL shallow ensemble trained on 200 structures of the data set
        exploration=dict(steps=200_000, rate=100, n_train=200, model="models/bmim_exploration.yaml", overrides={},
                         runs=exploration_runs(
            udd_heights=[0.1, 0.5, 1.0, 2.0, 5.0, 10.0], udd_widths=[0.1, 0.5, 1.0, 2.0],
            erbs_barriers=[0.1, 0.5, 1.5, 2.5], erbs_bandwidths=[0.5, 1.0, 2.0, 5.0], erbs_components=[1, 2, 3, 4])),
    ),
    "smoke": dict(
        pairs=4, seed_steps=2_000, seed_interval=200, cp2k="data/cp2k/test-xtb-bmim-smoke.yaml",
        cp2k_nod3="data/cp2k/test-xtb-bmim-smoke.yaml", cp2k_run={"n_ranks": 1, "n_threads": 1}, n_test=2, n_val=2,
        n_train=3, n_ml0=1, model="models/smoke.yaml", final="models/smoke.yaml", overrides={},
        # one row of every kind: conformer boxes (ML11), NVT + FIRE with both modifiers (ML12),
        # volume scan + NPT (ML13), the D3-free branch with FIRE, NVT and the hybrid MLP + D3 NPT
        # (ML17, which relabels the data without D3 first, as ML16 does in the paper profile)
        rows=[row for row in iterations(steps=100, npt_steps=100, long_steps=100, rate=10, scale=0.02, vs_boxes=1,
                                        vs_points=4)
              if row["name"] in ("ML11", "ML12", "ML13", "ML17")],
        final_models=["DFT", "DFT-D3-8"],
        geo_opt={**GEO_OPT, "max_steps": 100},  # the smoke models never reach fmax 0.5: cap FIRE
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
        exploration=dict(steps=100, rate=10, n_train=4, model="models/smoke.yaml",
                         overrides={"model": {"n_members": 16},
                                    "training": {"energy_loss": {"kind": "nll", "weight": 1.0},
                                                 "forces_loss": {"kind": "nll", "weight": 2.0}}},
                         runs=exploration_runs(  # MD and one ERBS run (UDD: the unit tests)
            udd_heights=[], udd_widths=[], erbs_barriers=[1.5], erbs_bandwidths=[], erbs_components=[],
            interval=20)),
    ),
}


def build(project: zntrack.Project, profile: str) -> None:
    check_profile(NAME, profile, PROFILES)
    p = PROFILES[profile]
    check_rows(p["rows"])
    label_kw = dict(settings=p["cp2k"], **p["cp2k_run"])
    labels = {"dft-d3": labeller({"cp2k": p["cp2k"], **p["cp2k_run"]}),
              "dft": labeller({"cp2k": p["cp2k_nod3"], **p["cp2k_run"]})}

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
    state.log.append(("classical", classical, None, labelled))  # every seed frame labelled, 100 for training
    state.picks["classical"] = [train]
    state.record("ML0", picks=[pick])

    sources = {"seed": seed}  # named start structures; "previous" is the state's last structure
    no_d3: list[str] = []  # iterations whose models are trained without D3
    for k, row in enumerate(p["rows"]):
        kind = row.get("kind", "sampling")
        with project.group(GROUP, row["name"]):
            if kind == "conformers":
                sources["conformers"] = _conformers(p, row, state, labels["dft-d3"])
                continue
            if kind == "volume_scan":
                sources["volume_scan"] = _volume_scan(p, row, state, sources, labels["dft-d3"], seed=k)
            if kind == "no_d3":
                if not no_d3:  # the first D3-free iteration relabels the data set and trains on it
                    _relabel_without_d3(p, state, labels["dft"])
                    no_d3.append(state.log[-1][0])
                _no_d3_iteration(p, row, state, sources, labels["dft"], seed=k)
                no_d3.append(row["name"])
                continue
            start = _start(row, state, sources)
            picks = state.picks.get(row["name"], [])
            vs_labels = state.log.pop()[3] if kind == "volume_scan" else None  # re-recorded with the NPT part
            state = learning_step(row, state, start=start, label=labels[row.get("reference", "dft-d3")],
                                  model_config=p["model"], model_overrides=p["overrides"], seed=k,
                                  screening_reference=seed, geo_opt=p["geo_opt"])
            if kind == "volume_scan":  # one iteration of Table 1: the scan's points and the NPT's
                name, model, sampler, label = state.log[-1]
                state.log[-1] = (name, model, sampler, [vs_labels, label])
                state.picks[name] = picks + state.picks[name]

    finals = _final_models(project, p, state, no_d3)
    with project.group(GROUP, "report"):
        # the D3-free models are tested on the test set relabelled without D3 (taking CP2K's
        # three-body D3 out at its 15.9 Å cutoff needs ~5e7 triangles for 120 atoms)
        test_no_d3 = labels["dft"](test.frames, name="TestSetDFT") if no_d3 else None
        report(state, test, test_no_d3, no_d3)
    _production(project, p["production"], finals[0])
    _exploration(project, p["exploration"], finals, seed)


def _start(row: dict, state: CampaignState, sources: dict):
    """The structure a row starts from (names are checked at build time by :func:`check_rows`)."""
    name = row["start"]
    if name == "previous":
        return state.last_structure
    if name not in sources:
        raise BuildError(f"{NAME} iteration {row['name']}: start '{name}' is used before an iteration made it")
    return sources[name]


def _conformers(p: dict, row: dict, state: CampaignState, label) -> PackBox:
    """ML11: boxes of ``pairs`` ion pairs packed at 0.900 g/cm³ from RDKit conformers, all labelled
    and added to the training set (ML12's model sees them)."""
    o = row["options"]
    cation = SmilesConformers(smiles=BMIM, n_conformers=o["n_conformers"], seed=42, name="BMIM")
    anion = SmilesConformers(smiles=BF4, n_conformers=o["n_conformers"], seed=42, name="BF4")
    boxes = PackBox(data=[cation.frames, anion.frames], count=[p["pairs"], p["pairs"]], density=o["density"],
                    n_configurations=row["n_select"], seed=42)
    box_labels = label(boxes.frames, name="PackedLabel")
    state.train = MergeFrames(data=[state.train.frames, box_labels.frames], name="TrainingSet")
    state.model = TrainModel(data=state.train.frames, validation_data=state.validation.frames, config=p["model"],
                             overrides=p["overrides"], init_from=state.model)
    state.record(row["name"], label=box_labels)
    return boxes


def _volume_scan(p: dict, row: dict, state: CampaignState, sources: dict, label, seed: int) -> GeometryOptimisation:
    """ML13's volume scan: the first ``boxes`` ML11 boxes relaxed with the current model (FIRE,
    fmax 0.5), each scanned rigidly over ``points`` densities, ``n_select`` scans at random,
    labelled and added to the training set the NPT part of ML13 selects against. Returns the
    last relaxed box, where ML13's and ML14's NPT runs start."""
    o = row["options"]
    if "conformers" not in sources:
        raise BuildError(f"{NAME} iteration {row['name']}: the volume scan needs the conformer boxes of a "
                         "'conformers' iteration before it")
    relaxed, scans = [], []
    for b in range(o["boxes"]):
        relaxed.append(GeometryOptimisation(model=state.model, data=sources["conformers"].frames, data_id=b,
                                            name=f"ScanStart{b}", **p["geo_opt"]))
        scans.append(VolumeScan(data=relaxed[-1].frames, data_ids=[-1], start=o["rho_min"], stop=o["rho_max"],
                                num=o["points"], name=f"VolumeScan{b}"))
    pool = scans[0] if len(scans) == 1 else MergeFrames(data=[scan.frames for scan in scans], name="ScanPool")
    pick = RandomSelection(data=pool.frames, n_configurations=o["n_select"], seed=seed, name="ScanPick",
                           screening=DEFAULT_SCREENING)  # rigid molecules: only the contacts can fail
    scan_labels = label(pick.frames, name="ScanLabel")
    state.train = MergeFrames(data=[state.train.frames, scan_labels.frames], name="ScanTrainingSet")
    state.picks[row["name"]] = [pick]
    state.log.append((row["name"], state.model, None, scan_labels))
    return relaxed[-1]


def _relabel_without_d3(p: dict, state: CampaignState, label) -> None:
    """The published D3-free branch: training and validation sets relabelled by CP2K without D3
    (taking CP2K's three-body D3 out analytically is intractable in the condensed phase) and a
    model trained on them from scratch; ML16 samples with it."""
    train = label(state.train.frames, name="TrainDFT")
    validation = label(state.validation.frames, name="ValidationDFT")
    previous = state.log[-1][0]
    state.train, state.validation = train, validation
    state.model = TrainModel(data=train.frames, validation_data=validation.frames, config=p["final"], name="ModelNoD3")
    state.record(f"{previous}-noD3", label=[train, validation])


def _no_d3_iteration(p: dict, row: dict, state: CampaignState, sources: dict, label, seed: int) -> None:
    """ML16 / ML17: FIRE (fmax 0.5) from the row's start with the current D3-free model, its path
    screened and ``n_select`` picked by MaxDist; then each sampler (MD from its own start or
    from the relaxed structure, ``"geo_opt"``) gives ``n_validation`` random validation and
    ``n_select`` random training points; all labelled without D3; one model trained from scratch."""
    start = as_sources(_start(row, state, sources))
    geo = GeometryOptimisation(model=state.model, data=start, data_id=-1, fallback=start, name="GeoOpt",
                               **p["geo_opt"])
    geo_pick = MaxDistSelection(data=geo.frames, train_data=state.train.frames, model=state.model,
                                n_configurations=row["n_select"], screening=SCREENING,
                                screening_reference=sources["seed"].frames, name="GeoOptPick")
    local = {**sources, "previous": state.last_structure, "geo_opt": geo}
    picks, train_new, val_new, samplers = [geo_pick], [geo_pick.frames], [], []
    for k, sampler in enumerate(row["options"]["samplers"]):
        origin = as_sources(local[sampler["start"]] if sampler["start"] in local else _start(sampler, state, sources))
        md = MDSampling(model=state.model, data=origin, data_id=-1, seed=seed, name=f"MD{k}", **sampler["sampling"])
        val_pick = RandomSelection(data=md.frames, n_configurations=sampler["n_validation"], seed=seed,
                                   screening=SCREENING, screening_reference=sources["seed"].frames,
                                   name=f"ValidationPick{k}")
        pick = RandomSelection(data=val_pick.excluded_frames, n_configurations=sampler["n_select"], seed=seed,
                               name=f"TrainPick{k}")
        samplers.append(md)
        picks += [val_pick, pick]
        train_new.append(pick.frames)
        val_new.append(val_pick.frames)
    train_labels = label(MergeFrames(data=train_new, name="NewTraining").frames, name="TrainLabel")
    val_labels = label(MergeFrames(data=val_new, name="NewValidation").frames, name="ValidationLabel")
    state.train = MergeFrames(data=[state.train.frames, train_labels.frames], name="TrainingSet")
    state.validation = MergeFrames(data=[state.validation.frames, val_labels.frames], name="Validation")
    state.last_structure = samplers[-1]
    if row["name"] != p["rows"][-1]["name"]:  # the last iteration trains the final models instead
        state.model = TrainModel(data=state.train.frames, validation_data=state.validation.frames, config=p["final"])
    state.picks[row["name"]] = picks
    state.log.append((row["name"], state.model, samplers, [train_labels, val_labels]))


def _final_models(project: zntrack.Project, p: dict, state: CampaignState,
                  no_d3: list[str]) -> tuple[dict[str, TrainModel], dict]:
    """The last iteration's models (seed 1: ML17) on DFT, DFT+D3(8 Å) (also with r_max 7.94 Å)
    and DFT+D3(20 Å): D3(BJ) two-body added in JAX to the D3-free CP2K labels. Without a D3-free
    iteration (a profile that stops earlier) the data are relabelled without D3 first, in "final".
    Returns the models and the (training, validation) nodes of each label set."""
    last = state.log[-1][0]
    with project.group(GROUP, last if no_d3 else "final"):
        if not no_d3:
            _relabel_without_d3(p, state, labeller({"cp2k": p["cp2k_nod3"], **p["cp2k_run"]}))
            no_d3.append(state.log[-1][0])
        data = {None: (state.train, state.validation)}
        models, sets = {}, {}
        for label in p["final_models"]:
            cutoff, overrides = FINAL_MODELS[label]
            if cutoff not in data:
                data[cutoff] = tuple(
                    RecomputeD3(data=d.frames, mode="add", cutoff=cutoff, name=f"{part}DFT-D3-{cutoff:g}")
                    for part, d in (("Train", state.train), ("Validation", state.validation)))
            train, val = data[cutoff]
            sets[label] = (train, val)
            models[label] = TrainModel(data=train.frames, validation_data=val.frames, config=p["final"],
                                       overrides=overrides, name=f"Model{label}")
            # seed 1 Fig. 1 (parity plots) and seed 2 §3.3 (translational/rotational/vibrational forces)
            PredictionMetrics(data=val.frames, model=models[label], decompose_forces=True, name=f"Metrics{label}")
    name, _, samplers, labels = state.log[-1]
    state.model = models["DFT"]  # the report tests the D3-free model on the D3-free test labels
    state.log[-1] = (name, state.model, samplers, labels)
    return models, sets


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
                md = ProductionMD(data=start.frames, model=model, temperature=T, density_table=DENSITY_TABLE,
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
                                  barostat={"pressure": 1.01325}, density_table=DENSITY_TABLE,
                                  equilibration_steps=q["npt_equilibration_steps"], steps=q["npt_steps"],
                                  sampling_rate=q["npt_rate"], seed=int(T), name=f"NPT{tag}{T:.0f}K", **run)
                densities.append(Density(data=md, temperature=T, name=f"Density{tag}{T:.0f}K"))
                labels.append(label)
        DensityComparison(densities=densities, labels=labels, name="Densities")


def _exploration(project: zntrack.Project, q: dict, finals: tuple[dict, dict], seed) -> None:
    """Seed 2 §3.3: how far MD, UDD and ERBS move the BF4- centres of mass in 100 ps (Berendsen
    500 fs, 0.5 fs steps) from the last seed frame; the maximum COM MSD per run (Fig. 6) and the
    descriptor PCA in one basis (Fig. 7). The model is seed 2's: a 16-member shallow ensemble
    trained with NLL on ``n_train`` (200) random structures of the final DFT+D3(8 Å) training set,
    validated on its validation set (the UDD A/B grid was tuned for that spread). A bond-graph
    check stops runs that break molecules."""
    _, sets = finals
    train, val = sets[PRODUCTION_MODEL]
    common = {"ensemble": "nvt", "thermostat": "berendsen", "thermostat_params": {"tau": 500.0},
              "temperature": 300.0, "timestep": 0.5, "steps": q["steps"], "sampling_rate": q["rate"],
              "checks": [{"kind": "bond_graph"}], "on_trigger": "stop"}
    with project.group(GROUP, "exploration"):
        subset = RandomSelection(data=train.frames, n_configurations=q["n_train"], seed=0, name="TrainSubset")
        model = TrainModel(data=subset.frames, validation_data=val.frames, config=q["model"], overrides=q["overrides"],
                           name="Model")
        runs = [MDSampling(data=seed.frames, model=model, data_id=-1, seed=0, name=name, **common, **options)
                for name, options in q["runs"].items()]
        ExplorationMetrics(data=runs, names=list(q["runs"]), group="com:BF4", descriptor_stride=10, name="Metrics")
