"""The percentile bootstrap medvl's confidence intervals share (medvl.compare's paired differences, the charts'
per-category means): the same draws for the same ``seed``, so a CI is reproducible from its settings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def check_bootstrap(n_boot: int, confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")


def percentile_ci(n: int, statistic_of: Callable[[np.ndarray], np.ndarray], *, n_boot: int, seed: int,
                  confidence: float) -> tuple[float, float]:
    """Percentile CI of ``statistic_of(index)`` over ``n_boot`` resamples of ``n`` items.

    ``statistic_of`` gets a ``(resamples, n)`` matrix of item indices, drawn with replacement by
    ``numpy.random.default_rng(seed)``, and returns one value per resample.

    This is ``scipy.stats.bootstrap(..., method="percentile", batch=chunk, rng=default_rng(seed))``: the
    same draws, resample for resample (tests/test_compare_stats.py checks that the bounds agree). It stays
    written out because scipy's bounds differ in the last bit (it takes the upper tail as ``1 - alpha`` and
    interpolates with ``scipy.stats.quantile``), which would change published model_comparison.json files,
    and because scipy refuses a single pair, which medvl reports as a zero-width interval.
    """
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    chunk = max(1, 4_000_000 // n)  # bound the (chunk x n) index matrix to ~32 MB
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        values[start:stop] = statistic_of(rng.integers(0, n, size=(stop - start, n)))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
