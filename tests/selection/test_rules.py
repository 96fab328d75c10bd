"""Selection rules against brute-force references and hand-made values."""

import ase
import numpy as np
import pytest
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator

import lotf.potential.calculator  # noqa: F401  (registers energy/forces_uncertainty as ASE properties)
from lotf.selection import rules
from lotf.selection.rules import SelectionError


def brute_force_max_dist(pool, train, n):
    """Greedy MaxDist with the full distance matrix of pool + train."""
    points = np.concatenate([pool, train]) if len(train) else pool
    dist = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    n_pool = len(pool)
    if len(train):
        nearest = dist[:n_pool, n_pool:].min(axis=1)
    else:
        nearest = np.linalg.norm(pool - pool.mean(axis=0), axis=1)
    picks, dists = [], []
    for _ in range(n):
        masked = nearest.copy()
        masked[picks] = -np.inf
        i = int(np.argmax(masked))
        picks.append(i)
        dists.append(nearest[i])
        nearest = np.minimum(nearest, dist[:n_pool, i])
    return np.array(picks), np.array(dists)


@pytest.mark.parametrize("n_train", [0, 1, 9])
@pytest.mark.parametrize("block_elements", [7, rules.BLOCK_ELEMENTS])
def test_max_dist_matches_brute_force(n_train, block_elements):
    rng = np.random.default_rng(n_train)
    pool = rng.normal(size=(60, 5)) * np.array([3.0, 1.0, 1.0, 0.5, 0.1]) + 4.0  # away from the origin
    train = rng.normal(size=(n_train, 5)) + 4.0
    result = rules.max_dist_selection(pool, 25, train if n_train else None, block_elements=block_elements,
                                      progress=False)
    picks, dists = brute_force_max_dist(pool, train, 25)
    np.testing.assert_array_equal(result.indices, picks)
    np.testing.assert_allclose(result.distances, dists, rtol=1e-9)
    assert len(set(result.indices.tolist())) == 25
    assert np.all(np.diff(result.distances) <= 1e-12)  # max-min distances never increase


def test_first_pick_is_farthest_from_training_set_not_largest_norm():
    train = np.array([[10.0, 0.0], [0.0, 0.0]])
    pool = np.array([[10.5, 0.0],  # largest norm, but next to a training point (apax's first pick)
                     [5.0, 4.0],  # farthest from the training set
                     [1.0, 1.0]])
    result = rules.max_dist_selection(pool, 2, train, progress=False)
    assert result.indices[0] == 1 and result.distances[0] == pytest.approx(np.hypot(5.0, 4.0))
    assert result.indices[1] == 2 and result.distances[1] == pytest.approx(np.sqrt(2.0))


def test_pool_points_in_the_training_set_come_last():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(5, 3))
    pool = np.concatenate([train[:3], rng.normal(size=(4, 3)) * 5])
    result = rules.max_dist_selection(pool, 7, train, progress=False)
    assert set(result.indices[-3:].tolist()) == {0, 1, 2}
    np.testing.assert_allclose(result.distances[-3:], 0.0, atol=1e-7)


def test_min_squared_distances_blockwise():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(23, 4)), rng.normal(size=(17, 4))
    ref = (np.linalg.norm(x[:, None] - y[None], axis=-1) ** 2).min(axis=1)
    for block in (1, 5, 64, rules.BLOCK_ELEMENTS):
        np.testing.assert_allclose(rules.min_squared_distances(x, y, block), ref, rtol=1e-10, atol=1e-12)


def test_max_dist_accepts_float32_and_lists():
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(30, 4))
    ref = rules.max_dist_selection(pool, 5, pool[:2] + 0.1, progress=False).indices
    np.testing.assert_array_equal(
        rules.max_dist_selection(pool.astype(np.float32).tolist(), 5, pool[:2] + 0.1, progress=False).indices,
        ref)


@pytest.mark.parametrize(
    "pool, n, train, message",
    [
        (np.zeros((0, 3)), 1, None, "cannot select from an empty pool"),
        (np.ones((4, 3)), 5, None, r"n_configurations=5 is larger than the pool \(4 structures\)"),
        (np.ones((4, 3)), 0, None, "n_configurations must be >= 1"),
        (np.ones((4, 3)), 2, np.ones((2, 4)), "training features have 4 columns but pool features have 3"),
        (np.array([[1.0, np.nan]]), 1, None, "pool features of structure 0 are not finite"),
        (np.ones(3), 1, None, "must be a 2-D array"),
    ],
)
def test_max_dist_bad_input(pool, n, train, message):
    with pytest.raises(SelectionError, match=message):
        rules.max_dist_selection(pool, n, train, progress=False)


