"""CP2K KINDs made from a basis and a potential family (force_eval/subsys/kinds_from)."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import molecule

from lotf.reference.cp2k import (
    CP2KSetupError,
    check_elements,
    cp2k_data_dirs,
    load_settings,
    render_input,
    single_point,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "cp2k"

pytestmark = pytest.mark.skipif(
    not any((d / "GTH_BASIS_SETS").is_file() for d in cp2k_data_dirs()),
    reason="CP2K data files (GTH_BASIS_SETS) not installed",
)

# The KINDs data/cp2k/b97-3c.yaml and b97-3c-nod3.yaml listed by hand before kinds_from.
HAND_WRITTEN = {
    "H": {"basis_set": "TZVP-GTH-q1", "potential": "GTH-PBE-q1"},
    "B": {"basis_set": "TZVP-GTH-q3", "potential": "GTH-PBE-q3"},
    "C": {"basis_set": "TZVP-GTH-q4", "potential": "GTH-PBE-q4"},
    "N": {"basis_set": "TZVP-GTH-q5", "potential": "GTH-PBE-q5"},
    "O": {"basis_set": "TZVP-GTH-q6", "potential": "GTH-PBE-q6"},
    "F": {"basis_set": "TZVP-GTH-q7", "potential": "GTH-PBE-q7"},
}


def bmim_bf4_like() -> Atoms:
    """The atoms of one BMIM-BF4 ion pair (C8H15N2 BF4) at random places in a periodic box."""
    symbols = "C8H15N2BF4"
    n = len(Atoms(symbols))
    rng = np.random.default_rng(0)
    return Atoms(symbols, positions=rng.uniform(0, 12, (n, 3)), cell=[12.0] * 3, pbc=True)


def water_box() -> Atoms:
    atoms = molecule("H2O", cell=[8.0] * 3, pbc=True)
    atoms.center()
    return atoms


def without_kinds(text: str, symbols: set[str]) -> str:
    """``text`` without the KIND sections of elements not in ``symbols``."""
    def drop(m: re.Match) -> str:
        return m.group(0) if m.group(1) in symbols else ""
    return re.sub(r"^[ \t]*&KIND (\w+)\n.*?&END KIND\n", drop, text, flags=re.M | re.S)


def kind_blocks(text: str) -> dict[str, str]:
    return dict(re.findall(r"^[ \t]*&KIND (\w+)\n(.*?)&END KIND", text, flags=re.M | re.S))


def family_tree(**kinds_from) -> dict:
    tree = yaml.safe_load((DATA / "b97-3c.yaml").read_text())
    tree["force_eval"]["subsys"] = {"kinds_from": kinds_from}
    return tree


def write_settings(tmp_path: Path, tree: dict, name: str = "family.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


# --------------------------------------------------------------------------------------------
# generated KINDs render like the hand-written ones


@pytest.mark.parametrize("name", ["b97-3c.yaml", "b97-3c-nod3.yaml"])
@pytest.mark.parametrize("frame", [bmim_bf4_like, water_box, lambda: molecule("H2O")],
                         ids=["bmim-bf4", "water-box", "water-molecule"])
def test_generated_kinds_render_like_the_hand_written_ones(name, frame):
    atoms = frame()
    family = load_settings(DATA / name)
    assert family.kinds_from() == {"basis_set": "TZVP-GTH", "potential": "GTH-PBE"}
    explicit_tree = copy.deepcopy(family.tree)
    explicit_tree["force_eval"]["subsys"] = {"kind": copy.deepcopy(HAND_WRITTEN)}
    explicit = render_input(load_settings(explicit_tree), atoms)
    generated = render_input(family, atoms)

    present = set(atoms.get_chemical_symbols())
    assert set(kind_blocks(generated)) == present  # one KIND per element present, no more
    assert "KINDS_FROM" not in generated.upper()
    # the same text as the hand-written settings, less their KINDs of elements not present
    assert generated == without_kinds(explicit, present)
    assert kind_blocks(explicit)["H"] in generated


def test_schema_check_without_elements_renders_no_kinds():
    """label_frames checks the keywords with template(periodic) before knowing the elements."""
    text, _, _ = load_settings(DATA / "b97-3c.yaml").template(True)
    assert "&KIND" not in text and "KINDS_FROM" not in text.upper()


# --------------------------------------------------------------------------------------------
# explicit KINDs win


@pytest.mark.parametrize("form", ["simplified", "canonical"])
def test_explicit_kind_wins(form):
    tree = family_tree(basis_set="TZVP-GTH", potential="GTH-PBE")
    o_kind = {"basis_set": "DZVP-GTH-q6", "potential": "GTH-PBE-q6"}
    tree["force_eval"]["subsys"]["kind"] = ({"O": o_kind} if form == "simplified"
                                            else [{"_": "O", **o_kind}])
    settings = load_settings(tree)
    settings.check_elements(["H", "O"])
    assert settings.generated_kinds(["H", "O"]) == {"H": HAND_WRITTEN["H"]}
    blocks = kind_blocks(render_input(settings, water_box()))
    assert set(blocks) == {"H", "O"}
    assert "BASIS_SET DZVP-GTH-q6" in blocks["O"]
    assert "BASIS_SET TZVP-GTH-q1" in blocks["H"] and "POTENTIAL GTH-PBE-q1" in blocks["H"]


# --------------------------------------------------------------------------------------------
# failures: one line naming the file and the element


def test_element_the_family_lacks_fails_naming_it():
    path = str(DATA / "b97-3c.yaml")
    with pytest.raises(CP2KSetupError) as err:
        check_elements(path, ["H", "C", "Xe"])
    msg = str(err.value)
    assert msg == f"{path}: element Xe: no TZVP-GTH basis for valence q8 in GTH_BASIS_SETS"
    check_elements(path, ["H", "B", "C", "N", "O", "F", "Na"])  # TZVP-GTH-q9 and GTH-PBE-q9 exist
    # label_frames passes where each element was first seen
    with pytest.raises(CP2KSetupError, match=r"element Xe \(frame 3\): no TZVP-GTH basis"):
        load_settings(path).check_elements(["Xe", "H"], where={"Xe": "frame 3"})
    # the same error when a structure with it is rendered
    with pytest.raises(CP2KSetupError, match="element Xe: no TZVP-GTH basis"):
        render_input(load_settings(path), Atoms("HXe", positions=[[0, 0, 0], [0, 0, 2.0]]))


@pytest.mark.parametrize("families, expected", [
    ({"basis_set": "TZVP-NOPE", "potential": "GTH-PBE"},
     "element H: no TZVP-NOPE basis for valence q1 in GTH_BASIS_SETS"),
    ({"basis_set": "TZVP-GTH", "potential": "GTH-NOPE"},
     "element H: no GTH-NOPE potential in GTH_POTENTIALS"),
])
def test_unknown_family_fails_naming_element_and_file(tmp_path, families, expected):
    path = write_settings(tmp_path, family_tree(**families))
    with pytest.raises(CP2KSetupError) as err:
        check_elements(path, ["O", "H"])
    assert str(err.value) == f"{path}: {expected}"


def test_explicit_settings_lacking_an_element_fail_naming_it():
    path = DATA / "revpbe0-d3-water.yaml"  # explicit H and O only
    check_elements(path, ["H", "O"])
    with pytest.raises(CP2KSetupError, match=rf"^{re.escape(str(path))}: no KIND for element C$"):
        check_elements(path, ["O", "C", "H"])


@pytest.mark.parametrize("kinds_from, expected", [
    ({"basis": "TZVP-GTH", "potential": "GTH-PBE"}, "unknown key 'basis' (expected basis_set and potential)"),
    ({"basis_set": "TZVP-GTH"}, "needs potential"),
    ({"basis_set": ["TZVP-GTH"], "potential": "GTH-PBE"}, "basis_set must be one family name"),
    ("TZVP-GTH", "must be a mapping"),
])
def test_bad_kinds_from_fails_in_one_line(tmp_path, kinds_from, expected):
    tree = family_tree()
    tree["force_eval"]["subsys"]["kinds_from"] = kinds_from
    path = write_settings(tmp_path, tree)
    with pytest.raises(CP2KSetupError) as err:
        load_settings(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: force_eval/subsys/kinds_from") and expected in msg
    assert "\n" not in msg


def test_xtb_settings_accept_any_element(tmp_path):
    for name in ("test-xtb.yaml", "test-xtb-bmim-smoke.yaml"):
        check_elements(DATA / name, ["H", "C", "Xe", "U"])
    tree = yaml.safe_load((DATA / "test-xtb.yaml").read_text())
    tree["force_eval"]["subsys"] = {"kinds_from": {"basis_set": "TZVP-GTH", "potential": "GTH-PBE"}}
    with pytest.raises(CP2KSetupError, match="kinds_from is for basis-set methods"):
        load_settings(write_settings(tmp_path, tree))


# --------------------------------------------------------------------------------------------
# the matching rule, on small data files next to the settings


BASIS = """\
# made-up entries for the rule
Cu DZ-X-q11 DZ-X
 1
