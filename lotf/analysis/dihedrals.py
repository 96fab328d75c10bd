"""Dihedral angles: the butyl chain of BMIM+ over time windows (seed 1, Fig. 5) and
(Phi, Psi) coverage on a grid (seed 2, section 3.1).

Sign convention (IUPAC): looking along the 2->3 bond, the angle is positive when the
1->2 bond must turn clockwise to eclipse the 3->4 bond; angles are in degrees in
(-180, 180].  Bond vectors use the minimum image, so molecules split by the box are fine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import ase
import numpy as np
import pandas as pd

from lotf.analysis.diffusion import bond_graph, find_molecules
from lotf.analysis.io import SourceLike, iter_chunks, read_frame, read_info


def dihedral_angles(
    positions: np.ndarray, quads: np.ndarray, cells: np.ndarray | None = None, pbc=True
) -> np.ndarray:
    """Dihedral angles (degrees) of atom quadruples.

    ``positions`` (N, 3) or (F, N, 3); ``quads`` (Q, 4) atom indices; ``cells`` None,
    (3, 3) or (F, 3, 3).  Returns (Q,) or (F, Q).
    """
    x = np.asarray(positions, float)
    single = x.ndim == 2
    if single:
        x = x[None]
    q = np.asarray(quads, int).reshape(-1, 4)
    if q.size and (q.min() < 0 or q.max() >= x.shape[1]):
        raise ValueError(f"quads: atom index out of range for {x.shape[1]} atoms")
    p0, p1, p2, p3 = (x[:, q[:, k]] for k in range(4))
    b1, b2, b3 = p1 - p0, p2 - p1, p3 - p2
    if cells is not None and np.any(pbc):
        c = np.asarray(cells, float)
        c = np.broadcast_to(c, (x.shape[0], 3, 3)) if c.ndim == 2 else c
        inv = np.linalg.inv(c)
        mask = np.broadcast_to(np.asarray(pbc, bool), (3,))

        def mic(v):
            f = np.einsum("fqi,fij->fqj", v, inv)
            f = f - np.where(mask, np.round(f), 0.0)
            return np.einsum("fqi,fij->fqj", f, c)

        b1, b2, b3 = mic(b1), mic(b2), mic(b3)
    n1 = np.cross(b1, b2)
    n2 = np.cross(b2, b3)
    y = np.linalg.norm(b2, axis=-1) * np.einsum("fqi,fqi->fq", b1, n2)
    xx = np.einsum("fqi,fqi->fq", n1, n2)
    phi = np.degrees(np.arctan2(y, xx))
    phi = np.where(phi <= -180.0, phi + 360.0, phi)
    return phi[0] if single else phi


# --------------------------------------------------------------------------- BMIM butyl chain


def butyl_chains(atoms: ase.Atoms, scale: float = 1.2) -> list[np.ndarray]:
    """Per imidazolium cation: indices (C_ring, N, C1, C2, C3, C4) of its n-butyl chain.

    Found from the heavy-atom bond graph: an N bonded to an unbranched chain of exactly
    four carbons (no N beyond the first carbon); C_ring is the N-C-N carbon of the ring.
    """
    graph = bond_graph(atoms, scale).tolil()
    symbols = atoms.get_chemical_symbols()
    heavy = [set(j for j in graph.rows[i] if symbols[j] != "H") for i in range(len(atoms))]
    chains = []
    for n_atom, sym in enumerate(symbols):
        if sym != "N":
            continue
        ring_c = [
            c
            for c in heavy[n_atom]
            if symbols[c] == "C" and sum(symbols[k] == "N" for k in heavy[c]) == 2
        ]
        for c1 in heavy[n_atom]:
            if symbols[c1] != "C" or c1 in ring_c:
                continue
            chain, prev, cur, ok = [c1], n_atom, c1, True
            while True:
                nxt = [k for k in heavy[cur] if k != prev]
                if not nxt:
                    break
                if len(nxt) > 1 or symbols[nxt[0]] != "C":
                    ok = False
                    break
                prev, cur = cur, nxt[0]
                chain.append(cur)
            if ok and len(chain) == 4 and ring_c:
                chains.append(np.array([ring_c[0], n_atom, *chain]))
    return chains


BUTYL_DIHEDRALS = {
    "C2-N1-C1-C2'": (0, 1, 2, 3),
    "N1-C1-C2-C3": (1, 2, 3, 4),
    "C1-C2-C3-C4": (2, 3, 4, 5),
}
"""Names of the three butyl dihedrals and their positions in a :func:`butyl_chains` row."""


def butyl_dihedral_quads(atoms: ase.Atoms, scale: float = 1.2) -> dict[str, np.ndarray]:
    """Quadruples (n_cations, 4) for each named butyl-chain dihedral."""
    chains = butyl_chains(atoms, scale)
    if not chains:
        raise ValueError("no n-butyl chain on an imidazolium ring found in the structure")
    arr = np.array(chains)
    return {name: arr[:, list(cols)] for name, cols in BUTYL_DIHEDRALS.items()}


# --------------------------------------------------------------------------- time windows


@dataclasses.dataclass
class DihedralDistributions:
    """Normalised histograms (density per degree) per dihedral name and time window."""

    edges: np.ndarray
    window_fs: list[tuple[float, float]]
    histograms: dict[str, np.ndarray]  # name -> (n_windows, n_bins)
    n_samples: dict[str, np.ndarray]  # name -> (n_windows,)

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def to_dataframe(self) -> pd.DataFrame:
        """Long format: angle, window label, dihedral name, density."""
        rows = []
        for name, hist in self.histograms.items():
            for w, (t0, t1) in enumerate(self.window_fs):
                label = f"{t0 / 1000:g}-{t1 / 1000:g} ps"
                for a, v in zip(self.centers, hist[w]):
                    rows.append({"angle_deg": a, "window": label, "dihedral": name, "density": v})
        return pd.DataFrame(rows)


def dihedral_distributions(
    source: SourceLike,
    quads: Mapping[str, np.ndarray] | None = None,
    windows_fs: Sequence[tuple[float, float]] | None = None,
    n_bins: int = 72,
    timestep_fs: float | None = None,
    molecule: int | None = None,
    stride: int = 1,
    chunk_size: int = 1000,
    group: str | None = None,
    progress: bool = False,
) -> DihedralDistributions:
    """Histograms of dihedral angles inside time windows of one trajectory.

    ``quads``: name -> (Q, 4); default the three BMIM butyl dihedrals found in frame 0.
    ``molecule``: keep only row ``molecule`` of every quad array (one cation, as in seed 1
    Fig. 5); None pools all.  ``windows_fs``: list of (t_start, t_stop); default cumulative
    windows from 0 to 1 %, 10 % and 100 % of the trajectory.
    """
    info = read_info(source, group)
    dt = timestep_fs if timestep_fs is not None else info.timestep_fs
    if dt is None or dt <= 0:
        raise ValueError("timestep_fs: not stored in the trajectory; pass timestep_fs=")
    if quads is None:
        quads = butyl_dihedral_quads(read_frame(source, 0, group))
    quads = {k: np.asarray(v, int).reshape(-1, 4) for k, v in quads.items()}
    if molecule is not None:
        for k, v in quads.items():
            if not 0 <= molecule < len(v):
                raise ValueError(f"molecule={molecule} out of range for {len(v)} quads of '{k}'")
        quads = {k: v[molecule : molecule + 1] for k, v in quads.items()}
    total_fs = info.n_frames * dt
    if windows_fs is None:
        windows_fs = [(0.0, total_fs * f) for f in (0.01, 0.1, 1.0)]
    windows = np.array(windows_fs, float).reshape(-1, 2)
    if np.any(windows[:, 1] <= windows[:, 0]):
        raise ValueError(f"windows_fs: every window needs t_stop > t_start, got {windows.tolist()}")
    edges = np.linspace(-180.0, 180.0, n_bins + 1)
    hist = {k: np.zeros((len(windows), n_bins)) for k in quads}
    names = list(quads)
    all_q = np.concatenate([quads[k] for k in names])
    splits = np.cumsum([len(quads[k]) for k in names])[:-1]
    stop = min(info.n_frames, int(np.ceil(windows[:, 1].max() / dt)) + 1)
    for chunk in iter_chunks(
        source, chunk_size, 0, stop, stride, group, progress=progress, desc="dihedrals"
    ):
        t = chunk.frames * dt
        phi = dihedral_angles(
            chunk.positions, all_q, chunk.cells, info.pbc if info.has_cell else False
        )
        parts = np.split(phi, splits, axis=1)
        for w, (t0, t1) in enumerate(windows):
            sel = (t >= t0) & (t < t1)
            if not sel.any():
                continue
            for name, part in zip(names, parts):
                hist[name][w] += np.histogram(part[sel].ravel(), bins=edges)[0]
    n_samples = {k: h.sum(axis=1) for k, h in hist.items()}
    width = edges[1] - edges[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = {k: h / (n_samples[k][:, None] * width) for k, h in hist.items()}
    return DihedralDistributions(edges, [tuple(w) for w in windows.tolist()], dens, n_samples)


# --------------------------------------------------------------------------- (Phi, Psi) coverage


def ramachandran_histogram(phi: np.ndarray, psi: np.ndarray, bin_deg: float = 15.0) -> np.ndarray:
    """Visit counts on a ``bin_deg`` grid over [-180, 180) x [-180, 180)."""
    phi, psi = np.asarray(phi, float).ravel(), np.asarray(psi, float).ravel()
    if phi.shape != psi.shape:
        raise ValueError(f"phi and psi must have equal length, got {phi.shape} and {psi.shape}")
    n = 360.0 / bin_deg
    if abs(n - round(n)) > 1e-9:
        raise ValueError(f"bin_deg must divide 360, got {bin_deg}")
    edges = np.linspace(-180.0, 180.0, int(round(n)) + 1)
    wrap = lambda a: (a + 180.0) % 360.0 - 180.0  # noqa: E731
    h, _, _ = np.histogram2d(wrap(phi), wrap(psi), bins=[edges, edges])
    return h


def ramachandran_coverage(phi: np.ndarray, psi: np.ndarray, bin_deg: float = 15.0) -> float:
    """Fraction of (Phi, Psi) grid cells visited at least once (seed 2: 15 deg squares)."""
    h = ramachandran_histogram(phi, psi, bin_deg)
    return float(np.count_nonzero(h) / h.size)


def molecule_of(atoms: ase.Atoms, index: int) -> np.ndarray:
    """Atom indices of the molecule containing atom ``index``."""
    for m in find_molecules(atoms):
        if index in m:
            return m
    raise IndexError(f"atom {index} out of range")
