"""Self-diffusion from mean squared displacements, finite-size corrections, Arrhenius fits.

Pipeline, all streamed over the trajectory in blocks of frames:

1. molecules from the bond graph of the first frame (covalent radii x ``scale``), made
   whole by walking the bonds with minimum-image vectors;
2. unwrapping by minimum-image steps between consecutive frames, using the cell of the
   later frame (the scheme that stays correct under NPT box fluctuations; von Buelow,
   Bullerjahn and Hummer, J. Chem. Phys. 153, 021101 (2020)) -- requires that no atom moves
   more than half a box length between stored frames;
3. particles = single atoms of an element or molecular centres of mass;
4. MSD for all time origins and lags ``0..max_lag`` frames: windowed FFT correlation, exact,
   memory O(max_lag x n_particles), time O(n_frames x n_particles x log(max_lag));
5. D = slope / 6 of a linear fit inside a fit window; uncertainty from the spread of the
   slopes of ``n_blocks`` consecutive trajectory blocks (origins never cross a block edge).

Units: lag times in fs, MSD in Angstrom^2, D in Angstrom^2/ns (1 Angstrom^2/ns = 1e-11 m^2/s,
so D[1e-9 m^2/s] = D[Angstrom^2/ns] / 100).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import ase
import ase.neighborlist
import numpy as np
import pandas as pd
import scipy.fft
from scipy import constants
from scipy.sparse import csgraph, csr_matrix

from lotf.analysis.io import SourceLike, iter_chunks, read_frame, read_info
from lotf.analysis.statistics import summarize

XI_CUBIC = 2.837297
"""Yeh-Hummer constant for a cubic periodic box."""

A2_PER_NS_TO_1E9_M2_S = 0.01
_FS_PER_NS = 1.0e6


# --------------------------------------------------------------------------- molecules


def minimum_image(vectors: np.ndarray, cell: np.ndarray | None, pbc=True) -> np.ndarray:
    """Minimum-image version of difference vectors (..., 3) for one cell (rows = vectors)."""
    if cell is None or not np.any(pbc):
        return vectors
    cell = np.asarray(cell, float)
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
    frac = vectors @ np.linalg.inv(cell)
    frac = frac - np.where(pbc, np.round(frac), 0.0)
    return frac @ cell


def bond_graph(atoms: ase.Atoms, scale: float = 1.2) -> csr_matrix:
    """Symmetric adjacency matrix: atoms i, j bonded when d_ij < scale (r_cov,i + r_cov,j)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    cutoffs = ase.neighborlist.natural_cutoffs(atoms, mult=scale)
    i, j = ase.neighborlist.neighbor_list("ij", atoms, cutoffs)
    n = len(atoms)
    return csr_matrix((np.ones(len(i), bool), (i, j)), shape=(n, n))


def find_molecules(atoms: ase.Atoms, scale: float = 1.2) -> list[np.ndarray]:
    """Connected components of the bond graph, each a sorted index array."""
    n_comp, labels = csgraph.connected_components(bond_graph(atoms, scale), directed=False)
    molecules = [np.nonzero(labels == k)[0] for k in range(n_comp)]
    return sorted(molecules, key=lambda m: m[0])


def molecule_formula(symbols: Sequence[str], molecule: np.ndarray) -> str:
    """Hill formula of a molecule, e.g. ``BF4`` or ``C8H15N2``."""
    return ase.Atoms([symbols[i] for i in molecule]).get_chemical_formula(mode="hill")


@dataclasses.dataclass(frozen=True)
class WholeMaker:
    """Re-assembles molecules broken by periodic wrapping, by walking the bond tree."""

    levels: list[tuple[np.ndarray, np.ndarray]]  # per BFS depth: (atoms, their parents)

    @classmethod
    def from_graph(cls, graph: csr_matrix, molecules: list[np.ndarray]) -> WholeMaker:
        depth_of: dict[int, list[tuple[int, int]]] = {}
        for mol in molecules:
            order, pred = csgraph.breadth_first_order(graph, mol[0], directed=False)
            depth = {int(mol[0]): 0}
            for k in order[1:]:
                depth[int(k)] = depth[int(pred[k])] + 1
                depth_of.setdefault(depth[int(k)], []).append((int(k), int(pred[k])))
        levels = []
        for d in sorted(depth_of):
            pairs = np.array(depth_of[d])
            levels.append((pairs[:, 0], pairs[:, 1]))
        return cls(levels)

    def __call__(self, positions: np.ndarray, cell: np.ndarray | None, pbc=True) -> np.ndarray:
        x = np.array(positions, dtype=float, copy=True)
        for child, parent in self.levels:
            x[child] = x[parent] + minimum_image(x[child] - x[parent], cell, pbc)
        return x


