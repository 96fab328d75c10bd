"""Mass density of NPT trajectories with block-averaged confidence intervals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import constants

from lotf.analysis.io import SourceLike, iter_chunks, read_info
from lotf.analysis.statistics import block_average, blocking

AMU_PER_A3_TO_G_CM3 = constants.atomic_mass * 1e3 / 1e-24
"""1 amu/Angstrom^3 in g/cm^3 (1.66054)."""


def density_g_cm3(total_mass_amu: float, volume_a3) -> np.ndarray:
    """Density in g/cm^3 of ``total_mass_amu`` in ``volume_a3`` (Angstrom^3)."""
    v = np.asarray(volume_a3, float)
    if np.any(v <= 0):
        raise ValueError("volume must be positive")
    return total_mass_amu / v * AMU_PER_A3_TO_G_CM3


def density_series(
    source: SourceLike,
    start: int = 0,
    stop: int | None = None,
    stride: int = 1,
    timestep_fs: float | None = None,
    chunk_size: int = 10_000,
    progress: bool = False,
) -> pd.DataFrame:
    """Per-frame density (columns ``frame``, ``time_ps``, ``volume_A3``, ``density_g_cm3``)."""
    info = read_info(source)
    if not info.has_cell:
        raise ValueError("density: trajectory has no cell")
    dt = timestep_fs if timestep_fs is not None else (info.timestep_fs or 1.0)
    mass = float(info.masses.sum())
    frames, volumes = [], []
    for chunk in iter_chunks(
        source, chunk_size, start, stop, stride, progress=progress, desc="density"
    ):
        frames.append(chunk.frames)
        volumes.append(np.abs(np.linalg.det(chunk.cells)))
    frames, volumes = np.concatenate(frames), np.concatenate(volumes)
    return pd.DataFrame(
        {
            "frame": frames,
            "time_ps": frames * dt / 1000.0,
            "volume_A3": volumes,
            "density_g_cm3": density_g_cm3(mass, volumes),
        }
    )


@dataclasses.dataclass(frozen=True)
class DensityEstimate:
    """Mean density with standard error and confidence interval (g/cm^3)."""

    mean: float
    sem: float
    ci_halfwidth: float
    confidence: float
    n_frames: int
    method: str

    def as_dict(self) -> dict:
        return {
            "density_g_cm3": self.mean,
            "sem_g_cm3": self.sem,
            f"ci{int(round(self.confidence * 100))}_g_cm3": self.ci_halfwidth,
            "n_frames": self.n_frames,
            "method": self.method,
        }


def density_estimate(
    densities, n_blocks: int | None = None, confidence: float = 0.95
) -> DensityEstimate:
    """Average density; error bars from automatic blocking (``n_blocks=None``) or from
    ``n_blocks`` equal blocks with a Student-t interval (seed 1 used 6 blocks)."""
    x = np.asarray(densities, float)
    if n_blocks is None:
        b = blocking(x, confidence)
        return DensityEstimate(
            b.mean, b.sem, b.ci_halfwidth, confidence, len(x), f"blocking(B={b.block_size})"
        )
    b = block_average(x, n_blocks, confidence)
    return DensityEstimate(b.mean, b.sem, b.ci_halfwidth, confidence, len(x), f"{n_blocks} blocks")


def load_experimental_density(
    name: str = "bmim_bf4_density", directory: Path | None = None
) -> pd.DataFrame:
    """Columns ``T_K`` and ``density_g_cm3`` of an experimental table: a path
    (``data/experimental/<name>.csv`` relative to the project), a bare name in
    ``data/experimental``, or ``<directory>/<name>.csv``."""
    from lotf.inputs import read_experimental_table

    return read_experimental_table(name, directory)


def experimental_density(
    temperature: float, name: str = "bmim_bf4_density", directory: Path | None = None
) -> float:
    """Experimental density (g/cm^3) linearly interpolated in the table's temperature range.

    Up to 1 K beyond either end the end segment is extended (283 K against a table that starts
    at 283.15 K); further out is an error.
    """
    df = load_experimental_density(name, directory).sort_values("T_K")
    t = df["T_K"].to_numpy(float)
    rho = df["density_g_cm3"].to_numpy(float)
    if not t[0] - 1.0 <= temperature <= t[-1] + 1.0:
        raise ValueError(
            f"temperature {temperature} K outside the table range {t[0]}-{t[-1]} K of {name}"
        )
    if len(t) > 1 and (temperature < t[0] or temperature > t[-1]):
        i = 0 if temperature < t[0] else len(t) - 2
        slope = (rho[i + 1] - rho[i]) / (t[i + 1] - t[i])
        return float(rho[i] + slope * (temperature - t[i]))
    return float(np.interp(temperature, t, rho))
