"""Blocking and block averages against series with known statistics."""

import numpy as np
import pytest
from scipy import stats
from scipy.signal import lfilter

from lotf.analysis.statistics import block_average, blocking, summarize, t_halfwidth


def ar1(phi: float, n: int, seed: int) -> np.ndarray:
    """x_t = phi x_{t-1} + e_t with unit-variance Gaussian noise, started in equilibrium."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=n)
    e[0] /= np.sqrt(1.0 - phi**2)  # stationary start
    return lfilter([1.0], [1.0, -phi], e)


def ar1_sem(phi: float, n: int) -> float:
    """Exact standard deviation of the mean of n AR(1) values."""
    k = np.arange(1, n)
    var = 1.0 / (1.0 - phi**2)
    return float(np.sqrt(var / n * (1.0 + 2.0 * np.sum((1.0 - k / n) * phi**k))))


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_blocking_recovers_ar1_standard_error(phi):
    n = 2**16
    true = ar1_sem(phi, n)  # tau_int = (1 + phi) / (1 - phi): 1, 3, 19
    ratios = []
    for seed in range(6):
        res = blocking(ar1(phi, n, seed))
        assert res.converged
        ratios.append(res.sem / true)
    ratios = np.array(ratios)
    # each estimate within 25 %, the average within 8 % (relative error per estimate ~6-9 %)
    assert np.all(np.abs(ratios - 1.0) < 0.25), ratios
    assert abs(ratios.mean() - 1.0) < 0.08, ratios


def test_blocking_beats_naive_error_for_correlated_series():
    x = ar1(0.9, 2**15, 7)
    res = blocking(x)
    naive = x.std() / np.sqrt(len(x))
    assert res.sem > 3.0 * naive  # sqrt(tau_int) = sqrt(19) = 4.4
    assert res.correlation_time == pytest.approx(19.0, rel=0.3)
    lo, hi = res.ci
    assert hi - lo == pytest.approx(2 * stats.t.ppf(0.975, res.n_blocks - 1) * res.sem)


def test_blocking_confidence_interval_coverage():
    # over many AR(1) series the 95 % interval must contain the true mean (0) ~95 % of the time
    results = [blocking(ar1(0.8, 4096, s)) for s in range(200)]
    hits = [abs(r.mean) <= r.ci_halfwidth for r in results]
    assert 0.88 <= np.mean(hits) <= 0.99


def test_blocking_too_short_warns():
    with pytest.warns(UserWarning, match="lower bound"):
        res = blocking(ar1(0.999, 64, 0))
    assert not res.converged


def test_block_average_by_hand():
    x = np.arange(12.0)  # blocks [0..3], [4..7], [8..11] -> means 1.5, 5.5, 9.5
    res = block_average(x, 3)
    assert res.mean == pytest.approx(5.5)
    np.testing.assert_allclose(res.block_means, [1.5, 5.5, 9.5])
    sem = np.std([1.5, 5.5, 9.5], ddof=1) / np.sqrt(3)
    assert res.sem == pytest.approx(sem)
    assert res.ci_halfwidth == pytest.approx(4.302652729911275 * sem)  # t(0.975, 2)
    # leading remainder dropped: 13 values in 3 blocks use the last 12
    assert block_average(np.r_[100.0, x], 3).mean == pytest.approx(5.5)


def test_summarize_and_t_halfwidth():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s.mean == 2.5 and s.sem == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert t_halfwidth(1.0, 1000) == pytest.approx(1.96, abs=0.01)


def test_bad_input():
    with pytest.raises(ValueError, match="1-d"):
        blocking(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        blocking([1.0, np.nan, 2.0, 3.0])
    with pytest.raises(ValueError, match="n_blocks"):
        block_average(np.arange(10.0), 1)
    with pytest.raises(ValueError, match="confidence"):
        t_halfwidth(1.0, 3, 1.5)
