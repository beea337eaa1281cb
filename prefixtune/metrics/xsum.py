"""XSum: Google's rouge-score with Porter stemming, as the paper's summarisation code used.

Per summary the F-measure of rouge1, rouge2, rougeL and rougeLsum (rougeLsum splits sentences at
newlines; one-line summaries make it equal to rougeL); with several references the best one per
metric (``score_multi``).  Reported: the plain mean over summaries, on 0-100 like the paper's
tables (the paper's script reported the bootstrap median, which lies close to the mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rouge_score import rouge_scorer

from prefixtune.metrics.stats import InputStats, mean_rows

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def score_xsum(
    hyps: Sequence[str], refs: Sequence[Sequence[str]]
) -> tuple[dict[str, float], InputStats]:
    """The scores, with each summary's F-measures as the per-input statistics (``stats.py``)."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    values: dict[str, list[float]] = {name: [] for name in ROUGE_TYPES}
    for hyp, seg in zip(hyps, refs, strict=True):
        present = [r for r in seg if r.strip()] or [""]
        result = scorer.score_multi(present, hyp)
        for name in ROUGE_TYPES:
            values[name].append(result[name].fmeasure)
    n = max(len(hyps), 1)
    scores = {name: 100.0 * sum(values[name]) / n for name in ROUGE_TYPES}
    rows = {name: ("mean_x100", np.asarray(mean_rows(values[name]))) for name in ROUGE_TYPES}
    return scores, InputStats("xsum", rows)
