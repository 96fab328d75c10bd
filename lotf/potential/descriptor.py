"""Gaussian-moment descriptor: radial bases, Cartesian moments up to rank 3, 8 invariant contractions.

Conventions follow the GMNN papers (seed 1, eq. 2-3) and the reference implementation's feature
layout (see ../shared/reference/apax_erbs.md §1.2-1.4), so feature counts match (R=5 -> 360):

    M0_r = sum_j R_r(d_ij),  M1_ra = sum_j R_r n_a,  M2_rab = sum_j R_r n_a n_b,  M3_rabc = ...

and the blocks G0..G7 below, each restricted to its non-redundant index set.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

N_CONTRACTIONS = 8


def cosine_cutoff(d: jax.Array, r_max: float) -> jax.Array:
    return 0.5 * (jnp.cos(jnp.pi * jnp.minimum(d, r_max) / r_max) + 1.0)


def gaussian_basis(d: jax.Array, n_basis: int, r_min: float, r_max: float) -> jax.Array:
    """Normalised equidistant Gaussians, centres r_min + (r_max - r_min) k / n, width n/r_max."""
    beta = n_basis**2 / r_max**2
    centres = r_min + (r_max - r_min) * jnp.arange(n_basis, dtype=d.dtype) / n_basis
    norm = (2.0 * beta / math.pi) ** 0.25
    return norm * jnp.exp(-beta * (d[..., None] - centres) ** 2)


def bessel_basis(d: jax.Array, n_basis: int, r_max: float) -> jax.Array:
    """Sum-of-two-sinc radial basis (Kocer et al.), with the sqrt((n+1)^2+(n+2)^2) normalisation."""
    n = jnp.arange(n_basis, dtype=d.dtype)
    x = d[..., None] / r_max
    norm = (-1.0) ** n * math.sqrt(2.0) * math.pi / r_max**1.5
    norm = norm * (n + 1) * (n + 2) / jnp.sqrt((n + 1) ** 2 + (n + 2) ** 2)
    return norm * (jnp.sinc((n + 1) * x) + jnp.sinc((n + 2) * x))


def _sym_pairs(r: int) -> np.ndarray:
    return np.array([(a, b) for a in range(r) for b in range(a, r)], dtype=np.int32)


def _g4_triples(r: int) -> np.ndarray:
    """Non-redundant (r, s, t) for the fully symmetric Tr(M2_r M2_s M2_t)."""
    same = [(i, i, i) for i in range(r)]
    two = [(i, j, j) for i in range(r) for j in range(r) if i != j]
    three = list(itertools.combinations(range(r), 3))
    return np.array(same + two + three, dtype=np.int32)


def contraction_sizes(n_radial: int) -> list[int]:
    r = n_radial
    sym = r * (r + 1) // 2
    return [r, sym, sym, sym, len(_g4_triples(r)), sym * r, sym * r, r**3]


def n_features(n_radial: int, contractions: tuple[int, ...] = tuple(range(N_CONTRACTIONS))) -> int:
    sizes = contraction_sizes(n_radial)
    return sum(sizes[c] for c in contractions)


def moments(radial: jax.Array, unit: jax.Array, centre: jax.Array, n_atoms: int) -> tuple[jax.Array, ...]:
    """Sum pair contributions into per-atom moments M0..M3.

    radial (P, R), unit (P, 3), centre (P,) sorted. Returns (N,R), (N,R,3), (N,R,3,3), (N,R,3,3,3).
    """
    nn = unit[:, :, None] * unit[:, None, :]
    nnn = nn[:, :, :, None] * unit[:, None, None, :]
    p, r = radial.shape
    angular = jnp.concatenate([jnp.ones((p, 1), unit.dtype), unit, nn.reshape(p, 9), nnn.reshape(p, 27)], axis=1)
    pair = radial[:, :, None] * angular[:, None, :]  # (P, R, 40)
    summed = jax.ops.segment_sum(pair, centre, num_segments=n_atoms, indices_are_sorted=True)
    m0 = summed[:, :, 0]
    m1 = summed[:, :, 1:4]
    m2 = summed[:, :, 4:13].reshape(n_atoms, r, 3, 3)
    m3 = summed[:, :, 13:40].reshape(n_atoms, r, 3, 3, 3)
    return m0, m1, m2, m3


def contract(m0, m1, m2, m3, contractions: tuple[int, ...]) -> jax.Array:
    """Rotation-invariant contractions G0..G7 of the moments, concatenated in block order."""
    r = m0.shape[1]
    sym = _sym_pairs(r)
    blocks = []
    for c in contractions:
        if c == 0:
            g = m0
        elif c == 1:
            g = jnp.einsum("nra,nsa->nrs", m1, m1)[:, sym[:, 0], sym[:, 1]]
        elif c == 2:
            g = jnp.einsum("nrab,nsab->nrs", m2, m2)[:, sym[:, 0], sym[:, 1]]
        elif c == 3:
            g = jnp.einsum("nrabc,nsabc->nrs", m3, m3)[:, sym[:, 0], sym[:, 1]]
        elif c == 4:
            t = _g4_triples(r)
            full = jnp.einsum("nrab,nsac,ntbc->nrst", m2, m2, m2)
            g = full[:, t[:, 0], t[:, 1], t[:, 2]]
        elif c == 5:
            full = jnp.einsum("nra,nsb,ntab->nrst", m1, m1, m2)
            g = full[:, sym[:, 0], sym[:, 1], :].reshape(m0.shape[0], -1)
        elif c == 6:
            full = jnp.einsum("nrabc,nsabd,ntcd->nrst", m3, m3, m2)
            g = full[:, sym[:, 0], sym[:, 1], :].reshape(m0.shape[0], -1)
        elif c == 7:
            g = jnp.einsum("nrabc,nsab,ntc->nrst", m3, m2, m1).reshape(m0.shape[0], -1)
        else:
            raise ValueError(f"unknown contraction index {c}; valid are 0..7")
        blocks.append(g)
    return jnp.concatenate(blocks, axis=1)


def pair_geometry(positions, cells, structure, idx_i, idx_j, shifts, pair_mask):
    """Pair vectors r_ij = R_j - R_i + S @ cell, distances and unit vectors (padded pairs safe)."""
    cell_of_pair = cells[structure[idx_i]]  # (P, 3, 3)
    offset = jnp.einsum("pa,pab->pb", shifts, cell_of_pair)
    vec = positions[idx_j] - positions[idx_i] + offset
    # padded pairs have zero length: replace so neither the value nor the gradient is NaN
    vec = jnp.where(pair_mask[:, None], vec, jnp.array([1.0, 0.0, 0.0], vec.dtype))
    dist = jnp.sqrt(jnp.sum(vec * vec, axis=-1))
    return vec, dist


def averaged_descriptor(
    positions, cell, idx_i, idx_j, shifts, pair_mask, *, n_basis: int = 4, r_min: float = 1.1,
    r_max: float = 6.0, contractions: tuple[int, ...] = tuple(range(N_CONTRACTIONS)),
) -> jax.Array:
    """Element-blind Gaussian moments averaged over atoms (the ERBS collective-variable input).

    No learned coefficients: the raw Gaussian basis (R = n_basis) times the cosine cutoff.
    """
    n = positions.shape[0]
    structure = jnp.zeros(n, dtype=jnp.int32)
    vec, dist = pair_geometry(positions, cell[None], structure, idx_i, idx_j, shifts, pair_mask)
    radial = gaussian_basis(dist, n_basis, r_min, r_max) * cosine_cutoff(dist, r_max)[:, None]
    radial = radial * pair_mask[:, None]
    unit = vec / dist[:, None]
    feats = contract(*moments(radial, unit, idx_i, n), contractions)
    return jnp.mean(feats, axis=0)
