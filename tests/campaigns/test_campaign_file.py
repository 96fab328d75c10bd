"""Campaign files (lotf.campaign): the committed campaigns build the graphs of before, every unknown
key or value fails in one line naming the file, the row and the key, the shipped JSON Schema
accepts the shipped files, and a new ionic liquid (examples/emim_bf4.yaml) builds without Python.

The snapshots in snapshots/ are the smoke and oracle graphs (parameters, stage commands and
dependencies) that stages/bmim_bf4.py and stages/water.py built before the campaign files
existed; the paper graph is the committed one (test_build.py).
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from lotf.campaign import SCHEMA_FILE, CampaignError, check_campaign, load_campaign, profiles, read
from tests.campaigns.test_build import REPO, fresh_project, lotf

SHIPPED = [REPO / "campaigns" / "bmim_bf4.yaml", REPO / "campaigns" / "water.yaml", REPO / "examples" / "emim_bf4.yaml"]
SNAPSHOTS = Path(__file__).with_name("snapshots")


def graph(project: Path) -> dict:
    """What a build wrote, in the snapshots' form."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    summary = {"params": params,
               "stages": {name: {"cmd": s["cmd"], "deps": sorted(s.get("deps", []))} for name, s in stages.items()}}
    return json.loads(json.dumps(summary, sort_keys=True, ensure_ascii=False))


@pytest.mark.parametrize("campaign, profile", [("bmim_bf4", "smoke"), ("water", "smoke"), ("water", "oracle")])
def test_campaign_files_build_the_graphs_of_the_python_campaigns(tmp_path, campaign, profile):
    run = lotf("build", campaign, "--profile", profile, "--out", str(tmp_path / "p"), cwd=REPO)
    assert run.returncode == 0, run.stderr
    before = json.loads((SNAPSHOTS / f"{campaign}-{profile}.json").read_text())
    after = graph(tmp_path / "p")
    assert sorted(after["stages"]) == sorted(before["stages"])
    for name in before["params"]:
        assert after["params"][name] == before["params"][name], name
    assert after == before


def edited(tmp_path: Path, old: str, new: str, source: Path = SHIPPED[0]) -> Path:
    """A copy of a shipped campaign file with one text change (given relative to the project)."""
    text = source.read_text()
    assert text.count(old) >= 1, old
    path = tmp_path / source.name
    path.write_text(text.replace(old, new, 1))
    return path


def error_of(path: Path, profile: str = "paper") -> str:
    with pytest.raises(CampaignError) as error:
        load_campaign(path, profile)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


def test_a_typo_in_a_row_key_names_the_file_the_row_and_the_key(tmp_path):
    path = edited(tmp_path, "{name: ML7, start: previous, sampling: {<<: *nvt, modifiers: [*t_ramp]}, geo_opt: true, "
                            "n_select: 50", "{name: ML7, start: previous, sampling: {<<: *nvt, modifiers: [*t_ramp]}, "
                                            "geo_opt: true, n_selct: 50")
    message = error_of(path, "smoke")  # ML7 is not in the smoke table: the whole file is checked
    assert message.startswith("iterations ML7: unknown key 'n_selct' (known: name, kind, start, sampling, ")

    run = lotf("build", "--config", str(path), "--profile", "smoke", "--out", str(tmp_path / "out"), cwd=REPO)
    assert run.returncode != 0 and run.stderr.strip().count("\n") == 0, run.stderr
    assert f"error: {path}: iterations ML7: unknown key 'n_selct'" in run.stderr
    assert not (tmp_path / "out" / "dvc.yaml").exists()