def test_random_selection_reproducible():
    a = rules.random_selection(100, 10, seed=1)
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 100
    np.testing.assert_array_equal(a, rules.random_selection(100, 10, seed=1))
    assert not np.array_equal(a, rules.random_selection(100, 10, seed=2))
    assert sorted(rules.random_selection(7, 7, seed=0).tolist()) == list(range(7))
    with pytest.raises(SelectionError, match=r"n_configurations=11 is larger than the pool \(10 structures\)"):
        rules.random_selection(10, 11, seed=1)
    with pytest.raises(SelectionError, match="empty pool"):
        rules.random_selection(0, 1, seed=1)


def test_uncertainty_top_k_and_threshold():
    values = np.array([0.1, 0.5, 0.3, 0.5, 0.05, 0.9])
    np.testing.assert_array_equal(rules.uncertainty_selection(values, 3), [5, 1, 3])  # ties: lower index first
    np.testing.assert_array_equal(rules.uncertainty_selection(values, threshold=0.2), [5, 1, 3, 2])
    np.testing.assert_array_equal(rules.uncertainty_selection(values, 2, threshold=0.2), [5, 1])
    np.testing.assert_array_equal(rules.uncertainty_selection(values, 5, threshold=0.4), [5, 1, 3])
    assert len(rules.uncertainty_selection(values, threshold=1.0)) == 0
    with pytest.raises(SelectionError, match="give n_configurations, threshold or both"):
        rules.uncertainty_selection(values)
    with pytest.raises(SelectionError, match=r"n_configurations=7 is larger than the pool \(6 structures\)"):
        rules.uncertainty_selection(values, 7)
    with pytest.raises(SelectionError, match="empty pool"):
        rules.uncertainty_selection([], threshold=0.1)
    with pytest.raises(SelectionError, match="frame 1: uncertainty is not finite"):
        rules.uncertainty_selection([0.1, np.nan], 1)


def _atoms(n=3):
    return ase.Atoms(f"H{n}", positions=np.arange(3 * n, dtype=float).reshape(n, 3))


def test_uncertainty_values_from_results_info_and_arrays():
    a = _atoms()
    sigma = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 2.0]])  # per-atom norms 5, 1, 2
    a.calc = SinglePointCalculator(a, energy=1.0, forces_uncertainty=sigma, energy_uncertainty=0.25)
    b = _atoms()
    b.info["energy_uncertainty"] = 0.5
    b.arrays["forces_uncertainty"] = sigma * 2
    assert rules.uncertainty_values([a, b], "forces_uncertainty", "max").tolist() == [5.0, 10.0]
    assert rules.uncertainty_values([a, b], "forces_uncertainty", "mean").tolist() == [8 / 3, 16 / 3]
    assert rules.uncertainty_values([a, b], "energy_uncertainty").tolist() == [0.25, 0.5]
    with pytest.raises(SelectionError, match="frame 1: no 'energy_uncertainty' in calc.results, info or arrays"):
        rules.uncertainty_values([b, _atoms()], "energy_uncertainty")
    with pytest.raises(SelectionError, match="reduction must be 'max' or 'mean'"):
        rules.uncertainty_values([a], reduction="median")


class _FakeEnsemble(Calculator):
    """An 'uncertainty' that grows with the x coordinate of the first atom."""

    implemented_properties = ("energy", "energy_uncertainty")

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "energy_uncertainty": float(self.atoms.positions[0, 0])}


def test_uncertainty_values_from_a_calculator():
    frames = [_atoms() for _ in range(4)]
    for i, x in enumerate([0.3, 2.0, 1.0, 0.1]):
        frames[i].positions[0, 0] = x
    values = rules.uncertainty_values(frames, "energy_uncertainty", calculator=_FakeEnsemble(), progress=False)
    np.testing.assert_allclose(values, [0.3, 2.0, 1.0, 0.1])
    assert all(a.calc is None for a in frames)  # the input frames are left alone
    np.testing.assert_array_equal(rules.uncertainty_selection(values, 2), [1, 2])


def test_max_dist_memory_is_bounded_by_the_block_not_pool_times_train():
    import tracemalloc

    rng = np.random.default_rng(4)
    pool, train = rng.normal(size=(5000, 16)), rng.normal(size=(2000, 16))  # pool x train: 80 MB
    tracemalloc.start()
    rules.max_dist_selection(pool, 5, train, block_elements=1 << 16, progress=False)  # 0.5 MB blocks
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MB"