Cu DZ-X-q19
 1
Zn SZ-Y
 1
Ga DZ-X-q3 DZ-X
 1
"""
POTENTIAL = """\
Cu P-X-q11 P-X
 1 2 3
Cu P-X-q19
 1 2 3
Zn P-X-q12
 1 2 3
Zn P-X-q20
 1 2 3
Ga P-X-q13
 1 2 3
"""


@pytest.mark.parametrize("potential, element, expected", [
    ("P-X", "Cu", {"basis_set": "DZ-X-q11", "potential": "P-X-q11"}),  # the alias picks q11
    ("P-X-q19", "Cu", {"basis_set": "DZ-X-q19", "potential": "P-X-q19"}),  # q from the name
    ("P-X", "Zn", "several P-X potentials (P-X-q12, P-X-q20) and none is the alias P-X"),
    ("P-X", "Ga", "no DZ-X basis for valence q13"),  # DZ-X exists, but made for q3
])
def test_matching_rule(tmp_path, potential, element, expected):
    (tmp_path / "BASIS").write_text(BASIS)
    (tmp_path / "POT").write_text(POTENTIAL)
    tree = family_tree(basis_set="DZ-X", potential=potential)
    tree["force_eval"]["dft"].update(basis_set_file_name="BASIS", potential_file_name="POT")
    settings = load_settings(write_settings(tmp_path, tree))
    if isinstance(expected, dict):
        assert settings.family_kind(element) == expected
    else:
        with pytest.raises(CP2KSetupError, match=f"element {element}: {re.escape(expected)} in "):
            settings.family_kind(element)


# --------------------------------------------------------------------------------------------
# real CP2K accepts generated KINDs


@pytest.mark.skipif(shutil.which("cp2k.psmp") is None, reason="cp2k.psmp not installed")
def test_cp2k_single_point_with_generated_kinds():
    """Water with SZV-GTH/GTH-PBE from the families gives the energy of the hand-written KINDs."""
    tree = yaml.safe_load((DATA / "test-pbe-szv.yaml").read_text())
    tree["force_eval"]["dft"]["basis_set_file_name"] = "GTH_BASIS_SETS"
    tree["force_eval"]["dft"]["scf"]["scf_guess"] = "atomic"
    explicit = copy.deepcopy(tree)
    tree["force_eval"]["subsys"] = {"kinds_from": {"basis_set": "SZV-GTH", "potential": "GTH-PBE"}}
    explicit["force_eval"]["subsys"] = {"kind": {
        "H": {"basis_set": "SZV-GTH-q1", "potential": "GTH-PBE-q1"},
        "O": {"basis_set": "SZV-GTH-q6", "potential": "GTH-PBE-q6"},
    }}
    atoms = molecule("H2O", cell=[5.0] * 3, pbc=True)
    atoms.center()
    atoms.rattle(0.05, seed=1)
    ours = single_point(atoms, tree)
    ref = single_point(atoms, explicit)
    assert abs(ours.get_potential_energy()) > 400  # a real DFT energy in eV
    assert ours.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(ours.get_forces(), ref.get_forces(), atol=1e-6)
