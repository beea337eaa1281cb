"""Paired bootstrap resampling over test inputs, for any metric with per-input statistics.

The procedure is sacrebleu's ``--paired-bs`` (itself Moses'
``bootstrap-hypothesis-difference-significance.pl``), extended from sacrebleu's own metrics to
every metric of ``stats.py``:

* draw ``n_samples`` resamples of the input indices with replacement, once, from
  ``numpy.random.default_rng(seed)`` (sacrebleu's default seed, 12345), and score BOTH systems on
  the same resamples (that is the pairing);
* the 95% interval of a score or of a difference is the 2.5th and 97.5th percentile of its
  resampled values (sacrebleu's ``estimate_ci``: the sorted values at ``n // 40`` from each end);
* the p-value of the observed difference d: the resampled absolute differences, centred on
  their mean (the null hypothesis), exceed |d| in c of the n resamples; p = (c + 1) / (n + 1).

sacrebleu's implementation only takes sacrebleu metric objects, so this module reimplements
the same arithmetic over ``stats.score_of``; tests/test_significance.py checks that it gives
sacrebleu's p-value, mean and interval on BLEU.

Settings with several runs (seeds, subsamples): each resample scores every run, and a
setting's score on that resample is the mean over its runs, so the interval reflects the test
inputs' sampling; the spread over seeds is what the tables' ± std columns show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prefixtune.metrics.stats import score_of

N_SAMPLES = 1000
SEED = 12345  # sacrebleu's SACREBLEU_SEED default
ALPHA = 0.05


def resample_counts(n: int, n_samples: int = N_SAMPLES, seed: int = SEED) -> np.ndarray:
    """[n_samples, n]: how often each input is drawn in each resample (sacrebleu's draws)."""
    rng = np.random.default_rng(seed)
    idxs = rng.choice(n, size=(n_samples, n), replace=True)
    counts = np.zeros((n_samples, n), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(n_samples), n), idxs.ravel()), 1.0)
    return counts


def resampled(kind: str, rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The corpus score of ``kind`` on each resample."""
    sums = counts @ rows
    return np.array([score_of(kind, s) for s in sums])


def setting_scores(kind: str, runs: Sequence[np.ndarray], counts: np.ndarray) -> np.ndarray:
    """A setting's score (the mean over its runs) on each resample."""
    return np.mean([resampled(kind, rows, counts) for rows in runs], axis=0)


def full_score(kind: str, runs: Sequence[np.ndarray]) -> float:
    return float(np.mean([score_of(kind, rows.sum(0)) for rows in runs]))


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval, at sacrebleu's ranks."""
    ordered = np.sort(values)
    low = len(ordered) // 40
    return float(ordered[low]), float(ordered[len(ordered) - low - 1])


def p_value(diffs: np.ndarray, observed: float) -> float:
    """Paired bootstrap p-value of ``observed`` (sacrebleu's / Moses' rule).

    One exception: an observed difference of exactly 0 gets p = 1.  sacrebleu's rule counts the
    resamples *strictly* above it, which gives a system scored against itself the smallest p there
    is (1 / (n + 1)), "significant"; no difference observed is no evidence of one.
    """
    if observed == 0:
        return 1.0
    sample = np.abs(diffs)
    centred = sample - sample.mean()
    return (int(np.sum(centred > abs(observed))) + 1) / (len(diffs) + 1)


@dataclass(frozen=True)
class Estimate:
    """A setting's score, with the mean and 95% interval of its resampled scores."""

    score: float
    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """Setting A minus setting B on one metric."""

    a: float
    b: float
    delta: float
    low: float  # 95% interval of the difference
    high: float
    p: float
    n_samples: int

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def estimate(kind: str, runs: Sequence[np.ndarray], counts: np.ndarray) -> Estimate:
    values = setting_scores(kind, runs, counts)
    low, high = interval(values)
    return Estimate(full_score(kind, runs), float(values.mean()), low, high)


def paired_bootstrap(
    kind: str,
    a_runs: Sequence[np.ndarray],
    b_runs: Sequence[np.ndarray],
    counts: np.ndarray,
) -> Difference:
    """A vs B on the same resamples (``counts``, from ``resample_counts``)."""
    a, b = full_score(kind, a_runs), full_score(kind, b_runs)
    diffs = setting_scores(kind, a_runs, counts) - setting_scores(kind, b_runs, counts)
    low, high = interval(diffs)
    return Difference(a, b, a - b, low, high, p_value(diffs, a - b), len(counts))
