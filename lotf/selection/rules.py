"""Selection rules: seeded random, greedy MaxDist in feature space, and uncertainty top-k/threshold.

Every rule returns pool indices in pick order. Bad input (an empty pool, more configurations than
the pool has, missing uncertainties) raises :class:`SelectionError` with one line.

MaxDist (greedy farthest-point selection, as in the BMDAL papers arXiv:2203.09410 and
10.1039/D2DD00034B): every pool point keeps its squared distance to the nearest point of the
training set plus the points picked so far; each step picks the point where that distance is
largest. Unlike apax's ``max_dist_selection``, the distances start at the distances to the
training set (apax only masks the training rows and starts from the largest feature norm).
Squared distances use ||x||^2 + ||y||^2 - 2 x.y in float64, in blocks against the training
set and as one matrix-vector product per pick, so memory is O(N F) for the features plus
O(block) -- never an N x N matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from tqdm import tqdm

BLOCK_ELEMENTS = 1 << 22  # float64 entries of one block of pool x train distances (32 MiB)


class SelectionError(ValueError):
    """Bad selection input, reported as one line."""


def check_count(n_configurations: int, n_pool: int) -> None:
    """Fail with one line unless 1 <= n_configurations <= n_pool."""
    if n_pool == 0:
        raise SelectionError("cannot select from an empty pool (0 structures)")
    if isinstance(n_configurations, bool) or not isinstance(n_configurations, (int, np.integer)):
        raise SelectionError(f"n_configurations must be an integer (got {n_configurations!r})")
    if n_configurations < 1:
        raise SelectionError(f"n_configurations must be >= 1 (got {n_configurations})")
    if n_configurations > n_pool:
        raise SelectionError(f"n_configurations={n_configurations} is larger than the pool ({n_pool} structures)")


# ---------------------------------------------------------------------------------------------
# random


def random_selection(n_pool: int, n_configurations: int, seed: int) -> np.ndarray:
    """``n_configurations`` distinct indices of ``range(n_pool)`` drawn with ``seed``, in draw order."""
    check_count(n_configurations, n_pool)
    return np.random.default_rng(seed).choice(n_pool, size=n_configurations, replace=False)


# ---------------------------------------------------------------------------------------------
# MaxDist


@dataclass
class MaxDistResult:
    """Pool indices in pick order and, for each pick, its distance to the nearest point of the
    training set or of the earlier picks (the max-min distance, non-increasing)."""

    indices: np.ndarray  # (n,) int
    distances: np.ndarray  # (n,) float64, Euclidean (not squared)


def _as_features(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise SelectionError(f"{name} features must be a 2-D array (structures x features), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        row = int(np.flatnonzero(~np.all(np.isfinite(x), axis=1))[0])
        raise SelectionError(f"{name} features of structure {row} are not finite")
    return x


def min_squared_distances(x: np.ndarray, y: np.ndarray, block_elements: int = BLOCK_ELEMENTS,
                          progress: bool = False) -> np.ndarray:
    """(N,) squared Euclidean distance of every row of ``x`` to its nearest row of ``y``.

    Computed in blocks of at most ``block_elements`` pairs, never as a full N x M matrix.
    """
    x_sq = np.einsum("ij,ij->i", x, x)
    y_sq = np.einsum("ij,ij->i", y, y)
    best = np.full(len(x), np.inf)
    cols = max(1, min(len(y), block_elements // 64))
    rows = max(1, block_elements // cols)
    bar = tqdm(total=len(x), desc="distances to training set", disable=not progress, leave=False)
    for r in range(0, len(x), rows):
        xr = x[r:r + rows]
        for c in range(0, len(y), cols):
            d2 = xr @ y[c:c + cols].T  # the only block-sized array: the rest is done in place
            d2 *= -2.0
            d2 += x_sq[r:r + rows, None]
            d2 += y_sq[None, c:c + cols]
            np.minimum(best[r:r + rows], d2.min(axis=1), out=best[r:r + rows])
            del d2  # free the block before the next one is allocated
        bar.update(len(xr))
    bar.close()
    return np.maximum(best, 0.0)


def max_dist_selection(pool, n_configurations: int, train=None, *, block_elements: int = BLOCK_ELEMENTS,
                       progress: bool = True) -> MaxDistResult:
    """Greedy MaxDist selection of ``n_configurations`` rows of ``pool`` (N, F).

    The first pick is the pool point farthest from the training set ``train`` (M, F); every
    later pick is the point farthest from the training set and all earlier picks. Without a
    training set the first pick is the point farthest from the pool mean (its distance is
    reported as the distance to that mean). Ties go to the lowest index. Features are used
    in float64 (a float32 pool is converted, i.e. copied).
    """
    pool = _as_features(pool, "pool")
    check_count(n_configurations, len(pool))
    has_train = train is not None and len(train) > 0
    if has_train:
        train = _as_features(train, "training")
        if train.shape[1] != pool.shape[1]:
            raise SelectionError(f"training features have {train.shape[1]} columns but pool features have "
                                 f"{pool.shape[1]}: were they computed with the same model?")
        min_d2 = min_squared_distances(pool, train, block_elements, progress)
    else:
        centre = pool.mean(axis=0, keepdims=True)
        min_d2 = min_squared_distances(pool, centre, block_elements)

    pool_sq = np.einsum("ij,ij->i", pool, pool)
    indices = np.empty(n_configurations, dtype=np.int64)
    distances = np.empty(n_configurations)
    for k in tqdm(range(n_configurations), desc="MaxDist", disable=not progress, leave=False):
        pick = int(np.argmax(min_d2))
        indices[k] = pick
        distances[k] = np.sqrt(min_d2[pick])
        d2 = pool_sq + pool_sq[pick] - 2.0 * (pool @ pool[pick])
        np.minimum(min_d2, np.maximum(d2, 0.0), out=min_d2)
        min_d2[pick] = -np.inf  # never again, even if duplicates leave everything at zero
    return MaxDistResult(indices, distances)


# ---------------------------------------------------------------------------------------------
# uncertainty


def _reduce(value, reduction: str) -> float:
    """A scalar from a stored uncertainty: per-atom vectors (N, 3) become per-atom norms first,
    then ``reduction`` ("max" or "mean") runs over the remaining entries."""
    v = np.asarray(value, dtype=float)
    if v.ndim == 2 and v.shape[1] == 3:
        v = np.linalg.norm(v, axis=1)
    if v.size == 0:
        return float("nan")
    return float(np.max(v) if reduction == "max" else np.mean(v))


def uncertainty_values(frames: Sequence[Atoms], key: str = "forces_uncertainty", reduction: str = "max",
                       calculator=None, progress: bool = True) -> np.ndarray:
    """(N,) one uncertainty per frame.

    Read from ``atoms.calc.results[key]``, ``atoms.info[key]`` or ``atoms.arrays[key]`` or, with
    ``calculator``, computed by it (e.g. an ensemble's ASE calculator). Forces uncertainties
    (per atom and component) are reduced to per-atom norms and then to their max or mean.
    """
    if reduction not in ("max", "mean"):
        raise SelectionError(f"reduction must be 'max' or 'mean' (got {reduction!r})")
    values = np.empty(len(frames))
    for i, atoms in enumerate(tqdm(frames, desc=f"{key}", disable=not progress or calculator is None,
                                   leave=False)):
        if calculator is not None:
            atoms = atoms.copy()
            atoms.calc = calculator
            value = calculator.get_property(key, atoms)
        else:
            results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
            for source in (results, atoms.info, atoms.arrays):
                if key in source:
                    value = source[key]
                    break
            else:
                raise SelectionError(f"frame {i}: no '{key}' in calc.results, info or arrays "
                                     "(give a model to compute it)")
        values[i] = _reduce(value, reduction)
        if not np.isfinite(values[i]):
            raise SelectionError(f"frame {i}: '{key}' is not finite ({values[i]})")
    return values


def uncertainty_selection(values, n_configurations: int | None = None,
                          threshold: float | None = None) -> np.ndarray:
    """Indices of the most uncertain frames, most uncertain first (ties: lowest index first).

    ``n_configurations`` alone: the top k. ``threshold`` alone: every frame with a value above
    it (possibly none). Both: the top k of those above the threshold (possibly fewer than k).
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1:
        raise SelectionError(f"uncertainties must be one value per frame, got shape {values.shape}")
    if n_configurations is None and threshold is None:
        raise SelectionError("give n_configurations, threshold or both")
    if n_configurations is not None:
        check_count(n_configurations, len(values))
    elif len(values) == 0:
        raise SelectionError("cannot select from an empty pool (0 structures)")
    if not np.all(np.isfinite(values)):
        raise SelectionError(f"frame {int(np.flatnonzero(~np.isfinite(values))[0])}: uncertainty is not finite")
    order = np.argsort(-values, kind="stable")
    if threshold is not None:
        order = order[values[order] > threshold]
    return order[:n_configurations] if n_configurations is not None else order
