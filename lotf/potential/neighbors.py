"""Padded, jit-friendly neighbour lists with a skin.

A neighbour list is a *full* list of ordered pairs (i, j) with integer image shifts S so that the
pair vector is ``r_ij = R_j - R_i + S @ cell`` (cell rows are lattice vectors). Keeping S as
integers (instead of Cartesian offsets) is what lets a strain act consistently on positions,
cell and images: strain the positions and the cell, and every pair vector is strained with them.

The list is stored dense, one row per atom: ``idx[i, k]`` is the k-th neighbour of atom i, so
per-atom sums are reductions over axis 1 (batched matmuls) instead of scatters; that made the
descriptor and its gradients an order of magnitude faster than a flat pair list on CPU.

Pairs are found by vesin's linked-cell algorithm (linear in the number of atoms, triclinic and
mixed periodicity, any cell size) on the host, then packed into rows. Inside jitted code (the MD
loop) :func:`build` reaches the host through ``jax.pure_callback``, and only when
:func:`needs_rebuild` says some atom moved more than half the skin. A pure-JAX cell list was
tried first: correct, but 15-25x slower than vesin on this CPU (XLA's cumsum/scatter packing).
Rows have a static ``capacity``; a build that does not fit sets ``overflow`` and the caller
reallocates with :func:`reallocate`. Padded slots point at the atom itself with ``mask`` False.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from vesin import NeighborList


class Neighbors(NamedTuple):
    """A padded neighbour list, one row per atom, ``capacity`` slots per row."""

    idx: jax.Array  # (N, K) neighbour atom j of row atom i
    shifts: jax.Array  # (N, K, 3) integer image shifts (float dtype for cheap matmul)
    mask: jax.Array  # (N, K) True for real pairs
    reference_positions: jax.Array  # (N, 3) positions at build time (for the skin check)
    reference_cell: jax.Array  # (3, 3) cell at build time
    overflow: jax.Array  # () bool: row capacity, cell occupancy or grid no longer sufficient
    max_neighbors: jax.Array  # () largest number of neighbours of any atom
    n_pairs: jax.Array  # () number of real pairs


@dataclass(frozen=True)
class NeighborSpec:
    """Static description of a neighbour list allocation (hashable, used as a jit static arg)."""

    cutoff: float
    skin: float
    capacity: int  # neighbour slots per atom
    pbc: tuple[bool, bool, bool]

    @property
    def list_cutoff(self) -> float:
        return self.cutoff + self.skin


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(max(n, 1) / multiple) * multiple)


def cell_heights(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the parallelepiped spanned by the cell rows."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    cross = np.array([np.cross(cell[1], cell[2]), np.cross(cell[2], cell[0]), np.cross(cell[0], cell[1])])
    return volume / np.linalg.norm(cross, axis=1)


def find_pairs(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float):
    """All ordered pairs (i, j, S) closer than ``cutoff``, sorted by i (numpy, host)."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = [bool(p) for p in np.broadcast_to(pbc, 3)]
    box = np.asarray(cell, dtype=np.float64) if any(pbc) else np.zeros((3, 3))
    if any(pbc) and abs(np.linalg.det(box)) < 1e-8:
        raise ValueError("periodic structure has a zero-volume cell")
    i, j, shifts = NeighborList(cutoff=float(cutoff), full_list=True).compute(
        points=positions, box=box, periodic=pbc, quantities="ijS")
    order = np.argsort(i, kind="stable")
    return i[order], j[order], shifts[order]


def build_host(spec: NeighborSpec, positions: np.ndarray, cell: np.ndarray) -> Neighbors:
    """Find pairs within cutoff + skin and pack them into (N, capacity) rows (numpy arrays)."""
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    n = len(positions)
    i, j, shifts = find_pairs(positions, cell, spec.pbc, spec.list_cutoff)
    counts = np.bincount(i, minlength=n)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(i)) - first[i]
    keep = slot < spec.capacity
    idx = np.broadcast_to(np.arange(n, dtype=np.int32)[:, None], (n, spec.capacity)).copy()
    out_shifts = np.zeros((n, spec.capacity, 3))
    mask = np.zeros((n, spec.capacity), dtype=bool)
    idx[i[keep], slot[keep]] = j[keep]
    out_shifts[i[keep], slot[keep]] = shifts[keep]
    mask[i[keep], slot[keep]] = True
    max_count = int(counts.max(initial=0))
    return Neighbors(idx, out_shifts, mask, positions, cell, np.bool_(max_count > spec.capacity),
                     np.int32(max_count), np.int32(len(i)))


