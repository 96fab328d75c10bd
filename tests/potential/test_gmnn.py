"""Physics checks of the GMNN: invariances, finite differences, extensivity, padding, ensembles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from lotf.potential import descriptor as gm
from lotf.potential import neighbors
from lotf.potential.calculator import LotfCalculator, gmnn_term
from lotf.potential.graph import collate, structure_arrays
from lotf.potential.model import ConfigError, Model, ModelConfig
from lotf.potential.predict import make_predict

SPECIES = (1, 6, 8)
TRICLINIC = np.array([[7.0, 0.0, 0.0], [1.0, 6.5, 0.0], [0.5, -0.7, 7.2]])


def random_box(seed=0, n=16):
    rng = np.random.default_rng(seed)
    symbols = ("H" * (n // 2)) + ("O" * (n // 4)) + ("C" * (n - n // 2 - n // 4))
    return Atoms(symbols, positions=rng.random((n, 3)) @ TRICLINIC, cell=TRICLINIC, pbc=True)


@pytest.fixture(scope="module")
def setup():
    config = ModelConfig(species=SPECIES, hidden=(16, 16), n_members=3, dtype="float64", n_basis=5, n_radial=3)
    model = Model(config)
    graph = collate([structure_arrays(random_box(), SPECIES, config.r_max)])
    params = model.init(jax.random.PRNGKey(0), jax.tree_util.tree_map(jnp.asarray, graph))
    predict = jax.jit(make_predict([model.structure_energies], members=True))
    return config, model, params, predict


def evaluate(setup, atoms):
    config, _, params, predict = setup
    graph = collate([structure_arrays(atoms, SPECIES, config.r_max)])
    return jax.device_get(predict([params], [graph]))


def test_feature_counts_match_reference_layout():
    assert [gm.n_features(r) for r in (3, 4, 5, 6, 7)] == [94, 198, 360, 593, 910]
    assert np.cumsum(gm.contraction_sizes(5)).tolist() == [5, 20, 35, 50, 85, 160, 235, 360]
    assert ModelConfig(contractions=(0, 1, 2)).n_features == 35


def test_bessel_basis_recurrence_matches_the_direct_sincs_and_its_derivative():
    """The Chebyshev recurrence gives norm_n [sinc((n+1)x) + sinc((n+2)x)], x = d/r_max, in float64
    to 1e-12 and in float32 to 1.5e-6 of the largest value; its derivative matches central differences; a Bessel model's
    forces match finite differences of its energy."""
    import math

    d = np.linspace(0.3, 6.5, 400)
    n = np.arange(9)
    norm = (-1.0) ** n * math.sqrt(2) * math.pi / 5.5**1.5 * (n + 1) * (n + 2) / np.sqrt((n + 1) ** 2 + (n + 2) ** 2)
    direct = norm * (np.sinc((n + 1) * d[:, None] / 5.5) + np.sinc((n + 2) * d[:, None] / 5.5))
    np.testing.assert_allclose(gm.bessel_basis(jnp.asarray(d), 9, 5.5), direct, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gm.bessel_basis(jnp.asarray(d, jnp.float32), 9, 5.5), direct, rtol=0,
                               atol=1.5e-6 * np.abs(direct).max())
    h = 1e-6
    slope = jax.vmap(jax.jacfwd(lambda x: gm.bessel_basis(x, 9, 5.5)))(jnp.asarray(d))
    fd = (gm.bessel_basis(jnp.asarray(d + h), 9, 5.5) - gm.bessel_basis(jnp.asarray(d - h), 9, 5.5)) / (2 * h)
    np.testing.assert_allclose(slope, fd, rtol=0, atol=1e-7)
    assert np.all(np.isfinite(gm.bessel_basis(jnp.zeros(1), 9, 5.5)))  # sinc(0) = 1, no 0/0
    config = ModelConfig(species=SPECIES, hidden=(16,), n_members=2, dtype="float64", n_basis=6, n_radial=3,
                         basis="bessel")
    model = Model(config)
    atoms = random_box(seed=3)
    graph = collate([structure_arrays(atoms, SPECIES, config.r_max)])
    params = model.init(jax.random.PRNGKey(1), jax.tree_util.tree_map(jnp.asarray, graph))
    predict = jax.jit(make_predict([model.structure_energies], members=False))

    def energy(positions):
        moved = atoms.copy()
        moved.positions = positions
        return float(predict([params], [collate([structure_arrays(moved, SPECIES, config.r_max)])])["energy"][0])

    forces = np.asarray(predict([params], [graph])["forces"])[: len(atoms)]
    for i, a in ((0, 0), (5, 1), (11, 2)):
        plus, minus = atoms.positions.copy(), atoms.positions.copy()
        plus[i, a] += 1e-5
        minus[i, a] -= 1e-5
        assert forces[i, a] == pytest.approx(-(energy(plus) - energy(minus)) / 2e-5, rel=1e-5, abs=1e-8)


def test_neighbour_list_matches_brute_force_for_unwrapped_triclinic_and_small_cells():
    rng = np.random.default_rng(3)
    for cell, n, rc in [(TRICLINIC * 2.2, 150, 5.0), (TRICLINIC * 0.9, 12, 5.5)]:
        positions = rng.random((n, 3)) @ cell + rng.normal(scale=6.0, size=(n, 3))  # far outside the cell
        spec, nbrs = neighbors.allocate(positions, cell, True, rc)
        rows = np.broadcast_to(np.arange(n)[:, None], nbrs.mask.shape)
        got = {(int(i), int(j), *map(int, s)) for i, j, s in
               zip(rows[nbrs.mask], nbrs.idx[nbrs.mask], nbrs.shifts[nbrs.mask])}
        assert got == neighbors.brute_force_pairs(positions, cell, True, rc)


def test_neighbour_rebuild_criterion_and_jit_build():
    atoms = random_box(1, 40)
    spec, nbrs = neighbors.allocate(atoms.positions, atoms.cell.array, True, 4.0, skin=0.5)
    moved = atoms.positions.copy()
    moved[0] += [0.2, 0.0, 0.0]
    assert not bool(neighbors.needs_rebuild(nbrs, moved, atoms.cell.array, 0.5))
    moved[0] += [0.1, 0.0, 0.0]
    assert bool(neighbors.needs_rebuild(nbrs, moved, atoms.cell.array, 0.5))
    rebuilt = jax.jit(lambda p, c: neighbors.build(spec, p, c))(moved, atoms.cell.array)
    direct = neighbors.build_host(spec, moved, atoms.cell.array)
    np.testing.assert_array_equal(np.asarray(rebuilt.idx), direct.idx)


def test_forces_match_central_finite_differences(setup):
    atoms = random_box()
    out = evaluate(setup, atoms)
    h = 1e-5
    for atom, axis in [(0, 0), (5, 1), (11, 2)]:
        energies = []
        for sign in (1, -1):
            displaced = atoms.copy()
            displaced.positions[atom, axis] += sign * h
            energies.append(evaluate(setup, displaced)["energy"][0])
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert abs(out["forces"][atom, axis] - fd) <= 1e-6 * max(abs(fd), 1e-3)


def test_member_forces_match_finite_differences(setup):
    atoms = random_box()
    out = evaluate(setup, atoms)
    h = 1e-5
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[3, 1] += h
    minus.positions[3, 1] -= h
    fd = -(evaluate(setup, plus)["energy_ensemble"][0] - evaluate(setup, minus)["energy_ensemble"][0]) / (2 * h)
    np.testing.assert_allclose(out["forces_ensemble"][3, 1], fd, rtol=1e-6, atol=1e-9)


def test_stress_matches_finite_strain_on_triclinic_cell(setup):
    atoms = random_box()
    out = evaluate(setup, atoms)
    h = 1e-5
    volume = atoms.get_volume()
    for a, b in [(0, 0), (1, 2), (0, 1), (2, 2)]:
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = sign * h
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            energies.append(evaluate(setup, strained)["energy"][0])
        factor = 1.0 if a == b else 2.0  # an off-diagonal symmetric strain moves two components
        fd = (energies[0] - energies[1]) / (2 * h) / volume / factor
        assert abs(out["stress"][0][a, b] - fd) <= 1e-6 * max(abs(fd), 1e-4)


def test_rotation_translation_permutation_invariance(setup):
    atoms = random_box()
    ref = evaluate(setup, atoms)
    rot = Rotation.from_euler("xyz", [30, -50, 110], degrees=True).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rot.T, scale_atoms=True)
    out = evaluate(setup, rotated)
    np.testing.assert_allclose(out["energy"], ref["energy"], rtol=1e-10)
    np.testing.assert_allclose(out["forces"], ref["forces"] @ rot.T, atol=1e-10)
    np.testing.assert_allclose(out["stress"][0], rot @ ref["stress"][0] @ rot.T, atol=1e-10)

    shifted = atoms.copy()
    shifted.positions += [3.3, -1.2, 8.0]
    np.testing.assert_allclose(evaluate(setup, shifted)["energy"], ref["energy"], rtol=1e-10)

    perm = np.random.default_rng(0).permutation(len(atoms))
    permuted = atoms[perm]
    out = evaluate(setup, permuted)
    np.testing.assert_allclose(out["energy"], ref["energy"], rtol=1e-10)
    np.testing.assert_allclose(out["forces"], ref["forces"][perm], atol=1e-10)


def test_supercell_is_extensive(setup):
    atoms = random_box()
    e1 = evaluate(setup, atoms)["energy"][0]
    e8 = evaluate(setup, atoms.repeat((2, 2, 2)))["energy"][0]
    assert abs(e8 / e1 - 8.0) < 8e-6


def test_padding_and_batching_do_not_change_predictions(setup):
    config, _, params, predict = setup
    a, b = random_box(0), random_box(1, 12)
    items = [structure_arrays(x, SPECIES, config.r_max) for x in (a, b)]
    single = [jax.device_get(predict([params], [collate([item])])) for item in items]
    padded = jax.device_get(predict([params], [collate(items, n_atoms=40, n_neighbors=items[0].max_neighbors + 24,
                                                        n_structures=3)]))
    np.testing.assert_allclose(padded["energy"][:2], [s["energy"][0] for s in single], rtol=1e-12)
    np.testing.assert_allclose(padded["forces"][:16], single[0]["forces"], atol=1e-12)
    np.testing.assert_allclose(padded["forces"][16:28], single[1]["forces"], atol=1e-12)
    np.testing.assert_allclose(padded["forces"][28:], 0.0)
    np.testing.assert_allclose(padded["stress"][1], single[1]["stress"][0], atol=1e-12)


def test_non_periodic_molecule_and_calculator_results(setup):
    config, model, params, _ = setup
    mol = molecule("CH3CH2OH")
    calc = LotfCalculator([gmnn_term(model, params)], SPECIES, members=True)
    mol.calc = calc
    energy = mol.get_potential_energy()
    forces = mol.get_forces()
    assert np.isfinite(energy) and forces.shape == (len(mol), 3)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)  # no external field
    assert "stress" not in calc.results
    members = calc.results["energy_ensemble"]
    assert members.shape == (3,)
    assert calc.results["energy_uncertainty"] == pytest.approx(np.std(members))
    np.testing.assert_allclose(calc.results["forces_uncertainty"], calc.results["forces_ensemble"].std(axis=-1))
    np.testing.assert_allclose(forces, calc.results["forces_ensemble"].mean(axis=-1))


def test_full_ensemble_members_are_independent_networks():
    config = ModelConfig(species=SPECIES, hidden=(8,), n_members=2, ensemble="full", dtype="float64",
                         n_radial=2, n_basis=3)
    model = Model(config)
    atoms = random_box()
    graph = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(atoms, SPECIES, config.r_max)]))
    params = model.init(jax.random.PRNGKey(1), graph)
    assert params["embedding"].shape[0] == 2
    energies = model.structure_energies(params, graph)[0]
    single = Model(ModelConfig(**{**config.to_dict(), "ensemble": "shallow", "n_members": 1}))
    for k in range(2):
        member = jax.tree_util.tree_map(lambda x: x[k], params)
        assert float(single.structure_energies(member, graph)[0, 0]) == pytest.approx(float(energies[k]), rel=1e-12)


def test_zbl_is_physical_coulomb_at_short_range():
    config = ModelConfig(species=(1,), hidden=(4,), zbl=True, zbl_cutoff=1.5, dtype="float64", n_radial=2, n_basis=3)
    model = Model(config)
    atoms = Atoms("HH", positions=[[0, 0, 0], [0, 0, 0.05]])
    graph = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(atoms, (1,), config.r_max)]))
    params = model.init(jax.random.PRNGKey(0), graph)
    params = jax.tree_util.tree_map(jnp.zeros_like, params)  # network off: only ZBL remains
    energy = float(model.structure_energies(params, graph)[0, 0])
    a = 0.46850 / (2 * 1.0**0.23)
    phi = sum(c * np.exp(-d * 0.05 / a) for c, d in zip((0.18175, 0.50986, 0.28022, 0.02817),
                                                         (3.19980, 0.94229, 0.40290, 0.20162)))
    expected = 14.399645478425668 / 0.05 * phi * 0.5 * (np.cos(np.pi * 0.05 / 1.5) + 1)
    assert energy == pytest.approx(expected, rel=1e-10)


def test_unknown_element_and_bad_config_fail_with_one_line(setup):
    config, model, params, _ = setup
    calc = LotfCalculator([gmnn_term(model, params)], SPECIES)
    atoms = molecule("NH3")
    with pytest.raises(ValueError, match="unknown element N"):
        calc.calculate(atoms, ["energy"])
    with pytest.raises(ConfigError, match="unknown key 'n_layers'"):
        ModelConfig.from_dict({"n_layers": 3})
    with pytest.raises(ConfigError, match="'contractions'"):
        ModelConfig(contractions=(0, 9))


def test_calculator_reuses_neighbour_list_within_skin_and_rebuilds_beyond(setup):
    config, model, params, _ = setup
    atoms = random_box(2, 24)
    calc = LotfCalculator([gmnn_term(model, params)], SPECIES, members=False, skin=0.5)
    rng = np.random.default_rng(0)
    builds = []
    for step in range(6):
        atoms.positions += rng.normal(scale=0.06, size=atoms.positions.shape)
        atoms.calc = calc
        forces = atoms.get_forces()
        builds.append(id(calc._lists[0].nbrs))
        fresh = LotfCalculator([gmnn_term(model, params)], SPECIES, members=False, skin=0.0)
        np.testing.assert_allclose(forces, fresh.get_forces(atoms), atol=1e-10)
    assert 1 < len(set(builds)) < len(builds)  # some calls reused the list, some rebuilt it


def _full_ensemble(n_members, dtype="float64"):
    config = ModelConfig(species=SPECIES, hidden=(32, 32), n_members=n_members, ensemble="full", dtype=dtype,
                         n_basis=5, n_radial=3)
    model = Model(config)
    graph = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(random_box(n=32), SPECIES, config.r_max)]))
    return model, model.init(jax.random.PRNGKey(1), graph), graph


def test_full_ensemble_member_forces_match_the_plain_reverse_passes():
    model, params, graph = _full_ensemble(3)
    memberwise = jax.jit(make_predict([model.energy_term], members=True))([params], [graph])
    # the same energy function without the member split: one reverse pass per column
    plain = jax.jit(make_predict([model.structure_energies], members=True))([params], [graph])
    for key in ("energy_ensemble", "forces_ensemble", "forces_uncertainty", "stress"):
        np.testing.assert_allclose(memberwise[key], plain[key], rtol=1e-10, atol=1e-12)
    members = np.asarray(memberwise["forces_ensemble"])
    np.testing.assert_allclose(memberwise["forces_uncertainty"], members.std(axis=-1), rtol=1e-10)  # 1/M


def test_full_ensemble_forces_cost_k_models_not_k_squared():
    flops = {}
    for k in (1, 2, 4):
        model, params, graph = _full_ensemble(k, "float32")
        predict = jax.jit(make_predict([model.energy_term], members=True))
        flops[k] = predict.lower([params], [graph]).compile().cost_analysis()["flops"]
    # one reverse pass per member through all K networks grew as K² (5.8, 14.3, 41.3 MFLOP measured)
    assert flops[4] / flops[1] < 4.6
    assert flops[2] / flops[1] < 2.3


@pytest.mark.parametrize("basis", ["gaussian", "bessel"])
def test_a_float32_model_computes_its_pair_terms_in_float32(basis):
    """Only the pair vectors are formed in float64 (then cast); a float64 constant in the basis
    once promoted every (atom, neighbour, radial, basis) array of a float32 model to float64 and
    made the MD step's memory traffic 1.7x (193 vs 114 MB per force call, 64 waters)."""
    config = ModelConfig(species=SPECIES, hidden=(8,), n_members=2, n_basis=5, n_radial=3, basis=basis)
    model = Model(config)
    graph = jax.tree_util.tree_map(jnp.asarray, collate([structure_arrays(random_box(), SPECIES, config.r_max)]))
    params = model.init(jax.random.PRNGKey(0), graph)
    predict = make_predict([model.structure_energies], members=False)
    jaxpr = jax.make_jaxpr(predict)([params], [graph])
    n_rows, n_slots = graph.neighbors.shape

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            for var in eqn.outvars:
                yield var.aval
            for value in eqn.params.values():  # pjit, custom_jvp, ...: their inner jaxprs
                inner = getattr(value, "jaxpr", None)
                if inner is not None:
                    yield from walk(getattr(inner, "jaxpr", inner))

    wide = [aval for aval in walk(jaxpr.jaxpr) if getattr(aval, "dtype", None) == jnp.float64
            and aval.shape[:2] == (n_rows, n_slots) and (len(aval.shape) > 3 or aval.shape[2:] not in ((), (3,), (1,)))]
    assert not wide, wide[:3]
    pair_terms = [aval for aval in walk(jaxpr.jaxpr) if getattr(aval, "dtype", None) == jnp.float32
                  and aval.shape[:2] == (n_rows, n_slots) and len(aval.shape) == 4]
    assert pair_terms  # the walk does see the (atom, neighbour, radial, basis) arrays
