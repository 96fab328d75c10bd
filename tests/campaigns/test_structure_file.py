"""Issue 14: a campaign file's system may be a structure file (``system.structure``) instead of
SMILES and counts, and the seed may be a trajectory file (``seed.kind: file``).

examples/emim_bf4.yaml with its system replaced by a 2-pair EMIM-BF4 box packed here: the graph
reads the box with LoadFrames (a DVC dependency), the xTB seed starts from it (no Packmol, no
SMILES), the production packs the file's molecules; bad inputs fail in one line at build time.
"""

import os
import subprocess
import sys
from pathlib import Path

import ase
import ase.io
import pytest
import yaml

from lotf.campaign import CampaignError, check_campaign, load_campaign
from tests.campaigns.test_build import REPO, lotf

EXAMPLE = REPO / "examples" / "emim_bf4.yaml"
SMILES_SYSTEM = """system:
  cation: {name: EMIM, smiles: "CC[n+]1ccn(C)c1"}
  anion: {name: BF4, smiles: "F[B-](F)(F)F"}
  pairs: 10
  packing_density: 0.900
"""
BOX = "data/emim_box.extxyz"


def emim_box(pairs: int = 2, seed: int = 3) -> ase.Atoms:
    """A small periodic EMIM-BF4 box (RDKit conformers packed by Packmol at 1.0 g/cm³)."""
    from lotf.reference import structures

    cation = structures.smiles_to_conformers("CC[n+]1ccn(C)c1", 1, seed=1)[0]
    anion = structures.smiles_to_conformers("F[B-](F)(F)F", 1, seed=1)[0]
    return structures.pack_box([cation, anion], [pairs, pairs], 1.0, seed=seed)


def campaign_text(system: str = f"system:\n  structure: {BOX}\n  packing_density: 0.900\n",
                  seed: dict | None = None) -> str:
    """The EMIM example with ``system`` replaced (and the keys a structure file replaces removed)."""
    text = EXAMPLE.read_text()
    assert SMILES_SYSTEM in text
    text = text.replace(SMILES_SYSTEM, system)
    if "structure:" in system:
        text = text.replace("  density: 1.25        # g/cm³, about the liquid's at 500 K\n", "")
        text = text.replace("    system: {pairs: 4}\n", "")
    for key, value in (seed or {}).items():
        text = text.replace("seed:\n  kind: xtb ", f"seed:\n  {key}: {value}\n  kind: xtb ", 1)
    return text


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path with the box in data/ and the project's templates and settings beside it."""
    (tmp_path / "data").mkdir()
    ase.io.write(tmp_path / BOX, emim_box())
    os.symlink(REPO / "models", tmp_path / "models")  # the settings the example names, for check_campaign
    os.symlink(REPO / "data" / "cp2k", tmp_path / "data" / "cp2k")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def checked(path: Path, profile: str = "smoke"):
    """Load, run lotf's build-time checks and the template's, as ``lotf build`` does."""
    from stages import ionic_liquid

    campaign = load_campaign(path, profile)
    check_campaign(campaign, path.parent)
    ionic_liquid.check(campaign)
    return campaign


def one_line_error(path: Path, profile: str = "smoke") -> str:
    from stages.common import BuildError

    with pytest.raises((CampaignError, BuildError)) as error:
        checked(path, profile)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


def init(workdir: Path, text: str, name: str = "emim_box.yaml") -> Path:
    config = write(workdir / name, text)
    project = workdir / "project"
    run = lotf("init", str(project), "--config", str(config), cwd=workdir)
    assert run.returncode == 0, run.stderr
    return project


def test_the_xtb_seed_starts_from_the_structure_file(workdir):
    project = init(workdir, campaign_text())
    assert (project / BOX).read_bytes() == (workdir / BOX).read_bytes()  # an input of the project, copied
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    structure = stages["emim-bf4_classical_Structure"]
    assert "lotf.nodes.frames.LoadFrames" in structure["cmd"] and BOX in structure["deps"]  # tracked by DVC

    seed = stages["emim-bf4_classical_XTBStructureSeed"]
    assert "lotf.nodes.seed.XTBStructureSeed" in seed["cmd"]
    assert "nodes/emim-bf4/classical/Structure/frames.h5" in seed["deps"]  # the seed reads the file's box
    assert params["emim-bf4_classical_XTBStructureSeed"] == {
        "charge": 0, "data_id": -1, "interval": 20, "method": "GFN1-xTB", "n_steps": 200, "seed": 42,
        "temperature": 500.0, "timestep": 0.5}
    assert not any("XTBSeed" in name or "SmilesConformers" in s["cmd"] or "PackBox" in s["cmd"] and "classical" in name
                   for name, s in stages.items())  # no SMILES, no Packmol seed box
    # the labels, the screening and the first MD all start from the seed's frames
    seed_frames = "nodes/emim-bf4/classical/XTBStructureSeed/frames.h5"
    assert any(seed_frames in s.get("deps", []) for n, s in stages.items() if n.startswith("emim-bf4_ML1_"))
    # the production packs the file's molecules (bond graph, named by formula): 2 pairs in the file
    for formula in ("C6H11N2", "BF4"):
        assert params[f"emim-bf4_production_{formula}"] == {"data_id": -1, "formula": formula, "n_molecules": 2}
        assert "nodes/emim-bf4/classical/Structure/frames.h5" in stages[f"emim-bf4_production_{formula}"]["deps"]
    assert params["emim-bf4_production_nvt-4_Box4"]["count"] == [4, 4]  # production.sizes, not the file's size