def make_whole(
    atoms: ase.Atoms, molecules: list[np.ndarray] | None = None, scale: float = 1.2
) -> np.ndarray:
    """Positions of ``atoms`` with every molecule contiguous (not split by the box)."""
    graph = bond_graph(atoms, scale)
    if molecules is None:
        molecules = find_molecules(atoms, scale)
    return WholeMaker.from_graph(graph, molecules)(atoms.positions, atoms.cell.array, atoms.pbc)


# --------------------------------------------------------------------------- particles


@dataclasses.dataclass
class ParticleGroup:
    """A set of particles followed in time: single atoms or molecular centres of mass.

    ``members[p]`` are the atom indices of particle ``p``; ``weights[p]`` their mass
    fractions (summing to 1).
    """

    label: str
    members: list[np.ndarray]
    weights: list[np.ndarray]

    @property
    def n_particles(self) -> int:
        return len(self.members)

    @property
    def single_atoms(self) -> bool:
        return all(len(m) == 1 for m in self.members)

    def positions(self, x: np.ndarray) -> np.ndarray:
        """Particle positions (n_frames, n_particles, 3) from atom positions (n_frames, N, 3)."""
        if self.single_atoms:
            return x[:, np.concatenate(self.members)]
        out = np.empty((x.shape[0], self.n_particles, 3))
        for p, (m, w) in enumerate(zip(self.members, self.weights)):
            out[:, p] = np.einsum("a,fak->fk", w, x[:, m])
        return out


def atom_group(symbols: Sequence[str], element: str, label: str | None = None) -> ParticleGroup:
    """Every atom of ``element``."""
    idx = [i for i, s in enumerate(symbols) if s == element]
    if not idx:
        raise ValueError(f"group: no atoms of element '{element}' (have {sorted(set(symbols))})")
    return ParticleGroup(label or element, [np.array([i]) for i in idx], [np.ones(1)] * len(idx))


def molecule_group(
    atoms: ase.Atoms,
    molecules: list[np.ndarray],
    select: str | Callable[[str], bool],
    label: str | None = None,
) -> ParticleGroup:
    """Centres of mass of the molecules whose Hill formula equals ``select`` (or passes it)."""
    symbols = atoms.get_chemical_symbols()
    masses = atoms.get_masses()
    formulas = [molecule_formula(symbols, m) for m in molecules]
    test = select if callable(select) else (lambda f: f == select)
    chosen = [m for m, f in zip(molecules, formulas) if test(f)]
    if not chosen:
        raise ValueError(f"group: no molecule matches {select!r} (have {sorted(set(formulas))})")
    weights = [masses[m] / masses[m].sum() for m in chosen]
    name = label or (f"com:{select}" if isinstance(select, str) else "com")
    return ParticleGroup(name, chosen, weights)


def resolve_groups(
    atoms: ase.Atoms,
    specs: Sequence[str | ParticleGroup],
    molecules: list[np.ndarray] | None = None,
) -> list[ParticleGroup]:
    """Turn specs into groups: ``"H"`` (atoms of an element), ``"com:BF4"`` (molecular COM by
    Hill formula), ``"com:*"`` (every molecule), or a ready :class:`ParticleGroup`."""
    symbols = atoms.get_chemical_symbols()
    groups = []
    for spec in specs:
        if isinstance(spec, ParticleGroup):
            groups.append(spec)
        elif isinstance(spec, str) and spec.startswith("com:"):
            if molecules is None:
                molecules = find_molecules(atoms)
            formula = spec[4:]
            select = (lambda f: True) if formula == "*" else formula
            groups.append(molecule_group(atoms, molecules, select, label=spec))
        elif isinstance(spec, str):
            groups.append(atom_group(symbols, spec))
        else:
            raise TypeError(f"group spec: expected str or ParticleGroup, got {type(spec).__name__}")
    labels = [g.label for g in groups]
    if len(set(labels)) != len(labels):
        raise ValueError(f"group labels must be unique, got {labels}")
    return groups


