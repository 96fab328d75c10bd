"""DFT-D3(BJ) dispersion (Grimme et al. 2010, 2011) as a JAX energy term.

The energy, in atomic units inside and eV outside, is

    E    = E2 + E3 + E_srb
    E2   = -1/2 sum_i sum_{j != i, images, r_ij <= cutoff}
              [ s6 C6_ij / (r^6 + R0_ij^6) + s8 C8_ij / (r^8 + R0_ij^8) ]
    C6_ij = sum_ab w_ia w_jb C6ref(Z_i a, Z_j b),   w_ia ∝ exp(-4 (CN_i - CNref_ia)^2), sum_a w_ia = 1
    C8_ij = 3 C6_ij Q_i Q_j,   Q_i = sqrt(0.5 <r^4>/<r^2>_i sqrt(Z_i))
    R0_ij = a1 sqrt(3 Q_i Q_j) + a2                                   (Becke-Johnson damping)
    CN_i  = sum_j 1 / (1 + exp(-16 (Rcov_i + Rcov_j) / r_ij + 16)) [x cp2k switch, below]
    E3   = sum_triangles s9 sqrt(C6_ij C6_jk C6_ik) (3 cos a cos b cos c + 1) / (r_ij r_jk r_ik)^3 f(r)
    f    = 1 / (1 + 6 (rbar / (4/3 R0bar))^-16),  rbar, R0bar: geometric means of the three
           distances and of the three R0AB cutoff radii (zero damping, as in the D3 definition)
    E_srb = -sum_pairs s (Z_i Z_j)^t1 exp(-g r R0AB^t2)               (optional, CP2K's SRB)

Two conventions, each reproducing a reference program:

``convention="cp2k"`` (default; CP2K 2023 ``DFTD3(BJ)``): the coordination-number counting
function is multiplied by ``0.5 (1 - tanh(r - 2 Rcov_ij))`` (r in bohr) and contributions not above
``eps_cn`` (CP2K's ``EPS_CN``, 1e-6) are dropped, so the CN needs no cutoff of its own beyond the
range where the counting function exceeds ``eps_cn`` (:func:`cp2k_cn_cutoff`: 5.2 A for H, B, C,
N, F). The three-body term takes triangles whose sides are below ``three_body_cutoff`` (default:
the pair cutoff, as CP2K) and whose side product is at most ``0.1 cutoff^3`` (CP2K's screening),
with s9 = s6. CP2K's ``R_CUTOFF`` is half its pair cutoff ("The cutoff will be 2 times this
value"): CP2K with ``R_CUTOFF 7.93766`` (the seed-1 input) is ``cutoff=15.87532`` here.
Differences from CP2K that remain: (1) CP2K's forces are not exactly the gradient of its
energy (its CN derivative multiplies by the switch squared), about 1e-4 relative; ours are;
(2) CP2K weights triangles that contain two periodic images of one atom by 1/2 or 2/3 depending
on how atoms are wrapped, so its energy depends on the wrapping; we count every triangle once
unless ``cp2k_triangle_weights`` asks for CP2K's numbers.

``convention="dftd3"`` (Grimme's dftd3 program and simple-dftd3): the plain counting function with
a sharp cutoff ``cn_cutoff`` (default 40 bohr = 21.17 A) and triangles with all sides within
``three_body_cutoff`` (default 40 bohr).

All cutoffs are sharp (the energy steps where a pair crosses a cutoff), as in both programs.
Units: lengths in A, energies in eV. Reference data: :func:`load_reference`.

Cost (300-atom BMIM-BF4 box, 2 CPU cores, MD list with 1.35 million slots for 1 million pairs
within 20 A): about 16 ms per energy+forces+stress call on a quiet machine (hand-written
derivatives, see :class:`D3Term`): 12 ms for the single two-body pass over the pairs, 4 ms for
finding the 2 % of pairs the coordination numbers need (within 5.2 A) at each call. The
three-body term enumerates triangles explicitly, about 1e6 triangles and 1.5 s per call with
7 A sides, so CP2K's full three-body range is out of reach for condensed phases and
``three_body_cutoff`` must be chosen (E3 is ~2 % of E2 there and not converged at 7 A).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols

BOHR = 0.529177210903  # A (CODATA 2018, as CP2K 2023)
HARTREE = 27.211386245988  # eV (CODATA 2018)
MAX_ELEMENT = 94  # the D3 reference covers H-Pu
MAX_REFERENCES = 5
K1 = 16.0  # steepness of the counting function
K2 = 4.0 / 3.0  # scaling of the covalent radii
K3 = 4.0  # width of the Gaussian CN weights
ATM_ALPHA = 16.0  # exponent of the three-body zero damping
ATM_RADIUS_SCALE = 4.0 / 3.0
CP2K_PAIR_FILE = Path("/usr/share/cp2k/dftd3.dat")
PACKAGED_DATA = Path(__file__).with_name("d3_data.npz")
CONVENTIONS = ("cp2k", "dftd3")
SRB_DEFAULT = (0.08, 10.0, 0.5, -1.0)  # CP2K SHORT_RANGE_CORRECTION_PARAMETERS (s, g, t1, t2), B97-3c


@dataclass(frozen=True)
class BJParams:
    """Becke-Johnson damping parameters; a2 in bohr. s9 scales the three-body term."""

    s6: float
    s8: float
    a1: float
    a2: float
    s9: float = 1.0


# D3(BJ) parameters (s6, s8, a1, a2) from Grimme, Ehrlich, Goerigk, J. Comput. Chem. 32, 1456 (2011)
# and Goerigk et al., PCCP 19, 32184 (2017); B97-3c from Brandenburg et al., J. Chem. Phys. 148,
# 064104 (2018). Keys are lower case.
FUNCTIONALS: dict[str, BJParams] = {
    "b97-3c": BJParams(1.0, 1.5, 0.37, 4.1),
    "pbe": BJParams(1.0, 0.7875, 0.4289, 4.4407),
    "pbe0": BJParams(1.0, 1.2177, 0.4145, 4.8593),
    "revpbe": BJParams(1.0, 2.3550, 0.5238, 3.5016),
    "revpbe0": BJParams(1.0, 1.7588, 0.4679, 3.7619),
    "revpbe38": BJParams(1.0, 1.4760, 0.4309, 3.9446),
    "rpbe": BJParams(1.0, 0.8318, 0.1820, 4.0094),
    "pbesol": BJParams(1.0, 2.9491, 0.4466, 6.1742),
    "blyp": BJParams(1.0, 2.6996, 0.4298, 4.2359),
    "b3lyp": BJParams(1.0, 1.9889, 0.3981, 4.4211),
    "bp86": BJParams(1.0, 3.2822, 0.3946, 4.8516),
    "b97-d": BJParams(1.0, 2.2609, 0.5545, 3.2297),
    "tpss": BJParams(1.0, 1.9435, 0.4535, 4.4752),
    "tpss0": BJParams(1.0, 1.2576, 0.3768, 4.5865),
    "scan": BJParams(1.0, 0.0, 0.538, 5.42),
    "hse06": BJParams(1.0, 2.3100, 0.3830, 5.6850),
    "pw6b95": BJParams(1.0, 0.7257, 0.2076, 6.3750),
}


def damping_parameters(functional: str | BJParams) -> BJParams:
    """BJ parameters for a functional name (case-insensitive) or pass-through of :class:`BJParams`."""
    if isinstance(functional, BJParams):
        return functional
    key = str(functional).strip().lower()
    if key not in FUNCTIONALS:
        raise ValueError(f"D3(BJ): unknown functional '{functional}' (known: {', '.join(sorted(FUNCTIONALS))}; "
                         "or pass BJParams(s6, s8, a1, a2))")
    return FUNCTIONALS[key]


# ----------------------------------------------------------------------------------------------
# reference data


@dataclass(frozen=True)
class D3Reference:
    """Reference tables indexed by atomic number (row 0 unused), atomic units.

    ``c6[Za, Zb, a, b]``: reference C6 (Hartree bohr^6) of reference a of Za with reference b of Zb,
    0 where a reference does not exist; ``cn[Z, a]``: reference coordination numbers (padded with
    ``n_ref[Z]`` marking the valid ones); ``sqrt_q[Z] = sqrt(0.5 <r4>/<r2> sqrt(Z))``;
    ``rcov[Z]``: covalent radii scaled by 4/3 (bohr); ``r0ab[Za, Zb]``: cutoff radii (bohr).
    """

    c6: np.ndarray
    cn: np.ndarray
    n_ref: np.ndarray
    sqrt_q: np.ndarray
    rcov: np.ndarray
    r0ab: np.ndarray
    source: str


def read_dftd3_dat(path: str | os.PathLike) -> np.ndarray:
    """Read a ``dftd3.dat`` C6 reference file (the format CP2K ships) into (n_records, 5) floats.

    Format: the first line holds the number of values and the number of records; then the values
    follow in free format, five per record: C6 (Hartree bohr^6), encoded Z_a, encoded Z_b, CN_a,
    CN_b, where the encoded Z is ``Z + 100 * (reference index - 1)`` (up to 5 references per
    element). Each unordered pair of element references appears once.
    """
    path = Path(path)
    try:
        with open(path) as handle:
            header = handle.readline().split()
            values = np.array(handle.read().split(), dtype=float)
    except (OSError, ValueError) as error:
        raise ValueError(f"D3 reference file {path}: cannot read ({error})") from None
    if len(header) < 2:
        raise ValueError(f"D3 reference file {path}: first line must hold the value and record counts")
    n_values, n_records = int(header[0]), int(header[1])
    if values.size != n_values or n_values != 5 * n_records:
        raise ValueError(f"D3 reference file {path}: expected {n_values} values in {n_records} records, "
                         f"found {values.size}")
    return values.reshape(n_records, 5)


def reference_from_records(records: np.ndarray, r0ab_packed: np.ndarray, rcov_angstrom: np.ndarray,
                           r2r4: np.ndarray, source: str) -> D3Reference:
    """Assemble :class:`D3Reference` from C6 records and the per-element tables (see _make_d3_data)."""
    n = MAX_ELEMENT + 1
    c6 = np.zeros((n, n, MAX_REFERENCES, MAX_REFERENCES))
    cn = np.zeros((n, MAX_REFERENCES))
    n_ref = np.zeros(n, dtype=np.int32)
    code_a = np.rint(records[:, 1]).astype(int)
    code_b = np.rint(records[:, 2]).astype(int)
    za, ra = code_a % 100, code_a // 100
    zb, rb = code_b % 100, code_b // 100
    if za.min() < 1 or max(za.max(), zb.max()) > MAX_ELEMENT or max(ra.max(), rb.max()) >= MAX_REFERENCES:
        raise ValueError(f"D3 reference {source}: element or reference index out of range")
    c6[za, zb, ra, rb] = records[:, 0]
    c6[zb, za, rb, ra] = records[:, 0]
    cn[za, ra] = records[:, 3]
    cn[zb, rb] = records[:, 4]
    np.maximum.at(n_ref, za, ra + 1)
    np.maximum.at(n_ref, zb, rb + 1)
    z = np.arange(1, n)
    sqrt_q = np.zeros(n)
    sqrt_q[1:] = np.sqrt(0.5 * np.asarray(r2r4, float) * np.sqrt(z))
    rcov = np.zeros(n)
    rcov[1:] = K2 * np.asarray(rcov_angstrom, float) / BOHR
    r0ab = np.zeros((n, n))
    rows, cols = np.tril_indices(MAX_ELEMENT)
    r0ab[rows + 1, cols + 1] = np.asarray(r0ab_packed, float) / BOHR
    r0ab[cols + 1, rows + 1] = np.asarray(r0ab_packed, float) / BOHR
    # np.tril_indices runs row by row (a = 1..94, b = 1..a): the packing order of the R0AB table
    return D3Reference(c6=c6, cn=cn, n_ref=n_ref, sqrt_q=sqrt_q, rcov=rcov, r0ab=r0ab, source=source)


@functools.lru_cache(maxsize=4)
def load_reference(parameter_file: str | None = None) -> D3Reference:
    """The D3 reference tables.

    C6 references come from ``parameter_file`` if given, else CP2K's ``/usr/share/cp2k/dftd3.dat``
    when present (so our numbers use the same table as the CP2K that labels the data), else from
    the packaged copy ``d3_data.npz``. Radii and <r4>/<r2> always come from the packaged file.
    """
    if not PACKAGED_DATA.exists():
        raise FileNotFoundError(f"D3 data file {PACKAGED_DATA} is missing; run python -m lotf.potential._make_d3_data")
    with np.load(PACKAGED_DATA) as data:
        tables = {key: data[key] for key in ("records", "r0ab", "rcov", "r2r4")}
    if parameter_file is None and CP2K_PAIR_FILE.exists():
        parameter_file = str(CP2K_PAIR_FILE)
    if parameter_file is not None:
        records = read_dftd3_dat(parameter_file)
        source = str(parameter_file)
    else:
        records = tables["records"]
        source = str(PACKAGED_DATA)
    return reference_from_records(records, tables["r0ab"], tables["rcov"], tables["r2r4"], source)


def records_digest(records: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(records, dtype=np.float64).tobytes()).hexdigest()


def check_elements(numbers, where: str = "") -> None:
    """Fail with one line naming the element if D3 has no reference for it."""
    numbers = np.asarray(numbers)
    bad = sorted({int(z) for z in numbers.ravel() if z < 1 or z > MAX_ELEMENT})
    if bad:
        names = ", ".join(f"{chemical_symbols[z] if 0 <= z < len(chemical_symbols) else '?'} (Z={z})" for z in bad)
        raise ValueError(f"D3: no reference data for element {names}{where}; D3 covers H-Pu (Z 1-94)")


def cp2k_cn_cutoff(numbers, eps_cn: float = 1e-6) -> float:
    """Distance (A) beyond which every CP2K-style CN contribution among these elements is <= eps_cn."""
    ref = load_reference()
    elements = sorted({int(z) for z in np.asarray(numbers).ravel()})
    check_elements(elements)
    rco_max = max(ref.rcov[a] + ref.rcov[b] for a in elements for b in elements)
    lo, hi = rco_max, 2.0 * rco_max + 40.0
    for _ in range(100):  # the counting function decreases monotonically beyond rco
        mid = 0.5 * (lo + hi)
        value = 0.5 * (1.0 - math.tanh(mid - 2.0 * rco_max)) / (1.0 + math.exp(-K1 * (rco_max / mid - 1.0)))
        lo, hi = (mid, hi) if value > eps_cn else (lo, mid)
    return hi * BOHR + 0.01


def sort_rows_by_distance(positions, cell, idx, shifts, mask, short_cutoff: float):
    """Sort each neighbour row by pair distance (numpy, host; e.g. at every list rebuild).

    Returns (idx, shifts, mask, columns): ``columns`` is the largest number of pairs closer than
    ``short_cutoff`` in any row. Pass ``cn_columns >= columns`` to :class:`D3Term` with
    ``short_cutoff = cn_cutoff + skin`` and the coordination numbers read only those columns
    (the pair list must then be rebuilt, and sorted again, before any atom moves skin/2).
    """
    positions, cell = np.asarray(positions, float), np.asarray(cell, float)
    idx, shifts, mask = np.asarray(idx), np.asarray(shifts), np.asarray(mask)
    vec = positions[idx] - positions[:, None, :] + shifts @ cell
    dist = np.where(mask, np.linalg.norm(vec, axis=-1), np.inf)
    order = np.argsort(dist, axis=1, kind="stable")
    columns = int((dist < short_cutoff).sum(axis=1).max(initial=0))
    return (np.take_along_axis(idx, order, axis=1), np.take_along_axis(shifts, order[..., None], axis=1),
            np.take_along_axis(mask, order, axis=1), columns)


# ----------------------------------------------------------------------------------------------
# the energy term


class Pairs(NamedTuple):
    """Flat, centre-sorted pair arrays: r_ij = R[j] - R[i] + shifts @ cell."""

    i: jax.Array
    j: jax.Array
    shifts: jax.Array
    mask: jax.Array


class PairGraph(NamedTuple):
    """The fields :class:`D3Term` reads, named as in :class:`~lotf.potential.model.Graph`."""

    positions: jax.Array  # (N, 3)
    cells: jax.Array  # (B, 3, 3)
    numbers: jax.Array  # (N,) atomic numbers
    atom_mask: jax.Array  # (N,)
    structure: jax.Array  # (N,) structure index of each atom
    neighbors: jax.Array  # (N, K) neighbour atoms of each row atom (a full list)
    shifts: jax.Array  # (N, K, 3) integer image shifts (any numeric dtype)
    pair_mask: jax.Array  # (N, K)


class D3Params(NamedTuple):
    """Traced parameters of :class:`D3Term` (a pytree; changing them does not recompile)."""

    c6: jax.Array  # (S, S, 5, 5) reference C6 for the term's elements
    cn_ref: jax.Array  # (S, 5)
    ref_mask: jax.Array  # (S, 5) bool
    sqrt_q: jax.Array  # (S,)
    rcov: jax.Array  # (S,)
    r0ab: jax.Array  # (S, S)
    lookup: jax.Array  # (95,) atomic number -> element slot
    z: jax.Array  # (S,) atomic numbers of the slots
    damping: jax.Array  # (5,) s6, s8, a1, a2, s9


class _Rows(NamedTuple):
    """Neighbour rows (N, K) and the per-atom data the row kernels read (not differentiated)."""

    idx: jax.Array
    shifts: jax.Array  # (N, K, 3)
    mask: jax.Array
    slot: jax.Array  # (N,) element slot
    structure: jax.Array  # (N,)


def _row_chunk(n_rows: int, n_cols: int, target: int = 16384) -> tuple[int, int]:
    """Rows per chunk (about ``target`` pair slots, cache sized) and the number of chunks."""
    chunk = max(1, min(n_rows, target // max(n_cols, 1)))
    return chunk, -(-n_rows // chunk)


def _scan_rows(body, n_rows: int, n_cols: int, chunk: int | None = None):
    """Run ``body(rows) -> per-row outputs`` over chunks of rows; returns per-row outputs (N, ...).

    The last chunk is shifted back to end at the last row; rows it repeats are dropped.
    ``chunk``: rows per chunk (default: :func:`_row_chunk`).
    """
    if chunk is None:
        chunk, n_chunks = _row_chunk(n_rows, n_cols)
    else:
        n_chunks = -(-n_rows // chunk)

    def step(carry, i):
        start = jnp.minimum(i * chunk, n_rows - chunk)
        rows = start + jnp.arange(chunk)
        out = body(start, rows)
        fresh = rows >= i * chunk
        out = jax.tree.map(lambda x: jnp.where(fresh.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0), out)
        return carry, (rows, out)

    _, (rows, out) = jax.lax.scan(step, None, jnp.arange(n_chunks))
    rows = rows.reshape(-1)
    def per_row(x):
        x = x.reshape((-1,) + x.shape[2:])
        return jnp.zeros((n_rows,) + x.shape[1:], x.dtype).at[rows].add(x)

    return jax.tree.map(per_row, out)


def _used_columns(mask) -> jax.Array:
    """() one past the last column that holds a pair in any row (lists pad rows at their end)."""
    columns = jnp.arange(1, mask.shape[1] + 1, dtype=jnp.int32)
    mask = jax.lax.optimization_barrier(mask)  # a graph closed over: no slow constant folding
    return jnp.max(jnp.where(jnp.any(mask, axis=0), columns, 0))


def _scan_row_sums(body, n_rows: int, n_cols: int, used, target: int = 16384):
    """Per-row sums over the slots of rows (N, ...), visiting only columns below ``used``.

    ``body(start, rows, col_start, fresh) -> per-row sums`` of a block of rows and of an eighth
    of the columns from ``col_start``; ``fresh`` marks the columns this block adds (the last
    block is shifted back to end at the last column). Neighbour rows are padded at their end
    (a fifth of an MD list), and the blocks beyond ``used`` are skipped.
    """
    width = min(-(-n_cols // 64) * 8, n_cols)
    chunk = max(1, min(n_rows, target // width))
    n_blocks = (used + width - 1) // width

    def row_chunk(start, rows):
        def block(b, acc):
            col_start = jnp.minimum(b * width, n_cols - width)
            fresh = col_start + jnp.arange(width) >= b * width
            return jax.tree.map(jnp.add, acc, body(start, rows, col_start, fresh))

        shapes = jax.eval_shape(body, start, rows, 0, jnp.ones(width, bool))
        init = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        return jax.lax.fori_loop(0, n_blocks, block, init)

    return _scan_rows(row_chunk, n_rows, n_cols, chunk)


def _chunk_vectors(positions, cells, data: _Rows, start, rows, chunk, col_start=None, fresh=None):
    """Pair vectors and integer shifts (three (C, K) arrays each), neighbours and mask of a chunk.

    With ``col_start``, only ``len(fresh)`` columns from there; columns not ``fresh`` are masked.
    """
    def cut(x):
        x = jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=0)
        return x if col_start is None else jax.lax.dynamic_slice_in_dim(x, col_start, fresh.shape[0], axis=1)

    idx, raw, mask = cut(data.idx), cut(data.shifts), cut(data.mask)
    if fresh is not None:
        mask = mask & fresh
    shifts = [raw[..., a].astype(positions.dtype) for a in range(3)]
    cell = cells[data.structure[rows]]  # (C, 3, 3)
    comps = []
    for c in range(3):
        p = positions[:, c]
        offset = sum(shifts[a] * cell[:, a, c][:, None] for a in range(3))
        comps.append(_take(p, idx) - p[rows][:, None] + offset)
    return comps, idx, shifts, mask


def _take(table, idx):
    """``table[idx]`` for valid (non-negative, in range) indices: no wrapping or clamping."""
    dims = jax.lax.GatherDimensionNumbers(offset_dims=tuple(range(idx.ndim, idx.ndim + table.ndim - 1)),
                                          collapsed_slice_dims=(0,), start_index_map=(0,))
    return jax.lax.gather(table, idx[..., None], dims, (1,) + table.shape[1:],
                          mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _row_sums(parts):
    """Row sums (axis 1) of several (C, K) arrays in one reduction (one pass over the slots)."""
    parts = tuple(parts)
    zeros = tuple(jnp.zeros((), x.dtype) for x in parts)
    return jax.lax.reduce(parts, zeros, lambda a, b: tuple(x + y for x, y in zip(a, b)), (1,))


def _cell_sums(shifts, g_comps):
    """Per-row sums of S_a g_b (C, 3, 3), the cell derivative of a chunk, in one reduction."""
    sums = _row_sums([s * g for s in shifts for g in g_comps])
    return jnp.stack(sums, axis=-1).reshape(-1, 3, 3)


def _split(graph):
    """(graph, short list or None) of a graph or a WithShortList."""
    from lotf.potential.predict import WithShortList

    return (graph.graph, graph.short) if isinstance(graph, WithShortList) else (graph, None)


class D3Term:
    """D3(BJ) on a graph: ``structure_energies(params, graph) -> (B,)`` (eV), a ``make_predict`` term.

    ``graph`` is a :class:`~lotf.potential.model.Graph` or a :class:`PairGraph`: one row of
    neighbours per atom, a *full* list (both i->j and j->i) reaching ``list_cutoff`` (the largest
    of the pair, CN and three-body cutoffs, A); pairs beyond each cutoff are masked here.

    Two implementations, same numbers (tested to 1e-13): ``implementation="auto"`` runs
    cache-sized blocks of rows through kernels with hand-written derivatives (custom VJP):
    per-atom sums are row reductions, forces use the symmetry of the full list so nothing is
    scattered over pairs, and the two-body forward pass already forms all derivative sums (in
    one reduction) that the backward pass scales: one pass over the pairs per
    energy+forces+stress call, skipping the padded end of the rows, and no cell sums when the
    cell is not differentiated. The coordination numbers read only the pairs within
    ``cn_cutoff``, found at each call (:meth:`_row_cn`). ``"reference"`` is plain autodiff over
    flat pairs (the cross-check). Three-body triangles always use autodiff.

    ``elements`` (atomic numbers) restricts the tables to the elements present (cheaper C6
    lookups); every element of the graph must then be listed. None: all 94. ``cn_cutoff`` None:
    with "cp2k" the range of CP2K's counting function for these elements (15 A for all 94),
    with "dftd3" 40 bohr.

    Lists sorted by distance at each rebuild (:func:`sort_rows_by_distance`, as
    :class:`~lotf.potential.d3_calculator.D3Calculator` does) may set ``cn_columns`` and skip
    the search for the coordination pairs. A :class:`~lotf.potential.predict.WithShortList`
    graph skips it too: the coordination numbers then read the short list (any list reaching
    ``cn_cutoff``; in MD the MLP's), which costs a tenth of the search through a 20 A list.

    Three-body triangles are enumerated inside the energy function from the pair list (jit-safe,
    static capacities ``max_legs``, ``max_triplets``; see :meth:`three_body_sizes`); energies
    become NaN when a capacity is exceeded. Cost grows with the number of triangles, about
    N (rho 4/3 pi rc^3)^2 / 6 for sides up to rc.
    """

    def __init__(self, damping: str | BJParams = "b97-3c", cutoff: float = 20.0, cn_cutoff: float | None = None,
                 three_body: bool = False, three_body_cutoff: float | None = None, convention: str = "cp2k",
                 eps_cn: float = 1e-6, short_range_correction: bool = False,
                 srb_parameters: tuple[float, float, float, float] = SRB_DEFAULT,
                 elements: Sequence[int] | None = None, cp2k_triangle_weights: bool = False,
                 max_legs: int = 0, max_triplets: int = 0, implementation: str = "auto",
                 cn_columns: int | None = None, parameter_file: str | None = None):
        if convention not in CONVENTIONS:
            raise ValueError(f"D3: 'convention' must be one of {CONVENTIONS} (got {convention!r})")
        if implementation not in ("auto", "reference"):
            raise ValueError(f"D3: 'implementation' must be 'auto' or 'reference' (got {implementation!r})")
        if not cutoff > 0:
            raise ValueError(f"D3: 'cutoff' must be positive (got {cutoff})")
        self.damping = damping_parameters(damping)
        self.elements = None if elements is None else tuple(sorted({int(z) for z in elements}))
        if self.elements is not None:
            check_elements(self.elements)
        self.cutoff = float(cutoff)
        self.convention = convention
        self.eps_cn = float(eps_cn)
        if cn_cutoff is None:
            cn_cutoff = cp2k_cn_cutoff(self.elements or range(1, MAX_ELEMENT + 1), eps_cn) \
                if convention == "cp2k" else 40.0 * BOHR
        if not cn_cutoff > 0:
            raise ValueError(f"D3: 'cn_cutoff' must be positive (got {cn_cutoff})")
        self.cn_cutoff = float(cn_cutoff)
        self.three_body = bool(three_body)
        if three_body_cutoff is None:
            three_body_cutoff = cutoff if convention == "cp2k" else 40.0 * BOHR
        self.three_body_cutoff = float(three_body_cutoff)
        self.short_range_correction = bool(short_range_correction)
        self.srb_parameters = tuple(float(x) for x in srb_parameters)
        self.cp2k_triangle_weights = bool(cp2k_triangle_weights)
        self.max_legs, self.max_triplets = int(max_legs), int(max_triplets)
        self.implementation = implementation
        self.cn_columns = None if cn_columns is None else int(cn_columns)
        self.parameter_file = parameter_file

    def __repr__(self) -> str:
        return (f"D3Term({self.damping}, cutoff={self.cutoff}, cn_cutoff={self.cn_cutoff:.4g}, "
                f"three_body={self.three_body}, convention={self.convention!r})")

    @property
    def list_cutoff(self) -> float:
        """Radius the graph's pair list must cover (A)."""
        cutoffs = [self.cutoff, self.cn_cutoff]
        if self.three_body:
            cutoffs.append(self.three_body_cutoff)
        return float(max(cutoffs))

    def replace(self, **changes) -> D3Term:
        """A copy with some attributes changed (capacities, ``cn_columns``): a new function to jit."""
        new = copy.copy(self)
        for key, value in changes.items():
            if not hasattr(new, key):
                raise AttributeError(f"D3Term has no attribute '{key}'")
            setattr(new, key, value)
        return new

    def with_capacity(self, max_legs: int, max_triplets: int) -> D3Term:
        """A copy with new three-body capacities (a new function to jit)."""
        return self.replace(max_legs=int(max_legs), max_triplets=int(max_triplets))

    # -- parameters --------------------------------------------------------------------------

    def params(self) -> D3Params:
        """Reference tables (restricted to ``elements``) and damping parameters as a pytree."""
        ref = load_reference(self.parameter_file)
        z = np.arange(1, MAX_ELEMENT + 1) if self.elements is None else np.asarray(self.elements)
        lookup = np.zeros(MAX_ELEMENT + 1, dtype=np.int32)
        lookup[z] = np.arange(len(z), dtype=np.int32)
        ref_mask = np.arange(MAX_REFERENCES)[None, :] < ref.n_ref[z][:, None]
        d = self.damping
        s9 = d.s6 if self.convention == "cp2k" else d.s9  # CP2K scales the C9 term by s6
        return D3Params(
            c6=jnp.asarray(ref.c6[np.ix_(z, z)]), cn_ref=jnp.asarray(ref.cn[z]), ref_mask=jnp.asarray(ref_mask),
            sqrt_q=jnp.asarray(ref.sqrt_q[z]), rcov=jnp.asarray(ref.rcov[z]),
            r0ab=jnp.asarray(ref.r0ab[np.ix_(z, z)]), lookup=jnp.asarray(lookup),
            z=jnp.asarray(z, dtype=jnp.float64), damping=jnp.asarray([d.s6, d.s8, d.a1, d.a2, s9], dtype=jnp.float64),
        )

    # -- shared pieces -------------------------------------------------------------------------

    @staticmethod
    def _pairs(graph) -> Pairs:
        """The graph's neighbour rows as flat pair arrays, sorted by centre atom."""
        n, k = graph.neighbors.shape
        idx_i = jnp.repeat(jnp.arange(n, dtype=graph.neighbors.dtype), k)
        return Pairs(idx_i, graph.neighbors.reshape(-1), graph.shifts.reshape(-1, 3), graph.pair_mask.reshape(-1))

    @staticmethod
    def _geometry(graph, pairs: Pairs):
        cell_of_pair = graph.cells[graph.structure[pairs.i]]
        offset = jnp.einsum("pa,pab->pb", pairs.shifts.astype(graph.positions.dtype), cell_of_pair)
        vec = graph.positions[pairs.j] - graph.positions[pairs.i] + offset
        # padded pairs: far away, so every value and gradient stays finite before masking
        vec = jnp.where(pairs.mask[:, None], vec, jnp.array([1.0e3, 0.0, 0.0], vec.dtype))
        return vec, jnp.sqrt(jnp.sum(vec * vec, axis=-1))

    def _count(self, r, rco):
        """CN counting function and its derivative (r, rco in bohr; eps_cn not applied)."""
        sig = jax.nn.sigmoid(K1 * (rco / r - 1.0))
        dsig = -sig * (1.0 - sig) * K1 * rco / (r * r)
        if self.convention == "dftd3":
            return sig, dsig
        t = jnp.tanh(r - 2.0 * rco)
        switch = 0.5 * (1.0 - t)
        return sig * switch, dsig * switch - sig * 0.5 * (1.0 - t * t)

    def _cn_mask(self, mask, dist, count):
        mask = mask & (dist <= self.cn_cutoff)
        return mask & (count > self.eps_cn) if self.convention == "cp2k" else mask

    def _weights(self, params: D3Params, slot, cn):
        """Gaussian reference weights w (N, 5), normalised, and v[k, s, a] = sum_b C6ref(s a, Z_k b) w_kb."""
        cn_ref = params.cn_ref[slot]
        valid = params.ref_mask[slot]
        d2 = (cn[:, None] - cn_ref) ** 2
        nearest = jnp.min(jnp.where(valid, d2, jnp.inf), axis=1, keepdims=True)
        # shifted Gaussians: identical to exp(-4 d2) / sum after normalisation, but never underflow
        w = jnp.where(valid, jnp.exp(-K3 * (jnp.where(valid, d2, nearest) - nearest)), 0.0)
        return w / jnp.sum(w, axis=1, keepdims=True)

    @staticmethod
    def _v(params: D3Params, slot, w):
        return jnp.einsum("skab,kb->ksa", params.c6[:, slot], w)  # (N, S, 5)

    @staticmethod
    def _c6(slot, w, v, i, j):
        """C6 between atoms i and j (index arrays of any shape)."""
        return jnp.einsum("...a,...a->...", w[i], v[j, slot[i]])

    def _pair_tables(self, params: D3Params):
        """Species-pair tables: R0^6, R0^8, 3 Q_i Q_j (BJ) and the SRB prefactor and exponent."""
        a1, a2 = params.damping[2], params.damping[3]
        qq = params.sqrt_q[:, None] * params.sqrt_q[None, :]
        r0 = a1 * jnp.sqrt(3.0 * qq) + a2
        s, g, t1, t2 = self.srb_parameters
        srb_pre = s * (params.z[:, None] * params.z[None, :]) ** t1
        srb_exp = g * params.r0ab**t2
        return jnp.stack([r0**6, r0**8, 3.0 * qq], axis=-1), srb_pre, srb_exp

    def _pair_energy(self, params, tables, c6, si, sj, r):
        """Pair energy (Hartree), its r-derivative and its C6-free factor; r in bohr."""
        s6, s8 = params.damping[0], params.damping[1]
        bj, srb_pre, srb_exp = tables
        r0_6, r0_8, q = jnp.moveaxis(bj[si, sj], -1, 0)  # one gather of (R0^6, R0^8, 3 Q_i Q_j)
        r2 = r * r
        r6 = r2 * r2 * r2
        a = 1.0 / (r6 + r0_6)
        b = 1.0 / (r6 * r2 + r0_8)
        g = -(s6 * a + s8 * q * b)
        de = c6 * (6.0 * s6 * r6 / r * a * a + 8.0 * s8 * q * r6 * r * b * b)
        e = c6 * g
        if self.short_range_correction:  # CP2K applies its SRB below 30 bohr only
            k = srb_exp[si, sj]
            srb = jnp.where(r < 30.0, -srb_pre[si, sj] * jnp.exp(-k * r), 0.0)
            e, de = e + srb, de - k * srb
        return e, de, g

    # -- row kernels (custom VJP) ----------------------------------------------------------------

    def _row_cn(self, params: D3Params, positions, cells, data: _Rows, search: bool = True):
        """(N,) coordination numbers over neighbour rows, with a hand-written VJP.

        The counting function reaches ``cn_cutoff`` (5.2 A for CP2K's convention with H-F), far
        shorter than a 20 A dispersion list, so the pairs within it are gathered first: one pass
        over every slot computes distances only (:meth:`_near_columns`), and the CN and its
        derivative then read those few columns per row. A row holding more such pairs than the
        columns kept (:meth:`_cn_capacity`) makes this call use the full rows instead (same
        numbers, slower). With ``cn_columns`` set, only the first columns are read: the caller
        guarantees that rows were sorted by distance at build time and that every pair within
        ``cn_cutoff`` (plus the list's skin) sits in them, as
        :class:`~lotf.potential.d3_calculator.D3Calculator` does. ``search`` False: read every
        column of ``data`` (a short list's rows).
        """
        columns = None  # None: read every column of the rows (a short list's are read whole)
        if search and self.cn_columns is not None and self.cn_columns < data.idx.shape[1]:
            c = self.cn_columns
            data = data._replace(idx=data.idx[:, :c], shifts=data.shifts[:, :c], mask=data.mask[:, :c])
        elif search and self.cn_columns is None:
            columns = self._cn_capacity(data.idx.shape[1])
        value, grad, factor_shape = self._row_cn_kernels(params)

        def forward(pos, cell):
            """CN, the per-slot derivative factors of the rows used, and those rows."""
            if columns is None:
                return (*value(data, pos, cell), None)
            near, overflow = self._near_columns(pos, cell, data, columns)

            def full_rows():  # their derivative factors are recomputed in the backward pass
                return value(data, pos, cell)[0], jnp.zeros(factor_shape(near), pos.dtype)

            cn, factor = jax.lax.cond(overflow, full_rows, lambda: value(near, pos, cell))
            return cn, factor, (near, overflow)

        @jax.custom_vjp
        def cn_fn(pos, cell):
            return forward(pos, cell)[0]

        def fwd(pos, cell):
            with_cell = cell.perturbed
            pos, cell = pos.value, cell.value
            cn, factor, rows = forward(pos, cell)
            return cn, (pos, cell, factor, rows, with_cell)

        def bwd(res, lam):
            pos, cell, factor, rows, with_cell = res
            if isinstance(lam, jax.custom_derivatives.SymbolicZero):
                lam = jnp.zeros(lam.shape, lam.dtype)
            if rows is None:
                return grad(data, pos, cell, lam, factor, with_cell)
            near, overflow = rows
            return jax.lax.cond(overflow, lambda: grad(data, pos, cell, lam, None, with_cell),
                                lambda: grad(near, pos, cell, lam, factor, with_cell))

        cn_fn.defvjp(fwd, bwd, symbolic_zeros=True)
        return cn_fn(positions, cells)

    def _cn_capacity(self, n_cols: int) -> int | None:
        """Columns kept per row for the pairs within ``cn_cutoff`` (found at every call).

        Three times a row's share of the pairs within ``cn_cutoff`` at uniform density (``n_cols``
        is sized for ``list_cutoff``), plus 16; None when that is not much shorter than a row.
        """
        share = (min(self.cn_cutoff, self.list_cutoff) / self.list_cutoff) ** 3
        columns = -(-(int(3.0 * share * n_cols) + 16) // 8) * 8
        return columns if 2 * columns <= n_cols else None

    def _near_columns(self, positions, cells, data: _Rows, columns: int) -> tuple[_Rows, jax.Array]:
        """The rows cut to ``columns`` slots holding every pair within ``cn_cutoff`` (slot order kept).

        One pass over all slots computes distances only; ``top_k`` then picks the first
        ``columns / 2`` pairs of neighbouring slots that hold a pair within ``cn_cutoff`` (near
        pairs cluster in the list's order, so this needs fewer picks than single slots). Rows
        with fewer are filled with slots beyond ``cn_cutoff``, which the CN kernels mask.
        ``overflow``: some row may hold more (the caller then takes the full rows).
        """
        n, k = data.idx.shape
        block = 2
        n_blocks = -(-k // block)
        kept = columns // block
        # a hair beyond cn_cutoff, so that the kernels' own test (dist <= cn_cutoff) decides
        radius2 = (self.cn_cutoff * (1.0 + 1e-9) + 1e-9) ** 2
        rank = -jnp.arange(n_blocks, dtype=jnp.float32)
        chunk = max(1, min(n, (1 << 21) // k))  # big chunks: few, well-vectorised loops

        def body(start, rows):
            comps, _, _, mask = _chunk_vectors(positions, cells, data, start, rows, chunk)
            near = mask & (sum(c * c for c in comps) <= radius2)
            near = jnp.any(jnp.pad(near, ((0, 0), (0, n_blocks * block - k))).reshape(chunk, n_blocks, block), axis=2)
            # the earliest blocks holding a near pair; nothing else reads top_k's outputs, so XLA
            # runs its CPU TopK kernel instead of a full sort
            blocks = jax.lax.top_k(jnp.where(near, rank, -float(n_blocks)), kept)[1]
            cols = (blocks[:, :, None] * block + jnp.arange(block)).reshape(chunk, -1)
            return cols.astype(jnp.float32), (jnp.sum(near, axis=1) >= kept).astype(jnp.float32)

        cols, full = _scan_rows(body, n, k, chunk)  # small integers, exact in float32
        cols = cols.astype(jnp.int32)
        real = cols < k  # the padding slot of a last, half-filled block is no slot
        cols = jnp.where(real, cols, 0)
        near = data._replace(idx=jnp.take_along_axis(data.idx, cols, axis=1),
                             mask=jnp.take_along_axis(data.mask, cols, axis=1) & real,
                             shifts=jnp.take_along_axis(data.shifts, cols[..., None], axis=1))
        return near, jnp.any(full > 0)

    def _row_cn_kernels(self, params: D3Params):
        """``value(rows, pos, cell) -> (CN, factors)``, ``grad(rows, pos, cell, lam, factors,
        with_cell) -> (d_pos, d_cell)`` and ``factor_shape(rows)``. The factors, c'(r) / r per
        slot in chunks of rows, are kept from the forward pass so that the backward pass needs
        no exponentials (None: recompute them); d_cell is None unless ``with_cell``."""
        rcov = params.rcov

        def geometry(data, pos, cell, start, rows, chunk):
            comps, idx, shifts, mask = _chunk_vectors(pos, cell, data, start, rows, chunk)
            dist = jnp.sqrt(jnp.where(mask, sum(c * c for c in comps), 1.0e6))
            return comps, idx, shifts, mask, dist

        def counts(data, mask, dist, rows, idx):
            rco = rcov[data.slot[rows]][:, None] + _take(rcov[data.slot], idx)
            count, dcount = self._count(dist / BOHR, rco)
            m = self._cn_mask(mask, dist, count)
            return jnp.where(m, count, 0.0), jnp.where(m, dcount / (BOHR * dist), 0.0)

        def chunks(data):
            n, k = data.idx.shape
            chunk, n_chunks = _row_chunk(n, k)
            starts = jnp.minimum(jnp.arange(n_chunks) * chunk, n - chunk)
            fresh = jnp.arange(n_chunks)[:, None] * chunk <= starts[:, None] + jnp.arange(chunk)
            return n, k, chunk, starts, fresh

        def factor_shape(data):
            _, k, chunk, starts, _ = chunks(data)
            return starts.shape[0], chunk, k

        def value(data, pos, cell):
            n, k, chunk, starts, fresh = chunks(data)

            def step(_, x):
                start, keep = x
                rows = start + jnp.arange(chunk)
                _, idx, _, mask, dist = geometry(data, pos, cell, start, rows, chunk)
                count, factor = counts(data, mask, dist, rows, idx)
                return None, (jnp.where(keep, jnp.sum(count, axis=1), 0.0), factor)

            _, (cn, factor) = jax.lax.scan(step, None, (starts, fresh))
            rows = (starts[:, None] + jnp.arange(chunk)).reshape(-1)
            return jnp.zeros(n, pos.dtype).at[rows].add(cn.reshape(-1)), factor

        def grad(data, pos, cell, lam, factor, with_cell):
            n, k, chunk, starts, fresh = chunks(data)

            def step(_, x):
                start, keep, f = x
                rows = start + jnp.arange(chunk)
                comps, idx, shifts, mask, dist = geometry(data, pos, cell, start, rows, chunk)
                if f is None:
                    f = counts(data, mask, dist, rows, idx)[1]
                # d sum_i lam_i CN_i / d vec_ik = lam_i c'(r) vec / r; the reverse pair adds lam_j
                f_own = jnp.where(keep[:, None], lam[rows][:, None] * f, 0.0)
                f_both = f_own + jnp.where(keep[:, None], _take(lam, idx) * f, 0.0)
                sums = _row_sums([f_both * c for c in comps])
                d_cell = _cell_sums(shifts, [f_own * c for c in comps]) if with_cell else None
                return None, (-jnp.stack(sums, axis=-1), d_cell)

            xs = (starts, fresh, factor) if factor is not None else (starts, fresh)
            step_ = step if factor is not None else (lambda c, x: step(c, (*x, None)))
            _, (d_pos, d_cell) = jax.lax.scan(step_, None, xs)
            rows = (starts[:, None] + jnp.arange(chunk)).reshape(-1)
            d_pos = jnp.zeros((n, 3), pos.dtype).at[rows].add(d_pos.reshape(-1, 3))
            if not with_cell:
                return d_pos, None
            structure = data.structure[rows]
            d_cell = jax.ops.segment_sum(d_cell.reshape(-1, 3, 3), structure, num_segments=cell.shape[0])
            return d_pos, d_cell

        return value, grad, factor_shape

    def _row_two_body(self, params: D3Params, positions, cells, w, data: _Rows):
        """(B,) two-body energies (Hartree) over neighbour rows, with a hand-written VJP.

        E = 1/2 sum_i sum_k e(r_ik); with a full list the pair (i, j) appears in both rows, so
        dE/dR_m = -2 sum_k dE/dvec_mk and dE/dw_m = sum_k g_mk v[j, s_m] (g: the C6-free factor);
        dE/dcell = sum over all slots of S (x) dE/dvec. The energy is linear in its cotangent,
        so the forward pass forms these sums at unit cotangent (one pass over the pairs, all row
        sums in one reduction) and the backward pass scales them. The cell sums are skipped when
        the cell is not differentiated (MD steps without virial).
        """
        n, k = data.idx.shape
        n_structures = cells.shape[0]
        n_slots = params.c6.shape[0]
        s6, s8 = params.damping[0], params.damping[1]
        bj, srb_pre, srb_exp = self._pair_tables(params)
        srb = self.short_range_correction
        # pair constants looked up by (neighbour atom j, element slot of the row atom), as v is
        pair_tab = [bj[:, data.slot, c].T for c in range(3)]  # R0^6, R0^8, 3 Q_i Q_j
        if srb:
            pair_tab += [srb_pre[:, data.slot].T, srb_exp[:, data.slot].T]
        pair_tab = jnp.stack(pair_tab, axis=-1).reshape(n * n_slots, -1)
        cutoff2, bohr2 = self.cutoff**2, BOHR**2

        used = _used_columns(data.mask)

        def terms(pos, cell, w_, v, start, rows, col_start, fresh):
            """Per slot: vectors, shifts, C6, the C6-free factor g, dE/dvec = half * vec, SRB energy."""
            comps, idx, shifts, mask = _chunk_vectors(pos, cell, data, start, rows, rows.shape[0], col_start, fresh)
            r2 = sum(c * c for c in comps)
            m = mask & (r2 <= cutoff2)
            at = idx * n_slots + data.slot[rows][:, None]
            v_pair = _take(v.reshape(-1, MAX_REFERENCES), at)  # v[j, s_i]: (C, K, 5)
            tab = _take(pair_tab, at)
            c6 = sum(w_[rows, a][:, None] * v_pair[..., a] for a in range(MAX_REFERENCES))
            x = jnp.where(m, r2, 1.0) / bohr2  # r^2 in bohr^2
            x3 = x * x * x
            a = 1.0 / (x3 + tab[..., 0])
            b = 1.0 / (x3 * x + tab[..., 1])
            q = tab[..., 2]
            g = jnp.where(m, -(s6 * a + s8 * q * b), 0.0)
            # e = c6 g(r); half = (de/dr) / (2 r) in Hartree/A^2, with r^5 a^2 / r = x^2 a^2 etc.
            half = jnp.where(m, c6 * (3.0 * s6 * x * x * a * a + 4.0 * s8 * q * x3 * b * b), 0.0) / bohr2
            e_srb = None
            if srb:  # CP2K applies its SRB below 30 bohr only
                r = jnp.sqrt(x)
                e_srb = jnp.where(m & (r < 30.0), -tab[..., 3] * jnp.exp(-tab[..., 4] * r), 0.0)
                half = half - 0.5 * tab[..., 4] * e_srb / (r * bohr2)
            return comps, shifts, v_pair, c6, g, half, e_srb

        def energy_rows(pos, cell, w_):
            v = self._v(params, data.slot, w_)

            def body(start, rows, col_start, fresh):
                _, _, _, c6, g, _, e_srb = terms(pos, cell, w_, v, start, rows, col_start, fresh)
                return 0.5 * jnp.sum(c6 * g if e_srb is None else c6 * g + e_srb, axis=1)

            return _scan_row_sums(body, n, k, used)

        def all_rows(pos, cell, w_, with_cell: bool):
            """Row energies and the row sums of every derivative at unit cotangent, in one pass."""
            v = self._v(params, data.slot, w_)

            def body(start, rows, col_start, fresh):
                comps, shifts, v_pair, _, g, half, e_srb = terms(pos, cell, w_, v, start, rows, col_start, fresh)
                grads = [half * c for c in comps]
                parts = [g * v_pair[..., a] for a in range(MAX_REFERENCES)] + grads
                if with_cell:
                    parts += [shift * grad for shift in shifts for grad in grads]
                if e_srb is not None:
                    parts.append(e_srb)
                sums = _row_sums(parts)
                d_w = jnp.stack(sums[:MAX_REFERENCES], axis=-1)
                d_pos = -2.0 * jnp.stack(sums[MAX_REFERENCES:MAX_REFERENCES + 3], axis=-1)
                d_cell = jnp.stack(sums[MAX_REFERENCES + 3:MAX_REFERENCES + 12], axis=-1).reshape(-1, 3, 3) \
                    if with_cell else jnp.zeros((rows.shape[0], 3, 3), pos.dtype)
                e_srb = 0.5 * sums[-1] if e_srb is not None else jnp.zeros(rows.shape[0], pos.dtype)
                return e_srb, d_pos, d_cell, d_w

            e_srb, d_pos, d_cell, d_w = _scan_row_sums(body, n, k, used)
            # sum_k c6 g = w_i . sum_k g v[j, s_i]
            return 0.5 * jnp.sum(w_ * d_w, axis=1) + e_srb, d_pos, d_cell, d_w

        @jax.custom_vjp
        def energy_fn(pos, cell, w_):
            return jax.ops.segment_sum(energy_rows(pos, cell, w_), data.structure, num_segments=n_structures)

        def fwd(pos, cell, w_):
            with_cell = cell.perturbed
            pos, cell, w_ = pos.value, cell.value, w_.value
            rows_e, d_pos, d_cell, d_w = all_rows(pos, cell, w_, with_cell)
            energy = jax.ops.segment_sum(rows_e, data.structure, num_segments=n_structures)
            return energy, (d_pos, d_cell if with_cell else None, d_w)

        def bwd(res, e_bar):
            # the energy is linear in its cotangent: scale the unit-cotangent sums of the forward
            d_pos, d_cell, d_w = res
            if isinstance(e_bar, jax.custom_derivatives.SymbolicZero):
                e_bar = jnp.zeros(e_bar.shape, e_bar.dtype)
            scale = e_bar[data.structure]
            if d_cell is not None:
                d_cell = jax.ops.segment_sum(scale[:, None, None] * d_cell, data.structure,
                                             num_segments=n_structures)
            return scale[:, None] * d_pos, d_cell, scale[:, None] * d_w

        energy_fn.defvjp(fwd, bwd, symbolic_zeros=True)
        return energy_fn(positions, cells, w)

    # -- reference path (plain autodiff over flat pairs) -------------------------------------------

    def _flat_cn(self, params: D3Params, graph, pairs: Pairs, dist):
        slot = params.lookup[graph.numbers]
        rco = params.rcov[slot[pairs.i]] + params.rcov[slot[pairs.j]]
        count = self._count(dist / BOHR, rco)[0]
        count = jnp.where(self._cn_mask(pairs.mask, dist, count), count, 0.0)
        return jax.ops.segment_sum(count, pairs.i, num_segments=graph.positions.shape[0], indices_are_sorted=True)

    def _flat_two_body(self, params: D3Params, graph, pairs: Pairs, dist, slot, w, v):
        si, sj = slot[pairs.i], slot[pairs.j]
        c6 = self._c6(slot, w, v, pairs.i, pairs.j)
        e = self._pair_energy(params, self._pair_tables(params), c6, si, sj, dist / BOHR)[0]
        e = jnp.where(pairs.mask & (dist <= self.cutoff), e, 0.0)
        atoms = 0.5 * jax.ops.segment_sum(e, pairs.i, num_segments=graph.positions.shape[0], indices_are_sorted=True)
        return jax.ops.segment_sum(atoms, graph.structure, num_segments=graph.cells.shape[0])

    # -- three-body ------------------------------------------------------------------------------

    def _legs(self, pairs: Pairs, dist):
        """Pairs usable as triangle edges from their centre: within the cutoff, towards j >= i."""
        return pairs.mask & (dist < self.three_body_cutoff) & (pairs.j >= pairs.i)

    def _enumerate(self, n_atoms: int, pairs: Pairs, legs):
        """Triangles as (leg p: i -> j, leg q: i -> k) with p before q among the legs of centre i."""
        n_pairs = legs.shape[0]
        (sel,) = jnp.nonzero(legs, size=self.max_legs, fill_value=n_pairs)
        leg_ok = sel < n_pairs
        sel = jnp.where(leg_ok, sel, 0)
        centre = jnp.where(leg_ok, pairs.i[sel], n_atoms)
        count = jax.ops.segment_sum(leg_ok.astype(jnp.int64), centre, num_segments=n_atoms + 1)[:n_atoms]
        first = jnp.cumsum(count) - count  # legs are sorted by centre
        n_tri = count * (count - 1) // 2
        tri_end = jnp.cumsum(n_tri)
        tri_start = tri_end - n_tri
        t = jnp.arange(self.max_triplets, dtype=jnp.int64)
        atom = jnp.minimum(jnp.searchsorted(tri_end, t, side="right"), n_atoms - 1)
        ok = t < tri_end[-1]
        # triangle u of a centre -> legs (a, b), a < b, with u = b (b - 1) / 2 + a
        u = jnp.where(ok, t - tri_start[atom], 0)
        b = jnp.floor((1.0 + jnp.sqrt(1.0 + 8.0 * u.astype(jnp.float64))) / 2.0).astype(jnp.int64)
        b = jnp.where(b * (b - 1) // 2 > u, b - 1, b)
        b = jnp.where((b + 1) * b // 2 <= u, b + 1, b)
        a = u - b * (b - 1) // 2
        leg_a = jnp.clip(first[atom] + a, 0, self.max_legs - 1)
        leg_b = jnp.clip(first[atom] + b, 0, self.max_legs - 1)
        overflow = (jnp.sum(legs) > self.max_legs) | (tri_end[-1] > self.max_triplets)
        return sel, leg_a, leg_b, ok, overflow

    def _three_body(self, params: D3Params, graph, pairs: Pairs, slot, w, v):
        """(B,) Axilrod-Teller-Muto energies (Hartree), each triangle of the periodic system once.

        A triangle is enumerated from every vertex carrying its lowest atom index (periodic images
        of one atom share an index); the weight 1 / (number of such vertices) makes it count once.
        """
        n_atoms = graph.positions.shape[0]
        dist_all = jax.lax.stop_gradient(self._geometry(graph, pairs)[1])
        sel, leg_a, leg_b, ok, overflow = self._enumerate(n_atoms, pairs, self._legs(pairs, dist_all))
        legs = Pairs(pairs.i[sel], pairs.j[sel], pairs.shifts[sel], pairs.mask[sel])
        vec, dist = self._geometry(graph, legs)  # differentiable, legs only
        p, q = leg_a, leg_b
        i, j, k = legs.i[p], legs.j[p], legs.j[q]
        v_jk = vec[q] - vec[p]
        d_jk2 = jnp.sum(v_jk * v_jk, axis=-1)
        ok = ok & (d_jk2 > 1e-12) & (d_jk2 < self.three_body_cutoff**2)
        v_jk = jnp.where(ok[:, None], v_jk, jnp.array([1.0e3, 0.0, 0.0]))
        r_ij, r_ik = dist[p] / BOHR, dist[q] / BOHR
        r_jk = jnp.sqrt(jnp.sum(v_jk * v_jk, axis=-1)) / BOHR
        weight = 1.0 / (1.0 + (j == i) + (k == i))
        if self.convention == "cp2k":
            rc = self.cutoff / BOHR  # CP2K screens triangles by the product of their sides
            ok = ok & ((r_ij * r_jk * r_ik) ** 2 <= 0.01 * rc**6)
        if self.cp2k_triangle_weights:
            weight = weight * self._cp2k_weights(graph, legs, p, q, i, j, k)
        c6_product = self._c6(slot, w, v, i, j) * self._c6(slot, w, v, i, k) * self._c6(slot, w, v, j, k)
        c9 = jnp.sqrt(jnp.where(ok, c6_product, 1.0))
        x, y, z = r_ij * r_ij, r_ik * r_ik, r_jk * r_jk
        prod2 = x * y * z
        angular = 0.375 * (x + y - z) * (x - y + z) * (-x + y + z) / prod2 + 1.0  # 3 cos cos cos + 1
        rbar = prod2 ** (1.0 / 6.0)
        si, sj, sk = slot[i], slot[j], slot[k]
        r0bar = (params.r0ab[si, sj] * params.r0ab[si, sk] * params.r0ab[sj, sk]) ** (1.0 / 3.0)
        fdamp = 1.0 / (1.0 + 6.0 * (rbar / (ATM_RADIUS_SCALE * r0bar)) ** (-ATM_ALPHA))
        e = jnp.where(ok, params.damping[4] * c9 * angular / prod2**1.5 * fdamp * weight, 0.0)
        e = e + jnp.where(overflow, jnp.nan, 0.0)
        return jax.ops.segment_sum(e, graph.structure[i], num_segments=graph.cells.shape[0])

    @staticmethod
    def _cp2k_weights(graph, legs: Pairs, p, q, i, j, k):
        """CP2K 2023's extra factor for triangles holding periodic images of one atom.

        CP2K counts such a triangle 1/2 (two vertices in one periodic cell of the wrapped
        positions) or 2/3 (three different cells) times instead of once, so its energy depends on
        how atoms are wrapped into the cell. Reproduced only on request (``cp2k_triangle_weights``).
        """
        repeats = (j == i).astype(jnp.int32) + (k == i) + (j == k)
        fac = jnp.where(repeats == 3, 1.0 / 3.0, jnp.where(repeats == 1, 0.5, 1.0))
        cells = graph.cells[graph.structure]
        frac = jnp.linalg.solve(jnp.swapaxes(cells, 1, 2), graph.positions[:, :, None])[:, :, 0]
        image = jax.lax.stop_gradient(jnp.sign(frac) * jnp.floor(jnp.abs(frac) + 0.5))  # Fortran ANINT
        cell_j = legs.shifts[p] + image[j] - image[i]
        cell_k = legs.shifts[q] + image[k] - image[i]
        distinct = jnp.any(cell_j != 0, -1) & jnp.any(cell_k != 0, -1) & jnp.any(cell_j != cell_k, -1)
        return jnp.where(distinct, fac * (3 + repeats) / 3.0, fac)

    def three_body_sizes(self, graph) -> tuple[jax.Array, jax.Array]:
        """(legs, triangles) the three-body enumeration of this graph needs (jit-safe)."""
        pairs = self._pairs(graph)
        legs = self._legs(pairs, self._geometry(graph, pairs)[1])
        count = jax.ops.segment_sum(legs.astype(jnp.int64), pairs.i, num_segments=graph.positions.shape[0])
        return jnp.sum(legs), jnp.sum(count * (count - 1) // 2)

    # -- public --------------------------------------------------------------------------------

    def _rows(self, graph) -> bool:
        return self.implementation == "auto"

    @staticmethod
    def _row_data(graph, slot) -> _Rows:
        shifts = jnp.asarray(graph.shifts)
        return _Rows(jnp.asarray(graph.neighbors), shifts, jnp.asarray(graph.pair_mask), slot,
                     jnp.asarray(graph.structure))

    def _cn_rows(self, params: D3Params, graph, short, slot) -> jax.Array:
        if short is None:
            return self._row_cn(params, graph.positions, graph.cells, self._row_data(graph, slot))
        return self._row_cn(params, short.positions, short.cells, self._row_data(short, slot), search=False)

    def coordination_numbers(self, params: D3Params, graph) -> jax.Array:
        """(N,) D3 coordination numbers."""
        graph, short = _split(graph)
        if self._rows(graph):
            return self._cn_rows(params, graph, short, params.lookup[graph.numbers])
        pairs = self._pairs(graph)
        return self._flat_cn(params, graph, pairs, self._geometry(graph, pairs)[1])

    def structure_energies(self, params: D3Params, graph) -> jax.Array:
        """(B,) dispersion energy per structure in eV; ``graph`` may carry a short list for the
        coordination numbers (:class:`~lotf.potential.predict.WithShortList`)."""
        graph, short = _split(graph)
        slot = params.lookup[graph.numbers]
        if self._rows(graph):
            data = self._row_data(graph, slot)
            cn = self._cn_rows(params, graph, short, slot)
            w = self._weights(params, slot, cn)
            energy = self._row_two_body(params, graph.positions, graph.cells, w, data)
            pairs = self._pairs(graph) if self.three_body else None
        else:
            pairs = self._pairs(graph)
            dist = self._geometry(graph, pairs)[1]
            w = self._weights(params, slot, self._flat_cn(params, graph, pairs, dist))
            energy = self._flat_two_body(params, graph, pairs, dist, slot, w, self._v(params, slot, w))
        if self.three_body:
            if self.max_legs <= 0 or self.max_triplets <= 0:
                raise ValueError("D3: three_body needs capacities; use term.with_capacity(max_legs, max_triplets)")
            energy = energy + self._three_body(params, graph, pairs, slot, w, self._v(params, slot, w))
        return energy * HARTREE
