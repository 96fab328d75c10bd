"""Radial distribution functions g_ab(r) for every element pair, streamed over a trajectory.

Distances use the minimum image in fractional coordinates, which is exact for
``r_max <= w_min / 2`` (``w_min`` the smallest perpendicular width of the cell, also for
triclinic cells): a vector shorter than that has all fractional components in (-1/2, 1/2).
The pair distances of a block of frames are computed by one jitted JAX kernel (float32) and
histogrammed with ``numpy.bincount``; NPT trajectories are normalised frame by frame
(each frame's counts weighted by its volume).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from lotf.analysis.io import SourceLike, iter_chunks, read_cells, read_info

Pair = tuple[str, str]


def perpendicular_widths(cells: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of each cell; ``cells`` (..., 3, 3) rows = vectors."""
    cells = np.asarray(cells, dtype=float)
    volume = np.abs(np.linalg.det(cells))
    a, b, c = cells[..., 0, :], cells[..., 1, :], cells[..., 2, :]
    areas = np.stack(
        [
            np.linalg.norm(np.cross(b, c), axis=-1),
            np.linalg.norm(np.cross(c, a), axis=-1),
            np.linalg.norm(np.cross(a, b), axis=-1),
        ],
        axis=-1,
    )
    return volume[..., None] / areas


def pair_key(a: str, b: str) -> Pair:
    """Canonical (alphabetical) element pair."""
    return (a, b) if a <= b else (b, a)


