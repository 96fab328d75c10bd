"""MaxDist selection on a synthetic 100,000 x 513 feature pool against 1,000 training points,
plus the cost of the last-layer-gradient features of the seed-1 model on 300-atom boxes.

513 = 512 + 1 is the feature size of the seed-1 GMNN (last hidden layer 512, shallow ensemble).
Prints one JSON object:

* ``s_train_distances``: initial distances of the pool to the training set (blockwise);
* ``ms_per_pick`` (from the difference of a 1-pick and an ``n_picks + 1``-pick run) and
  ``ms_per_matvec`` (one pool @ vector product, the floor of a pick) and their ratio;
  ``s_total``: the whole ``n_picks + 1``-pick selection;
* ``pool_mb`` (the float64 pool itself) and ``peak_extra_mb``: the largest amount of memory
  allocated by the selection beyond its input (``tracemalloc``, which sees numpy's buffers);
  ``peak_rss_mb``: peak resident set size of the whole process (``getrusage``);
* ``features``: ms per structure for features and, for comparison, for energies alone, both
  in batches of ``batch_size`` 300-atom BMIM-BF4 boxes with the seed-1 network (random weights).

Wall times are noisy on shared machines; compare ratios, or runs on the same machine.

    python benchmarks/selection.py [--pool 100000] [--picks 100] [--no-features]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc

import numpy as np


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def max_dist_benchmark(n_pool: int = 100_000, n_features: int = 513, n_train: int = 1000, n_picks: int = 100,
                       seed: int = 0) -> dict:
    from lotf.selection.rules import max_dist_selection, min_squared_distances

    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((n_pool, n_features))
    train = rng.standard_normal((n_train, n_features))

    start = time.perf_counter()
    min_squared_distances(pool, train)
    s_train = time.perf_counter() - start

    vector = pool[0].copy()
    start = time.perf_counter()
    for _ in range(10):
        pool @ vector
    ms_matvec = (time.perf_counter() - start) / 10 * 1e3

    tracemalloc.start()
    start = time.perf_counter()
    max_dist_selection(pool, 1, train, progress=False)
    s_one = time.perf_counter() - start
    start = time.perf_counter()
    result = max_dist_selection(pool, n_picks + 1, train, progress=False)
    s_total = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    ms_pick = max(s_total - s_one, 0.0) / n_picks * 1e3
    return {
        "n_pool": n_pool, "n_features": n_features, "n_train": n_train, "n_picks": n_picks,
        "s_train_distances": round(s_train, 3),
        "ms_per_pick": round(ms_pick, 2),
        "ms_per_matvec": round(ms_matvec, 2),
        "pick_over_matvec": round(ms_pick / ms_matvec, 2),
        "s_total": round(s_total, 3),
        "pool_mb": round(pool.nbytes / 2**20, 1),
        "peak_extra_mb": round(peak / 2**20, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "first_distances": [round(float(d), 3) for d in result.distances[:3]],
    }


def feature_benchmark(n_structures: int = 16, batch_size: int = 8, seed: int = 0) -> dict:
    """ms per 300-atom structure: last-layer-gradient features vs energies alone."""
    import jax

    from lotf.bench import bmim_bf4_box
    from lotf.potential.graph import collate, round_up, structure_arrays
    from lotf.potential.model import Model, ModelConfig
    from lotf.selection.features import FeatureMap

    box = bmim_bf4_box(seed=seed)
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_structures):
        atoms = box.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(atoms)
    species = tuple(sorted(set(box.numbers.tolist())))
    model = Model(ModelConfig(species=species, n_members=2))  # seed-1 network: 512-512, shallow ensemble
    graph = collate([structure_arrays(frames[0], species, model.config.r_max)])
    params = jax.jit(model.init)(jax.random.PRNGKey(seed), graph)

    feature_map = FeatureMap(model, params, batch_size=batch_size)
    start = time.perf_counter()
    feature_map(frames[:batch_size], progress=False)
    s_first = time.perf_counter() - start
    start = time.perf_counter()
    feature_map(frames, progress=False)
    ms_features = (time.perf_counter() - start) / n_structures * 1e3

    items = [structure_arrays(a, species, model.config.r_max) for a in frames]
    padding = round_up(max(s.n_atoms for s in items) * batch_size, 8), round_up(max(s.max_neighbors for s in items), 8)
    graphs = [collate(items[i:i + batch_size], *padding, n_structures=batch_size)
              for i in range(0, n_structures, batch_size)]
    energies = jax.jit(model.structure_energies)
    energies(params, graphs[0]).block_until_ready()
    start = time.perf_counter()
    for g in graphs:
        energies(params, g).block_until_ready()
    ms_energy = (time.perf_counter() - start) / n_structures * 1e3
    return {"n_atoms": len(box), "n_structures": n_structures, "batch_size": batch_size,
            "n_features": feature_map.n_features, "s_first_batch_with_compile": round(s_first, 2),
            "ms_per_structure": round(ms_features, 1), "ms_per_structure_energy_only": round(ms_energy, 1),
            "features_over_energy": round(ms_features / ms_energy, 2)}


def selection_benchmark(n_pool: int = 100_000, n_picks: int = 100, features: bool = True) -> dict:
    """MaxDist on a 100,000 x 513 pool against 1,000 training points (+ feature cost)."""
    import lotf  # noqa: F401  (float64 in JAX)

    out = {"max_dist": max_dist_benchmark(n_pool=n_pool, n_picks=n_picks)}
    if features:
        out["features"] = feature_benchmark()
    out["peak_rss_mb"] = round(_rss_mb(), 1)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--picks", type=int, default=100)
    parser.add_argument("--no-features", action="store_true")
    args = parser.parse_args()
    print(json.dumps(selection_benchmark(args.pool, args.picks, not args.no_features)))
