"""The committed paper graph is seed 1's Table 1, iteration by iteration; bad rows fail at build time."""

import copy
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# Table 1: new training points per iteration (0: 100 classical + 400 MaxDist), 1589 in total
TABLE_1 = {"classical": 100, "ML0": 400, **{f"ML{k}": 50 for k in range(1, 11)}, "ML11": 20, "ML12": 50,
           "ML13": 100, "ML14": 50, "ML15": 100, "ML16": 105, "ML17": 164}


@pytest.fixture(scope="module")
def graph():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    classes = {name: stage["cmd"].split()[2].rsplit(".", 1)[-1] for name, stage in stages.items()}
    bmim = {name: value for name, value in params.items() if name.startswith("bmim-bf4_")}
    return bmim, stages, classes


def group(name: str) -> str:
    return name.split("_")[1]


def new_points(bmim, classes) -> tuple[Counter, Counter]:
    """Training and validation points each iteration adds (its selections; ML11 labels every box)."""
    train, validation = Counter(), Counter()
    for name, value in bmim.items():
        cls, grp = classes[name], group(name)
        if grp in ("exploration", "report") or (grp == "classical" and not name.endswith(("TrainSet",
                                                                                        "ValidationSet"))):
            continue
        if cls in ("MaxDistSelection", "RandomSelection") or (cls == "PackBox" and grp == "ML11"):
            (validation if "Validation" in name else train)[grp] += value["n_configurations"]
    return train, validation


def test_every_iteration_adds_its_table_1_points_and_the_totals_are_as_published(graph):
    bmim, _, classes = graph
    train, validation = new_points(bmim, classes)
    assert dict(train) == TABLE_1
    assert sum(train.values()) == 1589
    assert sum(validation.values()) == 280  # 100 classical + 100 (ML16) + 40 + 40 (ML17)
    assert dict(validation) == {"classical": 100, "ML16": 100, "ML17": 80}
    iterations = sorted({group(n) for n in bmim if group(n).startswith("ML")}, key=lambda g: int(g[2:]))
    assert iterations == [f"ML{k}" for k in range(18)]


def test_sampling_conditions_follow_table_1(graph):
    bmim, stages, classes = graph
    md = {group(n): v for n, v in bmim.items() if classes[n] == "MDSampling" and n.endswith("_MDSampling")}
    mods = {g: {m["kind"]: m for m in v["modifiers"]} for g, v in md.items()}
    for k in range(1, 13):
        if k == 11:
            assert k not in md
            continue
        v = md[f"ML{k}"]
        assert v["ensemble"] == "nvt" and v["temperature"] == 298.15 and v["timestep"] == 0.5
        assert v["steps"] == 50_000 and v["checks"] == [{"kind": "forces_uncertainty", "max_value": 0.5}]
        assert f"bmim-bf4_ML{k}_GeometryOptimisation" in bmim  # NVT, GeoOpt
        T = mods[f"ML{k}"].get("temperature")
        rho = mods[f"ML{k}"].get("density")
        assert (T is not None) == (5 <= k <= 7 or k == 12) and (rho is not None) == (8 <= k <= 10 or k == 12)
        if T:
            assert (T["T_start"], T["T_end"], T["T_amp"]) == (230.0, 500.0, 150.0)
            assert T["T_start"] - T["T_amp"] <= 230.0 and T["T_end"] + T["T_amp"] >= 500.0
        if rho:  # eq. 9 spans 0.992-1.499 g/cm³ (Table 1)
            assert rho["rho_start"] - rho["rho_amp"] == pytest.approx(0.992)
            assert rho["rho_end"] + rho["rho_amp"] == pytest.approx(1.499)
    for k in (13, 14, 15):
        v = md[f"ML{k}"]
        assert v["ensemble"] == "npt" and v["barostat"]["pressure"] == 1.01325 and v["temperature"] == 300.0
    assert mods["ML13"] == {}
    assert (mods["ML14"]["temperature"]["T_start"], mods["ML14"]["temperature"]["T_end"]) == (300.0, 500.0)
    assert (mods["ML15"]["temperature"]["T_start"], mods["ML15"]["temperature"]["T_end"]) == (200.0, 300.0)
    assert md["ML15"]["steps"] == 1_000_000 and md["ML15"]["sampling_rate"] == 100

    # every FIRE in the loop: fmax 0.5, a bounded path
    for name, v in bmim.items():
        if classes[name] == "GeometryOptimisation" and group(name).startswith("ML"):
            assert v["fmax"] == 0.5 and v["max_frames"] <= 100, name