@pytest.mark.parametrize("old, new, message", [
    ("\nsystem:\n", "\nsytem:\n", "unknown key 'sytem' (known: campaign, template, group,"),
    ("template: ionic_liquid", "template: ionic_liquids",
     "unknown template 'ionic_liquids' (known: ionic_liquid, liquid_water)"),
    ("  kind: gromacs\n", "  kind: gromcs\n", "seed: unknown kind 'gromcs' (known: gromacs, xtb, bootstrap, file)"),
    ("  pairs: 10 ", "  pairs: ten ", "system: 'pairs' must be integer, got 'ten'"),
    ("options: {boxes: 5, points: 100,", "options: {boxes: 5, point: 100,",
     "iterations ML13 options: unknown key 'point' (known: density,"),
    ("sampling: {<<: *nvt, temperature: 500.0,", "sampling: {<<: *nvt, temprature: 500.0,",
     "iterations ML17 options samplers 0 sampling: unknown key 'temprature'"),
    ("      only: [ML11, ML12, ML13, ML17]", "      only: [ML11, ML12, ML13, ML71]",
     "profiles smoke iterations: unknown row 'ML71' (known: ML1, ML2,"),
    ("    geo_opt: {max_steps: 100}", "    geo_opt: {max_step: 100}",
     "profiles smoke geo_opt: unknown key 'max_step' (known: fmax, max_steps, max_frames)"),
])
def test_unknown_keys_and_values_fail_in_one_line(tmp_path, old, new, message):
    assert message in error_of(edited(tmp_path, old, new), "smoke")


def test_unknown_profile_and_template_checks_name_the_file(tmp_path):
    assert error_of(SHIPPED[1], "huge") == "unknown profile 'huge' (known: paper, smoke, oracle, validation)"
    assert profiles(SHIPPED[1]) == ["paper", "smoke", "oracle", "validation"]
    from stages import ionic_liquid
    from stages.common import BuildError

    campaign = load_campaign(edited(tmp_path, "  model: DFT-D3-8\n", "  model: DFT-D3-9\n"), "paper")
    with pytest.raises(BuildError, match=r"bmim_bf4.yaml: production: unknown model 'DFT-D3-9' \(known: DFT, "):
        ionic_liquid.check(campaign)
    campaign = load_campaign(edited(tmp_path, "{name: ML2, start: previous", "{name: ML2, start: prevous"), "paper")
    with pytest.raises(BuildError, match="bmim_bf4.yaml: iterations ML2: unknown start 'prevous'"):
        ionic_liquid.check(campaign)


def test_a_missing_input_file_fails_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = edited(tmp_path, "cp2k_no_d3: data/cp2k/b97-3c-nod3.yaml", "cp2k_no_d3: data/cp2k/b97-3c-no-d3.yaml")
    with pytest.raises(CampaignError, match=r"bmim_bf4.yaml: reference: cp2k_no_d3 file not found: "
                                            r"data/cp2k/b97-3c-no-d3.yaml$"):
        check_campaign(load_campaign(path))


@pytest.mark.skipif(shutil.which("cp2k.psmp") is None, reason="the CP2K element check reads CP2K's data files")
def test_a_dft_reference_without_an_element_of_the_system_fails_at_build_time(tmp_path, monkeypatch):
    from lotf.reference import cp2k

    if not hasattr(cp2k, "check_elements") or not cp2k.cp2k_data_dirs():
        pytest.skip("no CP2K element check here (older lotf, or CP2K's data files missing)")
    monkeypatch.chdir(REPO)
    path = edited(tmp_path, 'anion: {name: BF4, smiles: "F[B-](F)(F)F"', 'anion: {name: XeF, smiles: "F[Xe-]"',
                  SHIPPED[2])
    with pytest.raises(CampaignError, match=r"emim_bf4.yaml: reference cp2k: .*element Xe"):
        check_campaign(load_campaign(path, "paper"))
    check_campaign(load_campaign(path, "smoke"))  # xTB knows every element


def test_the_schema_is_json_schema_and_accepts_the_shipped_files():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in SHIPPED:
        data = yaml.safe_load(path.read_text())
        assert not list(validator.iter_errors(data)), path
        read(path)  # and lotf's own check of the same schema
        for profile in profiles(path):
            load_campaign(path, profile)
    bad = yaml.safe_load(SHIPPED[0].read_text())
    bad["iterations"][6]["n_selct"] = bad["iterations"][6].pop("n_select")
    assert list(validator.iter_errors(bad))  # the standard validator rejects the typo too