def test_a_pdb_box_and_a_trajectory_seed(workdir):
    ase.io.write(workdir / "data" / "emim_box.pdb", emim_box())
    frames = [emim_box(seed=k) for k in range(3)]
    ase.io.write(workdir / "data" / "seed.extxyz", frames)
    text = campaign_text(system="system:\n  structure: data/emim_box.pdb\n  packing_density: 0.900\n")
    text = text.replace("seed:\n  kind: xtb ", "seed:\n  path: data/seed.extxyz\n  kind: file ", 1)
    campaign = checked(write(workdir / "pdb.yaml", text))
    assert campaign["seed"]["kind"] == "file"
    project = init(workdir, text, "pdb.yaml")
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    seed = stages["emim-bf4_classical_SeedFrames"]
    assert "lotf.nodes.frames.LoadFrames" in seed["cmd"] and "data/seed.extxyz" in seed["deps"]
    assert not any("XTB" in name for name in stages)
    labelled = [s for n, s in stages.items() if n.startswith("emim-bf4_classical_") and
                "nodes/emim-bf4/classical/SeedFrames/frames.h5" in s.get("deps", [])]
    assert labelled  # the seed frames are labelled by the reference


def test_a_trajectory_seed_with_a_smiles_system(workdir):
    ase.io.write(workdir / "data" / "seed.extxyz", [emim_box(pairs=4)])
    text = EXAMPLE.read_text().replace("seed:\n  kind: xtb ", "seed:\n  path: data/seed.extxyz\n  kind: file ", 1)
    campaign = checked(write(workdir / "smiles.yaml", text))
    from stages.ionic_liquid import _pairs

    assert _pairs(campaign) == 4 and campaign["seed"]["path"] == "data/seed.extxyz"


def no_cell(path: Path) -> None:
    box = emim_box()
    box.cell, box.pbc = None, False
    ase.io.write(path, box, format="xyz")


@pytest.mark.parametrize("change, message", [
    (lambda d: None, "system: structure file not found: data/missing.xyz"),
    (lambda d: no_cell(d / "data" / "missing.xyz"),
     "system: structure file data/missing.xyz: the cell is missing (a periodic box needs its cell vectors"),
    (lambda d: (d / "data" / "missing.xyz").write_text("this is not\na structure\n"),
     "system: structure file data/missing.xyz: cannot read structures: "),
])
def test_a_bad_structure_file_fails_in_one_line(workdir, change, message):
    change(workdir)
    text = campaign_text(system="system:\n  structure: data/missing.xyz\n  packing_density: 0.900\n")
    assert one_line_error(write(workdir / "bad.yaml", text)).startswith(message)


@pytest.mark.parametrize("system, message", [
    (f"system:\n  structure: {BOX}\n  cation: {{name: EMIM, smiles: C}}\n  packing_density: 0.9\n",
     "system: 'cation' and 'structure' exclude each other (the box, its molecules and their counts come from"),
    (f"system:\n  structure: {BOX}\n  pairs: 4\n  packing_density: 0.9\n", "system: 'pairs' and 'structure' exclude"),
    (f"system:\n  structure: {BOX}\n  molecules: 4\n  packing_density: 0.9\n", "system: 'molecules' and 'structure' "),
    (f"system:\n  structure: {BOX}\n  packing_density: 0.9\n  strcture: x\n", "system: unknown key 'strcture' (known: "
                                                                              "structure, cation, anion,"),
])
def test_structure_and_smiles_or_counts_together_fail_in_one_line(workdir, system, message):
    path = write(workdir / "both.yaml", campaign_text(system=system))
    assert one_line_error(path, "paper").startswith(message)


def test_the_smoke_profile_setting_pairs_on_a_structure_file_fails(workdir):
    path = write(workdir / "pairs.yaml", campaign_text().replace("  smoke:\n", "  smoke:\n    system: {pairs: 4}\n"))
    load_campaign(path, "paper")
    with pytest.raises(CampaignError) as error:
        load_campaign(path, "smoke")
    assert str(error.value).startswith(f"{path} (smoke): system: 'pairs' and 'structure' exclude each other")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("seed:\n  kind: xtb ", "seed:\n  density: 1.2\n  kind: xtb ", 1),
     f"seed: 'density' is not used with system.structure (the seed starts from the box of {BOX}); remove it"),
    (lambda t: t.replace("seed:\n  kind: xtb ", "seed:\n  topologies: []\n  density: 1.2\n  kind: gromacs ", 1),
     "seed: kind gromacs packs its own box from system.cation and system.anion; with system.structure use kind "
     "xtb or file"),
    (lambda t: t.replace("\"com:C6H11N2\"]", "\"com:C8H15N2\"]"),
     "production diffusion_groups: 'com:C8H15N2' names no molecule of data/emim_box.extxyz "
     "(found C6H11N2 x 2, BF4 x 2)"),
    (lambda t: t.replace("seed:\n  kind: xtb ", "seed:\n  kind: file ", 1),
     "seed: missing key 'path' (template ionic_liquid)"),
    (lambda t: t.replace("seed:\n  kind: xtb ", "seed:\n  path: data/nothere.extxyz\n  kind: file ", 1),
     "seed: path file not found: data/nothere.extxyz"),
])
def test_what_a_structure_file_replaces_fails_in_one_line_when_given(workdir, edit, message):
    text = edit(campaign_text())
    assert one_line_error(write(workdir / "keys.yaml", text), "paper") == message