def test_ml11_and_the_volume_scan(graph):
    bmim, stages, classes = graph
    box = bmim["bmim-bf4_ML11_PackBox"]
    assert box["density"] == 0.9 and box["n_configurations"] == 20 and box["count"] == [10, 10]
    # ML12's model is trained on the ML11 boxes: ML11 trains its own model, which ML12 starts from
    assert "nodes/bmim-bf4/ML11/TrainModel/model" in stages["bmim-bf4_ML12_MDSampling"]["deps"]
    scans = {n: v for n, v in bmim.items() if classes[n] == "VolumeScan"}
    assert len(scans) == 5 and all(group(n) == "ML13" for n in scans)
    assert all((v["start"], v["stop"], v["num"]) == (0.151, 1.661, 100) for v in scans.values())
    starts = sorted(v["data_id"] for n, v in bmim.items() if "ScanStart" in n)
    assert starts == [0, 1, 2, 3, 4]  # five different relaxed boxes
    assert bmim["bmim-bf4_ML13_ScanPick"]["n_configurations"] == 50
    # ML13 and ML14 start from the last relaxed box
    for k in (13, 14):
        assert "nodes/bmim-bf4/ML13/ScanStart4/frames.h5" in stages[f"bmim-bf4_ML{k}_MDSampling"]["deps"]


def test_ml16_ml17_and_the_final_models(graph):
    bmim, stages, classes = graph
    nod3 = "data/cp2k/b97-3c-nod3.yaml"
    for name in ("ML16_TrainDFT", "ML16_ValidationDFT", "ML16_TrainLabel", "ML16_ValidationLabel",
                 "ML17_TrainLabel", "ML17_ValidationLabel"):
        assert {nod3: None} in stages[f"bmim-bf4_{name}"]["params"], name  # the settings file is a params file
    for name in ("ML15_CP2KLabel", "ML13_ScanLabel", "ML11_PackedLabel"):
        assert {"data/cp2k/b97-3c.yaml": None} in stages[f"bmim-bf4_{name}"]["params"], name
    ml16 = bmim["bmim-bf4_ML16_MD0"]
    assert ml16["ensemble"] == "npt" and ml16["temperature"] == 300.0 and ml16["barostat"]["pressure"] == 1.01325
    assert ml16["checks"] == [] and ml16["modifiers"] == [] and ml16["d3"] == {}
    assert "nodes/bmim-bf4/ML16/GeoOpt/frames.h5" in stages["bmim-bf4_ML16_MD0"]["deps"]
    assert "nodes/bmim-bf4/ML16/ModelNoD3/model" in stages["bmim-bf4_ML16_MD0"]["deps"]  # the D3-free model
    assert "nodes/bmim-bf4/ML15/NextStart/frames.h5" in stages["bmim-bf4_ML16_GeoOpt"]["deps"]  # last intact
    # what ML16 hands on is screened like every other row's (its MD runs without checks)
    assert "nodes/bmim-bf4/ML16/MD0/frames.h5" in stages["bmim-bf4_ML16_NextStart"]["deps"]
    assert bmim["bmim-bf4_ML16_NextStart"]["screening"]["intact_molecules"] is True

    nvt, npt = bmim["bmim-bf4_ML17_MD0"], bmim["bmim-bf4_ML17_MD1"]
    assert nvt["ensemble"] == "nvt" and nvt["temperature"] == 500.0 and nvt["d3"] == {}
    assert "nodes/bmim-bf4/classical/GromacsSeed/frames.h5" in stages["bmim-bf4_ML17_MD0"]["deps"]  # 1.210 g/cm³
    assert npt["ensemble"] == "npt" and npt["temperature"] == 298.15 and npt["barostat"]["pressure"] == 1.01325
    assert npt["d3"] == {"functional": "b97-3c", "cutoff": 8.0}  # the hybrid MLP + D3(short)
    for k in (0, 1):
        assert "nodes/bmim-bf4/ML16/TrainModel/model" in stages[f"bmim-bf4_ML17_MD{k}"]["deps"]
    assert "nodes/bmim-bf4/ML11/PackBox/frames.h5" in stages["bmim-bf4_ML17_GeoOpt"]["deps"]  # 0.900 g/cm³
    assert "nodes/bmim-bf4/ML17/GeoOpt/frames.h5" in stages["bmim-bf4_ML17_MD1"]["deps"]

    # the report tests the D3-free models on the test set relabelled without D3
    report = bmim["bmim-bf4_report_CampaignReport"]
    assert report["no_d3_iterations"] == ["ML15-noD3", "ML16", "ML17"]
    assert {nod3: None} in stages["bmim-bf4_report_TestSetDFT"]["params"]
    assert report["iterations"] == ["classical", *[f"ML{k}" for k in range(16)], "ML15-noD3", "ML16", "ML17"]

    models = sorted(n for n in bmim if n.startswith("bmim-bf4_ML17_Model"))
    assert models == ["bmim-bf4_ML17_ModelDFT", "bmim-bf4_ML17_ModelDFT-D3-20", "bmim-bf4_ML17_ModelDFT-D3-8",
                      "bmim-bf4_ML17_ModelDFT-D3-8-long"]
    assert bmim["bmim-bf4_ML17_ModelDFT-D3-8-long"]["overrides"] == {"model": {"r_max": 7.93766}}
    assert bmim["bmim-bf4_ML17_TrainDFT-D3-8"]["cutoff"] == 8.0 and bmim["bmim-bf4_ML17_TrainDFT-D3-20"]["cutoff"] == 20


