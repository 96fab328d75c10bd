"""Candidate screening before selection: per-element-pair contacts and intact molecules."""

import json

import ase
import numpy as np
import pytest
from ase.build import molecule

from lotf.nodes import selection as nodes
from lotf.selection import screening as scr


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def liquid(n: int = 4, seed: int = 0, box: float = 9.0) -> ase.Atoms:
    """``n`` intact water molecules and ``n`` methane molecules on a grid in a periodic box."""
    rng = np.random.default_rng(seed)
    atoms = ase.Atoms(cell=[box] * 3, pbc=True)
    grid = [np.array([i, j, k]) * box / 3 + 1.0 for i in range(3) for j in range(3) for k in range(3)]
    for k in range(2 * n):
        mol = molecule("H2O" if k % 2 == 0 else "CH4")
        mol.rotate(rng.uniform(0, 360), rng.normal(size=3))
        mol.translate(grid[k] + rng.normal(scale=0.05, size=3))
        atoms += mol
    return atoms


def collapsed(atoms: ase.Atoms) -> ase.Atoms:
    """Two atoms of different molecules 0.3 Å apart (a collapsed FIRE structure)."""
    out = atoms.copy()
    out.positions[3] = out.positions[0] + [0.3, 0.0, 0.0]  # C of the first methane onto the first O
    return out


def broken(atoms: ase.Atoms) -> ase.Atoms:
    """A proton pulled 3 Å out of the first water (a dissociated MD frame); no close contact."""
    out = atoms.copy()
    o, h = out.positions[0], out.positions[1]
    out.positions[1] = o + 3.0 * (h - o) / np.linalg.norm(h - o)
    return out


def test_pair_thresholds_follow_covalent_radii_and_explicit_pairs():
    s = scr.Screening.from_dict({"min_distance_factor": 0.6, "pair_distances": {"H-O": 1.5}})
    assert s.threshold("C", "H", 6, 1) == pytest.approx(0.6 * (0.76 + 0.31))
    assert s.threshold("O", "H", 8, 1) == s.threshold("H", "O", 1, 8) == 1.5  # order does not matter
    with pytest.raises(scr.ScreeningError, match="unknown setting 'min_dist'"):
        scr.Screening.from_dict({"min_dist": 0.5})
    with pytest.raises(scr.ScreeningError, match="pair_distances entry 'HO: 1.0'"):
        scr.Screening.from_dict({"pair_distances": {"HO": 1.0}})
    assert scr.Screening.from_dict(None) is None and scr.Screening.from_dict({}) is None


def test_molecule_kinds_are_formula_and_bond_count_across_the_boundary():
    atoms = liquid()
    kinds = scr.molecule_kinds(atoms)
    assert sorted(set(kinds)) == [("CH4", 4), ("H2O", 2)] and len(kinds) == 8
    shifted = atoms.copy()
    shifted.positions += [4.4, 0.0, 0.0]  # molecules cut by the periodic boundary stay molecules
    shifted.wrap()
    assert sorted(scr.molecule_kinds(shifted)) == sorted(kinds)
    assert sorted(scr.molecule_kinds(broken(atoms)))[:3] == [("CH4", 4)] * 3  # four CH4, three H2O, OH and H
    assert {("HO", 1), ("H", 0)} <= set(scr.molecule_kinds(broken(atoms)))


def test_screen_drops_close_contacts_and_broken_molecules_with_reasons():
    good = [liquid(seed=s) for s in range(3)]
    frames = [good[0], collapsed(good[1]), broken(good[2]), good[1]]
    settings = scr.Screening.from_dict({"min_distance_factor": 0.6, "intact_molecules": True})
    result = scr.screen(frames, settings, scr.reference_kinds(good[:1]))
    assert result.keep.tolist() == [True, False, False, True]
    assert result.reasons == [None, "min_distance", "molecules", None]
    assert "0.30 Å" in result.details[1] and "HO (1 bonds)" in result.details[2]
    assert result.counts() == {"n_screened": 2, "n_screened_min_distance": 1, "n_screened_molecules": 1}
    # contacts only: the dissociated frame passes
    only_contacts = scr.screen(frames, scr.Screening.from_dict({"min_distance_factor": 0.6}))
    assert only_contacts.keep.tolist() == [True, False, True, True]
    with pytest.raises(scr.ScreeningError, match="needs reference structures"):
        scr.screen(frames, settings, None)