def test_a_structure_file_needs_two_ions_in_equal_numbers(workdir):
    box = emim_box()
    del box[-5:]  # one BF4 less
    ase.io.write(workdir / "data" / "odd.extxyz", box)
    text = campaign_text(system="system:\n  structure: data/odd.extxyz\n  packing_density: 0.900\n")
    assert one_line_error(write(workdir / "odd.yaml", text)) == (
        "system: structure file data/odd.extxyz: the ionic_liquid template needs two species (cation and anion) "
        "in equal numbers, found C6H11N2 x 2, BF4 x 1 (bond graph)")


def test_lotf_init_names_the_file_and_the_missing_cell_in_one_line(workdir):
    no_cell(workdir / "data" / "flat.xyz")
    config = write(workdir / "flat.yaml", campaign_text(system="system:\n  structure: data/flat.xyz\n"
                                                               "  packing_density: 0.900\n"))
    run = lotf("init", str(workdir / "project"), "--config", str(config), cwd=workdir)
    assert run.returncode != 0 and run.stderr.strip().count("\n") == 0, run.stderr
    assert "flat.yaml: system: structure file data/flat.xyz: the cell is missing" in run.stderr


def test_the_schema_rejects_structure_with_smiles_for_standard_validators_too():
    jsonschema = pytest.importorskip("jsonschema")
    from lotf.campaign import schema

    validator = jsonschema.Draft202012Validator(schema())
    good = yaml.safe_load(campaign_text())
    assert not list(validator.iter_errors(good))
    bad = yaml.safe_load(campaign_text(system=f"system:\n  structure: {BOX}\n  pairs: 4\n"))
    assert list(validator.iter_errors(bad))


@pytest.mark.slow  # lotf init, then dvc repro of the box and a 20-step GFN1-xTB seed of 48 atoms (~1 min)
def test_the_seed_of_a_structure_file_campaign_runs(workdir):
    text = campaign_text().replace("    seed: {steps: 200, interval: 20,", "    seed: {steps: 20, interval: 10,")
    project = init(workdir, text)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["dvc", "repro", "emim-bf4_classical_XTBStructureSeed"], cwd=project, capture_output=True,
                         text=True, env=env)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
    import znh5md

    frames = znh5md.IO(str(project / "nodes/emim-bf4/classical/XTBStructureSeed/frames.h5"))[:]
    box = ase.io.read(project / BOX)
    assert len(frames) == 2 and frames[0].info["step"] == 10
    assert frames[0].get_chemical_symbols() == box.get_chemical_symbols()  # the file's atoms, in its order
    assert frames[0].cell.cellpar() == pytest.approx(box.cell.cellpar())  # and its box: NVT, no packing
    assert frames[0].get_forces().shape == (len(box), 3)


def test_xtb_seed_from_needs_a_periodic_box_and_an_even_electron_count():
    from lotf.reference.xtb import xtb_seed_from

    box = emim_box(pairs=1)
    flat = box.copy()
    flat.pbc = False
    with pytest.raises(ValueError, match="needs a periodic cell"):
        xtb_seed_from(flat, 300.0, 10)
    with pytest.raises(ValueError, match="101 electrons at total charge 1: radicals are not supported"):
        xtb_seed_from(box, 300.0, 10, charge=1)
    from lotf.reference.structures import split_molecules, species

    assert species(box) == {"C6H11N2": 1, "BF4": 1}
    assert [len(m) for m in split_molecules(box)] == [19, 5] and not any(m.pbc.any() for m in split_molecules(box))


def test_the_water_template_refuses_a_structure_file_in_one_line(workdir):
    from stages import liquid_water
    from stages.common import BuildError

    text = (REPO / "campaigns" / "water.yaml").read_text()
    system = "system:\n  molecule: {name: Water, smiles: \"O\"}\n  molecules: 32        # in the bootstrap box\n  density: 0.997       # g/cm³ (Packmol)\n"
    assert system in text
    path = write(workdir / "water_box.yaml", text.replace(system, f"system:\n  structure: {BOX}\n"))
    campaign = load_campaign(path, "paper")
    with pytest.raises(BuildError) as error:
        liquid_water.check(campaign)
    assert "\n" not in str(error.value)
    assert str(error.value) == (f"{path}: system: 'structure' is not supported by the liquid_water template "
                                "(it packs 'molecules' copies of 'molecule' at 'density'); use those keys")
