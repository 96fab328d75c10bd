"""Error bars for time series from molecular dynamics.

* :func:`blocking`: Flyvbjerg-Petersen blocking transformation (J. Chem. Phys. 91, 461
  (1989)); the block size is chosen automatically with the criterion of Lee et al.
  (Phys. Rev. E 83, 066706 (2011)): the smallest block size B with
  B**3 > 2 N tau**2, tau = (sem_B / sem_1)**2 the estimated correlation time, which keeps
  the bias from residual correlation below the statistical error of the estimate.
* :func:`block_average`: a fixed number of blocks with a Student-t confidence interval
  (what seed 1 did for densities: 6 blocks, 95 %).
* :func:`t_halfwidth`: half-width of a Student-t confidence interval.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import stats


def _as_series(x, name: str = "x", minimum: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d series, got shape {x.shape}")
    if len(x) < minimum:
        raise ValueError(f"{name}: need at least {minimum} values, got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def t_halfwidth(sem: float, dof: int, confidence: float = 0.95) -> float:
    """Half-width of the two-sided Student-t confidence interval ``mean +- t * sem``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    return float(stats.t.ppf(0.5 + confidence / 2.0, dof) * sem)


@dataclasses.dataclass(frozen=True)
class BlockingResult:
    """Outcome of the blocking analysis of one series.

    ``sems[j]`` is the standard-error estimate after ``j`` halvings (block size ``2**j``)
    and ``sem_errors[j]`` its own statistical uncertainty; ``level`` is the chosen one.
    ``converged`` is False when no level passed the decorrelation test: the series is
    too short for its correlation time and ``sem`` is only a lower bound.
    """

    mean: float
    sem: float
    ci_halfwidth: float
    confidence: float
    level: int
    block_size: int
    n_blocks: int
    sems: np.ndarray
    sem_errors: np.ndarray
    converged: bool

    @property
    def ci(self) -> tuple[float, float]:
        return (self.mean - self.ci_halfwidth, self.mean + self.ci_halfwidth)

    @property
    def correlation_time(self) -> float:
        """Integrated autocorrelation time (in samples) implied by the chosen level."""
        naive = self.sems[0]
        return float((self.sem / naive) ** 2) if naive > 0 else float("nan")


def blocking(x, confidence: float = 0.95) -> BlockingResult:
    """Standard error of the mean of a correlated series by blocking.

    The series is halved repeatedly (pairs of neighbours averaged, an odd last value
    dropped).  At level ``j`` with ``n_j`` blocks the variance of the mean is estimated as
    ``c0_j / (n_j - 1)`` (``c0_j`` the biased variance of the block means).  The chosen
    level is the first whose block size ``B = 2**j`` satisfies ``B**3 > 2 N tau_j**2`` with
    ``tau_j = sem_j**2 / sem_0**2`` and leaves at least 4 blocks.
    """
    x = _as_series(x, "x", minimum=4)
    mean = float(np.mean(x))
    c0s, ns = [], []
    y = x.copy()
    while len(y) >= 2:
        n = len(y)
        d = y - y.mean()
        c0s.append(float(np.dot(d, d) / n))
        ns.append(n)
        if n % 2:
            y = y[:-1]
        y = 0.5 * (y[0::2] + y[1::2])
    c0s, ns = np.array(c0s), np.array(ns)
    sems = np.sqrt(c0s / (ns - 1))
    sem_errors = sems / np.sqrt(2.0 * (ns - 1))
    if np.all(c0s == 0.0):
        return BlockingResult(mean, 0.0, 0.0, confidence, 0, 1, len(x), sems, sem_errors, True)
    # Lee et al.: the first block size B with B**3 > 2 N (sem_B / sem_1)**4, i.e. blocks much
    # longer than the correlation time while keeping many blocks.
    ratio4 = (sems / sems[0]) ** 4 if sems[0] > 0 else np.ones_like(sems)
    block_sizes = 2.0 ** np.arange(len(ns))
    ok = np.nonzero((block_sizes**3 > 2.0 * len(x) * ratio4) & (ns >= 4))[0]
    if len(ok):
        level, converged = int(ok[0]), True
    else:
        converged = False
        usable = np.nonzero(ns >= 8)[0]
        level = int(usable[np.argmax(sems[usable])]) if len(usable) else 0
        warnings.warn(
            f"blocking: no block size is long enough for a series of {len(x)} values; "
            "the standard error is a lower bound (run longer)",
            stacklevel=2,
        )
    sem = float(sems[level])
    half = t_halfwidth(sem, int(ns[level]) - 1, confidence) if sem > 0 else 0.0
    return BlockingResult(
        mean=mean,
        sem=sem,
        ci_halfwidth=half,
        confidence=confidence,
        level=int(level),
        block_size=int(2**level),
        n_blocks=int(ns[level]),
        sems=sems,
        sem_errors=sem_errors,
        converged=converged,
    )


@dataclasses.dataclass(frozen=True)
class BlockAverage:
    """Mean, standard error and t-based confidence interval from ``n_blocks`` block means."""

    mean: float
    sem: float
    ci_halfwidth: float
    confidence: float
    block_means: np.ndarray

    @property
    def n_blocks(self) -> int:
        return len(self.block_means)

    @property
    def ci(self) -> tuple[float, float]:
        return (self.mean - self.ci_halfwidth, self.mean + self.ci_halfwidth)


def block_average(x, n_blocks: int, confidence: float = 0.95) -> BlockAverage:
    """Split ``x`` into ``n_blocks`` equal blocks (leading remainder dropped) and average.

    The standard error is ``std(block means, ddof=1) / sqrt(n_blocks)``; the interval uses
    Student's t with ``n_blocks - 1`` degrees of freedom.
    """
    if n_blocks < 2:
        raise ValueError(f"n_blocks must be >= 2, got {n_blocks}")
    x = _as_series(x, "x", minimum=n_blocks)
    size = len(x) // n_blocks
    x = x[len(x) - size * n_blocks :]
    means = x.reshape(n_blocks, size).mean(axis=1)
    return summarize(means, confidence)


def summarize(values, confidence: float = 0.95) -> BlockAverage:
    """Mean, standard error and t interval of independent estimates (e.g. per-block D)."""
    values = _as_series(values, "values", minimum=2)
    mean = float(values.mean())
    sem = float(values.std(ddof=1) / np.sqrt(len(values)))
    return BlockAverage(
        mean=mean,
        sem=sem,
        ci_halfwidth=t_halfwidth(sem, len(values) - 1, confidence),
        confidence=confidence,
        block_means=values,
    )
