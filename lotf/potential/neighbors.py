"""Padded, jit-friendly neighbour lists with a skin.

A neighbour list is a *full* list of ordered pairs (i, j) with integer image shifts S so that the
pair vector is ``r_ij = R_j - R_i + S @ cell`` (cell rows are lattice vectors). Keeping S as
integers (instead of Cartesian offsets) is what lets a strain act consistently on positions,
cell and images: strain the positions and the cell, and every pair vector is strained with them.

Two algorithms share one output format:

* ``cell``: a linked-cell list, O(N). Atoms are binned into a grid of cells at least
  ``cutoff + skin`` wide; each atom looks at the 27 surrounding cells. Needs >= 3 cells along
  every axis. Non-periodic systems use a virtual box around the atoms, wide enough that no
  wrapped pair can come within the cutoff.
* ``dense``: all pairs times all periodic images that can reach the cutoff, O(N^2 * images).
  Used for small cells (fewer than 3 cells along an axis) and mixed periodicity.

Shapes are static (capacity, grid, atoms per cell), so ``build`` can run inside ``jax.jit``
and inside an MD loop; a build that does not fit sets ``overflow`` and the caller reallocates
with :func:`allocate`. Padded pairs point at atom ``n_atoms - 1`` with ``mask`` False, which
keeps ``idx_i`` sorted (segment sums use that).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Neighbors(NamedTuple):
    """A padded pair list. All arrays have ``capacity`` rows."""

    idx_i: jax.Array  # (P,) centre atom, sorted
    idx_j: jax.Array  # (P,) neighbour atom
    shifts: jax.Array  # (P, 3) integer image shifts (float dtype for cheap matmul)
    mask: jax.Array  # (P,) True for real pairs
    reference_positions: jax.Array  # (N, 3) positions at build time (for the skin check)
    reference_cell: jax.Array  # (3, 3) cell at build time
    overflow: jax.Array  # () bool: capacity, cell occupancy or grid no longer sufficient
    n_pairs: jax.Array  # () number of real pairs found


@dataclass(frozen=True)
class NeighborSpec:
    """Static description of a neighbour list allocation (hashable, used as a jit static arg)."""

    cutoff: float
    skin: float
    capacity: int
    pbc: tuple[bool, bool, bool]
    method: str  # "cell" or "dense"
    grid: tuple[int, int, int] = (1, 1, 1)  # cell method
    max_per_cell: int = 0  # cell method
    images: tuple[int, int, int] = (0, 0, 0)  # dense method: image range per axis

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


def _virtual_box(positions: jax.Array, list_cutoff: float) -> tuple[jax.Array, jax.Array]:
    """Orthorhombic box around a non-periodic system, padded so wrapped pairs stay out of range."""
    lo = jnp.min(positions, axis=0)
    hi = jnp.max(positions, axis=0)
    length = hi - lo + 2.0 * list_cutoff + 1.0
    return jnp.diag(length), lo - list_cutoff - 0.5


def _compact(mask, i, j, shifts, capacity, n_atoms, positions, cell):
    """Pack candidate pairs (any shape, row-major by centre atom) into the padded layout."""
    mask = mask.reshape(-1)
    count = jnp.sum(mask)
    (sel,) = jnp.nonzero(mask, size=capacity, fill_value=mask.size)
    valid = sel < mask.size
    sel = jnp.where(valid, sel, 0)
    pad = n_atoms - 1
    idx_i = jnp.where(valid, i.reshape(-1)[sel], pad)
    idx_j = jnp.where(valid, j.reshape(-1)[sel], pad)
    s = jnp.where(valid[:, None], shifts.reshape(-1, 3)[sel], 0.0)
    return Neighbors(idx_i.astype(jnp.int32), idx_j.astype(jnp.int32), s, valid, positions, cell, count > capacity, count)


def _build_dense(spec: NeighborSpec, positions, cell):
    n = positions.shape[0]
    rc2 = spec.list_cutoff**2
    ranges = [range(-k, k + 1) if p else range(0, 1) for k, p in zip(spec.images, spec.pbc)]
    images = jnp.asarray(list(itertools.product(*ranges)), dtype=positions.dtype)  # (I, 3)
    # wrap along periodic axes first so that the small image range suffices for any input
    if any(spec.pbc):
        frac = jnp.linalg.solve(cell.T, positions.T).T
        image = jnp.where(jnp.asarray(spec.pbc), jnp.floor(frac), 0.0)
        wrapped = positions - image @ cell
    else:
        image = jnp.zeros_like(positions)
        wrapped = positions
    offsets = images @ cell  # (I, 3)
    # r[i, j, image] = W_j - W_i + offset
    r = wrapped[None, :, None, :] - wrapped[:, None, None, :] + offsets[None, None, :, :]
    d2 = jnp.sum(r * r, axis=-1)
    ii = jnp.broadcast_to(jnp.arange(n)[:, None, None], d2.shape)
    jj = jnp.broadcast_to(jnp.arange(n)[None, :, None], d2.shape)
    self_image = (ii == jj) & jnp.all(images == 0, axis=-1)[None, None, :]
    mask = (d2 < rc2) & ~self_image
    # shift relative to the unwrapped input positions
    sh = images[None, None, :, :] - image[None, :, None, :] + image[:, None, None, :]
    nbrs = _compact(mask, ii, jj, sh, spec.capacity, n, positions, cell)
    # a periodic cell may have shrunk (NPT) so that more images are needed than allocated
    if any(spec.pbc):
        needed = jnp.ceil(spec.list_cutoff / _heights_jax(cell))
        too_small = jnp.any(jnp.asarray(spec.pbc) & (needed > jnp.asarray(spec.images)))
        nbrs = nbrs._replace(overflow=nbrs.overflow | too_small)
    return nbrs


def _heights_jax(cell):
    volume = jnp.abs(jnp.linalg.det(cell))
    cross = jnp.stack([jnp.cross(cell[1], cell[2]), jnp.cross(cell[2], cell[0]), jnp.cross(cell[0], cell[1])])
    return volume / jnp.linalg.norm(cross, axis=1)


def _build_cell(spec: NeighborSpec, positions, cell):
    n = positions.shape[0]
    periodic = all(spec.pbc)
    if periodic:
        box, origin = cell, jnp.zeros(3, positions.dtype)
    else:
        box, origin = _virtual_box(positions, spec.list_cutoff)
    grid = jnp.asarray(spec.grid)
    frac = jnp.linalg.solve(box.T, (positions - origin).T).T
    image = jnp.floor(frac)
    frac_w = frac - image
    cidx = jnp.clip(jnp.floor(frac_w * grid).astype(jnp.int32), 0, grid - 1)
    flat = (cidx[:, 0] * spec.grid[1] + cidx[:, 1]) * spec.grid[2] + cidx[:, 2]
    n_cells = int(np.prod(spec.grid))

    # occupancy table (n_cells, max_per_cell) filled with the sentinel n
    order = jnp.argsort(flat)
    sorted_cells = flat[order]
    first = jnp.searchsorted(sorted_cells, sorted_cells, side="left")
    slot = jnp.arange(n) - first
    cell_overflow = jnp.any(slot >= spec.max_per_cell)
    table = jnp.full((n_cells, spec.max_per_cell), n, dtype=jnp.int32)
    table = table.at[sorted_cells, jnp.minimum(slot, spec.max_per_cell - 1)].set(order.astype(jnp.int32), mode="drop")

    offsets = jnp.asarray(list(itertools.product((-1, 0, 1), repeat=3)), dtype=jnp.int32)  # (27, 3)
    ncell = cidx[:, None, :] + offsets[None]  # (N, 27, 3)
    wrap = jnp.floor_divide(ncell, grid)  # -1, 0 or +1 where the neighbour cell wraps
    ncell = ncell - wrap * grid
    nflat = (ncell[..., 0] * spec.grid[1] + ncell[..., 1]) * spec.grid[2] + ncell[..., 2]
    cand = table[nflat]  # (N, 27, M)
    cand_ok = cand < n
    j = jnp.where(cand_ok, cand, 0)
    i = jnp.broadcast_to(jnp.arange(n)[:, None, None], cand.shape)
    # shift relative to the unwrapped input positions: r = (fw_j + wrap - fw_i) @ box
    shift = wrap[:, :, None, :] - image[j].astype(jnp.int32) + image[:, None, None, :].astype(jnp.int32)
    shift = shift.astype(positions.dtype)
    r = positions[j] - positions[:, None, None, :] + shift @ box
    d2 = jnp.sum(r * r, axis=-1)
    self_pair = (j == i) & jnp.all(shift == 0, axis=-1)
    mask = cand_ok & (d2 < spec.list_cutoff**2) & ~self_pair
    if not periodic:  # wrapped pairs are out of range by construction; report zero shifts
        shift = jnp.zeros_like(shift)
    nbrs = _compact(mask, i, j, shift, spec.capacity, n, positions, cell)
    # cells must stay at least list_cutoff wide (box shrinking in NPT, molecule compacting)
    too_small = jnp.any(_heights_jax(box) / grid < spec.list_cutoff)
    return nbrs._replace(overflow=nbrs.overflow | cell_overflow | too_small)


def build(spec: NeighborSpec, positions: jax.Array, cell: jax.Array) -> Neighbors:
    """Build the list for ``positions`` (N, 3) and ``cell`` (3, 3); jit with ``spec`` static."""
    if spec.method == "cell":
        return _build_cell(spec, positions, cell)
    return _build_dense(spec, positions, cell)


build_jit = jax.jit(build, static_argnums=0)


def needs_rebuild(nbrs: Neighbors, positions: jax.Array, cell: jax.Array, skin: float) -> jax.Array:
    """True when some pair may have moved by more than the skin since the build.

    |d r_ij| <= |d R_i| + |d R_j| + |S| |d cell|, so with atoms alone this is the usual
    "an atom moved more than half the skin" criterion; a changing cell (NPT) adds its part.
    """
    disp = jnp.sqrt(jnp.max(jnp.sum((positions - nbrs.reference_positions) ** 2, axis=-1)))
    max_shift = jnp.max(jnp.sum(jnp.abs(nbrs.shifts), axis=-1))
    dcell = jnp.max(jnp.linalg.norm(cell - nbrs.reference_cell, axis=-1))
    return 2.0 * disp + max_shift * dcell > skin


def allocate(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc,
    cutoff: float,
    skin: float = 0.0,
    capacity_factor: float = 1.25,
    min_capacity: int = 0,
) -> tuple[NeighborSpec, Neighbors]:
    """Choose static sizes for a structure on the host, build the list, and grow until it fits.

    Sizes are rounded up (capacity to a multiple of 1024, cells to multiples of 8) so that
    similar structures share one compiled builder.
    """
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    pbc = tuple(bool(p) for p in np.broadcast_to(pbc, 3))
    n = len(positions)
    if n == 0:
        raise ValueError("cannot build a neighbour list for a structure with no atoms")
    rc = cutoff + skin
    if any(pbc) and abs(np.linalg.det(cell)) < 1e-8:
        raise ValueError("periodic structure has a zero-volume cell")
    if all(pbc):
        grid = np.floor(cell_heights(cell) / rc).astype(int)
        box_volume = abs(np.linalg.det(cell))
    elif not any(pbc):
        extent = positions.max(0) - positions.min(0) + 2 * rc + 1.0
        grid = np.floor(extent / rc).astype(int)
        box_volume = float(np.prod(extent))
    else:
        grid = np.zeros(3, dtype=int)
        box_volume = abs(np.linalg.det(cell))

    use_cell = bool(np.all(grid >= 3)) and n > 64
    if use_cell:
        # atoms per cell from an actual binning, with headroom for density fluctuations
        if all(pbc):
            frac = np.linalg.solve(cell.T, positions.T).T
        else:
            lo = positions.min(0) - rc - 0.5
            frac = (positions - lo) / (positions.max(0) - positions.min(0) + 2 * rc + 1.0)
        frac -= np.floor(frac)
        cidx = np.minimum((frac * grid).astype(int), grid - 1)
        counts = np.bincount(np.ravel_multi_index(cidx.T, grid), minlength=int(np.prod(grid)))
        max_per_cell = _round_up(int(counts.max() * 1.5) + 2, 4)
        spec_kw = dict(method="cell", grid=tuple(int(g) for g in grid), max_per_cell=max_per_cell)
    else:
        heights = cell_heights(cell) if any(pbc) else np.full(3, np.inf)
        images = tuple(int(math.ceil(rc / h)) if p else 0 for h, p in zip(heights, pbc))
        spec_kw = dict(method="dense", images=images)

    density = n / max(box_volume, 1e-9)
    estimate = n * density * 4.0 / 3.0 * math.pi * rc**3 if (all(pbc) or not any(pbc)) else n * n
    capacity = _round_up(max(int(estimate * capacity_factor), min_capacity, n), 1024)
    while True:
        spec = NeighborSpec(cutoff=float(cutoff), skin=float(skin), capacity=capacity, pbc=pbc, **spec_kw)
        nbrs = build_jit(spec, jnp.asarray(positions), jnp.asarray(cell))
        if not bool(nbrs.overflow):
            return spec, nbrs
        n_pairs = int(nbrs.n_pairs)
        if n_pairs <= capacity:
            # not a capacity problem: grid/occupancy no longer fit, re-derive from scratch
            if spec.method == "cell":
                spec_kw["max_per_cell"] = spec_kw["max_per_cell"] * 2
                continue
            raise RuntimeError("neighbour list allocation failed to converge")
        capacity = _round_up(int(n_pairs * capacity_factor), 1024)


def reallocate(spec: NeighborSpec, nbrs: Neighbors, positions, cell) -> tuple[NeighborSpec, Neighbors]:
    """Grow an allocation after an overflow (e.g. inside MD), keeping at least its capacity."""
    return allocate(
        np.asarray(positions), np.asarray(cell), spec.pbc, spec.cutoff, spec.skin,
        min_capacity=max(spec.capacity, int(int(nbrs.n_pairs) * 1.25)),
    )


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