# --------------------------------------------------------------------------- unwrapping


class Unwrapper:
    """Streaming unwrapping by minimum-image steps between consecutive frames."""

    def __init__(self, first_positions: np.ndarray, pbc=True):
        self.last_wrapped: np.ndarray | None = None
        self.last_unwrapped = np.asarray(first_positions, float)
        self.pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))

    def __call__(self, positions: np.ndarray, cells: np.ndarray | None) -> np.ndarray:
        """Unwrapped copies of ``positions`` (n, N, 3).

        On the first call frame 0 is replaced by the whole-molecule first frame given at
        construction; later calls continue from the last frame seen.
        """
        positions = np.asarray(positions, float)
        first_call = self.last_wrapped is None
        if first_call:
            steps, step_cells = positions[1:] - positions[:-1], None if cells is None else cells[1:]
        else:
            previous = np.concatenate([self.last_wrapped[None], positions[:-1]])
            steps, step_cells = positions - previous, cells
        if step_cells is not None and np.any(self.pbc) and len(steps):
            inv = np.linalg.inv(step_cells)
            frac = np.einsum("fni,fij->fnj", steps, inv)
            frac -= np.where(self.pbc, np.round(frac), 0.0)
            steps = np.einsum("fni,fij->fnj", frac, step_cells)
        unwrapped = self.last_unwrapped[None] + np.cumsum(steps, axis=0)
        if first_call:
            unwrapped = np.concatenate([self.last_unwrapped[None], unwrapped])
        self.last_wrapped = positions[-1].copy()
        self.last_unwrapped = unwrapped[-1].copy()
        return unwrapped