@dataclasses.dataclass
class RDFResult:
    """Histogram edges and g(r) per element pair (plus the all-atom total)."""

    edges: np.ndarray
    g: dict[Pair, np.ndarray]
    g_total: np.ndarray | None
    counts: dict[Pair, np.ndarray]
    n_frames: int
    mean_volume: float
    n_atoms: dict[str, int]

    @property
    def r(self) -> np.ndarray:
        """Bin centres in Angstrom."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def coordination(self, center: str, neighbour: str) -> np.ndarray:
        """Running coordination number of ``neighbour`` atoms around a ``center`` atom."""
        g = self.g[pair_key(center, neighbour)]
        shell = 4.0 / 3.0 * np.pi * (self.edges[1:] ** 3 - self.edges[:-1] ** 3)
        n_nb = self.n_atoms[neighbour] - (1 if center == neighbour else 0)
        return np.cumsum(g * shell) * n_nb / self.mean_volume

    def to_dataframe(self) -> pd.DataFrame:
        """Columns ``r`` and one ``A-B`` column per pair (for CSV / ``dvc plots``)."""
        data = {"r": self.r}
        for (a, b), g in self.g.items():
            data[f"{a}-{b}"] = g
        if self.g_total is not None:
            data["total"] = self.g_total
        return pd.DataFrame(data)


@functools.partial(jax.jit, static_argnames=("n_bins", "dump"))
def _bin_indices(pos, cells, iu, ju, ptype, inv_dr, n_bins: int, dump: int):
    """Histogram bin index (type * n_bins + bin, or ``dump``) of every listed pair."""
    inv = jnp.linalg.inv(cells)
    frac = jnp.einsum("bni,bij->bnj", pos, inv)
    d = frac[:, ju, :] - frac[:, iu, :]
    d = d - jnp.round(d)
    c = cells
    vx = d[..., 0] * c[:, 0, 0, None] + d[..., 1] * c[:, 1, 0, None] + d[..., 2] * c[:, 2, 0, None]
    vy = d[..., 0] * c[:, 0, 1, None] + d[..., 1] * c[:, 1, 1, None] + d[..., 2] * c[:, 2, 1, None]
    vz = d[..., 0] * c[:, 0, 2, None] + d[..., 1] * c[:, 1, 2, None] + d[..., 2] * c[:, 2, 2, None]
    k = jnp.floor(jnp.sqrt(vx * vx + vy * vy + vz * vz) * inv_dr).astype(jnp.int32)
    return jnp.where(k < n_bins, ptype[None, :] * n_bins + k, dump)


def _select_pairs(symbols: list[str], pairs: Iterable[Pair] | str | None) -> list[Pair]:
    elements = sorted(set(symbols))
    all_pairs = [pair_key(a, b) for a, b in itertools.combinations_with_replacement(elements, 2)]
    if pairs is None or pairs == "all":
        return all_pairs
    chosen = []
    for p in pairs:
        if isinstance(p, str):
            p = tuple(p.split("-"))
        if len(p) != 2:
            raise ValueError(f"pairs: expected element pairs like ('B', 'N') or 'B-N', got {p!r}")
        key = pair_key(*p)
        if key not in all_pairs:
            raise ValueError(f"pairs: {'-'.join(key)} not in the trajectory (elements {elements})")
        if key not in chosen:
            chosen.append(key)
    return chosen


def compute_rdf(
    source: SourceLike,
    r_max: float | None = None,
    n_bins: int = 200,
    pairs: Iterable[Pair] | str | None = None,
    total: bool = True,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    chunk_size: int = 1000,
    group: str | None = None,
    progress: bool = False,
) -> RDFResult:
    """g_ab(r) averaged over the selected frames of a periodic trajectory.

    ``pairs``: None/"all" for every element pair, or a list such as ``[("B", "B"), "B-N"]``.
    ``r_max`` defaults to half the smallest perpendicular cell width over the selected
    frames and may not exceed that of any frame.  ``total`` adds the all-atom g(r) (only when
    every pair is histogrammed).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    info = read_info(source, group)
    if not info.has_cell or not np.all(info.pbc):
        raise ValueError("rdf: trajectory needs a periodic 3-d cell (pbc on all axes)")
    symbols = info.symbols
    chosen = _select_pairs(symbols, pairs)
    total = total and (pairs is None or pairs == "all")
    sym = np.array(symbols)
    n_atoms = {e: int(np.sum(sym == e)) for e in sorted(set(symbols))}

    if r_max is None:
        r_max = float(
            perpendicular_widths(read_cells(source, start, stop, stride, group)).min() / 2.0
        )
    n = info.n_atoms
    iu, ju = np.triu_indices(n, 1)
    type_of = {p: t for t, p in enumerate(chosen)}
    ptype = np.array([type_of.get(pair_key(sym[i], sym[j]), -1) for i, j in zip(iu, ju)])
    keep = ptype >= 0
    iu, ju, ptype = (
        iu[keep].astype(np.int32),
        ju[keep].astype(np.int32),
        ptype[keep].astype(np.int32),
    )
    n_types = len(chosen)
    dump = n_types * n_bins
    n_pairs = len(iu)
    batch = int(max(1, min(chunk_size, 3_000_000 // max(n_pairs, 1))))

    counts = np.zeros(dump + 1, dtype=np.float64)
    volume_sum = 0.0
    n_frames = 0
    v_ref = None
    edges = None
    for chunk in iter_chunks(
        source, chunk_size, start, stop, stride, group, progress=progress, desc="rdf"
    ):
        cells = chunk.cells
        widths = perpendicular_widths(cells).min(axis=1)
        if edges is None:
            if r_max <= 0:
                raise ValueError(f"r_max must be positive, got {r_max}")
            edges = np.linspace(0.0, r_max, n_bins + 1)
        bad = np.nonzero(widths < 2.0 * r_max * (1.0 - 1e-9))[0]
        if len(bad):
            f = int(chunk.frames[bad[0]])
            raise ValueError(
                f"r_max={r_max:.4f} A exceeds half the cell width {widths[bad[0]] / 2:.4f} A "
                f"at frame {f}"
            )
        volumes = np.abs(np.linalg.det(cells))
        if v_ref is None:
            v_ref = float(volumes[0])
        volume_sum += float(volumes.sum())
        n_frames += len(chunk)
        if n_pairs == 0:
            continue
        weights = volumes / v_ref
        constant_volume = np.ptp(weights) < 1e-12
        for a in range(0, len(chunk), batch):
            pos = chunk.positions[a : a + batch]
            cel = cells[a : a + batch]
            m = len(pos)
            if m < batch:  # pad to a fixed shape: one compilation per run
                pos = np.concatenate([pos, np.repeat(pos[-1:], batch - m, axis=0)])
                cel = np.concatenate([cel, np.repeat(cel[-1:], batch - m, axis=0)])
            idx = _bin_indices(
                jnp.asarray(pos, jnp.float32),
                jnp.asarray(cel, jnp.float32),
                iu,
                ju,
                ptype,
                jnp.float32(n_bins / r_max),
                n_bins=n_bins,
                dump=dump,
            )
            idx = np.asarray(idx)[:m]
            if constant_volume:
                counts += weights[0] * np.bincount(idx.ravel().astype(np.int64), minlength=dump + 1)
            else:
                w = np.repeat(weights[a : a + m], idx.shape[1])
                counts += np.bincount(idx.ravel().astype(np.int64), weights=w, minlength=dump + 1)
    if n_frames == 0 or edges is None:
        raise ValueError("rdf: no frames selected")

    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g: dict[Pair, np.ndarray] = {}
    raw: dict[Pair, np.ndarray] = {}
    total_counts = np.zeros(n_bins)
    for t, (a, b) in enumerate(chosen):
        c = counts[t * n_bins : (t + 1) * n_bins]
        norm = n_atoms[a] * (n_atoms[a] - 1) / 2.0 if a == b else n_atoms[a] * n_atoms[b]
        raw[(a, b)] = c
        total_counts += c
        if norm == 0:
            continue
        g[(a, b)] = c * v_ref / (n_frames * norm * shell)
    g_total = None
    if total:
        g_total = total_counts * v_ref / (n_frames * n * (n - 1) / 2.0 * shell)
    return RDFResult(
        edges=edges,
        g=g,
        g_total=g_total,
        counts=raw,
        n_frames=n_frames,
        mean_volume=volume_sum / n_frames,
        n_atoms=n_atoms,
    )
