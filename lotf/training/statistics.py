"""Initial per-element shift (ridge regression on element counts) and scale (force RMS)."""

from __future__ import annotations

import numpy as np


def regression_shift(energies: np.ndarray, counts: np.ndarray, regularisation: float = 1.0) -> np.ndarray:
    """Per-element energy shift t_Z from E_n ≈ Σ_Z c_nZ t_Z.

    Solved around the mean atomic energy μ = ΣE/ΣN so the ridge term pulls towards μ, not 0:
    (XᵀX + λI) w = Xᵀ(E − μN), t = w + μ.
    """
    energies = np.asarray(energies, float)
    counts = np.asarray(counts, float)
    mu = energies.sum() / counts.sum()
    y = energies - mu * counts.sum(axis=1)
    lhs = counts.T @ counts + regularisation * np.eye(counts.shape[1])
    return np.linalg.solve(lhs, counts.T @ y) + mu


def force_rms_scale(forces: list[np.ndarray], species: list[np.ndarray], n_species: int) -> np.ndarray:
    """Per-element RMS of force components (1 where an element has no atoms or no force)."""
    sq = np.zeros(n_species)
    n = np.zeros(n_species)
    for f, s in zip(forces, species):
        np.add.at(sq, s, np.sum(f * f, axis=1))
        np.add.at(n, s, 3.0)
    scale = np.ones(n_species)
    ok = (n > 0) & (sq > 0)
    scale[ok] = np.sqrt(sq[ok] / n[ok])
    return scale


def element_counts(species: list[np.ndarray], n_species: int) -> np.ndarray:
    return np.stack([np.bincount(s, minlength=n_species) for s in species])