def build(spec: NeighborSpec, positions: jax.Array, cell: jax.Array) -> Neighbors:
    """Jit-compatible :func:`build_host` (a host callback with fixed output shapes)."""
    n = positions.shape[0]
    shapes = Neighbors(
        jax.ShapeDtypeStruct((n, spec.capacity), jnp.int32),
        jax.ShapeDtypeStruct((n, spec.capacity, 3), positions.dtype),
        jax.ShapeDtypeStruct((n, spec.capacity), jnp.bool_),
        jax.ShapeDtypeStruct((n, 3), positions.dtype),
        jax.ShapeDtypeStruct((3, 3), cell.dtype),
        jax.ShapeDtypeStruct((), jnp.bool_),
        jax.ShapeDtypeStruct((), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.int32),
    )
    return jax.pure_callback(lambda p, c: build_host(spec, p, c), shapes, positions, cell)


def needs_rebuild(nbrs: Neighbors, positions: jax.Array, cell: jax.Array, skin: float) -> jax.Array:
    """True when some pair may have moved by more than the skin since the build.

    |d r_ij| <= |d R_i| + |d R_j| + |S| |d cell|, so with atoms alone this is the usual
    "an atom moved more than half the skin" criterion; a changing cell (NPT) adds its part.
    """
    disp = jnp.sqrt(jnp.max(jnp.sum((positions - nbrs.reference_positions) ** 2, axis=-1)))
    max_shift = jnp.max(jnp.sum(jnp.abs(nbrs.shifts), axis=-1) * nbrs.mask)
    dcell = jnp.max(jnp.linalg.norm(cell - nbrs.reference_cell, axis=-1))
    return 2.0 * disp + max_shift * dcell > skin


def allocate(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float, skin: float = 0.0,
             capacity_factor: float = 1.2, min_capacity: int = 0) -> tuple[NeighborSpec, Neighbors]:
    """Choose the row capacity for a structure (headroom for density fluctuations) and build.

    Capacities are rounded up to a multiple of 8 so that similar structures share compiled code.
    """
    positions = np.asarray(positions, dtype=float)
    if len(positions) == 0:
        raise ValueError("cannot build a neighbour list for a structure with no atoms")
    pbc = tuple(bool(p) for p in np.broadcast_to(pbc, 3))
    cell = np.asarray(cell, dtype=float) if any(pbc) else np.zeros((3, 3))
    i, _, _ = find_pairs(positions, cell, pbc, cutoff + skin)
    needed = int(np.bincount(i, minlength=len(positions)).max(initial=0))
    capacity = _round_up(max(int(math.ceil(needed * capacity_factor)), min_capacity, 1), 8)
    spec = NeighborSpec(cutoff=float(cutoff), skin=float(skin), capacity=capacity, pbc=pbc)
    return spec, build_host(spec, positions, cell)


def reallocate(spec: NeighborSpec, nbrs: Neighbors, positions, cell) -> tuple[NeighborSpec, Neighbors]:
    """Grow an allocation after an overflow (e.g. inside MD), keeping at least its capacity."""
    return allocate(np.asarray(positions), np.asarray(cell), spec.pbc, spec.cutoff, spec.skin,
                    min_capacity=max(spec.capacity, int(int(nbrs.max_neighbors) * 1.2)))


def brute_force_pairs(positions, cell, pbc, cutoff) -> set[tuple[int, int, int, int, int]]:
    """Reference O(N^2 * images) pair set {(i, j, s0, s1, s2)} in plain numpy (for tests)."""
    positions = np.asarray(positions, float)
    cell = np.asarray(cell, float)
    pbc = np.broadcast_to(pbc, 3)
    image = np.zeros_like(positions)
    if pbc.any():  # wrap, then express shifts relative to the unwrapped input
        image = np.where(pbc, np.floor(np.linalg.solve(cell.T, positions.T).T), 0.0)
        positions = positions - image @ cell
    heights = cell_heights(cell) if pbc.any() else np.full(3, np.inf)
    ranges = [range(-int(math.ceil(cutoff / h)), int(math.ceil(cutoff / h)) + 1) if p else range(1) for h, p in zip(heights, pbc)]
    out = set()
    for s in itertools.product(*ranges):
        r = positions[None, :, :] - positions[:, None, :] + np.asarray(s, float) @ cell
        d = np.linalg.norm(r, axis=-1)
        for i, j in zip(*np.nonzero(d < cutoff)):
            if i == j and s == (0, 0, 0):
                continue
            shift = np.asarray(s) - image[j] + image[i]
            out.add((int(i), int(j), *(int(round(x)) for x in shift)))
    return out
