"""Telling differences from noise: bootstrap intervals per setting, paired tests per pair.

For a table whose runs kept their per-input statistics (``stats_<split>.json``, see
prefixtune.metrics.stats), every metric of every setting gets a 95% bootstrap interval over the
test inputs, and every pair of settings that differ in exactly one key gets, per metric, the
difference with its 95% interval and a paired bootstrap p-value
(prefixtune.metrics.significance: sacrebleu's ``--paired-bs`` procedure, 1000 resamples, seed
12345, the same resamples for every setting scored on the same inputs).  A setting is only
compared when each of its runs has the statistics, and two settings only when their runs were
scored on the same inputs (the same reference fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prefixtune.collect.runs import DEV_LOSS
from prefixtune.collect.tables import Row, Table, higher_is_better
from prefixtune.metrics import significance as sig
from prefixtune.metrics.errors import ScoreError
from prefixtune.metrics.stats import InputStats, read_stats


@dataclass
class RowStats:
    """A setting's runs' rows per metric (table key -> (kind, one array per run))."""

    inputs: str
    n: int
    metrics: dict[str, tuple[str, list[np.ndarray]]]


@dataclass
class Pair:
    """Settings ``a`` and ``b`` differing only in ``key``; ``diffs``: metric -> a minus b."""

    key: str
    a: Row
    b: Row
    diffs: dict[str, sig.Difference] = field(default_factory=dict)


@dataclass
class Comparison:
    """What compare() found for one table."""

    estimates: dict[tuple[int, str], sig.Estimate]  # (row index, metric) -> interval
    pairs: list[Pair]
    n_inputs: int
    missing: int  # runs without statistics


def _row_stats(table: Table, row: Row, cache: dict) -> RowStats | None:
    loaded: list[InputStats] = []
    for run in row.runs:
        path = run.stats.get(table.split)
        if path is None:
            return None
        if path not in cache:
            try:
                cache[path] = read_stats(path)
            except ScoreError:
                cache[path] = None
        if cache[path] is None:
            return None
        loaded.append(cache[path])
    if not loaded or len({(s.inputs, s.n) for s in loaded}) != 1:
        return None
    views = [s.views() for s in loaded]
    metrics = {}
    for key in table.metrics:
        name = key.split("/", 1)[1] if "/" in key else key
        if key == DEV_LOSS or not all(name in v for v in views):
            continue
        metrics[key] = (views[0][name][0], [v[name][1] for v in views])
    return RowStats(loaded[0].inputs, loaded[0].n, metrics)


def _one_key_apart(table: Table, a: Row, b: Row) -> str | None:
    apart = [k for k, x, y in zip(table.keys, a.setting, b.setting, strict=True) if x != y]
    return apart[0] if len(apart) == 1 else None


def compare(table: Table, n_samples: int = sig.N_SAMPLES, seed: int = sig.SEED) -> Comparison:
    cache: dict = {}
    stats = [_row_stats(table, row, cache) for row in table.rows]
    missing = sum(1 for row in table.rows for run in row.runs if table.split not in run.stats)
    counts: dict[tuple[str, int], np.ndarray] = {}

    def counts_for(rs: RowStats) -> np.ndarray:
        if (rs.inputs, rs.n) not in counts:
            counts[(rs.inputs, rs.n)] = sig.resample_counts(rs.n, n_samples, seed)
        return counts[(rs.inputs, rs.n)]

    estimates = {}
    for i, rs in enumerate(stats):
        if rs is None:
            continue
        for key, (kind, runs) in rs.metrics.items():
            estimates[(i, key)] = sig.estimate(kind, runs, counts_for(rs))
    pairs = []
    for j, b in enumerate(table.rows):  # b: the earlier setting (the sweep's first value)
        for i in range(j + 1, len(table.rows)):
            a = table.rows[i]
            key = _one_key_apart(table, a, b)
            sa, sb = stats[i], stats[j]
            if key is None or sa is None or sb is None or sa.inputs != sb.inputs:
                continue
            pair = Pair(key, a, b)
            for metric, (kind, a_runs) in sa.metrics.items():
                if metric in sb.metrics:
                    b_runs = sb.metrics[metric][1]
                    pair.diffs[metric] = sig.paired_bootstrap(kind, a_runs, b_runs, counts_for(sa))
            pairs.append(pair)
    n = next((s.n for s in stats if s is not None), 0)
    return Comparison(estimates, pairs, n, missing)


def better(metric: str, diff: sig.Difference) -> bool | None:
    """True when a is significantly better than b, False when significantly worse, else None."""
    if not diff.significant:
        return None
    return (diff.delta > 0) == higher_is_better(metric)