def test_the_schema_ships_with_the_package_and_every_key_is_documented():
    assert SCHEMA_FILE.parent == REPO / "lotf" and SCHEMA_FILE.is_file()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'packages = \["lotf"\]', pyproject)  # hatch packs every file of lotf/
    schema = json.loads(SCHEMA_FILE.read_text())
    sections = {k: v for k, v in schema["$defs"].items() if k.startswith("section_")}
    assert {k[len("section_"):] for k in sections} <= set(schema["properties"])


def test_the_schema_rows_have_exactly_the_row_keys_of_stages_common():
    from stages.common import ROW_KEYS

    schema = json.loads(SCHEMA_FILE.read_text())
    assert set(schema["$defs"]["row"]["properties"]) == ROW_KEYS


def test_the_campaign_files_hold_the_bmim_specifics():
    campaign = load_campaign(SHIPPED[0])
    assert campaign.group == "bmim-bf4" and campaign.template == "ionic_liquid"
    assert campaign["system"]["cation"] == {"name": "BMIM", "smiles": "CCCCn1cc[n+](C)c1", "gromacs": "bmim"}
    assert campaign["seed"]["density"] == 1.210 and campaign["seed"]["temperature"] == 500.0
    assert [row["name"] for row in campaign.iterations] == [f"ML{k}" for k in range(1, 18)]
    source = (REPO / "stages" / "ionic_liquid.py").read_text()
    for specific in ("CCCCn1cc", "bmim_bf4_density", "1.210", "0.900", "com:BF4", "C8H15N2", "b97-3c.yaml"):
        assert specific not in source, specific


def test_a_new_ionic_liquid_builds_from_its_campaign_file(tmp_path):
    run = lotf("build", "--config", str(SHIPPED[2]), "--profile", "smoke", "--out", str(tmp_path / "emim"), cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "built emim_bf4 (smoke)" in run.stdout
    stages = yaml.safe_load((tmp_path / "emim" / "dvc.yaml").read_text())["stages"]
    assert "emim-bf4_classical_XTBSeed" in stages and "emim-bf4_production_EMIM" in stages
    iterations = sorted({name.split("_")[1] for name in stages if re.match(r"emim-bf4_ML[1-9]", name)})
    assert iterations == ["ML1", "ML3"]  # the smoke profile's two sampling iterations
    deps = {d for stage in stages.values() for d in stage.get("deps", [])}
    assert not any("bmim" in d and "smoke" not in d for d in deps), "no BMIM input in the EMIM graph"
    params = yaml.safe_load((tmp_path / "emim" / "params.yaml").read_text())
    assert params["emim-bf4_classical_XTBSeed"]["smiles"] == ["CC[n+]1ccn(C)c1", "F[B-](F)(F)F"]
    assert params["emim-bf4_classical_XTBSeed"]["count"] == [4, 4]


def test_init_creates_a_project_around_a_campaign_file(tmp_path):
    run = lotf("init", str(tmp_path / "emim"), "--config", str(SHIPPED[2]), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    project = tmp_path / "emim"
    for path in (".git", ".dvc", "dvc.yaml", "params.yaml", "campaigns/emim_bf4.yaml", "stages/ionic_liquid.py",
                 "models/smoke.yaml", "data/cp2k/test-xtb-bmim-smoke.yaml", "data/cp2k/b97-3c.yaml"):
        assert (project / path).exists(), path
    assert not (project / "data" / "opls").exists()  # only the files the campaign file names
    assert "emim-bf4_ML3_TrainModel:" in (project / "dvc.yaml").read_text()
    again = lotf("init", str(project), "--config", str(SHIPPED[2]), cwd=tmp_path)
    assert again.returncode != 0 and "not empty" in again.stderr and again.stderr.strip().count("\n") == 0


def test_config_builds_are_guarded_like_names(tmp_path):
    from lotf.build import BuildRefused, check_target

    with pytest.raises(BuildRefused, match="use --out DIR"):
        check_target(REPO, ["campaigns/bmim_bf4.yaml"], "paper")
    project = fresh_project(tmp_path / "p")
    run = lotf("build", "--config", "campaigns/water.yaml", "--profile", "smoke", cwd=project)
    assert run.returncode == 0, run.stderr  # nothing committed there
    assert "water_erbs_AL1_MDSampling:" in (project / "dvc.yaml").read_text()
