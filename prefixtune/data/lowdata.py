"""Low-data protocol of the paper (section "low data").

Training sets of n in {50, 100, 200, 500} examples are drawn at random (the paper uses
5 random subsamples x 2 training seeds), plus a development set of 30% of the training size
for early stopping, disjoint from the training subsample.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .base import DataError, Example

#: Size of the early-stopping dev set relative to the training subsample (paper: 30%).
DEV_FRACTION = 0.3


def low_data_split(
    examples: Sequence[Example], n: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """Draw ``n`` training examples with ``seed`` plus a disjoint dev set of ``round(0.3 * n)``.

    Deterministic for a given ``(examples, n, seed)``; different seeds give different
    subsamples. Disjointness is by source: no dev example has the same linearised input as a
    training example (so duplicated inputs cannot leak from train into dev).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise DataError(f"low-data size n must be a positive integer, got {n!r}")
    n_dev = round(DEV_FRACTION * n)
    if n + n_dev > len(examples):
        raise DataError(
            f"low-data split needs {n} train + {n_dev} dev examples but only "
            f"{len(examples)} are available"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    train_idx = order[:n]
    train_sources = {examples[i].source for i in train_idx}
    dev_idx: list[int] = []
    for i in order[n:]:
        if len(dev_idx) == n_dev:
            break
        if examples[i].source not in train_sources:
            dev_idx.append(i)
    if len(dev_idx) < n_dev:
        raise DataError(
            f"low-data split: only {len(dev_idx)} dev examples disjoint from the {n} training "
            f"examples, {n_dev} needed"
        )
    return [examples[i] for i in train_idx], [examples[i] for i in dev_idx]
