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
    """Sum-of-two-sinc radial basis (Kocer et al.), with the sqrt((n+1)^2+(n+2)^2) normalisation:
    norm_n [sinc((n+1) d/r_max) + sinc((n+2) d/r_max)].

    sin(kθ), k = 1..n_basis+1, come from sin θ and cos θ by the Chebyshev recurrence
    sin((k+1)θ) = 2 cos θ sin(kθ) - sin((k-1)θ): two transcendentals per pair instead of 2·n_basis
    sincs (the basis and its gradient were half of a water model's MD step; float32 error 8e-7
    against 4e-7 for the direct sincs, float64 1e-15). θ is kept above 1e-6 (sinc(0) = 1).
    """
    n = jnp.arange(n_basis, dtype=d.dtype)
    theta = jnp.maximum(jnp.pi * d / r_max, 1e-6)
    sin, two_cos = jnp.sin(theta), 2.0 * jnp.cos(theta)
    sines = [jnp.zeros_like(sin), sin]
    for _ in range(n_basis):
        sines.append(two_cos * sines[-1] - sines[-2])
    k = jnp.arange(1, n_basis + 2, dtype=d.dtype)
    sinc = jnp.stack(sines[1:], axis=-1) / (theta[..., None] * k)  # sinc(k d / r_max), k = 1..n_basis+1
    norm = (-1.0) ** n * math.sqrt(2.0) * math.pi / r_max**1.5
    norm = norm * (n + 1) * (n + 2) / jnp.sqrt((n + 1) ** 2 + (n + 2) ** 2)
    return norm * (sinc[..., :-1] + sinc[..., 1:])


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


# Unique Cartesian components of the symmetric rank-2 and rank-3 tensors n⊗n, n⊗n⊗n
_RANK2 = list(itertools.combinations_with_replacement(range(3), 2))  # 6
_RANK3 = list(itertools.combinations_with_replacement(range(3), 3))  # 10
_FULL2 = np.array([[_RANK2.index(tuple(sorted((a, b)))) for b in range(3)] for a in range(3)])
_FULL3 = np.array([[[_RANK3.index(tuple(sorted((a, b, c)))) for c in range(3)] for b in range(3)] for a in range(3)])


def angular_components(unit: jax.Array) -> jax.Array:
    """(..., 20): 1, n_a, the 6 unique n_a n_b and the 10 unique n_a n_b n_c."""
    cols = [jnp.ones_like(unit[..., 0])]
    cols += [unit[..., a] for a in range(3)]
    cols += [unit[..., a] * unit[..., b] for a, b in _RANK2]
    cols += [unit[..., a] * unit[..., b] * unit[..., c] for a, b, c in _RANK3]
    return jnp.stack(cols, axis=-1)


def moments(radial: jax.Array, unit: jax.Array) -> tuple[jax.Array, ...]:
    """Per-atom moments M0..M3 from dense neighbour rows.

    radial (N, K, R) (zero on padded slots), unit (N, K, 3). The neighbour sum is one batched
    matmul over the 20 unique angular components; full tensors are rebuilt per atom (cheap).
    Returns (N,R), (N,R,3), (N,R,3,3), (N,R,3,3,3).
    """
    summed = jnp.einsum("nkr,nkc->nrc", radial, angular_components(unit))  # (N, R, 20)
    m0 = summed[..., 0]
    m1 = summed[..., 1:4]
    m2 = summed[..., 4:10][..., _FULL2]
    m3 = summed[..., 10:20][..., _FULL3]
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


def pair_geometry(graph, dtype=None) -> tuple[jax.Array, jax.Array]:
    """Pair vectors r[n, k] = R_j - R_n + S @ cell and distances, (N, K, 3) and (N, K).

    The difference is taken in the positions' precision (float64), then cast to ``dtype``:
    pair vectors are small, so float32 loses nothing that matters there, and a float32 norm
    and its gradient are much cheaper on CPU than mixed precision. Padded slots get a dummy
    unit vector so neither values nor gradients become NaN.
    """
    cell_of_atom = graph.cells[graph.structure]  # (N, 3, 3)
    offset = jnp.einsum("nka,nab->nkb", graph.shifts, cell_of_atom)
    vec = graph.positions[graph.neighbors] - graph.positions[:, None, :] + offset
    if dtype is not None:
        vec = vec.astype(dtype)
    vec = jnp.where(graph.pair_mask[..., None], vec, jnp.array([1.0, 0.0, 0.0], vec.dtype))
    dist = jnp.sqrt(jnp.sum(vec * vec, axis=-1))
    return vec, dist


def averaged_descriptor(graph, *, n_basis: int = 4, r_min: float = 1.1, r_max: float = 6.0,
                        contractions: tuple[int, ...] = tuple(range(N_CONTRACTIONS)),
                        basis: str = "gaussian", dtype=None) -> jax.Array:
    """Element-blind Gaussian moments averaged over the real atoms of each structure, (B, F).

    No learned coefficients: the raw radial basis (R = n_basis) times the cosine cutoff. This
    is the ERBS collective-variable input; r_min is honoured (the reference hard-codes 1.5 Å).
    ``basis`` "gaussian" (default; erbs since 2025-01-22) or "bessel": apax's BesselBasis as the
    erbs code used it from 2024-11-17 to 2025-01-22 (no r_min, and apax's normalisation b_n = 1,
    i.e. :func:`bessel_basis` times (n+1)(n+2)/sqrt((n+1)^2+(n+2)^2) undone). ``dtype`` (e.g.
    float32): pair vectors formed in the positions' precision, then distances, basis, moments and
    contractions in ``dtype`` (see :func:`pair_geometry`); the average is float64.
    """
    vec, dist = pair_geometry(graph, dtype)
    if basis == "gaussian":
        raw = gaussian_basis(dist, n_basis, r_min, r_max)
    elif basis == "bessel":
        n = jnp.arange(n_basis, dtype=dist.dtype)
        raw = bessel_basis(dist, n_basis, r_max) * jnp.sqrt((n + 1) ** 2 + (n + 2) ** 2) / ((n + 1) * (n + 2))
    else:
        raise ValueError(f"averaged_descriptor basis must be 'gaussian' or 'bessel', got {basis!r}")
    radial = raw * (cosine_cutoff(dist, r_max) * graph.pair_mask)[..., None]
    feats = contract(*moments(radial, vec / dist[..., None]), contractions).astype(jnp.float64)
    weights = graph.atom_mask.astype(feats.dtype)
    n_structures = graph.cells.shape[0]
    total = jax.ops.segment_sum(feats * weights[:, None], graph.structure, num_segments=n_structures)
    count = jax.ops.segment_sum(weights, graph.structure, num_segments=n_structures)
    return total / jnp.maximum(count, 1.0)[:, None]