def test_selection_node_screens_before_selecting_and_counts_it(workdir):
    good = [liquid(seed=s) for s in range(6)]
    frames = [good[0], collapsed(good[1]), good[2], broken(good[3]), good[4], good[5]]
    node = nodes.RandomSelection(data=frames, n_configurations=3, seed=0, screening_reference=good[:1],
                                 screening={"min_distance_factor": 0.6, "intact_molecules": True})
    node.run()
    assert not {1, 3} & set(node.selected_ids) and len(node.selected_ids) == 3
    assert len(node.excluded_frames) == 1  # 6 - 2 screened - 3 selected: screened frames are in neither list
    assert node.metrics["n_pool"] == 6 and node.metrics["n_screened"] == 2
    assert node.metrics["n_screened_min_distance"] == 1 and node.metrics["n_screened_molecules"] == 1
    listed = json.loads((node.nwd / "screened.json").read_text())
    assert [(entry["index"], entry["reason"]) for entry in listed] == [(1, "min_distance"), (3, "molecules")]

    # a pool that the screening leaves short: select what passes, record what was requested
    short = nodes.RandomSelection(data=frames[:4], n_configurations=3, seed=0, name="short",
                                  screening={"min_distance_factor": 0.6, "intact_molecules": True},
                                  screening_reference=good[:1])
    short.run()
    assert sorted(short.selected_ids) == [0, 2]
    assert short.metrics["n_requested"] == 3 and short.metrics["n_selected"] == 2

    plain = nodes.RandomSelection(data=frames, n_configurations=6, seed=0, name="plain")  # no screening: all
    plain.run()
    assert sorted(plain.selected_ids) == list(range(6)) and "n_screened" not in plain.metrics


def test_last_frame_selection_hands_on_the_last_intact_structure(workdir):
    """What an iteration hands on: the last structure that passes, never a broken one, and nothing
    (so the caller falls back to the start) when none passes."""
    good = [liquid(seed=s) for s in range(4)]
    screening = {"min_distance_factor": 0.6, "intact_molecules": True}
    frames = [good[0], good[1], broken(good[2]), collapsed(good[3])]  # an MD, then a FIRE that broke it
    node = nodes.LastFrameSelection(data=frames, screening=screening, screening_reference=good[:1])
    node.run()
    assert node.selected_ids == [1] and np.allclose(node.frames[0].positions, good[1].positions)
    two = nodes.LastFrameSelection(data=frames, n_configurations=2, screening=screening,
                                   screening_reference=good[:1], name="two")
    two.run()
    assert two.selected_ids == [1, 0]  # last first
    none = nodes.LastFrameSelection(data=frames[2:], screening=screening, screening_reference=good[:1], name="none")
    none.run()
    assert none.frames == [] and none.metrics["n_screened"] == 2


@pytest.mark.parametrize("cls, extra", [
    ("MaxDistSelection", {"train_data": [], "model": None, "n_configurations": 2}),
    ("UncertaintySelection", {"n_configurations": 2}),
    ("RandomSelection", {"n_configurations": 2}),
])
def test_selection_nodes_save_with_an_empty_or_fully_screened_pool(workdir, cls, extra):
    """A sampler that stopped before its first frame, or a pool screened out entirely: the node
    writes empty outputs and its metrics instead of failing (the MaxDist plot was never set)."""
    good = liquid()
    for name, data in (("empty", []), ("screened", [collapsed(good), collapsed(liquid(seed=1))])):
        node = getattr(nodes, cls)(data=data, name=f"{cls}{name}", screening={"min_distance_factor": 0.6}, **extra)
        node.run()
        node.save()
        assert node.frames == [] and node.excluded_frames == [] and node.selected_ids == []
        assert node.metrics["n_selected"] == 0 and node.metrics["n_requested"] == 2
        assert node.metrics["n_screened"] == len(data)


def test_contact_factor_refuses_a_non_bonded_pair_inside_the_van_der_waals_contact():
    """A cation H pushed 1.3 Å into a BF4- passed the covalent tests (tenth BMIM-BF4 oracle run).
    With contact_factor, a non-bonded pair closer than factor x (vdW sum) fails; bonds (here B-F
    at 1.39 Å, C-H) and geminal pairs (F-B-F 2.27 Å, H-C-H 1.78 Å) never do."""
    anion = ase.Atoms("BF4", positions=[[0, 0, 0], [0.8, 0.8, 0.8], [-0.8, -0.8, 0.8], [-0.8, 0.8, -0.8],
                                        [0.8, -0.8, -0.8]], cell=[12.0] * 3, pbc=True)
    methane = molecule("CH4")
    methane.rotate(methane.positions[1] - methane.positions[0], (-1, -1, -1))  # C-H-F in a line
    methane.translate([4.5, 0, 0])
    apart = anion + methane
    setting = scr.Screening.from_dict({"contact_factor": 0.55, "min_distance_factor": 0.6})
    plain = scr.Screening.from_dict({"min_distance_factor": 0.6})
    assert scr.closest_contact(apart, setting)[0] > 1.0
    pushed = apart.copy()
    h = 6  # the H whose C-H bond points along (1, 1, 1), like B-F(1)
    pushed.positions[5:] += pushed.positions[1] + 0.75 * np.ones(3) - pushed.positions[h]  # H-F 1.3 Å
    assert pushed.get_distance(1, h) == pytest.approx(1.299, abs=1e-3)
    ratio, pair = scr.closest_contact(pushed, setting)
    assert ratio < 1.0 and set(pair) == {1, h}
    assert scr.closest_contact(pushed, plain)[0] > 1.0  # the covalent test alone lets it through
    result = scr.screen([apart, pushed], setting)
    assert list(result.keep) == [True, False] and "(F)" in result.details[1] and "(H)" in result.details[1]
    with pytest.raises(scr.ScreeningError, match="contact_factor must be in"):
        scr.Screening.from_dict({"contact_factor": 1.5})