def test_exploration_uses_seed_2s_model(graph):
    bmim, stages, classes = graph
    assert bmim["bmim-bf4_exploration_TrainSubset"]["n_configurations"] == 200
    assert {"models/bmim_exploration.yaml": None} in stages["bmim-bf4_exploration_Model"]["params"]
    config = yaml.safe_load((REPO / "models/bmim_exploration.yaml").read_text())
    assert config["model"]["ensemble"] == "shallow" and config["model"]["n_members"] == 16
    assert config["training"]["energy_loss"]["kind"] == config["training"]["forces_loss"]["kind"] == "nll"
    runs = [n for n, c in classes.items() if n.startswith("bmim-bf4_exploration_") and c == "MDSampling"]
    assert len(runs) == 35
    assert all("nodes/bmim-bf4/exploration/Model/model" in stages[n]["deps"] for n in runs)


def test_candidates_are_screened_for_contacts_and_intact_molecules(graph):
    bmim, stages, classes = graph
    firsts = [n for n in bmim if n.endswith(("_MaxDistSelection", "_GeoOptPick", "_ValidationPick0",
                                             "_ValidationPick1", "_ScanPick"))]
    assert len(firsts) > 17
    for name in firsts:
        if group(name) == "ML0":  # ML0 picks from the labelled classical pool
            continue
        screening = bmim[name]["screening"]
        assert screening["min_distance_factor"] == 0.6, name
        if not name.endswith("_ScanPick"):  # rigid scans keep molecules by construction
            assert screening["intact_molecules"] is True, name
            assert "nodes/bmim-bf4/classical/GromacsSeed/frames.h5" in stages[name]["deps"], name


def smoke_campaign():
    from lotf.campaign import load_campaign

    return load_campaign(REPO / "campaigns" / "bmim_bf4.yaml", "smoke")


def test_smoke_profile_runs_every_kind_of_row():
    from stages import ionic_liquid

    rows = smoke_campaign().iterations
    kinds = {row.get("kind", "sampling") for row in rows}
    assert kinds == set(ionic_liquid.KINDS)
    sampling = [row["sampling"] for row in rows if "sampling" in row]
    sampling += [s["sampling"] for row in rows for s in row.get("options", {}).get("samplers", [])]
    modifier_kinds = {m["kind"] for s in sampling for m in s.get("modifiers", [])}
    assert modifier_kinds == {"temperature", "density"}
    assert {s["ensemble"] for s in sampling} == {"nvt", "npt"} and any(s.get("d3") for s in sampling)
    assert any(row.get("geo_opt") for row in rows)


@pytest.mark.parametrize("change, message", [
    ({"start": "volume-scan"}, "bmim_bf4.yaml: iterations ML13: unknown start 'volume-scan' (known: seed, previous"),
    ({"kind": "scan"}, "bmim_bf4.yaml: iterations ML13: unknown kind 'scan'"),
    ({"reference": "dft-d4"}, "bmim_bf4.yaml: iterations ML13: unknown reference 'dft-d4'"),
])
def test_unknown_row_values_fail_at_build_time(change, message):
    from stages import ionic_liquid
    from stages.common import BuildError

    campaign = smoke_campaign()
    rows = copy.deepcopy(campaign.iterations)
    next(r for r in rows if r["name"] == "ML13").update(change)
    campaign.sections["iterations"] = rows
    with pytest.raises(BuildError) as error:
        ionic_liquid.build(None, campaign)  # fails before any node is made
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unknown_start_of_a_sampler_and_of_a_water_row_fail():
    from lotf.campaign import load_campaign
    from stages import ionic_liquid, liquid_water
    from stages.common import BuildError, check_row

    campaign = load_campaign(REPO / "campaigns" / "bmim_bf4.yaml", "paper")
    rows = copy.deepcopy(campaign.iterations)
    rows[-1]["options"]["samplers"][1]["start"] = "geoopt"
    with pytest.raises(BuildError, match="bmim_bf4.yaml: iterations ML17 sampler 1: unknown start 'geoopt'"):
        ionic_liquid.check_rows(campaign, rows)
    row = load_campaign(REPO / "campaigns" / "water.yaml", "paper").iterations[0]
    with pytest.raises(BuildError, match="water iteration AL1: unknown start 'box'"):
        check_row("water", {**row, "start": "box"}, starts=liquid_water.STARTS)


def test_water_iterations_start_from_the_bootstrap_structure():
    """Water's rows say "start": "bootstrap": their MD starts from a bootstrapped structure (the
    B0 training picks), not from the Packmol box the bootstrap was made from."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if name.startswith("water_") and name.endswith("_MDSampling") and "_AL" in name:
            assert "nodes/water/bootstrap/B0Train/frames.h5" in stage["deps"], name
            assert "nodes/water/bootstrap/PackBox/frames.h5" not in stage["deps"], name
