"""Exploration metrics of sampling trajectories (seed 2, sections 3.1 and 3.3).

* :func:`com_displacement_msd`: MSD of molecular centres of mass relative to the first
  frame, and its maximum over the trajectory (seed 2 Fig. 6 uses the BF4- centres of mass).
* :func:`system_averaged_descriptors`: per-frame mean over atoms of any descriptor
  (a callable ``atoms -> (n_atoms, n_features)``), so this module does not depend on GMNN.
* :func:`pca_common_basis`: the first principal components of several trajectories'
  descriptors in one basis fitted to all of them together (seed 2 Fig. 7).
* (Phi, Psi) coverage lives in :mod:`lotf.analysis.dihedrals`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import ase
import numpy as np

from lotf.analysis.diffusion import ParticleGroup, iter_particle_positions
from lotf.analysis.dihedrals import ramachandran_coverage  # noqa: F401  (re-export)
from lotf.analysis.io import SourceLike, chunk_atoms, iter_chunks, read_info


@dataclasses.dataclass(frozen=True)
class DisplacementMSD:
    """MSD(t) = <|R_i(t) - R_i(0)|^2> over the particles of a group (single time origin)."""

    label: str
    time_fs: np.ndarray
    msd: np.ndarray

    @property
    def max_msd(self) -> float:
        return float(np.max(self.msd))

    @property
    def time_of_max_fs(self) -> float:
        return float(self.time_fs[int(np.argmax(self.msd))])


def com_displacement_msd(
    source: SourceLike,
    group: str | ParticleGroup = "com:BF4",
    timestep_fs: float | None = None,
    stride: int = 1,
    chunk_size: int = 1000,
    remove_drift: bool = False,
    progress: bool = False,
) -> DisplacementMSD:
    """Displacement MSD from the first frame of a group (default: BF4- centres of mass).

    ``com_displacement_msd(traj).max_msd`` is the seed-2 exploration metric (Angstrom^2).
    """
    info = read_info(source)
    dt = timestep_fs if timestep_fs is not None else info.timestep_fs
    if dt is None:
        dt = 1.0
    times, values = [], []
    ref = None
    label = group.label if isinstance(group, ParticleGroup) else group
    for frames, particles in iter_particle_positions(
        source,
        [group],
        stride=stride,
        chunk_size=chunk_size,
        remove_drift=remove_drift,
        progress=progress,
        desc="com msd",
    ):
        x = particles[label]
        if ref is None:
            ref = x[0].copy()
        d = x - ref
        values.append(np.mean(np.sum(d * d, axis=-1), axis=1))
        times.append(frames * dt)
    return DisplacementMSD(label, np.concatenate(times), np.concatenate(values))


def system_averaged_descriptors(
    source: SourceLike | Sequence[ase.Atoms],
    descriptor: Callable[[ase.Atoms], np.ndarray],
    stride: int = 1,
    chunk_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """(n_frames, n_features): the descriptor of every frame averaged over its atoms.

    ``descriptor(atoms)`` returns (n_atoms, n_features) per-atom features or an already
    averaged (n_features,) vector.
    """
    info = read_info(source)
    rows = []
    for chunk in iter_chunks(
        source, chunk_size, stride=stride, progress=progress, desc="descriptors"
    ):
        for i in range(len(chunk)):
            d = np.asarray(descriptor(chunk_atoms(chunk, info, i)), float)
            if d.ndim == 2:
                d = d.mean(axis=0)
            if d.ndim != 1:
                raise ValueError(
                    f"descriptor returned shape {d.shape}; expected (n_atoms, F) or (F,)"
                )
            rows.append(d)
    return np.stack(rows)


@dataclasses.dataclass(frozen=True)
class PCAResult:
    """Projections of several descriptor sets on common principal axes."""

    projections: list[np.ndarray]  # one (n_frames_k, n_components) per input set
    components: np.ndarray  # (n_components, n_features), orthonormal rows
    mean: np.ndarray  # (n_features,)
    explained_variance_ratio: np.ndarray  # (n_components,)

    def transform(self, descriptors: np.ndarray) -> np.ndarray:
        return (np.asarray(descriptors, float) - self.mean) @ self.components.T

    def spread(self) -> list[float]:
        """Total variance of each set in the common basis (a measure of exploration)."""
        return [float(np.sum(np.var(p, axis=0))) for p in self.projections]


def pca_common_basis(descriptor_sets: Sequence[np.ndarray], n_components: int = 2) -> PCAResult:
    """Fit PCA to the concatenation of all sets (centred on the pooled mean) and project each.

    Component signs are fixed so that the largest-magnitude loading of each is positive.
    """
    sets = [np.atleast_2d(np.asarray(s, float)) for s in descriptor_sets]
    if not sets:
        raise ValueError("descriptor_sets: need at least one set")
    n_feat = sets[0].shape[1]
    for k, s in enumerate(sets):
        if s.ndim != 2 or s.shape[1] != n_feat:
            raise ValueError(f"descriptor_sets[{k}]: shape {s.shape}, expected (n, {n_feat})")
    data = np.concatenate(sets)
    if not 1 <= n_components <= min(data.shape):
        raise ValueError(f"n_components must be in [1, {min(data.shape)}], got {n_components}")
    mean = data.mean(axis=0)
    _, s, vt = np.linalg.svd(data - mean, full_matrices=False)
    comps = vt[:n_components]
    signs = np.sign(comps[np.arange(n_components), np.argmax(np.abs(comps), axis=1)])
    comps = comps * signs[:, None]
    var = s**2
    ratio = var[:n_components] / var.sum() if var.sum() > 0 else np.zeros(n_components)
    return PCAResult([(x - mean) @ comps.T for x in sets], comps, mean, ratio)


def gaussian_moment_descriptor(
    r_max: float = 6.0, n_basis: int = 4, r_min: float = 1.1
) -> Callable[[ase.Atoms], np.ndarray]:
    """``atoms -> (F,)``: the element-blind Gaussian moments averaged over atoms (ERBS's CV input).

    Needs no trained model, so trajectories of different models share one descriptor. The
    neighbour rows are padded to a multiple of 16 so similar frames reuse one compilation.
    """
    import jax
    import jax.numpy as jnp

    from lotf.potential.descriptor import averaged_descriptor
    from lotf.potential.graph import collate, structure_arrays

    fn = jax.jit(lambda g: averaged_descriptor(g, n_basis=n_basis, r_min=r_min, r_max=r_max)[0])

    def descriptor(atoms: ase.Atoms) -> np.ndarray:
        species = tuple(sorted(set(atoms.numbers.tolist())))
        arrays = structure_arrays(atoms, species, r_max)
        width = max(16, -(-arrays.neighbors.shape[1] // 16) * 16)
        graph = collate([arrays], n_neighbors=width)
        return np.asarray(fn(jax.tree_util.tree_map(jnp.asarray, graph)))

    return descriptor