def iter_particle_positions(
    source: SourceLike,
    groups: Sequence[str | ParticleGroup],
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    chunk_size: int = 1000,
    remove_drift: bool = False,
    bond_scale: float = 1.2,
    group: str | None = None,
    progress: bool = False,
    desc: str = "msd",
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(frame indices, {label: unwrapped particle positions (n, P, 3)})`` per block.

    Molecules (for ``com:`` groups) are found and made whole in frame ``start``.
    ``remove_drift`` subtracts the displacement of the centre of mass of the whole system.
    """
    info = read_info(source, group)
    first = read_frame(source, start, group)
    needs_molecules = any(isinstance(g, str) and g.startswith("com:") for g in groups) or any(
        isinstance(g, ParticleGroup) and not g.single_atoms for g in groups
    )
    first_pos = first.positions
    molecules = None
    if needs_molecules:
        graph = bond_graph(first, bond_scale)
        n_comp, labels = csgraph.connected_components(graph, directed=False)
        molecules = sorted((np.nonzero(labels == k)[0] for k in range(n_comp)), key=lambda m: m[0])
        cell = first.cell.array if info.has_cell else None
        first_pos = WholeMaker.from_graph(graph, molecules)(first.positions, cell, info.pbc)
    resolved = resolve_groups(first, groups, molecules)
    unwrap = Unwrapper(first_pos, info.pbc if info.has_cell else False)
    masses = info.masses / info.masses.sum()
    com0 = None
    for chunk in iter_chunks(
        source, chunk_size, start, stop, stride, group, progress=progress, desc=desc
    ):
        u = unwrap(chunk.positions, chunk.cells if info.has_cell else None)
        if remove_drift:
            com = np.einsum("n,fnk->fk", masses, u)
            if com0 is None:
                com0 = com[0].copy()
            u = u - (com - com0)[:, None, :]
        yield chunk.frames, {g.label: g.positions(u) for g in resolved}


# --------------------------------------------------------------------------- MSD


class MSDAccumulator:
    """All-origin MSD sums for lags 0..max_lag (frames) of a stream of particle positions.

    Frames arrive in arbitrary blocks via :meth:`push`.  Every ``max_lag`` frames the
    correlation of the oldest ``max_lag`` origins with the following ``2 max_lag`` frames is
    taken by FFT; :meth:`finish` handles the remainder.  Exact: equals the direct double
    sum over all pairs (t, t + lag) inside the stream.
    """

    def __init__(self, max_lag: int):
        if max_lag < 1:
            raise ValueError(f"max_lag must be >= 1 frame, got {max_lag}")
        self.max_lag = int(max_lag)
        self.sums = np.zeros(self.max_lag + 1)
        self.counts = np.zeros(self.max_lag + 1)
        self._buffer: list[np.ndarray] = []
        self._n_buffered = 0
        self._reference: np.ndarray | None = None
        self.n_frames = 0
        self.n_particles: int | None = None

    def push(self, x: np.ndarray) -> None:
        x = np.asarray(x, float)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"positions must be (n_frames, n_particles, 3), got {x.shape}")
        if self._reference is None:
            self._reference = x[0].copy()
            self.n_particles = x.shape[1]
        self._buffer.append((x - self._reference).reshape(len(x), -1))
        self._n_buffered += len(x)
        self.n_frames += len(x)
        L = self.max_lag
        if self._n_buffered >= 2 * L:
            data = np.concatenate(self._buffer)
            k = 0
            while len(data) - k >= 2 * L:
                self._window(data[k : k + 2 * L], n_origins=L)
                k += L
            rest = data[k:]
            self._buffer = [rest]
            self._n_buffered = len(rest)

    def _window(self, data: np.ndarray, n_origins: int) -> None:
        """Add lags 0..L for origins 0..n_origins-1 of ``data`` (all partners inside data)."""
        L = self.max_lag
        m = len(data)
        lmax = min(L, m - 1)
        nfft = scipy.fft.next_fast_len(m + (0 if n_origins + L <= m else L), real=True)
        a = np.zeros_like(data)
        a[:n_origins] = data[:n_origins]
        fa = scipy.fft.rfft(a, n=nfft, axis=0, workers=-1)
        fb = scipy.fft.rfft(data, n=nfft, axis=0, workers=-1)
        cross = scipy.fft.irfft(np.sum(np.conj(fa) * fb, axis=1), n=nfft)[: lmax + 1]
        sq = np.einsum("tk,tk->t", data, data)
        cum = np.concatenate([[0.0], np.cumsum(sq)])
        lags = np.arange(lmax + 1)
        # origins t < n_origins with t + lag < m
        n_t = np.minimum(n_origins, m - lags)
        first = cum[n_t]  # sum_{t < n_t} |x(t)|^2
        second = cum[lags + n_t] - cum[lags]  # sum_{t < n_t} |x(t + lag)|^2
        self.sums[: lmax + 1] += first + second - 2.0 * cross
        self.counts[: lmax + 1] += n_t

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Flush the buffer; returns (sum over origins and particles, number of origins)."""
        if self._n_buffered:
            data = np.concatenate(self._buffer)
            self._window(data, n_origins=len(data))
            self._buffer, self._n_buffered = [], 0
        return self.sums, self.counts


@dataclasses.dataclass
class MSDResult:
    """MSD(lag) of one particle group, pooled and per trajectory block."""

    label: str
    lag_fs: np.ndarray
    msd: np.ndarray
    block_msd: np.ndarray
    n_particles: int
    n_frames: int
    timestep_fs: float

    def to_dataframe(self) -> pd.DataFrame:
        df = pd.DataFrame({"lag_fs": self.lag_fs, "lag_ps": self.lag_fs / 1000.0, "msd": self.msd})
        for b, m in enumerate(self.block_msd):
            df[f"msd_block{b}"] = m
        return df


def compute_msd(
    source: SourceLike,
    groups: Sequence[str | ParticleGroup],
    max_lag_fs: float | None = None,
    max_lag: int | None = None,
    n_blocks: int = 5,
    timestep_fs: float | None = None,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    chunk_size: int = 1000,
    remove_drift: bool = False,
    bond_scale: float = 1.2,
    group: str | None = None,
    progress: bool = False,
) -> dict[str, MSDResult]:
    """Mean squared displacements of several particle groups in one pass over the file.

    Give the largest lag either in fs (``max_lag_fs``) or in stored frames (``max_lag``;
    default: a fifth of a block).  ``timestep_fs`` is the time between *stored* frames
    before striding (read from the H5MD file when None).  The trajectory is cut into
    ``n_blocks`` consecutive blocks for error bars; time origins stay inside their block.
    """
    info = read_info(source, group)
    dt = timestep_fs if timestep_fs is not None else info.timestep_fs
    if dt is None or dt <= 0:
        raise ValueError("timestep_fs: not stored in the trajectory; pass timestep_fs=")
    dt = float(dt) * stride
    stop_ = info.n_frames if stop is None else min(stop, info.n_frames)
    n_sel = len(range(start, stop_, stride))
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
    block_len = n_sel // n_blocks
    if max_lag is None:
        max_lag = int(round(max_lag_fs / dt)) if max_lag_fs is not None else max(1, block_len // 5)
    if max_lag < 1:
        raise ValueError(f"max_lag_fs={max_lag_fs} is shorter than one frame ({dt} fs)")
    if block_len <= max_lag:
        raise ValueError(
            f"max_lag ({max_lag} frames) must be shorter than a block ({block_len} frames of "
            f"{n_sel} in {n_blocks} blocks); lower max_lag_fs or n_blocks"
        )
    accs: dict[str, list[MSDAccumulator]] = {}
    n_particles: dict[str, int] = {}
    seen = 0
    for _, particles in iter_particle_positions(
        source, groups, start, stop, stride, chunk_size, remove_drift, bond_scale, group, progress
    ):
        n = next(iter(particles.values())).shape[0]
        for label, x in particles.items():
            n_particles[label] = x.shape[1]
            lst = accs.setdefault(label, [MSDAccumulator(max_lag) for _ in range(n_blocks)])
            pos = 0
            while pos < n:
                b = (seen + pos) // block_len
                if b >= n_blocks:  # frames beyond the last full block are dropped
                    break
                end_of_block = (b + 1) * block_len - seen
                take = min(n, end_of_block) - pos
                lst[b].push(x[pos : pos + take])
                pos += take
        seen += n
    results = {}
    lags = np.arange(max_lag + 1) * dt
    for label, lst in accs.items():
        sums, counts = zip(*(acc.finish() for acc in lst))
        sums, counts = np.array(sums), np.array(counts)
        P = n_particles[label]
        block_msd = sums / (counts * P)
        pooled = sums.sum(axis=0) / (counts.sum(axis=0) * P)
        block_msd[:, 0] = pooled[0] = 0.0
        results[label] = MSDResult(label, lags, pooled, block_msd, P, n_sel, dt)
    return results


def msd_direct(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Reference O(T * max_lag) all-origin MSD of (T, P, 3) positions (for tests)."""
    x = np.asarray(x, float)
    out = np.zeros(max_lag + 1)
    for lag in range(1, max_lag + 1):
        d = x[lag:] - x[:-lag]
        out[lag] = np.mean(np.sum(d * d, axis=-1))
    return out


# --------------------------------------------------------------------------- Einstein fit


@dataclasses.dataclass(frozen=True)
class DiffusionEstimate:
    """Einstein diffusion coefficient in Angstrom^2/ns with block-averaging error bars."""

    label: str
    D: float
    sem: float
    ci_halfwidth: float
    block_D: np.ndarray
    fit_window_fs: tuple[float, float]
    intercept: float

    @property
    def D_1e9_m2_s(self) -> float:
        return self.D * A2_PER_NS_TO_1E9_M2_S

    @property
    def sem_1e9_m2_s(self) -> float:
        return self.sem * A2_PER_NS_TO_1E9_M2_S

    def as_dict(self) -> dict:
        return {
            "D_A2_per_ns": self.D,
            "D_sem_A2_per_ns": self.sem,
            "D_ci95_A2_per_ns": self.ci_halfwidth,
            "D_1e-9_m2_per_s": self.D_1e9_m2_s,
            "D_sem_1e-9_m2_per_s": self.sem_1e9_m2_s,
            "fit_start_fs": self.fit_window_fs[0],
            "fit_stop_fs": self.fit_window_fs[1],
            "n_blocks": len(self.block_D),
        }


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(slope), float(intercept)


def einstein_diffusion(
    result: MSDResult,
    fit_window_fs: tuple[float, float] | None = None,
    dim: int = 3,
    confidence: float = 0.95,
) -> DiffusionEstimate:
    """D = slope / (2 dim) of MSD(lag) inside ``fit_window_fs`` (default: 20-80 % of the
    largest lag).  Error bar: standard error of the per-block slopes (t interval)."""
    lags = result.lag_fs
    if fit_window_fs is None:
        fit_window_fs = (0.2 * lags[-1], 0.8 * lags[-1])
    t0, t1 = map(float, fit_window_fs)
    mask = (lags >= t0) & (lags <= t1)
    if t1 <= t0 or mask.sum() < 2:
        raise ValueError(
            f"fit_window_fs=({t0}, {t1}) holds {int(mask.sum())} lags; the MSD spans "
            f"0..{lags[-1]} fs in steps of {result.timestep_fs} fs"
        )
    to_a2_ns = _FS_PER_NS / (2.0 * dim)
    slope, intercept = fit_line(lags[mask], result.msd[mask])
    block_D = np.array([fit_line(lags[mask], m[mask])[0] * to_a2_ns for m in result.block_msd])
    if len(block_D) >= 2:
        s = summarize(block_D, confidence)
        sem, half = s.sem, s.ci_halfwidth
    else:
        sem = half = float("nan")
    return DiffusionEstimate(
        label=result.label,
        D=slope * to_a2_ns,
        sem=sem,
        ci_halfwidth=half,
        block_D=block_D,
        fit_window_fs=(t0, t1),
        intercept=intercept,
    )


# --------------------------------------------------------------------------- finite size


def yeh_hummer_correction(
    temperature: float, viscosity_mpas: float, box_length: float, xi: float = XI_CUBIC
) -> float:
    """k_B T xi / (6 pi eta L) in Angstrom^2/ns (T in K, eta in mPa s, L in Angstrom)."""
    for name, value in (
        ("temperature", temperature),
        ("viscosity_mpas", viscosity_mpas),
        ("box_length", box_length),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    d_si = (
        constants.k * temperature * xi / (6.0 * np.pi * viscosity_mpas * 1e-3 * box_length * 1e-10)
    )
    return float(d_si * 1e11)  # m^2/s -> Angstrom^2/ns


def yeh_hummer(
    D_pbc: float, temperature: float, viscosity_mpas: float, box_length: float, xi: float = XI_CUBIC
) -> float:
    """Infinite-size D (Angstrom^2/ns) = D_PBC + k_B T xi / (6 pi eta L)."""
    return float(D_pbc + yeh_hummer_correction(temperature, viscosity_mpas, box_length, xi))


@dataclasses.dataclass(frozen=True)
class BoxSizeExtrapolation:
    """Linear fit D(L) = D_inf + slope / L; ``viscosity_mpas`` from the slope when T is known."""

    D_inf: float
    D_inf_err: float
    slope: float
    slope_err: float
    viscosity_mpas: float | None
    viscosity_err: float | None


def extrapolate_box_size(
    box_lengths: Sequence[float],
    D: Sequence[float],
    D_err: Sequence[float] | None = None,
    temperature: float | None = None,
    xi: float = XI_CUBIC,
) -> BoxSizeExtrapolation:
    """Extrapolate D to 1/L -> 0 (weighted by 1/D_err^2 when given).

    Yeh-Hummer: slope = -k_B T xi / (6 pi eta), so the fitted slope also yields the
    shear viscosity implied by the finite-size effect.
    """
    L = np.asarray(box_lengths, float)
    y = np.asarray(D, float)
    if L.shape != y.shape or L.ndim != 1:
        raise ValueError(f"box_lengths and D must be 1-d of equal length, got {L.shape}, {y.shape}")
    if len(L) < 2 or len(np.unique(L)) < 2:
        raise ValueError("box_lengths: need at least two different box sizes")
    if np.any(L <= 0):
        raise ValueError("box_lengths must be positive")
    X = np.stack([np.ones_like(L), 1.0 / L], axis=1)
    s = None
    if D_err is not None:
        s = np.asarray(D_err, float)
        if s.shape != y.shape or np.any(s <= 0):
            raise ValueError("D_err must be positive and match D")
    beta, cov = _linear_fit(X, y, s)
    D_inf, slope = map(float, beta)
    D_inf_err, slope_err = map(float, np.sqrt(np.diag(cov)))
    eta = eta_err = None
    if temperature is not None and slope < 0:
        # slope [A^2/ns * A] -> m^3/s: 1e-20 * 1e9 * 1e-10 = 1e-21
        eta = constants.k * temperature * xi / (6.0 * np.pi * (-slope) * 1e-21) * 1e3
        eta_err = eta * slope_err / abs(slope)
    return BoxSizeExtrapolation(D_inf, D_inf_err, slope, slope_err, eta, eta_err)


def _linear_fit(X: np.ndarray, y: np.ndarray, sigma: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Least squares y ≈ X β with covariance: weighted by 1/σ² when σ is given, else scaled by the
    residual variance (NaN covariance when there are no degrees of freedom left)."""
    if sigma is not None:
        w = 1.0 / sigma**2
        cov = np.linalg.inv(X.T @ (w[:, None] * X))
        return cov @ (X.T @ (w * y)), cov
    cov0 = np.linalg.inv(X.T @ X)
    beta = cov0 @ (X.T @ y)
    dof = len(y) - X.shape[1]
    resid = y - X @ beta
    return beta, cov0 * (resid @ resid / dof) if dof > 0 else np.full((X.shape[1],) * 2, np.nan)


# --------------------------------------------------------------------------- Arrhenius


R_KJ = constants.R / 1000.0
EV_PER_KJ_MOL = 1.0 / (constants.e * constants.N_A / 1000.0)


@dataclasses.dataclass(frozen=True)
class ArrheniusFit:
    """D(T) = D0 exp(-Ea / (R T)); D0 in the units of the input D."""

    activation_energy_kj_mol: float
    activation_energy_err: float
    prefactor: float
    prefactor_rel_err: float

    @property
    def activation_energy_ev(self) -> float:
        return self.activation_energy_kj_mol * EV_PER_KJ_MOL

    def __call__(self, temperature) -> np.ndarray:
        T = np.asarray(temperature, float)
        return self.prefactor * np.exp(-self.activation_energy_kj_mol / (R_KJ * T))


def arrhenius_fit(
    temperatures: Sequence[float], D: Sequence[float], D_err: Sequence[float] | None = None
) -> ArrheniusFit:
    """Weighted linear fit of ln D against 1/(R T) (weights (D/D_err)^2 when given).

    Needs at least two distinct temperatures (a line through one temperature is undetermined).
    """
    T = np.asarray(temperatures, float)
    y = np.asarray(D, float)
    if T.shape != y.shape or T.ndim != 1 or len(T) < 2:
        raise ValueError("temperatures and D must be 1-d with at least two entries of equal length")
    if np.any(T <= 0) or np.any(y <= 0):
        raise ValueError("temperatures and D must be positive")
    distinct = np.unique(T)
    if len(distinct) < 2:
        listed = ", ".join(f"{t:g}" for t in T)
        raise ValueError(f"Arrhenius fit needs at least two distinct temperatures, got {listed} K")
    X = np.stack([np.ones_like(T), -1.0 / (R_KJ * T)], axis=1)
    ln = np.log(y)
    beta, cov = _linear_fit(X, ln, None if D_err is None else np.asarray(D_err, float) / y)
    ln_d0, ea = map(float, beta)
    err = np.sqrt(np.diag(cov))
    return ArrheniusFit(ea, float(err[1]), float(np.exp(ln_d0)), float(err[0]))


# --------------------------------------------------------------------------- experiment


def load_experimental_diffusion(
    name: str = "bmim_bf4_self_diffusion", directory: Path | None = None
) -> pd.DataFrame:
    """An experimental table (``#`` lines = citation): a path (``data/experimental/<name>.csv``
    relative to the project, as the nodes declare it a dependency), a bare name in
    ``data/experimental``, or ``<directory>/<name>.csv``."""
    from lotf.inputs import read_experimental_table

    return read_experimental_table(name, directory)


def experimental_diffusion_table(tables: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """BMIM-BF4 and water experimental D in one frame (columns T_K, species, D_A2_per_ns)."""
    tables = tables or {
        "bmim_bf4": load_experimental_diffusion("bmim_bf4_self_diffusion"),
        "water": load_experimental_diffusion("water_self_diffusion"),
    }
    frames = []
    for system, df in tables.items():
        d = df.copy()
        d["system"] = system
        frames.append(d)
    return pd.concat(frames, ignore_index=True)
